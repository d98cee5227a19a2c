"""add-task and trim on tiny state-only data: heads, strategies, rehearsal batches, refusals, interruption."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_episode, sigint_as_at_a_terminal
from hydra import compose, initialize_config_dir

from mt_policy.checkpoint import load_checkpoint, load_extra
from mt_policy.cli import main
from mt_policy.demo_store import DemoStore
from mt_policy.policy_edit import trim_policy
from sim.collect import collect
from sim.tasks import ObservationConfig, get_task
from training.add_task import AddTaskError, AddTaskOptions, RehearsalBatches, add_task, plan
from training.config import register_configs
from training.trainer import Trainer

CONF = Path(__file__).resolve().parents[1] / "training" / "conf"
STATE = ObservationConfig(cameras=(), proprio="agent_pos")
OLD = ("drawer-close-v3", "window-close-v3")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    report = collect([get_task(n) for n in (*OLD, "drawer-open-v3", "reacher-v5")], 3, root, STATE, workers=2,
                     progress=False)
    return report.stores


def _train_source(tmp_path_factory, stores, *overrides: str) -> Path:
    register_configs()
    data = tmp_path_factory.mktemp("data")
    for name in OLD:
        shutil.copytree(stores[name], data / stores[name].name)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"data.root={data}", "data.suite=null", "+data.tasks={drawer-close-v3:{},window-close-v3:{}}",
            "train.steps=40", "train.batch_size=32", "train.progress=false", "train.checkpoint_every=40",
            "train.rehearsal_per_task=50", "eval.final=false", "model.feature_dim=32", "model.trunk_dims=[32]",
            "model.head_hidden=32", "model.action_chunk=4", "model.task_embedding_scale=1.0", *overrides])
    return Trainer(cfg, tmp_path_factory.mktemp("run")).fit()


@pytest.fixture(scope="module")
def source(tmp_path_factory, stores) -> Path:
    """A tiny policy trained on the two old tasks (its run records their stores and a rehearsal buffer)."""
    return _train_source(tmp_path_factory, stores)


def _opts(source: Path, stores, tmp_path: Path, task: str = "drawer-open-v3", **kw) -> AddTaskOptions:
    return AddTaskOptions(source, task, stores[task], tmp_path / "grown", init_from="drawer-close-v3", steps=20,
                          batch_size=16, eval_episodes=0, progress=False, **kw)


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _outputs(model, task: str, proprio_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        return model({"obs/proprio": torch.randn(5, proprio_size, generator=generator)}, task)


def test_the_trained_checkpoint_carries_a_balanced_rehearsal_buffer(source):
    buffer = load_extra(source, "rehearsal")
    tasks = {k.split("::")[0] for k in buffer}
    assert tasks == set(OLD)
    for task in OLD:
        assert buffer[f"{task}::action"].shape == (50, 4, 4) and buffer[f"{task}::obs/proprio"].shape == (50, 1, 4)


def test_new_head_has_the_new_tasks_action_size(source, stores, tmp_path):
    report = add_task(_opts(source, stores, tmp_path, task="reacher-v5"), log=lambda _: None)
    model, manifest = load_checkpoint(report["checkpoint"])
    assert [t.name for t in model.tasks] == [*OLD, "reacher-v5"]
    assert _outputs(model, "reacher-v5", 6).shape == (5, 4, 2)
    assert model.observation.proprio_size == 6  # grew for reacher's 6-D agent_pos
    record = manifest["provenance"]["add_task"]
    assert record["init_from"] == {"task": "drawer-close-v3", "by": "--init-from"}
    assert record["strategy"] == "rehearsal" and record["rehearsal_source"] == "stores"
    assert set(manifest["provenance"]["demo_seeds"]) == {*OLD, "reacher-v5"}
    grown_embedding = model.task_embedding.weight[2]
    source_model, _ = load_checkpoint(source)
    assert not torch.equal(grown_embedding, source_model.task_embedding.weight[0])  # it trained from that start


def test_frozen_strategy_leaves_old_outputs_bit_identical(source, stores, tmp_path):
    report = add_task(_opts(source, stores, tmp_path, strategy="frozen"), log=lambda _: None)
    before, _ = load_checkpoint(source)
    after, _ = load_checkpoint(report["checkpoint"])
    for task in OLD:
        assert torch.equal(_outputs(before, task, 4), _outputs(after, task, 4)), task
    assert not torch.equal(after.task_embedding.weight[2], before.task_embedding.weight[0])  # the new row trained


def test_finetune_changes_old_outputs(source, stores, tmp_path):
    report = add_task(_opts(source, stores, tmp_path, strategy="finetune"), log=lambda _: None)
    before, _ = load_checkpoint(source)
    after, _ = load_checkpoint(report["checkpoint"])
    assert not torch.equal(_outputs(before, OLD[0], 4), _outputs(after, OLD[0], 4))


@pytest.mark.parametrize("source_kind", ["stores", "buffer"])
def test_rehearsal_batches_hold_the_requested_ratio(source, stores, tmp_path, source_kind):
    p = plan(replace(_opts(source, stores, tmp_path), rehearsal_ratio=0.3, rehearsal_source=source_kind))
    assert p.old_source == source_kind
    from mt_policy.policy_edit import extend_policy

    stats = p.new_demos.stats
    model = extend_policy(p.model, p.entry, (stats["obs/proprio"].mean, stats["obs/proprio"].std),
                          (stats["action"].mean, stats["action"].std))
    batches = RehearsalBatches(model, p, 0.3)
    rng = np.random.default_rng(0)
    old_rows = []
    for _ in range(50):
        batch = batches.sample(rng, 40)
        sizes = {t: s.stop - s.start for t, s in batch.slices.items()}
        assert sizes["drawer-open-v3"] == 28 and sum(sizes.values()) == 40
        old_rows.append([sizes.get(t, 0) for t in OLD])
    assert np.array(old_rows).sum(axis=1).tolist() == [12] * 50
    assert abs(np.array(old_rows).mean(axis=0) - 6).max() < 1.0  # spread evenly over the old tasks


def test_add_task_without_the_original_stores_uses_the_rehearsal_buffer(source, stores, tmp_path):
    moved = tmp_path / "moved"
    manifest = json.loads((source / "policy.json").read_text())
    recorded = {Path(p) for p in manifest["provenance"]["stores"].values()}
    for path in recorded:
        shutil.move(path, moved / path.name)
    try:
        report = add_task(_opts(source, stores, tmp_path), log=lambda _: None)
    finally:
        for path in recorded:
            shutil.move(moved / path.name, path)
    assert report["rehearsal_source"] == "buffer"
    buffer = load_extra(report["checkpoint"], "rehearsal")  # and the new checkpoint's buffer grew by the new task
    assert {k.split("::")[0] for k in buffer} == {*OLD, "drawer-open-v3"}


def test_forgetting_report_with_evaluation(source, stores, tmp_path):
    report = add_task(replace(_opts(source, stores, tmp_path), eval_episodes=1, n_action_steps=4), log=lambda _: None)
    saved = json.loads((Path(report["checkpoint"]) / "forgetting.json").read_text())
    assert saved == report
    assert set(report["old_tasks"]) == set(OLD)
    for row in report["old_tasks"].values():
        assert row["drop"] == pytest.approx(row["before"] - row["after"])
    assert report["backward_transfer"] == pytest.approx(-report["mean_drop"])
    assert 0.0 <= report["new_task_success"] <= 1.0
    assert report["wall_seconds"]["original_training"] > 0 and report["wall_seconds"]["ratio_to_original"] > 0
    assert "| old task | before | after | drop |" in (Path(report["checkpoint"]) / "forgetting.md").read_text()


def test_trim_keeps_exactly_the_listed_tasks_outputs(source, stores, tmp_path, capsys):
    grown = add_task(_opts(source, stores, tmp_path), log=lambda _: None)["checkpoint"]
    assert main(["trim", "--checkpoint", grown, "--tasks", "drawer-open-v3,window-close-v3",
                 "--out", str(tmp_path / "trimmed")]) == 0
    full, _ = load_checkpoint(grown)
    small, manifest = load_checkpoint(tmp_path / "trimmed")
    assert [t.name for t in small.tasks] == ["drawer-open-v3", "window-close-v3"]
    for task in ("drawer-open-v3", "window-close-v3"):
        assert torch.equal(_outputs(full, task, 4), _outputs(small, task, 4)), task
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters())
    assert set(manifest["provenance"]["demo_seeds"]) == {"drawer-open-v3", "window-close-v3"}
    with pytest.raises(Exception, match="unknown task 'push-v3'"):
        trim_policy(full, ["push-v3"])


def _fake_store(path: Path, name: str, action_size: int, cameras=(), episodes: int = 1,
                proprio_source: str = "agent_pos") -> Path:
    from mt_policy.schema import ActionSchema, CameraSpec, ObservationSchema, TaskSchema

    spec = get_task(name)
    schema = TaskSchema(ObservationSchema(tuple(CameraSpec(c, 32, 32) for c in cameras), 4, proprio_source),
                        ActionSchema(action_size, (-1.0,) * action_size, (1.0,) * action_size), 80.0, 500)
    store = DemoStore.create(path, schema, spec.info())
    rng = np.random.default_rng(0)
    for seed in range(episodes):
        store.append_episode(make_episode(schema, 10, rng), seed=seed, success=True, expert="fake")
    store.close()
    return path


@pytest.mark.parametrize(("case", "message"), [
    ("present", "task 'drawer-close-v3' is already in"),
    ("action_size", "actions are 3-D, but task drawer-open-v3 declares 4-D actions"),
    ("proprio", "records proprio as full_state, the policy reads agent_pos"),
    ("empty", "the store is empty; collect demos first"),
    ("ratio_high", "--rehearsal-ratio 1.0 is outside \\[0, 1\\)"),
    ("ratio_negative", "--rehearsal-ratio -0.1 is outside \\[0, 1\\)"),
    ("wrong_store", "holds demos of 'reacher-v5', not 'drawer-open-v3'"),
])
def test_bad_inputs_are_refused_before_training(source, stores, tmp_path, case, message):
    opts = _opts(source, stores, tmp_path)
    if case == "present":
        opts = replace(opts, task="drawer-close-v3", demos=stores["drawer-close-v3"])
    elif case == "action_size":
        opts = replace(opts, demos=_fake_store(tmp_path / "bad.zarr", "drawer-open-v3", 3))
    elif case == "proprio":
        opts = replace(opts, demos=_fake_store(tmp_path / "p.zarr", "drawer-open-v3", 4, proprio_source="full_state"))
    elif case == "empty":
        opts = replace(opts, demos=_fake_store(tmp_path / "empty.zarr", "drawer-open-v3", 4, episodes=0))
    elif case == "ratio_high":
        opts = replace(opts, rehearsal_ratio=1.0)
    elif case == "ratio_negative":
        opts = replace(opts, rehearsal_ratio=-0.1)
    elif case == "wrong_store":
        opts = replace(opts, demos=stores["reacher-v5"])
    with pytest.raises(AddTaskError, match=message):
        add_task(opts, log=lambda _: None)
    assert not (tmp_path / "grown").exists() and not (tmp_path / "grown.partial").exists()


def test_a_store_with_more_cameras_than_the_policy_is_read_through_the_policys_cameras(source, stores, tmp_path):
    extra = _fake_store(tmp_path / "cam.zarr", "drawer-open-v3", 4, cameras=("corner2",), episodes=2)
    planned = plan(replace(_opts(source, stores, tmp_path), demos=extra))
    assert planned.entry.schema.observation.camera_names == ()  # the state-only policy sees no camera
    assert set(planned.new_demos.arrays) == {"obs/proprio", "action"}  # and the camera's frames are never read


def test_interrupted_add_task_leaves_the_source_untouched_and_resumes(source, stores, tmp_path):
    before = _digest(source)
    out = tmp_path / "grown"
    args = [sys.executable, "-m", "mt_policy.cli", "add-task", "--checkpoint", str(source), "--task", "drawer-open-v3",
            "--demos", str(stores["drawer-open-v3"]), "--out", str(out), "--init-from", "drawer-close-v3",
            "--steps", "1200", "--batch-size", "16", "--eval-episodes", "0", "--no-progress"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=os.environ | {"OMP_NUM_THREADS": "1"}, preexec_fn=sigint_as_at_a_terminal)
    deadline = time.monotonic() + 120
    while not (out.with_name("grown.partial") / "add_task_state.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 130, output
    assert "is untouched; run the same command again to resume" in output
    assert _digest(source) == before and not out.exists()
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming at step" in resumed.stdout
    assert _digest(source) == before and (out / "forgetting.json").is_file()
    assert not out.with_name("grown.partial").exists()


def test_the_new_row_starts_from_the_most_similar_task_by_description(source, stores, tmp_path):
    report = add_task(replace(_opts(source, stores, tmp_path), init_from=None), log=lambda _: None)
    init = report["init_from"]
    assert init["task"] == "drawer-close-v3" and init["by"].startswith("description similarity")
    assert 0.8 < init["similarity"] <= 1.0  # "open the drawer" vs "push the drawer closed", not the window
    _, manifest = load_checkpoint(report["checkpoint"])
    assert manifest["provenance"]["add_task"]["init_from"] == init


def test_a_source_trained_on_clipped_actions_gets_a_new_task_and_rehearsal_on_clipped_actions(source, stores, tmp_path,
                                                                                              tmp_path_factory):
    clipped_source = _train_source(tmp_path_factory, stores, "data.clip_actions=true")

    def actions(p):
        return {"drawer-open-v3": p.new_demos.arrays["action"]} | {t: d.arrays["action"] for t, d in p.old_stores.items()}

    raw, clipped = plan(_opts(source, stores, tmp_path)), plan(_opts(clipped_source, stores, tmp_path))
    assert raw.old_source == clipped.old_source == "stores"
    # Meta-World's experts ask for more than the [-1, 1] the env executes: the plain source's run keeps that.
    assert max(np.abs(a).max() for a in actions(raw).values()) > 1.0
    for task, a in actions(clipped).items():
        assert np.abs(a).max() <= 1.0, task
        np.testing.assert_array_equal(a, np.clip(actions(raw)[task], -1.0, 1.0))
    assert np.allclose(clipped.new_demos.stats["action"].mean, actions(clipped)["drawer-open-v3"].mean(axis=0), atol=1e-5)

    grown, _ = load_checkpoint(add_task(_opts(clipped_source, stores, tmp_path))["checkpoint"])
    new_index = grown.task_index["drawer-open-v3"]
    assert np.allclose(getattr(grown, f"action_mean_{new_index}").numpy(), clipped.new_demos.stats["action"].mean)
