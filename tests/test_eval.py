"""Sim evaluation: eval.json schema, report files, videos, Wilson intervals, and refusals before any rollout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mt_policy.checkpoint import save_checkpoint
from mt_policy.cli import main
from mt_policy.errors import UnknownNameError
from mt_policy.model import ModelConfig, MultiTaskPolicy, TaskEntry
from mt_policy.schema import TaskInfo
from mt_policy.seeds import EVAL_SEEDS
from sim.eval_report import EpisodeOutcome
from sim.evaluate import (
    EpisodeResult,
    EvalError,
    _VideoKeeper,
    evaluate,
    observation_config,
    run_episode,
    wilson_interval,
)
from sim.suites import load_suite_file
from sim.tasks import ObservationConfig, get_task

SMALL = ObservationConfig(cameras=("corner2",), image_size=(32, 32))
TASKS = ("reach-v3", "drawer-close-v3")
TINY = ModelConfig(encoder_channels=(4, 8), feature_dim=16, trunk_dims=(16,), head_hidden=16, action_chunk=4)
MAX_STEPS = 30  # an untrained policy never finishes; 500 steps would take ~10 s per episode


def _entry(name: str) -> TaskEntry:
    spec = get_task(name)
    return TaskEntry(spec.info(), spec.schema(SMALL))


def _checkpoint(path: Path, entries: list[TaskEntry], provenance: dict | None = None) -> Path:
    return save_checkpoint(MultiTaskPolicy(TINY, entries), path, provenance)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", [_entry(n) for n in TASKS],
                       {"demo_seeds": {"reach-v3": [0, 1, 2]}})


@pytest.fixture(scope="module")
def evaluated(tiny_checkpoint, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("eval")
    report = evaluate(tiny_checkpoint, out, episodes=2, workers=2, videos=1, progress=False, max_steps=MAX_STEPS)
    return report, out


def test_eval_json_schema_and_consistent_numbers(evaluated, tiny_checkpoint):
    report, out = evaluated
    assert json.loads((out / "eval.json").read_text()) == report
    assert report["checkpoint"] == str(tiny_checkpoint.resolve())
    assert report["episodes_per_task"] == 2
    assert report["eval_seeds"] == {"first": EVAL_SEEDS.seed(0), "count": 2}
    assert report["n_action_steps"] == TINY.action_chunk and report["temporal_ensemble"] is None
    assert list(report["tasks"]) == list(TASKS)
    for name, row in report["tasks"].items():
        assert set(row) == {"successes", "episodes", "success_rate", "ci95", "mean_steps_to_success", "difficulty",
                            "description"}, name
        assert isinstance(row["successes"], int) and 0 <= row["successes"] <= row["episodes"] == 2
        assert row["success_rate"] == pytest.approx(row["successes"] / 2)
        lo, hi = row["ci95"]
        assert 0.0 <= lo <= row["success_rate"] <= hi <= 1.0
        assert row["mean_steps_to_success"] is None or 1 <= row["mean_steps_to_success"] <= MAX_STEPS
        assert row["difficulty"] == get_task(name).difficulty and row["description"] == get_task(name).description
    rates = [r["success_rate"] for r in report["tasks"].values()]
    assert report["mean_success"] == pytest.approx(sum(rates) / len(rates))
    assert list(report["group_macro"]) == ["easy"]  # both tasks are easy in LeRobot's tables
    assert report["group_macro_mean"] == pytest.approx(report["group_macro"]["easy"])
    assert isinstance(report["wall_seconds"], float) and report["wall_seconds"] > 0


def test_report_files_and_videos_per_outcome(evaluated):
    report, out = evaluated
    markdown = (out / "eval.md").read_text()
    assert "| task | group | success | rate | 95% CI | mean steps |" in markdown
    assert all(f"| {name} | easy |" in markdown for name in TASKS) and "Mean success over tasks" in markdown
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name, row in report["tasks"].items():
        failures = sorted((out / "videos").glob(f"{name}_failure_seed*.gif"))
        successes = sorted((out / "videos").glob(f"{name}_success_seed*.gif"))
        assert len(failures) == min(1, row["episodes"] - row["successes"]), name
        assert len(successes) == min(1, row["successes"]), name
        for gif in failures + successes:
            assert gif.read_bytes()[:6] == b"GIF89a"
            assert int(gif.stem.rsplit("seed", 1)[1]) in EVAL_SEEDS


@pytest.mark.parametrize("successes, n, expected", [
    (0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0)), (5, 10, (0.2366, 0.7634)), (1, 1, (0.2065, 1.0)),
])
def test_wilson_interval_known_values(successes, n, expected):
    lo, hi = wilson_interval(successes, n)
    assert (lo, hi) == pytest.approx(expected, abs=1e-4)


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_observation_config_comes_from_the_checkpoint_schema():
    entries = [_entry(n) for n in TASKS]
    assert observation_config(MultiTaskPolicy(TINY, entries).observation) == SMALL


def test_unknown_task_lists_the_checkpoint_tasks(tiny_checkpoint, tmp_path):
    with pytest.raises(UnknownNameError, match=r"unknown checkpoint task 'push-v3'.*drawer-close-v3, reach-v3"):
        evaluate(tiny_checkpoint, tmp_path, tasks="reach-v3,push-v3", progress=False)
    assert not (tmp_path / "eval.json").exists()


def test_a_task_missing_from_the_registry_suggests_a_suite_file(tmp_path):
    ghost = TaskEntry(TaskInfo("ghost-v0", "not registered anywhere", "Ghost-v0", "", "easy"),
                      get_task("reach-v3").schema(SMALL))
    ckpt = _checkpoint(tmp_path / "ckpt", [_entry("reach-v3"), ghost])
    with pytest.raises(EvalError, match=r"'ghost-v0' is not a registered task.*--suite-file"):
        evaluate(ckpt, tmp_path / "out", tasks=["ghost-v0"], progress=False)


def test_eval_seeds_that_were_demo_seeds_are_refused(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", [_entry(n) for n in TASKS],
                       {"demo_seeds": {"drawer-close-v3": [5, EVAL_SEEDS.seed(1)]}})
    with pytest.raises(EvalError, match=rf"drawer-close-v3: evaluation seeds overlap demo seeds: \[{EVAL_SEEDS.seed(1)}\]"):
        evaluate(ckpt, tmp_path / "out", episodes=2, progress=False)
    assert not (tmp_path / "out" / "eval.json").exists()


def test_cli_first_episode_runs_a_later_slice_of_the_eval_seeds(tiny_checkpoint, tmp_path):
    out = tmp_path / "val"
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--tasks", "reach-v3", "--episodes", "2",
                 "--first-episode", "3", "--workers", "1", "--videos", "0", "--max-steps", "5",
                 "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["eval_seeds"] == {"first": EVAL_SEEDS.seed(3), "count": 2}


def test_a_later_slice_is_still_checked_against_the_demo_seeds(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", [_entry(n) for n in TASKS], {"demo_seeds": {"reach-v3": [EVAL_SEEDS.seed(4)]}})
    with pytest.raises(EvalError, match=rf"reach-v3: evaluation seeds overlap demo seeds: \[{EVAL_SEEDS.seed(4)}\]"):
        evaluate(ckpt, tmp_path / "out", episodes=2, first_episode=3, progress=False)
    with pytest.raises(EvalError, match=r"first_episode must be in \[0, 999998\] for 2 episodes .*got -1"):
        evaluate(ckpt, tmp_path / "out", episodes=2, first_episode=-1, progress=False)
    with pytest.raises(EvalError, match=r"first_episode must be in \[0, 999998\] for 2 episodes .*got 999999"):
        evaluate(ckpt, tmp_path / "out", episodes=2, first_episode=999_999, progress=False)
    assert not (tmp_path / "out" / "eval.json").exists()


def test_bad_n_action_steps_is_refused_before_any_rollout(tiny_checkpoint, tmp_path):
    with pytest.raises(EvalError, match=r"n_action_steps must be in \[1, 4\]"):
        evaluate(tiny_checkpoint, tmp_path, n_action_steps=5, progress=False)


SUITE_FILE = """\
tasks:
  eval-reacher:
    env_id: Reacher-v5
    expert: sim.reacher:expert
    success: sim.reacher:success
    description: Touch the target
    agent_pos: [0, 1, 2, 3, 6, 7]
suites:
  eval-mixed:
    tasks: [reach-v3, eval-reacher]
"""


def test_cli_eval_of_a_suite_file_task_writes_results_and_prints_the_table(tmp_path, capsys):
    """A task defined only in a suite file (2-D actions, 6-D proprio) reaches the spawned eval workers."""
    suite_file = tmp_path / "mine.yaml"
    suite_file.write_text(SUITE_FILE)
    load_suite_file(suite_file)
    ckpt = _checkpoint(tmp_path / "ckpt", [_entry("reach-v3"), _entry("eval-reacher")])
    code = main(["eval", "--checkpoint", str(ckpt), "--suite-file", str(suite_file), "--episodes", "1",
                 "--workers", "1", "--videos", "1", "--max-steps", "10", "--n-action-steps", "2", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    out = tmp_path / "ckpt-eval"  # the default: beside the checkpoint, never inside it
    assert "| eval-reacher | easy |" in printed and str(out / "eval.json") in printed
    report = json.loads((out / "eval.json").read_text())
    assert list(report["tasks"]) == ["reach-v3", "eval-reacher"]
    assert report["n_action_steps"] == 2 and report["max_steps"] == 10
    assert len(list((out / "videos").glob(f"eval-reacher_*_seed{EVAL_SEEDS.seed(0)}.gif"))) == 1


def test_cli_eval_errors_exit_2(tiny_checkpoint, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--tasks", "nope-v3", "--no-progress"]) == 2
    assert "unknown checkpoint task 'nope-v3'" in capsys.readouterr().err


def test_run_episode_stops_at_success_and_records_every_stride_steps():
    env = get_task("reach-v3").make_env(SMALL)
    try:
        success, steps, frames = run_episode(env, lambda obs: env.expert_action(), EVAL_SEEDS.seed(0), 200,
                                             record_camera="corner2", frame_stride=2)
    finally:
        env.close()
    assert success and 1 <= steps < 200, "reach-v3's scripted expert reaches the goal quickly"
    # The reset frame, every 2nd step, and the success step.
    assert frames.shape == (1 + steps // 2 + steps % 2, 32, 32, 3)


def test_videos_keep_at_most_n_per_task_and_outcome(tmp_path):
    keeper = _VideoKeeper(tmp_path, 1, "corner2", {"reach-v3": 80.0})
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    for seed, success in [(1, True), (2, True), (3, False)]:
        assert keeper.camera_for("reach-v3") == "corner2", "a failure slot is still open"
        keeper.offer(EpisodeResult(EpisodeOutcome("reach-v3", seed, success, 3), frames, 0.0))
    assert keeper.camera_for("reach-v3") is None, "both slots full: no more frames need recording"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reach-v3_failure_seed3.gif", "reach-v3_success_seed1.gif"]
