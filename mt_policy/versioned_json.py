"""Reading the JSON manifests we write (checkpoint, export, LeRobot peer): parse, then check the format tag
and that the format version is one this mt_policy understands. Errors name the file and the field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mt_policy.errors import MtPolicyError

__all__ = ["read_versioned_json"]


def read_versioned_json(file: Path, fmt: str, newest: int, error: type[MtPolicyError],
                        other_formats: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The JSON object in `file` whose `format` is `fmt` at `format_version` <= `newest`, or `error`.

    `other_formats` maps a format the user may have passed by mistake to a hint appended to the message
    (say, a checkpoint where an export was expected). The caller checks that `file` exists: its message
    says what the directory should have been."""
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise error(f"{file}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise error(f"{file}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != fmt:
        hint = (other_formats or {}).get(manifest.get("format"), "")
        raise error(f"{file}: 'format' is {manifest.get('format')!r}, expected {fmt!r}{hint}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise error(f"{file}: 'format_version' is {version!r}, expected a positive integer")
    if version > newest:
        raise error(f"{file}: format_version {version} is newer than this mt_policy reads ({newest}); "
                    f"upgrade mt_policy")
    return manifest
