"""`make setup`'s disk check: a fresh .venv is refused up front, with a message, when the disk is too full."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _disk_check(project: Path, min_free_gb: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", "disk-check", f"SETUP_MIN_FREE_GB={min_free_gb}"],
                          cwd=project, capture_output=True, text=True, timeout=60)


def test_a_fresh_venv_is_refused_when_the_disk_holds_less_than_asked(tmp_path):
    shutil.copy(MAKEFILE, tmp_path / "Makefile")
    free_gb = shutil.disk_usage(tmp_path).free / 2**30
    refused = _disk_check(tmp_path, int(free_gb) + 1000)
    assert refused.returncode != 0
    assert f"a fresh .venv needs about {int(free_gb) + 1000} GB free on the disk holding {tmp_path.resolve()}" in refused.stderr
    assert "SETUP_MIN_FREE_GB=0" in refused.stderr
    assert _disk_check(tmp_path, 0).returncode == 0


def test_an_existing_venv_is_not_checked(tmp_path):
    shutil.copy(MAKEFILE, tmp_path / "Makefile")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    assert _disk_check(tmp_path, 10**6).returncode == 0
