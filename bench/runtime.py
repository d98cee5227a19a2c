"""Batch-1 inference latency of the default policy: PyTorch eager vs ONNX Runtime, and flatness in the number of heads.

    .venv/bin/python bench/runtime.py [--calls 2000] [--heads 1,2,10,50] [--threads 1]

The default model (`ModelConfig()` defaults, one 96x96 `corner2` camera + 4-D `agent_pos`, as
`make demo` trains it) is built with random weights for the first N tasks of mt50, exported, and
timed by `mt-policy bench-runtime`'s code on every backend this machine has. Writes
`bench/results/runtime.json` and prints a Markdown table. Goals (2-core CPU): ORT CPU p99 <= 1 ms
on one thread, >= 3x faster than eager at p50, and latency flat from 1 to 50 heads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings

from bench_json import write_json  # noqa: E402

from deploy.latency import bench_runtime  # noqa: E402
from mt_policy.checkpoint import save_checkpoint  # noqa: E402
from mt_policy.model import ModelConfig, MultiTaskPolicy, TaskEntry  # noqa: E402
from sim.suites import get_suite  # noqa: E402
from sim.tasks import ObservationConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "runtime.json"


def default_policy(n_heads: int) -> MultiTaskPolicy:
    obs = ObservationConfig(cameras=("corner2",), image_size=(96, 96), proprio="agent_pos")
    tasks = get_suite("mt50")[:n_heads]
    return MultiTaskPolicy(ModelConfig(task_embedding_scale=1.0),
                           [TaskEntry(t.info(), t.schema(obs)) for t in tasks]).eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--heads", default="1,2,10,50")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(h) for h in args.heads.split(",")):
            ckpt = save_checkpoint(default_policy(n), Path(tmp) / f"heads{n}")
            print(f"\n== {n} head(s)")
            result = bench_runtime(ckpt, calls=args.calls, warmup=args.warmup, threads=args.threads)
            result["heads"] = n
            runs.append(result)
    table = format_runs(runs)
    print("\n" + table)
    write_json({"command": " ".join(sys.argv), "runs": runs}, args.out)
    print(f"\nresults: {args.out}")
    return 0


def format_runs(runs: list[dict]) -> str:
    lines = ["| heads | parameters | MFLOP/call | eager p50 / p99 ms | ORT CPU p50 / p99 / max ms | ORT vs eager (p50) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        rows = {(r["backend"], r["device"]): r for r in run["rows"]}
        eager, ort = rows[("pytorch-eager", "cpu")], rows[("onnxruntime", "cpu")]
        lines.append(f"| {run['heads']} | {run['parameters']:,} | {run['flops_per_call'] / 1e6:.1f} | "
                     f"{eager['p50_ms']:.3f} / {eager['p99_ms']:.3f} | "
                     f"{ort['p50_ms']:.3f} / {ort['p99_ms']:.3f} / {ort['max_ms']:.3f} | "
                     f"{run['ort_cpu_speedup_vs_eager_p50']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
