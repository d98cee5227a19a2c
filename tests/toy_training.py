"""The toy multitask setup that training tests share: two synthetic stores ("four": 4-D actions, "two":
2-D actions with 5-D proprio) whose actions are a learnable function of proprio, a tiny model, and the
Hydra overrides that train it in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import make_episode
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mt_policy.demo_store import DemoStore
from mt_policy.model import TaskEntry
from mt_policy.schema import ActionSchema, CameraSpec, ObservationSchema, TaskInfo, TaskSchema
from training.config import register_configs

CONF = Path(__file__).resolve().parents[1] / "training" / "conf"
TINY_MODEL = {"encoder_channels": [4, 8], "proprio_hidden": 8, "feature_dim": 16, "task_embedding_dim": 4,
              "trunk_dims": [16], "head_hidden": 16, "action_chunk": 4, "random_shift": 1}


def schema(action_size: int, proprio: int = 3) -> TaskSchema:
    return TaskSchema(ObservationSchema((CameraSpec("cam", 8, 8),), proprio),
                      ActionSchema(action_size, (-1.0,) * action_size, (1.0,) * action_size), 10.0, 20)


def entry(name: str, action_size: int, proprio: int = 3) -> TaskEntry:
    return TaskEntry(TaskInfo(name, f"do {name}", "toy/Env-v0", "toy", "easy"), schema(action_size, proprio))


def write_store(root: Path, name: str, action_size: int, episodes: int, proprio: int = 3, seed: int = 0,
                action_gain: float = 1.0) -> Path:
    """A toy store; `action_gain` > 1 records actions beyond the [-1, 1] bounds, as eager experts do."""
    s, rng = schema(action_size, proprio), np.random.default_rng(seed)
    store = DemoStore.create(root / f"{name}.zarr", s, TaskInfo(name, f"do {name}", "toy/Env-v0", "toy", "easy"))
    mixing = rng.normal(size=(proprio, action_size))
    for i in range(episodes):
        episode = make_episode(s, 6 + i % 3, rng)
        # A learnable target: the action is a fixed function of the proprio vector.
        episode["action"] = (action_gain * np.tanh(episode["obs/proprio"] @ mixing)).astype(np.float32)
        store.append_episode(episode, seed=i, success=True, expert="toy")
    store.close()
    return store.path


def write_toy_stores(root: Path, action_gain: float = 1.0) -> Path:
    """The "four" and "two" stores under `root` (see `write_store` for `action_gain`); returns `root`."""
    write_store(root, "four", 4, episodes=6, seed=1, action_gain=action_gain)
    write_store(root, "two", 2, episodes=3, proprio=5, seed=2, action_gain=action_gain)
    return root


def tiny_overrides(root: Path) -> list[str]:
    """Hydra overrides training the tiny model on the toy stores under `root`, quietly, without evaluation."""
    return [f"data.root={root}", "data.suite=null", "+data.tasks={four:{},two:{}}", "train.batch_size=8",
            "train.progress=false", "train.log_every=1", "eval.final=false", "optim.warmup_steps=1",
            *[f"model.{k}=[{','.join(map(str, v))}]" if isinstance(v, list) else f"model.{k}={v}"
              for k, v in TINY_MODEL.items()]]


def run_config(root: Path, **overrides) -> OmegaConf:
    """The composed run config: `tiny_overrides` for 6 steps (checkpoints every 3), then `overrides`."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[
            *tiny_overrides(root), "train.steps=6", "train.checkpoint_every=3", "optim.warmup_steps=2",
            *[f"{k}={v}" for k, v in overrides.items()],
        ])
