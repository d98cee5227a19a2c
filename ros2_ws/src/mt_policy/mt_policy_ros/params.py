"""The serve node's parameters: one table that the node declares, the launch file passes and the tests check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str


SERVE_PARAMS: tuple[Param, ...] = (
    Param("model", "", "exported policy: an `mt-policy export` directory or its policy.engine"),
    Param("task", "", "active task (head); empty: the export's first task. Settable at run time"),
    Param("provider", "auto", "runtime provider: auto, cpu, cuda, tensorrt, tensorrt-engine"),
    Param("threads", 1, "CPU threads for the runtime"),
    Param("control_rate_hz", 0.0, "action rate; 0: the task schema's control rate"),
    Param("trigger", "timer", "timer: act at control_rate_hz on the latest inputs; observation: act once per "
                              "fresh set of inputs (lock-step, used by the sim bridge)"),
    Param("n_action_steps", 0, "actions executed per predicted chunk; 0: the whole chunk"),
    Param("temporal_ensemble", -1.0, "ACT-style temporal ensembling weight k; < 0: off"),
    Param("max_input_age_s", 0.5, "inputs older than this are stale: output stops (or holds) until they return"),
    Param("on_stale", "stop", "stop: publish nothing while inputs are stale; hold: repeat the last action"),
    Param("enable", False, "gate actuation: nothing is published until true (default false on real robots)"),
    Param("joint_names", [""], "JointState names forming proprio, in order; empty: the message's positions as-is"),
    Param("qos_reliability", "best_effort", "input QoS: best_effort (sensor data) or reliable"),
    Param("qos_depth", 5, "input QoS history depth"),
    Param("publish_trajectory", False, "also publish a one-point trajectory_msgs/JointTrajectory"),
    Param("publish_f64", False, "also publish std_msgs/Float64MultiArray (ros2_control forward controllers)"),
    Param("diagnostics_period_s", 1.0, "period of /diagnostics messages"),
)

PARAM_NAMES = tuple(p.name for p in SERVE_PARAMS)
