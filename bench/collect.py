"""Benchmark demo collection, store size and window sampling on the `mt3` suite.

What it measures:

1. Collection frames/s with rendering (one 96x96 `corner2` camera, fast render quality) and without
   (state only), each with 1 and 2 worker processes, into a fresh output directory per run. Three
   views of the same run: wall-based (includes spawning workers and importing MuJoCo/Meta-World),
   steady-state (completions after every worker has delivered its first episode) and rollout-based
   (frames / summed per-episode worker seconds x workers), plus the 2-vs-1 worker speedup of each.
2. Store write time as a share of collection wall time (rendering runs).
3. Bytes per frame on disk and uncompressed, and the compression ratio (rendered stores).
4. Window sampling throughput from stores loaded in memory (`WindowSampler`, To=2, Ta=16, batch 256),
   state-only and with 96x96 images; the median of several timed repeats.

Run from the repository root:

    .venv/bin/python bench/collect.py                 # full run (several minutes on 2 cores)
    .venv/bin/python bench/collect.py --quick         # seconds-scale smoke run of the script itself

Results print as a table with targets and go to `bench/results/collect.json` (see `--out`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings

from bench_json import write_json  # noqa: E402

import sim.collect as sim_collect  # noqa: E402  (importing `sim` sets MUJOCO_GL before anything imports mujoco)
from mt_policy.demo_store import DemoStore
from mt_policy.sampler import WindowSampler, WindowSpec
from mt_policy.seeds import DEMO_SEEDS
from sim.collect import CollectReport, collect, rollout
from sim.suites import get_suite
from sim.tasks import ObservationConfig, TaskSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITE = "mt3"
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "collect.json"
RENDER_CONFIG = ObservationConfig(cameras=("corner2",), image_size=(96, 96), render_quality="fast")
STATE_CONFIG = ObservationConfig(cameras=())
WINDOW = WindowSpec(obs_steps=2, action_steps=16)
BATCH_SIZE = 256
WORKER_COUNTS = (1, 2)

TARGETS = {
    "speedup_render": 1.7,
    "write_share": 0.10,
    "samples_state": 20_000.0,
    "samples_image": 3_000.0,
    "expert_success": 0.9,
}

DEFINITIONS = {
    "frames_per_second_wall": "kept frames / collect() wall seconds; includes spawning the worker processes, their "
                              "imports (MuJoCo, Meta-World) and env construction",
    "frames_per_second_steady": "frames kept after the N-th completed episode (N = workers, so every worker has "
                                "most likely finished start-up) / seconds from that completion to the last one; "
                                "null when too few episodes",
    "frames_per_second_rollout": "kept frames / summed per-episode worker seconds x workers: the rate if workers "
                                 "were never idle and the parent never blocked; worker seconds include env "
                                 "construction (and the Meta-World import) on each worker's first episode of a "
                                 "task, and rejected episodes",
    "startup_seconds": "collect() start to the first completed episode, minus that episode's own worker seconds: "
                       "spawning a worker and importing the project modules",
    "first_episode_seconds": "collect() start to the first completed episode",
    "speedup": "2-worker figure / 1-worker figure, for each of wall, steady and rollout",
    "write_share": "seconds the parent spent in DemoStore.append_episode / collect() wall seconds",
    "bytes_per_frame_stored": "bytes on disk under the store directories / committed frames, summed over tasks",
    "bytes_per_frame_raw": "uncompressed bytes of all frame arrays / committed frames",
    "compression_ratio": "raw bytes / stored bytes",
    "samples_per_second": "windows per second from WindowSampler.sample(rng, batch) over stores loaded in memory, "
                          "cycling through the suite's tasks one batch each; median over timed repeats",
}


@dataclass
class Completion:
    """One episode the parent finished handling, as seen from the parent."""

    at: float
    worker_seconds: float
    frames_added: int


@dataclass
class CollectRun:
    name: str
    workers: int
    rendered: bool
    out_dir: Path
    report: CollectReport
    completions: list[Completion] = field(default_factory=list)
    started: float = 0.0


# ---------------------------------------------------------------------------------------------- collection
@contextmanager
def recording_completions(sink: list[Completion]) -> Iterator[None]:
    """Timestamp every episode the parent records; CollectReport only carries totals.

    Wraps the private `sim.collect._record`; when it is missing the steady-state figures come out null.
    """
    original: Callable[..., None] | None = getattr(sim_collect, "_record", None)
    if original is None:
        yield
        return

    def record(st: Any, result: Any, keep: str, report: CollectReport, bar: Any) -> None:
        before = report.frames
        original(st, result, keep, report, bar)
        sink.append(Completion(time.perf_counter(), float(result.seconds), report.frames - before))

    sim_collect._record = record
    try:
        yield
    finally:
        sim_collect._record = original


def run_collect(name: str, tasks: list[TaskSpec], episodes: int, out_dir: Path, obs_config: ObservationConfig,
                workers: int) -> CollectRun:
    if out_dir.exists() and any(out_dir.iterdir()):
        # collect() resumes existing stores, which would measure nothing.
        raise SystemExit(f"{out_dir} is not empty; give --keep-stores an empty or new directory")
    completions: list[Completion] = []
    with recording_completions(completions):
        started = time.perf_counter()
        report = collect(tasks, episodes, out_dir, obs_config, workers=workers, progress=False)
    if report.interrupted:
        raise SystemExit(f"{name}: interrupted")
    return CollectRun(name, workers, bool(obs_config.cameras), out_dir, report, completions, started)


def steady_state(run: CollectRun) -> dict[str, float | None]:
    done = run.completions
    if not done:
        return {"frames_per_second": None, "window_seconds": None, "frames": None,
                "startup_seconds": None, "first_episode_seconds": None}
    first = done[0]
    out: dict[str, float | None] = {
        "first_episode_seconds": first.at - run.started,
        "startup_seconds": max(0.0, first.at - run.started - first.worker_seconds),
        "frames_per_second": None, "window_seconds": None, "frames": None,
    }
    k = run.workers  # the window opens once each worker has (most likely) delivered one episode
    if len(done) > k:
        window = done[-1].at - done[k - 1].at
        frames = sum(c.frames_added for c in done[k:])
        out.update(window_seconds=window, frames=float(frames),
                   frames_per_second=frames / window if window > 0 else None)
    return out


def collect_summary(run: CollectRun) -> dict[str, Any]:
    r = run.report
    steady = steady_state(run)
    return {
        "workers": run.workers,
        "rendered": run.rendered,
        "episodes_kept": sum(r.kept.values()),
        "episodes_rejected": r.rejected_total,
        "frames": r.frames,
        "wall_seconds": r.wall_seconds,
        "rollout_seconds": r.rollout_seconds,
        "write_seconds": r.write_seconds,
        "write_share": r.write_share,
        "frames_per_second_wall": r.frames_per_second,
        "frames_per_second_steady": steady["frames_per_second"],
        "frames_per_second_rollout": r.frames / r.rollout_seconds * run.workers if r.rollout_seconds else None,
        "steady_window_seconds": steady["window_seconds"],
        "steady_window_frames": steady["frames"],
        "startup_seconds": steady["startup_seconds"],
        "first_episode_seconds": steady["first_episode_seconds"],
        "warnings": r.warnings,
    }


def speedups(one: dict[str, Any], two: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for view in ("wall", "steady", "rollout"):
        a, b = one[f"frames_per_second_{view}"], two[f"frames_per_second_{view}"]
        out[view] = b / a if a and b else None
    return out


# ---------------------------------------------------------------------------------------------- storage
def storage_summary(run: CollectRun) -> dict[str, Any]:
    per_task: dict[str, dict[str, Any]] = {}
    stored = raw = frames = 0
    for task, path in run.report.stores.items():
        store = DemoStore.open(path)
        s, r, n = store.nbytes_stored(), store.nbytes_raw(), store.n_frames
        per_task[task] = {"frames": n, "bytes_stored": s, "bytes_raw": r,
                          "bytes_per_frame_stored": s / n if n else 0.0, "compression_ratio": r / s if s else 0.0}
        stored, raw, frames = stored + s, raw + r, frames + n
    return {
        "frames": frames,
        "bytes_stored": stored,
        "bytes_raw": raw,
        "bytes_per_frame_stored": stored / frames if frames else None,
        "bytes_per_frame_raw": raw / frames if frames else None,
        "compression_ratio": raw / stored if stored else None,
        "per_task": per_task,
    }


# ---------------------------------------------------------------------------------------------- sampling
def load_samplers(run: CollectRun) -> tuple[list[WindowSampler], float]:
    start = time.perf_counter()
    samplers = [WindowSampler(DemoStore.open(p).load(), WINDOW) for p in run.report.stores.values()]
    return samplers, time.perf_counter() - start


def timed_windows(samplers: list[WindowSampler], rng: np.random.Generator, seconds: float) -> float:
    """Windows/s over one repeat of at least `seconds`, one batch per task in turn (as multitask training draws)."""
    count = 0
    start = time.perf_counter()
    while True:
        for sampler in samplers:
            sampler.sample(rng, BATCH_SIZE)
            count += BATCH_SIZE
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def sampling_summary(run: CollectRun, repeats: int, repeat_seconds: float) -> dict[str, Any]:
    samplers, load_seconds = load_samplers(run)
    rng = np.random.default_rng(0)
    timed_windows(samplers, rng, min(0.1, repeat_seconds))  # warm caches and page in the arrays
    rates = [timed_windows(samplers, rng, repeat_seconds) for _ in range(repeats)]
    return {
        "samples_per_second": statistics.median(rates),
        "repeats": rates,
        "repeat_seconds": repeat_seconds,
        "batch_size": BATCH_SIZE,
        "obs_steps": WINDOW.obs_steps,
        "action_steps": WINDOW.action_steps,
        "load_seconds": load_seconds,
        "windows_available": sum(len(s) for s in samplers),
    }


# ---------------------------------------------------------------------------------------------- report
def environment() -> dict[str, Any]:
    import mujoco
    import zarr

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "mujoco": mujoco.__version__,
        "zarr": zarr.__version__,
        "MUJOCO_GL": os.environ.get("MUJOCO_GL"),
    }


def verdict(value: float | None, target: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value < target
    return "PASS" if ok else "MISS"


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, status) for the printed table."""
    col, spd, sto, smp = results["collect"], results["speedup"], results["storage"], results["sampling"]
    out: list[tuple[str, str, str, str]] = []
    for name, run in col.items():
        out.append((f"{name} frames/s (wall)", f"{run['frames_per_second_wall']:.1f}", "", ""))
        out.append((f"{name} frames/s (steady)", _fmt(run["frames_per_second_steady"], ".1f"), "", ""))
        out.append((f"{name} frames/s (rollout)", _fmt(run["frames_per_second_rollout"], ".1f"), "", ""))
        out.append((f"{name} start-up s", _fmt(run["startup_seconds"], ".2f"), "", ""))
    for kind, views in spd.items():
        target = TARGETS["speedup_render"] if kind == "render" else None
        for view, value in views.items():
            out.append((f"speedup 2w/1w {kind} ({view})", _fmt(value, ".2f"),
                        f">= {target}" if target else "", verdict(value, target) if target else ""))
    for name, run in col.items():
        if run["rendered"]:
            out.append((f"{name} write share", f"{run['write_share']:.1%}", f"< {TARGETS['write_share']:.0%}",
                        verdict(run["write_share"], TARGETS["write_share"], higher_is_better=False)))
    out.append(("render store bytes/frame stored", _fmt(sto["bytes_per_frame_stored"], ",.0f"), "", ""))
    out.append(("render store bytes/frame raw", _fmt(sto["bytes_per_frame_raw"], ",.0f"), "", ""))
    out.append(("render store compression ratio", _fmt(sto["compression_ratio"], ".2f"), "", ""))
    for kind, key in (("state", "samples_state"), ("image", "samples_image")):
        value = smp[kind]["samples_per_second"]
        out.append((f"windows/s {kind}", f"{value:,.0f}", f">= {TARGETS[key]:,.0f}", verdict(value, TARGETS[key])))
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_report(results: dict[str, Any]) -> None:
    env = results["environment"]
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    print(f"suite={results['suite']} episodes/task={results['episodes_per_task']} quick={results['quick']}")
    table = rows(results)
    widths = [max(len(r[i]) for r in table + [("figure", "value", "target", "status")]) for i in range(4)]
    header = ("figure", "value", "target", "status")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


# ---------------------------------------------------------------------------------------------- experts
def expert_table(suite: str, n_seeds: int) -> dict[str, Any]:
    """Scripted-expert success per task over the first `n_seeds` demo seeds (state only: no rendering)."""
    table: dict[str, Any] = {}
    for spec in get_suite(suite):
        env = spec.make_env(STATE_CONFIG)
        try:
            results = [rollout(env, DEMO_SEEDS.seed(i), spec.schema(STATE_CONFIG).max_episode_steps)
                       for i in range(n_seeds)]
        finally:
            env.close()
        steps = [len(arrays["action"]) for arrays, ok in results if ok]
        table[spec.name] = {"successes": sum(ok for _, ok in results), "episodes": n_seeds,
                            "success_rate": sum(ok for _, ok in results) / n_seeds,
                            "mean_steps_to_success": float(np.mean(steps)) if steps else None}
    return table


def print_expert_table(table: dict[str, Any]) -> None:
    print(f"\nscripted experts ({next(iter(table.values()))['episodes']} seeds per task, target >= "
          f"{TARGETS['expert_success']:.0%} on every task)")
    for name, row in table.items():
        steps = _fmt(row["mean_steps_to_success"], ".0f")
        print(f"  {name:28s} {row['successes']:3d}/{row['episodes']:<3d} {row['success_rate']:6.0%}  "
              f"mean steps {steps:>4s}  {verdict(row['success_rate'], TARGETS['expert_success'])}")


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=None, help="episodes per task (default 12; 2 with --quick)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results path (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="tiny run that checks the script works; figures are noisy")
    p.add_argument("--keep-stores", type=Path, default=None, metavar="DIR",
                   help="collect into DIR/<config> and keep the stores (default: a temporary directory)")
    args = p.parse_args(argv)
    if args.episodes is None:
        args.episodes = 2 if args.quick else 12
    if args.episodes < 1:
        p.error("--episodes must be >= 1")
    return args


def collect_all(tasks: list[TaskSpec], episodes: int, root: Path) -> dict[str, CollectRun]:
    runs: dict[str, CollectRun] = {}
    for label, config in (("render", RENDER_CONFIG), ("state", STATE_CONFIG)):
        for workers in WORKER_COUNTS:
            name = f"{label}_{workers}w"
            print(f"collecting {name} ...", flush=True)
            runs[name] = run_collect(name, tasks, episodes, root / name, config, workers)
    return runs


def benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    env = environment()
    tasks = get_suite(SUITE)
    runs = collect_all(tasks, args.episodes, root)
    summaries = {name: collect_summary(run) for name, run in runs.items()}
    repeats, repeat_seconds = (3, 0.1) if args.quick else (5, 0.5)
    print("sampling ...", flush=True)
    print("scripted experts ...", flush=True)
    experts = expert_table(SUITE if args.quick else "mt10", 3 if args.quick else 20)
    return {
        "experts": experts,
        "benchmark": "collect",
        "suite": SUITE,
        "tasks": [t.name for t in tasks],
        "episodes_per_task": args.episodes,
        "quick": args.quick,
        "environment": env,
        "definitions": DEFINITIONS,
        "targets": TARGETS,
        "collect": summaries,
        "speedup": {kind: speedups(summaries[f"{kind}_1w"], summaries[f"{kind}_2w"]) for kind in ("render", "state")},
        "storage": storage_summary(runs["render_2w"]),
        "sampling": {
            "state": sampling_summary(runs["state_2w"], repeats, repeat_seconds),
            "image": sampling_summary(runs["render_2w"], repeats, repeat_seconds),
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.keep_stores is not None:
        results = benchmark(args, args.keep_stores)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_collect_") as tmp:
            results = benchmark(args, Path(tmp))
    print_report(results)
    print_expert_table(results["experts"])
    write_json(results, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
