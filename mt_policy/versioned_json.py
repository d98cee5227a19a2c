"""Reading what we write with a format tag (checkpoint, export and LeRobot peer manifests; demo store
attributes): check the tag and that the format version is one this mt_policy understands. Errors name the
file and the field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mt_policy.errors import MtPolicyError

__all__ = ["check_format", "read_versioned_json"]


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
    check_format(manifest, str(file), fmt, newest, error, other_formats)
    return manifest


def check_format(fields: Mapping[str, Any], where: str, fmt: str, newest: int, error: type[MtPolicyError],
                 other_formats: Mapping[str, str] | None = None, field_kind: str = "", expected: str = "") -> None:
    """Raise `error` unless `fields` says `format` `fmt` at a `format_version` in 1..`newest`.

    `where` starts every message (the file or store); `field_kind` names what the fields are when that helps
    (a zarr group's "attribute"); `expected` names what a wrong format means it is not ("an mt_policy demo
    store")."""
    kind = f"{field_kind} " if field_kind else ""
    prefix = f"{where}: {kind}"
    if fields.get("format") != fmt:
        hint = (other_formats or {}).get(fields.get("format"), "")
        lead = f"not {expected}; " if expected else ""
        raise error(f"{where}: {lead}{kind}'format' is {fields.get('format')!r}, expected {fmt!r}{hint}")
    version = fields.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise error(f"{prefix}'format_version' is {version!r}, expected a positive integer")
    if version > newest:
        raise error(f"{where}: format_version {version} is newer than this mt_policy reads ({newest}); "
                    f"upgrade mt_policy")
