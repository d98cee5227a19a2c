"""bench/by_placement.py: roll-outs on the evaluation seeds, ordered by where the expert's first move points."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import load_bench, random_policy

from mt_policy.checkpoint import save_checkpoint
from mt_policy.model import ModelConfig
from mt_policy.runner import torch_predictor
from mt_policy.seeds import EVAL_SEEDS
from sim.tasks import ObservationConfig, get_task

SMALL = ObservationConfig(cameras=("corner2",), image_size=(32, 32))
TINY = ModelConfig(encoder_channels=(4, 8), feature_dim=16, trunk_dims=(16,), head_hidden=16, action_chunk=4)
TASK = "door-open-v3"


@pytest.fixture(scope="module")
def bench():
    return load_bench("by_placement")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = random_policy([TASK, "reach-v3"], SMALL, TINY)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny"), model


def test_outcomes_are_sorted_by_the_experts_first_move_on_the_evaluation_seeds(bench, checkpoint, tmp_path, capsys):
    path, model = checkpoint
    out = tmp_path / "placement.json"
    assert bench.main([str(path), "--task", TASK, "--episodes", "4", "--first-episode", "2", "--axis", "1",
                       "--max-steps", "3", "--n-action-steps", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    episodes = result["episodes"]
    assert sorted(e["seed"] for e in episodes) == EVAL_SEEDS.take(4, 2)
    along = [e["expert_first_action"][1] for e in episodes]
    assert along == sorted(along) and len(set(along)) == 4  # placements differ per seed, so the order means something
    assert result["successes"] == 0 and all(e["steps"] == 3 for e in episodes)  # untrained, capped at 3 steps

    # What it recorded is what the env's expert and the policy say at that reset, computed here independently.
    env = get_task(TASK).make_env(SMALL)
    predict = torch_predictor(model, TASK)
    try:
        for e in episodes:
            obs = env.reset(e["seed"])
            expert = env.expert_action()
            np.testing.assert_allclose(e["expert_first_action"], expert, atol=1e-4)
            first = predict(obs)[:2].mean(axis=0)[:3]
            want = first @ expert[:3] / (np.linalg.norm(first) * np.linalg.norm(expert[:3]))
            assert e["first_chunk_cosine"] == pytest.approx(want, abs=1e-3)
    finally:
        env.close()
    printed = capsys.readouterr().out
    assert "0/4 successes" in printed and "FFFF" in printed and str(out) in printed


@pytest.mark.parametrize("extra, message", [
    (["--task", "push-v3"], "unknown task 'push-v3'; known tasks: door-open-v3, reach-v3"),
    (["--task", TASK, "--axis", "4"], "--axis 4"),
    (["--task", TASK, "--episodes", "0"], "--episodes must be at least 1"),
])
def test_a_task_or_axis_the_checkpoint_lacks_is_refused(bench, checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "placement.json"
    assert bench.main([str(checkpoint[0]), *extra, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()
