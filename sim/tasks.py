"""The task registry: one entry per task (env factory, scripted expert, description, difficulty).

Adding a task is one `register_task` call; suites, collection and the contract tests pick it up
with no other change. Environments are wrapped as `TaskEnv`, which speaks the schema's keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mt_policy.errors import SchemaError, unknown_name
from mt_policy.schema import TaskInfo, TaskSchema

DIFFICULTIES = ("easy", "medium", "hard", "very_hard")


@dataclass(frozen=True)
class ObservationConfig:
    """How a run observes every task: cameras, image size, proprio source, render quality."""

    cameras: tuple[str, ...] = ("corner2",)
    """Camera names; empty for state-only runs."""
    image_size: tuple[int, int] = (96, 96)
    """(height, width) of every camera image."""
    proprio: str = "agent_pos"
    """`agent_pos` (hand xyz + gripper, 4-D) or `full_state` (the task's full state vector)."""
    render_quality: str = "fast"
    """`fast` (no shadows/reflections/skybox, ~5x cheaper) or `full` (MuJoCo's defaults, as LeRobot)."""
    privileged: bool = False
    """Also return the task's full state vector under `privileged` (collection only: demo stores keep it as a
    training-only target; a policy never sees it, so evaluation leaves this off)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(self.cameras))
        object.__setattr__(self, "image_size", tuple(int(x) for x in self.image_size))
        if len(self.image_size) != 2:
            raise SchemaError(f"image_size must be (height, width), got {self.image_size}")


@dataclass
class StepResult:
    obs: dict[str, np.ndarray]
    success: bool
    truncated: bool


class TaskEnv(Protocol):
    """A task's environment in schema terms. `expert_action` may use privileged simulator state."""

    schema: TaskSchema

    def reset(self, seed: int) -> dict[str, np.ndarray]: ...

    def step(self, action: np.ndarray) -> StepResult: ...

    def expert_action(self) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TaskSpec:
    """A registry entry."""

    name: str
    description: str
    difficulty: str
    env_id: str
    make_env: Callable[[ObservationConfig], TaskEnv]
    make_schema: Callable[[ObservationConfig], TaskSchema]
    """The schema `make_env(obs)` will produce, without building the environment."""
    expert: str
    """Name of the scripted expert, recorded with every demo."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    env_version: str = ""
    tool_centre_expert: str | None = None
    """The expert's name when it brings the tool centre, not the hand flange, onto the goal (`mt-policy collect
    --tool-centre`; the task's env then has `aim_tool_centre()`); None where the task's expert has no such aim."""

    def __post_init__(self) -> None:
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"task {self.name}: difficulty {self.difficulty!r} not one of {DIFFICULTIES}")

    def schema(self, obs: ObservationConfig) -> TaskSchema:
        return self.make_schema(obs)

    def info(self) -> TaskInfo:
        return TaskInfo(self.name, self.description, self.env_id, self.env_version, self.difficulty)


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"task {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    _ensure_builtin_tasks()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_name("task", name, list(_REGISTRY)) from None


def task_names() -> list[str]:
    _ensure_builtin_tasks()
    return list(_REGISTRY)


def _ensure_builtin_tasks() -> None:
    # Imported lazily so that `sim.tasks` stays cheap and free of import cycles.
    import sim.metaworld_tasks  # noqa: F401
    import sim.reacher  # noqa: F401
