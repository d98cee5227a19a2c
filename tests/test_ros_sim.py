"""The sim bridge and evaluation over ROS 2 (real rclpy, Fast DDS): the serve node drives SimRobot in lock-step.

Over-ROS evaluation must be the direct evaluation with ROS in between: same episodes, same outcomes,
same actions (the robot records what it received; a direct PolicyRuntime + ChunkRunner rollout
gives the reference), same eval.json except for the policy's description.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from conftest import random_policy  # noqa: E402
from rcl_interfaces.msg import SetParametersResult  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.callback_groups import ReentrantCallbackGroup  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402
from rclpy.task import Future  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float32MultiArray  # noqa: E402

from deploy.onnx_export import export  # noqa: E402
from deploy.runtime import PolicyRuntime  # noqa: E402
from mt_policy.checkpoint import save_checkpoint  # noqa: E402
from mt_policy.cli import main  # noqa: E402
from mt_policy.errors import UnknownNameError  # noqa: E402
from mt_policy.model import ModelConfig  # noqa: E402
from mt_policy.seeds import EVAL_SEEDS  # noqa: E402
from mt_policy_ros.eval_over_ros import evaluate_over_ros, ros_domain_id  # noqa: E402
from mt_policy_ros.sim_bridge import SERVER_NODE, BridgeError, SimRobot, set_server_task  # noqa: E402
from sim.evaluate import EvalError, evaluate, run_episode  # noqa: E402
from sim.tasks import ObservationConfig, get_task  # noqa: E402

TASKS = ("drawer-close-v3", "reach-v3")
STATE = ObservationConfig(cameras=(), proprio="agent_pos")
PIXELS = ObservationConfig(cameras=("corner2",), image_size=(32, 32))
SMALL = ModelConfig(encoder_channels=(8, 16), feature_dim=32, trunk_dims=(32,), head_hidden=32, action_chunk=4,
                    task_embedding_scale=1.0)
EPISODES, MAX_STEPS = 2, 14  # 14 steps end mid-chunk: a queue leaking into the next episode would show
N_ACTION_STEPS = {"state": 3, "pixels": None}  # 3 of 4, and the whole chunk


def _export(root: Path, obs_config: ObservationConfig) -> Path:
    """An untrained policy with random FiLM and normalisation (as tests/test_export.py), exported to ONNX."""
    model = random_policy(TASKS, obs_config, SMALL)
    export(save_checkpoint(model.eval(), root / "ckpt", {}), root / "export", log=lambda _: None)
    return root / "export"


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    return {"state": _export(tmp_path_factory.mktemp("state"), STATE),
            "pixels": _export(tmp_path_factory.mktemp("pixels"), PIXELS)}


def _direct_rollouts(export_dir: Path, obs_config: ObservationConfig,
                     n_action_steps: int | None) -> dict[tuple[str, int], tuple[bool, int, np.ndarray]]:
    """(task, seed) -> (success, steps, actions) from PolicyRuntime + ChunkRunner + run_episode, no ROS."""
    runtime = PolicyRuntime(export_dir, provider="cpu", threads=1)
    out = {}
    for task in TASKS:
        runtime.set_task(task)
        env = get_task(task).make_env(obs_config)
        for i in range(EPISODES):
            runner, actions = runtime.runner(n_action_steps), []

            def act(obs, runner=runner, actions=actions):
                actions.append(runner.act(obs))
                return actions[-1]

            success, steps, _ = run_episode(env, act, EVAL_SEEDS.seed(i), MAX_STEPS)
            out[(task, EVAL_SEEDS.seed(i))] = (success, steps, np.array(actions))
        env.close()
    return out


@pytest.mark.parametrize("kind", ["state", "pixels"])
def test_over_ros_eval_matches_direct_rollouts_action_by_action(exports, kind, tmp_path):
    export_dir, obs_config, n_action_steps = exports[kind], {"state": STATE, "pixels": PIXELS}[kind], N_ACTION_STEPS[kind]
    received = {}
    report = evaluate_over_ros(export_dir, tmp_path / "ros", episodes=EPISODES, max_steps=MAX_STEPS,
                               n_action_steps=n_action_steps, progress=False,
                               on_episode=lambda o, actions: received.__setitem__((o.task, o.seed), (o, actions)))
    direct = _direct_rollouts(export_dir, obs_config, n_action_steps)
    assert sorted(received) == sorted(direct) and len(direct) == len(TASKS) * EPISODES
    for key, (success, steps, actions) in direct.items():
        outcome, ros_actions = received[key]
        assert (outcome.success, outcome.steps) == (success, steps), key
        assert ros_actions.shape == actions.shape == (steps, 4)
        np.testing.assert_allclose(ros_actions, actions, atol=1e-5, rtol=0, err_msg=str(key))
    assert report["policy"] == {"kind": "onnx", "provider": "cpu", "over_ros": True}
    assert json.loads((tmp_path / "ros" / "eval.json").read_text()) == report
    assert (tmp_path / "ros" / "eval.md").is_file() and (tmp_path / "ros" / "eval.png").is_file()
    assert "serving" in (tmp_path / "ros" / "serve_node.log").read_text()
    if kind == "state":  # the report equals sim eval's, field by field (one spawned worker: state-only is cheap)
        reference = evaluate(export_dir, tmp_path / "direct", episodes=EPISODES, workers=1, videos=0, progress=False,
                             max_steps=MAX_STEPS, n_action_steps=n_action_steps, onnx_provider="cpu")
        drop = ("policy", "wall_seconds")
        assert {k: v for k, v in report.items() if k not in drop} == {k: v for k, v in reference.items() if k not in drop}


@pytest.fixture
def ros_context():
    context = Context()
    rclpy.init(context=context, domain_id=ros_domain_id(), signal_handler_options=SignalHandlerOptions.NO)
    yield context
    context.try_shutdown()


def _spin_until(executor, condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        executor.spin_once(timeout_sec=0.02)


def test_sim_robot_publishes_schema_images_and_proprio_and_steps_on_actions(exports, ros_context):
    namespace = "/test_sim_robot"
    robot = SimRobot(exports["pixels"], "drawer-close-v3", context=ros_context, namespace=namespace,
                     record_actions=True)
    peer = Node("peer", namespace=namespace, context=ros_context)
    images, joints = [], []
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    peer.create_subscription(Image, "camera/corner2/image_raw", images.append, qos)
    peer.create_subscription(JointState, "joint_states", joints.append, qos)
    actions = peer.create_publisher(Float32MultiArray, "action", 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(robot.node)
    executor.add_node(peer)
    try:
        robot.wait_for_peers(10.0)
        obs = robot.reset(EVAL_SEEDS.seed(0), max_steps=2)
        _spin_until(executor, lambda: images and joints)
        image, joint = images[-1], joints[-1]
        assert (image.height, image.width, image.encoding, image.step) == (32, 32, "rgb8", 96)
        assert image.header.frame_id == "corner2" and image.header.stamp == joint.header.stamp
        np.testing.assert_array_equal(np.frombuffer(bytes(image.data), np.uint8).reshape(32, 32, 3), obs["obs/corner2"])
        np.testing.assert_array_equal(np.array(joint.position, np.float32), obs["obs/proprio"])

        actions.publish(Float32MultiArray(data=[0.5, 0.5]))  # wrong size: refused, env not stepped
        _spin_until(executor, lambda: robot.error is not None)
        assert f"{namespace}/action" in robot.error and "expected 4 finite values" in robot.error
        assert robot.steps == 0 and len(images) == 1

        actions.publish(Float32MultiArray(data=[5.0, -5.0, 0.0, 1.0]))  # out of bounds: clipped, recorded as sent
        _spin_until(executor, lambda: robot.steps == 1 and len(images) == 2 and len(joints) == 2)
        np.testing.assert_array_equal(robot.actions[0], [5.0, -5.0, 0.0, 1.0])
        actions.publish(Float32MultiArray(data=[0.0, 0.0, 0.0, 0.0]))
        _spin_until(executor, lambda: robot.done)
        executor.spin_once(timeout_sec=0.2)
        assert robot.steps == 2 and len(images) == 2  # no observation after the last step: the episode is over
    finally:
        peer.destroy_node()
        robot.close()


def test_cli_eval_over_ros_and_refusals(exports, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["eval", "--onnx", str(exports["state"]), "--over-ros", "--tasks", "reach-v3", "--episodes", "1",
                 "--max-steps", "5", "--n-action-steps", "2", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["policy"]["over_ros"] and list(report["tasks"]) == ["reach-v3"] and report["n_action_steps"] == 2
    assert main(["eval", "--checkpoint", str(tmp_path), "--over-ros"]) == 2
    assert "pass --onnx DIR" in capsys.readouterr().err
    with pytest.raises(UnknownNameError, match="push-v3"):  # refused before any server starts
        evaluate_over_ros(exports["state"], tmp_path / "x", tasks="push-v3")
    with pytest.raises(EvalError, match="serve node exited with status"):  # a server that cannot start
        evaluate_over_ros(exports["state"], tmp_path / "gpu", episodes=1, provider="tensorrt-engine", startup_timeout_s=30)


def test_set_server_task_resends_a_request_whose_reply_was_lost(ros_context):
    """A set-parameters service that leaves its first request unanswered (a reply lost after discovery)."""
    namespace = "/test_set_task"
    server = Node(SERVER_NODE, namespace=namespace, context=ros_context, start_parameter_services=False)
    requests, never = [], Future()

    async def answer(request, response):
        requests.append([p.value.string_value for p in request.parameters])
        if len(requests) == 1:
            await never  # this reply is lost
        response.results = [SetParametersResult(successful=True)]
        return response

    # Reentrant: the next request is served while the first one still waits.
    service = server.create_service(SetParameters, f"{SERVER_NODE}/set_parameters", answer,
                                    callback_group=ReentrantCallbackGroup())
    caller = Node("caller", namespace=namespace, context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(server)
    executor.add_node(caller)
    client = AsyncParameterClient(caller, f"{namespace}/{SERVER_NODE}")
    try:
        # (client.wait_for_services would wait for all six parameter services; the stand-in has one)
        assert caller.create_client(SetParameters, f"{namespace}/{SERVER_NODE}/set_parameters").wait_for_service(10.0)
        set_server_task(executor, client, "reach-v3", timeout_s=10.0, resend_s=0.3)
        assert requests == [["reach-v3"], ["reach-v3"]]  # answered on the second request
        server.destroy_service(service)  # now nobody answers: an error once the time is up
        lost = r"no answer to setting task=push-v3 on /test_set_task/mt_policy_server within 0\.5 s \([1-3] requests sent\)"
        with pytest.raises(BridgeError, match=lost):
            set_server_task(executor, client, "push-v3", timeout_s=0.5, resend_s=0.2)
    finally:
        caller.destroy_node()
        server.destroy_node()
