"""Regenerate the golden checkpoint and its outputs (only when a change is *meant* to alter them).

    .venv/bin/python tests/golden/make_golden.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mt_policy.checkpoint import save_checkpoint
from mt_policy.model import ModelConfig, MultiTaskPolicy, NormStats, TaskEntry
from mt_policy.schema import ActionSchema, CameraSpec, ObservationSchema, TaskInfo, TaskSchema

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.manual_seed(1234)
    rng = np.random.default_rng(1234)

    def entry(name: str, action: int, proprio: int) -> TaskEntry:
        return TaskEntry(TaskInfo(name, f"golden {name}", "toy/Env-v0", "toy", "easy"),
                         TaskSchema(ObservationSchema((CameraSpec("cam", 8, 8),), proprio),
                                    ActionSchema(action, (-1.0,) * action, (1.0,) * action), 10.0, 20))

    config = ModelConfig(encoder_channels=(4, 8), proprio_hidden=8, feature_dim=16, task_embedding_dim=4,
                         task_embedding_scale=1.0, trunk_dims=(16,), head_hidden=16, action_chunk=4, random_shift=1)
    stats = NormStats(
        proprio={"four": (rng.normal(size=3), rng.uniform(0.5, 2, 3)), "two": (rng.normal(size=5), rng.uniform(0.5, 2, 5))},
        action={"four": (rng.normal(size=4), rng.uniform(0.5, 2, 4)), "two": (rng.normal(size=2), rng.uniform(0.5, 2, 2))},
        image={"cam": (rng.uniform(0.3, 0.6, 3), rng.uniform(0.1, 0.3, 3))},
    )
    model = MultiTaskPolicy(config, [entry("four", 4, 3), entry("two", 2, 5)], stats).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.film.weight, std=0.5)  # exercise the FiLM path too
    save_checkpoint(model, HERE / "tiny_policy", {"purpose": "golden outputs for tests/test_training.py"})
    cam = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    proprio = rng.normal(size=(3, 5)).astype(np.float32)
    obs = {"obs/cam": torch.from_numpy(cam), "obs/proprio": torch.from_numpy(proprio)}
    with torch.no_grad():
        outputs = {task: model(obs, task).numpy() for task in ("four", "two")}
    np.savez(HERE / "tiny_policy_outputs.npz", cam=cam, proprio=proprio, **outputs)
    print(f"wrote {HERE / 'tiny_policy'} and tiny_policy_outputs.npz")


if __name__ == "__main__":
    main()
