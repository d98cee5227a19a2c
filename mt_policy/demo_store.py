"""`DemoStore` owns the on-disk layout of a zarr v3 demo store; nothing else touches zarr keys.

Layout (frames of all episodes are concatenated along time):

    <store>/                      group attrs: format, format_version, schema, task, commit, stats
      data/obs/<camera>           uint8   (N, H, W, 3)
      data/obs/proprio            float32 (N, P)
      data/action                 float32 (N, A)
      meta/episode_ends           int64   (E,)   exclusive end frame of each episode
      meta/episodes/{seed,length,success,expert_id}   one row per episode

Crash safety: an append first writes frames and table rows past the committed end, then commits
by rewriting the group attributes (`commit` = episode and frame counts, plus stats) in one atomic
file replace. Anything past the commit is an interrupted append: readers ignore it and the next
writer trims it, so a crash loses at most the episode being written.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from mt_policy.errors import SchemaError, StoreError
from mt_policy.schema import ACTION_KEY, TaskInfo, TaskSchema, check_frames
from mt_policy.stats import RunningStats
from mt_policy.versioned_json import check_format

FORMAT = "mt_policy.demo_store"
FORMAT_VERSION = 1
EPISODE_ENDS = "meta/episode_ends"
EPISODE_COLUMNS = {"seed": np.int64, "length": np.int64, "success": np.bool_, "expert_id": np.int16}
_CHUNK_BYTES = 2 * 1024 * 1024
_TABLE_CHUNK = 4096


def _compressors(dtype: np.dtype) -> list:
    shuffle = "noshuffle" if dtype.itemsize == 1 else "shuffle"
    return [BloscCodec(cname="zstd", clevel=3, shuffle=shuffle, typesize=dtype.itemsize), Crc32cCodec()]


@dataclass(frozen=True)
class Episode:
    """One episode read back from a store."""

    index: int
    seed: int
    success: bool
    expert: str
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.arrays[ACTION_KEY])


@dataclass
class LoadedDemos:
    """A whole store in memory: arrays keyed like the schema, plus episode boundaries."""

    schema: TaskSchema
    task: TaskInfo
    arrays: dict[str, np.ndarray]
    episode_ends: np.ndarray
    episodes: dict[str, np.ndarray]
    stats: dict[str, RunningStats]
    created_with: dict[str, Any] = field(default_factory=dict)
    """How the store was made (collector settings, e.g. `tool_centre`), as `DemoStore.created_with`."""

    @property
    def n_frames(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def episode_starts(self) -> np.ndarray:
        """Index of each episode's first frame (int64), the partner of `episode_ends`."""
        return np.concatenate([[0], self.episode_ends])[:-1].astype(np.int64)  # empty for an empty store


class DemoStore:
    """A demo store for one task. Use `create`, `open` or `open_or_create`, never the constructor."""

    def __init__(self, path: Path, group: zarr.Group, writable: bool) -> None:
        self.path = path
        self._group = group
        self._arrays: dict[str, zarr.Array] = {}
        self._seeds: set[int] | None = None
        self.writable = writable
        attrs = dict(group.attrs)
        self.schema = TaskSchema.from_dict(attrs.get("schema", {}), where=f"{path}: attribute 'schema'")
        self.task = TaskInfo.from_dict(attrs.get("task", {}), where=f"{path}: attribute 'task'")
        commit = attrs.get("commit", {})
        self.n_episodes = int(commit.get("episodes", 0))
        self.n_frames = int(commit.get("frames", 0))
        self.experts: list[str] = list(attrs.get("experts", []))
        self.rejected_seeds: list[int] = [int(s) for s in attrs.get("rejected_seeds", [])]
        self.stats = {k: RunningStats.from_dict(v) for k, v in attrs.get("stats", {}).items()}
        self.created_with: dict[str, Any] = dict(attrs.get("created_with", {}))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def create(cls, path: str | Path, schema: TaskSchema, task: TaskInfo, *, overwrite: bool = False,
               created_with: dict[str, Any] | None = None) -> DemoStore:
        """Create an empty store at `path` (refuses to replace an existing one unless `overwrite`)."""
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise StoreError(f"{path}: already exists; open it to append, or pass overwrite")
            shutil.rmtree(path)
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        for key, (shape, dtype) in schema.frame_specs().items():
            frame_bytes = max(1, math.prod(shape) * dtype.itemsize)
            chunk = int(max(1, min(4096, _CHUNK_BYTES // frame_bytes)))
            group.create_array(f"data/{key}", shape=(0, *shape), chunks=(chunk, *shape), dtype=dtype,
                               compressors=_compressors(dtype))
        group.create_array(EPISODE_ENDS, shape=(0,), chunks=(_TABLE_CHUNK,), dtype=np.int64,
                           compressors=_compressors(np.dtype(np.int64)))
        for name, dtype in EPISODE_COLUMNS.items():
            group.create_array(f"meta/episodes/{name}", shape=(0,), chunks=(_TABLE_CHUNK,), dtype=dtype,
                               compressors=_compressors(np.dtype(dtype)))
        group.update_attributes({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "schema": schema.to_dict(),
            "task": task.to_dict(),
            "commit": {"episodes": 0, "frames": 0},
            "experts": [],
            "rejected_seeds": [],
            "stats": {},
            "created_with": created_with or {},
        })
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> DemoStore:
        """Open and validate the store's structure; `mode="a"` also trims an interrupted append."""
        path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if not path.exists():
            raise StoreError(f"{path}: no such demo store")
        if not (path / "zarr.json").is_file():
            raise StoreError(f"{path}: not a demo store (no zarr.json; expected a zarr v3 group)")
        try:
            group = zarr.open_group(str(path), mode="r+" if mode == "a" else "r", zarr_format=3)
        except Exception as err:  # zarr raises several types for unreadable metadata
            raise StoreError(f"{path}: not a readable zarr v3 group ({type(err).__name__}: {err})") from None
        attrs = dict(group.attrs)
        check_format(attrs, str(path), FORMAT, FORMAT_VERSION, StoreError, field_kind="attribute",
                     expected="an mt_policy demo store")
        try:
            store = cls(path, group, writable=mode == "a")
        except SchemaError as err:
            raise StoreError(str(err)) from None
        store._check_structure()
        if mode == "a":
            store._trim_uncommitted()
        return store

    @classmethod
    def open_or_create(cls, path: str | Path, schema: TaskSchema, task: TaskInfo, **kwargs: Any) -> DemoStore:
        """Open an existing store for appending (its schema and task must match) or create one."""
        path = Path(path)
        if not path.exists():
            return cls.create(path, schema, task, **kwargs)
        store = cls.open(path, mode="a")
        if store.schema != schema:
            raise StoreError(
                f"{path}: existing store has schema {store.schema.to_dict()}, but this run asks for "
                f"{schema.to_dict()}; use another output directory or matching options"
            )
        if store.task.name != task.name:
            raise StoreError(f"{path}: holds task {store.task.name!r}, not {task.name!r}")
        return store

    # ------------------------------------------------------------------ validation
    def _array(self, key: str) -> zarr.Array:
        if key in self._arrays:
            return self._arrays[key]
        try:
            # Chunks equal to the fill value must still be written: a missing chunk means data loss.
            with zarr.config.set({"array.write_empty_chunks": True}):
                node = self._group[key]
        except KeyError:
            raise StoreError(f"{self.path}: missing array '{key}'") from None
        except Exception as err:  # corrupt zarr.json: JSON or metadata validation errors
            raise StoreError(f"{self.path}: array '{key}' has unreadable metadata ({type(err).__name__}: {err})") from None
        if not isinstance(node, zarr.Array):
            raise StoreError(f"{self.path}: '{key}' is a group, expected an array")
        self._arrays[key] = node
        return node

    def _check_structure(self) -> None:
        """Cheap invariants checked on every open: arrays, shapes, dtypes, lengths, episode ends, chunks."""
        where = str(self.path)
        if self.n_episodes < 0 or self.n_frames < 0 or (self.n_episodes == 0) != (self.n_frames == 0):
            raise StoreError(f"{where}: attribute 'commit' is inconsistent ({self.n_episodes} episodes, {self.n_frames} frames)")
        for key, (shape, dtype) in self.schema.frame_specs().items():
            arr = self._array(f"data/{key}")
            if arr.dtype != dtype or tuple(arr.shape[1:]) != shape:
                raise StoreError(
                    f"{where}: 'data/{key}' is {arr.dtype}{list(arr.shape[1:])} per frame, but the schema "
                    f"declares {dtype}{list(shape)}"
                )
            if arr.shape[0] < self.n_frames:
                raise StoreError(
                    f"{where}: 'data/{key}' has {arr.shape[0]} frames but the store commits {self.n_frames} "
                    f"(arrays of mismatched length)"
                )
        for key in [EPISODE_ENDS] + [f"meta/episodes/{c}" for c in EPISODE_COLUMNS]:
            arr = self._array(key)
            if arr.ndim != 1 or arr.shape[0] < self.n_episodes:
                raise StoreError(f"{where}: '{key}' has shape {arr.shape}, expected at least ({self.n_episodes},)")
            if key.endswith(tuple(EPISODE_COLUMNS)) and arr.dtype != np.dtype(EPISODE_COLUMNS[key.rsplit('/', 1)[1]]):
                raise StoreError(f"{where}: '{key}' has dtype {arr.dtype}, expected {np.dtype(EPISODE_COLUMNS[key.rsplit('/', 1)[1]])}")
        self._check_chunks_present()
        ends = self._read(EPISODE_ENDS, 0, self.n_episodes)
        if len(ends):
            if ends[0] <= 0 or np.any(np.diff(ends) <= 0):
                bad = 0 if ends[0] <= 0 else int(np.argmax(np.diff(ends) <= 0)) + 1
                raise StoreError(f"{where}: '{EPISODE_ENDS}' must be strictly increasing and positive; entry {bad} is {int(ends[bad])}"
                                 + (f" after {int(ends[bad - 1])}" if bad else ""))
            if ends[-1] != self.n_frames:
                raise StoreError(
                    f"{where}: '{EPISODE_ENDS}' ends at frame {int(ends[-1])} but the data holds {self.n_frames} "
                    f"committed frames (episode ends past the data length)"
                    if ends[-1] > self.n_frames else
                    f"{where}: '{EPISODE_ENDS}' ends at frame {int(ends[-1])}, short of the {self.n_frames} committed frames"
                )
        lengths = self._read("meta/episodes/length", 0, self.n_episodes)
        if not np.array_equal(lengths, np.diff(ends, prepend=0)):
            raise StoreError(f"{where}: 'meta/episodes/length' disagrees with '{EPISODE_ENDS}'")
        expert_ids = self._read("meta/episodes/expert_id", 0, self.n_episodes)
        if len(expert_ids) and (expert_ids.min() < 0 or expert_ids.max() >= len(self.experts)):
            raise StoreError(f"{where}: 'meta/episodes/expert_id' refers to experts outside attribute 'experts' {self.experts}")
        for key in (ACTION_KEY, "obs/proprio"):
            values = self._read(f"data/{key}", 0, self.n_frames)
            finite = np.isfinite(values).all(axis=1)
            if not finite.all():
                frame = int(np.argmin(finite))
                episode = int(np.searchsorted(ends, frame, side="right"))
                raise StoreError(f"{where}: 'data/{key}' has NaN/inf at frame {frame} (episode {episode}); expected finite values")

    def _check_chunks_present(self) -> None:
        """A missing chunk would silently read as zeros, so every committed chunk file must exist."""
        for key, needed in self._committed_lengths().items():
            arr = self._array(key)
            n_chunks = math.ceil(needed / arr.chunks[0])
            rest = (0,) * (arr.ndim - 1)
            for i in range(n_chunks):
                chunk_key = arr.metadata.encode_chunk_key((i, *rest))
                if not (self.path / key / chunk_key).is_file():
                    raise StoreError(f"{self.path}: '{key}' is missing chunk {chunk_key} (frames {i * arr.chunks[0]}..)")

    def _committed_lengths(self) -> dict[str, int]:
        lengths = {f"data/{k}": self.n_frames for k in self.schema.frame_specs()}
        lengths[EPISODE_ENDS] = self.n_episodes
        lengths.update({f"meta/episodes/{c}": self.n_episodes for c in EPISODE_COLUMNS})
        return lengths

    def _read(self, key: str, start: int, stop: int) -> np.ndarray:
        """Read rows [start, stop) of one array; a corrupt chunk becomes a StoreError naming it."""
        arr = self._array(key)
        try:
            return np.asarray(arr[start:stop])
        except Exception as err:
            first, last = start // arr.chunks[0], max(start, stop - 1) // arr.chunks[0]
            raise StoreError(
                f"{self.path}: '{key}' rows {start}..{stop} are unreadable (chunks {first}..{last}): "
                f"{type(err).__name__}: {err}; the store is corrupt"
            ) from None

    def validate(self) -> dict[str, Any]:
        """Check every invariant, reading every committed chunk; return a summary or raise StoreError."""
        self._check_structure()
        recomputed: dict[str, RunningStats] = {}
        ends = self.episode_ends
        for key in self.schema.frame_specs():
            arr = self._array(f"data/{key}")
            frame_bytes = max(1, math.prod(arr.shape[1:]) * arr.dtype.itemsize)
            step = arr.chunks[0] * max(1, _CHUNK_BYTES * 8 // (frame_bytes * arr.chunks[0]))  # whole chunks, ~16 MiB
            for start in range(0, self.n_frames, step):
                block = self._read(f"data/{key}", start, min(self.n_frames, start + step))
                s = RunningStats.of(block)
                recomputed[key] = recomputed[key].merge(s) if key in recomputed else s
        if self.n_frames:
            for key, stats in recomputed.items():
                stored = self.stats.get(key)
                if stored is None or not stored.allclose(stats, rtol=1e-5, atol=1e-4):
                    raise StoreError(f"{self.path}: stored stats of '{key}' disagree with the data (attribute 'stats')")
        seeds = self.episode_table()["seed"]
        if len(set(seeds.tolist())) != len(seeds):
            raise StoreError(f"{self.path}: 'meta/episodes/seed' has duplicate seeds")
        return {"episodes": self.n_episodes, "frames": int(ends[-1]) if len(ends) else 0, "checked_arrays": len(recomputed)}

    # ------------------------------------------------------------------ reading
    @property
    def episode_ends(self) -> np.ndarray:
        return self._read(EPISODE_ENDS, 0, self.n_episodes)

    def episode_table(self) -> dict[str, np.ndarray]:
        """Per-episode columns: seed, length, success, expert_id (index into `experts`)."""
        return {c: self._read(f"meta/episodes/{c}", 0, self.n_episodes) for c in EPISODE_COLUMNS}

    @property
    def used_seeds(self) -> list[int]:
        """Seeds already tried: kept episodes and rejected attempts."""
        return self.episode_table()["seed"].tolist() + self.rejected_seeds

    def frames(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a data key (e.g. 'action', 'obs/corner2'), within committed frames."""
        if key not in self.schema.frame_specs():
            raise StoreError(f"{self.path}: no data key {key!r}; keys are {list(self.schema.frame_specs())}")
        if not 0 <= start <= stop <= self.n_frames:
            raise IndexError(f"frames [{start}, {stop}) outside the store's {self.n_frames} frames")
        return self._read(f"data/{key}", start, stop)

    def episode(self, index: int) -> Episode:
        if not -self.n_episodes <= index < self.n_episodes:
            raise IndexError(f"episode {index} outside the store's {self.n_episodes} episodes")
        index %= self.n_episodes
        ends = self.episode_ends
        start, stop = (int(ends[index - 1]) if index else 0), int(ends[index])
        table = {c: self._read(f"meta/episodes/{c}", index, index + 1)[0] for c in EPISODE_COLUMNS}
        return Episode(index, int(table["seed"]), bool(table["success"]), self.experts[int(table["expert_id"])],
                       {k: self.frames(k, start, stop) for k in self.schema.frame_specs()})

    def iter_episodes(self) -> Iterator[Episode]:
        for i in range(self.n_episodes):
            yield self.episode(i)

    def nbytes_raw(self, schema: TaskSchema | None = None) -> int:
        """Uncompressed size of the committed frames (of the keys `schema` names; default all)."""
        specs = (schema or self.schema).frame_specs()
        return sum(self.n_frames * int(np.prod(shape)) * dtype.itemsize for shape, dtype in specs.values())

    def nbytes_stored(self) -> int:
        """Bytes on disk, everything under the store directory."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def load(self, max_bytes: int | None = None, cameras: Sequence[str] | None = None) -> LoadedDemos:
        """Read the whole store into memory (every chunk checked); refuse if it would not fit.

        `cameras` keeps only those cameras (in that order), and reads only their frames.
        """
        schema = self.schema if cameras is None else self.schema.with_cameras(cameras, where=str(self.path))
        nbytes = self.nbytes_raw(schema)
        limit = max_bytes if max_bytes is not None else int(_available_memory() * 0.8)
        if nbytes > limit:
            raise StoreError(f"{self.path}: {nbytes / 2**30:.1f} GiB of frames do not fit in the "
                             f"{limit / 2**30:.1f} GiB allowed in memory; sample from disk instead")
        arrays = {k: self._read(f"data/{k}", 0, self.n_frames) for k in schema.frame_specs()}
        stats = {k: v for k, v in self.stats.items() if k in arrays}
        return LoadedDemos(schema, self.task, arrays, self.episode_ends, self.episode_table(), stats,
                           dict(self.created_with))

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only; open with mode='a' to append")

    def _trim_uncommitted(self) -> None:
        """Drop rows past the commit, left by an append that was interrupted."""
        for key, committed in self._committed_lengths().items():
            arr = self._array(key)
            if arr.shape[0] != committed:
                arr.resize((committed, *arr.shape[1:]))

    def _write_rows(self, key: str, start: int, values: np.ndarray) -> None:
        """Write rows at `start`, growing the array geometrically so most appends skip a resize.

        Rows past the commit are not part of the store (see the module docstring), so spare
        capacity is invisible to readers and trimmed by the next `open(mode="a")`.
        """
        arr = self._array(key)
        stop = start + len(values)
        if arr.shape[0] < stop:
            arr.resize((max(stop, 2 * arr.shape[0], arr.chunks[0]), *arr.shape[1:]))
        arr[start:stop] = values

    def append_episode(self, arrays: dict[str, np.ndarray], *, seed: int, success: bool, expert: str) -> int:
        """Append one episode atomically; return its index. Arrays are keyed like `schema.frame_specs()`."""
        self._require_writable()
        try:
            length = check_frames(self.schema, arrays, where=f"{self.path}: episode with seed {seed}")
        except SchemaError as err:
            raise StoreError(str(err)) from None
        if length == 0:
            raise StoreError(f"{self.path}: refusing to append an empty episode (seed {seed})")
        if self._seeds is None:
            self._seeds = set(self.used_seeds)
        if seed in self._seeds:
            raise StoreError(f"{self.path}: seed {seed} is already used in this store")
        start, stop = self.n_frames, self.n_frames + length
        for key, values in arrays.items():
            self._write_rows(f"data/{key}", start, values)
        experts = self.experts + ([expert] if expert not in self.experts else [])
        row = {"seed": seed, "length": length, "success": success, "expert_id": experts.index(expert)}
        self._write_rows(EPISODE_ENDS, self.n_episodes, np.array([stop], dtype=np.int64))
        for column, value in row.items():
            self._write_rows(f"meta/episodes/{column}", self.n_episodes, np.array([value], dtype=EPISODE_COLUMNS[column]))
        stats = dict(self.stats)
        for key, values in arrays.items():
            s = RunningStats.of(values)
            stats[key] = stats[key].merge(s) if key in stats else s
        # The commit point: one atomic rewrite of the group's zarr.json. (`attrs.update` would
        # write once per key, leaving a window where the commit is visible but the stats are not.)
        self._group = self._group.update_attributes({
            "commit": {"episodes": self.n_episodes + 1, "frames": stop},
            "experts": experts,
            "stats": {k: v.to_dict() for k, v in stats.items()},
        })
        self.n_episodes, self.n_frames, self.experts, self.stats = self.n_episodes + 1, stop, experts, stats
        self._seeds.add(seed)
        return self.n_episodes - 1

    def close(self) -> None:
        """Trim spare capacity so the raw zarr arrays end at the commit. Safe to call twice."""
        if self.writable:
            self._trim_uncommitted()

    def __enter__(self) -> DemoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_rejected_seed(self, seed: int) -> None:
        """Remember a seed whose episode was discarded, so a resumed run does not retry it."""
        self._require_writable()
        self.rejected_seeds = self.rejected_seeds + [int(seed)]
        if self._seeds is not None:
            self._seeds.add(int(seed))
        self._group = self._group.update_attributes({"rejected_seeds": self.rejected_seeds})

    def summary(self) -> dict[str, Any]:
        table = self.episode_table()
        stored, raw = self.nbytes_stored(), self.nbytes_raw()
        return {
            "path": str(self.path),
            "task": self.task.to_dict(),
            "schema": self.schema.to_dict(),
            "format_version": FORMAT_VERSION,
            "episodes": self.n_episodes,
            "frames": self.n_frames,
            "success_rate": float(table["success"].mean()) if self.n_episodes else None,
            "mean_length": float(table["length"].mean()) if self.n_episodes else None,
            "rejected_attempts": len(self.rejected_seeds),
            "experts": self.experts,
            "disk_bytes": stored,
            "raw_bytes": raw,
            "compression_ratio": raw / stored if stored else None,
        }


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not on every platform
        return 8 * 2**30
