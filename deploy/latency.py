"""`mt-policy bench-runtime`: batch-1 latency of one policy on every backend this machine has, in one run.

Each backend answers the same observation through the call a user makes (`torch_predictor` for
PyTorch eager, `PolicyRuntime.predict` for the rest), after a warm-up, `calls` times. Model FLOPs
(multiply-adds x 2, counted by torch's FLOP counter on the forward) and parameters are reported
beside the latencies, so achieved GFLOP/s shows how far a backend is from the hardware.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deploy.manifest import ExportError, read_export
from deploy.runtime import PolicyRuntime, RuntimeConfigError
from mt_policy.errors import MtPolicyError

GPU_BACKENDS = ("cuda", "tensorrt", "tensorrt-engine")


def time_calls(fn: Callable[[], Any], calls: int, warmup: int) -> dict[str, float]:
    """p50/p99/max/mean of `calls` timed calls (ms) after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    times *= 1e3
    return {"p50_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99)),
            "max_ms": float(times.max()), "mean_ms": float(times.mean()), "calls": calls}


def example_observation(runtime: PolicyRuntime, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = {f"obs/{c.name}": rng.integers(0, 256, c.shape, dtype=np.uint8) for c in runtime.policy.observation.cameras}
    obs["obs/proprio"] = rng.standard_normal(runtime.proprio_size).astype(np.float32)
    return obs


def model_flops(model: Any, obs: dict[str, np.ndarray], task: str) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(batch, task)
    return int(counter.get_total_flops())


def bench_runtime(checkpoint: Path | None = None, onnx_dir: Path | None = None, task: str | None = None,
                  calls: int = 1000, warmup: int = 100, threads: int = 1,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Latency rows for PyTorch eager and every runtime backend; exports `checkpoint` first if no `onnx_dir`."""
    import torch

    from mt_policy.checkpoint import load_checkpoint
    from mt_policy.runner import torch_predictor

    if calls < 1000:
        log(f"note: {calls} calls; p99 over fewer than 1,000 calls rests on a handful of samples")
    with tempfile.TemporaryDirectory(prefix="mt-policy-bench-") as tmp:
        if onnx_dir is None:
            if checkpoint is None:
                raise MtPolicyError("bench-runtime needs --checkpoint, --onnx, or both")
            from deploy.onnx_export import export

            onnx_dir = export(checkpoint, Path(tmp) / "export", log=lambda _: None).directory
        policy = read_export(onnx_dir)
        if checkpoint is None:
            source = Path(policy.provenance.get("checkpoint", ""))
            checkpoint = source if (source / "policy.json").is_file() else None
        cpu = PolicyRuntime(onnx_dir, provider="cpu", threads=threads, task=task)
        task = cpu.task
        obs = example_observation(cpu)
        rows: list[dict[str, Any]] = []
        flops = parameters = None
        if checkpoint is not None:
            torch.set_num_threads(threads)
            model, _ = load_checkpoint(checkpoint)
            flops, parameters = model_flops(model, obs, task), sum(p.numel() for p in model.parameters())
            predict = torch_predictor(model, task)
            rows.append({"backend": "pytorch-eager", "device": "cpu"} | time_calls(lambda: predict(obs), calls, warmup))
            log(_line(rows[-1]))
            if torch.cuda.is_available():
                gpu_model = model.to("cuda")
                gpu_predict = torch_predictor(gpu_model, task, device="cuda")
                rows.append({"backend": "pytorch-eager", "device": "cuda"}
                            | time_calls(lambda: gpu_predict(obs), calls, warmup))
                log(_line(rows[-1]))
        else:
            log("pytorch-eager skipped: the export's source checkpoint is not here (pass --checkpoint)")
        rows.append({"backend": "onnxruntime", "device": "cpu"} | time_calls(lambda: cpu.predict(obs), calls, warmup))
        log(_line(rows[-1]))
        skipped: dict[str, str] = {}
        for provider in GPU_BACKENDS:
            try:
                runtime = PolicyRuntime(onnx_dir, provider=provider, threads=threads, task=task)
            except (RuntimeConfigError, ExportError) as err:
                skipped[provider] = str(err)
                continue
            backend = "tensorrt" if provider == "tensorrt-engine" else "onnxruntime"
            device = "cuda" if provider != "tensorrt" else "cuda (TensorRT EP)"
            rows.append({"backend": backend, "device": device} | time_calls(lambda r=runtime: r.predict(obs), calls, warmup))
            log(_line(rows[-1]))
    for row in rows:
        row["gflops_per_s"] = flops / (row["p50_ms"] * 1e6) if flops else None
    eager = next((r for r in rows if r["backend"] == "pytorch-eager" and r["device"] == "cpu"), None)
    ort_cpu = next(r for r in rows if r["backend"] == "onnxruntime" and r["device"] == "cpu")
    return {
        "task": task, "tasks_in_graph": len(policy.tasks), "threads": threads, "calls": calls, "warmup": warmup,
        "flops_per_call": flops, "parameters": parameters, "graph_parameters": policy.manifest["parameters"]["graph"],
        "rows": rows, "skipped": skipped,
        "ort_cpu_speedup_vs_eager_p50": eager["p50_ms"] / ort_cpu["p50_ms"] if eager else None,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
    }


def _line(row: dict[str, Any]) -> str:
    return (f"{row['backend']:>14s} {row['device']:<18s} p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  "
            f"max {row['max_ms']:.3f} ms")


def format_table(result: dict[str, Any]) -> str:
    flops = result["flops_per_call"]
    lines = [f"batch-1 latency, task {result['task']} ({result['tasks_in_graph']} task(s) in the graph), "
             f"{result['threads']} CPU thread(s), {result['calls']} calls after {result['warmup']} warm-up",
             (f"model: {result['parameters']:,} parameters, {flops / 1e6:.1f} MFLOP per call" if flops else
              f"model: {result['graph_parameters']:,} graph parameters"), "",
             "| backend | device | p50 ms | p99 ms | max ms | GFLOP/s at p50 |", "|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        rate = f"{r['gflops_per_s']:.1f}" if r["gflops_per_s"] else "-"
        lines.append(f"| {r['backend']} | {r['device']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['max_ms']:.3f} | {rate} |")
    if result["ort_cpu_speedup_vs_eager_p50"]:
        lines.append(f"\nonnxruntime CPU is {result['ort_cpu_speedup_vs_eager_p50']:.2f}x faster than PyTorch eager (p50)")
    for provider, reason in result["skipped"].items():
        lines.append(f"skipped {provider}: {reason}")
    return "\n".join(lines)


def write_result(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
