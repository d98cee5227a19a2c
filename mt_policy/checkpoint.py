"""Checkpoints: a directory with `model.safetensors` and `policy.json`; no pickles.

`policy.json` holds everything needed to rebuild the model from the directory alone: format
version, architecture (`ModelConfig`), the task table (name, head index, description, difficulty,
env, full schema), a human-readable copy of the normalisation statistics, and provenance. Writes go
to a temporary directory renamed into place, so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mt_policy.errors import MtPolicyError
from mt_policy.model import ModelConfig, MultiTaskPolicy, TaskEntry
from mt_policy.schema import TaskInfo, TaskSchema
from mt_policy.versioned_json import read_versioned_json

FORMAT = "mt_policy.checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "policy.json"


class CheckpointError(MtPolicyError):
    """A checkpoint directory is missing, malformed, or from a newer mt_policy."""


def policy_manifest(model: MultiTaskPolicy, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    stats = {}
    for entry in model.tasks:
        i = model.task_index[entry.name]
        p = entry.schema.observation.proprio_size
        stats[entry.name] = {
            "proprio_mean": model.proprio_mean[i, :p].tolist(), "proprio_std": model.proprio_std[i, :p].tolist(),
            "action_mean": getattr(model, f"action_mean_{i}").tolist(),
            "action_std": getattr(model, f"action_std_{i}").tolist(),
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": asdict(model.config),
        "observation": {"cameras": [asdict(c) for c in model.observation.cameras],
                        "proprio_size": model.observation.proprio_size,
                        "proprio_source": model.observation.proprio_source,
                        "render_quality": model.observation.render_quality},
        "tasks": [
            {"name": t.name, "head_index": model.task_index[t.name], **t.info.to_dict(), "schema": t.schema.to_dict()}
            for t in model.tasks
        ],
        "normalization": stats,
        "provenance": provenance or {},
    }


def save_checkpoint(model: MultiTaskPolicy, path: str | Path, provenance: dict[str, Any] | None = None,
                    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write `path/` atomically. `extra_tensors` (name -> tensors, e.g. resume state) go to
    `<name>.safetensors`; `extra_files` (file name -> text) beside them."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS))
    for name, tensors in (extra_tensors or {}).items():
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
    manifest = policy_manifest(model, (provenance or {}) | {"saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (no {MANIFEST})")
    return read_versioned_json(manifest_path, FORMAT, FORMAT_VERSION, CheckpointError,
                               {"mt_policy.export": " (that is an exported policy, not a training checkpoint)"})


def run_config(manifest: dict[str, Any]) -> dict[str, Any]:
    """The run config a checkpoint was trained with, as its provenance recorded it ({} when none was)."""
    return (manifest.get("provenance") or {}).get("config") or {}


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[MultiTaskPolicy, dict[str, Any]]:
    """Rebuild the model from `path` alone; return it (in eval mode) and the manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    try:
        config = ModelConfig(**manifest["model"])
        tasks = [TaskEntry(TaskInfo.from_dict(t), TaskSchema.from_dict(t["schema"], where=f"{path}: task {t['name']}"))
                 for t in sorted(manifest["tasks"], key=lambda t: t["head_index"])]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path / MANIFEST}: malformed ({type(err).__name__}: {err})") from None
    model = MultiTaskPolicy(config, tasks)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{path}: missing {WEIGHTS}")
    state = load_file(str(weights), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not match {MANIFEST} (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(map_location).eval()
    return model, manifest


def load_extra(path: str | Path, name: str) -> dict[str, torch.Tensor] | None:
    file = Path(path) / f"{name}.safetensors"
    return load_file(str(file)) if file.is_file() else None
