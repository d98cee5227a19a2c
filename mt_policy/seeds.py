"""The one place where demo-collection and evaluation seeds are defined.

Demos and evaluation must never share an initial state, or a success rate measures memorisation.
Both ranges are per task and disjoint by construction; `check_disjoint` guards stores at eval time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SeedRange:
    """Half-open range [start, stop) of environment seeds reserved for one purpose."""

    name: str
    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"seed range {self.name}: need 0 <= start < stop, got {self.start}, {self.stop}")

    def __len__(self) -> int:
        return self.stop - self.start

    def __contains__(self, seed: object) -> bool:
        return isinstance(seed, int) and self.start <= seed < self.stop

    def seed(self, index: int) -> int:
        """The `index`-th seed of this range."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name} seed index {index} outside [0, {len(self)})")
        return self.start + index

    def take(self, count: int, first: int = 0) -> list[int]:
        """`count` consecutive seeds of this range from its `first`-th on; ValueError naming the allowed start."""
        if count < 1 or not 0 <= first <= len(self) - count:
            raise ValueError(f"{self.name} seeds: first must be in [0, {len(self) - count}] for {count} seeds "
                             f"({len(self)} in the range), got {first}")
        return list(range(self.start + first, self.start + first + count))

    def unused(self, used: Iterable[int]) -> Iterator[int]:
        """Seeds of this range in increasing order, skipping `used` ones (fills gaps first)."""
        taken = set(used)
        return (s for s in range(self.start, self.stop) if s not in taken)


DEMO_SEEDS = SeedRange("demo", 0, 1_000_000)
EVAL_SEEDS = SeedRange("eval", 1_000_000, 2_000_000)


def check_disjoint(demo_seeds: Iterable[int], eval_seeds: Iterable[int]) -> None:
    """Raise if any evaluation seed was also used to collect a demo."""
    overlap = sorted(set(demo_seeds) & set(eval_seeds))
    if overlap:
        raise ValueError(f"evaluation seeds overlap demo seeds: {overlap[:10]} ({len(overlap)} in all)")
