"""Privileged simulator state: recorded beside the demos, supervised in training, never a policy input."""

from __future__ import annotations

import csv
import dataclasses

import numpy as np
import pytest
import torch
from conftest import make_episode
from toy_training import run_config, schema, write_toy_stores

from mt_policy.checkpoint import load_checkpoint
from mt_policy.demo_store import DemoStore
from mt_policy.errors import MtPolicyError
from mt_policy.schema import PRIVILEGED_KEY, TaskInfo, TaskSchema
from sim.collect import rollout
from sim.tasks import ObservationConfig, get_task
from training.trainer import Trainer

STATE = 6


def write_privileged_store(root, name: str, action_size: int, episodes: int, seed: int):
    """A toy store whose privileged state is a fixed function of the proprio vector, so a probe can learn it."""
    s = dataclasses.replace(schema(action_size), privileged_size=STATE)
    rng = np.random.default_rng(seed)
    store = DemoStore.create(root / f"{name}.zarr", s, TaskInfo(name, f"do {name}", "toy/Env-v0", "toy", "easy"))
    mixing = rng.normal(size=(3, STATE))
    for i in range(episodes):
        episode = make_episode(s, 6 + i % 3, rng)
        episode[PRIVILEGED_KEY] = (episode["obs/proprio"] @ mixing).astype(np.float32)
        store.append_episode(episode, seed=i, success=True, expert="toy")
    store.close()


@pytest.fixture
def privileged_stores(tmp_path):
    root = tmp_path / "data"
    write_privileged_store(root, "four", 4, episodes=6, seed=1)
    write_privileged_store(root, "two", 2, episodes=3, seed=2)
    return root


@pytest.mark.slow
def test_metaworld_records_its_full_state_beside_the_observation_and_no_policy_reads_it(tmp_path):
    spec = get_task("reach-v3")
    env = spec.make_env(ObservationConfig(cameras=(), privileged=True))
    full = spec.make_env(ObservationConfig(cameras=(), proprio="full_state"))
    try:
        assert env.schema.privileged_size == 39
        assert PRIVILEGED_KEY not in env.schema.observation_keys()
        assert env.schema.without_privileged() == spec.schema(ObservationConfig(cameras=()))
        np.testing.assert_array_equal(env.reset(7)[PRIVILEGED_KEY], full.reset(7)["obs/proprio"])
        arrays, success = rollout(env, 7, max_steps=200)
    finally:
        env.close()
        full.close()
    assert success
    store = DemoStore.create(tmp_path / "reach.zarr", env.schema, spec.info())
    store.append_episode(arrays, seed=7, success=True, expert=spec.expert)
    store.close()
    reopened = DemoStore.open(tmp_path / "reach.zarr")
    assert reopened.validate()["checked_arrays"] == 3  # proprio, action, privileged
    assert TaskSchema.from_dict(reopened.schema.to_dict()).privileged_size == 39
    goal = reopened.load().arrays[PRIVILEGED_KEY][:, 36:39]
    assert np.ptp(goal, axis=0).max() == 0 and np.abs(goal).max() > 0  # the goal: fixed within an episode


def test_the_probe_learns_the_state_and_the_policy_does_not_depend_on_it(privileged_stores, tmp_path):
    cfg = run_config(privileged_stores, **{"train.steps": 80, "train.batch_size": 32, "train.log_every": 10,
                                           "train.checkpoint_every": 1000, "optim.lr": 3e-3,
                                           "train.privileged_weight": 1.0})
    Trainer(cfg, tmp_path / "run").fit()
    with (tmp_path / "run" / "train_log.csv").open() as f:
        series = [float(r["privileged_loss"]) for r in csv.DictReader(f)]
    assert series[-1] < 0.6 * series[0]
    model, manifest = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert manifest["model"]["privileged_size"] == STATE
    assert all("privileged_size" not in t["schema"] for t in manifest["tasks"])  # evaluation needs no state
    obs = {"obs/cam": torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8), "obs/proprio": torch.randn(2, 3)}
    before = model(obs, "four")
    with torch.no_grad():
        for p in model.privileged_heads.parameters():
            p.add_(1.0)
    torch.testing.assert_close(model(obs, "four"), before, rtol=0, atol=0)


def test_a_gradient_balancer_trains_each_task_probe_as_the_task_own_parameter(privileged_stores, tmp_path):
    trainer = Trainer(run_config(privileged_stores, **{"train.balancer": "upgrad", "train.privileged_weight": 1.0}),
                      tmp_path / "run")
    probe = {t: trainer.model.privileged_heads[t].weight.detach().clone() for t in ("four", "two")}
    assert not any(p is trainer.model.privileged_heads["four"].weight for p in trainer.shared)
    trainer.train_step()
    for task, before in probe.items():
        assert not torch.equal(trainer.model.privileged_heads[task].weight, before), task


def test_privileged_weight_without_recorded_state_names_the_store(tmp_path):
    root = write_toy_stores(tmp_path / "data")
    with pytest.raises(MtPolicyError, match=r"four\.zarr.*collect --privileged"):
        Trainer(run_config(root, **{"train.privileged_weight": 0.5}), tmp_path / "run")


def test_an_interrupted_privileged_run_resumes_on_the_same_probe_loss_curve(privileged_stores, tmp_path):
    def series(run):
        with (run / "train_log.csv").open() as f:
            return {int(r["step"]): (float(r["loss"]), float(r["privileged_loss"])) for r in csv.DictReader(f)}

    weighted = {"train.privileged_weight": 1.0}
    Trainer(run_config(privileged_stores, **weighted), tmp_path / "straight").fit()
    Trainer(run_config(privileged_stores, **weighted, **{"train.steps": 3}), tmp_path / "resumed").fit()
    Trainer(run_config(privileged_stores, **weighted), tmp_path / "resumed").fit(
        tmp_path / "resumed" / "checkpoints" / "last")
    straight, resumed = series(tmp_path / "straight"), series(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):  # the probes' weights and optimizer moments came back with the checkpoint
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-7)
