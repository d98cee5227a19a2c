"""Training windows from in-memory demos: observation history + future action chunk, per episode.

Timeline of one window anchored at frame t of an episode spanning [start, end)::

    obs frames     t-To+1 ... t          (clamped to `start`: the first frame repeats)
    action frames  t ... t+Ta-1          (clamped to `end-1`; `action_is_pad` marks the copies)

Windows never cross episode boundaries. The per-episode train/val split lives here too, so a
validation episode never leaks frames into training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mt_policy.demo_store import LoadedDemos
from mt_policy.schema import ACTION_KEY


def split_episodes(n_episodes: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle episode indices with `seed` and hold out `val_fraction` of them (at least one if any)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n_episodes)
    n_val = int(round(n_episodes * val_fraction))
    if val_fraction > 0 and n_episodes > 1:
        n_val = max(1, n_val)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass(frozen=True)
class WindowSpec:
    obs_steps: int = 1
    """To: observation frames per window (the current one and To-1 before it)."""
    action_steps: int = 1
    """Ta: future actions per window, starting at the current frame."""

    def __post_init__(self) -> None:
        if self.obs_steps < 1 or self.action_steps < 1:
            raise ValueError(f"obs_steps and action_steps must be >= 1, got {self.obs_steps}, {self.action_steps}")


class WindowSampler:
    """Random windows over the chosen episodes of one task's demos."""

    def __init__(self, demos: LoadedDemos, spec: WindowSpec, episodes: np.ndarray | None = None) -> None:
        self.demos = demos
        self.spec = spec
        ends, starts = demos.episode_ends.astype(np.int64), demos.episode_starts
        chosen = np.arange(len(ends)) if episodes is None else np.asarray(episodes, dtype=np.int64)
        if len(chosen) == 0:
            raise ValueError("no episodes to sample from")
        self.episodes = chosen
        # Every frame of a chosen episode can anchor a window.
        self._anchor = np.concatenate([np.arange(starts[e], ends[e]) for e in chosen])
        frame_episode = np.repeat(np.arange(len(ends)), ends - starts)
        self._start = starts[frame_episode]
        self._end = ends[frame_episode]

    def __len__(self) -> int:
        return len(self._anchor)

    def indices(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        return self._anchor[rng.integers(0, len(self._anchor), size=batch_size)]

    def gather(self, anchors: np.ndarray) -> dict[str, np.ndarray]:
        """Batch for the given anchor frames: obs keys (B, To, ...), action (B, Ta, A), action_is_pad (B, Ta)."""
        to, ta = self.spec.obs_steps, self.spec.action_steps
        start, end = self._start[anchors], self._end[anchors]
        obs_idx = np.maximum(anchors[:, None] + np.arange(-to + 1, 1)[None, :], start[:, None])  # (B, To)
        raw_act = anchors[:, None] + np.arange(ta)[None, :]  # (B, Ta)
        act_idx = np.minimum(raw_act, end[:, None] - 1)
        batch = {key: arr[obs_idx] for key, arr in self.demos.arrays.items() if key != ACTION_KEY}
        batch[ACTION_KEY] = self.demos.arrays[ACTION_KEY][act_idx]
        batch["action_is_pad"] = raw_act >= end[:, None]
        return batch

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        return self.gather(self.indices(rng, batch_size))
