"""bench/fit.py: checkpoints scored on one fixed set of training windows, so a longer run scores lower."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import load_bench
from toy_training import run_config, write_toy_stores

from training.trainer import Trainer


@pytest.fixture(scope="module")
def fit_bench():
    return load_bench("fit")


def _trained(stores, tmp_path, name, steps, **extra):
    cfg = run_config(stores, **{"train.steps": steps, "train.batch_size": 32, "train.checkpoint_every": 1000,
                                "optim.lr": 3e-3, **extra})
    return Trainer(cfg, tmp_path / name).fit()


def test_a_longer_run_fits_better_on_the_same_windows(fit_bench, stores, tmp_path, capsys):
    short, long = _trained(stores, tmp_path, "short", 2), _trained(stores, tmp_path, "long", 120)
    out = tmp_path / "fit.json"
    assert fit_bench.main([str(short), str(long), str(short), "--data", str(stores), "--batches", "5",
                           "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["train_samples"] for r in runs] == [64, 3840, 64]
    assert set(runs[0]["per_task_l1"]) == {"four", "two"}
    assert runs[2] == runs[0]  # the same windows for every checkpoint: one checkpoint scores the same twice
    assert runs[1]["mean_l1"] < 0.8 * runs[0]["mean_l1"]
    assert "mean L1" in capsys.readouterr().out


def test_checkpoints_that_cannot_be_compared_are_refused(fit_bench, stores, tmp_path, capsys):
    four_chunk = _trained(stores, tmp_path, "chunk4", 2)
    two_chunk = _trained(stores, tmp_path, "chunk2", 2, **{"model.action_chunk": 2})
    with pytest.raises(SystemExit, match=r"chunk2/checkpoints/last: serves tasks/cameras/chunk .* 2\), but .* not comparable"):
        fit_bench.main([str(four_chunk), str(two_chunk), "--data", str(stores), "--out", str(tmp_path / "f.json")])
    (stores / "two.zarr").rename(stores / "moved.zarr")
    with pytest.raises(SystemExit, match=r"two.zarr: no store for task 'two'"):
        fit_bench.main([str(four_chunk), "--data", str(stores), "--out", str(tmp_path / "f.json")])
    shutil.copytree(stores / "four.zarr", stores / "two.zarr")  # a store of another task under this task's name
    assert fit_bench.main([str(four_chunk), "--data", str(stores), "--out", str(tmp_path / "f.json")]) == 2
    assert "two.zarr: holds task 'four'" in capsys.readouterr().err


def test_a_run_on_clipped_actions_is_scored_against_clipped_actions(fit_bench, tmp_path, capsys):
    root = write_toy_stores(tmp_path / "data", action_gain=3.0)  # targets up to 3x the [-1, 1] bounds
    plain = _trained(root, tmp_path, "plain", 120)
    clip = _trained(root, tmp_path, "clip", 120, **{"data.clip_actions": True})
    out = tmp_path / "fit.json"
    assert fit_bench.main([str(plain), str(clip), "--data", str(root), "--batches", "5", "--out", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["targets"] for r in runs] == ["recorded", "clipped"]
    assert "clipped" in capsys.readouterr().out

    from mt_policy.checkpoint import load_checkpoint

    model = load_checkpoint(clip)[0]
    batches = fit_bench.fixed_batches([model], root, fit_bench.parse_args([str(clip), "--data", str(root), "--batches", "5"]))
    assert all(fit_bench.clipped(b, model).actions["four"].abs().max() <= 1.0 for b in batches)
    # Scored against the recorded actions, the clipped run would be charged for magnitudes it never trained on.
    recorded = np.mean(list(fit_bench.fit(model, batches).values()))
    assert runs[1]["mean_l1"] == pytest.approx(np.mean(list(fit_bench.fit(model, batches, clip=True).values())))
    assert runs[1]["mean_l1"] < 0.8 * recorded
