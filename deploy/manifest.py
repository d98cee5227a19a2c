"""The exported policy directory: `policy.onnx` (+ `policy.engine`) described by `policy.json`.

`policy.json` is what every consumer of an export reads (the runtime, `mt-policy eval --onnx`, the
ROS node): graph file, input/output names and shapes, the task table with each task's full schema,
the action chunk length, parity results and provenance (including the demo seeds the source
checkpoint was trained on, so evaluation can refuse overlapping seeds). No torch needed to read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt_policy.errors import MtPolicyError, SchemaError, unknown_name
from mt_policy.schema import CameraSpec, ObservationSchema, TaskEntry, TaskInfo, TaskSchema
from mt_policy.versioned_json import read_versioned_json

EXPORT_FORMAT = "mt_policy.export"
EXPORT_FORMAT_VERSION = 1
MANIFEST = "policy.json"
GRAPH = "policy.onnx"
ENGINE = "policy.engine"
PROPRIO_INPUT = "proprio"
TASK_INPUT = "task"
OUTPUT = "action_chunk"


class ExportError(MtPolicyError):
    """An export cannot be written, read or run as asked."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExportedPolicy:
    """A parsed `policy.json`: what the graph expects and which tasks it serves."""

    directory: Path
    manifest: dict[str, Any]
    tasks: tuple[TaskEntry, ...]
    observation: ObservationSchema
    action_chunk: int
    action_width: int
    """Last dimension of the graph's output: the widest action among the exported tasks."""
    has_task_input: bool

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def graph_path(self) -> Path:
        return self.directory / self.manifest["graph"]

    @property
    def engine_path(self) -> Path | None:
        engine = self.manifest.get("engine")
        return self.directory / engine["file"] if engine else None

    @property
    def provenance(self) -> dict[str, Any]:
        return self.manifest.get("provenance") or {}

    def task_index(self, name: str) -> int:
        for i, task in enumerate(self.tasks):
            if task.name == name:
                return i
        raise unknown_name("exported task", name, self.task_names)


def read_export(path: str | Path) -> ExportedPolicy:
    """Parse `path/policy.json` (or the directory of an engine file); errors name the file and field."""
    path = Path(path)
    directory = path.parent if path.is_file() else path
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ExportError(f"{path}: not an exported policy (no {MANIFEST} in {directory}); "
                          f"create one with `mt-policy export --checkpoint CKPT --out DIR`")
    manifest = read_versioned_json(manifest_path, EXPORT_FORMAT, EXPORT_FORMAT_VERSION, ExportError,
                                   {"mt_policy.checkpoint": " (that is a training checkpoint: export it first)"})
    try:
        tasks = tuple(
            TaskEntry(TaskInfo.from_dict(t), TaskSchema.from_dict(t["schema"], where=f"{manifest_path}: task {t['name']}"))
            for t in sorted(manifest["tasks"], key=lambda t: t["index"]))
        obs = manifest["observation"]
        observation = ObservationSchema(tuple(CameraSpec(**c) for c in obs["cameras"]), int(obs["proprio_size"]),
                                        obs["proprio_source"], obs["render_quality"])
        chunk, width = int(manifest["action_chunk"]), int(manifest["action_width"])
        has_task_input = any(i["name"] == TASK_INPUT for i in manifest["inputs"])
        graph = manifest["graph"]
    except SchemaError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise ExportError(f"{manifest_path}: malformed ({type(err).__name__}: {err})") from None
    if not tasks:
        raise ExportError(f"{manifest_path}: exports no tasks")
    if not (directory / graph).is_file():
        raise ExportError(f"{manifest_path}: graph file {graph!r} is missing from {directory}")
    return ExportedPolicy(directory, manifest, tasks, observation, chunk, width, has_task_input)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    manifest = {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION} | manifest
    path = directory / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path
