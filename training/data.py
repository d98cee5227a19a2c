"""Task-balanced multitask batches drawn from in-memory demo stores.

Each step shares `batch_size` slots between tasks with probabilities p_t (uniform, proportional to
demo counts, tempered: p_t ~ n_t^(1/T), or proportional to frames, as a loader shuffling every frame of
every demo draws them, LeRobot's way), times any per-task weight; counts are of the training episodes.
Slot counts are drawn from a multinomial, so a small task can be absent from a batch; the trainer skips
its loss then.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from mt_policy.demo_store import LoadedDemos
from mt_policy.sampler import WindowSampler, WindowSpec, split_episodes
from mt_policy.schema import ACTION_KEY, PRIVILEGED_KEY


def task_probabilities(mode: str, demo_counts: list[int], weights: list[float], temperature: float = 2.0,
                       frame_counts: list[int] | None = None) -> np.ndarray:
    counts = np.asarray(demo_counts, dtype=np.float64)
    if mode == "uniform":
        base = np.ones_like(counts)
    elif mode == "proportional":
        base = counts
    elif mode == "temperature":
        base = counts ** (1.0 / temperature)
    elif mode == "frames":
        if frame_counts is None or len(frame_counts) != len(counts):
            raise ValueError("sampling mode 'frames' needs one frame count per task")
        base = np.asarray(frame_counts, dtype=np.float64)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; known: uniform, proportional, temperature, frames")
    p = base * np.asarray(weights, dtype=np.float64)
    return p / p.sum()


@dataclass
class Batch:
    obs: dict[str, torch.Tensor]
    """'obs/<camera>' uint8 (B, H, W, 3) and 'obs/proprio' float (B, P) zero-padded to the model's P."""
    task_ids: torch.Tensor
    """(B,) head index of each sample; samples of one task are contiguous."""
    slices: dict[str, slice]
    actions: dict[str, torch.Tensor]
    """Per task (n_t, Ta, A_t)."""
    action_is_pad: dict[str, torch.Tensor]
    """Per task (n_t, Ta): True where the chunk ran past the episode end."""
    privileged: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    """Per task (n_t, S): the simulator state at the current frame, for stores that record it (training only)."""


class MultiTaskBatcher:
    def __init__(self, demos: dict[str, LoadedDemos], task_index: dict[str, int], probabilities: np.ndarray | None,
                 action_chunk: int, proprio_size: int, val_fraction: float = 0.0, seed: int = 0,
                 max_episodes: dict[str, int | None] | None = None) -> None:
        """`probabilities` None: uniform over tasks until set (e.g. from `training_sizes()`)."""
        self.tasks = list(demos)
        self.task_index = task_index
        self.probabilities = np.full(len(demos), 1.0 / len(demos)) if probabilities is None else probabilities
        self.proprio_size = proprio_size
        self.samplers: dict[str, WindowSampler] = {}
        self.val_samplers: dict[str, WindowSampler] = {}
        for name, loaded in demos.items():
            n = loaded.n_episodes
            limit = (max_episodes or {}).get(name)
            n_used = min(n, limit) if limit else n
            train, val = split_episodes(n_used, val_fraction, seed)
            spec = WindowSpec(obs_steps=1, action_steps=action_chunk)
            self.samplers[name] = WindowSampler(loaded, spec, train)
            if len(val):
                self.val_samplers[name] = WindowSampler(loaded, spec, val)

    def training_sizes(self) -> dict[str, tuple[int, int]]:
        """Per task, the (episodes, frames) training draws from: after `max_episodes` and the validation hold-out."""
        return {t: (len(s.episodes), len(s)) for t, s in self.samplers.items()}

    def sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        counts = rng.multinomial(batch_size, self.probabilities)
        return self.assemble({t: self.samplers[t].sample(rng, int(k)) for t, k in zip(self.tasks, counts, strict=True) if k})

    def assemble(self, parts: dict[str, dict[str, np.ndarray]]) -> Batch:
        obs_lists: dict[str, list[np.ndarray]] = {}
        slices, actions, pads, privileged, ids = {}, {}, {}, {}, []
        start = 0
        for task, part in parts.items():
            n = len(part[ACTION_KEY])
            if PRIVILEGED_KEY in part:
                privileged[task] = torch.from_numpy(part[PRIVILEGED_KEY][:, -1])  # (n, To, S) -> the current frame
            for key, value in part.items():
                if key.startswith("obs/"):
                    value = value[:, -1]  # (n, To, ...) -> the current frame
                    if key == "obs/proprio" and value.shape[-1] < self.proprio_size:
                        value = np.pad(value, ((0, 0), (0, self.proprio_size - value.shape[-1])))
                    obs_lists.setdefault(key, []).append(value)
            actions[task] = torch.from_numpy(part[ACTION_KEY])
            pads[task] = torch.from_numpy(part["action_is_pad"])
            slices[task] = slice(start, start + n)
            ids.append(np.full(n, self.task_index[task]))
            start += n
        obs = {k: torch.from_numpy(np.concatenate(v)) for k, v in obs_lists.items()}
        return Batch(obs, torch.from_numpy(np.concatenate(ids)).long(), slices, actions, pads, privileged)

    def validation_batches(self, rng: np.random.Generator, per_task: int) -> Batch | None:
        if not self.val_samplers:
            return None
        return self.assemble({t: s.sample(rng, per_task) for t, s in self.val_samplers.items()})
