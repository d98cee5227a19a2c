"""Any gymnasium MuJoCo environment as a task: env id + kwargs, a scripted expert, a success test.

The expert and the success test are callables named by import path ("package.module:function"),
so a task defined in a YAML suite file can be rebuilt inside collection worker processes:

    expert(env, raw_obs) -> action          # env is the unwrapped gymnasium MujocoEnv
    success(env, info) -> bool

The proprio vector is the env's whole observation vector (`full_state`), or the entries listed in
`agent_pos` when the run asks for `agent_pos`. Camera names a task does not define are rendered
from its default view (a free camera framing the whole model), so tasks from different suites can
share one camera name in a multitask run.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mt_policy.errors import MtPolicyError, SchemaError
from mt_policy.schema import (
    PRIVILEGED_KEY,
    ActionSchema,
    CameraSpec,
    ObservationSchema,
    TaskSchema,
    build_observation,
)
from sim.rendering import render_view
from sim.tasks import ObservationConfig, StepResult, TaskSpec


@dataclass(frozen=True)
class FreeView:
    """A free camera: looks at `lookat` from `distance`, turned by `azimuth` and `elevation` (degrees)."""

    lookat: tuple[float, float, float] | None = None
    """None: the model's centre."""
    distance: float | None = None
    """None: 1.5x the model's extent."""
    azimuth: float = 90.0
    elevation: float = -45.0


@dataclass(frozen=True)
class GymTaskConfig:
    env_id: str
    expert: str
    """Import path of `expert(env, raw_obs) -> action`."""
    success: str
    """Import path of `success(env, info) -> bool`."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    agent_pos: tuple[int, ...] | None = None
    """Indices of the observation vector that form `agent_pos`; None: `agent_pos` is not offered."""
    cameras: dict[str, str] = field(default_factory=dict)
    """Run camera name -> a camera of the model; other names use `default_view`."""
    default_view: FreeView = FreeView()


def load_callable(path: str, what: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise MtPolicyError(f"{what} {path!r} must look like 'package.module:function'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise MtPolicyError(f"{what} {path!r} cannot be imported: {err}") from None


@functools.cache
def _probe(env_id: str, kwargs_items: tuple[tuple[str, Any], ...]) -> tuple[int, int, float, float, float, int]:
    """(obs size, action size, action low, action high, control Hz, step limit) of an env id."""
    import gymnasium as gym

    env = gym.make(env_id, **dict(kwargs_items))
    try:
        space = env.action_space
        limit = env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else 1000
        return (int(np.prod(env.observation_space.shape)), int(np.prod(space.shape)), float(space.low.min()),
                float(space.high.max()), 1.0 / float(env.unwrapped.dt), int(limit))
    finally:
        env.close()


def gym_schema(cfg: GymTaskConfig, obs: ObservationConfig) -> TaskSchema:
    obs_size, act_size, low, high, hz, limit = _probe(cfg.env_id, tuple(sorted(cfg.env_kwargs.items())))
    if obs.proprio == "agent_pos":
        if cfg.agent_pos is None:
            raise SchemaError(f"{cfg.env_id}: this task offers no agent_pos; use proprio full_state")
        proprio_size = len(cfg.agent_pos)
    else:
        proprio_size = obs_size
    height, width = obs.image_size
    return TaskSchema(
        observation=ObservationSchema(tuple(CameraSpec(c, height, width) for c in obs.cameras), proprio_size,
                                      obs.proprio, obs.render_quality),
        action=ActionSchema(act_size, (low,) * act_size, (high,) * act_size),
        control_hz=hz,
        max_episode_steps=limit,
        privileged_size=obs_size if obs.privileged else 0,
    )


class GymnasiumEnv:
    """A gymnasium MuJoCo env as a `TaskEnv`; `reset(seed)` uses gymnasium's own seeding."""

    def __init__(self, cfg: GymTaskConfig, obs: ObservationConfig) -> None:
        import gymnasium as gym
        import mujoco

        self.schema = gym_schema(cfg, obs)
        self._cfg, self._obs_config, self._mujoco = cfg, obs, mujoco
        self._env = gym.make(cfg.env_id, **cfg.env_kwargs)
        self._model = self._env.unwrapped.model
        self._expert = load_callable(cfg.expert, "expert")
        self._success = load_callable(cfg.success, "success test")
        height, width = obs.image_size
        self._renderer = mujoco.Renderer(self._model, height, width) if obs.cameras else None
        self._cameras = {name: self._camera(name) for name in obs.cameras}
        self._raw: np.ndarray | None = None

    def _camera(self, name: str) -> Any:
        mj = self._mujoco
        if name in self._cfg.cameras:
            cam_id = mj.mj_name2id(self._model, mj.mjtObj.mjOBJ_CAMERA, self._cfg.cameras[name])
            if cam_id < 0:
                raise SchemaError(f"{self._cfg.env_id}: the model has no camera {self._cfg.cameras[name]!r}")
            return cam_id
        view, cam = self._cfg.default_view, mj.MjvCamera()
        cam.type = mj.mjtCamera.mjCAMERA_FREE
        cam.lookat[:] = view.lookat if view.lookat is not None else self._model.stat.center
        cam.distance = view.distance if view.distance is not None else 1.5 * self._model.stat.extent
        cam.azimuth, cam.elevation = view.azimuth, view.elevation
        return cam

    def _observe(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        self._raw = raw
        images: dict[str, np.ndarray] = {}
        for name, camera in self._cameras.items():
            assert self._renderer is not None
            images[name] = render_view(self._renderer, self._env.unwrapped.data, camera, self._obs_config.render_quality)
        flat = np.asarray(raw, dtype=np.float32).ravel()
        proprio = flat[list(self._cfg.agent_pos)] if self._obs_config.proprio == "agent_pos" else flat
        obs = build_observation(self.schema.observation, images, proprio, where=self._cfg.env_id)
        return obs | ({PRIVILEGED_KEY: flat} if self._obs_config.privileged else {})

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        raw, _ = self._env.reset(seed=seed)
        return self._observe(raw)

    def step(self, action: np.ndarray) -> StepResult:
        size = self.schema.action.size
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (size,):
            raise SchemaError(f"{self._cfg.env_id}: action has shape {action.shape}, expected ({size},)")
        raw, _, terminated, truncated, info = self._env.step(action)
        success = bool(self._success(self._env.unwrapped, info))
        return StepResult(self._observe(raw), success, bool(truncated or (terminated and not success)))

    def expert_action(self) -> np.ndarray:
        if self._raw is None:
            raise RuntimeError("call reset() before expert_action()")
        low, high = self.schema.action.low, self.schema.action.high
        action = np.clip(np.asarray(self._expert(self._env.unwrapped, self._raw)), low, high)
        return action.astype(np.float32)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()


def gym_task(name: str, cfg: GymTaskConfig, description: str, difficulty: str) -> TaskSpec:
    """A registry entry for a gymnasium task (register it with `sim.tasks.register_task`)."""
    return TaskSpec(
        name=name,
        description=description,
        difficulty=difficulty,
        env_id=cfg.env_id,
        env_kwargs=dict(cfg.env_kwargs),
        env_version=_gymnasium_version(),
        make_env=functools.partial(GymnasiumEnv, cfg),
        make_schema=functools.partial(gym_schema, cfg),
        expert=cfg.expert,
    )


def gym_task_from_dict(name: str, data: dict[str, Any], where: str) -> TaskSpec:
    """Build a task from a suite file's `tasks.<name>` mapping; errors name `where` and the field."""
    known = {"env_id", "expert", "success", "env_kwargs", "agent_pos", "cameras", "description", "difficulty"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MtPolicyError(f"{where}: unknown fields {unknown}; known fields are {sorted(known)}")
    for key in ("env_id", "expert", "success", "description"):
        if not isinstance(data.get(key), str):
            raise MtPolicyError(f"{where}.{key}: required, a string")
    cfg = GymTaskConfig(
        env_id=data["env_id"], expert=data["expert"], success=data["success"],
        env_kwargs=dict(data.get("env_kwargs") or {}),
        agent_pos=tuple(int(i) for i in data["agent_pos"]) if data.get("agent_pos") is not None else None,
        cameras={str(k): str(v) for k, v in (data.get("cameras") or {}).items()},
    )
    load_callable(cfg.expert, f"{where}.expert")
    load_callable(cfg.success, f"{where}.success")
    try:
        return gym_task(name, cfg, data["description"], str(data.get("difficulty", "easy")))
    except ValueError as err:
        raise MtPolicyError(f"{where}: {err}") from None


@functools.cache
def _gymnasium_version() -> str:
    from importlib.metadata import version

    return f"gymnasium {version('gymnasium')}, mujoco {version('mujoco')}"
