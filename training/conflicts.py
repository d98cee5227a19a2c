"""Gradient-conflict metrics on the shared parameters, computed only on the steps that log them.

For the tasks present in a batch: each task's gradient g_i on the shared parameters, their pairwise
cosines, the fraction of pairs that conflict (cosine < 0), per-task gradient norms, and the cosine
of the update actually applied (the shared `.grad` after the balancer) with each task's gradient.
"""

from __future__ import annotations

import torch


def task_gradients(losses: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Flattened gradient of each task's loss w.r.t. the shared parameters (one backward per task)."""
    out = {}
    for task, loss in losses.items():
        grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        out[task] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, shared, strict=True)]).detach()
    return out


def conflict_metrics(task_grads: dict[str, torch.Tensor], shared: list[torch.nn.Parameter]) -> dict[str, float]:
    names = list(task_grads)
    g = torch.stack([task_grads[t] for t in names])  # (T, n)
    norms = g.norm(dim=1)
    unit = g / norms[:, None].clamp_min(1e-12)
    cos = unit @ unit.T
    row: dict[str, float] = {f"grad_norm/{t}": float(n) for t, n in zip(names, norms, strict=True)}
    if len(names) > 1:
        upper = torch.triu(torch.ones_like(cos, dtype=torch.bool), diagonal=1)
        pairs = cos[upper]
        row |= {"conflict/cos_min": float(pairs.min()), "conflict/cos_mean": float(pairs.mean()),
                "conflict/fraction": float((pairs < 0).float().mean())}
    update = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in shared])
    if update.norm() > 0:
        applied = unit @ (update / update.norm())
        row["conflict/update_cos_min"] = float(applied.min())
    return row
