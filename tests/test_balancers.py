"""Gradient-based balancers on synthetic tasks whose gradients deliberately conflict, conflict
metrics, and data-parallel training under torchrun (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torchjd.aggregation import Sum
from toy_training import tiny_overrides

from training.balancers import (
    BALANCER_NAMES,
    BackwardContext,
    GradNormBalancer,
    JacobianBalancer,
    make_balancer,
    rotate,
    rotation_angles_direct,
    rotation_angles_gram,
)
from training.conflicts import conflict_metrics, task_gradients

TASKS = ["big", "small", "third"]


class Toy(torch.nn.Module):
    """A shared linear layer and one scalar head per task."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = torch.nn.Linear(6, 8)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(8, 1) for t in TASKS})

    def losses(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        f = torch.tanh(self.shared(x))
        # "big" pulls its output up with a large scale; "small" and "third" pull theirs down.
        targets = {"big": 5.0, "small": -1.0, "third": -0.5}
        scales = {"big": 10.0, "small": 1.0, "third": 1.0}
        return {t: scales[t] * (self.heads[t](f) - targets[t]).pow(2).mean() for t in TASKS}, f

    def ctx(self, features: torch.Tensor) -> BackwardContext:
        return BackwardContext(list(self.shared.parameters()), features,
                               {t: list(self.heads[t].parameters()) for t in TASKS}, list(self.shared.parameters()))


def _min_update_cosine(name: str) -> tuple[float, float]:
    """(min cosine of the applied shared update with each task gradient, the same for plain summation)."""
    model = Toy()
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    losses, features = model.losses(x)
    grads = task_gradients(losses, list(model.shared.parameters()))
    plain = sum(grads.values())
    g = torch.stack(list(grads.values()))
    unit = g / g.norm(dim=1, keepdim=True)
    plain_min = float((unit @ (plain / plain.norm())).min())
    make_balancer(name, TASKS, {t: 1 for t in TASKS}).backward(losses, model.ctx(features))
    metrics = conflict_metrics(grads, list(model.shared.parameters()))
    return metrics["conflict/update_cos_min"], plain_min


@pytest.mark.parametrize("name", ["pcgrad", "upgrad", "rgb"])
def test_conflict_aware_balancers_raise_the_worst_task_cosine(name):
    balanced, plain = _min_update_cosine(name)
    assert plain < 0, "the toy tasks must conflict under plain summation"
    assert balanced > plain + 1e-3, (name, balanced, plain)


def test_upgrad_update_conflicts_with_no_task():
    balanced, _ = _min_update_cosine("upgrad")
    assert balanced >= -1e-4


def test_equal_through_torchjd_reproduces_the_summed_loss_gradient():
    model = Toy()
    x = torch.randn(16, 6)
    losses, features = model.losses(x)
    sum(losses.values()).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    losses, features = model.losses(x)
    JacobianBalancer(TASKS, Sum()).backward(losses, model.ctx(features))
    for n, p in model.named_parameters():
        if n.startswith("heads."):  # each head gets exactly its own task's gradient
            assert torch.equal(p.grad, expected[n]), n
        else:  # the same sum of the same rows, up to float32 summation order
            scale = float(expected[n].abs().max())
            torch.testing.assert_close(p.grad, expected[n], rtol=0, atol=1e-6 * scale, msg=n)


def test_gradnorm_moves_towards_equal_weighted_gradient_norms_and_keeps_the_sum():
    model = Toy()
    balancer = GradNormBalancer(TASKS, alpha=0.0, lr=0.05, warmup=1)  # alpha 0: pure norm equalisation
    x = torch.randn(32, 6)

    def spread() -> float:
        losses, _ = model.losses(x)
        norms = []
        for t in TASKS:
            grads = torch.autograd.grad(losses[t], list(model.shared.parameters()), retain_graph=True)
            w = float(balancer.task_weights[balancer.index[t]])
            norms.append(w * float(torch.sqrt(sum((g**2).sum() for g in grads))))
        return max(norms) / min(norms)

    before = spread()
    for _ in range(60):
        losses, features = model.losses(x)
        model.zero_grad(set_to_none=True)
        balancer.backward(losses, model.ctx(features))
        assert float(balancer.task_weights.sum()) == pytest.approx(len(TASKS), rel=1e-5)
        assert (balancer.task_weights > 0).all()
    assert spread() < 0.5 * before
    assert balancer.task_weights[0] < balancer.task_weights[1]  # the loud task is turned down


def test_gradnorm_does_not_leak_second_order_terms_into_the_model():
    """The model gradient must equal that of the weighted loss sum with the weights as constants."""
    model = Toy()
    balancer = GradNormBalancer(TASKS, warmup=1)
    x = torch.randn(8, 6)
    weights = balancer.task_weights.clone()
    losses, features = model.losses(x)
    balancer.backward(losses, model.ctx(features))
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    losses, _ = model.losses(x)
    (sum(weights[i] * losses[t] for i, t in enumerate(TASKS)) / len(TASKS)).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=n)


def test_rgb_gram_inner_loop_equals_the_direct_implementation():
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    g[1] = -0.8 * g[0] + 0.2 * g[1]  # a conflicting pair
    units = g / g.norm(dim=1, keepdim=True)
    c = units.mean(0)
    c = c / c.norm()
    theta0 = torch.tensor([0.1, 0.0, 0.3, 0.05], dtype=torch.float64)
    direct = rotation_angles_direct(units, c, theta0, steps=3, lr=0.2, lam=1.0)
    gram = rotation_angles_gram(units @ units.T, units @ c, theta0, steps=3, lr=0.2, lam=1.0)
    torch.testing.assert_close(gram, direct, rtol=0, atol=1e-5)
    assert (direct >= 0).all() and (direct < math.pi / 2).all()
    rotated = rotate(units, c, units @ c, direct)
    torch.testing.assert_close(rotated.norm(dim=1), torch.ones(4, dtype=torch.float64))
    assert (rotated @ c >= units @ c - 1e-9).all()  # every vector moved towards the consensus


@pytest.mark.parametrize("name", BALANCER_NAMES)
def test_no_balancer_produces_nan_when_a_task_is_absent(name):
    model = Toy()
    balancer = make_balancer(name, TASKS, {"big": 5, "small": 1, "third": 2})
    x = torch.randn(8, 6)
    for present in (["big", "small"], ["third"], ["small", "third"], TASKS):
        losses, features = model.losses(x)
        losses = {t: losses[t] for t in present}
        model.zero_grad(set_to_none=True)
        weights = balancer.backward(losses, model.ctx(features))
        assert set(weights) == set(present)
        for p in model.shared.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (name, present)
    assert all(torch.isfinite(b).all() for b in balancer.buffers())


def test_conflict_metrics_report_cosines_fractions_and_norms():
    model = Toy()
    losses, features = model.losses(torch.randn(16, 6))
    grads = task_gradients(losses, list(model.shared.parameters()))
    sum(losses.values()).backward()
    row = conflict_metrics(grads, list(model.shared.parameters()))
    assert set(row) >= {"conflict/cos_min", "conflict/cos_mean", "conflict/fraction", "conflict/update_cos_min",
                        "grad_norm/big", "grad_norm/small"}
    assert -1 <= row["conflict/cos_min"] <= row["conflict/cos_mean"] <= 1
    assert 0 < row["conflict/fraction"] <= 1 and row["grad_norm/big"] > row["grad_norm/small"]


def test_ddp_two_cpu_processes_share_weights_and_write_one_checkpoint(stores, tmp_path):
    run_dir = tmp_path / "ddp"
    overrides = [*tiny_overrides(stores), "train.steps=5", "train.balancer=pcgrad", "train.conflict_every=2",
                 "train.threads=1", f"hydra.run.dir={run_dir}"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "training.train", *overrides], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads((run_dir / "ddp.json").read_text())
    assert report["world_size"] == 2 and report["weights_identical"]
    first, second = (r["batch_fingerprints"] for r in report["ranks"])
    assert first != second, "each rank must draw its own batches"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["last"]
    rows = (run_dir / "train_log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 5 and "conflict/cos_min" in rows[0]
    assert np.isfinite([float(v) for v in rows[-1].split(",")[2:3]]).all()
    # Resume the 2-process run in a single process: the checkpoint does not depend on the process count.
    resumed = subprocess.run([sys.executable, "-m", "training.train", *overrides, "train.steps=7", "train.resume=true"],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    steps = [int(r.split(",")[0]) for r in (run_dir / "train_log.csv").read_text().strip().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6, 7]
    manifest = json.loads((run_dir / "checkpoints" / "last" / "policy.json").read_text())
    assert manifest["provenance"]["step"] == 7
