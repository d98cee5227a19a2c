"""Growing a policy task by task: add-task strategies against joint training, with LIBERO's sequence metrics.

    .venv/bin/python bench/add_task.py [--demos 30] [--steps 2000] [--episodes 20]

mt10 from the full 39-D state (CPU-cheap; the pixel question belongs to bench/mt10.py): train on 9
tasks (all but window-close), add window-close-v3 with each strategy, then add door-close-v3 (an
mt50 task outside mt10) to the rehearsal result with each strategy. References: joint training on
the 10 and on the 11 tasks from the start, same steps and batch. Every policy is evaluated on the
same eval seeds. Writes bench/results/add_task.json and prints the tables; goals (rehearsal): new
task >= 90% of its joint-training success, mean old-task drop <= 2 points, add-task training wall
time <= 1/4 of training all tasks from scratch; finetune should show the forgetting rehearsal prevents.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ siblings

from bench_json import write_json  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from sim.collect import collect  # noqa: E402
from sim.evaluate import evaluate  # noqa: E402
from sim.suites import get_suite  # noqa: E402
from sim.tasks import ObservationConfig, get_task  # noqa: E402
from training.add_task import AddTaskOptions, add_task  # noqa: E402
from training.config import register_configs  # noqa: E402
from training.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "add_task.json"
FIRST_NEW, SECOND_NEW = "window-close-v3", "door-close-v3"
STRATEGIES = ("rehearsal", "frozen", "finetune")


def train(data: Path, tasks: list[str], run: Path, args: argparse.Namespace) -> tuple[Path, float]:
    if (run / "checkpoints" / "last" / "policy.json").is_file():
        manifest = json.loads((run / "checkpoints" / "last" / "policy.json").read_text())
        return run / "checkpoints" / "last", manifest["provenance"]["train_seconds"]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "training" / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"data.root={data}", "data.suite=null", "+data.tasks={" + ",".join(f"{t}:{{}}" for t in tasks) + "}",
            f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", "train.progress=false",
            f"train.checkpoint_every={args.steps}", "eval.final=false", "model.task_embedding_scale=1.0"])
    trainer = Trainer(cfg, run)
    path = trainer.fit()
    return path, trainer.train_seconds


def success(checkpoint: Path, out: Path, episodes: int, tasks: list[str] | None = None) -> dict[str, float]:
    report = evaluate(checkpoint, out, tasks=tasks, episodes=episodes, workers=2, videos=0, n_action_steps=4,
                      progress=False)
    return {t: r["success_rate"] for t, r in report["tasks"].items()}


def libero_metrics(matrix: list[dict[str, float]], learned_at: dict[str, int]) -> dict[str, float]:
    """FWT, NBT, AUC over the tasks of a sequence (LIBERO, Liu et al. 2023): c[i][k] = success on k after stage i."""
    fwt, nbt, auc = [], [], []
    last = len(matrix) - 1
    for task, k in learned_at.items():
        own = matrix[k][task]
        later = [matrix[i][task] for i in range(k + 1, last + 1)]
        fwt.append(own)
        if later:
            nbt.append(float(np.mean([own - c for c in later])))
        auc.append((own + sum(later)) / (len(later) + 1))
    return {"FWT": float(np.mean(fwt)), "NBT": float(np.mean(nbt)) if nbt else 0.0, "AUC": float(np.mean(auc))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", type=int, default=30)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_add_task")
    args = parser.parse_args()
    work, started = args.work, time.perf_counter()
    mt10 = [t.name for t in get_suite("mt10")]
    base = [t for t in mt10 if t != FIRST_NEW]
    data = work / "data"
    collect([get_task(t) for t in [*mt10, SECOND_NEW]], args.demos, data, ObservationConfig(cameras=(), proprio="full_state"),
            workers=2, progress=True)
    store = {t: data / f"{t}.zarr" for t in [*mt10, SECOND_NEW]}

    print("== joint references and the 9-task base")
    base_ckpt, base_s = train(data, base, work / "base9", args)
    joint10, joint10_s = train(data, mt10, work / "joint10", args)
    joint11, joint11_s = train(data, [*mt10, SECOND_NEW], work / "joint11", args)
    ev = work / "eval"
    results: dict = {"command": " ".join(sys.argv), "settings": vars(args) | {"work": str(args.work)},
                     "train_seconds": {"base9": base_s, "joint10": joint10_s, "joint11": joint11_s},
                     "joint10": success(joint10, ev / "joint10", args.episodes),
                     "joint11": success(joint11, ev / "joint11", args.episodes),
                     "base9": success(base_ckpt, ev / "base9", args.episodes), "additions": {}}

    def grow(source: Path, task: str, strategy: str, name: str, joint_s: float) -> dict:
        out = work / name
        opts = AddTaskOptions(source, task, store[task], out, strategy=strategy, init_from=None,
                              eval_episodes=args.episodes, n_action_steps=4, progress=False)
        if (out / "forgetting.json").is_file():
            report = json.loads((out / "forgetting.json").read_text())
        else:
            report = add_task(opts)
        report["wall_ratio_to_joint"] = report["wall_seconds"]["add_task_training"] / joint_s
        return report

    for strategy in STRATEGIES:
        print(f"== add {FIRST_NEW} to the 9-task base: {strategy}")
        results["additions"][f"{FIRST_NEW}/{strategy}"] = grow(base_ckpt, FIRST_NEW, strategy, f"base9+{FIRST_NEW}-{strategy}", joint10_s)
    ten = work / f"base9+{FIRST_NEW}-rehearsal"
    for strategy in STRATEGIES:
        print(f"== add {SECOND_NEW} to the rehearsal 10-task policy: {strategy}")
        results["additions"][f"{SECOND_NEW}/{strategy}"] = grow(ten, SECOND_NEW, strategy, f"ten+{SECOND_NEW}-{strategy}", joint11_s)

    # The sequence base9 -> +window-close -> +door-close with rehearsal, as LIBERO's matrix.
    stage1 = results["additions"][f"{FIRST_NEW}/rehearsal"]
    stage2 = results["additions"][f"{SECOND_NEW}/rehearsal"]
    after1 = {t: r["after"] for t, r in stage1["old_tasks"].items()} | {FIRST_NEW: stage1["new_task_success"]}
    after2 = {t: r["after"] for t, r in stage2["old_tasks"].items()} | {SECOND_NEW: stage2["new_task_success"]}
    matrix = [results["base9"], after1, after2]
    results["sequence"] = {"matrix": matrix, "metrics": libero_metrics(matrix, {t: 0 for t in base} | {FIRST_NEW: 1, SECOND_NEW: 2})}
    results["wall_seconds"] = time.perf_counter() - started
    write_json(results, RESULTS)
    print("\n" + format_tables(results))
    print(f"\nresults: {RESULTS}")
    return 0


def format_tables(r: dict) -> str:
    lines = ["| added task | strategy | new task | joint-training ref | new / joint | mean old drop | BWT | "
             "add-task train s | joint train s | ratio |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, rep in r["additions"].items():
        task, strategy = key.split("/")
        joint = r["joint10" if task == FIRST_NEW else "joint11"][task]
        joint_s = r["train_seconds"]["joint10" if task == FIRST_NEW else "joint11"]
        share = rep["new_task_success"] / joint if joint else float("nan")
        lines.append(f"| {task} | {strategy} | {rep['new_task_success']:.0%} | {joint:.0%} | {share:.2f} | "
                     f"{rep['mean_drop'] * 100:+.1f} pts | {rep['backward_transfer'] * 100:+.1f} | "
                     f"{rep['wall_seconds']['add_task_training']:.0f} | {joint_s:.0f} | {rep['wall_ratio_to_joint']:.2f} |")
    m = r["sequence"]["metrics"]
    lines += ["", f"sequence base9 -> +{FIRST_NEW} -> +{SECOND_NEW} (rehearsal): FWT {m['FWT']:.3f}, "
              f"NBT {m['NBT']:.3f}, AUC {m['AUC']:.3f}", "",
              "| task | " + " | ".join(["base9", f"+{FIRST_NEW}", f"+{SECOND_NEW}"]) + " |", "|---|---:|---:|---:|"]
    tasks = list(r["sequence"]["matrix"][-1])
    for t in tasks:
        cells = [f"{stage[t]:.0%}" if t in stage else "-" for stage in r["sequence"]["matrix"]]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
