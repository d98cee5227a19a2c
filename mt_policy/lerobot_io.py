"""Conversion between our demo stores and LeRobotDataset v3.0; LeRobot's own reader and writer do the file work.

Import (`import_lerobot`): a local LeRobotDataset becomes one demo store per `task_index`
(`<out>/<task name>.zarr`), its frames mapped through a `KeyMap`. An imported episode's `seed` is its
LeRobot `episode_index` (it is not a simulator seed), or the original store seed when the dataset
was written by `export_lerobot` (see below). Re-running skips episodes already imported, so an
interrupted import resumes.

Export (`export_lerobot`): several stores, one task each, become one multitask LeRobotDataset (task
descriptions as LeRobot tasks; LeRobot writes the tasks table, episode index and stats). Beside
LeRobot's files it writes `meta/mt_policy.json` (each task's TaskInfo and schema, each episode's seed,
success and expert), which LeRobot ignores and `import_lerobot` uses to restore stores exactly.

Nothing here reaches the Hugging Face hub: datasets are read from and written to local paths only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mt_policy.demo_store import DemoStore
from mt_policy.errors import MtPolicyError, SchemaError
from mt_policy.schema import (
    ACTION_KEY,
    PROPRIO_KEY,
    ActionSchema,
    CameraSpec,
    ObservationSchema,
    TaskInfo,
    TaskSchema,
    camera_key,
)

SIDECAR = "meta/mt_policy.json"
SIDECAR_FORMAT = "mt_policy.lerobot_export"
IMPORTER = "mt-policy import-lerobot"
IMAGE_STORAGE = ("video", "image")
VIDEO_CODECS = ("libsvtav1", "h264", "hevc")
SVTAV1_MIN_SIDE = 32  # SVT-AV1 kills the process (SIGFPE) on frames smaller than about 26 px
_LEROBOT_RESERVED = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_STORE_KEY = re.compile(r"^(action|obs/[A-Za-z][A-Za-z0-9_]*)$")
_DECODE_CHUNK = 32  # video frames decoded per call (as float32, so keep it small)


class LeRobotIOError(MtPolicyError):
    """A LeRobot dataset or a store cannot be converted: missing keys, mismatched shapes, bad options."""


# ---------------------------------------------------------------------------------------- key mapping
@dataclass(frozen=True)
class KeyMap:
    """Which LeRobot feature holds which store array: (LeRobot key, store key) pairs, one per array.

    Defaults: `observation.images.<cam>` <-> `obs/<cam>`, `observation.state` <-> `obs/proprio`,
    `action` <-> `action` (on import `observation.image`, LeRobot's single-camera key, -> `obs/image`).
    Override with `LEROBOT_KEY=STORE_KEY` items; on import `LEROBOT_KEY=` leaves a feature out.
    """

    pairs: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple((str(lk), str(sk)) for lk, sk in self.pairs))
        lerobot_keys, store_keys = [lk for lk, _ in self.pairs], [sk for _, sk in self.pairs]
        for lk, sk in self.pairs:
            if not _STORE_KEY.match(sk):
                raise LeRobotIOError(f"key map {lk}={sk}: store key must be 'action', 'obs/proprio' or 'obs/<camera>'")
            if not lk or "/" in lk or lk in _LEROBOT_RESERVED:
                raise LeRobotIOError(f"key map {lk}={sk}: {lk!r} is not a usable LeRobot feature name "
                                     f"(no '/', not one of {list(_LEROBOT_RESERVED)})")
        for keys, side in ((lerobot_keys, "LeRobot"), (store_keys, "store")):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            if dup:
                raise LeRobotIOError(f"key map: {side} key(s) {dup} mapped more than once: {self.as_text()}")

    @classmethod
    def for_schema(cls, schema: TaskSchema) -> KeyMap:
        """The default export map of a store schema."""
        pairs = [(f"observation.images.{c.name}", camera_key(c.name)) for c in schema.observation.cameras]
        return cls((*pairs, ("observation.state", PROPRIO_KEY), ("action", ACTION_KEY)))

    @classmethod
    def for_features(cls, features: Mapping[str, Mapping[str, Any]]) -> KeyMap:
        """The default import map of a dataset's features (image/video features by name, state, action)."""
        pairs = []
        for key, ft in features.items():
            if ft.get("dtype") in ("image", "video"):
                if key == "observation.image":
                    pairs.append((key, "obs/image"))
                elif key.startswith("observation.images.") and re.match(r"^[A-Za-z][A-Za-z0-9_]*$", key[19:]):
                    pairs.append((key, camera_key(key[19:])))
        pairs += [(k, sk) for k, sk in (("observation.state", PROPRIO_KEY), ("action", ACTION_KEY)) if k in features]
        return cls(tuple(pairs))

    def with_overrides(self, overrides: Iterable[str] | Mapping[str, str]) -> KeyMap:
        """This map with `LEROBOT_KEY=STORE_KEY` overrides; each replaces any pair sharing either key."""
        items = overrides.items() if isinstance(overrides, Mapping) else [parse_map_item(o) for o in overrides]
        pairs = list(self.pairs)
        for lk, sk in items:
            pairs = [(a, b) for a, b in pairs if a != lk and (not sk or b != sk)]
            if sk:
                pairs.append((lk, sk))
        return KeyMap(tuple(pairs))

    def to_store(self) -> dict[str, str]:
        return dict(self.pairs)

    def to_lerobot(self) -> dict[str, str]:
        return {sk: lk for lk, sk in self.pairs}

    def as_text(self) -> str:
        return ", ".join(f"{lk}={sk}" for lk, sk in self.pairs)


def parse_map_item(item: str) -> tuple[str, str]:
    """`'observation.images.top=obs/corner2'` -> `('observation.images.top', 'obs/corner2')`."""
    lk, sep, sk = item.partition("=")
    if not sep or not lk.strip():
        raise LeRobotIOError(f"--map {item!r}: expected LEROBOT_KEY=STORE_KEY, e.g. observation.images.top=obs/corner2")
    return lk.strip(), sk.strip()


# ---------------------------------------------------------------------------------------- lerobot access
def _lerobot_dataset_class() -> Any:
    """LeRobot's `LeRobotDataset`, imported lazily (it pulls in torch and datasets); hub access off."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local paths only; never fall back to a download
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError as err:
        raise LeRobotIOError(f"this needs LeRobot ({err}); install it with pip install -e '.[lerobot]'") from None
    return LeRobotDataset


def lerobot_metaworld_descriptions() -> dict[str, str]:
    """LeRobot's Meta-World task descriptions (task name -> text), read from its config file; {} without LeRobot."""
    import importlib.util

    spec = importlib.util.find_spec("lerobot")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(spec.submodule_search_locations[0]) / "envs" / "metaworld_config.json"
    try:
        return {str(k): str(v) for k, v in json.loads(path.read_text())["TASK_DESCRIPTIONS"].items()}
    except (OSError, ValueError, KeyError, AttributeError):
        return {}


def _video_backend() -> str:
    """torchcodec when its FFmpeg libraries load, else PyAV (LeRobot picks torchcodec whenever it is installed)."""
    try:
        import torchcodec.decoders  # noqa: F401  (raises when no matching FFmpeg libraries are installed)
    except Exception:  # ImportError or torchcodec's RuntimeError
        return "pyav"
    return "torchcodec"


def _check_local_dataset(root: Path) -> dict[str, Any]:
    """The dataset's info.json, after checking the files LeRobot would otherwise try to download."""
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise LeRobotIOError(f"{root}: not a LeRobotDataset (no meta/info.json)")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as err:
        raise LeRobotIOError(f"{info_path}: unreadable ({type(err).__name__}: {err})") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        raise LeRobotIOError(f"{info_path}: codebase_version {version!r}, expected v3.x (convert older datasets "
                             f"with python -m lerobot.datasets.v30.convert_dataset_v21_to_v30)")
    if not (root / "meta" / "tasks.parquet").is_file():
        raise LeRobotIOError(f"{root}: no meta/tasks.parquet (the tasks table)")
    if not any((root / "meta" / "episodes").glob("*/*.parquet")):
        raise LeRobotIOError(f"{root}: no meta/episodes/*/*.parquet (the episode index); was finalize() called?")
    if int(info.get("total_episodes", 0)) < 1:
        raise LeRobotIOError(f"{info_path}: the dataset has no episodes")
    return info


def open_lerobot(root: str | Path) -> Any:
    """Open a local LeRobotDataset v3.x with LeRobot's own loader, never touching the hub."""
    root = Path(root)
    _check_local_dataset(root)
    cls = _lerobot_dataset_class()
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    repo_id = f"local/{root.name}"
    try:
        meta = LeRobotDatasetMetadata(repo_id, root=root)
        for ep in range(meta.total_episodes):
            files = [meta.get_data_file_path(ep)] + [meta.get_video_file_path(ep, k) for k in meta.video_keys]
            missing = [str(f) for f in files if not (root / f).is_file()]
            if missing:
                raise LeRobotIOError(f"{root}: episode {ep} needs {missing}, which are missing")
        return cls(repo_id, root=root, video_backend=_video_backend())
    except MtPolicyError:
        raise
    except Exception as err:  # LeRobot, datasets and pyarrow raise many types for damaged files
        raise LeRobotIOError(f"{root}: LeRobot cannot read this dataset ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------------------------------- import
@dataclass(frozen=True)
class KnownTask:
    """A registered task an imported LeRobot task can be identified with (matched by description or name)."""

    info: TaskInfo
    action: ActionSchema
    max_episode_steps: int
    proprio_sources: Mapping[int, str] = field(default_factory=dict)
    """Proprio size -> source name (e.g. 4 -> agent_pos, 39 -> full_state)."""


@dataclass
class ImportedTask:
    task_index: int
    info: TaskInfo
    store: Path
    imported: int = 0
    skipped: int = 0


@dataclass
class ImportReport:
    source: Path
    fps: int
    key_map: KeyMap
    tasks: list[ImportedTask]
    frames: int = 0
    ignored_features: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Episode:
    index: int
    task_index: int
    length: int
    seed: int
    success: bool
    expert: str


def slug(text: str) -> str:
    """A task-name slug of a description: lower case, runs of other characters -> '-', at most 60 characters."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60].rstrip("-")


def import_lerobot(src: str | Path, out_dir: str | Path, *, overrides: Iterable[str] | Mapping[str, str] = (),
                   task_names: Mapping[int, str] | None = None,
                   identify: Callable[[str], KnownTask | None] | None = None, progress: bool = True) -> ImportReport:
    """Convert a local LeRobotDataset v3.x into one demo store per task under `out_dir`, resuming a previous run.

    `overrides` adjust the key map (`LEROBOT_KEY=STORE_KEY`); `task_names` name tasks by `task_index`.
    `identify(text)` returns the registered task a description (or a `task_names` name) denotes, if
    any: such a task keeps its registered identity, action schema and step limit. Other tasks are named
    by a slug of their description; their action bounds are the range the data spans (LeRobot records
    none) and their step limit is their longest episode. Datasets written by `export_lerobot` get
    their stores' identities and schemas back. Images are recorded as `render_quality="full"`.
    """
    src, out_dir = Path(src), Path(out_dir)
    ds = open_lerobot(src)
    episodes, sidecar, notes = _plan_episodes(ds, _read_sidecar(src))
    base = KeyMap(tuple(sidecar["key_map"])) if sidecar else KeyMap.for_features(ds.meta.features)
    key_map = base.with_overrides(overrides)
    _check_import_map(src, ds.meta.features, key_map)
    ignored = sorted(set(ds.meta.features) - set(key_map.to_store()) - set(_LEROBOT_RESERVED))
    report = ImportReport(src, int(ds.meta.fps), key_map, [], ignored_features=ignored, warnings=notes)
    stores: dict[int, DemoStore] = {}
    try:
        named = _name_tasks(ds, sorted({e.task_index for e in episodes}), sidecar, task_names or {},
                            identify or (lambda _: None))
        _check_earlier_imports(out_dir, src, {t: out_dir / f"{info.name}.zarr" for t, (info, _) in named.items()})
        for t, (info, known) in named.items():
            schema = _import_schema(ds, key_map, t, [e for e in episodes if e.task_index == t], sidecar, known, info)
            origin = {"importer": IMPORTER, "source": str(src.resolve()), "task_index": t,
                      "key_map": [list(p) for p in key_map.pairs], "seeds": "store seeds" if sidecar else "episode_index"}
            stores[t] = _open_import_store(out_dir / f"{info.name}.zarr", schema, info, origin)
            report.tasks.append(ImportedTask(t, info, stores[t].path))
        _copy_episodes(ds, key_map, episodes, stores, report, progress)
    finally:
        for store in stores.values():
            store.close()
    return report


def _copy_episodes(ds: Any, key_map: KeyMap, episodes: list[_Episode], stores: dict[int, DemoStore],
                   report: ImportReport, progress: bool) -> None:
    """Append every episode a store does not hold yet (by seed), one atomic append each."""
    from mt_policy.progress import progress_bar

    tasks = {r.task_index: r for r in report.tasks}
    done = {t: set(s.episode_table()["seed"].tolist()) for t, s in stores.items()}
    todo = [ep for ep in episodes if ep.seed not in done[ep.task_index]]
    for ep in episodes:
        tasks[ep.task_index].skipped += ep.seed in done[ep.task_index]
    columns = [lk for lk in key_map.to_store() if ds.meta.features[lk]["dtype"] != "video"]
    hf = ds.hf_dataset.with_format("numpy", columns=[*columns, "index", "episode_index", "timestamp"])
    bar = progress_bar(len(episodes), "import-lerobot", "ep", progress, initial=len(episodes) - len(todo))
    try:
        for ep in todo:
            arrays = _read_episode(ds, hf, ep, key_map, stores[ep.task_index].schema)
            stores[ep.task_index].append_episode(arrays, seed=ep.seed, success=ep.success, expert=ep.expert)
            tasks[ep.task_index].imported += 1
            report.frames += ep.length
            bar.update(1)
    finally:
        bar.close()


def _check_import_map(src: Path, features: Mapping[str, Any], key_map: KeyMap) -> None:
    where = src / "meta" / "info.json"
    listing = ", ".join(f"{k} ({ft.get('dtype')})" for k, ft in features.items() if k not in _LEROBOT_RESERVED)
    for lk, sk in key_map.pairs:
        ft = features.get(lk)
        if ft is None:
            raise LeRobotIOError(f"{where}: no feature {lk!r} (mapped to {sk}); the dataset has {listing}; "
                                 f"choose one with --map LEROBOT_KEY={sk}")
        dtype, shape = ft.get("dtype"), tuple(ft.get("shape") or ())
        if sk.startswith("obs/") and sk != PROPRIO_KEY:
            if dtype not in ("image", "video"):
                raise LeRobotIOError(f"{where}: {lk} is {dtype}, but {sk} is a camera: expected an image or video feature")
            _image_hw(where, lk, ft)
        elif dtype not in ("float32", "float64") or len(shape) != 1 or shape[0] < 1:
            raise LeRobotIOError(f"{where}: {lk} is {dtype}{list(shape)}, but {sk} needs a float vector (shape [n])")
    missing = [sk for sk in (PROPRIO_KEY, ACTION_KEY) if sk not in key_map.to_lerobot()]
    if missing:
        raise LeRobotIOError(f"{where}: nothing maps to {missing} (features: {listing}); add --map LEROBOT_KEY={missing[0]}")


def _image_hw(where: Any, key: str, ft: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) of an image/video feature; its shape is (H, W, 3), or (3, H, W) when its names say so."""
    shape, names = tuple(ft.get("shape") or ()), list(ft.get("names") or [])
    if len(shape) != 3:
        raise LeRobotIOError(f"{where}: {key} has shape {list(shape)}, expected (height, width, 3)")
    channels_first = bool(names) and str(names[0]).startswith("channel")
    h, w, c = (shape[1], shape[2], shape[0]) if channels_first else shape
    if c != 3:
        raise LeRobotIOError(f"{where}: {key} has {c} channels, expected RGB (3)")
    return int(h), int(w)


def _read_sidecar(src: Path) -> dict[str, Any] | None:
    path = src / SIDECAR
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LeRobotIOError(f"{path}: unreadable ({type(err).__name__}: {err}); delete it to import without it") from None
    if data.get("format") != SIDECAR_FORMAT:
        raise LeRobotIOError(f"{path}: 'format' is {data.get('format')!r}, expected {SIDECAR_FORMAT!r}")
    return data


def _plan_episodes(ds: Any, sidecar: dict[str, Any] | None) -> tuple[list[_Episode], dict[str, Any] | None, list[str]]:
    """Every episode's task, length and store identity (seed, success, expert), from LeRobot's episode index;
    the sidecar if it describes these episodes (else None, with a warning)."""
    meta, where = ds.meta, ds.root / "meta" / "episodes"
    episodes = []
    for i in range(meta.total_episodes):
        row = meta.episodes[i]
        names = list(row["tasks"])
        if len(names) != 1:
            raise LeRobotIOError(f"{where}: episode {i} has tasks {names}; a demo store episode has exactly one task")
        if int(row["episode_index"]) != i:
            raise LeRobotIOError(f"{where}: row {i} holds episode {row['episode_index']}; expected episodes in order")
        task_index = meta.get_task_index(names[0])
        if task_index is None:
            raise LeRobotIOError(f"{where}: episode {i} has task {names[0]!r}, which is not in meta/tasks.parquet")
        episodes.append(_Episode(i, int(task_index), int(row["length"]), i, True, f"lerobot:{ds.repo_id}"))
    if sidecar is None:
        return episodes, None, []
    recorded = sidecar.get("episodes", [])
    same = len(recorded) == len(episodes) and all(
        (r["episode_index"], r["task_index"], r["length"]) == (e.index, e.task_index, e.length)
        for r, e in zip(recorded, episodes, strict=True))
    if not same:
        return episodes, None, [f"{ds.root / SIDECAR} does not describe this dataset's episodes (edited by other "
                                f"tools?); ignored it: seeds are LeRobot episode indices"]
    return [replace(e, seed=int(r["seed"]), success=bool(r["success"]), expert=str(r["expert"]))
            for r, e in zip(recorded, episodes, strict=True)], sidecar, []


def _name_tasks(ds: Any, indices: list[int], sidecar: dict[str, Any] | None, task_names: Mapping[int, str],
                identify: Callable[[str], KnownTask | None]) -> dict[int, tuple[TaskInfo, KnownTask | None]]:
    """Each task's identity: the exporting store's, else a known task's, else a slug; `task_names` rename."""
    descriptions = {int(t): str(d) for d, t in zip(ds.meta.tasks.index, ds.meta.tasks["task_index"], strict=True)}
    unknown = sorted(set(task_names) - set(descriptions))
    if unknown:
        raise LeRobotIOError(f"--task-name: task index(es) {unknown} not in the dataset (it has {sorted(descriptions)})")
    recorded = {int(t["task_index"]): TaskInfo.from_dict(t["task"]) for t in (sidecar or {}).get("tasks", [])}
    out: dict[int, tuple[TaskInfo, KnownTask | None]] = {}
    for t in indices:
        desc = descriptions[t]
        known = identify(task_names.get(t, desc))
        if t in recorded:
            info = recorded[t]
        elif known is not None:
            info = known.info
        else:
            info = TaskInfo(slug(desc) or f"task-{t}", desc, env_id="")
        out[t] = (replace(info, name=task_names[t]) if t in task_names else info), known
    names = [info.name for info, _ in out.values()]
    for t, (info, _) in out.items():
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", info.name):
            raise LeRobotIOError(f"task {t} ({descriptions[t]!r}): name {info.name!r} is not a usable store name")
        if names.count(info.name) > 1:
            raise LeRobotIOError(f"tasks {[k for k, v in out.items() if v[0].name == info.name]} would all be named "
                                 f"{info.name!r}; name them with --task-name INDEX=NAME")
    return out


def _import_schema(ds: Any, key_map: KeyMap, task_index: int, episodes: list[_Episode], sidecar: dict[str, Any] | None,
                   known: KnownTask | None, info: TaskInfo) -> TaskSchema:
    """One task's store schema: shapes from the features, rate from fps, actions as `import_lerobot` says."""
    features, where = ds.meta.features, ds.root / "meta" / "info.json"
    cameras = []
    for lk, sk in key_map.pairs:
        if sk.startswith("obs/") and sk != PROPRIO_KEY:
            h, w = _image_hw(where, lk, features[lk])
            try:
                cameras.append(CameraSpec(sk[4:], h, w))
            except SchemaError as err:
                raise LeRobotIOError(f"{where}: {lk}: {err}") from None
    lerobot = key_map.to_lerobot()
    proprio_size = int(features[lerobot[PROPRIO_KEY]]["shape"][0])
    action_size = int(features[lerobot[ACTION_KEY]]["shape"][0])
    if known is not None and known.action.size != action_size:
        raise LeRobotIOError(f"{where}: {lerobot[ACTION_KEY]} is {action_size}-D, but task {info.name} "
                             f"(task_index {task_index}) has {known.action.size}-D actions")
    if known is not None:
        action, max_steps = known.action, known.max_episode_steps
        proprio_source = known.proprio_sources.get(proprio_size, "agent_pos")
    else:
        action, max_steps, proprio_source = _observed_action(ds, lerobot[ACTION_KEY], task_index), 1, "agent_pos"
    schema = TaskSchema(ObservationSchema(tuple(cameras), proprio_size, proprio_source, render_quality="full"),
                        action, float(ds.meta.fps), max(max_steps, *(e.length for e in episodes)))
    for t in (sidecar or {}).get("tasks", []):
        if int(t["task_index"]) == task_index:
            recorded = TaskSchema.from_dict(t["schema"], where=str(ds.root / SIDECAR))
            same_map = set(KeyMap(tuple(sidecar["key_map"])).pairs) == set(key_map.pairs)
            if same_map and recorded.frame_specs() == schema.frame_specs():
                return recorded
    return schema


def _observed_action(ds: Any, key: str, task_index: int) -> ActionSchema:
    """The range a task's actions span in the dataset (LeRobot datasets record no action bounds)."""
    columns = ds.hf_dataset.with_format("numpy", columns=[key, "task_index"])[:]
    values = np.asarray(columns[key], dtype=np.float64)[np.asarray(columns["task_index"]) == task_index]
    if not np.isfinite(values).all():
        raise LeRobotIOError(f"{ds.root}: {key} of task_index {task_index} holds NaN/inf")
    return ActionSchema(values.shape[1], tuple(values.min(axis=0)), tuple(values.max(axis=0)))


def _check_earlier_imports(out_dir: Path, src: Path, paths: Mapping[int, Path]) -> None:
    """Refuse to import a task a store in `out_dir` already holds under another name (it would be duplicated)."""
    for existing in sorted(out_dir.glob("*.zarr")) if out_dir.is_dir() else []:
        try:
            was = DemoStore.open(existing).created_with
        except MtPolicyError:
            continue  # not a store: not ours to judge
        t = was.get("task_index")
        if was.get("importer") == IMPORTER and was.get("source") == str(src.resolve()) and t in paths \
                and paths[t] != existing:
            raise LeRobotIOError(f"{existing}: already holds task_index {t} of {src}, which this run would write to "
                                 f"{paths[t]} (its name changed: --task-name, or meta/mt_policy.json no longer "
                                 f"applies); use another --out")


def _open_import_store(path: Path, schema: TaskSchema, info: TaskInfo, origin: dict[str, Any]) -> DemoStore:
    """Create the task's store, or reopen one the same import (source, task, key map, seed source) wrote, to resume.

    `origin["seeds"]` says where seeds come from: "episode_index", or "store seeds" (from meta/mt_policy.json).
    """
    if not path.exists():
        return DemoStore.create(path, schema, info, created_with=origin)
    store = DemoStore.open(path, mode="a")
    was = store.created_with
    if {k: was.get(k) for k in origin} != origin:
        store.close()
        raise LeRobotIOError(f"{path}: exists but was not written by importing task {origin['task_index']} of "
                             f"{origin['source']} with this key map and seed source (it records {was or 'no origin'}); "
                             f"use another --out")
    if store.schema.frame_specs() != schema.frame_specs() or store.schema.control_hz != schema.control_hz:
        store.close()
        raise LeRobotIOError(f"{path}: holds {store.schema.to_dict()}, but {origin['source']} now gives "
                             f"{schema.to_dict()}; use another --out")
    return store


def _read_episode(ds: Any, hf: Any, ep: _Episode, key_map: KeyMap, schema: TaskSchema) -> dict[str, np.ndarray]:
    """One episode's arrays keyed like the store, each checked against the store's shapes."""
    row = ds.meta.episodes[ep.index]
    start, stop = int(row["dataset_from_index"]), int(row["dataset_to_index"])
    cols = hf[start:stop]
    where = f"{ds.root}: episode {ep.index}"
    if stop - start != ep.length or not np.array_equal(cols["index"], np.arange(start, stop)) \
            or not (np.asarray(cols["episode_index"]) == ep.index).all():
        raise LeRobotIOError(f"{where}: data rows {start}..{stop} do not hold this episode's frames in order")
    specs, arrays = schema.frame_specs(), {}
    for lk, sk in key_map.pairs:
        shape, dtype = specs[sk]
        if dtype == np.uint8:
            if ds.meta.features[lk]["dtype"] == "video":
                frames = _decode_video(ds, row, lk, np.asarray(cols["timestamp"], dtype=np.float64))
            else:
                frames = cols[lk]
            arrays[sk] = _stack_images(frames, shape, f"{where}, {lk}")
        else:
            values = np.asarray(cols[lk])
            if values.shape != (ep.length, *shape):
                raise LeRobotIOError(f"{where}, {lk}: shape {list(values.shape[1:])} per frame, expected {list(shape)}")
            arrays[sk] = values.astype(np.float32)
    return arrays


def _stack_images(frames: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """(T, H, W, 3) uint8 from decoded frames, naming the first frame whose size differs."""
    out = np.empty((len(frames), *shape), dtype=np.uint8)
    for i, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8:  # decoded video: float in [0, 1], channels first
            frame = np.clip(np.rint(np.moveaxis(frame, 0, -1) * 255.0), 0, 255).astype(np.uint8)
        if frame.shape != shape:
            raise LeRobotIOError(f"{where}: frame {i} is {list(frame.shape)}, expected {list(shape)} "
                                 f"(the feature's declared shape); frames of one key must share a size")
        out[i] = frame
    return out


def _decode_video(ds: Any, row: Mapping[str, Any], key: str, timestamps: np.ndarray) -> list[np.ndarray]:
    """An episode's frames of one video feature, decoded by LeRobot's decoder a chunk at a time."""
    from lerobot.datasets.video_utils import decode_video_frames

    path = ds.root / ds.meta.get_video_file_path(int(row["episode_index"]), key)
    shifted = (float(row[f"videos/{key}/from_timestamp"]) + timestamps).tolist()
    frames: list[np.ndarray] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's video-API deprecation notice, once per call
        for i in range(0, len(shifted), _DECODE_CHUNK):
            try:
                decoded = decode_video_frames(path, shifted[i:i + _DECODE_CHUNK], ds.tolerance_s, ds.video_backend)
            except Exception as err:
                raise LeRobotIOError(f"{path}: cannot decode {key} of episode {row['episode_index']} "
                                     f"({type(err).__name__}: {err})") from None
            frames.extend(decoded.numpy())
    return frames


# ---------------------------------------------------------------------------------------- export
@dataclass
class ExportReport:
    root: Path
    repo_id: str
    fps: int
    key_map: KeyMap
    tasks: dict[int, str]
    """task_index -> description."""
    episodes: int
    frames: int
    images: str
    vcodec: str | None


def export_lerobot(stores: Sequence[str | Path], out: str | Path, *, repo_id: str | None = None,
                   overrides: Iterable[str] | Mapping[str, str] = (), images: str = "video", vcodec: str = "libsvtav1",
                   progress: bool = True) -> ExportReport:
    """Write demo stores (one task each) as one LeRobotDataset v3.0 at `out`, which must not exist.

    Images go to `images` = "video" (LeRobot's default, lossy, `vcodec`) or "image" (PNG, lossless).
    The dataset is built in `<out>.partial` and renamed when complete, so `out` is never half written.
    """
    from mt_policy.progress import progress_bar

    if images not in IMAGE_STORAGE:
        raise LeRobotIOError(f"images must be one of {IMAGE_STORAGE}, got {images!r}")
    if vcodec not in VIDEO_CODECS:
        raise LeRobotIOError(f"vcodec must be one of {VIDEO_CODECS}, got {vcodec!r}")
    out = Path(out)
    if out.exists():
        raise LeRobotIOError(f"{out}: already exists; remove it or choose another --out")
    opened = [DemoStore.open(p) for p in stores]
    if not opened:
        raise LeRobotIOError("no stores to export")
    schema, fps = _common_schema(opened)
    key_map = KeyMap.for_schema(schema).with_overrides(overrides)
    _check_export_map(schema, key_map)
    features = _export_features(schema, key_map, images)
    if images == "video":
        _check_video_size(schema, vcodec)
    descriptions = _task_descriptions(opened)
    cls = _lerobot_dataset_class()
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted export
    repo_id = repo_id or f"local/{out.name}"
    ds = cls.create(repo_id, fps, features, root=partial, use_videos=images == "video", vcodec=vcodec)
    to_lerobot = key_map.to_lerobot()
    total = sum(s.n_episodes for s in opened)
    rows, frames = [], 0
    bar = progress_bar(total, "export-lerobot", "ep", progress)
    try:
        for task_index, store in enumerate(opened):
            for episode in store.iter_episodes():
                for t in range(len(episode)):
                    ds.add_frame({to_lerobot[k]: v[t] for k, v in episode.arrays.items()} | {"task": descriptions[task_index]})
                ds.save_episode()
                rows.append({"episode_index": len(rows), "task_index": task_index, "length": len(episode),
                             "seed": episode.seed, "success": episode.success, "expert": episode.expert})
                frames += len(episode)
                bar.update(1)
        ds.finalize()
    finally:
        bar.close()
    _write_sidecar(partial, opened, key_map, rows)
    partial.rename(out)
    return ExportReport(out, repo_id, fps, key_map, dict(enumerate(descriptions)), len(rows), frames, images,
                        vcodec if images == "video" else None)


def _common_schema(stores: list[DemoStore]) -> tuple[TaskSchema, int]:
    """The schema every store shares (a LeRobot dataset has one feature set and one fps), and that fps."""
    first = stores[0]
    for store in stores:
        if store.n_episodes == 0:
            raise LeRobotIOError(f"{store.path}: holds no episodes")
        specs, ref = store.schema.frame_specs(), first.schema.frame_specs()
        if specs != ref:
            diff = sorted(k for k in set(specs) | set(ref) if specs.get(k) != ref.get(k))
            detail = "; ".join(f"{k}: {_spec(ref.get(k))} vs {_spec(specs.get(k))}" for k in diff)
            raise LeRobotIOError(f"{store.path} and {first.path} differ in {detail}: a LeRobot dataset has one shape "
                                 f"per feature (for action sizes differing per task, export those stores separately)")
        if store.schema.control_hz != first.schema.control_hz:
            raise LeRobotIOError(f"{store.path} runs at {store.schema.control_hz:g} Hz, {first.path} at "
                                 f"{first.schema.control_hz:g} Hz: a LeRobot dataset has one fps")
    hz = first.schema.control_hz
    if not float(hz).is_integer():
        raise LeRobotIOError(f"{first.path}: control rate {hz:g} Hz is not a whole number, but LeRobot's fps is an integer")
    return first.schema, int(hz)


def _spec(spec: tuple[tuple[int, ...], np.dtype] | None) -> str:
    return "absent" if spec is None else f"{spec[1]}{list(spec[0])}"


def _check_export_map(schema: TaskSchema, key_map: KeyMap) -> None:
    have, mapped = set(schema.frame_specs()), set(key_map.to_lerobot())
    if have - mapped or mapped - have:
        raise LeRobotIOError(f"key map {key_map.as_text()}: every store key must be mapped exactly once "
                             f"(unmapped {sorted(have - mapped)}, not in the stores {sorted(mapped - have)})")


def _export_features(schema: TaskSchema, key_map: KeyMap, images: str) -> dict[str, dict[str, Any]]:
    to_lerobot, features = key_map.to_lerobot(), {}
    for key, (shape, dtype) in schema.frame_specs().items():
        if dtype == np.uint8:
            features[to_lerobot[key]] = {"dtype": images, "shape": shape, "names": ["height", "width", "channels"]}
        else:
            features[to_lerobot[key]] = {"dtype": "float32", "shape": shape, "names": None}
    return features


def _check_video_size(schema: TaskSchema, vcodec: str) -> None:
    for cam in schema.observation.cameras:
        if vcodec == "libsvtav1" and min(cam.height, cam.width) < SVTAV1_MIN_SIDE:
            raise LeRobotIOError(f"camera {cam.name} is {cam.height}x{cam.width}: libsvtav1 needs at least "
                                 f"{SVTAV1_MIN_SIDE}x{SVTAV1_MIN_SIDE}; use --images image or --vcodec h264")
        if cam.height % 2 or cam.width % 2:
            raise LeRobotIOError(f"camera {cam.name} is {cam.height}x{cam.width}: video (yuv420p) needs even sizes; "
                                 f"use --images image")


def _task_descriptions(stores: list[DemoStore]) -> list[str]:
    """Each store's LeRobot task (its description, or its name when it has none); they must differ."""
    seen: dict[str, Path] = {}
    out = []
    for store in stores:
        text = store.task.description.strip() or store.task.name
        if text in seen:
            raise LeRobotIOError(f"{store.path} and {seen[text]} both describe their task as {text!r}: LeRobot "
                                 f"identifies tasks by description, so they would merge")
        seen[text] = store.path
        out.append(text)
    return out


def _write_sidecar(root: Path, stores: list[DemoStore], key_map: KeyMap, rows: list[dict[str, Any]]) -> None:
    data = {
        "format": SIDECAR_FORMAT,
        "format_version": 1,
        "key_map": [list(p) for p in key_map.pairs],
        "tasks": [{"task_index": i, "task": s.task.to_dict(), "schema": s.schema.to_dict(), "store": str(s.path.resolve())}
                  for i, s in enumerate(stores)],
        "episodes": rows,
    }
    (root / SIDECAR).write_text(json.dumps(data, indent=1))
