"""The three JSON manifests we read (checkpoint, export, LeRobot peer) refuse bad files with one clear line."""

from __future__ import annotations

import json
import re

import pytest

from deploy.manifest import EXPORT_FORMAT, ExportError, read_export
from deploy.manifest import MANIFEST as EXPORT_MANIFEST
from mt_policy.checkpoint import FORMAT as CHECKPOINT_FORMAT
from mt_policy.checkpoint import MANIFEST as CHECKPOINT_MANIFEST
from mt_policy.checkpoint import CheckpointError, read_manifest
from sim.evaluate import EvalError
from sim.lerobot_peer import PEER_FORMAT, PEER_MANIFEST, read_peer_manifest

READERS = {  # name -> (reader, file it reads, its format, its error)
    "checkpoint": (read_manifest, CHECKPOINT_MANIFEST, CHECKPOINT_FORMAT, CheckpointError),
    "export": (read_export, EXPORT_MANIFEST, EXPORT_FORMAT, ExportError),
    "peer": (read_peer_manifest, PEER_MANIFEST, PEER_FORMAT, EvalError),
}
BAD = {  # what the file holds -> what the message must say
    "{not json": r"not valid JSON",
    "[1, 2]": r"expected a JSON object, got list",
    json.dumps({"format": "something.else", "format_version": 1}): r"'format' is 'something.else', expected '{fmt}'",
    json.dumps({"format": "{fmt}", "format_version": 99}): r"format_version 99 is newer than this mt_policy reads \(1\)",
    json.dumps({"format": "{fmt}", "format_version": "1"}): r"'format_version' is '1', expected a positive integer",
    json.dumps({"format": "{fmt}"}): r"'format_version' is None, expected a positive integer",
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("content", BAD)
def test_a_bad_manifest_names_its_file_and_what_was_expected(tmp_path, reader, content):
    read, name, fmt, error = READERS[reader]
    (tmp_path / name).write_text(content.replace("{fmt}", fmt))
    with pytest.raises(error) as caught:
        read(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / name}: ")
    assert re.search(BAD[content].replace("{fmt}", fmt), message), message


@pytest.mark.parametrize("reader", READERS)
def test_a_missing_manifest_says_what_the_directory_is_not(tmp_path, reader):
    read, name, _, error = READERS[reader]
    with pytest.raises(error, match=rf"{tmp_path}: not a.*\(no {name}"):
        read(tmp_path)


def test_a_checkpoint_and_an_export_passed_for_each_other_say_so(tmp_path):
    (tmp_path / CHECKPOINT_MANIFEST).write_text(json.dumps({"format": EXPORT_FORMAT, "format_version": 1}))
    with pytest.raises(CheckpointError, match=r"expected 'mt_policy.checkpoint' \(that is an exported policy"):
        read_manifest(tmp_path)
    (tmp_path / EXPORT_MANIFEST).write_text(json.dumps({"format": CHECKPOINT_FORMAT, "format_version": 1}))
    with pytest.raises(ExportError, match=r"expected 'mt_policy.export' \(that is a training checkpoint: export it first\)"):
        read_export(tmp_path)
