"""A LeRobot policy directory (written by `bench/peers.py`) as a policy the sim evaluator can run.

The directory holds LeRobot's `save_pretrained` output, its pre/post-processors, and
`mt_policy_peer.json` (tasks with their schemas, the shared observation, our array key -> LeRobot
feature, provenance with the demo seeds). LeRobot is imported only when a peer is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mt_policy.schema import PROPRIO_KEY, TaskEntry, TaskInfo, TaskSchema
from mt_policy.versioned_json import read_versioned_json
from sim.evaluate import EvalError

PEER_MANIFEST = "mt_policy_peer.json"
PEER_FORMAT, PEER_FORMAT_VERSION = "mt_policy.lerobot_peer", 1


def read_peer_manifest(path: str | Path) -> dict[str, Any]:
    """Parse `path/mt_policy_peer.json`, the description `bench/peers.py` writes beside a saved LeRobot policy:
    `policy_type`, `tasks` (TaskInfo fields + `schema`), `observation`, `keys` (our array key -> LeRobot
    feature) and `provenance` (with `demo_seeds`)."""
    file = Path(path) / PEER_MANIFEST
    if not file.is_file():
        raise EvalError(f"{path}: not a LeRobot policy directory (no {PEER_MANIFEST}); bench/peers.py writes them")
    manifest = read_versioned_json(file, PEER_FORMAT, PEER_FORMAT_VERSION, EvalError)
    missing = [k for k in ("policy_type", "tasks", "observation", "keys") if k not in manifest]
    if missing:
        raise EvalError(f"{file}: malformed (missing {missing})")
    return manifest


def peer_tasks(path: str | Path, manifest: dict[str, Any]) -> list[TaskEntry]:
    where = Path(path) / PEER_MANIFEST
    tasks = [TaskEntry(TaskInfo.from_dict(t), TaskSchema.from_dict(t["schema"], where=f"{where}: task {t['name']}"))
             for t in manifest["tasks"]]
    if not tasks or any(t.schema.to_dict()["observation"] != manifest["observation"] for t in tasks):
        raise EvalError(f"{where}: one LeRobot policy serves tasks that share its 'observation'; got "
                        f"{[t.name for t in tasks] or 'no tasks'} with other observations")
    return tasks


class LeRobotPeer:
    """A LeRobot policy directory (`save_pretrained` + its processors + `mt_policy_peer.json`) as a predictor.

    `predict` maps our observation (`obs/<camera>` uint8 HxWx3, `obs/proprio`) to LeRobot's batch the way
    LeRobot's env wrapper does (images float (1, 3, H, W) in [0, 1], state (1, P)), runs the policy's
    preprocessor -> `select_action` -> postprocessor and returns one action as a (1, A) chunk. LeRobot
    policies queue observations and actions across calls: call `reset` at every episode start.
    """

    def __init__(self, path: str | Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: nothing to fetch
        import torch
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        self.manifest = read_peer_manifest(path)
        self.policy = get_policy_class(self.manifest["policy_type"]).from_pretrained(str(path)).eval()
        self.preprocessor, self.postprocessor = make_pre_post_processors(self.policy.config, pretrained_path=str(path))
        self.keys = {k: v for k, v in self.manifest["keys"].items() if k.startswith("obs/")}
        self._torch = torch

    def reset(self) -> None:
        self.policy.reset()

    def batch(self, obs: dict[str, np.ndarray]) -> dict[str, Any]:
        """LeRobot's (unnormalised) observation batch of one."""
        torch = self._torch
        batch = {}
        for key, feature in self.keys.items():
            value = torch.from_numpy(np.ascontiguousarray(obs[key]))
            if key == PROPRIO_KEY:
                batch[feature] = value.float()[None]
            else:  # (H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]
                batch[feature] = value.permute(2, 0, 1)[None].float() / 255
        return batch

    def predict(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        with self._torch.inference_mode():
            action = self.policy.select_action(self.preprocessor(self.batch(obs)))
            return self.postprocessor(action).numpy()  # (1, A)
