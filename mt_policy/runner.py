"""`ChunkRunner`: turns a chunk predictor into one action per control step.

The predictor maps one observation to an action chunk (Ta, A); it may be the PyTorch model
(`torch_predictor`) or `deploy.runtime.PolicyRuntime.predict` (ONNX Runtime / TensorRT). Sim evaluation and the ROS node both drive
a `ChunkRunner`, so they execute actions the same way:

- receding horizon (`temporal_ensemble=None`): predict, execute the first `n_action_steps`, repeat;
- temporal ensembling (`temporal_ensemble=k`): predict every step and average every chunk's
  prediction for the current step with weights exp(-k * age), newest chunks weighted least
  (ACT's scheme: older predictions are more consistent).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the runtime side (ONNX, ROS) must not need torch
    from mt_policy.model import MultiTaskPolicy

Predictor = Callable[[dict[str, np.ndarray]], np.ndarray]


class ChunkRunner:
    def __init__(self, predict: Predictor, chunk: int, n_action_steps: int | None = None,
                 temporal_ensemble: float | None = None) -> None:
        self.predict = predict
        self.chunk = chunk
        self.n_action_steps = chunk if n_action_steps is None else n_action_steps
        if not 1 <= self.n_action_steps <= chunk:
            raise ValueError(f"n_action_steps must be in [1, {chunk}], got {self.n_action_steps}")
        if temporal_ensemble is not None and temporal_ensemble < 0:
            raise ValueError("temporal_ensemble must be >= 0")
        self.temporal_ensemble = temporal_ensemble
        self.reset()

    def reset(self) -> None:
        """Forget queued actions (call at every episode start and task switch)."""
        self._queue: deque[np.ndarray] = deque()
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # (step predicted, chunk)
        self._step = 0

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.temporal_ensemble is None:
            if not self._queue:
                # Copied: a runtime may return a view of its reused output buffer.
                chunk = np.array(self.predict(obs)[: self.n_action_steps], dtype=np.float32)
                self._queue.extend(chunk)
            action = self._queue.popleft()
        else:
            self._chunks.append((self._step, np.array(self.predict(obs), dtype=np.float32)))
            while self._chunks and self._step - self._chunks[0][0] >= self.chunk:
                self._chunks.popleft()
            preds = np.stack([c[self._step - t] for t, c in self._chunks])  # oldest first
            weights = np.exp(-self.temporal_ensemble * np.arange(len(preds)))
            action = (weights[:, None] * preds).sum(axis=0) / weights.sum()
        self._step += 1
        return np.asarray(action, dtype=np.float32)


def torch_predictor(model: MultiTaskPolicy, task: str, device: str = "cpu") -> Predictor:
    """A predictor for one task of a PyTorch policy (batch of one, no gradients)."""
    import torch

    if task not in model.task_index:
        model.task_ids(task, 1)  # raises with the list of known tasks
    keys = ["obs/proprio", *(f"obs/{c.name}" for c in model.observation.cameras)]

    @torch.inference_mode()
    def predict(obs: dict[str, np.ndarray]) -> np.ndarray:
        batch = {k: torch.as_tensor(np.asarray(obs[k]))[None].to(device) for k in keys}
        return model(batch, task)[0].cpu().numpy()

    return predict
