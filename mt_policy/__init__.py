"""mt_policy core: the observation/action schema, the demo store, and the `mt-policy` command.

Every other top-level package (sim, training, deploy, the ROS node) imports from here; this package
imports none of them (only `mt_policy.cli` loads stages, lazily).
"""

__version__ = "0.1.0"
