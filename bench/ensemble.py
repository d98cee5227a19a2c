"""Does averaging the action chunks of independently trained checkpoints beat each checkpoint alone?

On MT10 from pixels the precision tasks swing by 20 successes in 50 between training seeds of one recipe
(bench/RESULTS.md), so the question is whether that variance can be averaged away: two half-budget
models, their chunks averaged at every call, against each alone and against one model on the whole
budget. This rolls out every policy (each checkpoint alone, then the average of all) on the same
evaluation seeds, as `mt-policy eval` does (`ChunkRunner`, actions clipped by `run_episode`, the demo
seeds checked against the evaluation seeds), and prints one table. A measurement, not a product
feature: an export or the ROS node serves one checkpoint.

    .venv/bin/python bench/ensemble.py RUN_A/checkpoints/last RUN_B/checkpoints/last \\
        --tasks reach-v3,push-v3 --episodes 25 --first-episode 1000

Writes `--out` (default bench/results/ensemble.json).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings

from bench_json import write_json  # noqa: E402

import sim  # noqa: E402, F401  (sets MUJOCO_GL before anything imports mujoco)
from mt_policy.checkpoint import load_checkpoint
from mt_policy.errors import MtPolicyError
from mt_policy.progress import progress_bar
from mt_policy.runner import ChunkRunner, torch_predictor
from sim.eval_report import wilson_interval
from sim.evaluate import PolicySource, plan_evaluation, run_episode
from sim.pool import run_jobs
from sim.tasks import ObservationConfig, TaskSpec

RESULTS = Path(__file__).resolve().parent / "results"
ENSEMBLE = "average of all"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", type=Path, nargs="+", help="two or more checkpoints of the same tasks and inputs")
    p.add_argument("--tasks", help="comma-separated subset of their tasks (default all)")
    p.add_argument("--episodes", type=int, default=25, help="episodes per task and policy")
    p.add_argument("--first-episode", type=int, default=1000,
                   help="index of the first evaluation seed (default 1000: a slice the reported seeds never see)")
    p.add_argument("--n-action-steps", type=int, default=4, help="actions executed per predicted chunk")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-steps", type=int, help="cap episodes (smoke runs only: outcomes not comparable)")
    p.add_argument("--ensemble-only", action="store_true", help="skip the members alone")
    p.add_argument("--out", type=Path, default=RESULTS / "ensemble.json")
    return p.parse_args(argv)


_MODELS: dict[str, Any] = {}
_ENVS: dict[tuple[str, ObservationConfig], Any] = {}


def averaged_predictor(paths: tuple[str, ...], task: str):
    """One task's predictor averaging the chunks of the checkpoints at `paths` (each loaded once per worker)."""
    import torch

    torch.set_num_threads(1)  # workers are the unit of parallelism
    for path in paths:
        if path not in _MODELS:
            _MODELS[path] = load_checkpoint(path)[0]
    members = [torch_predictor(_MODELS[p], task) for p in paths]
    if len(members) == 1:
        return members[0]
    return lambda obs: np.mean([m(obs) for m in members], axis=0)


def _episode(paths: tuple[str, ...], spec: TaskSpec, obs_config: ObservationConfig, seed: int, max_steps: int,
             n_action_steps: int, chunk: int) -> tuple[bool, int]:
    key = (spec.name, obs_config)
    if key not in _ENVS:
        _ENVS[key] = spec.make_env(obs_config)
    runner = ChunkRunner(averaged_predictor(paths, spec.name), chunk, n_action_steps)
    success, steps, _ = run_episode(_ENVS[key], runner.act, seed, max_steps)
    return success, steps


def check_members(paths: list[Path]) -> int:
    """The members' common action chunk; refuses checkpoints that cannot be averaged."""
    if len(paths) < 2:
        raise MtPolicyError("an ensemble needs two or more checkpoints")
    first, _ = load_checkpoint(paths[0])
    for path in paths[1:]:
        model, _ = load_checkpoint(path)
        for what, mine, theirs in (("tasks", [t.name for t in model.tasks], [t.name for t in first.tasks]),
                                   ("observation", model.observation, first.observation),
                                   ("action chunk", model.config.action_chunk, first.config.action_chunk)):
            if mine != theirs:
                raise MtPolicyError(f"{path}: its {what} ({mine}) differ from {paths[0]}'s ({theirs}); "
                                    f"only checkpoints of the same tasks, inputs and chunk can be averaged")
    return first.config.action_chunk


def run(args: argparse.Namespace) -> dict[str, Any]:
    paths = [p.resolve() for p in args.checkpoints]
    chunk = check_members(paths)
    # Every member's plan: each checks its own demo seeds against the evaluation seeds.
    plans = [plan_evaluation(PolicySource(str(p)), args.tasks, args.episodes, args.n_action_steps, None, None,
                             args.max_steps, args.first_episode) for p in paths]
    plan = plans[0]
    policies = {} if args.ensemble_only else {str(p): (str(p),) for p in paths}
    policies[ENSEMBLE] = tuple(str(p) for p in paths)
    jobs = [(name, task, seed) for name in policies for seed in plan.seeds for task in plan.specs]
    outcomes: dict[str, dict[str, list[bool]]] = {n: {t: [] for t in plan.specs} for n in policies}
    todo = iter(jobs)
    bar = progress_bar(len(jobs), "ensemble", "ep", True)
    start, warnings = time.perf_counter(), []

    def next_job():
        item = next(todo, None)
        if item is None:
            return None
        name, task, seed = item
        return (policies[name], plan.specs[task], plan.obs_config, seed, plan.limits[task], args.n_action_steps,
                chunk)

    names = {members: name for name, members in policies.items()}

    def on_result(job, result) -> None:
        outcomes[names[job[0]]][job[1].name].append(bool(result[0]))
        bar.update(1)

    try:
        run_jobs(_episode, next_job, on_result, args.workers, warnings, what="ensemble worker")
    finally:
        bar.close()
    return {"checkpoints": [str(p) for p in paths], "tasks": list(plan.specs), "seeds": plan.seeds,
            "n_action_steps": args.n_action_steps, "warnings": warnings,
            "wall_seconds": time.perf_counter() - start,
            "policies": {name: _summary(per_task) for name, per_task in outcomes.items()}}


def _summary(per_task: dict[str, list[bool]]) -> dict[str, Any]:
    tasks = {}
    for task, wins in per_task.items():
        low, high = wilson_interval(sum(wins), len(wins))
        tasks[task] = {"successes": sum(wins), "episodes": len(wins), "ci95": [low, high]}
    return {"tasks": tasks, "mean_success": float(np.mean([t["successes"] / t["episodes"] for t in tasks.values()]))}


def table(result: dict[str, Any]) -> str:
    tasks = result["tasks"]
    lines = ["| policy | mean | " + " | ".join(t.removesuffix("-v3") for t in tasks) + " |",
             "|---|---:|" + "---:|" * len(tasks)]
    for name, summary in result["policies"].items():
        cells = [f"{summary['tasks'][t]['successes']}/{summary['tasks'][t]['episodes']}" for t in tasks]
        lines.append(f"| {name} | {summary['mean_success']:.1%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except MtPolicyError as err:
        print(f"bench/ensemble.py: error: {err}", file=sys.stderr)
        return 2
    write_json(result, args.out)
    print(table(result))
    print(f"seeds {result['seeds'][0]}..{result['seeds'][-1]}, {result['wall_seconds'] / 60:.1f} min; {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
