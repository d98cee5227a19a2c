"""Sim evaluation through ROS 2: the serve node (a separate process) drives `SimRobot` in lock-step.

    mt-policy eval --onnx runs/demo/export --over-ros --episodes 10

The same episodes as `sim.evaluate.evaluate` (each task on `EVAL_SEEDS.seed(i)`, the same checks, the
same eval.json/eval.md/eval.png), but every action crosses ROS: `python -m mt_policy_ros.serve_node`
with `trigger:=observation` and reliable inputs acts once per observation `SimRobot` publishes. Each
episode starts by setting the server's `task` parameter, which empties its action queue and drops
its inputs, so episodes do not leak into each other. Both sides use a ROS domain id derived from
this process's id and a namespace of their own, so concurrent evaluations do not hear each other.
The server's output goes to `serve_node.log` in the output directory. No videos.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter_client import AsyncParameterClient
from rclpy.signals import SignalHandlerOptions

import mt_policy_ros
from mt_policy.progress import progress_bar
from mt_policy_ros.sim_bridge import SERVER_NODE, BridgeError, SimRobot, set_server_task
from sim.eval_report import EpisodeOutcome, format_markdown, plot_success
from sim.evaluate import (
    EVAL_JSON,
    EVAL_MD,
    EVAL_PNG,
    EvalError,
    PolicySource,
    _report,
    plan_evaluation,
)
from sim.pool import sigterm_as_interrupt

__all__ = ["evaluate_over_ros", "ros_domain_id"]

SERVER_LOG = "serve_node.log"
STARTUP_TIMEOUT_S = 60.0
"""Server start-up: python, rclpy and onnxruntime imports, the session, DDS discovery (seconds on a busy machine)."""
STOP_TIMEOUT_S = 5.0
STEP_TIMEOUT_S = 10.0
"""Per action. The serve node's MultiThreadedExecutor (rclpy 9.1, without the fix of ros2/rclpy#1547)
answers most observations within milliseconds but some only after up to ~3 s (measured); a lost
message would never be answered."""


_EVAL_COUNT = itertools.count()


def ros_domain_id(pid: int | None = None) -> int:
    """A domain id in 1..101 from the process id (Fast DDS's default ports fit domains up to 232)."""
    return 1 + (os.getpid() if pid is None else pid) % 101


class _Server:
    """The serve node as a child process, logging to a file; `stop()` always ends it (SIGINT, SIGTERM, SIGKILL)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "mt_policy_ros.serve_node", *args], env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent())

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(f"  | {line}" for line in text[-lines:])

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise EvalError(f"the serve node exited with status {code}; its log ({self.log_path}) ends:\n{self.tail()}")

    def stop(self) -> int | None:
        try:
            for sig, wait in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
                if self.process.poll() is not None:
                    break
                self.process.send_signal(sig)
                try:
                    self.process.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
            return self.process.poll()
        finally:
            self._log.close()


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn making the child get SIGTERM when this process dies (Linux), so no server outlives an eval.

    (Strictly, when the thread that started it ends: call `evaluate_over_ros` from a thread that outlives it.)
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must not import between fork and exec
    return lambda: libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _server_args(export_dir: Path, task: str, namespace: str, provider: str, n_action_steps: int | None,
                 temporal_ensemble: float | None) -> list[str]:
    params = {"model": str(export_dir), "task": task, "provider": provider, "threads": 1, "trigger": "observation",
              "enable": "true", "qos_reliability": "reliable", "n_action_steps": n_action_steps or 0,
              "temporal_ensemble": -1.0 if temporal_ensemble is None else float(temporal_ensemble),
              # One observation's messages are published together, but a late callback for one of them
              # would make the other look stale, and a stale set gets no action: a lock-step stall.
              "max_input_age_s": 60.0}
    args = ["--ros-args", "-r", f"__ns:={namespace}"]
    for name, value in params.items():
        args += ["-p", f"{name}:={value}"]
    return args


def _server_env(domain_id: int) -> dict[str, str]:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    # The child imports the mt_policy_ros this process imported, installed or not.
    package_root = str(Path(mt_policy_ros.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def evaluate_over_ros(
    export_dir: str | Path,
    out_dir: str | Path,
    tasks: str | list[str] | None = None,
    episodes: int = 10,
    n_action_steps: int | None = None,
    max_steps: int | None = None,
    timeout_s: float = STEP_TIMEOUT_S,
    provider: str = "cpu",
    temporal_ensemble: float | None = None,
    progress: bool = True,
    suite_file: str | Path | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
    on_episode: Callable[[EpisodeOutcome, np.ndarray], None] | None = None,
    first_episode: int = 0,
) -> dict[str, Any]:
    """Evaluate an export's tasks over ROS on `episodes` eval seeds; write and return eval.json.

    `timeout_s` bounds the wait for each action (an error naming the topic). `on_episode(outcome,
    actions)` sees every finished episode with the (steps, A) actions the robot received.
    """
    start = time.perf_counter()
    if episodes < 1 or (max_steps is not None and max_steps < 1) or timeout_s <= 0:
        raise EvalError(f"need episodes >= 1, max_steps >= 1, timeout_s > 0; got {episodes}, {max_steps}, {timeout_s}")
    export_dir = Path(export_dir).resolve()
    plan = plan_evaluation(PolicySource(str(export_dir), "onnx", provider), tasks, episodes, n_action_steps,
                           temporal_ensemble, suite_file, max_steps, first_episode)
    info, entries, specs, seeds, limits = plan.info, plan.entries, plan.specs, plan.seeds, plan.limits
    chunk = info.action_chunk

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(specs)
    outcomes: dict[str, list[EpisodeOutcome]] = {n: [] for n in names}
    # A namespace of its own per evaluation: a server of an earlier one in this process (same pid, same
    # domain) that DDS has not yet forgotten must not answer for, or be mistaken for, this one's.
    domain_id, namespace = ros_domain_id(), f"/mt_policy_eval_{os.getpid()}_{next(_EVAL_COUNT)}"
    context = Context()
    robot: SimRobot | None = None
    node: Node | None = None
    bar = progress_bar(len(names) * len(seeds), "eval over ROS", "ep", progress)
    # Started first, so that it boots while this process builds the envs.
    server = _Server(_server_args(export_dir, names[0], namespace, provider, n_action_steps, temporal_ensemble),
                     _server_env(domain_id), out_dir / SERVER_LOG)
    try:
        with sigterm_as_interrupt():
            rclpy.init(context=context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
            robot = SimRobot(export_dir, names[0], context=context, namespace=namespace, record_actions=True)
            node = Node("mt_policy_eval", namespace=namespace, context=context)
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(robot.node)
            executor.add_node(node)
            client = AsyncParameterClient(node, f"{namespace}/{SERVER_NODE}")
            _wait(lambda: client.services_are_ready(), startup_timeout_s, server,
                  f"the serve node's parameter service {namespace}/{SERVER_NODE}/set_parameters")
            robot.wait_for_peers(startup_timeout_s, server.check_alive)
            finished = wins = 0
            for name in names:
                robot.set_task(name)
                for seed in seeds:
                    try:
                        set_server_task(executor, client, name, timeout_s)
                    except BridgeError as err:
                        server.check_alive()
                        raise EvalError(f"{err}; the server log ({server.log_path}) ends:\n{server.tail()}") from None
                    _episode(robot, executor, server, seed, limits[name], timeout_s)
                    outcome = EpisodeOutcome(name, seed, robot.success, robot.steps)
                    outcomes[name].append(outcome)
                    if on_episode is not None:
                        on_episode(outcome, np.array(robot.actions, dtype=np.float32).reshape(-1, robot.schema.action.size))
                    finished, wins = finished + 1, wins + outcome.success
                    bar.set_postfix(success=f"{wins / finished:.0%}", refresh=False)
                    bar.update(1)
    finally:
        bar.close()
        if node is not None:
            node.destroy_node()
        if robot is not None:
            robot.close()
        context.try_shutdown()
        server.stop()

    report = _report(export_dir, entries, specs, outcomes, seeds, n_action_steps or chunk, temporal_ensemble,
                     max_steps, [])
    report["policy"] = {"kind": "onnx", "provider": provider, "over_ros": True}
    report["wall_seconds"] = time.perf_counter() - start
    (out_dir / EVAL_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / EVAL_MD).write_text(format_markdown(report))
    plot_success(report, out_dir / EVAL_PNG)
    return report


def _wait(ready: Callable[[], bool], timeout_s: float, server: _Server, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        server.check_alive()
        if time.monotonic() > deadline:
            raise EvalError(f"{what} did not appear within {timeout_s:g} s; the server log "
                            f"({server.log_path}) ends:\n{server.tail()}")
        time.sleep(0.05)


def _episode(robot: SimRobot, executor: SingleThreadedExecutor, server: _Server, seed: int, max_steps: int,
             timeout_s: float) -> None:
    """One lock-step episode: every observation published must be answered by one action within `timeout_s`."""
    robot.reset(seed, max_steps)
    steps, deadline = 0, time.monotonic() + timeout_s
    while not robot.done:
        executor.spin_once(timeout_sec=0.05)
        if robot.error:
            raise EvalError(robot.error)
        if robot.steps != steps:
            steps, deadline = robot.steps, time.monotonic() + timeout_s
        elif time.monotonic() > deadline:
            server.check_alive()
            raise EvalError(f"no action on {robot.action_topic} within {timeout_s:g} s of the observation for step "
                            f"{steps + 1} of {robot.task} seed {seed}; the server log ({server.log_path}) ends:\n"
                            f"{server.tail()}")
