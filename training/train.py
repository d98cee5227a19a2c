"""Hydra entry point of `mt-policy train` (also `python -m training.train`).

Hydra composes `training/conf/train.yaml` (typed by `training.config.RunConfig`) with command-line
overrides, creates the run directory (`runs/train/<time>`, or `runs/multirun/<time>/<n>` with `-m`),
and saves the composed config in `.hydra/`; we add `resolved_config.yaml` and `tasks.json` (the
per-task settings after precedence) beside it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mt_policy.errors import MtPolicyError
from training.config import register_configs

register_configs()


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return run(cfg, run_dir)
    except (MtPolicyError, ValueError) as err:
        print(f"mt-policy train: error: {err}", file=sys.stderr)
        sys.exit(2)


def run(cfg: DictConfig, run_dir: Path) -> float | None:
    result = run_training(cfg, run_dir)
    return None if result is None else float(result["mean_success"])  # Hydra sweepers read this


def run_training(cfg: DictConfig, run_dir: Path) -> dict | None:
    """Train, then (if `eval.final`) evaluate in sim; return the eval report (None without eval)."""
    import sim  # noqa: F401  (sets MUJOCO_GL before any MuJoCo import)
    from training.trainer import LAST, Trainer, describe_run, leave_distributed, simulator_mismatches

    trainer = Trainer(cfg, run_dir)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / "tasks.json").write_text(json.dumps([asdict(t) for t in trainer.tasks], indent=2) + "\n")
    print(describe_run(trainer))
    if trainer.rank == 0:
        for note in simulator_mismatches(trainer.tasks, trainer.demos):
            print(f"warning: {note}", file=sys.stderr)
    resume = run_dir / "checkpoints" / LAST if cfg.train.resume else None
    if resume is not None and not resume.exists():
        raise MtPolicyError(f"{resume}: nothing to resume from (train.resume=true needs a previous run's checkpoint)")
    try:
        checkpoint = trainer.fit(resume)
    finally:
        leave_distributed()
    if trainer.rank != 0:  # under torchrun only rank 0 reports and evaluates
        return None
    print(f"checkpoint: {checkpoint}")
    if cfg.eval.final and cfg.eval.episodes > 0:
        result = trainer.evaluate(checkpoint, "final")
        print(f"mean success {result['mean_success']:.1%} over {len(result['tasks'])} tasks; report: "
              f"{run_dir / 'eval' / 'final' / 'eval.md'}")
        return result
    return None


if __name__ == "__main__":
    main()
