"""Privileged-state supervision: the shared features must also tell where things are.

Behaviour cloning from pixels learns to locate a goal marker or a puck only through the action loss,
and with 50 demos a task it may never find a few-pixel marker (bench/RESULTS.md, the reach probe).
Stores collected with `--privileged` keep each frame's simulator state (object, goal and hand
positions); here a per-task linear probe on the trunk features predicts that state, normalised with
the task's own statistics, and its L1 loss is added to the task's action loss. The probe is the
task's own parameter, like its head, so every loss balancer treats the sum as that task's loss.
At run time nothing changes: the policy's inputs and its exported graph are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mt_policy.demo_store import LoadedDemos
from mt_policy.errors import MtPolicyError
from mt_policy.model import STD_FLOOR, MultiTaskPolicy
from mt_policy.schema import PRIVILEGED_KEY
from training.data import Batch


@dataclass
class PrivilegedTargets:
    """Per-task normalisation of the privileged state, and the loss weight."""

    weight: float
    mean: dict[str, torch.Tensor]
    std: dict[str, torch.Tensor]

    @property
    def size(self) -> int:
        return max(len(m) for m in self.mean.values())

    @classmethod
    def from_demos(cls, demos: dict[str, LoadedDemos], weight: float, where: dict[str, str]) -> PrivilegedTargets:
        """Statistics from each store's recorded stats; an error names the stores that lack the state."""
        missing = [where[t] for t, d in demos.items() if PRIVILEGED_KEY not in d.arrays]
        if missing:
            raise MtPolicyError(f"train.privileged_weight={weight} needs the privileged state in every store, but "
                                f"{', '.join(missing)} recorded none; collect with `mt-policy collect --privileged` "
                                f"or set train.privileged_weight=0")
        mean = {t: torch.as_tensor(d.stats[PRIVILEGED_KEY].mean, dtype=torch.float32) for t, d in demos.items()}
        std = {t: torch.as_tensor(d.stats[PRIVILEGED_KEY].std, dtype=torch.float32).clamp_min(STD_FLOOR)
               for t, d in demos.items()}
        return cls(weight, mean, std)


def privileged_losses(model: MultiTaskPolicy, batch: Batch, features: torch.Tensor,
                      targets: PrivilegedTargets) -> dict[str, torch.Tensor]:
    """L1 between each present task's probe on its rows of `features` and its normalised state (unweighted)."""
    losses = {}
    for task, rows in batch.slices.items():
        state = batch.privileged[task]
        target = (state - targets.mean[task]) / targets.std[task]  # (n, S_task)
        pred = model.privileged_heads[task](features[rows])[:, : target.shape[1]]  # (n, S); smaller states padded
        losses[task] = (pred - target).abs().mean()
    return losses
