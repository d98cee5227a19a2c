"""Tests of `DemoStore`: round trip, stats, crash safety, resume bookkeeping and every way a store can be bad.

Everything runs against real zarr v3 stores under `tmp_path`, with tiny synthetic episodes from `conftest`.
Corruptions are made the way they happen in the wild: through zarr itself, or by damaging files on disk.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import make_episode

from mt_policy.demo_store import EPISODE_ENDS, FORMAT_VERSION, DemoStore
from mt_policy.errors import StoreError
from mt_policy.schema import ACTION_KEY, PROPRIO_KEY, ObservationSchema, TaskInfo, TaskSchema

CAM_KEY = "obs/cam"
LENGTHS = (5, 7, 4)  # ends 5, 12, 16: small, uneven, so windows cross episode boundaries
SEEDS = (11, 22, 33)
SUCCESS = (True, False, True)
EXPERTS = ("scripted", "human", "scripted")


# ---------------------------------------------------------------------------------------------- helpers
class Demo:
    """A freshly written store plus exactly what was appended to it."""

    def __init__(self, path: Path, schema: TaskSchema, task: TaskInfo, episodes: list[dict[str, np.ndarray]]):
        self.path = path
        self.schema = schema
        self.task = task
        self.episodes = episodes

    @property
    def n_frames(self) -> int:
        return sum(len(ep[ACTION_KEY]) for ep in self.episodes)

    def concat(self, key: str) -> np.ndarray:
        return np.concatenate([ep[key] for ep in self.episodes])


def write_store(path: Path, schema: TaskSchema, task: TaskInfo, lengths=LENGTHS, seed: int = 0) -> Demo:
    rng = np.random.default_rng(seed)
    store = DemoStore.create(path, schema, task, created_with={"test": True})
    episodes = []
    for length, s, ok, expert in zip(lengths, SEEDS, SUCCESS, EXPERTS, strict=True):
        ep = make_episode(schema, length, rng)
        store.append_episode(ep, seed=s, success=ok, expert=expert)
        episodes.append(ep)
    store.close()
    return Demo(path, schema, task, episodes)


def zgroup(path: Path, mode: str = "r+") -> zarr.Group:
    """The raw zarr group of a store, for tampering behind DemoStore's back."""
    return zarr.open_group(str(path), mode=mode, zarr_format=3)


def chunk_file(path: Path, key: str) -> Path:
    """The first chunk file of a data array (all test data fits in chunk 0 along time)."""
    files = sorted(p for p in (path / key / "c").rglob("*") if p.is_file())
    assert files, f"no chunk files under {path / key}"
    return files[0]


def open_error(path: Path, mode: str = "r") -> str:
    with pytest.raises(StoreError) as info:
        DemoStore.open(path, mode=mode)
    return str(info.value)


def assert_store_untouched(demo: Demo) -> None:
    """The store still holds exactly the fixture's episodes, nothing past the commit, and validates."""
    store = DemoStore.open(demo.path)
    assert store.n_episodes == len(demo.episodes)
    assert store.n_frames == demo.n_frames
    store.validate()
    raw = zgroup(demo.path, mode="r")
    for key in demo.schema.frame_specs():
        assert raw[f"data/{key}"].shape[0] == demo.n_frames, key
    assert raw[EPISODE_ENDS].shape == (len(demo.episodes),)
    for key in demo.schema.frame_specs():
        assert np.array_equal(store.frames(key, 0, store.n_frames), demo.concat(key)), key


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def demo(tmp_path, tiny_schema, tiny_task) -> Demo:
    """A valid store with three episodes of lengths 5, 7, 4 (16 frames)."""
    return write_store(tmp_path / "toy.zarr", tiny_schema, tiny_task)


# ---------------------------------------------------------------------------------------------- 1. round trip
def test_round_trip_counts_and_episode_ends(demo):
    store = DemoStore.open(demo.path)
    assert not store.writable
    assert store.n_episodes == 3
    assert store.n_frames == 16
    assert store.episode_ends.tolist() == [5, 12, 16]
    assert store.episode_ends.dtype == np.int64
    assert store.schema == demo.schema
    assert store.task == demo.task
    assert store.created_with == {"test": True}


def test_round_trip_per_episode_arrays_equal_what_was_appended(demo):
    store = DemoStore.open(demo.path)
    for i, expected in enumerate(demo.episodes):
        ep = store.episode(i)
        assert ep.index == i
        assert len(ep) == LENGTHS[i]
        assert set(ep.arrays) == set(demo.schema.frame_specs())
        for key, values in expected.items():
            assert ep.arrays[key].dtype == values.dtype, key
            assert np.array_equal(ep.arrays[key], values), (i, key)
    # Negative indices count from the end; out-of-range ones are refused.
    assert np.array_equal(store.episode(-1).arrays[ACTION_KEY], demo.episodes[-1][ACTION_KEY])
    with pytest.raises(IndexError):
        store.episode(3)
    with pytest.raises(IndexError):
        store.episode(-4)


def test_round_trip_records_seed_success_and_expert(demo):
    store = DemoStore.open(demo.path)
    table = store.episode_table()
    assert table["seed"].tolist() == list(SEEDS)
    assert table["success"].tolist() == list(SUCCESS)
    assert table["length"].tolist() == list(LENGTHS)
    assert store.experts == ["scripted", "human"]
    assert [store.experts[i] for i in table["expert_id"]] == list(EXPERTS)
    episodes = list(store.iter_episodes())
    assert [e.seed for e in episodes] == list(SEEDS)
    assert [e.success for e in episodes] == list(SUCCESS)
    assert [e.expert for e in episodes] == list(EXPERTS)


def test_frames_random_access_across_episode_boundary(demo):
    store = DemoStore.open(demo.path)
    # Window [3, 9) spans the end of episode 0 (frames 0..5) and the start of episode 1 (5..12).
    for key in demo.schema.frame_specs():
        window = store.frames(key, 3, 9)
        expected = np.concatenate([demo.episodes[0][key][3:], demo.episodes[1][key][:4]])
        assert window.shape == (6, *demo.schema.frame_specs()[key][0])
        assert np.array_equal(window, expected), key
    assert store.frames(ACTION_KEY, 16, 16).shape == (0, 3)


def test_frames_refuses_unknown_key_and_windows_past_commit(demo):
    store = DemoStore.open(demo.path)
    with pytest.raises(StoreError, match="no data key 'obs/nope'"):
        store.frames("obs/nope", 0, 1)
    with pytest.raises(IndexError):
        store.frames(ACTION_KEY, 10, 17)
    with pytest.raises(IndexError):
        store.frames(ACTION_KEY, 5, 4)


def test_load_returns_concatenated_arrays(demo):
    loaded = DemoStore.open(demo.path).load()
    assert loaded.n_episodes == 3
    assert loaded.n_frames == 16
    assert loaded.episode_ends.tolist() == [5, 12, 16]
    assert loaded.schema == demo.schema
    assert loaded.task == demo.task
    assert set(loaded.arrays) == set(demo.schema.frame_specs())
    for key in demo.schema.frame_specs():
        assert np.array_equal(loaded.arrays[key], demo.concat(key)), key
    assert loaded.episodes["seed"].tolist() == list(SEEDS)
    assert set(loaded.stats) == set(demo.schema.frame_specs())


def test_load_refuses_more_than_max_bytes(demo):
    store = DemoStore.open(demo.path)
    with pytest.raises(StoreError, match="do not fit"):
        store.load(max_bytes=store.nbytes_raw() - 1)
    assert store.load(max_bytes=store.nbytes_raw()).n_frames == 16


def test_summary_reports_counts_rates_and_experts(demo):
    summary = DemoStore.open(demo.path).summary()
    assert summary["path"] == str(demo.path)
    assert summary["episodes"] == 3
    assert summary["frames"] == 16
    assert summary["success_rate"] == pytest.approx(2 / 3)
    assert summary["mean_length"] == pytest.approx(16 / 3)
    assert summary["experts"] == ["scripted", "human"]
    assert summary["rejected_attempts"] == 0
    assert summary["task"]["name"] == "toy-v0"
    assert summary["raw_bytes"] == 16 * (8 * 8 * 3 + 4 * 4 + 3 * 4)
    assert summary["disk_bytes"] > 0
    json.dumps(summary)  # the CLI prints it as JSON


def test_empty_store_opens_validates_and_summarises(tmp_path, tiny_schema, tiny_task):
    path = tmp_path / "empty.zarr"
    DemoStore.create(path, tiny_schema, tiny_task)
    store = DemoStore.open(path)
    assert (store.n_episodes, store.n_frames) == (0, 0)
    assert store.episode_ends.tolist() == []
    result = store.validate()
    assert (result["episodes"], result["frames"]) == (0, 0)
    assert store.summary()["success_rate"] is None
    assert store.load().n_frames == 0


def test_create_refuses_existing_path_unless_overwrite(demo):
    with pytest.raises(StoreError) as info:
        DemoStore.create(demo.path, demo.schema, demo.task)
    assert str(demo.path) in str(info.value)
    assert "already exists" in str(info.value)
    assert DemoStore.open(demo.path).n_episodes == 3  # untouched
    fresh = DemoStore.create(demo.path, demo.schema, demo.task, overwrite=True)
    assert fresh.n_episodes == 0
    assert DemoStore.open(demo.path).n_episodes == 0


def test_open_rejects_unknown_mode(demo):
    with pytest.raises(ValueError, match="mode"):
        DemoStore.open(demo.path, mode="w")


def _single_expert(ep, i):
    return {"expert": "scripted"}


def _all_failed(ep, i):
    return {"success": False}


def _black_images(ep, i):
    ep[CAM_KEY][:] = 0
    return {}


@pytest.mark.parametrize("variant", [_single_expert, _all_failed, _black_images], ids=lambda f: f.__name__.lstrip("_"))
def test_store_reopens_when_committed_rows_equal_the_fill_value(tmp_path, tiny_schema, tiny_task, variant):
    """Ordinary data that happens to be all zeros (one expert, all failures, black frames) must reopen.

    zarr skips writing a chunk whose values all equal the fill value, so the store must not then
    mistake the absent chunk for a deleted one.
    """
    path = tmp_path / "zeros.zarr"
    store = DemoStore.create(path, tiny_schema, tiny_task)
    rng = np.random.default_rng(12)
    episodes, kwargs_list = [], []
    for i in range(3):
        ep = make_episode(tiny_schema, 4, rng)
        kwargs = {"seed": 100 + i, "success": True, "expert": ["a", "b"][i % 2]} | variant(ep, i)
        store.append_episode(ep, **kwargs)
        episodes.append(ep)
        kwargs_list.append(kwargs)
    reread = DemoStore.open(path)
    assert reread.n_episodes == 3
    assert reread.validate()["frames"] == 12
    table = reread.episode_table()
    assert table["seed"].tolist() == [k["seed"] for k in kwargs_list]
    assert table["success"].tolist() == [k["success"] for k in kwargs_list]
    assert [e.expert for e in reread.iter_episodes()] == [k["expert"] for k in kwargs_list]
    for key in tiny_schema.frame_specs():
        assert np.array_equal(reread.load().arrays[key], np.concatenate([e[key] for e in episodes])), key
    # Resuming (mode 'a', as `collect` does) works too.
    DemoStore.open(path, mode="a").append_episode(make_episode(tiny_schema, 2, rng), seed=999, success=True,
                                                  expert="a")
    assert DemoStore.open(path).n_episodes == 4


def test_single_episode_store_reopens(tmp_path, tiny_schema, tiny_task):
    path = tmp_path / "one.zarr"
    ep = make_episode(tiny_schema, 3, np.random.default_rng(13))
    DemoStore.create(path, tiny_schema, tiny_task).append_episode(ep, seed=5, success=True, expert="scripted")
    reread = DemoStore.open(path)
    assert reread.episode_ends.tolist() == [3]
    assert reread.episode(0).expert == "scripted"
    assert np.array_equal(reread.episode(0).arrays[ACTION_KEY], ep[ACTION_KEY])


# ---------------------------------------------------------------------------------------------- 2. stats
def test_stored_stats_equal_numpy_over_all_frames(demo):
    store = DemoStore.open(demo.path)
    raw_stats = dict(zgroup(demo.path, mode="r").attrs)["stats"]
    assert set(store.stats) == set(demo.schema.frame_specs())
    for key in demo.schema.frame_specs():
        data = demo.concat(key)
        flat = data.reshape(-1, data.shape[-1]).astype(np.float64)  # images: one row per pixel, per channel
        stats = store.stats[key]
        assert stats.count == len(flat), key
        assert stats.mean.shape == (data.shape[-1],)
        np.testing.assert_allclose(stats.mean, flat.mean(axis=0), rtol=1e-6, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(stats.std, flat.std(axis=0), rtol=1e-6, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(stats.min, flat.min(axis=0), rtol=1e-6, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(stats.max, flat.max(axis=0), rtol=1e-6, atol=1e-12, err_msg=key)
        # The std written into the attributes (what other tools read) agrees too.
        np.testing.assert_allclose(raw_stats[key]["std"], flat.std(axis=0), rtol=1e-6, atol=1e-12, err_msg=key)
    assert store.stats[CAM_KEY].count == 16 * 8 * 8


def test_validate_passes_on_a_good_store(demo):
    result = DemoStore.open(demo.path).validate()
    assert result == {"episodes": 3, "frames": 16, "checked_arrays": 3}


def test_validate_detects_stats_that_disagree_with_data(demo):
    g = zgroup(demo.path)
    attrs = dict(g.attrs)
    attrs["stats"][ACTION_KEY]["mean"] = [m + 1.0 for m in attrs["stats"][ACTION_KEY]["mean"]]
    g.attrs.update({"stats": attrs["stats"]})
    store = DemoStore.open(demo.path)  # cheap open does not recompute stats
    with pytest.raises(StoreError) as info:
        store.validate()
    msg = str(info.value)
    assert str(demo.path) in msg and f"'{ACTION_KEY}'" in msg and "stats" in msg


def test_validate_detects_duplicate_seeds(demo):
    zgroup(demo.path)["meta/episodes/seed"][2] = SEEDS[0]
    store = DemoStore.open(demo.path)
    with pytest.raises(StoreError) as info:
        store.validate()
    assert str(demo.path) in str(info.value) and "'meta/episodes/seed'" in str(info.value)
    assert "duplicate" in str(info.value)


# ---------------------------------------------------------------------------------------------- 3. interrupted append
def _simulate_interrupted_append(demo: Demo, extra: int = 10) -> None:
    """Write an episode's frames and table rows past the commit, then 'crash' before the attrs rewrite."""
    writer = DemoStore.open(demo.path, mode="a")
    rng = np.random.default_rng(99)
    n, e = demo.n_frames, len(demo.episodes)
    for key, (shape, dtype) in demo.schema.frame_specs().items():
        arr = writer._group[f"data/{key}"]
        arr.resize((n + extra, *shape))
        if dtype == np.uint8:
            arr[n:] = rng.integers(0, 256, size=(extra, *shape), dtype=np.uint8)
        else:
            arr[n:] = np.full((extra, *shape), 1e6, dtype=dtype)  # garbage that would wreck the stats
    ends = writer._group[EPISODE_ENDS]
    ends.resize((e + 1,))
    ends[e] = n + extra
    for column, value in {"seed": 777, "length": extra, "success": True, "expert_id": 5}.items():
        col = writer._group[f"meta/episodes/{column}"]
        col.resize((e + 1,))
        col[e] = value
    # no attrs update: this is the crash


def test_interrupted_append_is_invisible_to_readers(demo):
    _simulate_interrupted_append(demo)
    store = DemoStore.open(demo.path)
    assert store.n_episodes == 3
    assert store.n_frames == 16
    assert store.episode_ends.tolist() == [5, 12, 16]
    assert store.episode_table()["seed"].tolist() == list(SEEDS)
    assert 777 not in store.used_seeds
    store.validate()
    loaded = store.load()
    for key in demo.schema.frame_specs():
        assert np.array_equal(loaded.arrays[key], demo.concat(key)), key
    with pytest.raises(IndexError):
        store.frames(ACTION_KEY, 0, 17)
    # A read-only open leaves the uncommitted tail where it is.
    assert zgroup(demo.path, mode="r")[f"data/{ACTION_KEY}"].shape == (26, 3)


def test_reopen_for_append_trims_interrupted_tail_and_appending_works(demo):
    _simulate_interrupted_append(demo)
    store = DemoStore.open(demo.path, mode="a")
    raw = zgroup(demo.path, mode="r")
    for key, (shape, _) in demo.schema.frame_specs().items():
        assert raw[f"data/{key}"].shape == (16, *shape), key
    assert raw[EPISODE_ENDS].shape == (3,)
    for column in ("seed", "length", "success", "expert_id"):
        assert raw[f"meta/episodes/{column}"].shape == (3,), column

    # Shorter than the garbage tail, so any stale bytes past it would show up if they leaked.
    new = make_episode(demo.schema, 4, np.random.default_rng(5))
    assert store.append_episode(new, seed=777, success=False, expert="scripted") == 3
    demo.episodes.append(new)

    reread = DemoStore.open(demo.path)
    assert reread.n_episodes == 4
    assert reread.n_frames == 20
    assert reread.episode_ends.tolist() == [5, 12, 16, 20]
    assert reread.episode_table()["seed"].tolist() == [*SEEDS, 777]
    assert reread.validate()["frames"] == 20
    for key in demo.schema.frame_specs():
        assert np.array_equal(reread.episode(3).arrays[key], new[key]), key
        assert np.array_equal(reread.load().arrays[key], demo.concat(key)), key


def test_interrupted_first_append_into_empty_store_is_trimmed(tmp_path, tiny_schema, tiny_task):
    path = tmp_path / "empty.zarr"
    DemoStore.create(path, tiny_schema, tiny_task)
    _simulate_interrupted_append(Demo(path, tiny_schema, tiny_task, []), extra=6)
    assert DemoStore.open(path).n_frames == 0
    DemoStore.open(path).validate()
    store = DemoStore.open(path, mode="a")
    assert zgroup(path, mode="r")[f"data/{ACTION_KEY}"].shape == (0, 3)
    ep = make_episode(tiny_schema, 3, np.random.default_rng(1))
    store.append_episode(ep, seed=1, success=True, expert="scripted")
    reread = DemoStore.open(path)
    assert reread.validate() == {"episodes": 1, "frames": 3, "checked_arrays": 3}
    assert np.array_equal(reread.frames(ACTION_KEY, 0, 3), ep[ACTION_KEY])


# ---------------------------------------------------------------------------------------------- 4. resume bookkeeping
def test_rejected_seed_persists_and_counts_as_used(demo):
    store = DemoStore.open(demo.path, mode="a")
    store.add_rejected_seed(44)
    store.add_rejected_seed(55)
    assert store.rejected_seeds == [44, 55]
    reread = DemoStore.open(demo.path)
    assert reread.rejected_seeds == [44, 55]
    assert sorted(reread.used_seeds) == sorted([*SEEDS, 44, 55])
    assert reread.summary()["rejected_attempts"] == 2
    reread.validate()


@pytest.mark.parametrize("seed", [SEEDS[1], 44], ids=["kept_seed", "rejected_seed"])
def test_appending_an_already_used_seed_raises(demo, seed):
    store = DemoStore.open(demo.path, mode="a")
    store.add_rejected_seed(44)
    with pytest.raises(StoreError) as info:
        store.append_episode(make_episode(demo.schema, 3, np.random.default_rng(2)), seed=seed, success=True,
                             expert="scripted")
    msg = str(info.value)
    assert str(demo.path) in msg and f"seed {seed}" in msg and "already used" in msg
    assert_store_untouched(demo)


def test_resumed_store_continues_appending_after_reopen(demo):
    store = DemoStore.open(demo.path, mode="a")
    new = make_episode(demo.schema, 2, np.random.default_rng(3))
    store.append_episode(new, seed=99, success=True, expert="replay")
    reread = DemoStore.open(demo.path)
    assert reread.episode_ends.tolist() == [5, 12, 16, 18]
    assert reread.experts == ["scripted", "human", "replay"]
    assert reread.episode(3).expert == "replay"
    reread.validate()


# ---------------------------------------------------------------------------------------------- 5. bad stores
def test_open_missing_path_raises(tmp_path):
    path = tmp_path / "nope.zarr"
    msg = open_error(path)
    assert str(path) in msg and "no such demo store" in msg


def test_open_regular_file_raises(tmp_path):
    path = tmp_path / "file.zarr"
    path.write_text("not a directory")
    msg = open_error(path)
    assert str(path) in msg and "zarr.json" in msg


def test_open_plain_directory_raises(tmp_path):
    path = tmp_path / "plain"
    path.mkdir()
    (path / "notes.txt").write_text("hello")
    msg = open_error(path)
    assert str(path) in msg and "zarr.json" in msg and "not a demo store" in msg


def test_open_unreadable_zarr_metadata_raises(tmp_path):
    path = tmp_path / "garbled.zarr"
    path.mkdir()
    (path / "zarr.json").write_text("{ this is not json")
    msg = open_error(path)
    assert str(path) in msg and "not a readable zarr v3 group" in msg


@pytest.mark.parametrize("format_attr", [None, "something.else"])
def test_open_zarr_group_that_is_not_a_demo_store_raises(tmp_path, format_attr):
    path = tmp_path / "other.zarr"
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    if format_attr is not None:
        g.attrs["format"] = format_attr
    msg = open_error(path)
    assert str(path) in msg and "not an mt_policy demo store" in msg and "attribute 'format'" in msg
    assert repr(format_attr) in msg and "expected 'mt_policy.demo_store'" in msg


def test_open_store_from_newer_format_version_raises(demo):
    zgroup(demo.path).attrs["format_version"] = FORMAT_VERSION + 1
    msg = open_error(demo.path)
    assert str(demo.path) in msg and "newer" in msg and f"format_version {FORMAT_VERSION + 1}" in msg


@pytest.mark.parametrize("bad", [0, "1", None, True])
def test_open_store_with_invalid_format_version_raises(demo, bad):
    zgroup(demo.path).attrs["format_version"] = bad
    msg = open_error(demo.path)
    assert str(demo.path) in msg and "attribute 'format_version'" in msg


def test_open_store_with_malformed_schema_attribute_raises(demo):
    zgroup(demo.path).attrs["schema"] = {"observation": {"cameras": []}}
    msg = open_error(demo.path)
    assert str(demo.path) in msg and "attribute 'schema'" in msg


@pytest.mark.parametrize("content", ["{ not json", "{}"], ids=["not_json", "empty_object"])
def test_open_store_with_corrupt_array_metadata_raises(demo, content):
    (demo.path / "data" / "action" / "zarr.json").write_text(content)
    msg = open_error(demo.path)
    assert str(demo.path) in msg and "action" in msg


def test_open_store_where_array_is_a_group_raises(demo):
    (demo.path / "data" / "action" / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    msg = open_error(demo.path)
    assert str(demo.path) in msg and f"'data/{ACTION_KEY}' is a group" in msg


def test_open_store_missing_episode_ends_raises(demo):
    shutil.rmtree(demo.path / "meta" / "episode_ends")
    msg = open_error(demo.path)
    assert str(demo.path) in msg and "missing array 'meta/episode_ends'" in msg


def test_open_store_missing_data_array_raises(demo):
    shutil.rmtree(demo.path / "data" / "obs" / "proprio")
    msg = open_error(demo.path)
    assert str(demo.path) in msg and "missing array 'data/obs/proprio'" in msg


def test_open_store_with_non_increasing_episode_ends_raises(demo):
    zgroup(demo.path)[EPISODE_ENDS][1] = 0
    msg = open_error(demo.path)
    assert str(demo.path) in msg and f"'{EPISODE_ENDS}'" in msg and "strictly increasing" in msg
    assert "entry 1 is 0 after 5" in msg


def test_open_store_with_non_positive_first_episode_end_raises(demo):
    zgroup(demo.path)[EPISODE_ENDS][0] = 0
    msg = open_error(demo.path)
    assert f"'{EPISODE_ENDS}'" in msg and "entry 0 is 0" in msg


def test_open_store_with_episode_ends_past_data_length_raises(demo):
    zgroup(demo.path)[EPISODE_ENDS][2] = 40  # still increasing, but beyond the 16 committed frames
    msg = open_error(demo.path)
    assert str(demo.path) in msg and f"'{EPISODE_ENDS}'" in msg and "past the data length" in msg
    assert "frame 40" in msg and "16 committed frames" in msg


def test_open_store_with_episode_ends_short_of_data_raises(demo):
    zgroup(demo.path)[EPISODE_ENDS][2] = 14
    msg = open_error(demo.path)
    assert f"'{EPISODE_ENDS}'" in msg and "short of the 16 committed frames" in msg


def test_open_store_with_inconsistent_commit_raises(demo):
    g = zgroup(demo.path)
    g.attrs["commit"] = {"episodes": 0, "frames": 16}
    msg = open_error(demo.path)
    assert str(demo.path) in msg and "attribute 'commit'" in msg


def test_open_store_with_episode_lengths_disagreeing_with_ends_raises(demo):
    zgroup(demo.path)["meta/episodes/length"][0] = 6
    msg = open_error(demo.path)
    assert str(demo.path) in msg and "'meta/episodes/length'" in msg


def test_open_store_with_expert_id_out_of_range_raises(demo):
    zgroup(demo.path)["meta/episodes/expert_id"][1] = 7
    msg = open_error(demo.path)
    assert str(demo.path) in msg and "'meta/episodes/expert_id'" in msg and "attribute 'experts'" in msg


def test_open_store_with_data_arrays_shorter_than_commit_raises(demo):
    zgroup(demo.path)[f"data/{ACTION_KEY}"].resize((10, 3))
    msg = open_error(demo.path)
    assert str(demo.path) in msg and f"'data/{ACTION_KEY}'" in msg and "mismatched length" in msg
    assert "has 10 frames but the store commits 16" in msg
    # Appending must not "repair" it either: mode 'a' fails the same way before trimming.
    assert "mismatched length" in open_error(demo.path, mode="a")


def test_open_store_with_short_episode_table_raises(demo):
    zgroup(demo.path)["meta/episodes/seed"].resize((2,))
    msg = open_error(demo.path)
    assert str(demo.path) in msg and "'meta/episodes/seed'" in msg


@pytest.mark.parametrize(
    "dtype, frame_shape, described",
    [("float64", (4,), "float64[4]"), ("float32", (5,), "float32[5]")],
    ids=["wrong_dtype", "wrong_shape"],
)
def test_open_store_with_array_disagreeing_with_schema_raises(demo, dtype, frame_shape, described):
    g = zgroup(demo.path)
    g.create_array(f"data/{PROPRIO_KEY}", shape=(16, *frame_shape), chunks=(16, *frame_shape), dtype=dtype,
                   overwrite=True)
    g[f"data/{PROPRIO_KEY}"][:] = np.zeros((16, *frame_shape), dtype=dtype)
    msg = open_error(demo.path)
    assert str(demo.path) in msg and f"'data/{PROPRIO_KEY}'" in msg
    assert described in msg and "float32[4]" in msg and "schema" in msg


def test_open_store_with_wrong_table_dtype_raises(demo):
    g = zgroup(demo.path)
    g.create_array("meta/episodes/seed", shape=(3,), chunks=(3,), dtype="float64", overwrite=True)
    g["meta/episodes/seed"][:] = np.array(SEEDS, dtype=np.float64)
    msg = open_error(demo.path)
    assert str(demo.path) in msg and "'meta/episodes/seed'" in msg and "float64" in msg


@pytest.mark.parametrize("key, bad", [(ACTION_KEY, np.nan), (ACTION_KEY, np.inf), (PROPRIO_KEY, np.nan)])
def test_open_store_with_non_finite_values_raises(demo, key, bad):
    zgroup(demo.path)[f"data/{key}"][7, 1] = bad  # frame 7 lies in episode 1 (frames 5..12)
    msg = open_error(demo.path)
    assert str(demo.path) in msg and f"'data/{key}'" in msg and "NaN/inf" in msg
    assert "frame 7 (episode 1)" in msg


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 4):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes], ids=["truncated", "flipped_bytes"])
def test_corrupt_image_chunk_is_reported_by_validate_and_load(demo, damage):
    damage(chunk_file(demo.path, f"data/{CAM_KEY}"))
    store = DemoStore.open(demo.path)  # the cheap open does not read image chunks
    with pytest.raises(StoreError) as info:
        store.validate()
    msg = str(info.value)
    assert str(demo.path) in msg and f"'data/{CAM_KEY}'" in msg and "corrupt" in msg
    with pytest.raises(StoreError) as info:
        store.load()
    assert f"'data/{CAM_KEY}'" in str(info.value) and str(demo.path) in str(info.value)
    with pytest.raises(StoreError, match="unreadable"):
        store.episode(0)


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes], ids=["truncated", "flipped_bytes"])
def test_corrupt_action_chunk_is_reported_on_open(demo, damage):
    damage(chunk_file(demo.path, f"data/{ACTION_KEY}"))
    msg = open_error(demo.path)
    assert str(demo.path) in msg and f"'data/{ACTION_KEY}'" in msg and "unreadable" in msg


@pytest.mark.parametrize("key", [f"data/{CAM_KEY}", f"data/{ACTION_KEY}", EPISODE_ENDS, "meta/episodes/seed"])
def test_deleted_chunk_file_is_reported_on_open(demo, key):
    chunk = chunk_file(demo.path, key)
    chunk.unlink()
    msg = open_error(demo.path)
    assert str(demo.path) in msg and f"'{key}'" in msg and "missing chunk" in msg
    assert "missing chunk" in open_error(demo.path, mode="a")


# ---------------------------------------------------------------------------------------------- 6. bad appends
def _wrong_dtype(ep):
    ep[ACTION_KEY] = ep[ACTION_KEY].astype(np.float64)
    return ACTION_KEY


def _wrong_image_shape(ep):
    ep[CAM_KEY] = np.zeros((len(ep[CAM_KEY]), 8, 9, 3), dtype=np.uint8)
    return CAM_KEY


def _mismatched_lengths(ep):
    ep[PROPRIO_KEY] = ep[PROPRIO_KEY][:-1]
    return PROPRIO_KEY


def _nan_action(ep):
    ep[ACTION_KEY][2, 0] = np.nan
    return ACTION_KEY


def _missing_key(ep):
    del ep[PROPRIO_KEY]
    return PROPRIO_KEY


def _unexpected_key(ep):
    ep["obs/extra"] = np.zeros((len(ep[ACTION_KEY]), 2), dtype=np.float32)
    return "obs/extra"


def _empty_episode(ep):
    for key in ep:
        ep[key] = ep[key][:0]
    return "empty episode"


@pytest.mark.parametrize(
    "corrupt",
    [_wrong_dtype, _wrong_image_shape, _mismatched_lengths, _nan_action, _missing_key, _unexpected_key, _empty_episode],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_append_episode_with_bad_input_raises_and_leaves_store_unchanged(demo, corrupt):
    store = DemoStore.open(demo.path, mode="a")
    ep = make_episode(demo.schema, 6, np.random.default_rng(7))
    named = corrupt(ep)
    with pytest.raises(StoreError) as info:
        store.append_episode(ep, seed=1234, success=True, expert="scripted")
    msg = str(info.value)
    assert str(demo.path) in msg and named in msg and "1234" in msg
    assert store.n_episodes == 3 and store.n_frames == 16
    assert store.experts == ["scripted", "human"]
    assert_store_untouched(demo)
    # The store is still usable, and the refused seed was not burned.
    store.append_episode(make_episode(demo.schema, 2, np.random.default_rng(8)), seed=1234, success=True,
                         expert="scripted")
    assert DemoStore.open(demo.path).validate()["episodes"] == 4


# ---------------------------------------------------------------------------------------------- 7. read-only
def test_writing_to_read_only_store_raises(demo):
    store = DemoStore.open(demo.path)
    with pytest.raises(StoreError) as info:
        store.append_episode(make_episode(demo.schema, 2, np.random.default_rng(4)), seed=5, success=True,
                             expert="scripted")
    assert str(demo.path) in str(info.value) and "read-only" in str(info.value)
    with pytest.raises(StoreError, match="read-only"):
        store.add_rejected_seed(5)
    assert store.rejected_seeds == []
    assert DemoStore.open(demo.path).rejected_seeds == []
    assert_store_untouched(demo)


# ---------------------------------------------------------------------------------------------- 8. open_or_create
def test_open_or_create_creates_then_reopens_matching_store(tmp_path, tiny_schema, tiny_task):
    path = tmp_path / "new.zarr"
    store = DemoStore.open_or_create(path, tiny_schema, tiny_task)
    assert store.writable and store.n_episodes == 0
    store.append_episode(make_episode(tiny_schema, 3, np.random.default_rng(0)), seed=1, success=True,
                         expert="scripted")
    again = DemoStore.open_or_create(path, tiny_schema, tiny_task)
    assert again.writable and again.n_episodes == 1 and again.used_seeds == [1]


def test_open_or_create_with_different_schema_raises_naming_both(demo):
    other = replace(demo.schema, observation=ObservationSchema(cameras=demo.schema.observation.cameras,
                                                               proprio_size=5))
    with pytest.raises(StoreError) as info:
        DemoStore.open_or_create(demo.path, other, demo.task)
    msg = str(info.value)
    assert str(demo.path) in msg
    assert "'proprio_size': 4" in msg and "'proprio_size': 5" in msg
    assert_store_untouched(demo)


def test_open_or_create_with_different_task_raises_naming_both(demo):
    other = replace(demo.task, name="other-v0")
    with pytest.raises(StoreError) as info:
        DemoStore.open_or_create(demo.path, demo.schema, other)
    msg = str(info.value)
    assert str(demo.path) in msg and "'toy-v0'" in msg and "'other-v0'" in msg


# ---------------------------------------------------------------------------------------------- 9. CLI
def test_cli_inspect_broken_store_exits_2_naming_store(demo, capsys):
    from mt_policy.cli import main

    shutil.rmtree(demo.path / "meta" / "episode_ends")
    assert main(["inspect", str(demo.path)]) == 2
    err = capsys.readouterr().err
    assert str(demo.path) in err and "meta/episode_ends" in err


def test_cli_inspect_missing_store_exits_2(tmp_path, capsys):
    from mt_policy.cli import main

    path = tmp_path / "absent.zarr"
    assert main(["inspect", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_cli_inspect_store_with_corrupt_array_metadata_exits_2(demo, capsys):
    from mt_policy.cli import main

    (demo.path / "data" / "action" / "zarr.json").write_text("{ not json")
    assert main(["inspect", str(demo.path)]) == 2
    assert str(demo.path) in capsys.readouterr().err


def test_cli_inspect_validate_json_on_good_store_exits_0(demo, capsys):
    from mt_policy.cli import main

    assert main(["inspect", str(demo.path), "--validate", "--json"]) == 0
    out = capsys.readouterr().out
    summaries = json.loads(out)
    assert len(summaries) == 1
    assert summaries[0]["episodes"] == 3
    assert summaries[0]["frames"] == 16
    assert summaries[0]["validated"] is True
    assert summaries[0]["path"] == str(demo.path)


def test_cli_inspect_validate_reports_corrupt_chunk_exits_2(demo, capsys):
    from mt_policy.cli import main

    _flip_bytes(chunk_file(demo.path, f"data/{CAM_KEY}"))
    assert main(["inspect", str(demo.path)]) == 0  # the cheap open does not read image chunks
    capsys.readouterr()
    assert main(["inspect", str(demo.path), "--validate"]) == 2
    err = capsys.readouterr().err
    assert str(demo.path) in err and f"data/{CAM_KEY}" in err


def test_append_commits_with_exactly_one_write_of_the_group_metadata(tmp_path, tiny_schema, tiny_task, monkeypatch):
    """The commit (counts, experts, stats) must land in one atomic file replace, not one write per key."""
    import zarr.storage._local as local

    store = DemoStore.create(tmp_path / "one.zarr", tiny_schema, tiny_task)
    writes: list[str] = []
    original = local._put

    def counting_put(path, value, exclusive=False):
        writes.append(str(path))
        return original(path, value, exclusive)

    monkeypatch.setattr(local, "_put", counting_put)
    store.append_episode(make_episode(tiny_schema, 4, np.random.default_rng(0)), seed=1, success=True, expert="x")
    group_meta = str(tmp_path / "one.zarr" / "zarr.json")
    assert writes.count(group_meta) == 1
    assert writes.index(group_meta) == len(writes) - 1, "the commit must be the last write of an append"


def test_spare_capacity_is_invisible_to_readers_and_trimmed_on_close(tmp_path, tiny_schema, tiny_task):
    store = DemoStore.create(tmp_path / "cap.zarr", tiny_schema, tiny_task)
    episode = make_episode(tiny_schema, 3, np.random.default_rng(0))
    store.append_episode(episode, seed=1, success=True, expert="x")
    assert zgroup(store.path, mode="r")["data/action"].shape[0] >= 3  # may hold spare rows
    reader = DemoStore.open(store.path)
    assert reader.n_frames == 3 and np.array_equal(reader.frames("action", 0, 3), episode["action"])
    store.close()
    raw = zgroup(store.path, mode="r")
    assert raw["data/action"].shape[0] == 3 and raw[EPISODE_ENDS].shape == (1,)
    DemoStore.open(store.path).validate()
