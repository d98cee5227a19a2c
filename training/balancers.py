"""Loss balancers: how per-task losses become one update of the shared parameters.

Interface (kept ready for gradient-based methods such as GradNorm or PCGrad, which need the shared
parameters and the per-task losses separately): `backward(losses, shared)` receives the losses of
the tasks present in the batch, runs the backward pass, and returns the weights it applied (for
logging). Tasks absent from a batch are simply not in `losses`, so no balancer divides by zero.
"""

from __future__ import annotations

import torch
from torch import nn


class LossBalancer(nn.Module):
    def __init__(self, tasks: list[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.index = {t: i for i, t in enumerate(self.tasks)}

    def weights(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def total(self, losses: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The scalar to differentiate: the weighted mean of the present tasks' losses."""
        return sum(weights[t] * losses[t] for t in losses) / len(losses)

    def backward(self, losses: dict[str, torch.Tensor], shared: list[nn.Parameter]) -> dict[str, float]:
        if not losses:
            return {}
        weights = self.weights(losses)  # once per step: stateful balancers update here
        self.total(losses, weights).backward()
        return {t: float(w.detach()) for t, w in weights.items()}


class EqualBalancer(LossBalancer):
    """Every present task weighs 1: the plain mean of per-task losses."""

    def weights(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: torch.tensor(1.0) for t in losses}


class SampleCountBalancer(LossBalancer):
    """Weights proportional to each task's demo count, normalised to mean 1 over the present tasks."""

    def __init__(self, tasks: list[str], counts: dict[str, int]) -> None:
        super().__init__(tasks)
        self.counts = {t: float(counts[t]) for t in tasks}

    def weights(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        total = sum(self.counts[t] for t in losses)
        return {t: torch.tensor(self.counts[t] * len(losses) / total) for t in losses}


class InverseLossBalancer(LossBalancer):
    """Weights proportional to 1 / (moving average of the task's detached loss), mean 1 over present tasks.

    Tasks whose loss is already small get more weight, so easy tasks do not dominate the update.
    """

    def __init__(self, tasks: list[str], momentum: float = 0.9) -> None:
        super().__init__(tasks)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("average", torch.zeros(len(tasks)))
        self.register_buffer("seen", torch.zeros(len(tasks), dtype=torch.bool))

    def weights(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            for t, loss in losses.items():
                i = self.index[t]
                value = loss.detach().float()
                self.average[i] = value if not self.seen[i] else self.momentum * self.average[i] + (1 - self.momentum) * value
                self.seen[i] = True
            inverse = {t: 1.0 / self.average[self.index[t]].clamp_min(1e-8) for t in losses}
            total = sum(inverse.values())
            return {t: v * len(losses) / total for t, v in inverse.items()}


class UncertaintyBalancer(LossBalancer):
    """Kendall et al.: loss = sum_t exp(-s_t) L_t + s_t with learned log-variances s_t (train them too)."""

    def __init__(self, tasks: list[str]) -> None:
        super().__init__(tasks)
        self.log_variance = nn.Parameter(torch.zeros(len(tasks)))

    def weights(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: torch.exp(-self.log_variance[self.index[t]]) for t in losses}

    def total(self, losses: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(weights[t] * losses[t] + self.log_variance[self.index[t]] for t in losses) / len(losses)


def make_balancer(name: str, tasks: list[str], counts: dict[str, int], momentum: float = 0.9) -> LossBalancer:
    if name == "equal":
        return EqualBalancer(tasks)
    if name == "samples":
        return SampleCountBalancer(tasks, counts)
    if name == "inverse_loss":
        return InverseLossBalancer(tasks, momentum)
    if name == "uncertainty":
        return UncertaintyBalancer(tasks)
    raise ValueError(f"unknown balancer {name!r}; known: equal, samples, inverse_loss, uncertainty")
