"""LeRobot interoperability: import a LeRobotDataset v3.0 that LeRobot's own writer made, export stores
that LeRobot's own loader opens, and the store -> LeRobot -> store round trip. Real LeRobot and zarr, tiny data."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub: no hub access in tests

import numpy as np
import pytest

from mt_policy.cli import main
from mt_policy.demo_store import DemoStore
from mt_policy.errors import MtPolicyError
from mt_policy.lerobot_io import SIDECAR, KeyMap, LeRobotIOError, export_lerobot, import_lerobot, open_lerobot
from mt_policy.schema import ActionSchema, CameraSpec, ObservationSchema, TaskInfo, TaskSchema

pytest.importorskip("lerobot")

FPS = 20
BUTTON = "Press a button from the top"  # LeRobot's Meta-World description of button-press-topdown-v3
STACK = "Stack the red cube on the blue one"  # no registered task says this

# Video is lossy. LeRobot's default codec (libsvtav1, crf 30, yuv420p), measured with LeRobot 0.4.4 / PyAV 15.1
# on `smooth_frames` (32x32, this test's stores): mean abs pixel error 3.5 / 3.8, 99th percentile 31 / 50,
# max 128 / 73 (PSNR ~30 dB). The max sits on the box's saturated edges: 4:2:0 chroma subsampling alone errs
# by up to ~126 there. On 96x96 Meta-World renders: mean 3.0-3.2, max ~185. Bounds leave margin for other builds.
VIDEO_MEAN_ERROR, VIDEO_P99_ERROR, VIDEO_MAX_ERROR = 6.0, 80, 180


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def smooth_frames(n: int, h: int, w: int, phase: float) -> np.ndarray:
    """Render-like frames, (n, h, w, 3) uint8: a shaded background that brightens by 10 levels a frame and a
    coloured box sliding 1 px a frame (so each frame differs from its neighbours as a whole, as in sim)."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for t in range(n):
        img = np.stack([60 + 60 * x / w, 70 + 50 * y / h, np.full((h, w), 60.0 + 40 * phase + 10 * t)], axis=-1)
        x0 = int(2 + t + 6 * phase) % (w - 10)
        img[h // 3:h // 3 + 10, x0:x0 + 10] = (200, 60, 40)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_lerobot(root, episodes, *, image_key="observation.images.top", size=16, state=4, action=4, extra=False,
                  append=False):
    """A LeRobotDataset v3.0 written with LeRobot's own API (PNG frames); returns what each episode holds."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {image_key: {"dtype": "image", "shape": (size, size, 3), "names": ["height", "width", "channels"]},
                "observation.state": {"dtype": "float32", "shape": (state,), "names": None},
                "action": {"dtype": "float32", "shape": (action,), "names": None}}
    if extra:
        features["observation.environment_state"] = {"dtype": "float32", "shape": (2,), "names": None}
    if append:
        ds = LeRobotDataset(f"local/{root.name}", root=root, video_backend="pyav")
    else:
        ds = LeRobotDataset.create(f"local/{root.name}", fps=FPS, features=features, root=root, use_videos=False)
    rng = np.random.default_rng(len(episodes) + 100 * append)
    written = []
    for task, length in episodes:
        ep = {"img": rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8),
              "state": rng.standard_normal((length, state)).astype(np.float32),
              "action": rng.uniform(-1, 1, (length, action)).astype(np.float32), "task": task}
        for t in range(length):
            frame = {image_key: ep["img"][t], "observation.state": ep["state"][t], "action": ep["action"][t],
                     "task": task}
            if extra:
                frame["observation.environment_state"] = np.zeros(2, np.float32)
            ds.add_frame(frame)
        ds.save_episode()
        written.append(ep)
    ds.finalize()
    return written


def make_stores(tmp_path, tasks, *, size=32, action_sizes=None, lengths=(6, 4)):
    """One store per (name, description) with smooth images; returns their paths."""
    paths = []
    for i, (name, description) in enumerate(tasks):
        a = (action_sizes or {}).get(name, 3)
        schema = TaskSchema(ObservationSchema((CameraSpec("corner2", size, size),), 4, render_quality="full"),
                            ActionSchema(a, (-2.0,) * a, (2.0,) * a), float(FPS), 50)
        store = DemoStore.create(tmp_path / f"{name}.zarr", schema, TaskInfo(name, description, "toy/Env-v0", "1", "easy"))
        rng = np.random.default_rng(i)
        for j, length in enumerate(lengths):
            store.append_episode({"obs/corner2": smooth_frames(length, size, size, phase=(i + j) / 4),
                                  "obs/proprio": rng.standard_normal((length, 4)).astype(np.float32),
                                  "action": rng.standard_normal((length, a)).astype(np.float32)},
                                 seed=17 + 3 * j, success=j == 0, expert=f"expert-{i}")
        store.close()
        paths.append(store.path)
    return paths


def test_import_splits_a_lerobot_dataset_into_one_store_per_task(tmp_path):
    src = tmp_path / "lerobot"
    plan = [(BUTTON, 5), (STACK, 3), (BUTTON, 4), (STACK, 2), (BUTTON, 3)]
    written = write_lerobot(src, plan, extra=True)
    out = tmp_path / "stores"
    code = main(["import-lerobot", str(src), "--out", str(out), "--map", "observation.images.top=obs/corner2",
                 "--no-progress"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["button-press-topdown-v3.zarr", "stack-the-red-cube-on-the-blue-one.zarr"]

    known = DemoStore.open(out / "button-press-topdown-v3.zarr")
    assert known.task.name == "button-press-topdown-v3" and known.task.env_id == "Meta-World/MT1"  # the registry's identity
    assert known.schema.action == ActionSchema(4, (-1.0,) * 4, (1.0,) * 4)  # the registered task's bounds
    assert known.schema.observation == ObservationSchema((CameraSpec("corner2", 16, 16),), 4, "agent_pos", "full")
    assert known.schema.control_hz == FPS

    other = DemoStore.open(out / "stack-the-red-cube-on-the-blue-one.zarr")
    assert other.task.description == STACK
    actions = np.concatenate([w["action"] for w in written if w["task"] == STACK])
    assert other.schema.action.low == tuple(actions.min(axis=0).astype(float))  # the range the data spans
    assert other.schema.max_episode_steps == 3  # its longest episode
    assert other.created_with["source"] == str(src.resolve()) and other.created_with["task_index"] == 1

    for store, task in ((known, BUTTON), (other, STACK)):
        indices = [i for i, (t, _) in enumerate(plan) if t == task]
        assert store.episode_table()["seed"].tolist() == indices  # seed = LeRobot episode_index
        for episode, i in zip(store.iter_episodes(), indices, strict=True):
            np.testing.assert_array_equal(episode.arrays["obs/corner2"], written[i]["img"])  # PNG: lossless
            np.testing.assert_array_equal(episode.arrays["obs/proprio"], written[i]["state"])
            np.testing.assert_array_equal(episode.arrays["action"], written[i]["action"])


def test_import_resumes_skipping_episodes_it_already_has(tmp_path):
    src, out = tmp_path / "lerobot", tmp_path / "stores"
    write_lerobot(src, [(STACK, 3), (BUTTON, 2)])
    first = import_lerobot(src, out, progress=False)
    assert [(t.imported, t.skipped) for t in first.tasks] == [(1, 0), (1, 0)]
    again = import_lerobot(src, out, progress=False)
    assert [(t.imported, t.skipped) for t in again.tasks] == [(0, 1), (0, 1)] and again.frames == 0

    grown = write_lerobot(src, [(STACK, 4), (BUTTON, 5)], append=True)  # LeRobot resumes recording
    resumed = import_lerobot(src, out, progress=False)
    assert [(t.imported, t.skipped) for t in resumed.tasks] == [(1, 1), (1, 1)] and resumed.frames == 9
    store = DemoStore.open(out / "stack-the-red-cube-on-the-blue-one.zarr")
    assert store.episode_table()["seed"].tolist() == [0, 2]
    np.testing.assert_array_equal(store.episode(1).arrays["obs/top"], grown[0]["img"])
    assert store.validate()["episodes"] == 2


def test_import_errors_name_the_file_and_the_key(tmp_path):
    src = tmp_path / "lerobot"
    write_lerobot(src, [(STACK, 3)])
    with pytest.raises(LeRobotIOError, match=r"info\.json: no feature 'observation\.images\.wrist'.*observation\.images\.top"):
        import_lerobot(src, tmp_path / "a", overrides=["observation.images.wrist=obs/wrist"], progress=False)
    with pytest.raises(LeRobotIOError, match=r"observation\.state is float32, but obs/state is a camera"):
        import_lerobot(src, tmp_path / "b", overrides=["observation.state=obs/state"], progress=False)
    with pytest.raises(LeRobotIOError, match=r"nothing maps to \['obs/proprio'\]"):
        import_lerobot(src, tmp_path / "c", overrides=["observation.state="], progress=False)
    with pytest.raises(LeRobotIOError, match=r"not a LeRobotDataset \(no meta/info\.json\)"):
        import_lerobot(tmp_path, tmp_path / "d", progress=False)

    import_lerobot(src, tmp_path / "e", progress=False)
    other = tmp_path / "other"
    write_lerobot(other, [(STACK, 2)])
    with pytest.raises(LeRobotIOError, match=r"stack-the-red-cube-on-the-blue-one\.zarr: exists but was not written by importing task 0 of"):
        import_lerobot(other, tmp_path / "e", progress=False)

    info_path = src / "meta" / "info.json"  # declare a size the frames do not have
    info = json.loads(info_path.read_text())
    info["features"]["observation.images.top"]["shape"] = [20, 20, 3]
    info_path.write_text(json.dumps(info))
    with pytest.raises(LeRobotIOError, match=r"episode 0, observation\.images\.top: frame 0 is \[16, 16, 3\], expected \[20, 20, 3\]"):
        import_lerobot(src, tmp_path / "f", progress=False)
    assert main(["import-lerobot", str(src), "--out", str(tmp_path / "g"), "--no-progress"]) == 2  # CLI: exit 2


@pytest.mark.filterwarnings("ignore:The video decoding and encoding capabilities of torchvision are deprecated")
def test_export_is_opened_by_lerobots_loader_with_tasks_episodes_and_stats(tmp_path):
    stores = make_stores(tmp_path, [("push-toy", "Push the toy"), ("pull-toy", "Pull the toy")])
    out = tmp_path / "exported"
    assert main(["export-lerobot", *map(str, stores), "--out", str(out), "--no-progress"]) == 0

    ds = open_lerobot(out)  # LeRobot's LeRobotDataset, local only
    assert ds.fps == FPS and ds.num_episodes == 4 and ds.num_frames == 20
    assert ds.meta.tasks["task_index"].to_dict() == {"Push the toy": 0, "Pull the toy": 1}
    assert ds.meta.features["observation.images.corner2"]["dtype"] == "video"
    episodes = [ds.meta.episodes[i] for i in range(4)]
    assert [(e["tasks"], e["length"]) for e in episodes] == [(["Push the toy"], 6), (["Push the toy"], 4),
                                                            (["Pull the toy"], 6), (["Pull the toy"], 4)]
    item = ds[12]  # episode 2 (first of pull-toy), frame 2
    assert item["task"] == "Pull the toy" and int(item["episode_index"]) == 2 and int(item["frame_index"]) == 2
    second = DemoStore.open(stores[1]).episode(0).arrays
    np.testing.assert_array_equal(item["action"].numpy(), second["action"][2])
    np.testing.assert_array_equal(item["observation.state"].numpy(), second["obs/proprio"][2])
    assert tuple(item["observation.images.corner2"].shape) == (3, 32, 32)
    actions = np.concatenate([DemoStore.open(p).load().arrays["action"] for p in stores])
    np.testing.assert_allclose(ds.meta.stats["action"]["mean"], actions.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.meta.stats["action"]["max"], actions.max(axis=0))


@pytest.mark.parametrize("images", ["image", "video"])
def test_round_trip_store_lerobot_store(tmp_path, images):
    stores = make_stores(tmp_path, [("push-toy", "Push the toy"), ("pull-toy", "Pull the toy")])
    export_lerobot(stores, tmp_path / "lerobot", images=images, progress=False)
    report = import_lerobot(tmp_path / "lerobot", tmp_path / "back", progress=False)
    assert [t.store.name for t in report.tasks] == ["push-toy.zarr", "pull-toy.zarr"] and not report.warnings
    for path, task in zip(stores, report.tasks, strict=True):
        a, b = DemoStore.open(path).load(), DemoStore.open(task.store).load()
        assert (a.task, a.schema) == (b.task, b.schema)  # restored from meta/mt_policy.json
        for column in ("seed", "length", "success"):
            np.testing.assert_array_equal(a.episodes[column], b.episodes[column])
        np.testing.assert_array_equal(a.arrays["obs/proprio"], b.arrays["obs/proprio"])  # exact
        np.testing.assert_array_equal(a.arrays["action"], b.arrays["action"])
        error = np.abs(a.arrays["obs/corner2"].astype(int) - b.arrays["obs/corner2"])
        if images == "image":
            assert error.max() == 0  # PNG is lossless
        else:  # libsvtav1 video: lossy, bounded (see VIDEO_MEAN_ERROR), and every frame decodes to itself
            assert error.mean() <= VIDEO_MEAN_ERROR and np.percentile(error, 99) <= VIDEO_P99_ERROR, error.mean()
            assert error.max() <= VIDEO_MAX_ERROR
            for start, stop in zip([0, *a.episode_ends[:-1]], a.episode_ends, strict=True):
                original, decoded = a.arrays["obs/corner2"][start:stop], b.arrays["obs/corner2"][start:stop]
                nearest = [int(np.argmin(np.abs(original - f.astype(int)).mean(axis=(1, 2, 3)))) for f in decoded]
                assert nearest == list(range(stop - start))  # no frame shifted by the timestamp lookup


def test_import_without_the_sidecar_uses_episode_indices_and_descriptions(tmp_path):
    stores = make_stores(tmp_path, [("push-toy", "Push the toy")], size=16)
    export_lerobot(stores, tmp_path / "lerobot", images="image", progress=False)
    (tmp_path / "lerobot" / SIDECAR).unlink()  # as if LeRobot's tools had rewritten the dataset
    report = import_lerobot(tmp_path / "lerobot", tmp_path / "back", task_names={0: "toy"}, progress=False)
    back = DemoStore.open(report.tasks[0].store)
    assert back.task == TaskInfo("toy", "Push the toy", "") and back.episode_table()["seed"].tolist() == [0, 1]
    np.testing.assert_array_equal(back.load().arrays["obs/corner2"], DemoStore.open(stores[0]).load().arrays["obs/corner2"])


def test_a_grown_export_ignores_its_stale_sidecar_and_never_mixes_seed_sources(tmp_path):
    stores = make_stores(tmp_path, [("push-toy", "Push the toy")], size=16)
    export_lerobot(stores, tmp_path / "lerobot", images="image", progress=False)
    import_lerobot(tmp_path / "lerobot", tmp_path / "back", progress=False)  # the stores' seeds 17, 20
    write_lerobot(tmp_path / "lerobot", [("Push the toy", 3)], image_key="observation.images.corner2", action=3,
                  append=True)  # LeRobot's tools know nothing of meta/mt_policy.json
    with pytest.raises(LeRobotIOError, match=r"push-toy\.zarr: already holds task_index 0 of .*push-the-toy\.zarr"):
        import_lerobot(tmp_path / "lerobot", tmp_path / "back", progress=False)  # would duplicate it as seeds 0, 1, 2
    with pytest.raises(LeRobotIOError, match=r"push-toy\.zarr: exists but was not written by .* seed source"):
        import_lerobot(tmp_path / "lerobot", tmp_path / "back", task_names={0: "push-toy"}, progress=False)
    report = import_lerobot(tmp_path / "lerobot", tmp_path / "fresh", progress=False)
    assert "does not describe this dataset's episodes" in report.warnings[0]
    assert DemoStore.open(report.tasks[0].store).episode_table()["seed"].tolist() == [0, 1, 2]


def test_export_refuses_what_a_lerobot_dataset_cannot_hold(tmp_path):
    mixed = make_stores(tmp_path, [("a", "Task a"), ("b", "Task b")], action_sizes={"b": 2})
    with pytest.raises(LeRobotIOError, match=r"b\.zarr and .*a\.zarr differ in action: float32\[3\] vs float32\[2\]"):
        export_lerobot(mixed, tmp_path / "x", progress=False)
    (tmp_path / "s").mkdir()
    (tmp_path / "t").mkdir()
    same = make_stores(tmp_path / "s", [("c", "Same words"), ("d", "Same words")])
    with pytest.raises(LeRobotIOError, match="both describe their task as 'Same words'"):
        export_lerobot(same, tmp_path / "y", progress=False)
    small = make_stores(tmp_path / "t", [("e", "Small")], size=16)
    with pytest.raises(LeRobotIOError, match=r"16x16: libsvtav1 needs at least 32x32"):  # SVT-AV1 would SIGFPE
        export_lerobot(small, tmp_path / "z", progress=False)
    assert not (tmp_path / "z").exists() and not (tmp_path / "z.partial").exists()
    with pytest.raises(LeRobotIOError, match="already exists"):
        export_lerobot(small, tmp_path, progress=False)


def test_key_map_overrides_replace_pairs_sharing_either_key():
    schema = TaskSchema(ObservationSchema((CameraSpec("corner2", 16, 16),), 4), ActionSchema(2, (-1, -1), (1, 1)), 10.0, 5)
    key_map = KeyMap.for_schema(schema).with_overrides(["observation.image=obs/corner2"])
    assert key_map.to_lerobot() == {"obs/corner2": "observation.image", "obs/proprio": "observation.state",
                                    "action": "action"}
    assert "observation.state" not in KeyMap.for_schema(schema).with_overrides(["observation.state="]).to_store()
    with pytest.raises(MtPolicyError, match="expected LEROBOT_KEY=STORE_KEY"):
        key_map.with_overrides(["observation.image"])
    with pytest.raises(MtPolicyError, match="store key must be"):
        key_map.with_overrides(["observation.image=images/top"])
    with pytest.raises(MtPolicyError, match="not a usable LeRobot feature name"):
        key_map.with_overrides(["timestamp=obs/proprio"])
