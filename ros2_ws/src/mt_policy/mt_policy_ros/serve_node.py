"""The serve node: camera images + joint states in, one action per control step out, through `PolicyRuntime`.

    ros2 launch mt_policy serve.launch.py model:=/path/to/export task:=drawer-close-v3
    python -m mt_policy_ros.serve_node --ros-args -p model:=/path/to/export -p enable:=true

Inputs are kept as the latest message per topic with its arrival time. A timer (or, with
`trigger:=observation`, each complete set of fresh inputs) assembles the observation with
`mt_policy.schema.build_observation` (what sim envs use) and steps the `ChunkRunner` that sim eval
uses. Inference runs on its own thread, woken by its clock or by the input callbacks, so a slow
inference never delays message handling; the executor is single-threaded on purpose: rclpy 9.1's
MultiThreadedExecutor stalls callbacks for up to seconds (ros2/rclpy#1452; measured here: p99 1.25 s
on an echo node vs < 10 ms single-threaded). Stale or missing inputs stop (or hold) the output
and raise a diagnostic; bad messages are dropped with a throttled error naming the topic.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from deploy.runtime import PolicyRuntime
from mt_policy.errors import MtPolicyError
from mt_policy.schema import build_observation
from mt_policy_ros import topics
from mt_policy_ros.conversions import MessageError, image_to_array, joint_state_to_proprio
from mt_policy_ros.params import SERVE_PARAMS

NODE_NAME = "mt_policy_server"
LATENCY_WINDOW = 1000
ERROR_THROTTLE_S = 2.0
LARGE_FRAME_BYTES = 512 * 1024  # above this, Fast DDS's default shared-memory transport loses frames


@dataclass
class InputSlot:
    """The latest value of one input topic, when it arrived, and counters for diagnostics."""

    topic: str
    value: np.ndarray | None = None
    received: float = 0.0  # time.monotonic() of the last accepted message
    fresh: bool = False  # accepted since the last action (trigger=observation)
    accepted: int = 0
    dropped: int = 0
    overwritten: int = 0  # accepted while the previous value was still unused (latest-value design)
    last_error: float = -1e9
    suppressed: int = 0
    arrivals: deque = field(default_factory=lambda: deque(maxlen=100))

    def clear(self) -> None:
        self.value, self.fresh = None, False

    def rate_hz(self, now: float) -> float:
        recent = [t for t in self.arrivals if now - t <= 5.0]
        return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0


class PolicyServer(Node):
    def __init__(self, **overrides: Any) -> None:
        super().__init__(NODE_NAME, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        for p in SERVE_PARAMS:
            self.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description))
        get = lambda name: self.get_parameter(name).value  # noqa: E731
        if not get("model"):
            raise MtPolicyError("parameter 'model' is empty: pass the export directory, e.g. -p model:=/path/to/export")
        self.runtime = PolicyRuntime(get("model"), provider=get("provider"), threads=int(get("threads")),
                                     task=get("task") or None)
        self._check_choice("trigger", get("trigger"), ("timer", "observation"))
        self._check_choice("on_stale", get("on_stale"), ("stop", "hold"))
        self._check_choice("qos_reliability", get("qos_reliability"), ("best_effort", "reliable"))
        self.trigger, self.on_stale, self.enabled = get("trigger"), get("on_stale"), bool(get("enable"))
        self.max_input_age = float(get("max_input_age_s"))
        self.joint_names = [n for n in get("joint_names") if n]
        self._ensemble = float(get("temporal_ensemble"))
        self._n_action_steps = int(get("n_action_steps")) or None
        self.runner = self.runtime.runner(self._n_action_steps, self._ensemble if self._ensemble >= 0 else None)

        self._state = threading.Lock()  # inputs and counters
        self._infer = threading.Lock()  # the runtime's buffers and the runner's queue
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._last_action: np.ndarray | None = None
        self.actions_published = 0
        self.stale_reason = "waiting for inputs"

        # Sensor-data style by default: best effort, keep the last few; `reliable` for lock-step sim.
        reliability = (ReliabilityPolicy.BEST_EFFORT if get("qos_reliability") == "best_effort"
                       else ReliabilityPolicy.RELIABLE)
        qos = QoSProfile(depth=int(get("qos_depth")), reliability=reliability)
        observation = self.runtime.policy.observation
        self.slots: dict[str, InputSlot] = {}
        for camera in observation.cameras:
            topic = topics.image_topic(camera.name)
            self.slots[camera.name] = InputSlot(topic)
            self.create_subscription(Image, topic, lambda msg, c=camera: self._on_image(c, msg), qos)
        self.slots["proprio"] = InputSlot(topics.JOINT_STATES)
        self.create_subscription(JointState, topics.JOINT_STATES, self._on_joint_state, qos)

        self.action_pub = self.create_publisher(Float32MultiArray, topics.ACTION, 10)
        self.trajectory_pub = (self.create_publisher(JointTrajectory, topics.ACTION_TRAJECTORY, 10)
                               if get("publish_trajectory") else None)
        self.f64_pub = self.create_publisher(Float64MultiArray, topics.ACTION_F64, 10) if get("publish_f64") else None
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)

        rate = float(get("control_rate_hz")) or self._task_schema().control_hz
        self.control_rate_hz = rate
        self.create_timer(float(get("diagnostics_period_s")), self._publish_diagnostics)
        self._wake, self._stop = threading.Event(), threading.Event()
        self._worker = threading.Thread(target=self._inference_loop, name="mt_policy_inference", daemon=True)
        self._worker.start()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        largest = max((c.height * c.width * 3 for c in observation.cameras), default=0)
        if largest > LARGE_FRAME_BYTES and "FASTDDS_BUILTIN_TRANSPORTS" not in os.environ:
            self.get_logger().warn(
                f"camera frames of {largest // 1024} KiB with Fast DDS's default transports: images from other "
                f"processes may never arrive; set FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (serve.launch.py does)")
        self.get_logger().info(
            f"serving {self.runtime.policy.directory} on {self.runtime.provider}: task {self.runtime.task} "
            f"(of {', '.join(self.runtime.tasks)}), {self.trigger} trigger at {rate:g} Hz, "
            f"actuation {'ENABLED' if self.enabled else 'disabled (set enable:=true)'}")

    # ------------------------------------------------------------------ parameters
    @staticmethod
    def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            raise MtPolicyError(f"parameter {name!r} is {value!r}; choose one of {', '.join(choices)}")

    def _task_schema(self):
        return self.runtime.policy.tasks[self.runtime.policy.task_index(self.runtime.task)].schema

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        choices = {"on_stale": ("stop", "hold")}
        for p in params:
            if p.name == "task" and p.value not in self.runtime.tasks:
                return SetParametersResult(successful=False, reason=(
                    f"unknown task {p.value!r}; known tasks: {', '.join(self.runtime.tasks)} "
                    f"(still serving {self.runtime.task})"))
            if p.name in choices and p.value not in choices[p.name]:
                return SetParametersResult(successful=False, reason=f"{p.name} must be one of {choices[p.name]}")
            if p.name == "max_input_age_s" and not p.value > 0:
                return SetParametersResult(successful=False, reason="max_input_age_s must be > 0")
            if p.name in ("model", "provider", "threads", "trigger", "qos_reliability", "qos_depth",
                          "control_rate_hz", "n_action_steps", "temporal_ensemble", "publish_trajectory",
                          "publish_f64", "diagnostics_period_s", "joint_names"):
                return SetParametersResult(successful=False, reason=f"{p.name} is read at start-up; restart the node")
        for p in params:
            if p.name == "task":
                self._switch_task(p.value)
            elif p.name == "enable":
                self.enabled = bool(p.value)
                self.get_logger().info(f"actuation {'ENABLED' if self.enabled else 'disabled'}")
            elif p.name == "on_stale":
                self.on_stale = p.value
            elif p.name == "max_input_age_s":
                self.max_input_age = float(p.value)
        return SetParametersResult(successful=True)

    def _switch_task(self, task: str) -> None:
        """New head from the next step on: empty action queue, and only inputs that arrive after the switch."""
        with self._infer, self._state:
            self.runtime.set_task(task)
            self.runner.reset()
            for slot in self.slots.values():
                slot.clear()
            self._last_action = None
            self.stale_reason = "waiting for inputs after a task switch"
        self.get_logger().info(f"task -> {task}")

    # ------------------------------------------------------------------ inputs
    def _drop(self, slot: InputSlot, err: MessageError) -> None:
        now = time.monotonic()
        with self._state:
            slot.dropped += 1
            quiet = now - slot.last_error < ERROR_THROTTLE_S  # throttled per topic, not per call site
            if not quiet:
                slot.last_error, suppressed, slot.suppressed = now, slot.suppressed, 0
            else:
                slot.suppressed += 1
        if not quiet:
            more = f" ({suppressed} more dropped since the last report)" if suppressed else ""
            self.get_logger().error(f"dropped: {err}{more}")

    def _accept(self, slot: InputSlot, value: np.ndarray) -> None:
        now = time.monotonic()
        with self._state:
            slot.overwritten += slot.fresh
            slot.value, slot.received, slot.fresh = value, now, True
            slot.accepted += 1
            slot.arrivals.append(now)
            ready = self.trigger == "observation" and all(s.fresh for s in self.slots.values())
        if ready:
            self._wake.set()

    def _on_image(self, camera: Any, msg: Image) -> None:
        slot = self.slots[camera.name]
        try:
            self._accept(slot, image_to_array(msg, slot.topic, camera.height, camera.width))
        except MessageError as err:
            self._drop(slot, err)

    def _on_joint_state(self, msg: JointState) -> None:
        slot = self.slots["proprio"]
        try:
            self._accept(slot, joint_state_to_proprio(msg, slot.topic, self.runtime.proprio_size, self.joint_names))
        except MessageError as err:
            self._drop(slot, err)

    # ------------------------------------------------------------------ acting
    def _stale(self, now: float) -> str:
        for slot in self.slots.values():
            if slot.value is None:
                return f"no {slot.topic} yet"
            if now - slot.received > self.max_input_age:
                return f"{slot.topic} is {now - slot.received:.2f} s old (limit {self.max_input_age:g} s)"
        return ""

    def _inference_loop(self) -> None:
        """Timer trigger: act every control period (skipping missed ticks, never bursting to catch up).
        Observation trigger: act when the input callbacks report a complete fresh set."""
        period, next_tick = 1.0 / self.control_rate_hz, time.monotonic()
        while not self._stop.is_set():
            if self.trigger == "timer":
                next_tick += period
                delay = next_tick - time.monotonic()
                if delay < 0:
                    next_tick, delay = time.monotonic(), 0.0
                if self._stop.wait(delay):
                    break
            else:
                self._wake.wait()
                self._wake.clear()
                if self._stop.is_set():
                    break
            try:
                self._act()
            except Exception as err:  # keep serving: one bad step must not kill the robot's policy thread
                self.get_logger().error(f"inference step failed: {type(err).__name__}: {err}",
                                        throttle_duration_sec=ERROR_THROTTLE_S)

    def destroy_node(self) -> None:
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=2.0)
        super().destroy_node()

    def _act(self) -> None:
        with self._infer:
            with self._state:
                if self.trigger == "observation" and not all(s.fresh for s in self.slots.values()):
                    return  # another wake-up already consumed this set
                self.stale_reason = self._stale(time.monotonic())
                values = {name: slot.value for name, slot in self.slots.items()}
                for slot in self.slots.values():
                    slot.fresh = False
            if self.stale_reason:
                if self.on_stale == "hold" and self._last_action is not None and self.enabled:
                    self._publish(self._last_action)
                return
            proprio = values.pop("proprio")
            obs = build_observation(self.runtime.policy.observation, values, proprio, where=NODE_NAME)
            start = time.perf_counter()
            try:
                action = self.runner.act(obs)
            except MtPolicyError as err:
                self.get_logger().error(f"inference refused the observation: {err}", throttle_duration_sec=ERROR_THROTTLE_S)
                return
            self._latencies.append(time.perf_counter() - start)
            self._last_action = action
            if self.enabled:
                self._publish(action)

    def _publish(self, action: np.ndarray) -> None:
        self.action_pub.publish(Float32MultiArray(data=action.tolist()))
        if self.f64_pub is not None:
            self.f64_pub.publish(Float64MultiArray(data=action.astype(np.float64).tolist()))
        if self.trajectory_pub is not None:
            point = JointTrajectoryPoint(positions=action.astype(np.float64).tolist())
            point.time_from_start.nanosec = int(1e9 / self.control_rate_hz)
            names = self.joint_names if len(self.joint_names) == len(action) else [f"a{i}" for i in range(len(action))]
            self.trajectory_pub.publish(JointTrajectory(joint_names=names, points=[point]))
        self.actions_published += 1

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> DiagnosticStatus:
        now = time.monotonic()
        with self._state:
            stale = self._stale(now)
            values = [("task", self.runtime.task), ("provider", self.runtime.provider),
                      ("enabled", str(self.enabled)), ("trigger", self.trigger),
                      ("actions_published", str(self.actions_published))]
            for slot in self.slots.values():
                age = f"{now - slot.received:.3f}" if slot.value is not None else "none"
                values += [(f"{slot.topic} age_s", age), (f"{slot.topic} rate_hz", f"{slot.rate_hz(now):.1f}"),
                           (f"{slot.topic} accepted", str(slot.accepted)), (f"{slot.topic} dropped", str(slot.dropped)),
                           (f"{slot.topic} overwritten", str(slot.overwritten))]
        latencies = np.array(self._latencies) * 1e3
        if latencies.size:
            values += [("inference_p50_ms", f"{np.percentile(latencies, 50):.3f}"),
                       ("inference_p99_ms", f"{np.percentile(latencies, 99):.3f}")]
        if stale:
            level, message = DiagnosticStatus.WARN, f"stale inputs, output {self.on_stale}: {stale}"
        elif not self.enabled:
            level, message = DiagnosticStatus.OK, "ready, actuation disabled"
        else:
            level, message = DiagnosticStatus.OK, f"serving {self.runtime.task}"
        return DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: policy", message=message,
                                hardware_id=str(self.runtime.policy.directory),
                                values=[KeyValue(key=k, value=v) for k, v in values])

    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray(status=[self.diagnostics()])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = PolicyServer()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except MtPolicyError as err:
        print(f"{NODE_NAME}: error: {err}", flush=True)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
