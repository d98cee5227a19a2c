"""Can our image encoder find reach's goal? A supervised probe, outside behaviour cloning.

Reach's only goal cue in the image is a 2 cm red sphere, about 2 pixels across at 96 px in `corner2`.
The probe trains the policy's camera encoder (`mt_policy.model.CameraEncoder`) plus a small MLP to
regress where the demo's hand ends (the last `agent_pos` xyz of the episode, within a few centimetres of
the goal) from single frames of the reach store, then measures the error in metres on the first frame
of the training demos and on first frames of new evaluation seeds. On a first frame the arm is always in
the same place, so the goal is the only thing that tells the answer: an encoder that sees it beats
"predict the mean goal"; one that does not lands at or above it.

Variants: `--frames first` trains on the 50 first frames (only the goal and the reach object move),
`--frames all` on every frame (the hand's position gives a shortcut late in each episode); the encoder
as in the policy (`default`), `flatten` pooling, a learnable softmax sharpness (`sharpened`, starting
at x10), or no random-shift augmentation (`no_shift`).

    .venv/bin/python bench/goal_probe.py                       # every variant, 2,000 steps each
    .venv/bin/python bench/goal_probe.py --variants default --frames first --steps 300

Writes `bench/results/goal_probe.json` (one entry per invocation with its command; `--append` keeps
earlier invocations' rows) and prints one line per variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings

from bench_json import write_json  # noqa: E402

import sim  # noqa: E402, F401  (sets MUJOCO_GL before anything imports mujoco)
from mt_policy.demo_store import DemoStore  # noqa: E402
from mt_policy.model import CameraEncoder, random_shift  # noqa: E402
from mt_policy.seeds import EVAL_SEEDS  # noqa: E402
from sim.metaworld_tasks import MetaWorldEnv  # noqa: E402
from sim.tasks import ObservationConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("default", "flatten", "sharpened", "no_shift")


def probe(store: Path, variant: str, frames: str, steps: int, episodes: int, seed: int,
          cameras: tuple[str, ...] = ("corner2",)) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    loaded = DemoStore.open(store).load(cameras=list(cameras))
    ends, starts = loaded.episode_ends.astype(np.int64), loaded.episode_starts
    # Frames as stored, (N, H, W, 3) uint8, the cameras side by side along the channels; `features` splits them.
    images = torch.cat([torch.as_tensor(loaded.arrays[f"obs/{c}"]) for c in cameras], dim=-1)
    proprio = loaded.arrays["obs/proprio"]
    episode = np.repeat(np.arange(len(ends)), ends - starts)
    target = torch.as_tensor(proprio[ends[episode] - 1][:, :3])
    t_mean, t_std = target.mean(0), target.std(0)
    as_float = images.float()
    i_mean, i_std = as_float.mean((0, 1, 2)), as_float.std((0, 1, 2))
    del as_float

    encoders = nn.ModuleList(CameraEncoder((16, 32, 64, 64), 256, pool="flatten" if variant == "flatten" else "spatial_softmax",
                                           image_size=tuple(images.shape[1:3]),
                                           keypoint_sharpness=10.0 if variant == "sharpened" else 0.0) for _ in cameras)

    def features(frames: torch.Tensor) -> torch.Tensor:
        x = ((frames.float() - i_mean) / i_std).permute(0, 3, 1, 2)
        return torch.cat([enc(view) for enc, view in zip(encoders, x.split(3, dim=1), strict=True)], dim=1)

    head = nn.Sequential(nn.Linear(256 * len(cameras), 256), nn.ReLU(), nn.Linear(256, 3))
    optimizer = torch.optim.AdamW([*encoders.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-4)
    pool = starts if frames == "first" else np.arange(len(episode))
    started = time.perf_counter()
    for _ in range(steps):
        rows = rng.choice(pool, 64)
        x = images[rows] if variant == "no_shift" else random_shift(images[rows], 4)
        loss = (head(features(x)) - (target[rows] - t_mean) / t_std).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return head(features(x)) * t_std + t_mean

    train_error = (predict(images[starts]) - target[starts]).norm(dim=1)
    # The hand ends short of the goal by a fixed offset (success is measured at the tool centre): learn it
    # from the demos rather than assume it.
    camera = loaded.schema.observation.cameras[0]
    env = MetaWorldEnv("reach-v3", ObservationConfig(cameras=tuple(cameras), image_size=(camera.height, camera.width),
                                                     proprio="agent_pos",
                                                     render_quality=loaded.schema.observation.render_quality))
    offsets, new_errors = [], []
    for k in range(min(10, len(ends))):
        env.reset(seed=int(loaded.episodes["seed"][k]))
        offsets.append(np.asarray(env._env._target_pos) - target[starts[k]].numpy())
    offset = np.mean(offsets, axis=0)
    for s in EVAL_SEEDS.take(episodes):  # the evaluator's seeds
        obs = env.reset(seed=s)
        x = torch.cat([torch.as_tensor(obs[f"obs/{c}"])[None] for c in cameras], dim=-1)
        new_errors.append(float(np.linalg.norm(predict(x)[0].numpy() - (np.asarray(env._env._target_pos) - offset))))
    env.close()
    mean_guess = float((target[starts] - target[starts].mean(0)).norm(dim=1).mean())
    return {"variant": variant, "frames": frames, "cameras": list(cameras), "image_size": camera.height, "steps": steps, "final_train_l1": float(loss.detach()),
            "first_frame_error_train_m": float(train_error.mean()), "first_frame_error_new_seeds_m": float(np.mean(new_errors)),
            "predict_the_mean_m": mean_guess, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=Path("runs/bench_mt10/demos/reach-v3.zarr"))
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    p.add_argument("--frames", default="first,all", help="first, all, or both (comma-separated)")
    p.add_argument("--cameras", default="corner2", help="comma-separated cameras of the store, one encoder each")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--episodes", type=int, default=20, help="new evaluation seeds to test on")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "goal_probe.json")
    p.add_argument("--append", action="store_true", help="keep OUT's other rows (same variant, frames, size: replaced)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.store.exists():
        sys.exit(f"{args.store}: no reach store; collect it first (bench/mt10.py collects it)")
    rows = []
    for frames in args.frames.split(","):
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                sys.exit(f"unknown variant {variant!r}; known: {list(VARIANTS)}")
            rows.append(probe(args.store, variant, frames, args.steps, args.episodes, args.seed,
                              tuple(args.cameras.split(","))))
            r = rows[-1]
            print(f"{frames:5s} {variant:10s} {'+'.join(r['cameras'])} {r['image_size']} px  train L1 {r['final_train_l1']:.3f}  first-frame error: demos "
                  f"{r['first_frame_error_train_m']:.3f} m, new seeds {r['first_frame_error_new_seeds_m']:.3f} m "
                  f"(predict the mean: {r['predict_the_mean_m']:.3f} m)  {r['seconds']:.0f} s", flush=True)
    runs = [{"command": " ".join(sys.argv), "store": str(args.store), "rows": rows}]
    if args.append and args.out.exists():
        key = lambda r: (r["variant"], r["frames"], r["image_size"], tuple(r.get("cameras", ["corner2"])))  # noqa: E731
        mine = {key(r) for r in rows}
        for run in json.loads(args.out.read_text())["runs"]:
            run["rows"] = [r for r in run["rows"] if key(r) not in mine]
            if run["rows"]:
                runs.insert(0, run)
    write_json({"runs": runs}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
