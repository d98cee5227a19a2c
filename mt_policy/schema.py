"""The observation/action schema: declared once by a task, recorded in every store and checkpoint.

Sim, training, export and the ROS node all read array names, shapes, dtypes and bounds from a
`TaskSchema`; nothing re-derives them. Array keys are relative to a store's `data/` group.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from mt_policy.errors import SchemaError

PROPRIO_KEY = "obs/proprio"
ACTION_KEY = "action"
PRIVILEGED_KEY = "privileged"
"""Training-only simulator state recorded beside a demo's observations (never a policy input)."""
RENDER_QUALITIES = ("fast", "full")
PROPRIO_SOURCES = ("agent_pos", "full_state")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def camera_key(name: str) -> str:
    return f"obs/{name}"


@dataclass(frozen=True)
class CameraSpec:
    """One RGB camera: uint8 images of shape (height, width, 3)."""

    name: str
    height: int = 96
    width: int = 96

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.name == "proprio":
            raise SchemaError(f"camera name {self.name!r} must be an identifier and not 'proprio'")
        if not (8 <= self.height <= 1024 and 8 <= self.width <= 1024):
            raise SchemaError(f"camera {self.name}: image size {self.height}x{self.width} outside 8..1024")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)


@dataclass(frozen=True)
class ObservationSchema:
    """What the policy sees: zero or more cameras and one proprioceptive vector."""

    cameras: tuple[CameraSpec, ...]
    proprio_size: int
    proprio_source: str = "agent_pos"
    """Where the proprio vector comes from: `agent_pos` (hand xyz + gripper) or `full_state`."""
    render_quality: str = "fast"
    """`fast` turns shadows, reflections and skybox off (about 5x cheaper); `full` is MuJoCo's default."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(self.cameras))
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise SchemaError(f"duplicate camera names in {names}")
        if self.proprio_size < 1:
            raise SchemaError(f"proprio_size must be >= 1, got {self.proprio_size}")
        if self.proprio_source not in PROPRIO_SOURCES:
            raise SchemaError(f"proprio_source {self.proprio_source!r} not one of {PROPRIO_SOURCES}")
        if self.render_quality not in RENDER_QUALITIES:
            raise SchemaError(f"render_quality {self.render_quality!r} not one of {RENDER_QUALITIES}")

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)


@dataclass(frozen=True)
class ActionSchema:
    """A task's action: a float32 vector of `size` entries within [low, high]."""

    size: int
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", tuple(float(x) for x in self.low))
        object.__setattr__(self, "high", tuple(float(x) for x in self.high))
        if self.size < 1 or len(self.low) != self.size or len(self.high) != self.size:
            raise SchemaError(f"action bounds must have {self.size} entries, got {len(self.low)}/{len(self.high)}")
        if any(lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise SchemaError(f"action low {self.low} exceeds high {self.high}")


@dataclass(frozen=True)
class TaskSchema:
    """Everything a consumer needs to shape data for one task."""

    observation: ObservationSchema
    action: ActionSchema
    control_hz: float
    max_episode_steps: int
    privileged_size: int = 0
    """Entries of the simulator state a demo store records per frame under `privileged` (0: none). Training may
    supervise an auxiliary prediction of it; no policy reads it, so checkpoints and exports carry 0 here."""

    def __post_init__(self) -> None:
        if self.control_hz <= 0 or self.max_episode_steps < 1:
            raise SchemaError(f"control_hz and max_episode_steps must be positive: {self.control_hz}, {self.max_episode_steps}")
        if self.privileged_size < 0:
            raise SchemaError(f"privileged_size must be >= 0, got {self.privileged_size}")

    def frame_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Per-frame shape and dtype of every array key a store or a batch holds."""
        specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            camera_key(c.name): (c.shape, np.dtype(np.uint8)) for c in self.observation.cameras
        }
        specs[PROPRIO_KEY] = ((self.observation.proprio_size,), np.dtype(np.float32))
        specs[ACTION_KEY] = ((self.action.size,), np.dtype(np.float32))
        if self.privileged_size:
            specs[PRIVILEGED_KEY] = ((self.privileged_size,), np.dtype(np.float32))
        return specs

    def observation_keys(self) -> tuple[str, ...]:
        """The keys a policy reads (not the action, not the privileged state)."""
        return tuple(k for k in self.frame_specs() if k not in (ACTION_KEY, PRIVILEGED_KEY))

    def without_privileged(self) -> TaskSchema:
        """This schema as a policy sees it: no privileged state."""
        return replace(self, privileged_size=0)

    def with_cameras(self, names: Sequence[str], where: str = "schema") -> TaskSchema:
        """This schema seeing only the named cameras, in that order (a run may train on a subset of what
        was recorded); SchemaError naming `where` if one was not recorded."""
        have = {c.name: c for c in self.observation.cameras}
        missing = [n for n in names if n not in have]
        if missing:
            raise SchemaError(f"{where}: camera(s) {missing} not recorded; it has {list(have) or 'none'}")
        return replace(self, observation=replace(self.observation, cameras=tuple(have[n] for n in names)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "observation": {
                "cameras": [asdict(c) for c in self.observation.cameras],
                "proprio_size": self.observation.proprio_size,
                "proprio_source": self.observation.proprio_source,
                "render_quality": self.observation.render_quality,
            },
            "action": asdict(self.action) | {"low": list(self.action.low), "high": list(self.action.high)},
            "control_hz": self.control_hz,
            "max_episode_steps": self.max_episode_steps,
        } | ({"privileged_size": self.privileged_size} if self.privileged_size else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "schema") -> TaskSchema:
        """Parse a dict written by `to_dict`; errors name `where` and the bad field."""
        try:
            obs = data["observation"]
            act = data["action"]
            return cls(
                observation=ObservationSchema(
                    cameras=tuple(CameraSpec(**c) for c in obs["cameras"]),
                    proprio_size=int(obs["proprio_size"]),
                    proprio_source=obs.get("proprio_source", "agent_pos"),
                    render_quality=obs.get("render_quality", "fast"),
                ),
                action=ActionSchema(int(act["size"]), tuple(act["low"]), tuple(act["high"])),
                control_hz=float(data["control_hz"]),
                max_episode_steps=int(data["max_episode_steps"]),
                privileged_size=int(data.get("privileged_size", 0)),
            )
        except SchemaError as err:
            raise SchemaError(f"{where}: {err}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise SchemaError(f"{where}: malformed schema ({type(err).__name__}: {err})") from None


def check_frames(schema: TaskSchema, arrays: dict[str, np.ndarray], where: str) -> int:
    """Check a dict of (T, ...) arrays against the schema; return T. Raise SchemaError naming the key."""
    specs = schema.frame_specs()
    missing = sorted(set(specs) - set(arrays))
    unexpected = sorted(set(arrays) - set(specs))
    if missing or unexpected:
        raise SchemaError(f"{where}: keys differ from the schema (missing {missing}, unexpected {unexpected})")
    lengths = {key: len(arrays[key]) for key in specs}
    if len(set(lengths.values())) != 1:
        raise SchemaError(f"{where}: arrays have different lengths {lengths}")
    for key, (shape, dtype) in specs.items():
        arr = arrays[key]
        if arr.dtype != dtype or arr.shape[1:] != shape:
            raise SchemaError(
                f"{where}: {key} is {arr.dtype}{list(arr.shape[1:])} per frame, expected {dtype}{list(shape)}"
            )
        if dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(np.argwhere(~np.isfinite(arr).reshape(len(arr), -1).all(axis=1))[0, 0])
            raise SchemaError(f"{where}: {key} has NaN/inf (first at frame {bad})")
    return next(iter(lengths.values()))


@dataclass(frozen=True)
class TaskInfo:
    """Identity of a task as recorded in a store or checkpoint (the schema travels beside it)."""

    name: str
    description: str
    env_id: str
    env_version: str = ""
    difficulty: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def recorded_under_another_simulator(self, env_version: str) -> bool:
        """Whether this record names a simulator version other than `env_version` (an unknown one never does)."""
        return bool(self.env_version and env_version and self.env_version != env_version)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "task") -> TaskInfo:
        try:
            return cls(**{k: str(data.get(k, "")) for k in ("name", "description", "env_id", "env_version", "difficulty")})
        except (TypeError, AttributeError) as err:
            raise SchemaError(f"{where}: malformed task record ({err})") from None


@dataclass(frozen=True)
class TaskEntry:
    """One task of a policy (checkpoint or exported graph): identity and schema."""

    info: TaskInfo
    schema: TaskSchema

    @property
    def name(self) -> str:
        return self.info.name


def build_observation(observation: ObservationSchema, images: dict[str, np.ndarray], proprio: np.ndarray,
                      where: str = "observation") -> dict[str, np.ndarray]:
    """The policy's observation dict from camera images (H, W, 3 uint8) and a proprio vector.

    The one place an observation is assembled: sim envs and the ROS node both call it, so a policy
    sees the same keys, dtypes and shapes whichever side feeds it. Raises SchemaError naming `where`.
    """
    obs: dict[str, np.ndarray] = {}
    for camera in observation.cameras:
        image = images.get(camera.name)
        if image is None:
            raise SchemaError(f"{where}: no image for camera {camera.name!r} (have {sorted(images)})")
        if image.dtype != np.uint8 or image.shape != camera.shape:
            raise SchemaError(f"{where}: camera {camera.name} image is {image.dtype}{list(image.shape)}, "
                              f"expected uint8{list(camera.shape)}")
        obs[camera_key(camera.name)] = image
    obs[PROPRIO_KEY] = np.asarray(proprio, dtype=np.float32)
    return obs
