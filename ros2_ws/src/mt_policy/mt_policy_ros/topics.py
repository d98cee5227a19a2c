"""Topic names, relative so that a launch `namespace` moves them all (diagnostics stay global, as ROS tools expect)."""

from __future__ import annotations


def image_topic(camera: str) -> str:
    return f"camera/{camera}/image_raw"


JOINT_STATES = "joint_states"
ACTION = "action"  # std_msgs/Float32MultiArray, one action per control step
ACTION_TRAJECTORY = "action_trajectory"  # trajectory_msgs/JointTrajectory, one point (optional)
ACTION_F64 = "action_f64"  # std_msgs/Float64MultiArray, for ros2_control forward controllers (optional)
DIAGNOSTICS = "/diagnostics"
