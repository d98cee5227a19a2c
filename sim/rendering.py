"""Headless rendering setup: the project picks MuJoCo's GL backend, the user does not have to.

MuJoCo reads `MUJOCO_GL` when it is first imported, so `sim/__init__` calls `configure_gl()` before
anything imports mujoco. An explicit `MUJOCO_GL` from the user always wins.
"""

from __future__ import annotations

import ctypes.util
import os
from typing import Any

import numpy as np


def configure_gl() -> str:
    """Set MUJOCO_GL to `egl` when libEGL is present, else `osmesa`; return the backend in use."""
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "osmesa"
    if os.environ["MUJOCO_GL"] == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    elif os.environ["MUJOCO_GL"] == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    return os.environ["MUJOCO_GL"]


def render_view(renderer: Any, data: Any, camera: Any, quality: str) -> np.ndarray:
    """Render one camera (id, name or MjvCamera) with a `mujoco.Renderer` at the schema's quality.

    `fast` turns shadows, reflections and the skybox off: with software rendering they cost about
    five times the rest of the frame, and a policy does not need them.
    """
    import mujoco

    renderer.update_scene(data, camera=camera)
    if quality == "fast":
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
            renderer.scene.flags[flag] = 0
    return renderer.render()
