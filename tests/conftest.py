"""Shared fixtures: tiny schemas and synthetic episodes, so store tests need no simulator."""

from __future__ import annotations

import importlib.util
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from mt_policy.schema import ActionSchema, CameraSpec, ObservationSchema, TaskInfo, TaskSchema


@pytest.fixture
def tiny_schema() -> TaskSchema:
    return TaskSchema(
        observation=ObservationSchema(cameras=(CameraSpec("cam", 8, 8),), proprio_size=4),
        action=ActionSchema(3, (-1.0,) * 3, (1.0,) * 3),
        control_hz=10.0,
        max_episode_steps=50,
    )


@pytest.fixture
def tiny_task() -> TaskInfo:
    return TaskInfo("toy-v0", "a toy task for tests", "toy/Env-v0", "toy 1.0", "easy")


@pytest.fixture
def stores(tmp_path) -> Path:
    """The two toy training stores of `toy_training` under tmp_path/data."""
    from toy_training import write_toy_stores  # not at the top: toy_training imports this module

    return write_toy_stores(tmp_path / "data")


def load_bench(name: str):
    """bench/<name>.py as a module: the benchmarks are scripts, not a package."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import would: dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sigint_as_at_a_terminal() -> None:
    """`preexec_fn` for a child a test will Ctrl-C: SIGINT back to its default, so Python raises
    KeyboardInterrupt. A runner started in the background (`cmd &` without job control) has SIGINT ignored,
    children inherit that, and the signal the test sends would then do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make_episode(schema: TaskSchema, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random arrays matching `schema` for an episode of `length` frames."""
    out: dict[str, np.ndarray] = {}
    for key, (shape, dtype) in schema.frame_specs().items():
        if dtype == np.uint8:
            out[key] = rng.integers(0, 256, size=(length, *shape), dtype=np.uint8)
        else:
            out[key] = rng.standard_normal((length, *shape)).astype(dtype)
    return out


def random_policy(names, obs_config, config, seed: int = 0):
    """An untrained multitask policy with random FiLM and non-trivial normalisation statistics, so every part
    of the graph matters (export parity, runtime and ROS round trips compare such policies)."""
    import torch

    from mt_policy.model import MultiTaskPolicy, NormStats, TaskEntry
    from sim.tasks import get_task

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    entries = [TaskEntry(get_task(n).info(), get_task(n).schema(obs_config)) for n in names]
    model = MultiTaskPolicy(config, entries)
    for p in model.film.parameters():
        torch.nn.init.normal_(p, std=0.3)  # FiLM starts as the identity; make the task embedding count
    for name, p in model.named_parameters():
        if name.endswith(".gain"):
            torch.nn.init.uniform_(p, 0.5, 1.5)  # residual branches start switched off; switch them on
    stats = NormStats()
    for e in entries:
        p, a = e.schema.observation.proprio_size, e.schema.action.size
        stats.proprio[e.name] = (rng.normal(size=p), rng.uniform(0.1, 2.0, p))
        stats.action[e.name] = (rng.normal(size=a), rng.uniform(0.1, 2.0, a))
    for c in obs_config.cameras:
        stats.image[c] = (rng.uniform(0.3, 0.6, 3), rng.uniform(0.1, 0.3, 3))
    model.set_stats(stats)
    return model.eval()
