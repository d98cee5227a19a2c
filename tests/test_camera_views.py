"""bench/camera_views.py: each camera's reset and last frames of an expert demo, one row per task."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
from conftest import load_bench


@pytest.fixture(scope="module")
def camera_views():
    return load_bench("camera_views")


def test_row_holds_each_camera_at_reset_then_at_success(camera_views):
    size = 32
    row = camera_views.task_row("reach-v3", ("corner2", "behindGripper"), size, seed=5)
    assert row.shape == (size, 4 * size, 3) and row.dtype == np.uint8
    corner_reset, wrist_reset, corner_last, wrist_last = np.split(row.astype(int), 4, axis=1)
    assert np.abs(corner_reset - wrist_reset).mean() > 10  # two different views
    # the arm moved: the fixed camera sees the hand elsewhere, the camera on the hand sees the scene shift
    assert np.abs(corner_reset - corner_last).mean() > 1
    assert np.abs(wrist_reset - wrist_last).mean() > 1


def test_main_writes_the_scaled_grid(camera_views, tmp_path, capsys):
    out = tmp_path / "views.png"
    assert camera_views.main(["--tasks", "reach-v3,push-v3", "--cameras", "corner2", "--image-size", "24",
                              "--scale", "2", "--out", str(out)]) == 0
    assert imageio.imread(out).shape[:2] == (2 * 24 * 2, 2 * 24 * 2)
    assert "reach-v3,push-v3" in capsys.readouterr().out
