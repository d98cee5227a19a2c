"""The multitask policy and its trainer on tiny synthetic stores: heads, FiLM switch, balancers,
task-balanced sampling, checkpoints (round trip and golden outputs), resume, Hydra precedence."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_episode
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from toy_training import CONF, TINY_MODEL, entry, run_config, tiny_overrides, write_toy_stores

from mt_policy.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mt_policy.demo_store import DemoStore
from mt_policy.errors import SchemaError, UnknownNameError
from mt_policy.model import ModelConfig, MultiTaskPolicy, random_shift
from mt_policy.runner import ChunkRunner, torch_predictor
from mt_policy.schema import ActionSchema, CameraSpec, ObservationSchema, TaskInfo, TaskSchema
from training.balancers import BackwardContext, make_balancer
from training.config import register_configs, resolve_tasks
from training.data import task_probabilities
from training.trainer import Trainer

GOLDEN = Path(__file__).resolve().parent / "golden"


def tiny_obs(batch: int, proprio: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"obs/cam": torch.randint(0, 256, (batch, 8, 8, 3), dtype=torch.uint8, generator=g),
            "obs/proprio": torch.randn(batch, proprio, generator=g)}


# ---------------------------------------------------------------------------------------------- model
def test_heads_have_their_own_action_sizes_in_one_model():
    model = MultiTaskPolicy(ModelConfig(**TINY_MODEL), [entry("four", 4), entry("two", 2, proprio=5)]).eval()
    assert model(tiny_obs(3), "four").shape == (3, 4, 4)
    assert model(tiny_obs(2, proprio=5), "two").shape == (2, 4, 2)
    assert model.observation.proprio_size == 5  # padded to the widest task


def test_random_shift_is_a_replicate_padded_crop_of_each_uint8_frame():
    images = torch.randint(0, 256, (16, 10, 12, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pad = 3
    torch.manual_seed(1)
    shifted = random_shift(images, pad)
    assert shifted.dtype == torch.uint8 and shifted.shape == images.shape
    # Written the obvious way: pad every frame by repeating its border, then try every crop offset.
    padded = torch.nn.functional.pad(images.permute(0, 3, 1, 2).float(), (pad,) * 4, mode="replicate")
    offsets = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if torch.equal(padded[i, :, dy:dy + 10, dx:dx + 12], shifted[i].permute(2, 0, 1).float())]
        assert matches, f"frame {i} is not a crop of its padded frame"
        offsets.add(matches[0])
    assert len(offsets) > 4  # the offsets vary between frames


def test_proprio_dropout_hides_some_samples_proprio_in_training_and_none_in_eval():
    torch.manual_seed(0)
    # No random shift, so training and eval features differ only by the dropout
    model = MultiTaskPolicy(ModelConfig(**TINY_MODEL | {"proprio_dropout": 0.5, "random_shift": 0}),
                            [entry("four", 4)]).eval()
    obs, ids = tiny_obs(64), torch.zeros(64, dtype=torch.long)
    at_mean = dict(obs, **{"obs/proprio": model.proprio_mean[ids]})  # what a dropped sample looks like
    with torch.no_grad():
        reference, blind = model.features(obs, ids), model.features(at_mean, ids)
        assert torch.equal(model.features(obs, ids), reference)  # eval never drops
        trained = model.train().features(obs, ids)
    differs = ~torch.isclose(reference, blind, atol=1e-6).all(dim=1)
    assert bool(differs.all())  # every sample's features depend on its proprio
    dropped = torch.isclose(trained, blind, atol=1e-6).all(dim=1)
    kept = torch.isclose(trained, reference, atol=1e-6).all(dim=1)
    assert bool((dropped ^ kept).all())  # each sample is either whole or blind to its proprio
    assert 16 < int(dropped.sum()) < 48  # about half of them blind
    with pytest.raises(ValueError, match="proprio_dropout"):
        ModelConfig(**TINY_MODEL | {"proprio_dropout": 1.0})


def test_unknown_task_names_and_indices_list_the_known_tasks():
    model = MultiTaskPolicy(ModelConfig(**TINY_MODEL), [entry("four", 4), entry("two", 2)])
    with pytest.raises(UnknownNameError, match="known tasks: four, two"):
        model(tiny_obs(1), "three")
    with pytest.raises(UnknownNameError, match=r"task index '5'.*0 \(four\), 1 \(two\)"):
        model.task_ids(torch.tensor([0, 5]), 2)


def test_task_embedding_scale_zero_disables_conditioning_and_one_enables_it():
    torch.manual_seed(0)
    for scale, should_differ in ((0.0, False), (1.0, True)):
        model = MultiTaskPolicy(ModelConfig(**TINY_MODEL | {"task_embedding_scale": scale}),
                                [entry("a", 4), entry("b", 4)]).eval()
        torch.nn.init.normal_(model.film.weight)  # as after training
        obs = tiny_obs(2)
        f_a = model.features(obs, torch.tensor([0, 0]))
        f_b = model.features(obs, torch.tensor([1, 1]))
        assert (not torch.allclose(f_a, f_b)) == should_differ, f"scale {scale}"


# ---------------------------------------------------------------------------------------------- balancers
@pytest.mark.parametrize("name", ["equal", "samples", "inverse_loss", "uncertainty"])
def test_balancers_weigh_present_tasks_and_survive_absent_ones(name):
    tasks = ["a", "b", "c"]
    balancer = make_balancer(name, tasks, {"a": 10, "b": 30, "c": 20})
    params = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    for _ in range(3):
        losses = {"a": (params**2).sum() * 0.1, "b": (params**2).sum() * 2.0}  # "c" absent from the batch
        weights = balancer.backward(losses, BackwardContext([params]))
        assert set(weights) == {"a", "b"}
        assert all(np.isfinite(w) and w > 0 for w in weights.values())
        assert torch.isfinite(params.grad).all()
        params.grad = None
    if name == "equal":
        assert weights == {"a": 1.0, "b": 1.0}
    elif name == "samples":
        assert weights["b"] == pytest.approx(3 * weights["a"]) and sum(weights.values()) == pytest.approx(2.0)
    elif name == "inverse_loss":
        assert weights["a"] > weights["b"] and sum(weights.values()) == pytest.approx(2.0)
        assert weights["a"] / weights["b"] == pytest.approx(20.0, rel=1e-4)  # inverse of the loss ratio
    else:
        assert balancer.log_variance.grad is not None and balancer.log_variance.grad[2] == 0
    assert balancer.backward({}, BackwardContext([params])) == {}


# ---------------------------------------------------------------------------------------------- sampling
def test_task_probabilities_for_each_mode():
    counts, weights = [10, 40], [1.0, 1.0]
    assert task_probabilities("uniform", counts, weights).tolist() == [0.5, 0.5]
    assert task_probabilities("proportional", counts, weights).tolist() == pytest.approx([0.2, 0.8])
    assert task_probabilities("temperature", counts, weights, temperature=2.0).tolist() == pytest.approx([1 / 3, 2 / 3])
    assert task_probabilities("uniform", counts, [3.0, 1.0]).tolist() == pytest.approx([0.75, 0.25])
    assert task_probabilities("frames", counts, weights, frame_counts=[300, 100]).tolist() == pytest.approx([0.75, 0.25])
    assert task_probabilities("frames", counts, [1.0, 3.0], frame_counts=[300, 100]).tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="'frames' needs one frame count per task"):
        task_probabilities("frames", counts, weights)


def test_sampling_counts_the_episodes_and_frames_training_draws_from(stores):
    """`frames` shares slots as a loader shuffling every training frame would; `max_episodes` and the validation
    hold-out shrink what a task counts for, in either mode."""
    trainer = Trainer(run_config(stores, **{"data.sampling": "frames"}), stores.parent / "run_frames")
    frames = {t: trainer.demos[t].n_frames for t in ("four", "two")}
    assert trainer.probabilities.tolist() == pytest.approx([frames["four"] / sum(frames.values()),
                                                            frames["two"] / sum(frames.values())])
    capped = Trainer(run_config(stores, **{"data.sampling": "proportional", "data.max_episodes": 3}),
                     stores.parent / "run_capped")
    assert capped.batcher.training_sizes()["four"][0] == 3
    assert capped.probabilities.tolist() == pytest.approx([0.5, 0.5])  # 3 and 3 used, not 6 and 3 stored
    held_out = Trainer(run_config(stores, **{"data.sampling": "frames", "data.val_fraction": 0.5}),
                       stores.parent / "run_val")
    sizes = held_out.batcher.training_sizes()
    assert sizes["four"][0] == 3 and sizes["four"][1] < frames["four"]
    assert held_out.probabilities[0] == pytest.approx(sizes["four"][1] / (sizes["four"][1] + sizes["two"][1]))


def test_batches_follow_the_sampling_ratios(stores):
    trainer = Trainer(run_config(stores, **{"data.sampling": "proportional"}), stores.parent / "run")
    assert trainer.probabilities.tolist() == pytest.approx([6 / 9, 3 / 9])
    counts = {"four": 0, "two": 0}
    for _ in range(200):
        batch = trainer.batcher.sample(trainer.rng, 16)
        for task, rows in batch.slices.items():
            counts[task] += rows.stop - rows.start
            assert batch.actions[task].shape[-1] == {"four": 4, "two": 2}[task]
        assert batch.obs["obs/proprio"].shape[1] == 5
    assert counts["four"] / sum(counts.values()) == pytest.approx(2 / 3, abs=0.02)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    model = MultiTaskPolicy(ModelConfig(**TINY_MODEL), [entry("four", 4), entry("two", 2, proprio=5)]).eval()
    with torch.no_grad():
        model.proprio_mean.normal_()
        model.action_std_1.fill_(3.0)
    path = save_checkpoint(model, tmp_path / "ckpt", {"note": "test"})
    loaded, manifest = load_checkpoint(path)
    assert not list(path.glob("*.pkl")) and (path / "model.safetensors").is_file()
    assert [t["name"] for t in manifest["tasks"]] == ["four", "two"] and manifest["provenance"]["note"] == "test"
    obs = tiny_obs(2, proprio=5)
    torch.testing.assert_close(loaded(obs, "two"), model(obs, "two"), rtol=0, atol=0)


def test_loading_a_newer_checkpoint_format_fails_clearly(tmp_path):
    model = MultiTaskPolicy(ModelConfig(**TINY_MODEL), [entry("four", 4)])
    path = save_checkpoint(model, tmp_path / "ckpt")
    manifest = json.loads((path / "policy.json").read_text())
    manifest["format_version"] = 99
    (path / "policy.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format_version 99 is newer"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_golden_checkpoint_outputs_are_unchanged():
    """A committed tiny checkpoint and its outputs guard numerics and the format across refactors."""
    model, _ = load_checkpoint(GOLDEN / "tiny_policy")
    expected = np.load(GOLDEN / "tiny_policy_outputs.npz")
    obs = {"obs/cam": torch.from_numpy(expected["cam"]), "obs/proprio": torch.from_numpy(expected["proprio"])}
    for task in ("four", "two"):
        out = model({"obs/cam": obs["obs/cam"], "obs/proprio": obs["obs/proprio"]}, task).detach().numpy()
        np.testing.assert_allclose(out, expected[task], rtol=1e-5, atol=1e-6, err_msg=task)


def test_chunk_runner_receding_horizon_and_temporal_ensemble():
    calls = []

    def predict(obs):
        calls.append(obs["t"])
        return np.arange(4, dtype=np.float32)[:, None] + 10 * obs["t"]  # chunk (4, 1)

    runner = ChunkRunner(predict, chunk=4, n_action_steps=2)
    actions = [float(runner.act({"t": t})[0]) for t in range(4)]
    assert actions == [0.0, 1.0, 20.0, 21.0] and calls == [0, 2]
    ensemble = ChunkRunner(predict, chunk=4, temporal_ensemble=0.0)  # plain average of overlapping chunks
    assert [float(ensemble.act({"t": t})[0]) for t in range(2)] == [0.0, pytest.approx((1 + 10) / 2)]


def test_torch_predictor_uses_the_model_for_one_task():
    model = MultiTaskPolicy(ModelConfig(**TINY_MODEL), [entry("four", 4)]).eval()
    obs = {k: v[0].numpy() for k, v in tiny_obs(1).items()}
    chunk = torch_predictor(model, "four")(obs)
    assert chunk.shape == (4, 4) and np.isfinite(chunk).all()
    with pytest.raises(UnknownNameError):
        torch_predictor(model, "five")


# ---------------------------------------------------------------------------------------------- trainer
def _losses(log: Path) -> dict[int, float]:
    with log.open() as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_resume_continues_the_same_loss_curve(stores, tmp_path):
    straight = Trainer(run_config(stores), tmp_path / "straight")
    straight.fit()
    first = Trainer(run_config(stores, **{"train.steps": 3}), tmp_path / "resumed")
    first.fit()
    resumed = Trainer(run_config(stores), tmp_path / "resumed")
    resumed.fit(tmp_path / "resumed" / "checkpoints" / "last")
    a, b = _losses(tmp_path / "straight" / "train_log.csv"), _losses(tmp_path / "resumed" / "train_log.csv")
    assert sorted(b) == list(range(1, 7))
    assert [a[s] for s in range(1, 7)] == pytest.approx([b[s] for s in range(1, 7)], rel=1e-6, abs=1e-7)
    model, manifest = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last")
    assert manifest["provenance"]["step"] == 6 and set(manifest["provenance"]["demo_seeds"]) == {"four", "two"}


def test_training_reduces_the_loss_on_every_task(stores, tmp_path):
    cfg = run_config(stores, **{"train.steps": 120, "train.batch_size": 32, "train.log_every": 10,
                                "train.checkpoint_every": 1000, "optim.lr": 3e-3})
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit()
    with (tmp_path / "run" / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    for task in ("four", "two"):
        series = [float(r[f"loss/{task}"]) for r in rows if r[f"loss/{task}"]]
        assert series[-1] < 0.8 * series[0], task
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_clip_actions_trains_on_the_actions_the_robot_executes(tmp_path):
    root = write_toy_stores(tmp_path / "data", action_gain=3.0)  # experts asking up to 3x the bounds
    recorded = DemoStore.open(root / "four.zarr").load().arrays["action"]
    executed = np.clip(recorded, -1.0, 1.0)
    assert np.abs(recorded).max() > 2.0 and (recorded != executed).mean() > 0.2

    plain = Trainer(run_config(root), tmp_path / "plain")
    clipped = Trainer(run_config(root, **{"data.clip_actions": True}), tmp_path / "clipped")
    assert np.array_equal(plain.demos["four"].arrays["action"], recorded)
    assert np.array_equal(clipped.demos["four"].arrays["action"], executed)
    four = clipped.model.task_index["four"]
    # Normalisation follows the targets: the clipped actions' statistics, not the store's.
    np.testing.assert_allclose(getattr(clipped.model, f"action_mean_{four}").numpy(), executed.mean(0), atol=1e-5)
    np.testing.assert_allclose(getattr(clipped.model, f"action_std_{four}").numpy(), executed.std(0), atol=1e-5)
    np.testing.assert_allclose(getattr(plain.model, f"action_std_{four}").numpy(), recorded.std(0), atol=1e-5)
    targets = clipped.batcher.sample(np.random.default_rng(0), 64).actions["four"]
    assert targets.abs().max() <= 1.0 and plain.batcher.sample(np.random.default_rng(0), 64).actions["four"].abs().max() > 1.0
    assert np.array_equal(DemoStore.open(root / "four.zarr").load().arrays["action"], recorded)  # the store is untouched


def test_hydra_override_precedence_global_beats_per_task(stores):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        per_task = compose("train", overrides=["data=mt3_explicit"])
        global_wins = compose("train", overrides=["data=mt3_explicit", "data.weight=1.5"])
        cli_task = compose("train", overrides=["data=mt3_explicit", "data.tasks.reach-v3.weight=4"])
        with pytest.raises(Exception, match="wieght"):
            compose("train", overrides=["data.wieght=2"])  # misspelt keys fail loudly
    weights = {t.name: t.weight for t in resolve_tasks(per_task.data, [])}
    assert weights == {"reach-v3": 2.0, "button-press-topdown-v3": 1.0, "drawer-close-v3": 1.0}
    assert {t.weight for t in resolve_tasks(global_wins.data, [])} == {1.5}
    assert resolve_tasks(cli_task.data, [])[0].weight == 4.0
    stores_ = {t.name: t.store for t in resolve_tasks(per_task.data, [])}
    assert stores_["reach-v3"] == "data/mt3/reach-v3.zarr" and stores_["drawer-close-v3"] == "data/mt3/drawer-close-v3.zarr"


def _cli_train(args: list[str], cwd: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "mt_policy.cli", "train", *args], capture_output=True, text=True,
                         timeout=300, cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]


def test_cli_multirun_sweep_writes_one_run_per_value(stores, tmp_path):
    sweep = tmp_path / "sweep"
    _cli_train(["-m", *tiny_overrides(stores), "train.steps=2", "model.task_embedding_scale=0,1",
                f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    for job, scale in (("0", 0.0), ("1", 1.0)):
        run = sweep / job
        assert (run / "checkpoints" / "last" / "model.safetensors").is_file()
        assert (run / ".hydra" / "config.yaml").is_file()
        resolved = OmegaConf.load(run / "resolved_config.yaml")
        assert resolved.model.task_embedding_scale == scale and resolved.data.root == str(stores)


def test_cli_resume_reuses_the_run_overrides_and_extends_it(stores, tmp_path):
    run = tmp_path / "run"
    _cli_train([*tiny_overrides(stores), "train.steps=3", f"hydra.run.dir={run}"], cwd=tmp_path)
    _cli_train(["--resume", str(run), "train.steps=5"], cwd=tmp_path)
    assert sorted(_losses(run / "train_log.csv")) == [1, 2, 3, 4, 5]
    _, manifest = load_checkpoint(run / "checkpoints" / "last")
    assert manifest["provenance"]["step"] == 5


def test_batches_missing_a_task_train_without_nan(stores, tmp_path):
    for balancer in ("equal", "samples", "inverse_loss", "uncertainty"):
        trainer = Trainer(run_config(stores, **{"train.batch_size": 1, "train.balancer": balancer}), tmp_path / balancer)
        for _ in range(6):  # one sample per batch: every step leaves a task out
            row = trainer.train_step()
            assert len([k for k in row if k.startswith("loss/")]) == 1
            assert np.isfinite(row["loss"]) and np.isfinite(row["grad_norm"])
        assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_held_out_episodes_give_a_validation_loss_without_changing_training(stores, tmp_path):
    plain = Trainer(run_config(stores), tmp_path / "plain")
    plain.fit()
    held = Trainer(run_config(stores, **{"data.val_fraction": 0.34}), tmp_path / "held")
    held.fit()
    with (tmp_path / "held" / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(np.isfinite(float(r["val_loss"])) for r in rows)
    assert all(r["val_loss/four"] and r["val_loss/two"] for r in rows)
    with (tmp_path / "plain" / "train_log.csv").open() as f:
        assert all(r["val_loss"] == "" for r in csv.DictReader(f))
    # Held-out episodes never anchor a training window.
    for task, sampler in held.batcher.samplers.items():
        val_frames = set(held.batcher.val_samplers[task]._anchor.tolist())
        assert val_frames and not val_frames & set(sampler._anchor.tolist())


# ---------------------------------------------------------------------------------------------- camera subset
def test_a_run_can_train_on_a_subset_of_the_recorded_cameras(tmp_path):
    two_cams = TaskSchema(ObservationSchema((CameraSpec("cam", 8, 8), CameraSpec("wrist", 12, 12)), 3),
                          ActionSchema(4, (-1.0,) * 4, (1.0,) * 4), 10.0, 20)
    root, rng = tmp_path / "data", np.random.default_rng(0)
    for name in ("four", "two"):
        store = DemoStore.create(root / f"{name}.zarr", two_cams, TaskInfo(name, f"do {name}", "toy/Env-v0"))
        for i in range(3):
            store.append_episode(make_episode(two_cams, 6, rng), seed=i, success=True, expert="toy")
        store.close()

    loaded = DemoStore.open(root / "four.zarr").load(cameras=["wrist"])
    assert loaded.schema.observation.camera_names == ("wrist",)
    assert set(loaded.arrays) == {"obs/wrist", "obs/proprio", "action"}  # the other camera is never read
    assert set(loaded.stats) == set(loaded.arrays)

    trainer = Trainer(run_config(root, **{"data.cameras": "[wrist]"}), tmp_path / "run")
    assert trainer.model.observation.camera_names == ("wrist",)
    model, _ = load_checkpoint(trainer.fit())
    assert model.observation.camera_names == ("wrist",)
    assert [c.shape for c in model.observation.cameras] == [(12, 12, 3)]

    with pytest.raises(SchemaError, match=r"four\.zarr: camera\(s\) \['top'\] not recorded; it has \['cam', 'wrist'\]"):
        Trainer(run_config(root, **{"data.cameras": "[top]"}), tmp_path / "bad")


def _reach_store(root: Path, env_version: str) -> Path:
    """A reach-v3 store of random frames in the task's real schema, said to be recorded with `env_version`."""
    from sim.tasks import ObservationConfig, get_task

    spec = get_task("reach-v3")
    task_schema = spec.schema(ObservationConfig(image_size=(8, 8)))
    info = TaskInfo(spec.name, spec.description, spec.env_id, env_version, spec.difficulty)
    store, rng = DemoStore.create(root / "reach-v3.zarr", task_schema, info), np.random.default_rng(0)
    for i in range(3):
        store.append_episode(make_episode(task_schema, 6, rng), seed=i, success=True, expert="toy")
    store.close()
    return root


@pytest.mark.parametrize("older", [False, True])
def test_training_warns_about_a_store_recorded_under_another_simulator_version(tmp_path, older):
    from sim.tasks import get_task

    now = get_task("reach-v3").env_version
    recorded = "metaworld 3.1.1, mujoco 3.3.0" if older else now  # before the reset frame showed the goal
    root = _reach_store(tmp_path / "data", recorded)
    overrides = [o for o in tiny_overrides(root) if not o.startswith("+data.tasks")]
    run = subprocess.run([sys.executable, "-m", "mt_policy.cli", "train", *overrides, "+data.tasks={reach-v3:{}}",
                          "train.steps=2", f"hydra.run.dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    warned = f"reach-v3.zarr: recorded with '{recorded}', but reach-v3 now simulates '{now}'" in run.stderr
    assert warned == older, run.stderr[-3000:]
