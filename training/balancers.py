"""Loss balancers: how per-task losses become one update of the shared parameters.

`backward(losses, ctx)` receives the losses of the tasks present in the batch (absent tasks are
simply not in `losses`, so nothing divides by zero) and a `BackwardContext` (shared parameters, the
trunk's output features, each head's parameters, the last shared layer), runs the backward pass and
returns the weights it applied, for logging.

- loss-weighting balancers (`equal`, `samples`, `inverse_loss`, `uncertainty`, `gradnorm`) weight the
  losses and run one ordinary backward pass;
- gradient-aggregating balancers (`pcgrad`, `upgrad`, `mgda`, `cagrad` from torchjd, and our `rgb`)
  compute the Jacobian of the present tasks' losses w.r.t. the shared parameters (torchjd's
  `mtl_backward`) and aggregate its rows into one shared update. Head parameters always receive
  their own task's gradient; only the shared parameters are balanced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class BackwardContext:
    shared: list[nn.Parameter]
    """Parameters every task uses (encoders, FiLM, trunk)."""
    features: torch.Tensor | None = None
    """The trunk's output for the whole batch: the last shared representation."""
    head_params: dict[str, list[nn.Parameter]] = field(default_factory=dict)
    last_shared: list[nn.Parameter] = field(default_factory=list)
    """The last shared layer (GradNorm measures gradient norms there)."""


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

    def backward(self, losses: dict[str, torch.Tensor], ctx: BackwardContext) -> dict[str, float]:
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


class GradNormBalancer(LossBalancer):
    """GradNorm (Chen et al. 2018): learn loss weights so each task's weighted gradient norm on the last
    shared layer tracks the mean norm times its relative inverse training rate r_i^alpha.

    - L_i(0) is the mean of task i's first `warmup` losses (one batch is too noisy);
    - r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0)) over the present tasks;
    - the target mean(G) * r_i^alpha is held constant, and G_i = w_i * ||grad L_i|| uses the detached
      gradient norm, so the weights' own loss never sends second-order terms into the model;
    - after each update the weights are clamped positive and renormalised to sum to T.
    """

    def __init__(self, tasks: list[str], alpha: float = 1.5, lr: float = 0.025, warmup: int = 20) -> None:
        super().__init__(tasks)
        self.alpha, self.lr, self.warmup = alpha, lr, warmup
        self.register_buffer("task_weights", torch.ones(len(tasks)))
        self.register_buffer("initial_sum", torch.zeros(len(tasks)))
        self.register_buffer("initial_count", torch.zeros(len(tasks)))
        # The weights take Adam steps of their own (as in the paper): a raw gradient step would scale
        # with the gradient norms themselves and overshoot for loud tasks.
        self.register_buffer("adam_m", torch.zeros(len(tasks)))
        self.register_buffer("adam_v", torch.zeros(len(tasks)))
        self.register_buffer("adam_t", torch.zeros(len(tasks)))

    def weights(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: self.task_weights[self.index[t]].clone() for t in losses}

    def _initial_loss(self, t: str, loss: float) -> float:
        i = self.index[t]
        if self.initial_count[i] < self.warmup:
            self.initial_sum[i] += loss
            self.initial_count[i] += 1
        return float(self.initial_sum[i] / self.initial_count[i])

    def backward(self, losses: dict[str, torch.Tensor], ctx: BackwardContext) -> dict[str, float]:
        if not losses:
            return {}
        names = list(losses)
        idx = torch.tensor([self.index[t] for t in names])
        # Per-task gradient norms on the last shared layer, detached (no second-order terms).
        norms = []
        for t in names:
            grads = torch.autograd.grad(losses[t], ctx.last_shared, retain_graph=True, allow_unused=True)
            norms.append(torch.sqrt(sum((g.detach() ** 2).sum() for g in grads if g is not None)))
        norms_t = torch.stack(norms)
        with torch.no_grad():
            ratios = torch.tensor([float(losses[t].detach()) / max(self._initial_loss(t, float(losses[t].detach())), 1e-12)
                                   for t in names])
            inverse_rate = ratios / ratios.mean()
        w = self.task_weights[idx].clone().requires_grad_(True)
        weighted = w * norms_t
        target = (weighted.mean() * inverse_rate**self.alpha).detach()
        (grad_w,) = torch.autograd.grad((weighted - target).abs().sum(), w)
        weights = {t: self.task_weights[self.index[t]].clone() for t in names}  # the weights used this step
        self.total(losses, weights).backward()
        with torch.no_grad():
            self.adam_t[idx] += 1
            self.adam_m[idx] = 0.9 * self.adam_m[idx] + 0.1 * grad_w
            self.adam_v[idx] = 0.999 * self.adam_v[idx] + 0.001 * grad_w**2
            m_hat = self.adam_m[idx] / (1 - 0.9 ** self.adam_t[idx])
            v_hat = self.adam_v[idx] / (1 - 0.999 ** self.adam_t[idx])
            updated = (self.task_weights[idx] - self.lr * m_hat / (v_hat.sqrt() + 1e-8)).clamp_min(1e-3)
            self.task_weights[idx] = updated
            self.task_weights *= len(self.tasks) / self.task_weights.sum()
        return {t: float(v) for t, v in weights.items()}


class RGBAggregator(nn.Module):
    """Rotation-based gradient balancing on the Jacobian J (one row per present task).

    Each task gradient is normalised (u_i), and an EMA consensus direction c (momentum `mu`) of the
    normalised mean of the u_i is kept. Each u_i is rotated towards c, in the plane it spans with c,
    by an angle theta_i in [0, pi/2) that never passes c. The angles come from `steps` gradient steps
    (lr `inner_lr`, warm-started from the last step's angles) on
        sum_{i<j} relu(-v_i . v_j)^2  +  lam * sum_i (1 - v_i . u_i)
    (pairwise conflict of the rotated vectors v_i plus proximity to the originals). Every quantity
    there is a function of the Gram matrix U U^T and of U c, so the inner loop never touches
    n-dimensional vectors; `rotation_angles_direct` is the explicit version the tests compare to.

    Final update (`update`): `norm_sum` (default) = sum_i ||g_i|| v_i, which reduces to the plain
    summed gradient when nothing is rotated and keeps each task's gradient scale; `unit_mean` =
    mean_i v_i scaled by the mean gradient norm, which gives every task the same say.
    """

    def __init__(self, n_tasks: int, mu: float = 0.9, steps: int = 3, inner_lr: float = 0.2, lam: float = 1.0,
                 update: str = "norm_sum") -> None:
        super().__init__()
        if update not in ("norm_sum", "unit_mean"):
            raise ValueError(f"rgb update {update!r} not one of norm_sum, unit_mean")
        self.mu, self.steps, self.inner_lr, self.lam, self.update = mu, steps, inner_lr, lam, update
        self.register_buffer("angles", torch.zeros(n_tasks))
        self.consensus: torch.Tensor | None = None  # (n,) unit vector, rebuilt lazily (n is only known here)

    def forward(self, jacobian: torch.Tensor, present: list[int]) -> torch.Tensor:
        norms = jacobian.norm(dim=1).clamp_min(1e-12)  # (T,)
        units = jacobian / norms[:, None]  # (T, n)
        mean = units.mean(dim=0)
        mean = mean / mean.norm().clamp_min(1e-12)
        if self.consensus is None or self.consensus.shape != mean.shape:
            self.consensus = mean.clone()
        else:
            self.consensus = self.mu * self.consensus + (1 - self.mu) * mean
        c = self.consensus / self.consensus.norm().clamp_min(1e-12)
        gram, to_c = units @ units.T, units @ c  # (T, T), (T,)
        theta = rotation_angles_gram(gram, to_c, self.angles[present].clone(), self.steps, self.inner_lr, self.lam)
        self.angles[present] = theta
        rotated = rotate(units, c, to_c, theta)  # (T, n)
        if self.update == "norm_sum":
            return (norms[:, None] * rotated).sum(dim=0)
        return rotated.mean(dim=0) * norms.mean()


def _angle_to_consensus(to_c: torch.Tensor) -> torch.Tensor:
    return torch.arccos(to_c.clamp(-1.0, 1.0))


def _rotated_gram(gram: torch.Tensor, to_c: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """v_i . v_j for v_i = cos(phi_i - theta_i) c + sin(phi_i - theta_i) e_i, from U U^T and U c only."""
    phi = _angle_to_consensus(to_c)
    a, b = torch.cos(phi - theta), torch.sin(phi - theta)
    sin_phi = torch.sin(phi).clamp_min(1e-6)
    e_gram = (gram - to_c[:, None] * to_c[None, :]) / (sin_phi[:, None] * sin_phi[None, :])  # e_i . e_j
    return a[:, None] * a[None, :] + b[:, None] * b[None, :] * e_gram


def _rgb_objective(v_gram: torch.Tensor, proximity: torch.Tensor, lam: float) -> torch.Tensor:
    upper = torch.triu(torch.ones_like(v_gram, dtype=torch.bool), diagonal=1)
    return torch.relu(-v_gram[upper]).pow(2).sum() + lam * proximity.sum()


def rotation_angles_gram(gram: torch.Tensor, to_c: torch.Tensor, theta0: torch.Tensor, steps: int, lr: float,
                         lam: float) -> torch.Tensor:
    phi = _angle_to_consensus(to_c).detach()
    theta = torch.minimum(theta0.clamp(0.0, math.pi / 2 - 1e-6), phi)
    for _ in range(steps):
        theta = theta.detach().requires_grad_(True)
        v_gram = _rotated_gram(gram.detach(), to_c.detach(), theta)
        proximity = 1 - torch.cos(theta)  # v_i . u_i = cos(theta_i): rotating in the (u_i, c) plane
        (grad,) = torch.autograd.grad(_rgb_objective(v_gram, proximity, lam), theta)
        theta = torch.minimum((theta - lr * grad).clamp(0.0, math.pi / 2 - 1e-6), phi)
    return theta.detach()


def rotate(units: torch.Tensor, c: torch.Tensor, to_c: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Rotate each unit row towards c by theta_i in the plane of (u_i, c)."""
    phi = _angle_to_consensus(to_c)
    ortho = units - to_c[:, None] * c[None, :]
    e = ortho / ortho.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.cos(phi - theta)[:, None] * c[None, :] + torch.sin(phi - theta)[:, None] * e


def rotation_angles_direct(units: torch.Tensor, c: torch.Tensor, theta0: torch.Tensor, steps: int, lr: float,
                           lam: float) -> torch.Tensor:
    """The same inner loop on explicit n-dimensional vectors (reference for the Gram version)."""
    to_c = units @ c
    phi = _angle_to_consensus(to_c).detach()
    theta = torch.minimum(theta0.clamp(0.0, math.pi / 2 - 1e-6), phi)
    for _ in range(steps):
        theta = theta.detach().requires_grad_(True)
        v = rotate(units, c, to_c, theta)
        proximity = 1 - (v * units).sum(dim=1)
        (grad,) = torch.autograd.grad(_rgb_objective(v @ v.T, proximity, lam), theta)
        theta = torch.minimum((theta - lr * grad).clamp(0.0, math.pi / 2 - 1e-6), phi)
    return theta.detach()


class JacobianBalancer(LossBalancer):
    """Aggregate the rows of the shared-parameter Jacobian (torchjd's `mtl_backward`) into one update."""

    def __init__(self, tasks: list[str], aggregator: nn.Module) -> None:
        super().__init__(tasks)
        self.aggregator = aggregator

    def backward(self, losses: dict[str, torch.Tensor], ctx: BackwardContext) -> dict[str, float]:
        if not losses:
            return {}
        from torchjd.autojac import mtl_backward

        names = list(losses)
        if ctx.features is None:
            raise ValueError("gradient-aggregating balancers need the shared features in the BackwardContext")
        mtl_backward([losses[t] for t in names], features=ctx.features,
                     tasks_params=[ctx.head_params[t] for t in names], shared_params=ctx.shared)
        params = [p for p in ctx.shared if getattr(p, "jac", None) is not None]
        jacobian = torch.cat([p.jac.reshape(len(names), -1) for p in params], dim=1)  # (T, n)
        for p in params:
            del p.jac
        update = self._aggregate(jacobian, [self.index[t] for t in names])
        offset = 0
        for p in params:
            n = p.numel()
            g = update[offset: offset + n].view_as(p)
            p.grad = g.clone() if p.grad is None else p.grad + g
            offset += n
        return {t: float("nan") for t in names}

    def _aggregate(self, jacobian: torch.Tensor, present: list[int]) -> torch.Tensor:
        if isinstance(self.aggregator, RGBAggregator):
            return self.aggregator(jacobian, present)
        return self.aggregator(jacobian)


def make_balancer(name: str, tasks: list[str], counts: dict[str, int], momentum: float = 0.9,
                  options: dict | None = None) -> LossBalancer:
    o = options or {}
    if name == "equal":
        return EqualBalancer(tasks)
    if name == "samples":
        return SampleCountBalancer(tasks, counts)
    if name == "inverse_loss":
        return InverseLossBalancer(tasks, momentum)
    if name == "uncertainty":
        return UncertaintyBalancer(tasks)
    if name == "gradnorm":
        return GradNormBalancer(tasks, alpha=o.get("gradnorm_alpha", 1.5), lr=o.get("gradnorm_lr", 0.025))
    if name == "rgb":
        return JacobianBalancer(tasks, RGBAggregator(len(tasks), update=o.get("rgb_update", "norm_sum")))
    if name in ("pcgrad", "upgrad", "mgda", "cagrad"):
        from torchjd import aggregation as agg

        aggregator = {"pcgrad": agg.PCGrad, "upgrad": agg.UPGrad, "mgda": agg.MGDA,
                      "cagrad": lambda: agg.CAGrad(c=o.get("cagrad_c", 0.4))}[name]()
        return JacobianBalancer(tasks, aggregator)
    raise ValueError(f"unknown balancer {name!r}; known: {', '.join(BALANCER_NAMES)}")


BALANCER_NAMES = ("equal", "samples", "inverse_loss", "uncertainty", "gradnorm", "pcgrad", "upgrad", "mgda",
                  "cagrad", "rgb")
