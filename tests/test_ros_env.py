"""The ROS wheels' start-up hook (`ros_wheels_bootstrapper.pth` re-executes every Python process of the
venv once with LD_LIBRARY_PATH extended) must not disturb the rest of the stack. Worker pools, torchrun
and MuJoCo rendering are exercised by their own tests under the same hook; these cover the rest."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest

pytest.importorskip("ros_wheels_bootstrapper")


def _worker_env() -> tuple[str | None, bool]:
    import os

    import rclpy  # noqa: F401  the ROS libraries load in a spawned worker

    return os.environ.get("_ROS_WHEELS_BOOTSTRAP_COMPLETE"), "ros_" in os.environ.get("LD_LIBRARY_PATH", "")


def test_a_script_fed_on_stdin_runs_once_with_the_ros_libraries():
    script = "import os, rclpy; print('ran', os.environ['_ROS_WHEELS_BOOTSTRAP_COMPLETE'])\n"
    result = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran 1\n"  # executed exactly once, after the re-exec


def test_stdin_data_reaches_the_program_after_the_re_exec():
    result = subprocess.run([sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"], input="piped",
                            capture_output=True, text=True, timeout=60)
    assert result.stdout == "PIPED\n"


def test_spawned_workers_inherit_the_environment_without_re_executing():
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        guard, has_ros_libs = pool.submit(_worker_env).result(timeout=120)
    assert guard == "1" and has_ros_libs
