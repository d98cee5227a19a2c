"""bench/ensemble.py: checkpoints' action chunks averaged, rolled out beside each checkpoint alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_bench, random_policy

from mt_policy.checkpoint import save_checkpoint
from mt_policy.errors import MtPolicyError
from mt_policy.model import ModelConfig
from mt_policy.runner import torch_predictor
from mt_policy.seeds import EVAL_SEEDS
from sim.tasks import ObservationConfig, get_task

SMALL = ObservationConfig(cameras=("corner2",), image_size=(32, 32))
TINY = ModelConfig(encoder_channels=(4, 8), feature_dim=16, trunk_dims=(16,), head_hidden=16, action_chunk=4)
TASKS = ["reach-v3", "drawer-close-v3"]
BENCH = Path(__file__).resolve().parents[1] / "bench" / "ensemble.py"


@pytest.fixture(scope="module")
def bench():
    return load_bench("ensemble")


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    models = [random_policy(TASKS, SMALL, TINY, seed) for seed in (0, 1)]
    return [save_checkpoint(m, root / f"m{i}") for i, m in enumerate(models)], models


def test_the_average_predicts_the_mean_of_its_members_chunks(bench, members):
    paths, models = members
    env = get_task("reach-v3").make_env(SMALL)
    try:
        obs = env.reset(EVAL_SEEDS.seed(0))
    finally:
        env.close()
    averaged = bench.averaged_predictor(tuple(str(p) for p in paths), "reach-v3")(obs)
    alone = [torch_predictor(m, "reach-v3")(obs) for m in models]
    assert not np.allclose(alone[0], alone[1])  # two different members, or the test proves nothing
    np.testing.assert_allclose(averaged, (alone[0] + alone[1]) / 2, atol=1e-6)


def test_every_policy_runs_on_the_same_evaluation_seeds(bench, members, tmp_path):
    paths, _ = members
    out = tmp_path / "ensemble.json"
    # A process of its own: the rollout workers are spawned and import the script as the main module.
    run = subprocess.run([sys.executable, str(BENCH), *map(str, paths), "--tasks", "reach-v3", "--episodes", "2",
                          "--first-episode", "3", "--max-steps", "3", "--workers", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["seeds"] == EVAL_SEEDS.take(2, 3)
    assert list(result["policies"]) == [str(p.resolve()) for p in paths] + [bench.ENSEMBLE]
    for summary in result["policies"].values():  # untrained and capped at 3 steps: every episode fails
        assert summary["tasks"]["reach-v3"] == {"successes": 0, "episodes": 2, "ci95": pytest.approx([0.0, 0.658], abs=1e-3)}
    assert "| average of all | 0.0% | 0/2 |" in run.stdout


def test_checkpoints_of_other_tasks_are_refused(bench, members, tmp_path):
    other = save_checkpoint(random_policy(["reach-v3"], SMALL, TINY), tmp_path / "other")
    with pytest.raises(MtPolicyError, match=r"other: its tasks \(\['reach-v3'\]\) differ"):
        bench.check_members([members[0][0], other])
    with pytest.raises(MtPolicyError, match="two or more"):
        bench.check_members([members[0][0]])
