"""Scripted-demo collection: stores per task, resume, and nothing lost to Ctrl-C or killed processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import sigint_as_at_a_terminal

from mt_policy.demo_store import DemoStore
from mt_policy.errors import MtPolicyError, StoreError
from mt_policy.seeds import DEMO_SEEDS
from sim.collect import collect, rollout
from sim.suites import get_suite, resolve_tasks
from sim.tasks import ObservationConfig, get_task

SMALL = ObservationConfig(cameras=("corner2",), image_size=(32, 32))
CLI = [sys.executable, "-m", "mt_policy.cli"]
SMALL_ARGS = ["--image-size", "32", "--no-progress"]


def _stores(out: Path) -> dict[str, DemoStore]:
    return {p.name.removesuffix(".zarr"): DemoStore.open(p) for p in sorted(out.glob("*.zarr"))}


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _episodes_written(out: Path) -> int:
    total = 0
    for path in out.glob("*.zarr"):
        try:
            total += DemoStore.open(path).n_episodes
        except StoreError:
            pass  # store still being created
    return total


def _worker_pids(parent: int) -> list[int]:
    """Child processes of `parent` that are multiprocessing spawn workers (not the resource tracker)."""
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    pids = []
    for pid in map(int, out):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "spawn_main" in cmdline:
            pids.append(pid)
    return pids


def test_collect_writes_one_store_per_task_and_resume_appends_the_rest(tmp_path):
    tasks = get_suite("mt3")
    first = collect(tasks, 2, tmp_path, SMALL, workers=2, progress=False)
    assert set(first.kept.values()) == {2} and not first.interrupted
    second = collect(tasks, 3, tmp_path, SMALL, workers=2, progress=False)
    assert set(second.kept.values()) == {1}, "resume must append only the missing episode"
    stores = _stores(tmp_path)
    assert sorted(stores) == sorted(t.name for t in tasks)
    for name, store in stores.items():
        store.validate()
        table = store.episode_table()
        assert store.n_episodes == 3 and table["success"].all()
        seeds = table["seed"].tolist()
        assert len(set(seeds)) == 3 and all(s in DEMO_SEEDS for s in seeds)
        assert store.task.name == name and store.schema.observation.cameras[0].height == 32
    again = collect(tasks, 3, tmp_path, SMALL, workers=1, progress=False)
    assert sum(again.kept.values()) == 0 and again.frames == 0


def test_keep_all_stores_failures_and_keep_success_rejects_them(tmp_path):
    tasks = resolve_tasks(tasks="reach-v3")
    state_only = ObservationConfig(cameras=())
    # Five steps is too short for any expert, so every episode fails.
    kept = collect(tasks, 2, tmp_path / "all", state_only, workers=1, keep="all", max_steps=5, progress=False)
    store = DemoStore.open(tmp_path / "all" / "reach-v3.zarr")
    assert kept.kept["reach-v3"] == 2 and store.n_episodes == 2 and not store.episode_table()["success"].any()
    assert store.n_frames == 10
    rejected = collect(tasks, 2, tmp_path / "ok", state_only, workers=1, keep="success", attempts_factor=1.0,
                       max_steps=5, progress=False)
    store = DemoStore.open(tmp_path / "ok" / "reach-v3.zarr")
    assert store.n_episodes == 0 and len(store.rejected_seeds) == rejected.rejected["reach-v3"] == 4
    assert any("fails too often" in w for w in rejected.warnings)
    # A resumed run does not retry the rejected seeds.
    collect(tasks, 1, tmp_path / "ok", state_only, workers=1, progress=False)
    store = DemoStore.open(tmp_path / "ok" / "reach-v3.zarr")
    assert store.n_episodes == 1 and int(store.episode_table()["seed"][0]) not in store.rejected_seeds


def test_resuming_with_a_different_observation_config_is_refused(tmp_path):
    tasks = resolve_tasks(tasks="reach-v3")
    collect(tasks, 1, tmp_path, SMALL, workers=1, progress=False)
    with pytest.raises(StoreError, match=r"reach-v3.zarr: existing store has schema"):
        collect(tasks, 2, tmp_path, ObservationConfig(cameras=("corner2",), image_size=(48, 48)), workers=1,
                progress=False)


def test_a_store_from_another_simulator_version_is_kept_when_complete_and_never_appended_to(tmp_path):
    tasks = resolve_tasks(tasks="reach-v3")
    collect(tasks, 1, tmp_path, SMALL, workers=1, progress=False)
    older = "metaworld 3.1.1, mujoco 3.3.0"  # what stores said before the reset frame showed the goal
    group = zarr.open_group(tmp_path / "reach-v3.zarr", mode="r+")
    group.attrs["task"] = dict(group.attrs["task"]) | {"env_version": older}
    report = collect(tasks, 1, tmp_path, SMALL, workers=1, progress=False)
    assert any(older in w and "kept" in w for w in report.warnings), report.warnings
    with pytest.raises(MtPolicyError, match=rf"reach-v3.zarr: recorded with '{older}', but this run simulates"):
        collect(tasks, 2, tmp_path, SMALL, workers=1, progress=False)
    store = DemoStore.open(tmp_path / "reach-v3.zarr")
    assert store.n_episodes == 1 and store.task.env_version == older


def test_cli_collect_then_inspect_validate(tmp_path):
    out = tmp_path / "demos"
    run = subprocess.run(CLI + ["collect", "--suite", "mt3", "--episodes", "2", "--out", str(out)] + SMALL_ARGS,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "window-close-v3" in run.stdout and "frames/s" in run.stdout
    stores = sorted(str(p) for p in out.glob("*.zarr"))
    assert len(stores) == 3
    grid = tmp_path / "grid.png"
    inspect = subprocess.run(CLI + ["inspect", *stores, "--validate", "--sample-grid", str(grid)],
                             capture_output=True, text=True, timeout=120)
    assert inspect.returncode == 0, inspect.stderr
    assert inspect.stdout.count("valid        yes") == 3 and grid.stat().st_size > 1000


def _start_collect(out: Path, episodes: int) -> subprocess.Popen:
    return subprocess.Popen(CLI + ["collect", "--suite", "mt3", "--episodes", str(episodes), "--out", str(out)]
                            + SMALL_ARGS, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=sigint_as_at_a_terminal)


def test_sigkill_mid_run_leaves_valid_stores_and_a_rerun_completes(tmp_path):
    proc = _start_collect(tmp_path, episodes=8)
    try:
        _wait_for(lambda: _episodes_written(tmp_path) >= 2, 180, "the first episodes")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # parent and workers, possibly in the middle of an append
        proc.wait()
    stores = _stores(tmp_path)
    assert len(stores) == 3
    before = {name: s.n_episodes for name, s in stores.items()}
    assert sum(before.values()) < 24
    for store in stores.values():
        store.validate()
    rerun = subprocess.run(CLI + ["collect", "--suite", "mt3", "--episodes", "8", "--out", str(tmp_path)] + SMALL_ARGS,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    for name, store in _stores(tmp_path).items():
        assert store.n_episodes == 8, name
        store.validate()


def test_ctrl_c_stops_with_exit_130_and_valid_stores(tmp_path):
    proc = _start_collect(tmp_path, episodes=8)
    _wait_for(lambda: _episodes_written(tmp_path) >= 1, 180, "the first episode")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    for store in _stores(tmp_path).values():
        store.validate()


def test_a_killed_worker_is_replaced_and_collection_finishes(tmp_path):
    proc = _start_collect(tmp_path, episodes=5)
    try:
        _wait_for(lambda: _episodes_written(tmp_path) >= 1 and _worker_pids(proc.pid), 180, "a worker and an episode")
        os.kill(_worker_pids(proc.pid)[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr
    assert "worker process died" in stderr
    for store in _stores(tmp_path).values():
        assert store.n_episodes == 5
        store.validate()


def test_action_noise_perturbs_what_runs_but_stores_the_experts_clean_action(tmp_path):
    import metaworld.policies

    spec, config = get_task("reach-v3"), ObservationConfig(cameras=(), proprio="full_state")
    env = spec.make_env(config)
    clean, _ = rollout(env, 7, 40)
    noisy, _ = rollout(env, 7, 40, action_noise=0.3)
    again, _ = rollout(env, 7, 40, action_noise=0.3)
    for key in noisy:
        np.testing.assert_array_equal(noisy[key], again[key])  # the noise is a function of the seed
    assert not np.allclose(noisy["obs/proprio"][5], clean["obs/proprio"][5])
    expert = getattr(metaworld.policies, spec.expert)()
    relabelled = np.stack([expert.get_action(state.astype(np.float64)) for state in noisy["obs/proprio"]])
    np.testing.assert_allclose(noisy["action"], relabelled, atol=1e-5)
    env.close()

    collect([spec], 1, tmp_path, config, workers=1, action_noise=0.2, progress=False)
    assert DemoStore.open(tmp_path / "reach-v3.zarr").created_with["action_noise"] == 0.2
    with pytest.raises(MtPolicyError, match=r"reach-v3.zarr: its episodes were collected with --action-noise 0.2, this run asks for 0.0"):
        collect([spec], 2, tmp_path, config, workers=1, progress=False)


def test_settle_steps_record_the_expert_past_success_and_a_store_keeps_their_number(tmp_path):
    spec, config = get_task("reach-v3"), ObservationConfig(cameras=(), proprio="full_state")
    env = spec.make_env(config)
    plain, plain_ok = rollout(env, 3, 200)
    settled, settled_ok = rollout(env, 3, 200, settle_steps=6)
    capped, capped_ok = rollout(env, 3, len(plain["action"]) + 2, settle_steps=6)
    env.close()
    assert plain_ok and settled_ok and capped_ok
    n = len(plain["action"])
    assert len(settled["action"]) == n + 6 and len(capped["action"]) == n + 2  # max_steps still bounds the episode
    for key in plain:
        np.testing.assert_array_equal(settled[key][:n], plain[key])  # the same episode, continued
    goal = settled["obs/proprio"][0, 36:39]
    hand = settled["obs/proprio"][:, :3]
    assert np.linalg.norm(hand[-1] - goal) < np.linalg.norm(hand[n - 1] - goal)  # the expert kept closing in

    collect([spec], 1, tmp_path, config, workers=1, settle_steps=6, progress=False)
    store = DemoStore.open(tmp_path / "reach-v3.zarr")
    assert store.created_with["settle_steps"] == 6 and store.n_episodes == 1
    with pytest.raises(MtPolicyError, match=r"collected with --settle-steps 6, this run asks for 0"):
        collect([spec], 2, tmp_path, config, workers=1, progress=False)


def test_the_tool_centre_reach_expert_rests_the_fingertips_on_the_goal_where_the_plain_one_stops_short(tmp_path):
    spec, config = get_task("reach-v3"), ObservationConfig(cameras=(), proprio="full_state")
    distances = {}
    for aimed in (False, True):
        env = spec.make_env(config)
        assert not aimed or env.aim_tool_centre()
        arrays, success = rollout(env, 3, 300, settle_steps=80)
        assert success
        distances[aimed] = float(np.linalg.norm(env._env.tcp_center - arrays["obs/proprio"][-1, 36:39]))
        env.close()
    assert 0.04 < distances[False] < 0.05  # at rest, the plain expert's fingertips sit just inside the 5 cm sphere
    assert distances[True] < 0.01
    push = get_task("push-v3").make_env(config)
    assert not push.aim_tool_centre()  # its expert aims the puck, not the flange
    push.close()

    collect([spec], 1, tmp_path, config, workers=1, tool_centre=True, progress=False)
    store = DemoStore.open(tmp_path / "reach-v3.zarr")
    assert store.created_with["tool_centre"] is True and store.experts == ["SawyerReachV3Policy (tool centre)"]
