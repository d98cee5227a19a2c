"""bench/balancers.py: a finished run is reused, and asked for other episodes it is re-evaluated, not retrained."""

from __future__ import annotations

import json

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
