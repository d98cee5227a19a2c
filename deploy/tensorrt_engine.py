"""TensorRT: build a serialized engine from the exported ONNX graph, and run one natively.

Needs an NVIDIA GPU, its driver and the `tensorrt` wheel (`pip install 'mt-policy[gpu]'`). Device
buffers come from torch's CUDA allocator (torch is a dependency anyway), so no extra CUDA binding is
needed. Without a GPU every entry point raises `ExportError` saying so; nothing falls back quietly.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deploy.manifest import ENGINE, GRAPH, ExportError, sha256_file

MAX_BATCH = 64
"""Largest batch the engine's optimisation profile admits (batch 1 is what it is tuned for)."""
WORKSPACE_BYTES = 1 << 30


def nvidia_gpu_count() -> int:
    """CUDA devices visible through the driver API (0 without a driver); needs neither torch nor TensorRT."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def require_gpu() -> Any:
    """Return the `tensorrt` module, or raise saying why this machine cannot build or run an engine."""
    if nvidia_gpu_count() == 0:
        raise ExportError("TensorRT needs an NVIDIA GPU, and this machine has none (no CUDA driver or device); "
                          "the ONNX export and the CPU runtime work without one: drop --tensorrt")
    try:
        import tensorrt
    except ImportError as err:
        raise ExportError(f"TensorRT is not installed ({err}); install it with pip install 'mt-policy[gpu]'") from None
    return tensorrt


def build_engine(model: Any, graph: Any, directory: Path, fp16: bool, stores: dict[str, Path],
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build `directory/policy.engine` from `directory/policy.onnx`, check its parity; return its record."""
    import time

    from deploy.onnx_export import FP16_TOLERANCE, FP32_TOLERANCE, check_parity

    trt = require_gpu()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(directory / GRAPH)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {GRAPH}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = list(tensor.shape)[1:]
        profile.set_shape(tensor.name, [1, *rest], [1, *rest], [MAX_BATCH, *rest])
    config.add_optimization_profile(profile)
    log(f"building the TensorRT {trt.__version__} engine ({'fp16' if fp16 else 'fp32'}); this takes a minute")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT failed to build the engine (see its log above)")
    path = directory / ENGINE
    path.write_bytes(bytes(serialized))
    build_seconds = time.perf_counter() - start
    engine = EngineRunner(path)
    parity = check_parity(model, graph, engine.run_feed, stores, FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
    if not parity.ok:
        raise ExportError(f"TensorRT engine disagrees with PyTorch: max abs action error {parity.max_error:.3g} > "
                          f"{parity.tolerance:g} ({parity.errors}); nothing written")
    return {"file": ENGINE, "sha256": sha256_file(path), "fp16": fp16, "tensorrt": trt.__version__,
            "max_batch": MAX_BATCH, "build_seconds": build_seconds, "parity": parity.to_dict()}


class EngineRunner:
    """A deserialized engine with batch-1 device buffers bound once; `run()` is the allocation-free hot path."""

    def __init__(self, path: Path) -> None:
        import torch

        self._trt = trt = require_gpu()
        self._torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise ExportError(f"{path}: TensorRT cannot deserialize this engine (built by another TensorRT "
                              f"version or GPU?); rebuild it with mt-policy export --tensorrt")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.host: dict[str, np.ndarray] = {}
        self._device: dict[str, Any] = {}
        self._pinned: dict[str, Any] = {}
        self._bind(1)

    def _bind(self, batch: int) -> None:
        torch = self._torch
        for name in self.inputs:
            shape = (batch, *tuple(self.engine.get_tensor_shape(name))[1:])
            self.context.set_input_shape(name, shape)
        for name in self.names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
            torch_dtype = torch.from_numpy(np.zeros(1, dtype)).dtype
            self._device[name] = torch.empty(shape, dtype=torch_dtype, device="cuda")
            self._pinned[name] = torch.empty(shape, dtype=torch_dtype, pin_memory=True)
            self.host[name] = self._pinned[name].numpy()
            self.context.set_tensor_address(name, self._device[name].data_ptr())
        self.batch = batch

    def run(self) -> None:
        """Inputs from `self.host[...]` to outputs in `self.host[...]` (pinned, reused every call)."""
        with self._torch.cuda.stream(self.stream):
            for name in self.inputs:
                self._device[name].copy_(self._pinned[name], non_blocking=True)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ExportError("TensorRT execution failed")
            for name in self.outputs:
                self._pinned[name].copy_(self._device[name], non_blocking=True)
        self.stream.synchronize()

    def run_feed(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Any batch size (re-binds buffers when it changes): for parity checks, not the hot path."""
        batch = len(next(iter(feed.values())))
        if batch != self.batch:
            self._bind(batch)
        for name in self.inputs:
            np.copyto(self.host[name], feed[name])
        self.run()
        return self.host[self.outputs[0]].copy()
