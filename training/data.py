"""Task-balanced multitask batches drawn from in-memory demo stores.

Each step shares `batch_size` slots between tasks with probabilities p_t (uniform, proportional to
demo counts, or tempered: p_t ~ n_t^(1/T)), times any per-task weight. Slot counts are drawn from a
multinomial, so a small task can be absent from a batch; the trainer skips its loss then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mt_policy.demo_store import LoadedDemos
from mt_policy.sampler import WindowSampler, WindowSpec, split_episodes
from mt_policy.schema import ACTION_KEY


def task_probabilities(mode: str, demo_counts: list[int], weights: list[float], temperature: float = 2.0) -> np.ndarray:
    counts = np.asarray(demo_counts, dtype=np.float64)
    if mode == "uniform":
        base = np.ones_like(counts)
    elif mode == "proportional":
        base = counts
    elif mode == "temperature":
        base = counts ** (1.0 / temperature)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; known: uniform, proportional, temperature")
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


class MultiTaskBatcher:
    def __init__(self, demos: dict[str, LoadedDemos], task_index: dict[str, int], probabilities: np.ndarray,
                 action_chunk: int, proprio_size: int, val_fraction: float = 0.0, seed: int = 0,
                 max_episodes: dict[str, int | None] | None = None) -> None:
        self.tasks = list(demos)
        self.task_index = task_index
        self.probabilities = probabilities
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

    def sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        counts = rng.multinomial(batch_size, self.probabilities)
        return self.assemble({t: self.samplers[t].sample(rng, int(k)) for t, k in zip(self.tasks, counts, strict=True) if k})

    def assemble(self, parts: dict[str, dict[str, np.ndarray]]) -> Batch:
        obs_lists: dict[str, list[np.ndarray]] = {}
        slices, actions, pads, ids = {}, {}, {}, []
        start = 0
        for task, part in parts.items():
            n = len(part[ACTION_KEY])
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
        return Batch(obs, torch.from_numpy(np.concatenate(ids)).long(), slices, actions, pads)

    def validation_batches(self, rng: np.random.Generator, per_task: int) -> Batch | None:
        if not self.val_samplers:
            return None
        return self.assemble({t: s.sample(rng, per_task) for t, s in self.val_samplers.items()})
