"""How well do checkpoints fit their demos? Mean L1 on one fixed set of training windows.

A run's logged training loss is one batch per logging step, drawn by the run's own random stream, so two
runs (or two steps of one run) are scored on different samples. This scores every checkpoint on the same
windows: `--batches` task-balanced batches of `--batch-size`, drawn once with `--seed` from the stores,
each checkpoint's evaluation weights (the EMA when it kept one) in eval mode (no augmentation), the
training loss itself (masked L1 on normalised action chunks), averaged per task, then over tasks.

    .venv/bin/python bench/fit.py --data runs/bench_mt10/demos --demos 50 RUN/checkpoints/last OTHER/checkpoints/last

Every checkpoint must serve the same tasks from the same cameras with the same action chunk (otherwise
their losses are not comparable). A checkpoint trained with `data.clip_actions` is scored against the same
windows' actions clipped to each task's bounds, the targets it trained on (the table says which). Prints a
table; writes `--out` (default bench/results/fit.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings

from bench_json import write_json  # noqa: E402

from mt_policy.checkpoint import load_checkpoint, run_config  # noqa: E402
from mt_policy.errors import MtPolicyError  # noqa: E402
from training.config import ResolvedTask  # noqa: E402
from training.data import Batch, MultiTaskBatcher  # noqa: E402
from training.trainer import load_demos, task_losses  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint directories (e.g. RUN/checkpoints/last)")
    p.add_argument("--data", type=Path, required=True, help="directory holding <task>.zarr for every task")
    p.add_argument("--demos", type=int, default=None, help="use the first N demos of each store (default all)")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", type=Path, default=RESULTS / "fit.json")
    return p.parse_args(argv)


def signature(model: Any) -> tuple[list[str], tuple[str, ...], int]:
    """What two checkpoints must share for their losses to be comparable: tasks, cameras, action chunk."""
    return list(model.task_index), tuple(model.observation.camera_names), model.config.action_chunk


def fixed_batches(models: list[Any], data: Path, args: argparse.Namespace) -> list[Batch]:
    first = models[0]
    for path, model in zip(args.checkpoints[1:], models[1:], strict=True):
        if signature(model) != signature(first):
            raise SystemExit(f"{path}: serves tasks/cameras/chunk {signature(model)}, but {args.checkpoints[0]} "
                             f"serves {signature(first)}; their losses are not comparable")
    tasks = list(first.task_index)
    for task in tasks:
        if not (data / f"{task}.zarr").exists():
            raise SystemExit(f"{data / f'{task}.zarr'}: no store for task {task!r} (the checkpoints serve {tasks})")
    # The trainer's loader: it also refuses a store that holds another task, or no episodes.
    demos = load_demos([ResolvedTask(t, str(data / f"{t}.zarr"), 1.0, args.demos) for t in tasks],
                       list(first.observation.camera_names))
    batcher = MultiTaskBatcher(demos, first.task_index, np.full(len(tasks), 1.0 / len(tasks)),
                               first.config.action_chunk, first.observation.proprio_size,
                               max_episodes={t: args.demos for t in tasks})
    rng = np.random.default_rng(args.seed)
    return [batcher.sample(rng, args.batch_size) for _ in range(args.batches)]


def clipped(batch: Batch, model: Any) -> Batch:
    """`batch` with each task's action targets clipped to the task's bounds (padding is masked in the loss anyway)."""
    actions = {}
    for task, a in batch.actions.items():
        bounds = model.tasks[model.task_index[task]].schema.action
        actions[task] = a.clamp(torch.as_tensor(bounds.low, dtype=a.dtype), torch.as_tensor(bounds.high, dtype=a.dtype))
    return dataclasses.replace(batch, actions=actions)


def fit(model: Any, batches: list[Batch], clip: bool = False) -> dict[str, float]:
    per_task: dict[str, list[float]] = {}
    with torch.no_grad():
        for batch in batches:
            batch = clipped(batch, model) if clip else batch
            for task, loss in task_losses(model, batch)[0].items():
                per_task.setdefault(task, []).append(float(loss))
    return {task: float(np.mean(values)) for task, values in per_task.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        loaded = [load_checkpoint(path) for path in args.checkpoints]
        models = [model.eval() for model, _ in loaded]
        batches = fixed_batches(models, args.data, args)
    except MtPolicyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = []
    print(f"{'checkpoint':<60} {'train samples':>13} {'targets':>8} {'mean L1':>8}")
    for path, model, (_, manifest) in zip(args.checkpoints, models, loaded, strict=True):
        config = run_config(manifest)
        train = config.get("train", {})
        samples = train["steps"] * train["batch_size"] if "steps" in train else None
        clip = bool(config.get("data", {}).get("clip_actions"))
        per_task = fit(model, batches, clip)
        rows.append({"checkpoint": str(path), "train_samples": samples, "targets": "clipped" if clip else "recorded",
                     "mean_l1": float(np.mean(list(per_task.values()))), "per_task_l1": per_task})
        print(f"{str(path):<60} {samples if samples is not None else '-':>13} {rows[-1]['targets']:>8} "
              f"{rows[-1]['mean_l1']:>8.4f}")
    write_json({"command": "python bench/fit.py " + " ".join(sys.argv[1:] if argv is None else argv),
                "windows": args.batches * args.batch_size, "seed": args.seed, "demos": args.demos, "runs": rows}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
