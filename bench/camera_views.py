"""What each camera shows of a task, at the start of an expert demo and where it succeeds, as one PNG grid.

    .venv/bin/python bench/camera_views.py                     # the figure in bench/RESULTS.md (`wrist`)
    .venv/bin/python bench/camera_views.py --tasks push-v3 --cameras corner2,topview,behindGripper --out views.png

One row per task; the reset frame of every camera, then the last frame of every camera (the step the expert
succeeded on, or its last step). Demos are rolled out as `mt-policy collect --tool-centre` records them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import sim  # noqa: F401  (sets MUJOCO_GL before anything imports mujoco)
from mt_policy.schema import camera_key
from sim.collect import rollout
from sim.tasks import ObservationConfig, get_task

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "peg-insert-side-v3")


def task_row(task: str, cameras: tuple[str, ...], image_size: int, seed: int) -> np.ndarray:
    """Reset frames of every camera side by side, then last frames: (size, 2 * len(cameras) * size, 3) uint8."""
    spec = get_task(task)
    env = spec.make_env(ObservationConfig(cameras=cameras, image_size=(image_size, image_size)))
    try:
        if spec.tool_centre_expert:
            env.aim_tool_centre()
        frames, _ = rollout(env, seed, env.schema.max_episode_steps)
    finally:
        env.close()
    return np.concatenate([frames[camera_key(c)][i] for i in (0, -1) for c in cameras], axis=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated (default: %(default)s)")
    p.add_argument("--cameras", default="corner2,behindGripper", help="comma-separated (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=96, help="pixels, as the stores record them")
    p.add_argument("--scale", type=int, default=2, help="each pixel drawn as scale x scale (default: %(default)s)")
    p.add_argument("--seed", type=int, default=5, help="episode seed of every row's demo")
    p.add_argument("--out", type=Path, default=RESULTS / "mt10_wrist" / "views.png")
    args = p.parse_args(argv)
    import imageio.v2 as imageio

    cameras = tuple(args.cameras.split(","))
    grid = np.concatenate([task_row(t, cameras, args.image_size, args.seed) for t in args.tasks.split(",")], axis=0)
    grid = grid.repeat(args.scale, axis=0).repeat(args.scale, axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(args.out, grid)
    print(f"wrote {args.out}: rows {args.tasks}; columns {', '.join(cameras)} at reset, then the same at the last step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
