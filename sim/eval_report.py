"""Evaluation results as files: the eval.json summary, the Markdown table, the bar chart, episode GIFs.

Nothing here simulates; `sim.evaluate` runs the episodes and hands their outcomes over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.tasks import DIFFICULTIES

UNGROUPED = "ungrouped"
GIF_MAX_FPS = 50.0
"""Browsers play GIF frame delays under 20 ms at 100 ms, so faster episodes are subsampled."""


@dataclass(frozen=True)
class EpisodeOutcome:
    task: str
    seed: int
    success: bool
    steps: int
    """Environment steps taken (up to and including the one that reported success)."""


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (z=1.96: 95 %); sensible at 0/n and n/n too."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes}/{n}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def task_summary(outcomes: Sequence[EpisodeOutcome], difficulty: str, description: str) -> dict[str, Any]:
    n = len(outcomes)
    wins = [o.steps for o in outcomes if o.success]
    lo, hi = wilson_interval(len(wins), n)
    return {
        "successes": len(wins),
        "episodes": n,
        "success_rate": len(wins) / n,
        "ci95": [lo, hi],
        "mean_steps_to_success": float(np.mean(wins)) if wins else None,
        "difficulty": difficulty,
        "description": description,
    }


def group_macro(tasks: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Mean success per difficulty group present, in LeRobot's group order (unknown groups last)."""
    groups: dict[str, list[float]] = {}
    for row in tasks.values():
        groups.setdefault(row["difficulty"] or UNGROUPED, []).append(row["success_rate"])
    order = [g for g in DIFFICULTIES if g in groups] + sorted(g for g in groups if g not in DIFFICULTIES)
    return {g: float(np.mean(groups[g])) for g in order}


def format_markdown(report: dict[str, Any]) -> str:
    seeds = report["eval_seeds"]
    ensemble = report["temporal_ensemble"]
    settings = (f"{report['episodes_per_task']} episodes per task on eval seeds {seeds['first']}.."
                f"{seeds['first'] + seeds['count'] - 1}; "
                + (f"temporal ensemble k={ensemble:g}" if ensemble is not None
                   else f"{report['n_action_steps']} actions per chunk"))
    if report.get("max_steps") is not None:
        settings += f"; episodes capped at {report['max_steps']} steps (not comparable with full-length runs)"
    lines = [f"# Evaluation of `{report['checkpoint']}`", "", settings, "",
             "| task | group | success | rate | 95% CI | mean steps |", "|---|---|---:|---:|---|---:|"]
    for name, row in report["tasks"].items():
        lo, hi = row["ci95"]
        steps = "-" if row["mean_steps_to_success"] is None else f"{row['mean_steps_to_success']:.1f}"
        lines.append(f"| {name} | {row['difficulty'] or UNGROUPED} | {row['successes']}/{row['episodes']} | "
                     f"{row['success_rate']:.1%} | [{lo:.1%}, {hi:.1%}] | {steps} |")
    groups = ", ".join(f"{g} {v:.1%}" for g, v in report["group_macro"].items())
    lines += ["", f"Mean success over tasks: **{report['mean_success']:.1%}**  ",
              f"Mean over difficulty groups (LeRobot's average): **{report['group_macro_mean']:.1%}** ({groups})", ""]
    return "\n".join(lines)


def plot_success(report: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of per-task success with 95 % CI error bars and a line at the mean over tasks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    names = list(report["tasks"])
    rows = [report["tasks"][n] for n in names]
    rates = np.array([r["success_rate"] for r in rows])
    # Lists, not a (2, N) array: matplotlib 3.11 warns on a (2, 1) array.
    errors = [[r["success_rate"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["success_rate"] for r in rows]]
    groups = list(report["group_macro"])
    colours = [f"C{groups.index(r['difficulty'] or UNGROUPED)}" for r in rows]
    fig = Figure(figsize=(max(5.0, 0.4 * len(names) + 2.0), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(range(len(names)), rates, yerr=errors, color=colours, capsize=3, ecolor="black")
    ax.axhline(report["mean_success"], color="black", linestyle="--", linewidth=1,
               label=f"mean {report['mean_success']:.1%}")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.set_title(f"{report['episodes_per_task']} episodes per task")
    handles = [Patch(color=f"C{i}", label=g) for i, g in enumerate(groups)] + ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def gif_stride(control_hz: float) -> int:
    """Keep every n-th frame so the GIF plays at most `GIF_MAX_FPS` frames per second, in real time."""
    return max(1, math.ceil(control_hz / GIF_MAX_FPS))


def write_gif(frames: np.ndarray, path: str | Path, control_hz: float, stride: int) -> Path:
    """Write (T, H, W, 3) uint8 frames, recorded every `stride` control steps, as a looping GIF."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    path = Path(path)
    images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                   duration=max(20, round(1000.0 * stride / control_hz)))
    return path
