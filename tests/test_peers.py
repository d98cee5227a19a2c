"""LeRobot peers (bench/peers.py): LeRobot's training windows from our stores, training and saving through
LeRobot's API, and the evaluator's "lerobot" policy kind (load, predict, reset at every episode start)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import load_bench, make_episode

import sim.evaluate as evaluate_mod
from mt_policy.cli import main
from mt_policy.demo_store import DemoStore
from mt_policy.lerobot_io import KeyMap
from mt_policy.schema import CameraSpec
from mt_policy.seeds import EVAL_SEEDS
from sim.evaluate import EpisodeJob, PolicySource, _policy_info, _predictor, _worker_episode
from sim.lerobot_peer import LeRobotPeer
from sim.tasks import ObservationConfig, get_task

pytest.importorskip("lerobot")

TASK = "reach-v3"
SMALL = ObservationConfig(cameras=("corner2",), image_size=(32, 32))
EPISODES = ((3, 12), (5, 9))  # (seed, length): frames 0..11 and 12..20
TINY = {  # LeRobot's architectures, shrunk so a training step takes milliseconds
    "act": {"chunk_size": 4, "n_action_steps": 2, "dim_model": 32, "n_heads": 2, "dim_feedforward": 64,
            "n_encoder_layers": 1, "n_vae_encoder_layers": 1, "latent_dim": 4},
    "diffusion": {"horizon": 8, "n_action_steps": 4, "down_dims": (16, 32), "diffusion_step_embed_dim": 16,
                  "n_groups": 4, "spatial_softmax_num_keypoints": 8, "num_inference_steps": 2},
}

OUR_ROW = {"model": "ours", "ours_set": [], "pooled_ci95": (0.4, 0.6), "mean_success": 0.5, "parameters": 1,
           "train_samples": 640, "train_samples_per_s": 1.0, "n_action_steps": 4, "temporal_ensemble": None,
           "latency_ms": {}, "tasks": {}, "batch_size": 64}  # a result row of ours, for the report's table


def _queue(peer: LeRobotPeer):
    policy = peer.policy
    return policy._action_queue if peer.manifest["policy_type"] == "act" else policy._queues["action"]


@pytest.fixture(scope="module")
def peers():
    return load_bench("peers")


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    task = get_task(TASK)
    schema = task.schema(SMALL)
    store = DemoStore.create(tmp_path_factory.mktemp("demos") / f"{TASK}.zarr", schema, task.info())
    rng = np.random.default_rng(0)
    for seed, length in EPISODES:
        store.append_episode(make_episode(schema, length, rng), seed=seed, success=True, expert="fake")
    store.close()
    return {TASK: DemoStore.open(store.path).load(cameras=["corner2"])}


@pytest.fixture
def fresh_worker_caches(monkeypatch):
    monkeypatch.setattr(evaluate_mod, "_POLICIES", {})
    monkeypatch.setattr(evaluate_mod, "_ENVS", {})


def test_windows_follow_lerobot_delta_indices_and_stay_inside_episodes(peers, demos):
    loaded = demos[TASK]
    windows = peers.PeerWindows(demos, KeyMap.for_schema(loaded.schema).to_lerobot())
    assert windows.anchors(drop_last=3).tolist() == [*range(0, 9), *range(12, 18)]
    # Diffusion's windows (To=2, horizon 8): observations t-1, t and actions t-1 .. t+6.
    batch = windows.batch(np.array([12, 20]), [-1, 0], list(range(-1, 7)))
    proprio, action = loaded.arrays["obs/proprio"], loaded.arrays["action"]
    np.testing.assert_array_equal(batch["observation.state"][0].numpy(), proprio[[12, 12]])  # t-1 clamped to the start
    np.testing.assert_array_equal(batch["action"][0].numpy(), action[[12, *range(12, 19)]])
    assert batch["action_is_pad"].tolist() == [[True] + [False] * 7, [False, False] + [True] * 6]
    np.testing.assert_array_equal(batch["action"][1, 2:].numpy(), action[[20] * 6])  # past the end: last frame
    image = batch["observation.images.corner2"]
    assert image.shape == (2, 2, 3, 32, 32) and image.dtype.is_floating_point
    np.testing.assert_allclose(image[1, 0].numpy(), loaded.arrays["obs/corner2"][19].transpose(2, 0, 1) / 255, rtol=1e-6)
    # ACT's windows: one observation without a time axis.
    assert windows.batch(np.array([0, 5]), None, [0, 1, 2, 3])["observation.state"].shape == (2, 4)


@pytest.mark.parametrize("peer", ["act", "diffusion"])
def test_a_trained_peer_is_saved_with_its_normalisation_and_the_evaluator_loads_and_resets_it(
        peers, demos, peer, tmp_path, fresh_worker_caches):
    manifest = peers.train_peer(peer, demos, tmp_path / "policy", samples=8, batch_size=4, overrides=TINY[peer],
                                threads=1, log=lambda _: None)
    assert (manifest["provenance"]["samples"], manifest["provenance"]["steps"]) == (8, 2)
    source = PolicySource(str(tmp_path / "policy"), "lerobot")
    info = _policy_info(source)
    assert [t.name for t in info.tasks] == [TASK] and info.action_chunk == 1
    assert info.provenance["demo_seeds"] == {TASK: [3, 5]}  # so the eval/demo seed check runs for peers too

    predict, chunk, reset = _predictor(source, TASK)
    loaded = evaluate_mod._POLICIES[source]
    assert loaded.policy.config.pretrained_backbone_weights is None
    normalizer = next(s for s in loaded.preprocessor.steps if type(s).__name__ == "NormalizerProcessorStep")
    np.testing.assert_allclose(normalizer.stats["observation.state"]["mean"], demos[TASK].stats["obs/proprio"].mean,
                               rtol=1e-5)
    action = predict(peers.example_observation(info.observation))
    assert chunk == 1 and action.shape == (1, 4) and np.isfinite(action).all()
    assert len(_queue(loaded)) == TINY[peer]["n_action_steps"] - 1  # LeRobot queued the rest of its chunk
    reset()
    assert len(_queue(loaded)) == 0


def test_a_peer_trained_on_from_fewer_samples_equals_one_trained_from_scratch(peers, demos, tmp_path):
    import torch
    from safetensors.torch import load_file

    kw = {"batch_size": 4, "overrides": TINY["act"], "threads": 1, "log": lambda _: None}
    peers.train_peer("act", demos, tmp_path / "whole", samples=16, **kw)
    peers.train_peer("act", demos, tmp_path / "half", samples=8, **kw)
    assert peers.extendable("act", tmp_path / "half", demos, 16, 4, 0, TINY["act"])["provenance"]["samples"] == 8
    manifest = peers.train_peer("act", demos, tmp_path / "extended", samples=16, extend=tmp_path / "half", **kw)

    prov = manifest["provenance"]
    assert (prov["samples"], prov["steps"], [s["steps"] for s in prov["segments"]]) == (16, 4, [2, 2])
    assert prov["segments"][1]["training_state"] == "restored"
    whole, extended = load_file(tmp_path / "whole" / "model.safetensors"), load_file(
        tmp_path / "extended" / "model.safetensors")
    assert whole.keys() == extended.keys()
    assert all(torch.equal(whole[k], extended[k]) for k in whole)  # same batches, optimizer and random state
    log = [line.split(",")[:3] for line in (tmp_path / "extended" / "train_log.csv").read_text().splitlines()]
    assert log == [line.split(",")[:3] for line in (tmp_path / "whole" / "train_log.csv").read_text().splitlines()]

    # Without the saved training state it still trains on, and says what it could not restore.
    (tmp_path / "half" / peers.TRAINING_STATE).unlink()
    manifest = peers.train_peer("act", demos, tmp_path / "stateless", samples=16, extend=tmp_path / "half", **kw)
    assert manifest["provenance"]["segments"][1]["training_state"].startswith("none saved")

    # What cannot give the same model is refused with the reason, before any training.
    with pytest.raises(SystemExit, match="not fewer than 8"):
        peers.extendable("act", tmp_path / "half", demos, 8, 4, 0, TINY["act"])
    with pytest.raises(SystemExit, match=r"batch 4, seed 0, .*\(this run: batch 4, seed 1"):
        peers.extendable("act", tmp_path / "half", demos, 16, 4, 1, TINY["act"])
    with pytest.raises(SystemExit, match="no trained act model"):
        peers.extendable("act", tmp_path / "missing", demos, 16, 4, 0, TINY["act"])
    loaded = demos[TASK]
    other_camera = dataclasses.replace(loaded.schema, observation=dataclasses.replace(
        loaded.schema.observation, cameras=(CameraSpec("topview", 32, 32),)))
    with pytest.raises(SystemExit, match="it read other cameras"):
        peers.extendable("act", tmp_path / "half", {TASK: dataclasses.replace(loaded, schema=other_camera)}, 16, 4, 0,
                         TINY["act"])
    # The same seeds from another expert (reach aimed at the tool centre) are other demos.
    aimed = {TASK: dataclasses.replace(loaded, created_with={"tool_centre": True})}
    with pytest.raises(SystemExit, match=r"other demos \(other seeds or experts\)"):
        peers.extendable("act", tmp_path / "half", aimed, 16, 4, 0, TINY["act"])
    peers.train_peer("diffusion", demos, tmp_path / "diffusion", samples=8, batch_size=4,
                     overrides=TINY["diffusion"], threads=1, log=lambda _: None)
    with pytest.raises(SystemExit, match="schedule fixed by its own length"):
        peers.extendable("diffusion", tmp_path / "diffusion", demos, 16, 4, 0, TINY["diffusion"])


@pytest.mark.slow
def test_eval_runs_a_lerobot_peer_in_metaworld_and_resets_it_every_episode(peers, demos, tmp_path, capsys,
                                                                            monkeypatch, fresh_worker_caches):
    policy = tmp_path / "act"
    peers.train_peer("act", demos, policy, samples=4, batch_size=4, overrides=TINY["act"], threads=1,
                     log=lambda _: None)
    out = tmp_path / "eval"
    assert main(["eval", "--lerobot", str(policy), "--episodes", "1", "--workers", "1", "--max-steps", "5",
                 "--videos", "0", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["policy"] == {"kind": "lerobot"} and report["n_action_steps"] == 1
    assert report["tasks"][TASK]["episodes"] == 1 and report["eval_seeds"]["first"] == EVAL_SEEDS.seed(0)

    # The worker's code, in this process: 3 steps leave 1 of ACT's 2 queued actions behind; the next
    # episode must start by clearing it.
    source = PolicySource(str(policy.resolve()), "lerobot")
    job = EpisodeJob(source, get_task(TASK), SMALL, EVAL_SEEDS.seed(0), 3, None, None, None, 1)
    assert _worker_episode(job).outcome.steps == 3
    peer = evaluate_mod._POLICIES[source]
    left_at_reset, original = [], peer.policy.reset
    monkeypatch.setattr(peer.policy, "reset", lambda: (left_at_reset.append(len(_queue(peer))), original()))
    assert _worker_episode(job).outcome.steps == 3
    assert left_at_reset == [1]


def test_ours_set_reaches_our_training_config_and_the_report(peers, tmp_path):
    from hydra import compose, initialize_config_module

    from training.config import register_configs

    register_configs()
    mt10 = peers.mt10  # bench/mt10.py, as peers.py imported it
    args = peers.parse_args(["--samples", "640", "--batch-size", "64", "--work", str(tmp_path),
                             "--ours-set", "model.random_shift=0", "--ours-set", "optim.lr=0.003"])
    ns = peers.ours_namespace(args, 64)
    with initialize_config_module(config_module="training.conf", version_base="1.3"):
        cfg = compose("train", overrides=mt10.overrides("lerobot", ns, tmp_path))
    assert (cfg.model.random_shift, cfg.optim.lr, cfg.train.steps, cfg.train.batch_size) == (0, 0.003, 10, 64)
    assert cfg.data.cameras == ["corner2"] and cfg.data.max_episodes == args.demos  # still mt10's `lerobot` run

    row = OUR_ROW | {"ours_set": args.ours_set, "latency_ms": {"onnxruntime_cpu": {"p50_ms": 0.3, "p99_ms": 0.5}}}
    md = peers.markdown({"command": "python bench/peers.py", "runs": [row]})
    assert "- ours: `model.random_shift=0` `optim.lr=0.003`" in md
    assert "--ours-set" not in peers.markdown({"command": "x", "runs": [row | {"ours_set": []}]})


def test_an_earlier_evaluation_is_reused_only_when_it_ran_the_same_way(peers, tmp_path):
    args = peers.parse_args(["--episodes", "10"])
    ours = tmp_path / "ours" / "checkpoints" / "last"
    earlier = {"episodes_per_task": 10, "checkpoint": str(ours.resolve()), "max_steps": None, "n_action_steps": 4}
    assert peers.evaluated_alike(earlier, ours, "checkpoint", args, n_action_steps=4)
    assert not peers.evaluated_alike(earlier, ours, "checkpoint", args, n_action_steps=8)
    assert not peers.evaluated_alike(earlier, ours, "checkpoint", peers.parse_args(["--episodes", "50"]), 4)
    assert not peers.evaluated_alike(earlier, tmp_path / "other", "checkpoint", args, 4)
    peer = tmp_path / "act" / "policy"  # LeRobot peers run one action per call whatever our setting is
    assert peers.evaluated_alike(earlier | {"checkpoint": str(peer.resolve()), "n_action_steps": 1}, peer, "lerobot",
                                 args, n_action_steps=None)
    # Temporal ensembling (the evaluator then records the whole chunk as n_action_steps) is another way to run.
    ensembled = earlier | {"n_action_steps": 8, "temporal_ensemble": 0.01}
    assert peers.evaluated_alike(ensembled, ours, "checkpoint", args, None, temporal_ensemble=0.01)
    assert not peers.evaluated_alike(ensembled, ours, "checkpoint", args, None, temporal_ensemble=0.1)
    assert not peers.evaluated_alike(ensembled, ours, "checkpoint", args, n_action_steps=4)
    assert not peers.evaluated_alike(earlier | {"temporal_ensemble": None}, ours, "checkpoint", args, None,
                                     temporal_ensemble=0.01)


def test_each_episode_count_and_way_of_running_keeps_its_own_evaluation(peers, tmp_path):
    dirs = {peers.eval_dir(tmp_path, peers.parse_args(["--episodes", str(n)]), k) for n in (10, 30) for k in (None, 0.01)}
    assert len(dirs) == 4 and all(d.parent == tmp_path for d in dirs)


def test_temporal_ensembling_of_ours_is_checked_and_shown_in_the_table(peers, capsys):
    assert peers.main(["--temporal-ensemble", "-1"]) == 2  # refused before any collection or training
    assert "--temporal-ensemble -1: expected K >= 0" in capsys.readouterr().err
    row = OUR_ROW | {"n_action_steps": 1, "temporal_ensemble": 0.01}
    assert "| 1, chunks ensembled (K=0.01) |" in peers.markdown({"command": "x", "runs": [row]})
    assert "| 4 |" in peers.markdown({"command": "x", "runs": [row | {"n_action_steps": 4, "temporal_ensemble": None}]})


def test_config_wrist_gives_every_model_both_cameras_and_ours_its_recipe(peers, tmp_path, fresh_worker_caches):
    from hydra import compose, initialize_config_module

    from training.config import register_configs

    register_configs()
    args = peers.parse_args(["--config", "wrist", "--samples", "640", "--work", str(tmp_path)])
    with initialize_config_module(config_module="training.conf", version_base="1.3"):
        cfg = compose("train", overrides=peers.mt10.overrides(args.config, peers.ours_namespace(args, 64), tmp_path))
    assert cfg.data.cameras == ["corner2", "behindGripper"] and cfg.model.proprio_dropout == 0.7

    # The peers read the same two cameras from a store that records three.
    task = get_task(TASK)
    schema = task.schema(ObservationConfig(cameras=("corner2", "topview", "behindGripper"), image_size=(32, 32)))
    store = DemoStore.create(tmp_path / "demos" / f"{TASK}.zarr", schema, task.info())
    rng = np.random.default_rng(0)
    for seed, length in EPISODES:
        store.append_episode(make_episode(schema, length, rng), seed=seed, success=True, expert="fake")
    store.close()
    demos = peers.load_demos(tmp_path / "demos", [TASK], 2, peers.config_cameras(args.config))
    assert sorted(demos[TASK].arrays) == ["action", "obs/behindGripper", "obs/corner2", "obs/proprio"]
    manifest = peers.train_peer("act", demos, tmp_path / "policy", samples=8, batch_size=4, overrides=TINY["act"],
                                threads=1, log=lambda _: None)
    assert [c["name"] for c in manifest["observation"]["cameras"]] == ["corner2", "behindGripper"]
    predict, _, _ = _predictor(PolicySource(str(tmp_path / "policy"), "lerobot"), TASK)
    observation = peers.example_observation(_policy_info(PolicySource(str(tmp_path / "policy"), "lerobot")).observation)
    assert sorted(observation) == ["obs/behindGripper", "obs/corner2", "obs/proprio"]
    assert np.isfinite(predict(observation)).all()


def test_tool_centre_stores_are_recognised_recorded_and_required_when_asked_for(peers, tmp_path):
    task = get_task(TASK)
    schema = task.schema(SMALL)
    for name, created_with in [("aimed", {"tool_centre": True}), ("plain", {})]:
        store = DemoStore.create(tmp_path / name / f"{TASK}.zarr", schema, task.info(), created_with=created_with)
        store.append_episode(make_episode(schema, 5, np.random.default_rng(0)), seed=3, success=True, expert="fake")
        store.close()
    assert peers.stores_aim_tool_centre(tmp_path / "aimed") and not peers.stores_aim_tool_centre(tmp_path / "plain")
    assert DemoStore.open(tmp_path / "aimed" / f"{TASK}.zarr").load().created_with == {"tool_centre": True}

    assert peers.collect_demos(peers.parse_args(["--data", str(tmp_path / "aimed"), "--tool-centre"])) == \
        tmp_path / "aimed"
    assert peers.collect_demos(peers.parse_args(["--data", str(tmp_path / "plain")])) == tmp_path / "plain"
    with pytest.raises(SystemExit, match=rf"{tmp_path / 'plain'}'s reach store was not collected with --tool-centre"):
        peers.collect_demos(peers.parse_args(["--data", str(tmp_path / "plain"), "--tool-centre"]))

    result = {"command": "x", "runs": [OUR_ROW], "cameras": ["corner2"], "tool_centre": True}
    assert "Every model reads corner2 + proprio; demos: reach's expert aimed at the tool centre" in \
        peers.markdown(result)
    assert "demos: Meta-World's scripted experts." in peers.markdown(result | {"tool_centre": False})
