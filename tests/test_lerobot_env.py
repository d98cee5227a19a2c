"""Our Meta-World observation equals LeRobot's `MetaworldEnv`'s for the same task and seed (image and
agent_pos, bit for bit), so our success rates are comparable with published LeRobot Meta-World numbers.

One difference, on purpose: on the reset frame LeRobot draws the goal marker of reach, push and
pick-place where Meta-World's discarded first draw put it; ours draws it at the goal. The tests pin
both halves: LeRobot's frame with its goal site placed as Meta-World's `step` places it equals ours."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from sim.metaworld_tasks import MetaWorldEnv
from sim.tasks import ObservationConfig

pytest.importorskip("lerobot")

# LeRobot's MetaworldEnv renders at Meta-World's default 480x480 whatever its observation_width/height say,
# with MuJoCo's default render flags: our "full" render quality at that size.
LEROBOT_VIEW = ObservationConfig(("corner2",), (480, 480), "agent_pos", "full")


def assert_same_observation(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(ours["obs/corner2"], theirs["pixels"])
    # LeRobot hands out agent_pos as float64; its datasets (and our stores) hold float32.
    np.testing.assert_array_equal(ours["obs/proprio"], theirs["agent_pos"].astype(np.float32))


def with_goal_placed(theirs, reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LeRobot's reset observation re-rendered after placing its target sites the way Meta-World's `step` does."""
    for name, pos in theirs._env._target_site_config:
        theirs._env._set_pos_site(name, pos)
    return reference | {"pixels": np.ascontiguousarray(np.flip(theirs._env.render(), (0, 1)))}


@pytest.mark.slow
@pytest.mark.parametrize(("task", "stale_goal_on_reset"), [("button-press-topdown-v3", False), ("pick-place-v3", True)])
def test_observation_equals_lerobots_metaworld_env(task, stale_goal_on_reset):
    from lerobot.envs.metaworld import MetaworldEnv

    ours = MetaWorldEnv(task, LEROBOT_VIEW)
    theirs = MetaworldEnv(task, obs_type="pixels_agent_pos")
    try:
        first_images = {}
        for seed in (0, 7):
            obs = ours.reset(seed)
            np.random.seed(seed)  # LeRobot's env draws object positions from numpy's global RNG
            reference, _ = theirs.reset(seed=seed)
            placed = with_goal_placed(theirs, reference)
            assert_same_observation(obs, placed)
            # If Meta-World ever places the goal on reset itself, this fails: drop our workaround then.
            assert (not np.array_equal(reference["pixels"], placed["pixels"])) == stale_goal_on_reset
            first_images[seed] = obs["obs/corner2"]
            for _ in range(3):
                action = ours.expert_action()
                step = ours.step(action)
                reference, _, terminated, _, _ = theirs.step(action)
                assert not terminated  # LeRobot's env resets itself on success; these steps are far from it
                assert_same_observation(step.obs, reference)
        assert not np.array_equal(first_images[0], first_images[7])  # the seed moves objects: equality means something
    finally:
        ours.close()
        theirs.close()
