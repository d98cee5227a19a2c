"""`mt-policy export`: a checkpoint's tensor core as an ONNX graph, checked against PyTorch before it is kept.

Graph contract (recorded in `policy.json`):

    inputs   <camera> uint8 (B, H, W, 3) per camera, proprio float32 (B, P), task int64 (B,)
    output   action_chunk float32 (B, Ta, A_max): de-normalised; task k's actions are [..., :A_k]

Normalisation (images, per-task proprio and actions) is inside the graph. With several tasks the
heads are stacked into per-layer weight tensors that the graph indexes by `task`, so a call runs
only the chosen head's matmuls whatever the number of tasks; heads with fewer actions are padded
with zero weights. Exporting one task (`--tasks A`) drops the `task` input and keeps that head alone.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deploy.manifest import (
    ENGINE,
    GRAPH,
    OUTPUT,
    PROPRIO_INPUT,
    TASK_INPUT,
    ExportError,
    read_export,
    sha256_file,
    write_manifest,
)
from mt_policy import __version__
from mt_policy.checkpoint import load_checkpoint
from mt_policy.demo_store import DemoStore
from mt_policy.errors import MtPolicyError, unknown_name
from mt_policy.model import MultiTaskPolicy
from mt_policy.schema import PROPRIO_KEY, camera_key

DEFAULT_OPSET = 17
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 0.15
"""Max abs action error accepted for a TensorRT fp16 engine against PyTorch fp32. Measured on the
demo policy, PyTorch's own fp16 copy is up to 0.08-0.11 off its fp32 actions (the error grows in the
heads' first layer), so fp16 is a speed/accuracy trade the user opts into; the ONNX graph stays fp32."""
RANDOM_SAMPLES = 16
STORED_SAMPLES = 32


class StackedHeads(nn.Module):
    """Several `Linear-ReLU-Linear` heads as stacked weights indexed by task: only the chosen head computes."""

    def __init__(self, model: MultiTaskPolicy, names: list[str]) -> None:
        super().__init__()
        chunk = model.config.action_chunk
        sizes = [model.tasks[model.task_index[n]].schema.action.size for n in names]
        self.chunk, self.width = chunk, max(sizes)
        w1, b1, w2, b2, mean, std = [], [], [], [], [], []
        for name, size in zip(names, sizes, strict=True):
            first, _, last = model.heads[name]
            pad = self.width - size
            w1.append(first.weight.detach())
            b1.append(first.bias.detach())
            # (Ta*A, H) -> (Ta, A, H), zero rows for the padded actions, back to (Ta*A_max, H)
            w2.append(F.pad(last.weight.detach().view(chunk, size, -1), (0, 0, 0, pad)).reshape(chunk * self.width, -1))
            b2.append(F.pad(last.bias.detach().view(chunk, size), (0, pad)).reshape(-1))
            i = model.task_index[name]
            mean.append(F.pad(getattr(model, f"action_mean_{i}"), (0, pad)))
            std.append(F.pad(getattr(model, f"action_std_{i}"), (0, pad), value=1.0))
        for key, value in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("mean", mean), ("std", std)):
            self.register_buffer(key, torch.stack(value))

    def forward(self, features: torch.Tensor, task: torch.Tensor) -> torch.Tensor:  # (B, D), (B,)
        hidden = F.relu(torch.bmm(self.w1[task], features[:, :, None])[..., 0] + self.b1[task])  # (B, H)
        out = torch.bmm(self.w2[task], hidden[:, :, None])[..., 0] + self.b2[task]  # (B, Ta*A_max)
        out = out.view(-1, self.chunk, self.width)
        return out * self.std[task][:, None, :] + self.mean[task][:, None, :]  # (B, Ta, A_max)


class ExportGraph(nn.Module):
    """The traced module: named per-camera inputs, proprio (padded to P), and the task index if several tasks."""

    def __init__(self, model: MultiTaskPolicy, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)
        self.cameras = list(model.observation.camera_names)
        self.register_buffer("model_ids", torch.tensor([model.task_index[n] for n in names], dtype=torch.long))
        self.stacked = StackedHeads(self.model, names) if len(names) > 1 else None

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        obs = {camera_key(c): x for c, x in zip(self.cameras, inputs, strict=False)}
        obs[PROPRIO_KEY] = inputs[len(self.cameras)]
        if self.stacked is None:
            name = self.names[0]
            ids = torch.zeros_like(obs[PROPRIO_KEY][:, 0], dtype=torch.long) + self.model_ids[0]
            out = self.model.denormalize_action(name, self.model.head(name, self.model.features(obs, ids)))
        else:
            task = inputs[len(self.cameras) + 1]
            out = self.stacked(self.model.features(obs, self.model_ids[task]), task)
        return out

    def input_names(self) -> list[str]:
        return [*self.cameras, PROPRIO_INPUT, *([TASK_INPUT] if self.stacked is not None else [])]

    def reference(self, obs: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        """PyTorch's own answer for task `name`: the checkpoint's forward, not this module's."""
        return self.model(obs, name)


@dataclass
class ParityReport:
    """Worst action error of the ONNX graph against PyTorch, per task and input source."""

    tolerance: float
    errors: dict[str, dict[str, float]] = field(default_factory=dict)  # source -> task -> max abs error
    samples: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def max_error(self) -> float:
        return max((e for per_task in self.errors.values() for e in per_task.values()), default=0.0)

    @property
    def ok(self) -> bool:
        return self.max_error <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "max_abs_error": self.max_error, "passed": self.ok,
                "errors": self.errors, "samples": self.samples, "skipped": self.skipped}


@dataclass
class ExportResult:
    directory: Path
    parity: ParityReport
    manifest: dict[str, Any]
    engine_parity: dict[str, Any] | None = None


def _select(model: MultiTaskPolicy, tasks: str | list[str] | None) -> list[str]:
    if tasks is None:
        return [t.name for t in model.tasks]
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise ExportError("--tasks names no task")
    for name in names:
        if name not in model.task_index:
            raise unknown_name("checkpoint task", name, list(model.task_index))
    return names


def _random_obs(model: MultiTaskPolicy, name: str, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Plausible inputs: uniform images, proprio drawn around the task's own normalisation statistics."""
    i = model.task_index[name]
    size = model.tasks[i].schema.observation.proprio_size
    mean, std = model.proprio_mean[i, :size].numpy(), model.proprio_std[i, :size].numpy()
    obs = {camera_key(c.name): rng.integers(0, 256, (n, *c.shape), dtype=np.uint8) for c in model.observation.cameras}
    obs[PROPRIO_KEY] = (mean + 2.0 * std * rng.standard_normal((n, size))).astype(np.float32)
    return obs


def _stored_obs(store_path: Path, model: MultiTaskPolicy, name: str, n: int) -> dict[str, np.ndarray]:
    """Up to `n` frames spread evenly over the store, checked against the checkpoint's schema. A store may
    hold more cameras than the policy reads (a run trained on `data.cameras`): only its cameras are read."""
    store = DemoStore.open(store_path)
    expected = model.tasks[model.task_index[name]].schema
    try:
        observed = store.schema.with_cameras(expected.observation.camera_names, where=str(store_path)).observation
    except MtPolicyError as err:
        raise ExportError(f"{err} (the checkpoint's task {name} reads {list(expected.observation.camera_names)})") from None
    if observed != expected.observation:
        raise ExportError(f"{store_path}: observes {store.schema.observation}, but the checkpoint's task {name} "
                          f"was trained on {expected.observation}")
    if store.n_frames == 0:
        raise ExportError(f"{store_path}: store is empty")
    rows = np.unique(np.linspace(0, store.n_frames - 1, min(n, store.n_frames)).astype(int))
    return {key: np.stack([store.frames(key, r, r + 1)[0] for r in rows]) for key in expected.observation_keys()}


def _graph_feed(model: MultiTaskPolicy, graph: ExportGraph, obs: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    n = len(obs[PROPRIO_KEY])
    proprio = np.zeros((n, model.observation.proprio_size), np.float32)
    proprio[:, : obs[PROPRIO_KEY].shape[1]] = obs[PROPRIO_KEY]
    feed = {c: obs[camera_key(c)] for c in graph.cameras} | {PROPRIO_INPUT: proprio}
    if graph.stacked is not None:
        feed[TASK_INPUT] = np.full(n, graph.names.index(name), np.int64)
    return feed


def check_parity(model: MultiTaskPolicy, graph: ExportGraph, run: Callable[[dict[str, np.ndarray]], np.ndarray],
                 stores: dict[str, Path], tolerance: float, seed: int = 0) -> ParityReport:
    """Compare `run` (a feed -> (B, Ta, A_max) function) with PyTorch on random and on stored observations."""
    report = ParityReport(tolerance)
    rng = np.random.default_rng(seed)
    sources: list[tuple[str, str, dict[str, np.ndarray]]] = []
    for name in graph.names:
        sources.append(("random", name, _random_obs(model, name, RANDOM_SAMPLES, rng)))
        if name in stores:
            sources.append(("stored", name, _stored_obs(stores[name], model, name, STORED_SAMPLES)))
        else:
            report.skipped.append(f"stored observations for {name}: no demo store found")
    for source, name, obs in sources:
        size = model.tasks[model.task_index[name]].schema.action.size
        with torch.inference_mode():
            expected = graph.reference({k: torch.as_tensor(v) for k, v in obs.items()}, name).numpy()
        feed = _graph_feed(model, graph, obs, name)
        got = np.concatenate([run(feed), run({k: v[:1] for k, v in feed.items()})])  # dynamic batch and batch 1
        if got.shape[1:] != (model.config.action_chunk, graph.stacked.width if graph.stacked else size):
            raise ExportError(f"exported graph returned {got.shape[1:]} per sample for task {name}")
        error = float(np.abs(got[:, :, :size] - np.concatenate([expected, expected[:1]])).max())
        report.errors.setdefault(source, {})[name] = error
        report.samples[source] = report.samples.get(source, 0) + len(got)
    return report


def ort_cpu_runner(graph_path: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(graph_path), options, providers=["CPUExecutionProvider"])
    return lambda feed: session.run([OUTPUT], feed)[0]


def _find_stores(manifest: dict[str, Any], names: list[str], demos: list[Path] | None) -> dict[str, Path]:
    """Stores to draw real observations from: `--demos` (by each store's task), else the training run's."""
    found: dict[str, Path] = {}
    if demos:
        for path in demos:
            task = DemoStore.open(path).task.name
            if task in names:
                found[task] = Path(path)
        return found
    for name, path in ((manifest.get("provenance") or {}).get("stores") or {}).items():
        if name in names and Path(path, "zarr.json").is_file():
            found[name] = Path(path)
    return found


def _prepare_out(out: Path) -> Path:
    """A temporary sibling of `out`; refuses to later replace a directory that is not an export."""
    if out.exists() and any(out.iterdir()):
        try:
            read_export(out)
        except MtPolicyError:
            raise ExportError(f"{out}: exists and is not an mt_policy export; choose another --out") from None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def export(checkpoint: str | Path, out: str | Path, tasks: str | list[str] | None = None, opset: int = DEFAULT_OPSET,
           fp16: bool = False, demos: list[Path] | None = None, tensorrt: bool = False,
           log: Callable[[str], None] = print) -> ExportResult:
    """Export `checkpoint` to `out/` (policy.onnx + policy.json, and policy.engine with `tensorrt`).

    Nothing is written unless parity holds: the new directory is assembled beside `out` and renamed
    into place at the end.
    """
    if tensorrt:
        from deploy.tensorrt_engine import require_gpu

        require_gpu()  # before any work: say at once that this machine cannot build an engine
    checkpoint, out = Path(checkpoint), Path(out)
    model, ckpt_manifest = load_checkpoint(checkpoint)
    names = _select(model, tasks)
    graph = ExportGraph(model, names).eval()
    stores = _find_stores(ckpt_manifest, names, demos)
    tmp = _prepare_out(out)
    try:
        onnx_path = tmp / GRAPH
        example = _graph_feed(model, graph, _random_obs(model, names[0], 2, np.random.default_rng(0)), names[0])
        _trace(graph, example, onnx_path, opset)
        log(f"exported {len(names)} task(s) to ONNX opset {opset}; checking parity with PyTorch")
        parity = check_parity(model, graph, ort_cpu_runner(onnx_path), stores, FP32_TOLERANCE)
        if not parity.ok:
            raise ExportError(f"ONNX graph disagrees with PyTorch: max abs action error {parity.max_error:.3g} > "
                              f"{parity.tolerance:g} ({parity.errors}); nothing written")
        manifest = _manifest(model, graph, ckpt_manifest, checkpoint, onnx_path, opset, fp16, parity, stores)
        write_manifest(tmp, manifest)
        engine_parity = None
        if tensorrt:
            from deploy.tensorrt_engine import build_engine

            engine_parity = build_engine(model, graph, tmp, fp16=fp16, stores=stores, log=log)
            manifest["engine"] = engine_parity
            write_manifest(tmp, manifest)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, parity, manifest, engine_parity)


def _trace(graph: ExportGraph, example: dict[str, np.ndarray], path: Path, opset: int) -> None:
    import warnings

    names = graph.input_names()
    args = tuple(torch.as_tensor(example[n]) for n in names)
    axes = {n: {0: "batch"} for n in names} | {OUTPUT: {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python bools on static shapes
        torch.onnx.export(graph, args, str(path), input_names=names, output_names=[OUTPUT], dynamic_axes=axes,
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    import onnx

    onnx.checker.check_model(str(path))


def _replace(tmp: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _manifest(model: MultiTaskPolicy, graph: ExportGraph, ckpt: dict[str, Any], checkpoint: Path, onnx_path: Path,
              opset: int, fp16: bool, parity: ParityReport, stores: dict[str, Path]) -> dict[str, Any]:
    import onnx
    import onnxruntime

    obs = model.observation
    width = graph.stacked.width if graph.stacked else model.tasks[model.task_index[graph.names[0]]].schema.action.size
    inputs = [{"name": c.name, "shape": ["batch", *c.shape], "dtype": "uint8"} for c in obs.cameras]
    inputs.append({"name": PROPRIO_INPUT, "shape": ["batch", obs.proprio_size], "dtype": "float32"})
    if graph.stacked is not None:
        inputs.append({"name": TASK_INPUT, "shape": ["batch"], "dtype": "int64"})
    by_name = {t["name"]: t for t in ckpt["tasks"]}
    tasks = []
    for index, name in enumerate(graph.names):
        record = {k: v for k, v in by_name[name].items() if k != "head_index"}
        tasks.append(record | {"index": index, "checkpoint_head_index": model.task_index[name],
                               "action_size": model.tasks[model.task_index[name]].schema.action.size})
    source = ckpt.get("provenance") or {}
    return {
        "graph": GRAPH,
        "graph_sha256": sha256_file(onnx_path),
        "opset": opset,
        "precision": "fp32",
        "fp16": fp16,  # the TensorRT engine / TensorRT EP run in half precision
        "inputs": inputs,
        "outputs": [{"name": OUTPUT, "shape": ["batch", model.config.action_chunk, width], "dtype": "float32"}],
        "action_chunk": model.config.action_chunk,
        "action_width": width,
        "observation": ckpt["observation"],
        "tasks": tasks,
        "model": ckpt["model"],
        "parameters": {"checkpoint": sum(p.numel() for p in model.parameters()),
                       "graph": int(sum(np.prod(t.dims) for t in onnx.load(str(onnx_path)).graph.initializer))},
        "parity": parity.to_dict() | {"stores": {k: str(v) for k, v in stores.items()}},
        "provenance": {
            "checkpoint": str(checkpoint.resolve()),
            "checkpoint_step": source.get("step"),
            "demo_seeds": source.get("demo_seeds"),
            "git_commit": source.get("git_commit"),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "mt_policy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


__all__ = ["ENGINE", "ExportGraph", "ExportResult", "ParityReport", "StackedHeads", "check_parity", "export"]
