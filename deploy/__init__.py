"""deploy: ONNX/TensorRT export and `PolicyRuntime`, the inference path shared by sim eval and the ROS node.

The runtime side (`manifest`, `runtime`) needs numpy and onnxruntime only: no torch, no MuJoCo,
no training code. `onnx_export` and `latency` import torch and are used where a checkpoint is.
"""
