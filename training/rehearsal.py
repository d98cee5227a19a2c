"""The rehearsal buffer saved with every checkpoint: a fixed-size, per-task balanced sample of training windows.

Each task keeps up to `per_task` windows (current observation frame, action chunk, padding mask)
drawn uniformly without replacement from all of its demo frames, the distribution a reservoir
sample of the frame stream would give. `mt-policy add-task` replays them when the old tasks'
stores are not at hand, so a policy can grow on a robot that never saw the original data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mt_policy.demo_store import LoadedDemos
from mt_policy.sampler import WindowSampler, WindowSpec
from mt_policy.schema import ACTION_KEY

PAD_KEY = "action_is_pad"
SEPARATOR = "::"  # task names contain '-' and 'v3', never '::'


@dataclass
class RehearsalBuffer:
    """Per task: 'obs/<camera>' (n, 1, H, W, 3), 'obs/proprio' (n, 1, P), 'action' (n, Ta, A), 'action_is_pad' (n, Ta)."""

    windows: dict[str, dict[str, np.ndarray]]

    @classmethod
    def from_demos(cls, demos: dict[str, LoadedDemos], per_task: int, action_chunk: int, seed: int = 0) -> RehearsalBuffer:
        rng = np.random.default_rng(seed)
        windows = {}
        for name, loaded in demos.items():
            sampler = WindowSampler(loaded, WindowSpec(obs_steps=1, action_steps=action_chunk))
            anchors = rng.choice(loaded.n_frames, size=min(per_task, loaded.n_frames), replace=False)
            windows[name] = sampler.gather(np.sort(anchors))
        return cls(windows)

    @property
    def tasks(self) -> list[str]:
        return list(self.windows)

    def size(self, task: str) -> int:
        return len(self.windows[task][ACTION_KEY])

    def sample(self, rng: np.random.Generator, task: str, n: int) -> dict[str, np.ndarray]:
        rows = rng.integers(0, self.size(task), size=n)
        return {key: value[rows] for key, value in self.windows[task].items()}

    def merged(self, other: RehearsalBuffer) -> RehearsalBuffer:
        return RehearsalBuffer(self.windows | other.windows)

    def only(self, tasks: list[str]) -> RehearsalBuffer:
        return RehearsalBuffer({t: self.windows[t] for t in tasks if t in self.windows})

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{task}{SEPARATOR}{key}": torch.from_numpy(np.ascontiguousarray(value))
                for task, arrays in self.windows.items() for key, value in arrays.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> RehearsalBuffer:
        windows: dict[str, dict[str, np.ndarray]] = {}
        for name, tensor in tensors.items():
            task, key = name.split(SEPARATOR, 1)
            windows.setdefault(task, {})[key] = tensor.numpy()
        return cls(windows)


__all__ = ["PAD_KEY", "RehearsalBuffer"]
