"""Contract tests over every registered task, plus the scripted experts' success rate and suites."""

from __future__ import annotations

import numpy as np
import pytest

from mt_policy.errors import MtPolicyError, UnknownNameError
from mt_policy.schema import check_frames
from mt_policy.seeds import DEMO_SEEDS
from sim.collect import rollout
from sim.suites import MT10, get_suite, load_suite_file, resolve_tasks, suite_names
from sim.tasks import ObservationConfig, get_task, task_names

# With the privileged state: some tasks' seeds move only what no camera sees (pick-out-of-hole's goal).
PIXELS = ObservationConfig(cameras=("corner2",), image_size=(32, 32), privileged=True)


@pytest.fixture(scope="module", params=task_names())
def task_env(request):
    env = get_task(request.param).make_env(PIXELS)
    yield request.param, env
    env.close()


def _short_rollout(env, seed: int, steps: int = 3) -> list[dict[str, np.ndarray]]:
    observations = [env.reset(seed)]
    for _ in range(steps):
        observations.append(env.step(env.expert_action()).obs)
    return observations


def test_task_contract(task_env):
    """Every task: declared shapes and dtypes, finite values, non-constant images, determinism under a seed."""
    name, env = task_env
    spec = get_task(name)
    assert spec.schema(PIXELS) == env.schema
    first = _short_rollout(env, seed=7)
    frames = {k: np.stack([o[k] for o in first]) for k in first[0]}
    frames["action"] = np.zeros((len(first), env.schema.action.size), np.float32)
    check_frames(env.schema, frames, where=name)  # shapes, dtypes, finite
    image = frames["obs/corner2"][0]
    assert image.std() > 5.0, f"{name}: image is (nearly) constant"
    again = _short_rollout(env, seed=7)
    other = env.reset(seed=8)
    for a, b in zip(first, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key} differs under the same seed")
    assert any(not np.array_equal(first[0][key], other[key]) for key in other), (
        f"{name}: seeds 7 and 8 give the same initial state"
    )
    assert spec.difficulty in ("easy", "medium", "hard", "very_hard") and spec.description


def test_state_only_and_full_state_schemas():
    env = get_task("push-v3").make_env(ObservationConfig(cameras=(), proprio="full_state"))
    try:
        obs = env.reset(seed=3)
        assert set(obs) == {"obs/proprio"} and obs["obs/proprio"].shape == (39,)
        assert env.schema.observation.cameras == ()
    finally:
        env.close()


def test_extra_camera_and_full_render_quality():
    cfg = ObservationConfig(cameras=("corner2", "behindGripper"), image_size=(24, 40), render_quality="full")
    env = get_task("reach-v3").make_env(cfg)
    try:
        obs = env.reset(seed=1)
        assert obs["obs/corner2"].shape == (24, 40, 3) and obs["obs/behindGripper"].shape == (24, 40, 3)
        assert not np.array_equal(obs["obs/corner2"], obs["obs/behindGripper"])
    finally:
        env.close()


@pytest.mark.parametrize("task", ["reach-v3", "push-v3", "drawer-open-v3", "window-close-v3"])
def test_scripted_expert_succeeds_on_90_percent_of_20_seeds(task):
    env = get_task(task).make_env(ObservationConfig(cameras=()))
    try:
        results = [rollout(env, DEMO_SEEDS.seed(i), max_steps=500) for i in range(20)]
    finally:
        env.close()
    successes = sum(success for _, success in results)
    assert successes >= 18, f"{task}: expert succeeded on {successes}/20 seeds"
    lengths = [len(arrays["action"]) for arrays, success in results if success]
    assert max(lengths) < 500


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownNameError, match="known tasks: .*push-v3"):
        get_task("psuh-v3")
    with pytest.raises(UnknownNameError, match="known suites: .*mt10"):
        get_suite("mt11")
    with pytest.raises(UnknownNameError, match="known Meta-World cameras"):
        get_task("reach-v3").schema(ObservationConfig(cameras=("nope",)))


def test_builtin_suites():
    assert [t.name for t in get_suite("mt10")] == list(MT10)
    assert len(get_suite("mt50")) == 50 and len(get_suite("mt3")) == 3
    assert {"mt3", "mt10", "mt50"} <= set(suite_names())
    assert [t.name for t in resolve_tasks(tasks="reach-v3, push-v3")] == ["reach-v3", "push-v3"]


def test_suite_file_registers_suites_and_rejects_bad_ones(tmp_path):
    good = tmp_path / "suites.yaml"
    good.write_text("suites:\n  kitchen:\n    tasks: [drawer-open-v3, drawer-close-v3]\n")
    assert load_suite_file(good) == ["kitchen"]
    assert [t.name for t in get_suite("kitchen")] == ["drawer-open-v3", "drawer-close-v3"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("suites:\n  oops:\n    tasks: [drawer-open-v3, not-a-task]\n")
    with pytest.raises(MtPolicyError, match=r"bad.yaml: suites.oops: .*not-a-task"):
        load_suite_file(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("suites:\n  twice:\n    tasks: [reach-v3, reach-v3]\n")
    with pytest.raises(MtPolicyError, match="more than once"):
        load_suite_file(dup)


def test_expert_class_exists_for_every_metaworld_task():
    import metaworld.policies

    for name in task_names():
        spec = get_task(name)
        if spec.env_id == "Meta-World/MT1":
            assert hasattr(metaworld.policies, spec.expert), f"{name}: no expert {spec.expert}"


def test_reacher_has_its_own_action_size_beside_metaworld():
    reacher = get_task("reacher-v5").schema(PIXELS)
    assert reacher.action.size == 2 and get_task("reach-v3").schema(PIXELS).action.size == 4
    assert reacher.control_hz == 50.0 and reacher.max_episode_steps == 50


def test_suite_file_can_define_a_gymnasium_task_and_collect_it(tmp_path):
    """A task defined only in a suite file reaches spawned collection workers and fills a store."""
    from mt_policy.demo_store import DemoStore
    from sim.collect import collect

    suite_file = tmp_path / "mine.yaml"
    suite_file.write_text(
        "tasks:\n"
        "  my-reacher:\n"
        "    env_id: Reacher-v5\n"
        "    expert: sim.reacher:expert\n"
        "    success: sim.reacher:success\n"
        "    description: Touch the target\n"
        "    agent_pos: [0, 1, 2, 3, 6, 7]\n"
        "suites:\n"
        "  mixed:\n"
        "    tasks: [reach-v3, my-reacher]\n"
    )
    load_suite_file(suite_file)
    tasks = get_suite("mixed")
    report = collect(tasks, 2, tmp_path / "out", ObservationConfig(cameras=()), workers=2, progress=False)
    assert report.kept == {"reach-v3": 2, "my-reacher": 2}
    store = DemoStore.open(tmp_path / "out" / "my-reacher.zarr")
    assert store.schema.action.size == 2 and store.task.env_id == "Reacher-v5"
    assert store.episode_table()["success"].all()


def test_suite_file_task_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad_task.yaml"
    bad.write_text("tasks:\n  t:\n    env_id: Reacher-v5\n    expert: nowhere.module:fn\n    success: sim.reacher:success\n"
                   "    description: x\nsuites:\n  s:\n    tasks: [t]\n")
    with pytest.raises(MtPolicyError, match=r"bad_task.yaml: tasks.t.expert 'nowhere.module:fn' cannot be imported"):
        load_suite_file(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("tasks:\n  t:\n    env_id: Reacher-v5\n    expertt: sim.reacher:expert\nsuites: {}\n")
    with pytest.raises(MtPolicyError, match=r"unknown fields \['expertt'\]"):
        load_suite_file(typo)


@pytest.mark.parametrize("task", ["reach-v3", "push-v3", "pick-place-v3"])
def test_reset_frame_draws_the_goal_where_the_goal_is(task):
    """Meta-World leaves the goal site stale after a reset; our reset frame must show the real goal.

    The reference is the same frame rendered after a full forward pass, which recomputes every site
    from the model (where the reset put the goal)."""
    import mujoco

    from sim.metaworld_tasks import MetaWorldEnv

    env = MetaWorldEnv(task, ObservationConfig(cameras=("corner2",), image_size=(96, 96)))
    try:
        for seed in (DEMO_SEEDS.start, DEMO_SEEDS.start + 1):
            first = env.reset(seed)["obs/corner2"]
            inner = env._env
            goal_site = inner.model.site("goal").id
            np.testing.assert_allclose(inner.data.site_xpos[goal_site], inner._target_pos)
            mujoco.mj_forward(inner.model, inner.data)
            np.testing.assert_array_equal(first, env._render("corner2"))
    finally:
        env.close()
