"""Serve an exported mt_policy policy: `ros2 launch mt_policy serve.launch.py model:=/path/to/export task:=<task>`.

Parameters come from `params_file` (default: this package's config/serve.yaml), then `model`, `task` and
`provider` from the launch arguments override it. The names are those of `mt_policy_ros.params.SERVE_PARAMS`.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("mt_policy"), "config", "serve.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("model", description="exported policy: an `mt-policy export` directory or its "
                                                   "policy.engine"),
        DeclareLaunchArgument("task", default_value="",
                              description="active task; empty: the export's first task"),
        DeclareLaunchArgument("provider", default_value="auto",
                              description="runtime provider: auto, cpu, cuda, tensorrt, tensorrt-engine"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS parameters file for the serve node"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace for the node and its (relative) topics"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description="log level: debug, info, warn, error, fatal"),
        # Fast DDS's default shared-memory segment is smaller than one 640x480 rgb8 image, so best-effort
        # images between processes on one host silently never arrive. LARGE_DATA (Fast DDS >= 2.13) sends
        # large samples over TCP/SHM properly. A value the user has already set is kept.
        SetEnvironmentVariable(
            "FASTDDS_BUILTIN_TRANSPORTS",
            EnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS", default_value="LARGE_DATA"),
        ),
        Node(
            package="mt_policy",
            executable="serve",
            name="mt_policy_server",
            namespace=LaunchConfiguration("namespace"),
            parameters=[
                LaunchConfiguration("params_file"),
                {
                    # value_type=str: a task or path that looks like a number or bool stays a string
                    "model": ParameterValue(LaunchConfiguration("model"), value_type=str),
                    "task": ParameterValue(LaunchConfiguration("task"), value_type=str),
                    "provider": ParameterValue(LaunchConfiguration("provider"), value_type=str),
                },
            ],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
            output="screen",
            emulate_tty=True,
        ),
    ])
