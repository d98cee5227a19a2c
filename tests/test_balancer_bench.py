"""bench/balancers.py: finished runs reused or re-evaluated, not retrained; each balancer paired with `equal` by seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("balancers")


def test_a_finished_run_is_evaluated_again_from_its_checkpoint_when_the_episodes_change(bench, tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "balancers.json"
    run_dir = work / "equal_seed0"
    checkpoint = run_dir / "checkpoints" / "last"

    def sweep(episodes: int, steps: int = 4) -> dict:
        assert bench.main(["--suite", "mt3", "--demos", "1", "--steps", str(steps), "--batch-size", "8",
                           "--seeds", "0", "--balancers", "equal", "--episodes", str(episodes), "--work", str(work),
                           "--out", str(out), "--set", "model.trunk_dims=[16]", "model.head_hidden=8"]) == 0
        return json.loads(out.read_text())["runs"][0]

    first = sweep(episodes=1)
    trained_at = checkpoint.stat().st_mtime_ns
    assert json.loads((run_dir / "eval" / "eval.json").read_text())["episodes_per_task"] == 1

    again = sweep(episodes=2)
    assert "evaluated again on 2 episodes/task" in capsys.readouterr().out
    assert checkpoint.stat().st_mtime_ns == trained_at  # not retrained
    assert again["train_seconds"] == first["train_seconds"]
    assert json.loads((run_dir / "eval" / "eval.json").read_text())["episodes_per_task"] == 2

    evaluated_at = (run_dir / "eval" / "eval.json").stat().st_mtime_ns
    assert sweep(episodes=2) == again
    assert "(reused)" in capsys.readouterr().out
    assert (run_dir / "eval" / "eval.json").stat().st_mtime_ns == evaluated_at

    sweep(episodes=2, steps=5)  # other training settings: trained again
    assert checkpoint.stat().st_mtime_ns != trained_at


def _run(variant: str, seed: int, mean: float) -> dict:
    return {"variant": variant, "seed": seed, "mean_success": mean, "success": {"reach-v3": mean}, "step_ms": 1.0,
            "conflict_fraction": None, "conflict_cos_min": None, "update_cos_min": None}


def test_the_table_pairs_each_balancer_with_equal_seed_by_seed(bench):
    runs = [_run("equal", 0, 0.70), _run("equal", 1, 0.80), _run("equal", 2, 0.60),
            _run("rgb", 2, 0.66), _run("rgb", 0, 0.72), _run("rgb", 1, 0.79)]  # other order: paired by seed
    table = bench.summarise(runs)
    rgb, equal = table["rgb"], table["equal"]
    assert rgb["gain_over_equal"] == pytest.approx((0.06 + 0.02 - 0.01) / 3)
    assert rgb["gain_se"] == pytest.approx(float(np.std([0.06, 0.02, -0.01], ddof=1)) / 3 ** 0.5)
    assert (rgb["seeds_not_below_equal"], rgb["paired_seeds"]) == (2, 3)
    assert equal["seed_spread"] == pytest.approx(0.20) and equal["seed_sd"] == pytest.approx(0.10)
    assert equal["gain_over_equal"] == 0.0

    lone = bench.summarise([_run("rgb", 0, 0.5)])["rgb"]  # no equal in the sweep, one seed: nothing to pair
    assert lone["gain_over_equal"] is None and lone["seed_sd"] is None and lone["paired_seeds"] == 0
