"""MT10 mean success against training samples, one line per policy, from benchmark JSONs.

    .venv/bin/python bench/plot_budget.py                          # the results bench/RESULTS.md reports
    .venv/bin/python bench/plot_budget.py A.json B.json --out budget.png

Reads the JSONs `bench/peers.py` and `bench/mt10.py` write. Our policy's points are the runs trained with
LeRobot's inputs and our default settings: `bench/peers.py`'s `ours` without `--ours-set` or temporal
ensembling, and `bench/mt10.py`'s `lerobot` and `lerobot_long`; other configurations are left out (and
listed), since a line through them would mix recipes. Where two files hold the same policy at the same
budget, the one evaluated on more episodes is kept (on a tie, the file named first). Prints the points as a
table; writes a PNG (log x axis, 95% Wilson intervals pooled over tasks, a line at issue 5's 90% goal).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPORTED = ("peers.json", "peers_2x_30ep.json", "peers_4x.json", "mt10.json", "mt10_long.json")

# run name in a JSON -> the line it belongs to
SERIES = {"ours": "ours", "lerobot": "ours", "lerobot_long": "ours", "act": "ACT", "diffusion": "Diffusion Policy"}
GOAL = 0.90


@dataclass(frozen=True)
class Point:
    series: str
    samples: int
    success: float
    ci95: tuple[float, float]
    episodes_per_task: int
    source: str


class BadResult(ValueError):
    """A file that is not a `bench/peers.py` or `bench/mt10.py` result."""


def read_points(path: Path) -> tuple[list[Point], list[str]]:
    """The plottable runs of one result file, and a line for each run left out."""
    try:
        result = json.loads(path.read_text())
        runs = result["runs"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise BadResult(f"{path}: not a bench/peers.py or bench/mt10.py result (a JSON object with 'runs'): {err}") \
            from err
    points, skipped = [], []
    for i, run in enumerate(runs):
        name = run.get("model", run.get("config"))
        if name not in SERIES or run.get("ours_set") or run.get("temporal_ensemble"):
            skipped.append(f"{path.name}: {name} (another recipe)")
            continue
        try:
            episodes = {t["episodes"] for t in run["tasks"].values()}
            points.append(Point(SERIES[name], int(run["train_samples"]), float(run["mean_success"]),
                                (float(run["pooled_ci95"][0]), float(run["pooled_ci95"][1])),
                                min(episodes), path.name))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise BadResult(f"{path}: run {i} ({name}) lacks train_samples, mean_success, pooled_ci95 or "
                            f"per-task episodes: {err!r}") from err
    return points, skipped


def merge(points: list[Point]) -> tuple[list[Point], list[str]]:
    """One point per (series, samples): the one evaluated on the most episodes per task (on a tie, the first)."""
    kept: dict[tuple[str, int], Point] = {}
    dropped = []
    for p in points:
        key = (p.series, p.samples)
        if key in kept:
            best = max(kept[key], p, key=lambda q: q.episodes_per_task)  # the earlier file wins a tie
            loser = p if best is kept[key] else kept[key]
            dropped.append(f"{loser.source}: {loser.series} at {loser.samples:,} ({loser.episodes_per_task} "
                           f"episodes; kept {best.source}'s, {best.episodes_per_task})")
            kept[key] = best
        else:
            kept[key] = p
    return sorted(kept.values(), key=lambda q: (q.series, q.samples)), dropped


def table(points: list[Point]) -> str:
    lines = ["| policy | train samples | mean success | 95% CI (pooled) | episodes per task | file |",
             "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {p.series} | {p.samples:,} | {p.success:.1%} | {p.ci95[0]:.1%}–{p.ci95[1]:.1%} | "
              f"{p.episodes_per_task} | {p.source} |" for p in points]
    return "\n".join(lines)


def plot(points: list[Point], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, series in enumerate(dict.fromkeys(p.series for p in points)):
        line = [p for p in points if p.series == series]
        x = [p.samples for p in line]
        y = [p.success for p in line]
        # Lists, not a (2, N) array: matplotlib 3.11 warns on a (2, 1) array.
        err = [[p.success - p.ci95[0] for p in line], [p.ci95[1] - p.success for p in line]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=f"C{i}", label=series)
        for p in line:
            ax.annotate(f"{p.success:.0%}", (p.samples, p.success), textcoords="offset points", xytext=(6, -10),
                        fontsize=8, color=f"C{i}")
    ax.axhline(GOAL, color="black", linestyle="--", linewidth=1, label=f"issue 5's goal, {GOAL:.0%}")
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("training samples (windows seen)")
    ax.set_ylabel("MT10 mean success (95% CI)")
    episodes = sorted({p.episodes_per_task for p in points})
    ax.set_title(f"MT10 from corner2 + agent_pos, {' or '.join(map(str, episodes))} episodes per task")
    ax.legend(loc="lower right", frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="*", type=Path, default=[RESULTS / f for f in REPORTED],
                   help="bench/peers.py or bench/mt10.py JSONs (default: the reported ones in bench/results)")
    p.add_argument("--out", type=Path, default=RESULTS / "budget.png")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    points: list[Point] = []
    notes: list[str] = []
    try:
        for path in args.results:
            found, skipped = read_points(path)
            points += found
            notes += skipped
    except BadResult as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not points:
        print("error: no run of ours, ACT or Diffusion Policy in " + ", ".join(map(str, args.results)), file=sys.stderr)
        return 2
    points, dropped = merge(points)
    print(table(points))
    for note in notes + dropped:
        print(f"left out: {note}")
    print(f"wrote {plot(points, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
