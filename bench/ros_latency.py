"""ROS 2 serving latency: observation publish -> action receive through the serve node, against an echo floor.

    .venv/bin/python bench/ros_latency.py [--duration 60] [--warmup 3] [--calls 1000] [--no-large-data-seconds 10]

The default policy of `bench/runtime.py` (`ModelConfig()`, one mt50 head, one `corner2` camera +
4-D `agent_pos`) with random weights, exported for 96x96 and for 480x480 rgb8 images, is served by
`python -m mt_policy_ros.serve_node` in its own process (own ROS_DOMAIN_ID: from this PID, skipping
domains where other nodes are heard) with
`trigger:=observation` (one action per fresh image + joint_states pair), `n_action_steps:=1` (every
action runs the network, the worst case) and the CPU provider on one thread. This process publishes
one image then one JointState per tick at a fixed rate (best effort, depth 5: the node's input QoS)
and stamps each tick before its image is published; the action that answers it is found by value
(each tick's joint positions are one of 256 random vectors whose actions this process computed with
the same `PolicyRuntime` beforehand), so a lost message costs one action and never shifts the
pairing. The floor is the same round trip through an echo node (this script, `--echo-node`): the
same subscriptions, QoS and executor (single-threaded) as the serve node, no conversion and no
policy; it answers a fresh pair with the joint positions. Extra, shorter rows run the same echo on
rclpy's MultiThreadedExecutor(3) with a reentrant input group (the serve node's executor before
it went single-threaded), to show what that executor costs. The runtime's own latency is
`PolicyRuntime.predict` timed by `deploy.latency.time_calls` (1 thread), before any ROS process
starts. The serve node's source hash is recorded before and after the runs (a change is flagged).

Fast DDS: both processes get FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (shared memory + TCP for data);
480x480 frames (691 KB) need it. One short 480x480 run without it shows what happens otherwise.

Goals: p99 <= echo p99 + runtime p99 + 1 ms (per image size, 30 Hz); no message lost at 30 Hz;
the node sustains 100 Hz with 96x96 images. Writes bench/results/ros_latency.json and prints a
Markdown table. ROS_LATENCY_RAW=1 adds every tick's latency to the JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # bench/ siblings

from bench_json import write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ros_latency.json"
CAMERA = "corner2"
VARIANTS = 256  # distinct joint vectors; a tick is identified by its action modulo this many ticks
MATCH_TOL = 2e-6  # max |received - expected| to accept an action as the answer to a tick
TRANSPORT_VAR = "FASTDDS_BUILTIN_TRANSPORTS"


# ---------------------------------------------------------------------------------------------- echo node
def echo_main(executor_kind: str) -> int:
    """The floor: the serve node's subscriptions and QoS; publishes the joint positions per fresh pair.

    `single`: SingleThreadedExecutor, as the serve node; `multi`: MultiThreadedExecutor(3), for comparison."""
    import rclpy
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float32MultiArray

    from mt_policy_ros import topics

    rclpy.init()
    node = rclpy.create_node("mt_policy_echo")
    try:
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        group = ReentrantCallbackGroup()
        lock = threading.Lock()
        fresh = {"image": False, "joints": False}
        latest: list[list[float]] = [[]]
        pub = node.create_publisher(Float32MultiArray, topics.ACTION, 10)

        def accept(key: str, positions: list[float] | None = None) -> None:
            with lock:
                fresh[key] = True
                if positions is not None:
                    latest[0] = positions
                ready = all(fresh.values())
                if ready:
                    fresh["image"] = fresh["joints"] = False
                    data = latest[0]
            if ready:
                pub.publish(Float32MultiArray(data=data))

        node.create_subscription(Image, topics.image_topic(CAMERA), lambda m: accept("image"), qos,
                                 callback_group=group)
        node.create_subscription(JointState, topics.JOINT_STATES, lambda m: accept("joints", list(m.position)), qos,
                                 callback_group=group)
        executor = MultiThreadedExecutor(num_threads=3) if executor_kind == "multi" else SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


# ---------------------------------------------------------------------------------------------- models
def build_exports(root: Path) -> dict[int, Path]:
    """The default bench/runtime.py policy for 96x96, and the same architecture on 480x480, exported."""
    from deploy.onnx_export import export
    from mt_policy.checkpoint import save_checkpoint
    from mt_policy.model import ModelConfig, MultiTaskPolicy, TaskEntry
    from sim.suites import get_suite
    from sim.tasks import ObservationConfig, get_task

    spec = importlib.util.spec_from_file_location("bench_runtime", Path(__file__).resolve().parent / "runtime.py")
    bench_runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_runtime)
    import torch

    torch.manual_seed(0)
    policies = {96: bench_runtime.default_policy(1)}
    name = get_suite("mt50")[0].name
    obs480 = ObservationConfig(cameras=(CAMERA,), image_size=(480, 480), proprio="agent_pos")
    policies[480] = MultiTaskPolicy(ModelConfig(task_embedding_scale=1.0),
                                    [TaskEntry(get_task(name).info(), get_task(name).schema(obs480))]).eval()
    exports = {}
    for size, policy in policies.items():
        ckpt = save_checkpoint(policy, root / f"ckpt{size}")
        exports[size] = export(ckpt, root / f"export{size}", log=lambda _: None).directory
    return exports


def runtime_figures(export_dir: Path, size: int, calls: int, warmup: int) -> tuple[dict[str, Any], Any, Any]:
    """PolicyRuntime.predict latency (1 thread), the image to publish, and the joint vectors with their actions."""
    import numpy as np

    from deploy.latency import example_observation, time_calls
    from deploy.runtime import PolicyRuntime

    runtime = PolicyRuntime(export_dir, provider="cpu", threads=1)
    obs = example_observation(runtime)
    timing = time_calls(lambda: runtime.predict(obs), calls, warmup) | {"warmup": warmup, "task": runtime.task}
    rng = np.random.default_rng(size)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    joints = (2.0 * rng.standard_normal((VARIANTS, runtime.proprio_size))).astype(np.float32)
    actions = np.stack([runtime.predict({f"obs/{CAMERA}": image, "obs/proprio": j})[0].copy() for j in joints])
    gaps = np.linalg.norm(actions[:, None] - actions[None], axis=-1) + np.eye(VARIANTS) * 1e9
    if gaps.min() < 10 * MATCH_TOL:
        raise SystemExit(f"{size}x{size}: two joint vectors give actions {gaps.min():.2e} apart; "
                         f"cannot tell ticks apart by their action")
    return timing, image, (joints, actions)


# ---------------------------------------------------------------------------------------------- one run
class Case:
    def __init__(self, size: int, rate: float, path: str, large_data: bool, duration: float) -> None:
        self.size, self.rate, self.path, self.large_data, self.duration = size, rate, path, large_data, duration

    @property
    def label(self) -> str:
        return (f"{self.size}x{self.size} @ {self.rate:g} Hz via {self.path}"
                f"{'' if self.large_data else ' (default transports, no LARGE_DATA)'}")


def percentiles(values: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    a = np.asarray(values) * 1e3
    return {"p50_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()),
            "mean_ms": float(a.mean())}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_case(case: Case, model: Path, domain: int, image: Any, table: tuple[Any, Any], warmup: float,
             logdir: Path) -> dict[str, Any]:
    import numpy as np
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float32MultiArray

    from mt_policy_ros import topics
    from mt_policy_ros.conversions import array_to_image

    env = os.environ | {"ROS_DOMAIN_ID": str(domain), "PYTHONUNBUFFERED": "1"}
    env.pop(TRANSPORT_VAR, None)
    if case.large_data:
        env[TRANSPORT_VAR] = "LARGE_DATA"
    if case.path == "policy":
        args = [sys.executable, "-m", "mt_policy_ros.serve_node", "--ros-args", "-p", f"model:={model}",
                "-p", "enable:=true", "-p", "trigger:=observation", "-p", "n_action_steps:=1",
                "-p", "provider:=cpu", "-p", "threads:=1", "-p", "diagnostics_period_s:=0.25"]
    else:
        args = [sys.executable, str(Path(__file__).resolve()), "--echo-node",
                {"echo": "single", "echo-mte": "multi"}[case.path]]
    log = logdir / f"{case.path}-{case.size}-{case.rate:g}-{'ld' if case.large_data else 'default'}.log"
    saved = os.environ.get(TRANSPORT_VAR)
    os.environ.pop(TRANSPORT_VAR, None)  # this process's participant uses the same transports as the node
    if case.large_data:
        os.environ[TRANSPORT_VAR] = "LARGE_DATA"
    load_before = os.getloadavg()
    with open(log, "w") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    context.init(domain_id=domain)
    node = rclpy.create_node("ros_latency_bench", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    joints, expected = table
    if case.path != "policy":
        expected = joints  # the echo answers with the joint positions themselves
    try:
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)  # the node's input QoS
        image_pub = node.create_publisher(Image, topics.image_topic(CAMERA), qos)
        joint_pub = node.create_publisher(JointState, topics.JOINT_STATES, qos)
        image_msg = array_to_image(Image(), image)
        image_msg.header.frame_id = CAMERA
        joint_msgs = [JointState(position=[float(x) for x in j]) for j in joints]

        sent: list[float] = []  # publish time of tick `seq` (perf_counter, before its image)
        answers: list[tuple[int, float]] = []  # (seq, receive time)
        unmatched: list[float] = []
        diags: list[tuple[float, dict[str, str]]] = []

        def on_action(msg: Float32MultiArray) -> None:
            now = time.perf_counter()
            action = np.asarray(msg.data, np.float32)
            if not sent or action.shape != expected.shape[1:]:
                unmatched.append(float("inf"))
                return
            err = np.abs(expected - action).max(axis=1)
            r = int(err.argmin())
            if err[r] > MATCH_TOL:
                unmatched.append(float(err[r]))
                return
            last = len(sent) - 1
            seq = last - ((last - r) % VARIANTS)  # the latest tick published with these joint positions
            if seq >= 0:
                answers.append((seq, now))
            else:
                unmatched.append(float(err[r]))

        node.create_subscription(Float32MultiArray, topics.ACTION, on_action, 100)
        node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, lambda m: diags.extend(
            (time.perf_counter(), {kv.key: kv.value for kv in s.values}) for s in m.status), 10)

        def spin_until(deadline: float) -> None:
            while (left := deadline - time.perf_counter()) > 0:
                executor.spin_once(timeout_sec=left)
            if process.poll() is not None:
                raise RuntimeError(f"{case.label}: the node exited ({process.returncode}):\n{log.read_text()[-3000:]}")

        def server_counters(after: float, timeout: float = 5.0) -> dict[str, str]:
            """The first diagnostics the node sends after `after` (policy path only)."""
            end = time.perf_counter() + timeout
            while time.perf_counter() < end:
                fresh = [d for t, d in diags if t > after]
                if fresh:
                    return fresh[0]
                spin_until(time.perf_counter() + 0.02)
            return {}

        # Ready: both sides matched (and, for the policy, the node talking).
        end = time.perf_counter() + 60.0
        while not (image_pub.get_subscription_count() and joint_pub.get_subscription_count()
                   and node.count_publishers(topics.ACTION) and (diags or case.path != "policy")):
            if time.perf_counter() > end:
                raise RuntimeError(f"{case.label}: node not ready after 60 s:\n{log.read_text()[-3000:]}")
            spin_until(time.perf_counter() + 0.1)

        period = 1.0 / case.rate
        publish_cost: list[float] = []
        late = 0

        def publish_for(seconds: float) -> tuple[int, int, float, float]:
            nonlocal late
            first = len(sent)
            start = next_tick = time.perf_counter()
            stop = start + seconds
            while next_tick < stop:
                spin_until(next_tick)
                t0 = time.perf_counter()
                seq = len(sent)
                sent.append(t0)
                image_pub.publish(image_msg)
                joint_pub.publish(joint_msgs[seq % VARIANTS])
                publish_cost.append(time.perf_counter() - t0)
                next_tick += period
                if time.perf_counter() > next_tick + period:  # fell more than a tick behind: do not burst
                    late += 1
                    next_tick = time.perf_counter()
            return first, len(sent), start, sent[-1]

        publish_for(warmup)
        spin_until(time.perf_counter() + 0.3)
        before = server_counters(time.perf_counter()) if case.path == "policy" else {}
        publish_cost.clear()
        late = 0
        cpu_node, cpu_self = cpu_seconds(process.pid), sum(os.times()[:2])
        first, last, t_start, t_last = publish_for(case.duration)
        cpu_node, cpu_self = cpu_seconds(process.pid) - cpu_node, sum(os.times()[:2]) - cpu_self
        spin_until(time.perf_counter() + 1.0)  # answers still in flight
        after = server_counters(time.perf_counter()) if case.path == "policy" else {}
    finally:
        node.destroy_node()
        context.try_shutdown()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if saved is None:
            os.environ.pop(TRANSPORT_VAR, None)
        else:
            os.environ[TRANSPORT_VAR] = saved

    window = [(seq, t) for seq, t in answers if first <= seq < last]
    seen: dict[int, float] = {}
    duplicated: list[int] = []
    for seq, t in window:
        if seq in seen:
            duplicated.append(seq)
        else:
            seen[seq] = t
    duplicates = len(duplicated)
    missing = [s for s in range(first, last) if s not in seen]
    latencies = [seen[s] - sent[s] for s in sorted(seen)]
    published = last - first
    span = t_last - t_start + period
    result: dict[str, Any] = {
        "size": case.size, "rate_hz": case.rate, "path": case.path,
        "transports": "LARGE_DATA" if case.large_data else "default", "duration_s": case.duration,
        "published": published, "received": len(seen), "dropped": published - len(seen),
        "duplicates": duplicates, "unmatched": len(unmatched),
        "late_ticks": late, "publish_rate_hz": published / span, "action_rate_hz": len(seen) / span,
        "publish_cost": percentiles(publish_cost),
        "node_cpu_ms_per_tick": cpu_node * 1e3 / max(published, 1),
        "bench_cpu_ms_per_tick": cpu_self * 1e3 / max(published, 1),
        "late_answers": sum(1 for s in seen if seen[s] - sent[s] > period),
        "dropped_ticks_t_s": [round(sent[s] - t_start, 3) for s in missing[:20]],
        "duplicated_ticks_t_s": [round(sent[s] - t_start, 3) for s in duplicated[:20]],
        "worst": [{"t_s": round(sent[s] - t_start, 3), "ms": round((seen[s] - sent[s]) * 1e3, 3)}
                  for s in sorted(seen, key=lambda s: sent[s] - seen[s])[:10]],
        **percentiles(latencies),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    if os.environ.get("ROS_LATENCY_RAW"):
        result["raw_ms"] = [round((seen[s] - sent[s]) * 1e3, 3) if s in seen else None for s in range(first, last)]
    if case.path == "policy":
        result["server"] = {"before": before, "after": after}
        if before and after:
            result["server_actions"] = int(after["actions_published"]) - int(before["actions_published"])
            result["server_rejected"] = sum(int(after[f"{t} dropped"]) for t in (topics.image_topic(CAMERA),
                                                                                  topics.JOINT_STATES))
            result["server_inference_p50_ms"] = float(after.get("inference_p50_ms", "nan"))
            result["server_inference_p99_ms"] = float(after.get("inference_p99_ms", "nan"))
    return result


def quiet_domain(start: int) -> int:
    """The first ROS domain from `start` (70..101 wrapped) on which no other participant is heard for 2 s."""
    import rclpy

    for i in range(32):
        domain = 70 + (start - 70 + i) % 32
        context = rclpy.Context()
        context.init(domain_id=domain)
        node = rclpy.create_node("ros_latency_probe", context=context)
        try:
            end = time.perf_counter() + 2.0
            while time.perf_counter() < end and len(node.get_node_names_and_namespaces()) <= 1:
                time.sleep(0.1)
            others = [n for n in node.get_node_names_and_namespaces() if n[0] != "ros_latency_probe"]
        finally:
            node.destroy_node()
            context.try_shutdown()
        if not others:
            return domain
        print(f"ROS_DOMAIN_ID {domain} is in use by {others[:3]}; trying the next", flush=True)
    raise SystemExit("no quiet ROS domain in 70..101")


def node_source() -> dict[str, str]:
    """The serve node under test: its file's sha256 and the repository's HEAD (and whether the file is edited)."""
    import hashlib

    path = ROOT / "ros2_ws" / "src" / "mt_policy" / "mt_policy_ros" / "serve_node.py"
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", str(path)], capture_output=True, text=True).stdout.strip()
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16], "head": head or "?",
            "edited_since_head": bool(dirty)}


# ---------------------------------------------------------------------------------------------- report
def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{TRANSPORT_VAR}=LARGE_DATA in both processes unless the row says default: 480x480 rgb8 frames "
             "(691 KB) need it with Fast DDS.", "",
             "| image | rate | path | transports | p50 ms | p99 ms | max ms | published | received | dropped "
             "| duplicated | node acted | node rejected | action rate Hz | node CPU ms/obs |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        path = {"policy": "policy", "echo": "echo (floor)", "echo-mte": "echo, MultiThreadedExecutor(3)"}[r["path"]]
        lines.append(f"| {r['size']}x{r['size']} | {r['rate_hz']:g} Hz | {path} | {r['transports']} | "
                     f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['max_ms'])} | {r['published']} | "
                     f"{r['received']} | {r['dropped']} | {r['duplicates']} | {r.get('server_actions', '-')} | "
                     f"{r.get('server_rejected', '-')} | {r['action_rate_hz']:.1f} | {r['node_cpu_ms_per_tick']:.2f} |")
    lines += ["", "| image | PolicyRuntime.predict p50 ms | p99 ms | max ms | calls |", "|---|---:|---:|---:|---:|"]
    for size, t in result["runtime"].items():
        lines.append(f"| {size}x{size} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} | {t['max_ms']:.3f} | {t['calls']} |")
    lines.append("")
    for goal in result["goals"]:
        lines.append(f"- {goal['goal']}: **{'met' if goal['met'] else 'not met'}** ({goal['detail']})")
    return "\n".join(lines)


def goals(runs: list[dict[str, Any]], runtime: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    def find(size: int, rate: float, path: str, large: bool = True) -> dict[str, Any] | None:
        return next((r for r in runs if r["size"] == size and r["rate_hz"] == rate and r["path"] == path
                     and (r["transports"] == "LARGE_DATA") == large), None)

    out = []
    for size in (96, 480):
        policy, echo = find(size, 30, "policy"), find(size, 30, "echo")
        if policy and echo and policy["p99_ms"] is not None and echo["p99_ms"] is not None:
            bound = echo["p99_ms"] + runtime[size]["p99_ms"] + 1.0
            out.append({"goal": f"{size}x{size} @ 30 Hz: p99 <= echo p99 + runtime p99 + 1 ms",
                        "met": policy["p99_ms"] <= bound, "bound_ms": bound,
                        "detail": f"p99 {policy['p99_ms']:.2f} ms vs {echo['p99_ms']:.2f} + "
                                  f"{runtime[size]['p99_ms']:.2f} + 1 = {bound:.2f} ms"})
    at30 = [r for r in runs if r["rate_hz"] == 30 and r["transports"] == "LARGE_DATA"]
    lost = {f"{r['size']}x{r['size']} {r['path']}": r["dropped"] + r["duplicates"] + r.get("server_rejected", 0)
            for r in at30}
    node = [r for r in at30 if r["path"] == "policy"]
    out.append({"goal": "zero drops at 30 Hz through the node (LARGE_DATA)",
                "met": bool(node) and not any(lost[f"{r['size']}x{r['size']} policy"] for r in node),
                "detail": "lost + duplicated + rejected: " + ", ".join(f"{k} {v}" for k, v in lost.items())})
    fast = find(96, 100, "policy")
    if fast:
        ok = fast["dropped"] == 0 and fast["duplicates"] == 0 and fast["action_rate_hz"] >= 99.0
        out.append({"goal": "the node sustains 100 Hz with 96x96 images", "met": ok,
                    "detail": f"{fast['action_rate_hz']:.1f} actions/s for {fast['publish_rate_hz']:.1f} "
                              f"observations/s, {fast['dropped']} dropped, p99 {fmt(fast['p99_ms'])} ms"})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds published before each measured run")
    parser.add_argument("--calls", type=int, default=1000, help="PolicyRuntime.predict calls timed per image size")
    parser.add_argument("--no-large-data-seconds", type=float, default=10.0,
                        help="length of the 480x480 run without LARGE_DATA (0: skip)")
    parser.add_argument("--mte-echo-seconds", type=float, default=15.0,
                        help="length of the extra echo runs on a MultiThreadedExecutor(3) (0: skip)")
    parser.add_argument("--only", default="", help="comma-separated run labels to keep, e.g. 96-30-policy (dev)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--echo-node", choices=("multi", "single"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_node:
        return echo_main(args.echo_node)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through every finally: nodes terminated

    import numpy as np  # noqa: F401
    import onnxruntime
    import rclpy  # noqa: F401

    domain = quiet_domain(70 + os.getpid() % 32)  # unique per run of this script; skips domains others use
    cases = [Case(96, 30, "policy", True, args.duration), Case(96, 30, "echo", True, args.duration),
             Case(480, 30, "policy", True, args.duration), Case(480, 30, "echo", True, args.duration),
             Case(96, 100, "policy", True, args.duration)]
    if args.no_large_data_seconds > 0:
        cases.append(Case(480, 30, "policy", False, args.no_large_data_seconds))
    if args.mte_echo_seconds > 0:
        cases[2:2] = [Case(96, 30, "echo-mte", True, args.mte_echo_seconds)]
        cases[5:5] = [Case(480, 30, "echo-mte", True, args.mte_echo_seconds)]
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if f"{c.size}-{c.rate:g}-{c.path}{'' if c.large_data else '-default'}" in keep]
    print(f"ROS_DOMAIN_ID {domain}; {TRANSPORT_VAR}=LARGE_DATA for both processes (480x480 rgb8 frames, "
          f"691 KB, need it with Fast DDS)")
    runs: list[dict[str, Any]] = []
    source_before = node_source()
    with tempfile.TemporaryDirectory(prefix="ros-latency-") as tmp:
        exports = build_exports(Path(tmp))
        runtime, images, tables = {}, {}, {}
        for size, directory in exports.items():
            runtime[size], images[size], tables[size] = runtime_figures(
                directory, size, args.calls if size == 96 else max(args.calls // 3, 100), 50)
            print(f"PolicyRuntime.predict {size}x{size}: p50 {runtime[size]['p50_ms']:.3f} ms  "
                  f"p99 {runtime[size]['p99_ms']:.3f} ms  max {runtime[size]['max_ms']:.3f} ms", flush=True)
        for case in cases:
            print(f"{case.label}: {case.duration:g} s ...", flush=True)
            r = run_case(case, exports[case.size], domain, images[case.size], tables[case.size], args.warmup,
                         Path(tmp))
            runs.append(r)
            print(f"  p50 {fmt(r['p50_ms'])} ms  p99 {fmt(r['p99_ms'])} ms  max {fmt(r['max_ms'])} ms  "
                  f"published {r['published']}  received {r['received']}  dropped {r['dropped']}  "
                  f"node acted {r.get('server_actions', '-')}  unmatched {r['unmatched']}  "
                  f"duplicates {r['duplicates']}  node CPU {r['node_cpu_ms_per_tick']:.2f} ms/tick", flush=True)
    source_after = node_source()
    if source_after != source_before:
        print(f"WARNING: serve_node.py changed during the runs ({source_before} -> {source_after}); "
              f"rows measured different code", flush=True)
    result = {
        "command": " ".join([".venv/bin/python bench/ros_latency.py", *sys.argv[1:]]),
        "serve_node": {"before": source_before, "after": source_after},
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "calls_96": args.calls,
                     "calls_480": max(args.calls // 3, 100), "variants": VARIANTS, "match_tol": MATCH_TOL,
                     "domain_id": domain,
                     "echo": "SingleThreadedExecutor, as the serve node (the floor); echo-mte: "
                             "MultiThreadedExecutor(3) + reentrant input group, to show what that executor costs",
                     "server_params": ["enable:=true", "trigger:=observation", "n_action_steps:=1", "provider:=cpu",
                                       "threads:=1", "diagnostics_period_s:=0.25", "qos: best_effort depth 5"],
                     "latency": "perf_counter before the image publish -> perf_counter in the action callback",
                     "dropped": "ticks published in the measured window without an answering action",
                     "node acted": "the node's actions_published over the window (from /diagnostics)",
                     "node rejected": "the node's per-topic 'dropped' counters (malformed messages)"},
        "runtime": runtime, "runs": runs, "goals": goals(runs, runtime),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__},
    }
    print("\n" + format_table(result))
    write_json(result, args.out)
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
