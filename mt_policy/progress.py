"""Progress bars for long work: live in a terminal, a line every 30 s in logs (CI, `| tee`)."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, **kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True,
                mininterval=0.1 if interactive else 30.0, **kwargs)
