"""bench/plot_budget.py: success against training samples, from the JSONs bench/peers.py and bench/mt10.py write."""

from __future__ import annotations

import json

import pytest
from conftest import load_bench


@pytest.fixture(scope="module")
def plot_budget():
    return load_bench("plot_budget")


def _run(name_key, name, samples, successes, episodes, **extra):
    tasks = {f"t{i}": {"successes": s, "episodes": episodes} for i, s in enumerate(successes)}
    rate = sum(successes) / (episodes * len(successes))
    return {name_key: name, "train_samples": samples, "mean_success": rate,
            "pooled_ci95": [rate - 0.05, rate + 0.05], "tasks": tasks, **extra}


def _write(path, runs):
    path.write_text(json.dumps({"runs": runs}))
    return path


def test_one_line_per_policy_with_the_most_episodes_kept(plot_budget, tmp_path, capsys):
    peers_10 = _write(tmp_path / "peers_10ep.json", [_run("model", "ours", 51200, [5, 4], 10),
                                                     _run("model", "act", 51200, [6, 6], 10)])
    peers_30 = _write(tmp_path / "peers.json", [
        _run("model", "ours", 51200, [12, 15], 30, ours_set=[]),
        _run("model", "act", 51200, [20, 18], 30),
        _run("model", "ours", 51200, [1, 1], 30, ours_set=["model.random_shift=0"]),  # another recipe
        _run("model", "ours", 51200, [2, 2], 30, temporal_ensemble=0.01)])  # another evaluation
    mt10 = _write(tmp_path / "mt10.json", [_run("config", "lerobot", 1_536_000, [40, 38], 50),
                                           _run("config", "two_views", 1_536_000, [30, 30], 50)])
    out = tmp_path / "plots" / "budget.png"
    assert plot_budget.main([str(peers_10), str(peers_30), str(mt10), "--out", str(out)]) == 0
    printed = capsys.readouterr().out

    points = {(p.series, p.samples): p for p in plot_budget.merge(
        [q for f in (peers_10, peers_30, mt10) for q in plot_budget.read_points(f)[0]])[0]}
    assert set(points) == {("ours", 51200), ("ACT", 51200), ("ours", 1_536_000)}
    assert points["ours", 51200].success == pytest.approx(27 / 60)  # the 30-episode run, not 9/20
    assert points["ours", 51200].episodes_per_task == 30
    assert points["ACT", 51200].source == "peers.json"
    assert points["ours", 1_536_000].success == pytest.approx(78 / 100)
    assert "| ours | 1,536,000 | 78.0% |" in printed
    assert "left out: mt10.json: two_views (another recipe)" in printed
    assert "peers_10ep.json: ours at 51,200 (10 episodes; kept peers.json's, 30)" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_on_a_tie_the_file_named_first_is_kept(plot_budget, tmp_path):
    first = plot_budget.read_points(_write(tmp_path / "a.json", [_run("model", "act", 51200, [3], 10)]))[0]
    second = plot_budget.read_points(_write(tmp_path / "b.json", [_run("model", "act", 51200, [7], 10)]))[0]
    points, dropped = plot_budget.merge(first + second)
    assert [p.source for p in points] == ["a.json"]
    assert dropped == ["b.json: ACT at 51,200 (10 episodes; kept a.json's, 10)"]


def test_a_file_that_is_not_a_result_is_named(plot_budget, tmp_path, capsys):
    bad = tmp_path / "eval.json"
    bad.write_text(json.dumps({"mean_success": 0.5}))
    assert plot_budget.main([str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'runs'" in err
    assert not (tmp_path / "x.png").exists()


def test_a_run_without_its_figures_is_named(plot_budget, tmp_path, capsys):
    run = _run("model", "act", 51200, [3], 10)
    del run["pooled_ci95"]
    path = _write(tmp_path / "peers.json", [run])
    assert plot_budget.main([str(path), "--out", str(tmp_path / "x.png")]) == 2
    assert "run 0 (act) lacks" in capsys.readouterr().err
