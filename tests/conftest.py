"""Shared fixtures: tiny schemas and synthetic episodes, so store tests need no simulator."""

from __future__ import annotations

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


def make_episode(schema: TaskSchema, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random arrays matching `schema` for an episode of `length` frames."""
    out: dict[str, np.ndarray] = {}
    for key, (shape, dtype) in schema.frame_specs().items():
        if dtype == np.uint8:
            out[key] = rng.integers(0, 256, size=(length, *shape), dtype=np.uint8)
        else:
            out[key] = rng.standard_normal((length, *shape)).astype(dtype)
    return out
