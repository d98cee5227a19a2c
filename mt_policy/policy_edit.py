"""Grow or shrink a trained policy's task list without touching what the other tasks compute.

`extend_policy` attaches one task: a fresh head with its own action size, a task-embedding row
copied from a chosen task (or freshly initialised), its normalisation statistics, and, when its
proprio vector is longer than any before, zero input columns in the proprio MLP (the old tasks'
padded entries are zero, so their outputs are unchanged). `trim_policy` keeps a subset of tasks
and everything they use.
"""

from __future__ import annotations

import numpy as np
import torch

from mt_policy.errors import SchemaError, unknown_name
from mt_policy.model import MultiTaskPolicy, NormStats, TaskEntry

PROPRIO_INPUT = "proprio_mlp.0.weight"


def extend_policy(model: MultiTaskPolicy, entry: TaskEntry, proprio_stats: tuple[np.ndarray, np.ndarray],
                  action_stats: tuple[np.ndarray, np.ndarray], init_from: str | None = None,
                  seed: int = 0) -> MultiTaskPolicy:
    """A new policy with every task of `model` plus `entry` (its head last); `model` is not modified."""
    if entry.name in model.task_index:
        raise SchemaError(f"task {entry.name!r} is already in the policy ({', '.join(model.task_index)}); "
                          f"pick another name or trim it out first")
    if init_from is not None and init_from not in model.task_index:
        raise unknown_name("task to initialise from", init_from, list(model.task_index))
    torch.manual_seed(seed)  # the fresh head's initialisation
    grown = MultiTaskPolicy(model.config, [*model.tasks, entry])  # checks cameras and image size
    old, new = model.state_dict(), grown.state_dict()
    n, p = len(model.tasks), model.observation.proprio_size
    with torch.no_grad():
        for key, value in new.items():
            if key in ("proprio_mean", "proprio_std"):
                value[:n, :p] = old[key]
            elif key == PROPRIO_INPUT:
                value.zero_()
                value[:, :p] = old[key]
            elif key == "task_embedding.weight":
                value[:n] = old[key]
                if init_from is not None:
                    value[n] = old[key][model.task_index[init_from]]
            elif key in old:
                value.copy_(old[key])
    grown.load_state_dict(new)
    grown.set_stats(NormStats(proprio={entry.name: proprio_stats}, action={entry.name: action_stats}))
    return grown.train(model.training)


def trim_policy(model: MultiTaskPolicy, names: list[str]) -> MultiTaskPolicy:
    """A policy with only `names` (in that order): their heads, embedding rows and statistics."""
    if not names:
        raise SchemaError("trim needs at least one task to keep")
    for name in names:
        if name not in model.task_index:
            raise unknown_name("task", name, list(model.task_index))
    if len(set(names)) != len(names):
        raise SchemaError(f"duplicate task names in {names}")
    kept = [model.tasks[model.task_index[n]] for n in names]
    small = MultiTaskPolicy(model.config, kept)
    rows = torch.tensor([model.task_index[n] for n in names])
    old, new = model.state_dict(), small.state_dict()
    p = small.observation.proprio_size
    with torch.no_grad():
        for key, value in new.items():
            if key in ("proprio_mean", "proprio_std"):
                value.copy_(old[key][rows, :p])
            elif key == PROPRIO_INPUT:
                # Columns past the kept tasks' proprio only ever multiplied zero padding for them.
                value.copy_(old[key][:, :p])
            elif key == "task_embedding.weight":
                value.copy_(old[key][rows])
            elif key.startswith(("action_mean_", "action_std_")):
                prefix, index = key.rsplit("_", 1)
                value.copy_(old[f"{prefix}_{model.task_index[names[int(index)]]}"])
            else:
                value.copy_(old[key])
    small.load_state_dict(new)
    return small.train(model.training)
