"""ament_python setup for the ROS 2 package `mt_policy` (Python module `mt_policy_ros`).

The setuptools distribution is named `mt_policy_ros`, not `mt_policy`: pip normalises `mt_policy` to
`mt-policy`, the main project's distribution, and installing one would uninstall the other. colcon and
the ament index go by package.xml's name (`mt_policy`), so the ROS package name is unaffected.
"""

from glob import glob

from setuptools import setup

package_name = "mt_policy"

setup(
    name="mt_policy_ros",
    version="0.1.0",
    packages=["mt_policy_ros"],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", sorted(glob("launch/*.launch.py"))),
        (f"share/{package_name}/config", sorted(glob("config/*.yaml"))),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="mt_policy maintainers",
    maintainer_email="maintainers@example.com",
    description="ROS 2 serve node and sim bridge for mt_policy exported policies",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "serve = mt_policy_ros.serve_node:main",
            "sim_bridge = mt_policy_ros.sim_bridge:main",
        ],
    },
)
