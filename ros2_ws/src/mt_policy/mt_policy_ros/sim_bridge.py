"""The sim bridge: one sim task env as a ROS 2 robot, so the serve node can drive it like a real one.

    mt-policy sim-bridge --model runs/demo/export --task drawer-close-v3          # until Ctrl-C
    ros2 run mt_policy sim_bridge --model runs/demo/export --task drawer-close-v3 --ros-args -r __ns:=/sim

`SimRobot` publishes the env's observation (one `sensor_msgs/Image` rgb8 per camera of the export's
schema on `camera/<cam>/image_raw`, and `sensor_msgs/JointState` with position = the proprio vector
on `joint_states`, all with one header stamp) and steps the env on every `std_msgs/Float32MultiArray`
it gets on `action`, clipped to the schema's bounds as `sim.evaluate.run_episode` clips them, then
publishes the new observation. The observation after the last step of an episode (success,
truncation, max_steps) is not published: the policy must not act on an episode that is over.
`mt_policy_ros.eval_over_ros` drives it in lock-step with the serve node; `main` runs episodes back
to back on the evaluation seeds, a robot stand-in for the serve launch file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import Executor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.task import Future
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray

from deploy.manifest import ExportedPolicy, read_export
from mt_policy.errors import MtPolicyError
from mt_policy.schema import PROPRIO_KEY, camera_key
from mt_policy.seeds import EVAL_SEEDS
from mt_policy_ros import topics
from mt_policy_ros.conversions import array_to_image
from sim.evaluate import observation_config, registry_spec
from sim.pool import sigterm_as_interrupt
from sim.tasks import TaskEnv

NODE_NAME = "mt_policy_sim_bridge"
SERVER_NODE = "mt_policy_server"  # the serve node's name (mt_policy_ros.serve_node.NODE_NAME)
QOS_CHOICES = ("reliable", "best_effort")
# Observations go out RELIABLE by default. A reliable writer also serves the serve node's default
# best-effort readers (a best-effort writer does not match reliable readers at all); in lock-step
# only one observation is ever in flight, so reliability costs no queueing, while one lost
# observation would stall the episode for good. Measured against the serve node (2 processes, one
# host, Fast DDS, 32x32 rgb8 + joint_states, ~1000 lock-step steps per run): median round trip 2-6 ms
# either way; best effort on both sides went 10 s without an action once in 7 runs, reliable never
# in 5. Spikes of up to ~3 s occurred with both; they come from the serve node's executor (see
# eval_over_ros), not from the QoS. Depth 5, the serve node's default qos_depth.
OBS_DEPTH = 5
ACTION_DEPTH = 10  # the serve node publishes actions reliable, depth 10
FASTDDS_TRANSPORTS = "FASTDDS_BUILTIN_TRANSPORTS"
REPUBLISH_S = 2.0
"""`main`: with no action for this long, publish the current observation again (a server that started late)."""


class BridgeError(MtPolicyError):
    """The sim bridge cannot run as asked (unknown task, a bad action message, a server that rejects a task)."""


def obs_qos(reliability: str = "reliable", depth: int = OBS_DEPTH) -> QoSProfile:
    if reliability not in QOS_CHOICES:
        raise BridgeError(f"qos {reliability!r}: choose one of {', '.join(QOS_CHOICES)}")
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=depth, reliability=policy)


class SimRobot:
    """A sim task env behind ROS topics: observations out, actions in, one env step per action.

    `context`/`namespace` place its node (`mt_policy_sim_bridge`); nothing spins here: add `node` to an
    executor. Per episode it records `steps`, `success`, `truncated`, `done` and, with
    `record_actions`, every action it stepped with (as received, before clipping). An action that
    does not fit the task (size, NaN) is refused: `error` says why and the env is not stepped.
    """

    def __init__(self, model: str | Path | ExportedPolicy, task: str, *, context: Any = None, namespace: str = "",
                 reliability: str = "reliable", depth: int = OBS_DEPTH, record_actions: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        self.exported = model if isinstance(model, ExportedPolicy) else read_export(model)
        self.obs_config = observation_config(self.exported.observation)
        self.record_actions = record_actions
        self.node = Node(NODE_NAME, namespace=namespace, context=context)
        self.log = log or self.node.get_logger().info
        qos = obs_qos(reliability, depth)
        self.image_pubs = {c.name: self.node.create_publisher(Image, topics.image_topic(c.name), qos)
                           for c in self.exported.observation.cameras}
        self.joint_pub = self.node.create_publisher(JointState, topics.JOINT_STATES, qos)
        self.action_sub = self.node.create_subscription(
            Float32MultiArray, topics.ACTION, self._on_action,
            QoSProfile(depth=ACTION_DEPTH, reliability=ReliabilityPolicy.RELIABLE))
        self._envs: dict[str, TaskEnv] = {}
        self.task = ""
        self.set_task(task)
        self.obs: dict[str, np.ndarray] = {}
        self.seed: int | None = None
        self.max_steps = 0
        self.steps, self.success, self.truncated, self.done = 0, False, False, True
        self.actions: list[np.ndarray] = []
        self.ignored = 0
        """Actions that arrived while no episode was running (none in lock-step eval)."""
        self.error: str | None = None
        self.published = 0

    # ------------------------------------------------------------------ setup
    @property
    def action_topic(self) -> str:
        return self.action_sub.topic_name

    @property
    def observation_topics(self) -> list[str]:
        return [p.topic_name for p in (*self.image_pubs.values(), self.joint_pub)]

    def set_task(self, task: str) -> None:
        """Switch to `task`'s env (kept once built); the export must serve it, with the schema the env produces."""
        if task == self.task:
            return
        entry = self.exported.tasks[self.exported.task_index(task)]  # unknown names raise, listing the exported tasks
        spec = registry_spec(entry, self.obs_config, None)  # the env must produce what the export was trained on
        schema = entry.schema
        if task not in self._envs:
            self._envs[task] = spec.make_env(self.obs_config)
        self.env = self._envs[task]
        self.task, self.schema = task, schema
        self.low, self.high = np.asarray(schema.action.low), np.asarray(schema.action.high)

    def peers_ready(self) -> bool:
        """Every observation topic has a reader and `action` a writer (DDS discovery runs in the background)."""
        return (all(p.get_subscription_count() > 0 for p in self.image_pubs.values())
                and self.joint_pub.get_subscription_count() > 0 and self.action_sub.get_publisher_count() > 0)

    def wait_for_peers(self, timeout_s: float, alive: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.peers_ready():
            if alive is not None:
                alive()
            if time.monotonic() > deadline:
                missing = [p.topic_name for p in (*self.image_pubs.values(), self.joint_pub)
                           if p.get_subscription_count() == 0]
                missing += [] if self.action_sub.get_publisher_count() else [f"{self.action_topic} (no publisher)"]
                raise BridgeError(f"no policy on the other side after {timeout_s:g} s: nobody subscribes "
                                  f"to or publishes {', '.join(missing)}")
            time.sleep(0.02)

    # ------------------------------------------------------------------ episodes
    def reset(self, seed: int, max_steps: int | None = None) -> dict[str, np.ndarray]:
        """Start an episode on `seed` (at most `max_steps` steps, default the task's limit) and publish its observation."""
        limit = self.schema.max_episode_steps
        self.max_steps = min(max_steps or limit, limit)
        self.obs = self.env.reset(seed)
        self.seed = seed
        self.steps, self.success, self.truncated, self.done = 0, False, False, False
        self.actions = []
        self.error = None
        self.publish_observation()
        return self.obs

    def publish_observation(self) -> None:
        """The current observation, one header stamp on every message (images first, joint_states last)."""
        stamp = self.node.get_clock().now().to_msg()
        for name, pub in self.image_pubs.items():
            msg = array_to_image(Image(), self.obs[camera_key(name)])
            msg.header.stamp, msg.header.frame_id = stamp, name
            pub.publish(msg)
        joints = JointState()
        joints.header.stamp = stamp
        joints.position = self.obs[PROPRIO_KEY].astype(np.float64).tolist()
        self.joint_pub.publish(joints)
        self.published += 1

    def _on_action(self, msg: Float32MultiArray) -> None:
        if self.done:
            self.ignored += 1
            return
        action = np.asarray(msg.data, dtype=np.float32)
        size = self.schema.action.size
        if action.shape != (size,) or not np.isfinite(action).all():
            self.error = (f"{self.action_topic}: action {action.tolist()} for {self.task} at step {self.steps}; "
                          f"expected {size} finite values")
            self.node.get_logger().error(self.error, throttle_duration_sec=2.0)
            return
        if self.record_actions:
            self.actions.append(action)
        # Exactly as sim.evaluate.run_episode clips, so both paths step the env with the same values.
        result = self.env.step(np.clip(action, self.low, self.high).astype(np.float32))
        self.obs, self.steps = result.obs, self.steps + 1
        self.success, self.truncated = result.success, result.truncated
        if self.success or self.truncated or self.steps >= self.max_steps:
            self.done = True  # no observation: the policy must not act on a finished episode
        else:
            self.publish_observation()

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self.node.destroy_node()


PARAMETER_RESEND_S = 1.0
"""Resend an unanswered parameter request after this long. Just after discovery a reply can be lost
(the server may answer before it has matched our reply reader, a known DDS service race), and DDS
never resends it; getting, or setting to the same values, again is harmless."""


def call_resending(executor: Executor, send: Callable[[], Future], what: str, timeout_s: float,
                   resend_s: float = PARAMETER_RESEND_S) -> Any:
    """`send()` a service request (one that may be repeated), again every `resend_s` until one is answered.

    Returns the answer; raises BridgeError naming `what` when none came within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    attempts = 0
    while True:
        future = send()
        attempts += 1
        executor.spin_until_future_complete(future, timeout_sec=max(0.0, min(resend_s, deadline - time.monotonic())))
        if future.done():
            return future.result()
        future.cancel()
        if time.monotonic() >= deadline:
            raise BridgeError(f"no answer to {what} within {timeout_s:g} s ({attempts} requests sent)")


def set_parameters_resending(executor: Executor, client: AsyncParameterClient, parameters: list[Parameter],
                             timeout_s: float, resend_s: float = PARAMETER_RESEND_S) -> list[SetParametersResult]:
    """Set a remote node's parameters (see `call_resending`); returns the per-parameter results."""
    names = ", ".join(f"{p.name}={p.value}" for p in parameters)
    answer = call_resending(executor, lambda: client.set_parameters(parameters),
                            f"setting {names} on {client.remote_node_name}", timeout_s, resend_s)
    return list(answer.results)


def set_server_task(executor: Executor, client: AsyncParameterClient, task: str, timeout_s: float,
                    resend_s: float = PARAMETER_RESEND_S) -> None:
    """Set the serve node's `task` parameter (this resets its action queue and inputs), waiting for its answer."""
    result = set_parameters_resending(executor, client, [Parameter("task", Parameter.Type.STRING, task)],
                                      timeout_s, resend_s)[0]
    if not result.successful:
        raise BridgeError(f"{client.remote_node_name} refused task={task}: {result.reason}")


# ---------------------------------------------------------------------- robot stand-in
def run_bridge(model: str | Path, task: str, episodes: int | None = None, max_steps: int | None = None,
               qos: str = "reliable", server: str = SERVER_NODE, ros_args: list[str] | None = None,
               log: Callable[[str], None] = print) -> list[tuple[int, bool, int]]:
    """Episodes back to back on the evaluation seeds until `episodes` are done or Ctrl-C; returns (seed, success, steps).

    With `server` (the serve node's name), every episode starts by setting its `task` parameter,
    which also empties its action queue; without it, or with no such node, chunk remnants of the
    previous episode carry over and the server's task must be set by hand.
    """
    if episodes is not None and episodes < 1 or max_steps is not None and max_steps < 1:
        raise BridgeError(f"need episodes >= 1 and max_steps >= 1, got {episodes}, {max_steps}")
    # As serve.launch.py does for the server: Fast DDS's default transports lose large images (480x480
    # rgb8 never arrived at a best-effort reader here), and both sides need the same setting (with
    # LARGE_DATA on one side only, not even 32x32 images got through). A value already set is kept.
    os.environ.setdefault(FASTDDS_TRANSPORTS, "LARGE_DATA")
    # Python's own SIGINT handling (and SIGTERM as SIGINT): Ctrl-C raises KeyboardInterrupt wherever we
    # wait, rather than rclpy's handler shutting the context down under a pending parameter call.
    rclpy.init(args=ros_args, signal_handler_options=SignalHandlerOptions.NO)
    robot: SimRobot | None = None
    outcomes: list[tuple[int, bool, int]] = []
    try:
        with sigterm_as_interrupt():
            robot = SimRobot(model, task, reliability=qos)
            _run_episodes(robot, episodes, max_steps, server, log, outcomes)
    except KeyboardInterrupt:
        log(f"stopped: {sum(o[1] for o in outcomes)}/{len(outcomes)} successes")
    finally:
        if robot is not None:
            robot.close()
        rclpy.try_shutdown()
    return outcomes


def _run_episodes(robot: SimRobot, episodes: int | None, max_steps: int | None, server: str,
                  log: Callable[[str], None], outcomes: list[tuple[int, bool, int]]) -> None:
    executor = SingleThreadedExecutor()
    executor.add_node(robot.node)
    client = AsyncParameterClient(robot.node, server) if server else None
    if client is not None and not client.wait_for_services(timeout_sec=2.0):
        log(f"no {server} parameter service: not resetting its action queue between episodes")
        client = None
    log(f"sim bridge: {robot.task} from {robot.exported.directory}; observations on "
        f"{', '.join(robot.observation_topics)}, actions from {robot.action_topic} "
        f"(ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')}, "
        f"{FASTDDS_TRANSPORTS}={os.environ.get(FASTDDS_TRANSPORTS, '')})")
    index = 0
    while episodes is None or index < episodes:
        seed = EVAL_SEEDS.seed(index)
        if client is not None:
            set_server_task(executor, client, robot.task, timeout_s=5.0)
        robot.reset(seed, max_steps)
        last, steps = time.monotonic(), 0
        while not robot.done:
            executor.spin_once(timeout_sec=0.1)
            if robot.steps != steps:
                last, steps = time.monotonic(), robot.steps
            elif time.monotonic() - last > REPUBLISH_S:
                if steps == 0:
                    log(f"waiting for actions on {robot.action_topic} (is the serve node up with enable:=true, the "
                        f"same ROS_DOMAIN_ID and {FASTDDS_TRANSPORTS}?)")
                robot.publish_observation()
                last = time.monotonic()
        outcomes.append((seed, robot.success, robot.steps))
        outcome = "success" if robot.success else ("truncated" if robot.truncated else "step limit")
        wins = sum(o[1] for o in outcomes)
        log(f"episode {index} seed {seed}: {outcome} after {robot.steps} steps ({wins}/{len(outcomes)} successes)")
        index += 1


def build_parser(prog: str = "sim_bridge") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="A sim task as a ROS 2 robot for the mt_policy serve node.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="export directory (its observation schema)")
    p.add_argument("--task", required=True, help="task to simulate (one of the export's)")
    p.add_argument("--episodes", type=int, help="stop after N episodes (default: until Ctrl-C)")
    p.add_argument("--max-steps", type=int, metavar="N", help="cap episodes below the task's limit")
    p.add_argument("--qos", choices=QOS_CHOICES, default="reliable",
                   help="observation QoS reliability (default reliable; also matches best-effort readers)")
    p.add_argument("--server", default=SERVER_NODE,
                   help=f"serve node whose task is set at every episode start (default {SERVER_NODE}; '' for none)")


def main(argv: list[str] | None = None) -> int:
    from rclpy.utilities import remove_ros_args

    argv = sys.argv if argv is None else [sys.argv[0], *argv]
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    try:
        run_bridge(args.model, args.task, args.episodes, args.max_steps, args.qos, args.server, ros_args=argv)
    except MtPolicyError as err:
        print(f"{NODE_NAME}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
