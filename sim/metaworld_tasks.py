"""Meta-World v3 tasks, observed the way LeRobot observes them, so success rates are comparable.

LeRobot's conventions: each task is built from `metaworld.MT1(name, seed=42)` with its first train
task, object positions re-randomised on every reset; camera `corner2` moved to (0.75, 0.075, 0.7)
and its image flipped on both axes; `agent_pos` = hand xyz + gripper (the first 4 state entries);
4-D actions in [-1, 1]; 500-step limit; the env's success flag ends an episode.

Seeding: Meta-World's `reset` ignores its seed argument and draws object positions from
`np_random`, so `reset(seed)` installs a `RandomState(seed)` there. That makes an episode a pure
function of (task, seed), and equals LeRobot's env after `np.random.seed(seed)`, except that our
reset frame draws the goal marker where the goal is (see `MetaWorldEnv._place_target_sites`).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from mt_policy.errors import SchemaError, unknown_name
from mt_policy.schema import (
    PRIVILEGED_KEY,
    ActionSchema,
    CameraSpec,
    ObservationSchema,
    TaskSchema,
    build_observation,
)
from sim.rendering import render_view
from sim.tasks import ObservationConfig, StepResult, TaskSpec, register_task

ENV_ID = "Meta-World/MT1"
MAX_EPISODE_STEPS = 500
LEROBOT_CORNER2_POS = (0.75, 0.075, 0.7)
FLIPPED_CAMERAS = frozenset({"corner2"})
CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
AGENT_POS_SIZE = 4
FULL_STATE_SIZE = 39
GOAL_SLICE = slice(36, 39)  # the goal's entries in Meta-World's 39-D state
# Tasks whose scripted expert servoes the hand flange (`agent_pos`) onto the goal point itself.
FLANGE_ON_GOAL_EXPERTS = frozenset({"reach-v3"})

# name -> (difficulty group as in LeRobot's Meta-World tables, description)
TASKS: dict[str, tuple[str, str]] = {
    "assembly-v3": ("hard", "Pick up the ring nut and drop it over the peg"),
    "basketball-v3": ("medium", "Pick up the ball and dunk it through the hoop"),
    "bin-picking-v3": ("medium", "Move the puck from the left bin into the right bin"),
    "box-close-v3": ("medium", "Pick up the lid and put it on the box"),
    "button-press-topdown-v3": ("easy", "Press the button down from above"),
    "button-press-topdown-wall-v3": ("easy", "Press the button down from above, reaching past a wall"),
    "button-press-v3": ("easy", "Push the button in from the front"),
    "button-press-wall-v3": ("easy", "Push the button in from the front, reaching past a wall"),
    "coffee-button-v3": ("easy", "Press the button on the coffee machine"),
    "coffee-pull-v3": ("medium", "Pull the mug out from under the coffee machine"),
    "coffee-push-v3": ("medium", "Slide the mug under the coffee machine"),
    "dial-turn-v3": ("easy", "Turn the dial a full quarter"),
    "disassemble-v3": ("very_hard", "Lift the ring nut off the peg"),
    "door-close-v3": ("easy", "Swing the open door shut"),
    "door-lock-v3": ("easy", "Turn the door lock down to lock it"),
    "door-open-v3": ("easy", "Pull the door open by its handle"),
    "door-unlock-v3": ("easy", "Turn the door lock up to unlock it"),
    "hand-insert-v3": ("hard", "Push the puck into the hole in the table"),
    "drawer-close-v3": ("easy", "Push the drawer closed"),
    "drawer-open-v3": ("easy", "Pull the drawer open"),
    "faucet-open-v3": ("easy", "Turn the faucet handle to the left"),
    "faucet-close-v3": ("easy", "Turn the faucet handle to the right"),
    "hammer-v3": ("medium", "Hammer the nail into the wall"),
    "handle-press-side-v3": ("easy", "Press the handle down from the side"),
    "handle-press-v3": ("easy", "Press the handle down"),
    "handle-pull-side-v3": ("easy", "Pull the handle up from the side"),
    "handle-pull-v3": ("easy", "Pull the handle up"),
    "lever-pull-v3": ("easy", "Pull the lever up until it points upwards"),
    "pick-place-wall-v3": ("very_hard", "Pick up the puck and place it at the goal behind a wall"),
    "pick-out-of-hole-v3": ("hard", "Lift the puck out of the hole"),
    "pick-place-v3": ("hard", "Pick up the puck and place it at the goal"),
    "plate-slide-v3": ("easy", "Slide the plate into the cabinet"),
    "plate-slide-side-v3": ("easy", "Slide the plate sideways into the cabinet"),
    "plate-slide-back-v3": ("easy", "Slide the plate back out of the cabinet"),
    "plate-slide-back-side-v3": ("easy", "Slide the plate sideways back out of the cabinet"),
    "peg-insert-side-v3": ("medium", "Insert the peg into the hole from the side"),
    "peg-unplug-side-v3": ("easy", "Pull the peg out of the hole sideways"),
    "soccer-v3": ("medium", "Kick the ball into the goal"),
    "stick-push-v3": ("very_hard", "Grab the stick and push the box with it"),
    "stick-pull-v3": ("very_hard", "Grab the stick and pull the box with it"),
    "push-v3": ("hard", "Push the puck to the goal"),
    "push-wall-v3": ("medium", "Push the puck to the goal around a wall"),
    "push-back-v3": ("hard", "Push the puck back towards the robot to the goal"),
    "reach-v3": ("easy", "Move the gripper to the goal point"),
    "reach-wall-v3": ("easy", "Move the gripper to the goal point past a wall"),
    "shelf-place-v3": ("very_hard", "Pick up the puck and put it on the shelf"),
    "sweep-into-v3": ("medium", "Sweep the puck into the hole"),
    "sweep-v3": ("medium", "Sweep the puck off the table"),
    "window-open-v3": ("easy", "Slide the window open"),
    "window-close-v3": ("easy", "Slide the window closed"),
}


def metaworld_schema(obs: ObservationConfig) -> TaskSchema:
    for cam in obs.cameras:
        if cam not in CAMERAS:
            raise unknown_name("Meta-World camera", cam, CAMERAS)
    height, width = obs.image_size
    proprio_size = {"agent_pos": AGENT_POS_SIZE, "full_state": FULL_STATE_SIZE}.get(obs.proprio)
    if proprio_size is None:
        raise SchemaError(f"proprio {obs.proprio!r} not one of ['agent_pos', 'full_state']")
    return TaskSchema(
        observation=ObservationSchema(
            cameras=tuple(CameraSpec(c, height, width) for c in obs.cameras),
            proprio_size=proprio_size,
            proprio_source=obs.proprio,
            render_quality=obs.render_quality,
        ),
        action=ActionSchema(4, (-1.0,) * 4, (1.0,) * 4),
        control_hz=80.0,  # frame_skip 5 x timestep 2.5 ms
        max_episode_steps=MAX_EPISODE_STEPS,
        # The full state holds what one camera cannot pin down: object, goal and hand positions.
        privileged_size=FULL_STATE_SIZE if obs.privileged else 0,
    )


class MetaWorldEnv:
    """One Meta-World v3 task as a `TaskEnv`."""

    def __init__(self, task: str, obs: ObservationConfig) -> None:
        import metaworld  # deferred: importing it builds MuJoCo models
        import metaworld.policies
        import mujoco

        self.task = task
        self.schema = metaworld_schema(obs)
        self._obs_config = obs
        benchmark = metaworld.MT1(task, seed=42)
        height, width = obs.image_size
        self._env = benchmark.train_classes[task](render_mode="rgb_array", camera_name="corner2",
                                                  width=width, height=height)
        self._env.set_task(benchmark.train_tasks[0])
        model = self._env.model
        corner2 = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "corner2")
        model.cam_pos[corner2] = LEROBOT_CORNER2_POS
        self._env.reset()
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        self._camera_ids = {c: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, c) for c in obs.cameras}
        self._renderer = mujoco.Renderer(model, height, width) if obs.cameras else None
        self._expert = getattr(metaworld.policies, expert_class_name(task))()
        self._aims_tool_centre = False
        self._raw: np.ndarray | None = None

    def aim_tool_centre(self) -> bool:
        """Make the expert bring the tool centre, not the hand flange, onto the goal; False where it has no such aim.

        Reach succeeds when the tool centre between the fingertips comes within 5 cm of the goal, and the tool
        centre hangs 4.5 cm below the flange that Meta-World's reach expert puts on the goal: the expert's own
        resting point is 0.5 cm inside the success sphere, so a policy that imitates it fails on a centimetre's
        error. Aimed at the tool centre, the resting point is the sphere's centre.
        """
        self._aims_tool_centre = self.task in FLANGE_ON_GOAL_EXPERTS
        return self._aims_tool_centre

    def _render(self, camera: str) -> np.ndarray:
        assert self._renderer is not None
        image = render_view(self._renderer, self._env.data, self._camera_ids[camera], self._obs_config.render_quality)
        return np.ascontiguousarray(image[::-1, ::-1]) if camera in FLIPPED_CAMERAS else image

    def _observe(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        self._raw = raw
        proprio = raw[:AGENT_POS_SIZE] if self._obs_config.proprio == "agent_pos" else raw
        obs = build_observation(self.schema.observation, {c: self._render(c) for c in self._obs_config.cameras},
                                proprio, where=self.task)
        return obs | ({PRIVILEGED_KEY: raw.astype(np.float32)} if self._obs_config.privileged else {})

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        self._env.np_random = np.random.RandomState(seed)
        raw, _ = self._env.reset()
        self._place_target_sites()
        return self._observe(raw)

    def _place_target_sites(self) -> None:
        # Meta-World moves the goal site in the model after its last forward pass of a reset, so the
        # reset frame would draw the goal where the reset's first, discarded draw put it (reach, push,
        # pick-place: a marker that is not the goal). Its own `step` re-places these sites in the data
        # after every step; doing the same here makes the first frame show the real goal. LeRobot's
        # `MetaworldEnv` keeps the stale marker on its reset frame: the one way our frames differ.
        for name, pos in self._env._target_site_config:
            self._env._set_pos_site(name, pos)

    def step(self, action: np.ndarray) -> StepResult:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (4,):
            raise SchemaError(f"{self.task}: action has shape {action.shape}, expected (4,)")
        raw, _, _, truncated, info = self._env.step(np.clip(action, -1.0, 1.0))
        return StepResult(self._observe(raw), bool(info.get("success", 0.0)), bool(truncated))

    def expert_action(self) -> np.ndarray:
        if self._raw is None:
            raise RuntimeError("call reset() before expert_action()")
        state = self._raw
        if self._aims_tool_centre:  # the goal the expert sees moves up by the flange-to-tool-centre offset
            state = state.copy()
            state[GOAL_SLICE] += state[:3] - self._env.tcp_center
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the experts warn about their own gains on every call
            return np.asarray(self._expert.get_action(state), dtype=np.float32)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()


def expert_class_name(task: str) -> str:
    """Name of the task's scripted expert in `metaworld.policies` (push-v3 -> SawyerPushV3Policy)."""
    if task in _EXPERT_NAME_EXCEPTIONS:
        return _EXPERT_NAME_EXCEPTIONS[task]
    return "Sawyer" + "".join(part.capitalize() for part in task.split("-")) + "Policy"


_EXPERT_NAME_EXCEPTIONS = {"peg-insert-side-v3": "SawyerPegInsertionSideV3Policy"}


def _register_all() -> None:
    for name, (difficulty, description) in TASKS.items():
        register_task(TaskSpec(
            name=name,
            description=description,
            difficulty=difficulty,
            env_id=ENV_ID,
            env_kwargs={"env_name": name, "benchmark_seed": 42, "camera_pose": "lerobot"},
            env_version=_metaworld_version(),
            make_env=functools.partial(MetaWorldEnv, name),
            make_schema=metaworld_schema,
            expert=expert_class_name(name),
            tool_centre_expert=f"{expert_class_name(name)} (tool centre)" if name in FLANGE_ON_GOAL_EXPERTS else None,
        ))


@functools.cache
def _metaworld_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        # The suffix tells stores with the real goal on their reset frames from earlier ones without it.
        return f"metaworld {version('metaworld')}, mujoco {version('mujoco')}, goal placed on reset"
    except PackageNotFoundError:
        return "metaworld (not installed)"


_register_all()
