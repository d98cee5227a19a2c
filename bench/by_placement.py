"""Where in a task's placement range does a checkpoint fail? Outcomes sorted by the expert's first move.

A success rate says how often a policy fails, not where. Meta-World randomises object placement per seed,
and the scripted expert's first action points from the hand to its first target (a handle, a puck), so
its components order the seeds by placement without reading any env internals. This rolls a checkpoint
out on the evaluation seeds of one task, as `mt-policy eval` does (same seeds, `ChunkRunner`, actions
clipped by `run_episode`), records the expert's first action at each reset, and prints the outcomes sorted
along one action axis: a run of failures at one end means the policy has not learnt that tail of the
placements (see bench/RESULTS.md, door-open). It also records how well the policy's first chunk agrees
with the expert's first action (cosine over the position axes), to tell a wrong start from a lost grasp.

    .venv/bin/python bench/by_placement.py RUN/checkpoints/last --task door-open-v3 --episodes 30

Writes `--out` (default bench/results/by_placement.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings

from bench_json import write_json  # noqa: E402

import sim  # noqa: E402, F401  (sets MUJOCO_GL before anything imports mujoco)
from mt_policy.checkpoint import load_checkpoint
from mt_policy.errors import MtPolicyError
from mt_policy.runner import ChunkRunner, torch_predictor
from mt_policy.seeds import EVAL_SEEDS
from sim.evaluate import observation_config, registry_spec, run_episode

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a checkpoint directory (e.g. RUN/checkpoints/last)")
    p.add_argument("--task", required=True, help="one of the checkpoint's tasks (it needs a scripted expert)")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--first-episode", type=int, default=0, help="index of the first evaluation seed (as mt-policy eval)")
    p.add_argument("--n-action-steps", type=int, default=4, help="actions executed per predicted chunk")
    p.add_argument("--axis", type=int, default=0, help="action component to sort by (0: x)")
    p.add_argument("--max-steps", type=int, help="cap episodes (smoke runs only: outcomes not comparable)")
    p.add_argument("--out", type=Path, default=RESULTS / "by_placement.json")
    return p.parse_args(argv)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 0 else 0.0


def roll_out(args: argparse.Namespace) -> dict[str, Any]:
    model, _ = load_checkpoint(args.checkpoint)
    predict = torch_predictor(model, args.task)  # refuses a task the checkpoint lacks, listing those it serves
    entry = model.tasks[model.task_index[args.task]]
    if not 0 <= args.axis < entry.schema.action.size:
        raise MtPolicyError(f"--axis {args.axis}: {args.task} actions have {entry.schema.action.size} components")
    obs_config = observation_config(model.observation)
    env = registry_spec(entry, obs_config, None).make_env(obs_config)
    if not hasattr(env, "expert_action"):
        raise MtPolicyError(f"{args.task}: its environment has no scripted expert to order placements by")
    limit = entry.schema.max_episode_steps
    max_steps = min(args.max_steps or limit, limit)
    position = slice(0, min(3, entry.schema.action.size))  # the hand's motion; the gripper says nothing of placement
    episodes = []
    try:
        for seed in EVAL_SEEDS.take(args.episodes, args.first_episode):
            obs = env.reset(seed)
            expert = np.asarray(env.expert_action(), dtype=np.float64)
            first_chunk = np.asarray(predict(obs), dtype=np.float64)[: args.n_action_steps].mean(axis=0)
            runner = ChunkRunner(predict, model.config.action_chunk, args.n_action_steps)
            success, steps, _ = run_episode(env, runner.act, seed, max_steps)
            episodes.append({"seed": seed, "success": bool(success), "steps": steps,
                             "expert_first_action": expert.round(4).tolist(),
                             "first_chunk_cosine": round(cosine(first_chunk[position], expert[position]), 4)})
    finally:
        env.close()
    episodes.sort(key=lambda e: e["expert_first_action"][args.axis])
    return {"checkpoint": str(args.checkpoint), "task": args.task, "axis": args.axis,
            "n_action_steps": args.n_action_steps, "max_steps": args.max_steps,
            "successes": sum(e["success"] for e in episodes), "episodes": episodes}


def report_lines(result: dict[str, Any]) -> list[str]:
    axis, episodes = result["axis"], result["episodes"]
    lines = [f"{result['task']}: {result['successes']}/{len(episodes)} successes, sorted by the expert's first "
             f"action[{axis}] (S success, F failure):",
             "  " + "".join("S" if e["success"] else "F" for e in episodes),
             f"  {'seed':>8} {'outcome':>8} {'steps':>6} {f'expert[{axis}]':>10} {'first-chunk cos':>16}"]
    lines += [f"  {e['seed']:>8} {'success' if e['success'] else 'failure':>8} {e['steps']:>6} "
              f"{e['expert_first_action'][axis]:>10.3f} {e['first_chunk_cosine']:>16.3f}" for e in episodes]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.episodes < 1:
        print("error: --episodes must be at least 1", file=sys.stderr)
        return 2
    try:
        result = roll_out(args)
    except MtPolicyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(result)))
    write_json(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
