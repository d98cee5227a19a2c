"""`reacher-v5`: gymnasium's two-link Reacher as a task, with an inverse-kinematics scripted expert.

It is here to show (and test) that any gymnasium MuJoCo env can join a suite beside Meta-World, and
it gives multitask runs a task whose action size (2) differs from Meta-World's (4).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.gym_tasks import FreeView, GymTaskConfig, gym_task
from sim.tasks import register_task

LINK_1, LINK_2 = 0.1, 0.11  # from reacher.xml: body1 -> body2 -> fingertip
SUCCESS_DISTANCE = 0.01
KP, KD = 4.0, 0.3


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def expert(env: Any, obs: np.ndarray) -> np.ndarray:
    """PD control towards the joint angles that put the fingertip on the target (elbow-down solution)."""
    q = np.arctan2(obs[2:4], obs[0:2])
    qvel = obs[6:8]
    target = obs[4:6]
    reach = np.clip(np.linalg.norm(target), abs(LINK_1 - LINK_2) + 1e-6, LINK_1 + LINK_2 - 1e-6)
    cos_elbow = (reach**2 - LINK_1**2 - LINK_2**2) / (2 * LINK_1 * LINK_2)
    elbow = np.arccos(np.clip(cos_elbow, -1.0, 1.0))
    shoulder = np.arctan2(target[1], target[0]) - np.arctan2(LINK_2 * np.sin(elbow), LINK_1 + LINK_2 * np.cos(elbow))
    return np.clip(KP * _wrap(np.array([shoulder, elbow]) - q) - KD * qvel, -1.0, 1.0)


def success(env: Any, info: dict[str, Any]) -> bool:
    """The fingertip is within 1 cm of the target."""
    return -float(info["reward_dist"]) < SUCCESS_DISTANCE


REACHER = GymTaskConfig(
    env_id="Reacher-v5",
    expert="sim.reacher:expert",
    success="sim.reacher:success",
    agent_pos=(0, 1, 2, 3, 6, 7),  # joint cos, sin and velocities: the arm's own state, no target
    default_view=FreeView(lookat=(0.0, 0.0, 0.0), distance=0.7, azimuth=90.0, elevation=-90.0),  # top-down
)

register_task(gym_task("reacher-v5", REACHER, "Move the two-link arm's fingertip onto the target", "easy"))
