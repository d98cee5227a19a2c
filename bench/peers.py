"""LeRobot's ACT and Diffusion Policy against our policy on MT10: same demos, same number of training samples,
same evaluator, evaluation seeds and episode count, all from one run on one machine.

- Peers are LeRobot's own policy classes and configs (`make_policy_config`, `get_policy_class`), its
  optimizer and scheduler presets, gradient clipping and normalisation (`make_pre_post_processors` with
  our stores' statistics merged over the tasks). No pretrained backbone: nothing can be downloaded.
  One model serves all tasks (ACT and Diffusion take no task input; the image tells the task), as
  LeRobot trains them on a multitask dataset; `--per-task` adds one model per task (sharing the
  same sample budget). CPU-sized settings: `PEER_SETTINGS`; the JSON lists every field that differs
  from LeRobot's default, with the default and why, and the parameter count at LeRobot's defaults.
- Peers read our demo stores directly: `PeerWindows` gathers LeRobotDataset's training windows
  (observation and action delta indices, `action_is_pad`, Diffusion's `drop_n_last_frames`) from
  memory, shuffled over all frames as LeRobot's DataLoader does; no video is written or decoded.
- Our policy: `training.trainer.Trainer` with one of bench/mt10.py's configurations (`--config`, default
  `lerobot`: corner2 + agent_pos, 96 px), trained on the same number of samples. The peers read the same
  cameras as that configuration (`--config wrist`: corner2 and the hand camera, behindGripper); `--batch-size 64,16` trains one per batch size
  (at a small sample budget a smaller batch buys more optimizer steps) and reports every one of them.
- Latency, batch 1, one thread, on the same random observation: LeRobot's `select_action` through the
  predictor the evaluator runs (preprocessor -> select_action -> postprocessor), with `reset()` before
  every timed call so that every call runs the network (otherwise most calls pop a queued action);
  our PyTorch wrapper (`torch_predictor`) and our ONNX runtime (`PolicyRuntime`) via `bench_runtime`.
  Every timed call is one network call producing one chunk; `n_action_steps` says how many control
  steps it serves.

    .venv/bin/python bench/peers.py                                  # collects into runs/bench_peers/demos
    .venv/bin/python bench/peers.py --data runs/bench_mt10/demos     # reuse bench/mt10.py's stores
    .venv/bin/python bench/peers.py --samples 640 --demos 3 --episodes 1 --max-steps 20 --work runs/peers_smoke
    .venv/bin/python bench/peers.py --config wrist --data runs/bench_mt10_wrist/demos --peers act \
        --work runs/bench_peers_wrist --out bench/results/peers_wrist.json   # both with the hand camera
    .venv/bin/python bench/peers.py --config wrist --tool-centre --peers act   # the same, collecting its own stores

Phases resume: collection appends; a model already trained with the same settings is reused; a
finished evaluation of an unchanged model is reused. `--extend-from WORK` trains a peer on from an earlier
run's model with fewer samples (constant learning rate only, as ACT's): twice the budget costs the
difference, not a second training from scratch. Writes `bench/results/peers.json` and `.md`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no pretrained weights, nothing to fetch
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings

import mt10  # noqa: E402  (bench/mt10.py: our policy's configuration, training and seed check)
import numpy as np  # noqa: E402
from bench_json import write_json  # noqa: E402

import sim  # noqa: E402, F401  (sets MUJOCO_GL before anything imports mujoco)
from mt_policy.checkpoint import load_checkpoint, read_manifest, run_config  # noqa: E402
from mt_policy.demo_store import DemoStore, LoadedDemos  # noqa: E402
from mt_policy.lerobot_io import KeyMap  # noqa: E402
from mt_policy.schema import ACTION_KEY, PROPRIO_KEY, ObservationSchema, TaskSchema  # noqa: E402
from sim.evaluate import EVAL_JSON, evaluate  # noqa: E402
from sim.lerobot_peer import PEER_FORMAT, PEER_FORMAT_VERSION, PEER_MANIFEST, LeRobotPeer  # noqa: E402
from training.config import register_configs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE_SIZE = 96
OURS = "ours"
OUR_BATCH = 64  # bench/mt10.py's; other batch sizes get their own model name and run directory

# LeRobot config fields that differ from LeRobot 0.4's defaults: name -> (value, why). A value of
# CROP is 7/8 of the image side (84 px at 96 px). Everything not listed stays LeRobot's default.
CROP = "7/8 of the image side"
PEER_SETTINGS: dict[str, dict[str, tuple[Any, str]]] = {
    "act": {
        "pretrained_backbone_weights": (None, "no ImageNet weights: nothing can be downloaded"),
        "chunk_size": (16, "MT10 demos last ~50-120 steps at 80 Hz; 100 would outlast most episodes (and costs "
                           "6x more in the VAE encoder and decoder)"),
        "n_action_steps": (8, "re-plan every 8 steps (100: open-loop for longer than most episodes)"),
        "dim_model": (256, "CPU budget: half LeRobot's width"),
        "dim_feedforward": (1024, "CPU budget: about a third of LeRobot's"),
    },
    "diffusion": {
        "down_dims": ((64, 128, 256), "CPU budget: an eighth of LeRobot's U-Net widths (4.9M instead of 251M U-Net "
                                      "weights): batch-1 denoising is bound by reading the weights, and evaluation "
                                      "runs it 10 times per chunk"),
        "noise_scheduler_type": ("DDIM", "few-step sampling (Diffusion Policy's fast-inference setting)"),
        "num_inference_steps": (10, "10 denoiser passes per chunk instead of 100 (None: num_train_timesteps)"),
        "crop_shape": (CROP, "random 84 px crops of 96 px images in training, centre crops in eval (Diffusion "
                             "Policy's and LeRobot's PushT setting)"),
    },
}
# 800 steps of 64 (ours) = 6,400 steps of 8 (peers): about 1 + 26 + 31 minutes of training on 2 cores, next to
# about 110 minutes of evaluation (3 models x 10 tasks x 50 episodes), so the whole run takes about 3 hours.
SAMPLES = 51_200
TRAINING_STATE = "training_state.pt"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("runs/bench_peers"))
    p.add_argument("--data", type=Path, help="existing stores to read (default: collect into WORK/demos)")
    p.add_argument("--config", default="lerobot", choices=list(mt10.CONFIGS),
                   help="our policy's bench/mt10.py configuration; every model reads its cameras (default: "
                        "%(default)s)")
    p.add_argument("--demos", type=int, default=50, help="scripted demos per task (the first N of each store)")
    p.add_argument("--tool-centre", action="store_true",
                   help="collect reach's demos with its expert aimed at the tool centre (`mt-policy collect "
                        "--tool-centre`; what `lerobot_pdrop` and `wrist` were tuned on); with --data, the stores "
                        "must have been collected so")
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per task, every model")
    p.add_argument("--samples", type=int, default=SAMPLES, help="training samples per model (same for all)")
    p.add_argument("--peers", default=",".join(PEER_SETTINGS), help=f"comma-separated, from {list(PEER_SETTINGS)}")
    p.add_argument("--per-task", action="store_true", help="also one peer model per task (SAMPLES/T samples each)")
    p.add_argument("--batch-size", default=str(OUR_BATCH),
                   help="our policy's batch (bench/mt10.py's); comma-separated: one of ours per batch size, same samples")
    p.add_argument("--peer-batch-size", type=int, default=8, help="the peers' batch (lerobot-train's default)")
    p.add_argument("--extend-from", type=Path, metavar="WORK",
                   help="an earlier run's work directory: a peer model not yet trained here continues from that "
                        "run's model (same settings and demos, fewer samples, constant learning rate) instead of "
                        "starting over; refused with the reason otherwise")
    p.add_argument("--n-action-steps", type=int, default=4, help="our policy: actions executed per chunk in eval")
    p.add_argument("--temporal-ensemble", type=float, metavar="K",
                   help="our policy: predict every step and average overlapping chunks with weights exp(-K * age) "
                        "instead of --n-action-steps")
    p.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a training override for our policy (repeatable), e.g. model.random_shift=0; "
                        "recorded in the results")
    p.add_argument("--workers", type=int, default=2, help="collection and evaluation processes")
    p.add_argument("--threads", type=int, default=0, help="torch threads for training (0: all cores)")
    p.add_argument("--latency-calls", type=int, default=1000)
    p.add_argument("--latency-warmup", type=int, default=20)
    p.add_argument("--max-steps", type=int, help="cap eval episodes (smoke runs only: rates not comparable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- data
def config_cameras(config: str) -> list[str]:
    """The cameras bench/mt10.py's `config` reads: every model of a run sees those."""
    return list(mt10.CONFIGS[config][1])


def load_demos(data: Path, tasks: list[str], episodes: int, cameras: list[str]) -> dict[str, LoadedDemos]:
    """The first `episodes` demos of each task's store, `cameras` only (stats: the store's, all episodes)."""
    demos = {}
    for task in tasks:
        loaded = DemoStore.open(data / f"{task}.zarr").load(cameras=cameras)
        if loaded.n_episodes < episodes:
            raise SystemExit(f"{data / task}.zarr holds {loaded.n_episodes} demos, fewer than --demos {episodes}")
        end = int(loaded.episode_ends[episodes - 1])
        demos[task] = dataclasses.replace(loaded, arrays={k: v[:end] for k, v in loaded.arrays.items()},
                                          episode_ends=loaded.episode_ends[:episodes],
                                          episodes={k: v[:episodes] for k, v in loaded.episodes.items()})
    return demos


class PeerWindows:
    """LeRobotDataset's training windows, gathered from in-memory demos of one or more tasks.

    Anchor frame t of an episode [start, end) yields observations at t + observation deltas and actions
    at t + action deltas, clamped to the episode, `action_is_pad` marking the clamped ones (LeRobot's
    `delta_timestamps` semantics)::

        ACT        obs  t                 actions t .. t+chunk-1            (no time axis on obs)
        Diffusion  obs  t-1, t            actions t-1 .. t+14 (horizon 16)  (B, To, ...) obs

    Images become float (..., 3, H, W) in [0, 1], as LeRobot's dataset returns them.
    """

    def __init__(self, demos: dict[str, LoadedDemos], keys: dict[str, str]) -> None:
        import torch

        self._torch = torch
        self.keys = keys  # our array key -> LeRobot feature
        self.arrays = {k: np.concatenate([d.arrays[k] for d in demos.values()]) for k in keys}
        starts, ends, offset = [], [], 0
        for d in demos.values():
            e = d.episode_ends.astype(np.int64)
            starts.append(np.concatenate([[0], e[:-1]]) + offset)
            ends.append(e + offset)
            offset += d.n_frames
        s, e = np.concatenate(starts), np.concatenate(ends)
        self.start, self.end = np.repeat(s, e - s), np.repeat(e, e - s)  # per frame: its episode's bounds

    def anchors(self, drop_last: int = 0) -> np.ndarray:
        """Frames that anchor a window: all but the last `drop_last` of each episode (EpisodeAwareSampler)."""
        frames = np.arange(len(self.start))
        return frames[frames < self.end - drop_last]

    def _clamped(self, anchors: np.ndarray, deltas: list[int]) -> tuple[np.ndarray, np.ndarray]:
        raw = anchors[:, None] + np.asarray(deltas)[None, :]  # (B, D)
        lo, hi = self.start[anchors][:, None], self.end[anchors][:, None] - 1
        return np.clip(raw, lo, hi), (raw < lo) | (raw > hi)

    def batch(self, anchors: np.ndarray, obs_deltas: list[int] | None, action_deltas: list[int]) -> dict[str, Any]:
        torch = self._torch
        obs_idx = anchors if obs_deltas is None else self._clamped(anchors, obs_deltas)[0]
        act_idx, pad = self._clamped(anchors, action_deltas)
        batch: dict[str, Any] = {}
        for key, feature in self.keys.items():
            if key == ACTION_KEY:
                batch[feature] = torch.from_numpy(self.arrays[key][act_idx])  # (B, D, A)
            elif key == PROPRIO_KEY:
                batch[feature] = torch.from_numpy(self.arrays[key][obs_idx])  # (B, [To,] P)
            else:  # (B, [To,] H, W, 3) uint8 -> (B, [To,] 3, H, W) float
                batch[feature] = torch.from_numpy(self.arrays[key][obs_idx]).movedim(-1, -3).contiguous().float() / 255
        batch["action_is_pad"] = torch.from_numpy(pad)
        return batch


def lerobot_stats(demos: dict[str, LoadedDemos], keys: dict[str, str]) -> dict[str, dict[str, np.ndarray]]:
    """LeRobot's `dataset_stats` (mean/std/min/max per feature, images per channel on the [0, 1] scale,
    shaped (3, 1, 1)) from our stores' statistics merged over the tasks."""
    stats = {}
    for key, feature in keys.items():
        merged = None
        for d in demos.values():
            merged = d.stats[key] if merged is None else merged.merge(d.stats[key])
        values = {"mean": merged.mean, "std": merged.std, "min": merged.min, "max": merged.max}
        if key not in (ACTION_KEY, PROPRIO_KEY):
            values = {k: (v / 255.0).reshape(-1, 1, 1) for k, v in values.items()}
        stats[feature] = {k: np.asarray(v, dtype=np.float32) for k, v in values.items()}
    return stats


# ------------------------------------------------------------------------------------------- peers
def peer_settings(peer: str, image_size: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The LeRobot config fields `bench/peers.py` sets for `peer` (PEER_SETTINGS, then `overrides`)."""
    settings = {k: (v if v != CROP else (image_size * 7 // 8,) * 2) for k, (v, _) in PEER_SETTINGS[peer].items()}
    return settings | (overrides or {})


def peer_config(peer: str, schema: TaskSchema, keys: dict[str, str], settings: dict[str, Any]) -> Any:
    """LeRobot's config for `peer` with our features (`keys`: our array key -> LeRobot feature) on the CPU."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import make_policy_config

    inputs = {keys[f"obs/{c.name}"]: PolicyFeature(FeatureType.VISUAL, (3, c.height, c.width))
              for c in schema.observation.cameras}
    inputs[keys[PROPRIO_KEY]] = PolicyFeature(FeatureType.STATE, (schema.observation.proprio_size,))
    outputs = {keys[ACTION_KEY]: PolicyFeature(FeatureType.ACTION, (schema.action.size,))}
    return make_policy_config(peer, input_features=inputs, output_features=outputs, device="cpu",
                              push_to_hub=False, **settings)


def settings_report(peer: str, config: Any) -> dict[str, dict[str, Any]]:
    """Every field `bench/peers.py` changed: our value, LeRobot's default, and why."""
    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(config)}
    reasons = {k: why for k, (_, why) in PEER_SETTINGS[peer].items()}
    return {name: {"value": getattr(config, name), "lerobot_default": defaults[name], "why": reasons.get(name, "")}
            for name in reasons}


def default_parameters(peer: str, schema: TaskSchema, keys: dict[str, str]) -> int:
    """Parameters of `peer` at LeRobot's default sizes (built on the meta device: no memory, no weights)."""
    import torch
    from lerobot.policies.factory import get_policy_class

    config = peer_config(peer, schema, keys, {"pretrained_backbone_weights": None})
    with torch.device("meta"):
        return sum(p.numel() for p in get_policy_class(peer)(config).parameters())


def build_peer(peer: str, demos: dict[str, LoadedDemos], overrides: dict[str, Any] | None = None) -> tuple[Any, ...]:
    """LeRobot's `peer` for these demos: (config, keys, policy, preprocessor, postprocessor), normalised with the
    stores' statistics merged over the tasks."""
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    first = next(iter(demos.values()))
    if any(d.schema.observation != first.schema.observation or d.schema.action.size != first.schema.action.size
           for d in demos.values()):
        raise ValueError("one LeRobot policy needs one observation and action size across its tasks")
    keys = KeyMap.for_schema(first.schema).to_lerobot()
    settings = peer_settings(peer, first.schema.observation.cameras[0].height, overrides)
    config = peer_config(peer, first.schema, keys, settings)
    policy = get_policy_class(peer)(config)
    preprocessor, postprocessor = make_pre_post_processors(config, dataset_stats=lerobot_stats(demos, keys))
    return config, keys, policy, preprocessor, postprocessor


def fit_peer(config: Any, policy: Any, preprocessor: Any, windows: PeerWindows, steps: int, batch_size: int,
             rng: np.random.Generator, log=print, optimizer_state: dict[str, Any] | None = None,
             first_step: int = 1) -> tuple[list[dict[str, Any]], float, dict[str, Any], dict[str, Any]]:
    """LeRobot's update step (forward, backward, grad clipping, optimizer and scheduler presets) `steps` times,
    numbered from `first_step`: an extended model skips the batches its earlier steps drew, so its samples are
    those a training from scratch would draw next. Return the log rows, the loop's wall time, the
    optimizer/scheduler settings and the optimizer's final state."""
    import torch

    optim = config.get_optimizer_preset()
    optimizer = optim.build(policy.get_optim_params())
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    scheduler_cfg = config.get_scheduler_preset()
    scheduler = scheduler_cfg.build(optimizer, steps) if scheduler_cfg is not None else None
    stream = _shuffled(rng, windows.anchors(getattr(config, "drop_n_last_frames", 0)), batch_size)
    for _ in range(first_step - 1):
        next(stream)
    rows, started, every = [], time.perf_counter(), max(1, steps // 20)
    policy.train()
    for done in range(1, steps + 1):
        step = first_step + done - 1
        batch = preprocessor(windows.batch(next(stream), config.observation_delta_indices, config.action_delta_indices))
        loss, _ = policy.forward(batch)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), optim.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        if done % every == 0 or done == steps:
            rows.append({"step": step, "loss": loss.item(), "grad_norm": grad_norm.item(),
                         "lr": optimizer.param_groups[0]["lr"],
                         "samples_per_s": done * batch_size / (time.perf_counter() - started)})
            log(f"[{config.type}] step {step}/{first_step + steps - 1} loss {rows[-1]['loss']:.4f} "
                f"{rows[-1]['samples_per_s']:.1f} samples/s")
    presets = {"optimizer": {"type": type(optimizer).__name__} | dataclasses.asdict(optim),
               "scheduler": dataclasses.asdict(scheduler_cfg) if scheduler_cfg is not None else None}
    return rows, time.perf_counter() - started, presets, optimizer.state_dict()


def train_peer(peer: str, demos: dict[str, LoadedDemos], out: Path, samples: int, batch_size: int, seed: int = 0,
               overrides: dict[str, Any] | None = None, threads: int = 0, log=print,
               extend: Path | None = None) -> dict[str, Any]:
    """Train LeRobot's `peer` on `demos` for `samples` windows, LeRobot's way; save it to `out`; return its manifest.

    `extend`: a model of the same peer, settings, demos, batch and seed trained on fewer samples with a constant
    learning rate (checked by `extendable`). Its weights start this training, which runs only the remaining
    samples, the batches a training from scratch would draw next; where it saved its optimizer and random state
    (`TRAINING_STATE`), those are restored too and the result equals a training from scratch."""
    import torch

    earlier = json.loads((extend / PEER_MANIFEST).read_text()) if extend is not None else None
    done = earlier["provenance"]["steps"] if earlier else 0
    steps = samples // batch_size - done
    if steps < 1:
        raise ValueError(f"{samples} samples make no batch of {batch_size}" if earlier is None else
                         f"{extend} was trained on {earlier['provenance']['samples']:,} samples, not fewer than "
                         f"{samples:,}")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    config, keys, policy, preprocessor, postprocessor = build_peer(peer, demos, overrides)
    state = None
    if extend is not None:
        from safetensors.torch import load_model

        load_model(policy, str(extend / "model.safetensors"))
        if (extend / TRAINING_STATE).is_file():
            state = torch.load(extend / TRAINING_STATE, weights_only=True)
            torch.set_rng_state(state["torch_rng"])
        else:
            torch.manual_seed(seed + done)  # at least not the first run's dropout and noise again
    rows, seconds, presets, optimizer_state = fit_peer(
        config, policy, preprocessor, PeerWindows(demos, keys), steps, batch_size, np.random.default_rng(seed), log,
        state["optimizer"] if state else None, done + 1)
    segment = {"samples": steps * batch_size, "steps": steps, "train_seconds": seconds,
               "samples_per_s": steps * batch_size / seconds, "threads": torch.get_num_threads()}
    segments = [segment]
    if earlier is not None:
        before = earlier["provenance"].get("segments") or [
            {k: earlier["provenance"][k] for k in ("samples", "steps", "train_seconds", "samples_per_s", "threads")}]
        segment |= {"extends": str(extend), "training_state": "restored" if state else
                    "none saved by the earlier model: AdamW's moments restart, dropout and noise reseeded"}
        segments = before + [segment]
        rows = _earlier_rows(extend) + rows
    total_seconds = sum(s["train_seconds"] for s in segments)
    first = next(iter(demos.values()))
    manifest = {
        "format": PEER_FORMAT, "format_version": PEER_FORMAT_VERSION, "policy_type": peer,
        "tasks": [{**d.task.to_dict(), "schema": d.schema.to_dict()} for d in demos.values()],
        "observation": first.schema.to_dict()["observation"], "keys": keys,
        "parameters": sum(p.numel() for p in policy.parameters()), "n_action_steps": config.n_action_steps,
        "settings": settings_report(peer, config),
        "provenance": {
            "trainer": "bench/peers.py (LeRobot's forward, optimizer/scheduler presets and grad clipping)",
            "lerobot_version": _lerobot_version(), "samples": samples // batch_size * batch_size,
            "steps": samples // batch_size, "batch_size": batch_size, "seed": seed, "overrides": overrides or {},
            "threads": torch.get_num_threads(), "train_seconds": total_seconds,
            "samples_per_s": samples // batch_size * batch_size / total_seconds, "segments": segments, **presets,
            "sampling": "shuffled over every anchor frame of its tasks' demos (LeRobot's DataLoader)",
            "normalization": "LeRobot's processors; the stores' stats merged over the tasks",
            "demo_seeds": _demo_seeds(demos), "demo_tool_centre": _demo_tool_centre(demos),
            "final_loss": rows[-1]["loss"],
        },
    }
    _save_peer(out, policy, preprocessor, postprocessor, manifest, rows, optimizer_state)
    return manifest


def _demo_seeds(demos: dict[str, LoadedDemos]) -> dict[str, list[int]]:
    return {t: d.episodes["seed"].tolist() for t, d in demos.items()}


def _demo_tool_centre(demos: dict[str, LoadedDemos]) -> dict[str, bool]:
    """Per task, whether its demos were collected with `--tool-centre`: the same seeds give other demos with it
    (reach's expert aims elsewhere), so a cached model must match on this too."""
    return {t: bool(d.created_with.get("tool_centre", False)) for t, d in demos.items()}


def _same_demos(provenance: dict[str, Any], demos: dict[str, LoadedDemos]) -> bool:
    """Whether a saved model was trained on these demos: the same seeds, collected by the same experts (a model
    saved before the experts were recorded never matches)."""
    return (provenance["demo_seeds"] == _demo_seeds(demos)
            and provenance.get("demo_tool_centre") == _demo_tool_centre(demos))


def _observation(demos: dict[str, LoadedDemos]) -> dict[str, Any]:
    """The observation schema `demos` give a peer, as its manifest records it (cameras, sizes, proprio)."""
    return json.loads(json.dumps(next(iter(demos.values())).schema.to_dict()["observation"]))


def _earlier_rows(policy_dir: Path) -> list[dict[str, Any]]:
    with (policy_dir / "train_log.csv").open(newline="") as f:
        return [{k: float(v) if k != "step" else int(v) for k, v in row.items()} for row in csv.DictReader(f)]


def extendable(peer: str, policy_dir: Path, demos: dict[str, LoadedDemos], samples: int, batch_size: int,
               seed: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of the model at `policy_dir` if training it on to `samples` gives the model that training
    from scratch would (exactly where it saved its training state; else up to AdamW's moments and the random
    draws of dropout and noise); otherwise SystemExit saying why, so that a mistyped --extend-from never costs
    an unnoticed training from scratch."""
    file = policy_dir / PEER_MANIFEST
    if not file.is_file():
        raise SystemExit(f"--extend-from: no trained {peer} model at {policy_dir} (expected {PEER_MANIFEST})")
    manifest = json.loads(file.read_text())
    prov = manifest["provenance"]
    wanted_overrides = json.loads(json.dumps(overrides or {}))
    problems = [why for bad, why in [
        (manifest["policy_type"] != peer, f"it is a {manifest['policy_type']} model"),
        (not _settings_match(manifest, peer, overrides), "its settings differ from PEER_SETTINGS"),
        ((prov["batch_size"], prov["seed"], prov["overrides"]) != (batch_size, seed, wanted_overrides),
         f"batch {prov['batch_size']}, seed {prov['seed']}, overrides {prov['overrides']} (this run: batch "
         f"{batch_size}, seed {seed}, overrides {wanted_overrides})"),
        (prov["samples"] >= samples, f"it was trained on {prov['samples']:,} samples, not fewer than {samples:,}"),
        (prov["scheduler"] is not None, "its learning rate follows a schedule fixed by its own length"),
        (not _same_demos(prov, demos), "it was trained on other demos (other seeds or experts)"),
        (manifest["observation"] != _observation(demos), "it read other cameras or image sizes"),
    ] if bad]
    if problems:
        raise SystemExit(f"--extend-from: {policy_dir} cannot be trained on: " + "; ".join(problems))
    return manifest


def _shuffled(rng: np.random.Generator, anchors: np.ndarray, batch_size: int):
    """Batches of anchors from successive random permutations (sampling without replacement, epoch after epoch)."""
    pending = np.empty(0, dtype=np.int64)
    while True:
        while len(pending) < batch_size:
            pending = np.concatenate([pending, rng.permutation(anchors)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def _save_peer(out: Path, policy: Any, preprocessor: Any, postprocessor: Any, manifest: dict[str, Any],
               rows: list[dict[str, Any]], optimizer_state: dict[str, Any]) -> None:
    """Write the policy directory atomically: LeRobot's files, `mt_policy_peer.json`, `train_log.csv` and the
    optimizer's and torch's random state (LeRobot's `save_pretrained` keeps neither; `--extend-from` needs them
    to continue exactly)."""
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    preprocessor.save_pretrained(tmp)
    postprocessor.save_pretrained(tmp)
    torch.save({"optimizer": optimizer_state, "torch_rng": torch.get_rng_state()}, tmp / TRAINING_STATE)
    (tmp / PEER_MANIFEST).write_text(json.dumps(manifest, indent=2, default=_jsonable) + "\n")
    with (tmp / "train_log.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _jsonable(value: Any) -> Any:
    return value.value if hasattr(value, "value") else str(value)  # enums (normalisation modes), paths


def _lerobot_version() -> str:
    from importlib.metadata import version

    return version("lerobot")


def _trained(peer: str, out: Path, demos: dict[str, LoadedDemos], samples: int, batch_size: int,
             seed: int) -> dict[str, Any] | None:
    """The manifest of a finished model at `out` trained on these demos (same cameras, seeds and experts) with these
    settings and today's PEER_SETTINGS, else None."""
    file = out / PEER_MANIFEST
    if not file.is_file():
        return None
    manifest = json.loads(file.read_text())
    prov = manifest["provenance"]
    same = (prov["samples"], prov["batch_size"], prov["seed"], prov["overrides"]) == (samples, batch_size, seed, {}) \
        and manifest["observation"] == _observation(demos) and _same_demos(prov, demos)
    return manifest if same and _settings_match(manifest, peer) else None


def _settings_match(manifest: dict[str, Any], peer: str, overrides: dict[str, Any] | None = None) -> bool:
    """Whether a saved model's PEER_SETTINGS fields hold the values this version (with `overrides`) would set."""
    settings = peer_settings(peer, manifest["observation"]["cameras"][0]["height"], overrides)
    expected = json.loads(json.dumps({k: settings[k] for k in PEER_SETTINGS[peer]}))
    return {k: v["value"] for k, v in manifest["settings"].items()} == expected


# ------------------------------------------------------------------------------------------- latency
def example_observation(observation: ObservationSchema, seed: int = 0) -> dict[str, np.ndarray]:
    """The random observation `bench-runtime` times our policy on (same generator, same order)."""
    rng = np.random.default_rng(seed)
    obs = {f"obs/{c.name}": rng.integers(0, 256, c.shape, dtype=np.uint8) for c in observation.cameras}
    obs[PROPRIO_KEY] = rng.standard_normal(observation.proprio_size).astype(np.float32)
    return obs


def peer_latency(policy_dir: Path, calls: int, warmup: int) -> dict[str, float]:
    """Batch-1 latency of one network call through LeRobot: reset, then preprocessor -> select_action ->
    postprocessor (the evaluator's predictor), one thread."""
    import torch

    from deploy.latency import time_calls

    torch.set_num_threads(1)
    peer = LeRobotPeer(policy_dir)
    obs = example_observation(ObservationSchema(**_observation_fields(peer.manifest["observation"])))

    def call() -> None:
        peer.reset()  # an empty queue: select_action runs the network (else it pops a queued action)
        peer.predict(obs)

    return time_calls(call, calls, warmup)


def _observation_fields(observation: dict[str, Any]) -> dict[str, Any]:
    from mt_policy.schema import CameraSpec

    return observation | {"cameras": tuple(CameraSpec(**c) for c in observation["cameras"])}


def ours_latency(checkpoint: Path, calls: int, warmup: int) -> dict[str, Any]:
    """Our PyTorch wrapper and ONNX runtime (CPU, one thread) through `mt-policy bench-runtime`'s code."""
    from deploy.latency import bench_runtime

    result = bench_runtime(checkpoint, calls=calls, warmup=warmup, threads=1, log=lambda line: print(f"[{OURS}] {line}"))
    rows = {(r["backend"], r["device"]): r for r in result["rows"]}
    return {"pytorch_eager": rows[("pytorch-eager", "cpu")], "onnxruntime_cpu": rows[("onnxruntime", "cpu")],
            "task": result["task"], "flops_per_call": result["flops_per_call"]}


def cached_latency(run_dir: Path, measure, calls: int, warmup: int, fresh: bool) -> dict[str, Any]:
    """`measure()` once per model and latency settings (reused by a resumed run unless the model is new)."""
    file = run_dir / "latency.json"
    if file.is_file() and not fresh:
        cached = json.loads(file.read_text())
        if (cached["calls"], cached["warmup"]) == (calls, warmup):
            return cached["latency"]
    latency = measure()
    write_json({"calls": calls, "warmup": warmup, "latency": latency}, file)
    return latency


# ------------------------------------------------------------------------------------------- runs
def evaluated_alike(report: dict[str, Any], path: Path, kind: str, args: argparse.Namespace,
                    n_action_steps: int | None, temporal_ensemble: float | None = None) -> bool:
    """Whether an earlier eval.json evaluated this model as this invocation would (so it can be reused)."""
    if (report["episodes_per_task"], report["checkpoint"], report["max_steps"]) != \
            (args.episodes, str(path.resolve()), args.max_steps):
        return False
    if report.get("temporal_ensemble") != temporal_ensemble:
        return False
    # With temporal ensembling every step predicts; otherwise the actions run per chunk must match.
    wanted_steps = 1 if kind == "lerobot" else n_action_steps  # LeRobot peers: one action per call, queue inside
    return temporal_ensemble is not None or report["n_action_steps"] == wanted_steps


def eval_dir(run_dir: Path, args: argparse.Namespace, ensemble: float | None = None) -> Path:
    """Where a model's evaluation goes: one directory per episode count and way of running it, so that a
    30-episode evaluation does not overwrite a 10-episode one and switching back and forth reuses both."""
    return run_dir / (f"eval_{args.episodes}ep" + ("" if ensemble is None else f"_temporal_ensemble_{ensemble:g}"))


def evaluate_once(path: Path, out_dir: Path, kind: str, args: argparse.Namespace, fresh: bool,
                  tasks: list[str] | None = None, n_action_steps: int | None = None,
                  temporal_ensemble: float | None = None) -> dict[str, Any]:
    previous = out_dir / EVAL_JSON
    if previous.is_file() and not fresh:
        report = json.loads(previous.read_text())
        if evaluated_alike(report, path, kind, args, n_action_steps, temporal_ensemble):
            print(f"evaluation finished earlier: {previous}", flush=True)
            return report
    print(f"evaluating {path} ({kind}): {args.episodes} episodes per task", flush=True)
    return evaluate(path, out_dir, tasks=tasks, episodes=args.episodes, workers=args.workers, videos=1,
                    n_action_steps=n_action_steps, temporal_ensemble=temporal_ensemble, progress=False,
                    max_steps=args.max_steps, kind=kind)


def ours_name(batch: int) -> str:
    return OURS if batch == OUR_BATCH else f"{OURS}_b{batch}"


def is_ours(model: str) -> bool:
    """Whether a result row is one of ours (named by `ours_name`) rather than a peer's."""
    return model == OURS or model.startswith(f"{OURS}_b")


def ours_namespace(args: argparse.Namespace, batch: int) -> argparse.Namespace:
    """bench/mt10.py's training arguments for our model at `batch`, with `--ours-set` last (it wins)."""
    extra = [f"data.max_episodes={args.demos}"] + ([f"train.threads={args.threads}"] if args.threads else [])
    return argparse.Namespace(work=args.work / ours_name(batch), steps=args.samples // batch, batch_size=batch,
                              seed=args.seed, set=extra + args.ours_set)


def run_ours(args: argparse.Namespace, data: Path, batch: int) -> dict[str, Any]:
    ns = ours_namespace(args, batch)
    # One directory per configuration (mt10.train's layout) holds its model, latency and evaluations, so that a
    # second --config in the same --work neither overwrites the first's figures nor is taken for them.
    name, steps, run_dir = ours_name(batch), ns.steps, ns.work / args.config
    last = run_dir / "checkpoints" / "last"
    if last.exists() and run_config(read_manifest(last)).get("train", {}).get("steps") != steps:
        raise SystemExit(f"{last} was trained for another number of samples; remove {last.parent.parent} or "
                         f"use another --work")
    checkpoint, figures = mt10.train(args.config, ns, data)
    fresh = figures["peak_rss_gib"] is not None  # trained (at least partly) by this invocation
    latency = cached_latency(run_dir, lambda: ours_latency(checkpoint, args.latency_calls, args.latency_warmup),
                             args.latency_calls, args.latency_warmup, fresh)
    ensemble = args.temporal_ensemble
    report = evaluate_once(checkpoint, eval_dir(run_dir, args, ensemble), "checkpoint", args, fresh,
                           n_action_steps=None if ensemble is not None else args.n_action_steps,
                           temporal_ensemble=ensemble)
    prov = read_manifest(checkpoint)["provenance"]
    model = load_checkpoint(checkpoint)[0]
    changed = (f", with {' '.join(args.ours_set)}" if args.ours_set else "") + \
        (f", temporal ensemble K={ensemble:g}" if ensemble is not None else "")
    return {"model": name, "description": f"our policy, bench/mt10.py's `{args.config}` configuration "
                                          f"({mt10.CONFIGS[args.config][0]}), batch {batch}{changed}",
            "config": args.config, "cameras": config_cameras(args.config),
            "path": str(checkpoint), "overrides": mt10.overrides(args.config, ns, data), "ours_set": args.ours_set,
            "parameters": sum(p.numel() for p in model.parameters()), "action_chunk": model.config.action_chunk,
            "n_action_steps": 1 if ensemble is not None else args.n_action_steps, "temporal_ensemble": ensemble,
            "batch_size": batch, "steps": steps,
            "train_samples": steps * batch, "train_seconds": prov["train_seconds"],
            "train_samples_per_s": steps * batch / prov["train_seconds"],
            "latency_ms": latency} | mt10.task_rows([report])


def train_or_extend(name: str, peer: str, demos: dict[str, LoadedDemos], policy_dir: Path, samples: int,
                    args: argparse.Namespace) -> dict[str, Any]:
    """Train `peer` into `policy_dir`, from scratch or, with --extend-from, on from the earlier run's model at
    the same place in its work directory."""
    extend = None
    if args.extend_from is not None:
        extend = args.extend_from / policy_dir.relative_to(args.work)
        earlier = extendable(peer, extend, demos, samples, args.peer_batch_size, args.seed)["provenance"]["samples"]
        print(f"[{name}] training on from {extend} ({earlier:,} samples) to {samples:,}, batch "
              f"{args.peer_batch_size}", flush=True)
    else:
        print(f"[{name}] training on {samples:,} samples, batch {args.peer_batch_size}", flush=True)
    return train_peer(peer, demos, policy_dir, samples, args.peer_batch_size, args.seed, threads=args.threads,
                      extend=extend)


def run_peer(peer: str, args: argparse.Namespace, demos: dict[str, LoadedDemos]) -> dict[str, Any]:
    run_dir = args.work / peer
    policy_dir = run_dir / "policy"
    manifest, fresh = _trained(peer, policy_dir, demos, args.samples, args.peer_batch_size, args.seed), False
    if manifest is None:
        manifest, fresh = train_or_extend(peer, peer, demos, policy_dir, args.samples, args), True
    else:
        print(f"[{peer}] trained earlier: {policy_dir}", flush=True)
    latency = cached_latency(run_dir, lambda: {"lerobot_select_action": peer_latency(
        policy_dir, args.latency_calls, args.latency_warmup)}, args.latency_calls, args.latency_warmup, fresh)
    report = evaluate_once(policy_dir, eval_dir(run_dir, args), "lerobot", args, fresh)
    first = next(iter(demos.values()))
    return _peer_row(peer, peer, manifest, [report], latency,
                     default_parameters(peer, first.schema, KeyMap.for_schema(first.schema).to_lerobot()))


def run_peer_per_task(peer: str, args: argparse.Namespace, demos: dict[str, LoadedDemos],
                      latency: dict[str, Any]) -> dict[str, Any]:
    """One `peer` model per task, each on SAMPLES/T samples of its own task's demos, evaluated on its task
    (latency: the suite model's, the same architecture)."""
    samples = args.samples // len(demos)
    manifests, reports, seconds = [], [], 0.0
    for task in demos:
        run_dir = args.work / f"{peer}_per_task" / task
        manifest, fresh = _trained(peer, run_dir / "policy", {task: demos[task]}, samples, args.peer_batch_size, args.seed), False
        if manifest is None:
            manifest, fresh = train_or_extend(f"{peer}/{task}", peer, {task: demos[task]}, run_dir / "policy",
                                              samples, args), True
        manifests.append(manifest)
        seconds += manifest["provenance"]["train_seconds"]
        reports.append(evaluate_once(run_dir / "policy", eval_dir(run_dir, args), "lerobot", args, fresh))
    row = _peer_row(f"{peer}/per-task", peer, manifests[0], reports, latency, None) | {"latency_from": peer}
    train_samples = sum(m["provenance"]["samples"] for m in manifests)
    return row | {"models": len(manifests), "parameters": row["parameters"] * len(manifests),
                  "train_samples": train_samples, "train_seconds": seconds, "train_samples_per_s": train_samples / seconds}


def _peer_row(name: str, peer: str, manifest: dict[str, Any], reports: list[dict[str, Any]],
              latency: dict[str, Any] | None, default_params: int | None) -> dict[str, Any]:
    prov = manifest["provenance"]
    settings = manifest["settings"]
    return {"model": name, "description": f"LeRobot {peer} ({manifest['policy_type']}), one model per "
                                          f"{'task' if '/' in name else 'suite'}",
            "parameters": manifest["parameters"], "parameters_at_lerobot_defaults": default_params,
            "settings": settings, "lerobot_version": prov["lerobot_version"],
            "n_action_steps": manifest["n_action_steps"],
            "batch_size": prov["batch_size"], "steps": prov["steps"], "train_samples": prov["samples"],
            "train_seconds": prov["train_seconds"], "train_samples_per_s": prov["samples_per_s"],
            "optimizer": prov["optimizer"], "scheduler": prov["scheduler"], "latency_ms": latency} | mt10.task_rows(reports)


# ------------------------------------------------------------------------------------------- report
def _lat(row: dict[str, Any], key: str) -> str:
    lat = (row.get("latency_ms") or {}).get(key)
    return f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f}" if lat else "-"


def _actions_per_call(row: dict[str, Any]) -> str:
    ensemble = row.get("temporal_ensemble")
    return f"1, chunks ensembled (K={ensemble:g})" if ensemble is not None else str(row["n_action_steps"])


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    lines = [f"Command: `{result['command']}`", ""]
    if "tool_centre" in result:  # recorded since --tool-centre; older results leave it out
        demos = ("reach's expert aimed at the tool centre (`--tool-centre`)" if result["tool_centre"]
                 else "Meta-World's scripted experts")
        lines += [f"Every model reads {' + '.join(result['cameras'])} + proprio; demos: {demos}.", ""]
    lines += ["| model | mean success | 95% CI (pooled) | parameters | train samples | samples/s | actions per "
              "network call | LeRobot select_action p50 / p99 ms | our PyTorch p50 / p99 ms | our ONNX p50 / p99 ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lo, hi = r["pooled_ci95"]
        lines.append(f"| {r['model']} | {r['mean_success']:.1%} | {lo:.1%}–{hi:.1%} | {r['parameters']:,} | "
                     f"{r['train_samples']:,} | {r['train_samples_per_s']:.1f} | {_actions_per_call(r)} | "
                     f"{_lat(r, 'lerobot_select_action')} | {_lat(r, 'pytorch_eager')} | {_lat(r, 'onnxruntime_cpu')} |")
    lines += ["", *mt10.per_task_table(runs, "model", "model")]
    lines += ["", "Peer settings that differ from LeRobot's defaults:", ""]
    for r in runs:
        if "settings" in r and "/" not in r["model"]:
            changed = "; ".join(f"`{k}` {_fmt(v['value'])} (default {_fmt(v['lerobot_default'])})"
                                for k, v in r["settings"].items())
            size = (f" {r['parameters']:,} parameters vs {r['parameters_at_lerobot_defaults']:,} at LeRobot's "
                    f"defaults ({r['parameters_at_lerobot_defaults'] / r['parameters']:.1f}x)."
                    if r.get("parameters_at_lerobot_defaults") else "")
            lines.append(f"- {r['model']}: {changed}.{size}")
    ours_changed = [r for r in runs if r.get("ours_set")]
    if ours_changed:
        lines += ["", "Our settings beyond bench/mt10.py's `lerobot` configuration (`--ours-set`):", ""]
        lines += [f"- {r['model']}: {' '.join(f'`{o}`' for o in r['ours_set'])}" for r in ours_changed]
    lines += ["", *goal_lines(runs)]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "None" if value is None else str(tuple(value) if isinstance(value, list) else value)


def goal_lines(runs: list[dict[str, Any]]) -> list[str]:
    mine = [r for r in runs if is_ours(r["model"])]
    peers = [r for r in runs if r not in mine]
    if not mine or not peers:
        return []
    best = max(peers, key=lambda r: r["mean_success"])
    peer_p50 = best["latency_ms"]["lerobot_select_action"]["p50_ms"]

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    lines = [f"Best peer by mean success: {best['model']} ({best['mean_success']:.1%})."]
    for ours in mine:  # every batch size is reported; none is picked after the fact
        ort = ours["latency_ms"]["onnxruntime_cpu"]["p50_ms"]
        lines += [f"{ours['model']} (batch {ours['batch_size']}):",
                  f"- mean success >= best peer's: {verdict(ours['mean_success'] >= best['mean_success'])} "
                  f"({ours['mean_success']:.1%} vs {best['mean_success']:.1%})",
                  f"- >= 5x lower latency (our ONNX p50 vs its select_action p50): {verdict(peer_p50 >= 5 * ort)} "
                  f"({ort:.2f} vs {peer_p50:.2f} ms, {peer_p50 / ort:.1f}x)",
                  f"- fewer parameters: {verdict(ours['parameters'] < best['parameters'])} "
                  f"({ours['parameters']:,} vs {best['parameters']:,})"]
    return lines


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "lerobot": _lerobot_version()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        batches = [int(b) for b in args.batch_size.split(",") if b]
    except ValueError:
        print(f"--batch-size {args.batch_size!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    if args.temporal_ensemble is not None and args.temporal_ensemble < 0:
        print(f"--temporal-ensemble {args.temporal_ensemble:g}: expected K >= 0 (0 averages overlapping chunks "
              f"equally)", file=sys.stderr)
        return 2
    if args.extend_from is not None and args.extend_from.resolve() == args.work.resolve():
        print(f"--extend-from {args.extend_from}: expected an earlier run's work directory, not this run's --work",
              file=sys.stderr)
        return 2
    peers = [p for p in args.peers.split(",") if p]
    unknown = [p for p in peers if p not in PEER_SETTINGS]
    if unknown:
        print(f"unknown peer(s) {unknown}; known: {list(PEER_SETTINGS)}", file=sys.stderr)
        return 2
    from sim.suites import get_suite

    tasks = [t.name for t in get_suite("mt10")]
    per_task = args.samples // len(tasks)
    if any(args.samples % b for b in batches) or args.samples % args.peer_batch_size or \
            (args.per_task and per_task % args.peer_batch_size):
        print(f"--samples {args.samples} must be a multiple of --batch-size and --peer-batch-size"
              + (" (and SAMPLES/10 of --peer-batch-size with --per-task)" if args.per_task else ""), file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    data = collect_demos(args)
    register_configs()
    seeds = mt10.check_seeds(data, tasks, args.episodes)
    runs = [run_ours(args, data, batch) for batch in batches]
    demos = load_demos(data, tasks, args.demos, config_cameras(args.config))
    suite_rows = {peer: run_peer(peer, args, demos) for peer in peers}
    runs += list(suite_rows.values())
    if args.per_task:
        runs += [run_peer_per_task(peer, args, demos, suite_rows[peer]["latency_ms"]) for peer in peers]
    command = "python bench/peers.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {"command": command.strip(), "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(), "config": args.config, "cameras": config_cameras(args.config),
              "tool_centre": stores_aim_tool_centre(data),
              "demos_per_task": args.demos, "episodes_per_task": args.episodes,
              "samples_per_model": args.samples, "max_steps": args.max_steps, "seeds": seeds,
              "latency": {"calls": args.latency_calls, "warmup": args.latency_warmup, "threads": 1,
                          "what": "one network call per timed call, batch 1; LeRobot: reset() then select_action"},
              "runs": runs}
    md = markdown(result)
    print("\n" + md)
    write_json(result, args.out, default=_jsonable)
    args.out.with_suffix(".md").write_text(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


def collect_demos(args: argparse.Namespace) -> Path:
    """`--data` as given, or MT10 demos (the configuration's cameras, 96 px) collected into WORK/demos (resumes)."""
    if args.data is not None:
        if args.tool_centre and not stores_aim_tool_centre(args.data):
            raise SystemExit(f"--tool-centre: {args.data}'s reach store was not collected with --tool-centre; "
                             "collect with it (`mt-policy collect --tool-centre`) or drop the option")
        return args.data
    from sim.collect import collect
    from sim.suites import get_suite
    from sim.tasks import ObservationConfig

    data = args.work / "demos"
    cameras = tuple(config_cameras(args.config))
    print(f"collecting {args.demos} demos/task of mt10 ({', '.join(cameras)}, {IMAGE_SIZE} px"
          + (", reach aimed at the tool centre" if args.tool_centre else "") + f") -> {data}", flush=True)
    collect(get_suite("mt10"), args.demos, data, ObservationConfig(cameras=cameras, image_size=(IMAGE_SIZE,) * 2),
            workers=args.workers, tool_centre=args.tool_centre, progress=False)
    return data


def stores_aim_tool_centre(data: Path) -> bool:
    """Whether the MT10 stores in `data` were collected with --tool-centre (read from the stores of the tasks
    whose expert it changes: reach's)."""
    from sim.suites import get_suite

    aimed = [t.name for t in get_suite("mt10") if t.tool_centre_expert is not None]
    return all(DemoStore.open(data / f"{task}.zarr").created_with.get("tool_centre", False) for task in aimed)


if __name__ == "__main__":
    sys.exit(main())
