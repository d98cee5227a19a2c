"""bench/privileged_probe.py: a privileged-state probe read out on training, first and new-seed frames."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import load_bench, random_policy
from toy_training import write_store

from mt_policy.checkpoint import save_checkpoint
from mt_policy.demo_store import DemoStore
from mt_policy.model import STD_FLOOR, ModelConfig
from mt_policy.schema import PRIVILEGED_KEY
from sim.collect import collect
from sim.tasks import ObservationConfig, get_task

SMALL = ObservationConfig(cameras=("corner2",), image_size=(32, 32), privileged=True)
TINY = ModelConfig(encoder_channels=(4, 8), feature_dim=16, trunk_dims=(16,), head_hidden=16, action_chunk=4)
GOAL = slice(36, 39)


@pytest.mark.slow
def test_the_probe_is_read_in_state_units_beside_the_mean_guess(tmp_path, capsys):
    bench = load_bench("privileged_probe")
    collect([get_task("reach-v3")], 3, tmp_path / "demos", SMALL, workers=1, progress=False)
    store = tmp_path / "demos" / "reach-v3.zarr"
    demos = DemoStore.open(store).load()
    state, stats = demos.arrays[PRIVILEGED_KEY], demos.stats[PRIVILEGED_KEY]
    first = state[demos.episode_starts]
    assert np.ptp(first[:, GOAL], axis=0).max() > 0  # three seeds, three goals: the errors below are not all zero

    # A probe that ignores the image and always answers the first demo's state, in normalised units.
    model = random_policy(["reach-v3"], dataclasses.replace(SMALL, privileged=False),
                          dataclasses.replace(TINY, privileged_size=state.shape[1]))
    with torch.no_grad():
        model.privileged_heads["reach-v3"].weight.zero_()
        model.privileged_heads["reach-v3"].bias.copy_(
            torch.from_numpy((first[0] - stats.mean) / np.maximum(stats.std, STD_FLOOR)))
    probed = save_checkpoint(model, tmp_path / "probed")
    plain = save_checkpoint(random_policy(["reach-v3"], dataclasses.replace(SMALL, privileged=False), TINY),
                            tmp_path / "plain")

    out = tmp_path / "probe.json"
    assert bench.main([str(plain), str(probed), "--store", str(store), "--frames", "16", "--new-seeds", "2",
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["checkpoint"] for r in result["checkpoints"]] == [str(probed)]  # the plain policy has no probe
    assert "trained without the privileged-state probe" in capsys.readouterr().out
    errors = result["checkpoints"][0]["errors"]
    want = np.linalg.norm(first[:, GOAL] - first[0, GOAL], axis=1).mean()
    assert errors["first frames, demo seeds"] == pytest.approx(want, rel=1e-4)
    mean_guess = np.linalg.norm(first[:, GOAL] - state[:, GOAL].mean(0), axis=1).mean()
    assert result["predict_the_mean"]["first frames, demo seeds"] == pytest.approx(mean_guess, rel=1e-5)
    assert set(errors) == set(result["predict_the_mean"]) == {
        "train frames", "first frames, demo seeds", "first frames, new seeds"}
    assert all(np.isfinite(v) and v > 0 for v in errors.values())

    with pytest.raises(SystemExit, match=r"--entries 36:40: outside the store's 39 state entries"):
        bench.main([str(probed), "--store", str(store), "--entries", "36:40", "--out", str(out)])


def test_a_store_without_privileged_state_is_refused_with_its_path(tmp_path):
    bench = load_bench("privileged_probe")
    store = write_store(tmp_path, "four", 4, episodes=2)
    with pytest.raises(SystemExit, match=r"four\.zarr: records no privileged state; .*collect --privileged"):
        bench.main([str(tmp_path / "ckpt"), "--store", str(store), "--out", str(tmp_path / "p.json")])
