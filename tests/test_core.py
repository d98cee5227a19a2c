"""Schema, seeds, stats and window sampling: the small pieces every stage relies on."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_episode

from mt_policy.demo_store import DemoStore
from mt_policy.errors import SchemaError
from mt_policy.sampler import WindowSampler, WindowSpec, split_episodes
from mt_policy.schema import ActionSchema, CameraSpec, TaskSchema, check_frames
from mt_policy.seeds import DEMO_SEEDS, EVAL_SEEDS, check_disjoint
from mt_policy.stats import RunningStats


def test_schema_round_trips_through_dict(tiny_schema):
    assert TaskSchema.from_dict(tiny_schema.to_dict()) == tiny_schema


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["observation"].pop("proprio_size"), "malformed schema"),
        (lambda d: d["observation"]["cameras"][0].update(name="proprio"), "camera name"),
        (lambda d: d["action"].update(low=[-1.0]), "action bounds"),
        (lambda d: d["observation"].update(render_quality="ultra"), "render_quality"),
    ],
)
def test_malformed_schema_names_the_problem(tiny_schema, mutate, message):
    data = tiny_schema.to_dict()
    mutate(data)
    with pytest.raises(SchemaError, match=message):
        TaskSchema.from_dict(data, where="store.zarr: attribute 'schema'")


def test_check_frames_rejects_shape_dtype_and_nan(tiny_schema):
    rng = np.random.default_rng(0)
    good = make_episode(tiny_schema, 4, rng)
    assert check_frames(tiny_schema, good, "ep") == 4
    with pytest.raises(SchemaError, match=r"obs/cam is uint8\[8, 9, 3\]"):
        check_frames(tiny_schema, good | {"obs/cam": np.zeros((4, 8, 9, 3), np.uint8)}, "ep")
    nan = good["action"].copy()
    nan[2, 1] = np.nan
    with pytest.raises(SchemaError, match="action has NaN/inf .first at frame 2"):
        check_frames(tiny_schema, good | {"action": nan}, "ep")
    with pytest.raises(SchemaError, match="different lengths"):
        check_frames(tiny_schema, good | {"action": good["action"][:3]}, "ep")


def test_invalid_specs_are_refused():
    with pytest.raises(SchemaError):
        CameraSpec("cam", 4, 96)
    with pytest.raises(SchemaError):
        ActionSchema(2, (1.0, 1.0), (0.0, 0.0))


def test_demo_and_eval_seeds_are_disjoint():
    assert DEMO_SEEDS.stop <= EVAL_SEEDS.start
    assert list(DEMO_SEEDS.unused([0, 2]))[:3] == [1, 3, 4]
    check_disjoint([1, 2, 3], [EVAL_SEEDS.seed(0), EVAL_SEEDS.seed(1)])


def test_a_slice_of_a_seed_range_stays_inside_it():
    assert EVAL_SEEDS.take(3) == [EVAL_SEEDS.start, EVAL_SEEDS.start + 1, EVAL_SEEDS.start + 2]
    assert EVAL_SEEDS.take(2, first=1000) == [EVAL_SEEDS.seed(1000), EVAL_SEEDS.seed(1001)]
    size = len(EVAL_SEEDS)
    assert size == EVAL_SEEDS.stop - EVAL_SEEDS.start
    assert EVAL_SEEDS.take(2, first=size - 2)[-1] == EVAL_SEEDS.stop - 1
    for count, first in ((2, size - 1), (1, -1), (0, 0)):
        with pytest.raises(ValueError, match=rf"eval seeds: first must be in \[0, {size - count}\] .*got {first}"):
            EVAL_SEEDS.take(count, first)
    with pytest.raises(ValueError, match="overlap"):
        check_disjoint([1, 2, 3], [3, 4])


def test_running_stats_merge_equals_stats_of_the_concatenation():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((50, 3)) * 4 + 2, rng.standard_normal((7, 3))
    merged = RunningStats.of(a).merge(RunningStats.of(b))
    assert merged.allclose(RunningStats.of(np.concatenate([a, b])), rtol=1e-10, atol=1e-10)
    images = rng.integers(0, 256, size=(5, 4, 4, 3), dtype=np.uint8)
    direct = images.reshape(-1, 3).astype(np.float64)
    stats = RunningStats.of(images)
    np.testing.assert_allclose(stats.mean, direct.mean(0))
    np.testing.assert_allclose(stats.std, direct.std(0))


@pytest.fixture
def loaded(tmp_path, tiny_schema, tiny_task):
    store = DemoStore.create(tmp_path / "s.zarr", tiny_schema, tiny_task)
    rng = np.random.default_rng(2)
    for seed, length in enumerate([5, 3, 6]):
        store.append_episode(make_episode(tiny_schema, length, rng), seed=seed, success=True, expert="e")
    return DemoStore.open(store.path).load()


def test_windows_stay_inside_their_episode_and_pad_the_tail(loaded):
    sampler = WindowSampler(loaded, WindowSpec(obs_steps=2, action_steps=4))
    anchors = np.arange(len(sampler))
    batch = sampler.gather(anchors)
    actions = loaded.arrays["action"]
    # Frame 5 starts episode 1: its history repeats frame 5, never reaching back into episode 0.
    np.testing.assert_array_equal(batch["obs/proprio"][5], loaded.arrays["obs/proprio"][[5, 5]])
    np.testing.assert_array_equal(batch["obs/cam"][6], loaded.arrays["obs/cam"][[5, 6]])
    # Frame 6 of episode 1 (frames 5..7): actions 6, 7, then the last one repeated and marked as padding.
    np.testing.assert_array_equal(batch["action"][6], actions[[6, 7, 7, 7]])
    assert batch["action_is_pad"][6].tolist() == [False, False, True, True]
    assert batch["action"].shape == (14, 4, 3) and batch["obs/cam"].shape == (14, 2, 8, 8, 3)


def test_split_and_sampling_respect_episode_subsets(loaded):
    train, val = split_episodes(3, val_fraction=0.34, seed=0)
    assert len(val) == 1 and sorted(np.concatenate([train, val]).tolist()) == [0, 1, 2]
    sampler = WindowSampler(loaded, WindowSpec(), episodes=val)
    ends = loaded.episode_ends
    start = 0 if val[0] == 0 else ends[val[0] - 1]
    anchors = sampler.indices(np.random.default_rng(0), 100)
    assert ((anchors >= start) & (anchors < ends[val[0]])).all()
    with pytest.raises(ValueError):
        split_episodes(3, val_fraction=1.0)
