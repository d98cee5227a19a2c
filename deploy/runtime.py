"""`PolicyRuntime`: one exported policy behind one call, `predict(obs) -> action chunk`, for sim eval and the robot.

    runtime = PolicyRuntime("export/", provider="auto")   # TensorRT EP -> CUDA EP -> CPU, first that works
    runtime.set_task("drawer-close-v3")                    # switches heads; the ROS node does this live
    runner = runtime.runner(n_action_steps=4)              # the same ChunkRunner as PyTorch eval
    action = runner.act(obs)                               # obs: {'obs/<camera>': uint8 (H, W, 3), 'obs/proprio': float32 (P,)}

Providers: `auto`, `cpu`, `cuda`, `tensorrt` (onnxruntime's execution providers) and `tensorrt-engine`
(the serialized engine run natively). An explicit provider that cannot run is an error naming the
reason; only `auto` walks down the list, and `runtime.provider` says where it landed.

The hot path allocates no arrays: inputs are copied into buffers bound to the session once (ORT
IOBinding, or the engine's pinned buffers), the output lands in a bound buffer, and `predict`
returns a view of it that the next call overwrites (`ChunkRunner` copies what it queues).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from deploy.manifest import OUTPUT, PROPRIO_INPUT, TASK_INPUT, ExportedPolicy, ExportError, read_export
from mt_policy.errors import MtPolicyError
from mt_policy.runner import ChunkRunner
from mt_policy.schema import PROPRIO_KEY, camera_key

ORT_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
ENGINE_PROVIDER = "tensorrt-engine"
PROVIDER_CHOICES = ("auto", *ORT_PROVIDERS, ENGINE_PROVIDER)
AUTO_ORDER = ("tensorrt", "cuda", "cpu")


class RuntimeConfigError(MtPolicyError):
    """The runtime cannot run as asked (provider unavailable, bad option)."""


class ObservationError(MtPolicyError):
    """An observation does not match the policy's schema (missing key, shape, dtype, NaN/inf)."""


def _ort_session(policy: ExportedPolicy, provider: str, threads: int) -> tuple[Any, str, list[str]]:
    """An InferenceSession on `provider` (or the first that works for `auto`); returns it, the provider, notes."""
    import onnxruntime as ort

    from deploy.tensorrt_engine import nvidia_gpu_count

    available = ort.get_available_providers()
    gpus = nvidia_gpu_count()
    notes: list[str] = []
    if provider == "auto":
        candidates = [p for p in AUTO_ORDER if p == "cpu" or (gpus and ORT_PROVIDERS[p] in available)]
        if not gpus:
            notes.append("no NVIDIA GPU: CPU only")
    else:
        if ORT_PROVIDERS[provider] not in available:
            raise RuntimeConfigError(f"provider {provider!r}: this onnxruntime ({ort.__version__}) has no "
                                     f"{ORT_PROVIDERS[provider]} (it has {available}); install onnxruntime-gpu")
        if provider != "cpu" and not gpus:
            raise RuntimeConfigError(f"provider {provider!r} needs an NVIDIA GPU and this machine has none "
                                     f"(no CUDA driver or device); use --provider cpu or auto")
        candidates = [provider]
    if gpus and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, so the GPU providers find them
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    for name in candidates:
        try:
            session = ort.InferenceSession(str(policy.graph_path), options, providers=[_provider_entry(policy, name)])
        except Exception as err:  # onnxruntime raises its own Fail/RuntimeException types
            if provider != "auto":
                raise RuntimeConfigError(f"provider {provider!r} failed to start: {err}") from None
            notes.append(f"{name} failed to start: {str(err).splitlines()[0]}")
            continue
        active = session.get_providers()[0]
        if active == ORT_PROVIDERS[name]:
            return session, name, notes
        if provider != "auto":
            raise RuntimeConfigError(f"provider {provider!r} was asked for but onnxruntime started {active} "
                                     f"instead (its log says why); refusing to fall back silently")
        notes.append(f"{name} unavailable, onnxruntime started {active}")
    raise RuntimeConfigError(f"no provider could run {policy.graph_path}: {'; '.join(notes)}")


def _provider_entry(policy: ExportedPolicy, name: str) -> str | tuple[str, dict[str, Any]]:
    if name != "tensorrt":
        return ORT_PROVIDERS[name]
    cache = Path.home() / ".cache" / "mt_policy" / "trt" / policy.manifest["graph_sha256"][:16]
    cache.mkdir(parents=True, exist_ok=True)
    return ORT_PROVIDERS[name], {"trt_fp16_enable": bool(policy.manifest.get("fp16")),
                                 "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}


class PolicyRuntime:
    """An exported policy (ONNX dir or TensorRT engine) with schema-checked, allocation-free batch-1 calls."""

    def __init__(self, path: str | Path, provider: str = "auto", threads: int = 1, task: str | None = None) -> None:
        if provider not in PROVIDER_CHOICES:
            raise RuntimeConfigError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDER_CHOICES)}")
        if threads < 1:
            raise RuntimeConfigError(f"threads must be >= 1, got {threads}")
        path = Path(path)
        self.policy = read_export(path)
        self.notes: list[str] = []
        start = time.perf_counter()
        if provider == ENGINE_PROVIDER or path.suffix == ".engine":
            self._init_engine(path, provider)
        else:
            self._init_ort(provider, threads)
        self.load_seconds = time.perf_counter() - start
        obs = self.policy.observation
        # (observation key, graph input, per-frame shape, dtype) in call order
        self._specs = [(camera_key(c.name), c.name, c.shape, np.dtype(np.uint8)) for c in obs.cameras]
        self._finite = np.empty(obs.proprio_size, dtype=bool)
        self.task: str = ""
        self.set_task(task or self.policy.task_names[0])

    # ------------------------------------------------------------------ backends
    def _init_ort(self, provider: str, threads: int) -> None:
        import onnxruntime as ort

        self.session, self.provider, self.notes = _ort_session(self.policy, provider, threads)
        self._host = {i.name: np.zeros((1, *_static(i.shape)), dtype=_np_dtype(i.type)) for i in self.session.get_inputs()}
        out = self.session.get_outputs()[0]
        self._host[OUTPUT] = np.zeros((1, self.policy.action_chunk, self.policy.action_width), np.float32)
        if out.name != OUTPUT:
            raise ExportError(f"{self.policy.graph_path}: output is {out.name!r}, expected {OUTPUT!r}")
        self._binding = self.session.io_binding()
        self._ortvalues = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in self._host.items()}
        for name, value in self._ortvalues.items():
            if name == OUTPUT:
                self._binding.bind_ortvalue_output(name, value)
            else:
                self._binding.bind_ortvalue_input(name, value)
        self._run = lambda: self.session.run_with_iobinding(self._binding)

    def _init_engine(self, path: Path, provider: str) -> None:
        from deploy.tensorrt_engine import EngineRunner

        if provider not in ("auto", ENGINE_PROVIDER):
            raise RuntimeConfigError(f"{path} is a TensorRT engine; it runs with provider {ENGINE_PROVIDER}, not {provider}")
        engine = path if path.suffix == ".engine" else self.policy.engine_path
        if engine is None or not engine.is_file():
            raise RuntimeConfigError(f"{self.policy.directory}: no TensorRT engine; build one with "
                                     f"mt-policy export --tensorrt (on a machine with an NVIDIA GPU)")
        try:
            runner = EngineRunner(engine)
        except ExportError as err:
            raise RuntimeConfigError(str(err)) from None
        self.provider = ENGINE_PROVIDER
        self._host = runner.host
        self._run = runner.run

    # ------------------------------------------------------------------ task
    @property
    def tasks(self) -> list[str]:
        return self.policy.task_names

    def set_task(self, name: str) -> None:
        """Select the head for the next calls (unknown names raise, listing the exported tasks)."""
        index = self.policy.task_index(name)
        entry = self.policy.tasks[index]
        self.task = name
        self.action_size = entry.schema.action.size
        self.proprio_size = entry.schema.observation.proprio_size
        if TASK_INPUT in self._host:
            self._host[TASK_INPUT][0] = index
        self._host[PROPRIO_INPUT][:] = 0.0  # tasks with shorter proprio see zero padding, as in training
        self._proprio = self._host[PROPRIO_INPUT][0, : self.proprio_size]
        self._action = self._host[OUTPUT][0, :, : self.action_size]

    def runner(self, n_action_steps: int | None = None, temporal_ensemble: float | None = None) -> ChunkRunner:
        """A `ChunkRunner` over this runtime (reset it on every episode start and task switch)."""
        return ChunkRunner(self.predict, self.policy.action_chunk, n_action_steps, temporal_ensemble)

    # ------------------------------------------------------------------ hot path
    def predict(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Action chunk (Ta, A_task) for one observation; a view valid until the next call."""
        for key, name, shape, dtype in self._specs:
            value = obs.get(key)
            _check(key, value, shape, dtype)
            self._host[name][0] = value
        value = obs.get(PROPRIO_KEY)
        _check(PROPRIO_KEY, value, (self.proprio_size,), np.dtype(np.float32))
        self._proprio[:] = value
        finite = self._finite[: self.proprio_size]
        np.isfinite(self._proprio, out=finite)
        if not finite.all():
            raise ObservationError(f"{PROPRIO_KEY} has NaN/inf at index {int(np.argmin(finite))}: {value.tolist()}")
        self._run()
        return self._action

    def describe(self) -> dict[str, Any]:
        return {"directory": str(self.policy.directory), "provider": self.provider, "notes": self.notes,
                "tasks": self.tasks, "task": self.task, "action_chunk": self.policy.action_chunk,
                "graph_sha256": self.policy.manifest.get("graph_sha256"), "load_seconds": self.load_seconds}


def _check(key: str, value: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if value is None:
        raise ObservationError(f"observation has no {key!r}; expected {dtype} of shape {shape}")
    if not isinstance(value, np.ndarray):
        raise ObservationError(f"{key} must be a numpy array of {dtype} {shape}, got {type(value).__name__}")
    if value.shape != shape or value.dtype != dtype:
        raise ObservationError(f"{key} is {value.dtype} of shape {value.shape}, expected {dtype} of shape {shape}")


def _static(shape: list[Any]) -> tuple[int, ...]:
    """A graph input's shape without its batch axis."""
    return tuple(int(d) for d in shape[1:])


def _np_dtype(onnx_type: str) -> np.dtype:
    return np.dtype({"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(int64)": np.int64}[onnx_type])
