"""mt_policy_ros: ROS 2 I/O around `deploy.runtime.PolicyRuntime` (serve node) and around a sim task (sim bridge).

Adds ROS I/O and nothing else: observations are assembled by `mt_policy.schema.build_observation`
and actions come from the same `ChunkRunner` sim evaluation uses.
"""
