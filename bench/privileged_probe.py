"""Where does a policy trained with `train.privileged_weight` know the goal from? Its probe, read out.

A checkpoint trained with the privileged-state loss carries one linear probe per task on the shared
features (`MultiTaskPolicy.privileged_heads`). This reads the probe's prediction of some state entries
(by default Meta-World's goal position, entries 36:39 of its 39-D state) and measures the error in the
state's units (metres) on three sets of frames:

- `train frames`: random frames of the demo store, where late in an episode the hand, which the policy
  also gets as `agent_pos`, already stands near the goal (a shortcut);
- `first frames, demo seeds`: each demo's first frame, where the arm always starts in the same place, so
  only the image can tell where the goal is;
- `first frames, new seeds`: first frames of evaluation seeds the policy never trained on.

Beside each, "predict the mean" is the error of the store's mean state: a probe that does not see the
goal lands there.

    .venv/bin/python bench/privileged_probe.py --store runs/pilot/demos/reach-v3.zarr runs/pilot/w*/checkpoints/last

Prints a table and writes `bench/results/privileged_probe.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings

from bench_json import write_json  # noqa: E402

import sim  # noqa: E402, F401  (sets MUJOCO_GL before anything imports mujoco)
from mt_policy.checkpoint import load_checkpoint, run_config  # noqa: E402
from mt_policy.demo_store import DemoStore, LoadedDemos  # noqa: E402
from mt_policy.model import MultiTaskPolicy  # noqa: E402
from mt_policy.schema import PRIVILEGED_KEY  # noqa: E402
from mt_policy.seeds import EVAL_SEEDS  # noqa: E402
from sim.evaluate import observation_config  # noqa: E402
from sim.tasks import get_task  # noqa: E402
from training.privileged import PrivilegedTargets  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--store", type=Path, required=True, help="the demo store (recorded with --privileged)")
    p.add_argument("--entries", default="36:39", help="START:STOP of the state entries to read (default: the goal)")
    p.add_argument("--frames", type=int, default=512, help="random training frames")
    p.add_argument("--new-seeds", type=int, default=20, help="evaluation seeds for new first frames")
    p.add_argument("--out", type=Path, default=RESULTS / "privileged_probe.json")
    return p.parse_args(argv)


def probe(model: MultiTaskPolicy, task: str, targets: PrivilegedTargets, obs: dict[str, np.ndarray]) -> np.ndarray:
    """The probe's state prediction (n, S) for a batch of observations, undoing training's normalisation."""
    batch = {k: torch.from_numpy(v) for k, v in obs.items()}
    n = len(next(iter(batch.values())))
    with torch.no_grad():
        normalised = model.privileged_heads[task](model.features(batch, model.task_ids(task, n)))
        return (normalised * targets.std[task] + targets.mean[task]).numpy()


def new_first_frames(demos: LoadedDemos, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """First observations and states of `n` evaluation seeds, rendered as the store recorded them."""
    config = dataclasses.replace(observation_config(demos.schema.observation), privileged=True)
    env = get_task(demos.task.name).make_env(config)
    try:
        frames = [env.reset(seed) for seed in EVAL_SEEDS.take(n)]
    finally:
        env.close()
    keys = [k for k in frames[0] if k.startswith("obs/")]
    return {k: np.stack([f[k] for f in frames]) for k in keys}, np.stack([f[PRIVILEGED_KEY] for f in frames])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    demos = DemoStore.open(args.store).load()
    if PRIVILEGED_KEY not in demos.arrays:
        raise SystemExit(f"{args.store}: records no privileged state; collect it with `mt-policy collect --privileged`")
    task, state = demos.task.name, demos.arrays[PRIVILEGED_KEY]
    targets = PrivilegedTargets.from_demos({task: demos}, 1.0, {task: str(args.store)})  # training's normalisation
    try:
        lo, hi = (int(x) for x in args.entries.split(":"))
    except ValueError:
        raise SystemExit(f"--entries {args.entries!r}: expected START:STOP, e.g. 36:39") from None
    if not 0 <= lo < hi <= state.shape[1]:
        raise SystemExit(f"--entries {args.entries}: outside the store's {state.shape[1]} state entries")
    obs_keys = [k for k in demos.arrays if k.startswith("obs/")]
    rng = np.random.default_rng(0)
    sets = {"train frames": rng.choice(demos.n_frames, min(args.frames, demos.n_frames), replace=False),
            "first frames, demo seeds": demos.episode_starts}
    new_obs, new_state = new_first_frames(demos, args.new_seeds)

    def error(pred: np.ndarray, truth: np.ndarray) -> float:
        return float(np.linalg.norm(pred[:, lo:hi] - truth[:, lo:hi], axis=1).mean())

    mean = state.mean(0, keepdims=True)
    baseline = {name: error(mean, state[rows]) for name, rows in sets.items()}
    baseline["first frames, new seeds"] = error(mean, new_state)
    rows = []
    for path in args.checkpoints:
        model, manifest = load_checkpoint(path)
        if not manifest["model"].get("privileged_size"):
            print(f"{path}: trained without the privileged-state probe (train.privileged_weight=0); skipped")
            continue
        if task not in model.task_index:
            raise SystemExit(f"{path}: has no task {task!r} (the store's); it serves {', '.join(model.task_index)}")
        model.eval()
        weight = run_config(manifest).get("train", {}).get("privileged_weight")  # None: not a training run's
        errors = {name: error(probe(model, task, targets, {k: demos.arrays[k][idx] for k in obs_keys}), state[idx])
                  for name, idx in sets.items()}
        errors["first frames, new seeds"] = error(probe(model, task, targets, new_obs), new_state)
        rows.append({"checkpoint": str(path), "privileged_weight": weight, "errors": errors})
    columns = list(baseline)
    print(f"{task}: error of the probe's state entries {lo}:{hi} (state units), mean over frames")
    print(f"{'checkpoint':50s} {'weight':>7s} " + " ".join(f"{c:>25s}" for c in columns))
    print(f"{'predict the mean':50s} {'':>7s} " + " ".join(f"{baseline[c]:25.4f}" for c in columns))
    for r in rows:
        print(f"{r['checkpoint'][-50:]:50s} {str(r['privileged_weight']):>7s} "
              + " ".join(f"{r['errors'][c]:25.4f}" for c in columns))
    write_json({"command": "python bench/privileged_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
                "task": task, "store": str(args.store), "entries": [lo, hi], "predict_the_mean": baseline,
                "checkpoints": rows}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
