"""A benchmark's JSON result, written one way by every script that uses it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_json(result: dict[str, Any], path: Path, default: Callable[[Any], Any] | None = None) -> None:
    """`result` as indented JSON at `path` (its directory made); a reader never sees half a file.
    `default`: as `json.dumps`'s, for values JSON cannot encode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=default) + "\n")
    tmp.replace(path)
