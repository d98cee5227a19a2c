"""Benchmark the loss balancers on mt10 from full state (CPU): success, step time, gradient conflict.

Every balancer trains the same model on the same demos for the same number of steps with the same
seeds; each run is then evaluated in sim on the same evaluation seeds. Prints a table and writes
`bench/results/balancers.json` and `bench/results/balancers.md`.

    .venv/bin/python bench/balancers.py                      # all balancers, 2 seeds
    .venv/bin/python bench/balancers.py --balancers equal,rgb --seeds 0 --steps 500   # a quick look
    .venv/bin/python bench/balancers.py --timing-only        # interleaved step times, all balancers
    .venv/bin/python bench/balancers.py --set model.head_hidden=16 --work runs/bench_balancers_narrow  # a regime

A run whose directory holds its result with the same training settings is reused, so an interrupted sweep resumes;
asked for another number of episodes, it is evaluated again from its checkpoint, not retrained.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_module

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings

from bench_json import write_json  # noqa: E402

import sim  # noqa: E402, F401  (sets MUJOCO_GL before anything imports mujoco)
from sim.collect import collect  # noqa: E402
from sim.evaluate import EVAL_JSON, evaluate  # noqa: E402
from sim.suites import get_suite  # noqa: E402
from sim.tasks import ObservationConfig  # noqa: E402
from training.config import register_configs  # noqa: E402
from training.trainer import LAST, Trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RUN_RESULT = "bench_result.json"  # in each run's directory: lets an interrupted sweep resume
# what a run's result takes from its training, kept when the run is only evaluated again
TRAINING_FIELDS = ("train_seconds", "step_ms", "final_loss", "conflict_fraction", "conflict_cos_min",
                   "update_cos_min")
# name -> extra overrides; rgb is measured with both final updates (see training/balancers.py)
VARIANTS: dict[str, list[str]] = {
    "equal": [], "samples": [], "inverse_loss": [], "uncertainty": [], "gradnorm": [],
    "pcgrad": [], "upgrad": [], "mgda": [], "cagrad": [],
    "rgb": ["train.rgb_update=norm_sum"], "rgb_unit_mean": ["train.rgb_update=unit_mean"],
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="mt10")
    p.add_argument("--demos", type=int, default=20, help="scripted demos per task")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--episodes", type=int, default=10, help="eval episodes per task")
    p.add_argument("--balancers", default=",".join(VARIANTS))
    p.add_argument("--work", type=Path, default=Path("runs/bench_balancers"))
    p.add_argument("--out", type=Path, default=RESULTS / "balancers.json")
    p.add_argument("--timing-only", action="store_true", help="only the interleaved step-time measurement")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra training overrides for every run, e.g. model.head_hidden=16 (a regime)")
    return p.parse_args(argv)


def variant_overrides(variant: str, args: argparse.Namespace, data: Path, run: list[str]) -> list[str]:
    """The training overrides of one variant: what every run shares, then `run`'s own, then `--set` and the
    variant's extras last (they win)."""
    balancer = "rgb" if variant.startswith("rgb") else variant
    return [f"data.root={data}", f"data.suite={args.suite}", f"train.batch_size={args.batch_size}",
            f"train.balancer={balancer}", "train.progress=false", "model.task_embedding_scale=1.0", *run,
            *args.set, *VARIANTS[variant]]


def run_one(variant: str, seed: int, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    overrides = variant_overrides(variant, args, data, [
        f"train.steps={args.steps}", f"train.seed={seed}", "train.log_every=50", "train.conflict_every=100",
        f"train.checkpoint_every={args.steps}"])
    run_dir = args.work / f"{variant}_seed{seed}"
    done = run_dir / RUN_RESULT
    cached = json.loads(done.read_text()) if done.is_file() else {}
    if cached.get("overrides") == overrides:  # trained with the same settings (a resumed or re-evaluated sweep)
        if _episodes_evaluated(run_dir) == args.episodes:
            print("  (reused)", flush=True)
            return cached["result"]
        print(f"  (trained run reused, evaluated again on {args.episodes} episodes/task)", flush=True)
        training = {k: cached["result"][k] for k in TRAINING_FIELDS}
    else:
        training = train_run(overrides, run_dir, args.steps)
    report = evaluate(run_dir / "checkpoints" / LAST, run_dir / "eval", episodes=args.episodes, workers=2,
                      videos=0, n_action_steps=4, progress=False)
    result = {"variant": variant, "seed": seed, **training,
              "success": {t: r["success_rate"] for t, r in report["tasks"].items()},
              "mean_success": report["mean_success"]}
    write_json({"overrides": overrides, "result": result}, done)
    return result


def train_run(overrides: list[str], run_dir: Path, steps: int) -> dict[str, Any]:
    """Train one run from scratch into `run_dir`; return its `TRAINING_FIELDS`."""
    with initialize_config_module(config_module="training.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if run_dir.exists():  # a run cut short, or one with other settings: start it again
        shutil.rmtree(run_dir)
    trainer = Trainer(cfg, run_dir)
    start = time.perf_counter()
    trainer.fit()
    train_seconds = time.perf_counter() - start
    with (run_dir / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))

    def column(name: str) -> list[float]:
        return [float(r[name]) for r in rows if r.get(name) not in (None, "", "nan")]

    return {"train_seconds": train_seconds, "step_ms": 1000 * train_seconds / steps,
            "final_loss": column("loss")[-1],
            "conflict_fraction": _mean(column("conflict/fraction")),
            "conflict_cos_min": _mean(column("conflict/cos_min")),
            "update_cos_min": _mean(column("conflict/update_cos_min"))}


def _episodes_evaluated(run_dir: Path) -> int | None:
    """Episodes per task of the run's last finished evaluation, None if it has none."""
    report = run_dir / "eval" / EVAL_JSON
    return json.loads(report.read_text())["episodes_per_task"] if report.is_file() else None


def time_steps(variants: list[str], args: argparse.Namespace, data: Path, steps: int = 60,
               rounds: int = 3) -> dict[str, float]:
    """Median ms per training step of each variant, interleaved round by round in this one process,
    so machine noise hits every variant alike (the sweep's wall times include evaluation load)."""
    trainers = {}
    for variant in variants:
        overrides = variant_overrides(variant, args, data, ["train.conflict_every=0"])
        with initialize_config_module(config_module="training.conf", version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        trainers[variant] = Trainer(cfg, args.work / "timing" / variant)
        for _ in range(5):  # warm up
            trainers[variant].train_step()
    samples: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(steps // rounds):
                trainer.train_step()
            samples[variant].append(1000 * (time.perf_counter() - start) / (steps // rounds))
    return {v: statistics.median(ms) for v, ms in samples.items()}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    equal_ms = statistics.median(r["step_ms"] for r in by_variant.get("equal", runs))
    equal_by_seed = {r["seed"]: r["mean_success"] for r in by_variant.get("equal", [])}
    table = {}
    for variant, rs in by_variant.items():
        means = [r["mean_success"] for r in rs]
        tasks = rs[0]["success"].keys()
        table[variant] = {
            "mean_success": float(np.mean(means)), "seed_spread": float(max(means) - min(means)),
            "seed_sd": statistics.stdev(means) if len(means) > 1 else None,
            "per_seed": means,
            **paired_gain(rs, equal_by_seed),
            "per_task": {t: float(np.mean([r["success"][t] for r in rs])) for t in tasks},
            "step_ms": statistics.median(r["step_ms"] for r in rs),
            "step_time_vs_equal": statistics.median(r["step_ms"] for r in rs) / equal_ms,
            "conflict_fraction": _mean([r["conflict_fraction"] for r in rs if r["conflict_fraction"] is not None]),
            "conflict_cos_min": _mean([r["conflict_cos_min"] for r in rs if r["conflict_cos_min"] is not None]),
            "update_cos_min": _mean([r["update_cos_min"] for r in rs if r["update_cos_min"] is not None]),
        }
    return table


def paired_gain(runs: list[dict[str, Any]], equal_by_seed: dict[int, float]) -> dict[str, Any]:
    """Mean success minus `equal`'s on the same training seeds: the mean difference, its standard error and
    how many seeds are not below. Pairing by seed removes what the seed does to both (most of the spread)."""
    gains = [r["mean_success"] - equal_by_seed[r["seed"]] for r in runs if r["seed"] in equal_by_seed]
    if not gains:
        return {"gain_over_equal": None, "gain_se": None, "seeds_not_below_equal": None, "paired_seeds": 0}
    se = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else None
    return {"gain_over_equal": float(np.mean(gains)), "gain_se": se,
            "seeds_not_below_equal": sum(g >= 0 for g in gains), "paired_seeds": len(gains)}


def markdown(table: dict[str, Any], args: argparse.Namespace) -> str:
    tasks = list(next(iter(table.values()))["per_task"])
    short = [t.removesuffix("-v3") for t in tasks]
    regime = f", overrides {' '.join(args.set)}" if args.set else ""
    lines = [f"{args.suite} from full state, {args.demos} demos/task, {args.steps} steps of {args.batch_size}, "
             f"seeds {args.seeds}, {args.episodes} eval episodes/task/seed (n_action_steps 4){regime}", "",
             "| balancer | mean success | seed spread (range) | seed sd | paired gain over equal ± s.e. | "
             "seeds not below equal | step time vs equal | conflicting pairs | min task cos | min update cos |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v, s: "-" if v is None else format(v, s)  # noqa: E731
    points = lambda v, sign="": "-" if v is None else format(100 * v, sign + ".1f")  # noqa: E731
    for name, row in sorted(table.items(), key=lambda kv: -kv[1]["mean_success"]):
        gain, paired = "-", "-"
        if name != "equal" and row["paired_seeds"]:
            gain = f"{points(row['gain_over_equal'], '+')} ± {points(row['gain_se'])}"
            paired = f"{row['seeds_not_below_equal']} of {row['paired_seeds']}"
        lines.append(f"| {name} | {row['mean_success']:.1%} | {points(row['seed_spread'])} | "
                     f"{points(row['seed_sd'])} | {gain} | {paired} | "
                     f"{row['step_time_vs_equal']:.2f}x | {fmt(row['conflict_fraction'], '.0%')} | "
                     f"{fmt(row['conflict_cos_min'], '.2f')} | {fmt(row['update_cos_min'], '.2f')} |")
    lines += ["", "| balancer | " + " | ".join(short) + " |", "|---|" + "---:|" * len(short)]
    for name, row in sorted(table.items(), key=lambda kv: -kv[1]["mean_success"]):
        lines.append(f"| {name} | " + " | ".join(f"{row['per_task'][t]:.0%}" for t in tasks) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    register_configs()
    data = args.work / "data"
    print(f"collecting {args.demos} demos/task of {args.suite} (full state) -> {data}", flush=True)
    collect(get_suite(args.suite), args.demos, data, ObservationConfig(cameras=(), proprio="full_state"), workers=2,
            progress=False)  # resumes: a second invocation reuses the stores
    if args.timing_only:
        timing = time_steps(args.balancers.split(","), args, data)
        equal = timing.get("equal") or min(timing.values())
        for variant, ms in timing.items():
            print(f"{variant:16s} {ms:7.1f} ms/step  {ms / equal:5.2f}x equal")
        out = args.out.with_name(args.out.stem + "_timing.json")
        write_json({"ms_per_step": timing, "vs_equal": {v: ms / equal for v, ms in timing.items()},
                    "batch_size": args.batch_size, "suite": args.suite}, out)
        print(f"wrote {out}")
        return 0
    runs = []
    for variant in args.balancers.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            print(f"{variant} seed {seed} ...", flush=True)
            runs.append(run_one(variant, seed, args, data))
            print(f"  mean success {runs[-1]['mean_success']:.1%}, {runs[-1]['step_ms']:.1f} ms/step", flush=True)
    table = summarise(runs)
    md = markdown(table, args)
    print("\n" + md)
    write_json({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "table": table}, args.out)
    args.out.with_suffix(".md").write_text(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
