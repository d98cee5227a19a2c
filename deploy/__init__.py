"""Deploy stage: ONNX/TensorRT export and `PolicyRuntime` (arrives with the export issue)."""
