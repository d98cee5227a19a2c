"""Per-feature running statistics (count, mean, std, min, max) that merge episode by episode.

Images are reduced per channel; vectors per entry. Merging uses Chan et al.'s parallel update, so a
store's stats stay exact as episodes are appended, without re-reading old data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class RunningStats:
    count: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def of(cls, frames: np.ndarray) -> RunningStats:
        """Stats of a (T, ..., C) array over every axis but the last."""
        flat = frames.reshape(-1, frames.shape[-1])
        if flat.dtype == np.uint8:
            return cls._of_uint8(flat)
        flat = flat.astype(np.float64)
        mean = flat.mean(axis=0)
        return cls(len(flat), mean, ((flat - mean) ** 2).sum(axis=0), flat.min(axis=0), flat.max(axis=0))

    @classmethod
    def _of_uint8(cls, flat: np.ndarray) -> RunningStats:
        # Images: a 256-bin histogram per channel gives exact moments without a float copy of every pixel.
        values = np.arange(256, dtype=np.float64)
        hists = [np.bincount(flat[:, c], minlength=256).astype(np.float64) for c in range(flat.shape[1])]
        n = len(flat)
        mean = np.array([h @ values / n for h in hists])
        m2 = np.array([h @ (values - m) ** 2 for h, m in zip(hists, mean, strict=True)])
        lo = np.array([np.flatnonzero(h)[0] for h in hists], dtype=np.float64)
        hi = np.array([np.flatnonzero(h)[-1] for h in hists], dtype=np.float64)
        return cls(n, mean, m2, lo, hi)

    def merge(self, other: RunningStats) -> RunningStats:
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return RunningStats(n, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max))

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "m2": self.m2.tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunningStats:
        arr = {k: np.asarray(data[k], dtype=np.float64) for k in ("mean", "m2", "min", "max")}
        return cls(int(data["count"]), arr["mean"], arr["m2"], arr["min"], arr["max"])

    def allclose(self, other: RunningStats, rtol: float = 1e-6, atol: float = 1e-6) -> bool:
        return self.count == other.count and all(
            np.allclose(getattr(self, k), getattr(other, k), rtol=rtol, atol=atol) for k in ("mean", "std", "min", "max")
        )
