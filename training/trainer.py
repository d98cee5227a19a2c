"""The multitask behaviour-cloning trainer: one loop for every task mix and loss balancer.

Per step: a task-balanced batch -> shared features -> each present task's head -> per-task masked
L1 loss on normalised action chunks -> the balancer's backward -> clip -> AdamW (warmup + cosine)
-> EMA. Every `checkpoint_every` steps `checkpoints/last` is rewritten atomically with everything a
resume needs (raw weights, optimiser, balancer, RNG states), so a resumed run continues the same
loss curve. The EMA weights are what checkpoints expose for eval and export.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from mt_policy.checkpoint import WEIGHTS, load_extra, save_checkpoint
from mt_policy.demo_store import DemoStore, LoadedDemos
from mt_policy.errors import MtPolicyError
from mt_policy.model import ModelConfig, MultiTaskPolicy, NormStats, TaskEntry
from mt_policy.progress import progress_bar
from mt_policy.schema import ACTION_KEY
from mt_policy.stats import RunningStats
from training.balancers import BackwardContext, LossBalancer, make_balancer
from training.config import ResolvedTask, resolve_tasks, validate
from training.conflicts import conflict_metrics, task_gradients
from training.data import Batch, MultiTaskBatcher, task_probabilities
from training.privileged import PrivilegedTargets, privileged_losses
from training.rehearsal import RehearsalBuffer
from training.resume_state import restore_training_state, training_state

LAST = "last"
REHEARSAL = "rehearsal"  # <checkpoint>/rehearsal.safetensors
STATE_FILE = "trainer_state.json"


def load_demos(tasks: list[ResolvedTask], cameras: list[str] | None = None) -> dict[str, LoadedDemos]:
    demos = {}
    for task in tasks:
        store = DemoStore.open(task.store)
        if store.task.name != task.name:
            raise MtPolicyError(f"{task.store}: holds task {store.task.name!r}, but the run config lists it as {task.name!r}")
        if store.n_episodes == 0:
            raise MtPolicyError(f"{task.store}: the store is empty; collect demos first (mt-policy collect)")
        demos[task.name] = store.load(cameras=cameras)
    return demos


def simulator_mismatches(tasks: list[ResolvedTask], demos: dict[str, LoadedDemos]) -> list[str]:
    """One line per store recorded under another simulator version than its task runs here.

    Training on such a store works, but its frames may differ from what evaluation renders (stores recorded
    before our Meta-World env placed the goal on the reset frame, for one).
    """
    from sim.tasks import get_task, task_names  # training -> sim is allowed (periodic eval too)

    known = set(task_names())
    notes = []
    for task in tasks:
        recorded = demos[task.name].task
        now = get_task(task.name).env_version if task.name in known else ""
        if recorded.recorded_under_another_simulator(now):
            notes.append(f"{task.store}: recorded with {recorded.env_version!r}, but {task.name} now simulates {now!r}; "
                         f"evaluation may see observations the demos do not (collect into a new --out to record again)")
    return notes


def clip_actions(demos: dict[str, LoadedDemos]) -> dict[str, LoadedDemos]:
    """Each task's actions clipped to its schema's bounds, with their statistics recomputed."""
    out = {}
    for name, loaded in demos.items():
        bounds = loaded.schema.action
        clipped = np.clip(loaded.arrays[ACTION_KEY], np.asarray(bounds.low, np.float32),
                          np.asarray(bounds.high, np.float32))
        out[name] = dataclasses.replace(loaded, arrays={**loaded.arrays, ACTION_KEY: clipped},
                                        stats={**loaded.stats, ACTION_KEY: RunningStats.of(clipped)})
    return out


def norm_stats(demos: dict[str, LoadedDemos]) -> NormStats:
    """Per-task proprio/action stats and per-camera image stats merged over tasks (from the stores' stats)."""
    stats = NormStats()
    images: dict[str, RunningStats] = {}
    for name, loaded in demos.items():
        s = loaded.stats
        stats.proprio[name] = (s["obs/proprio"].mean, s["obs/proprio"].std)
        stats.action[name] = (s["action"].mean, s["action"].std)
        for cam in loaded.schema.observation.camera_names:
            key = f"obs/{cam}"
            images[cam] = images[cam].merge(s[key]) if cam in images else s[key]
    stats.image = {cam: (r.mean / 255.0, r.std / 255.0) for cam, r in images.items()}
    return stats


def cosine_lr(step: int, total: int, lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_ratio` at step `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def lr_at(step: int, cfg: Any) -> float:
    o = cfg.optim
    return cosine_lr(step, cfg.train.steps, o.lr, o.warmup_steps, o.min_lr_ratio)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, max_decay: float, step: int) -> None:
    """Move `ema` toward `model` (decay warming up to `max_decay`); buffers (statistics) are copied."""
    decay = min(max_decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def task_losses(model: MultiTaskPolicy, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Masked L1 per task on normalised action chunks (only tasks present in the batch appear), and the
    trunk features they share."""
    features = model.features(batch.obs, batch.task_ids)
    losses = {}
    for task, rows in batch.slices.items():
        pred = model.head(task, features[rows])  # (n, Ta, A)
        target = model.normalize_action(task, batch.actions[task])
        valid = (~batch.action_is_pad[task]).float()  # (n, Ta)
        losses[task] = ((pred - target).abs().mean(-1) * valid).sum() / valid.sum().clamp_min(1.0)
    return losses, features


class Trainer:
    def __init__(self, cfg: Any, run_dir: str | Path) -> None:
        validate(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
        torch.manual_seed(cfg.train.seed)
        self.rank, self.world = _init_distributed(cfg.train.device)
        # One process: the plain seed (so resume is exact). Under torchrun: a different stream per rank.
        self.rng = np.random.default_rng(cfg.train.seed if self.world == 1 else [cfg.train.seed, self.rank])
        self.batch_fingerprints: list[float] = []
        # Validation draws its own fixed stream so logging it never changes the training batches.
        self._val_rng = np.random.default_rng([cfg.train.seed, 1 << 20])

        suite_tasks = self._suite_tasks()
        self.tasks = resolve_tasks(cfg.data, suite_tasks)
        self.demos = load_demos(self.tasks, None if cfg.data.cameras is None else list(cfg.data.cameras))
        if cfg.data.clip_actions:
            self.demos = clip_actions(self.demos)
        entries = [TaskEntry(d.task, d.schema.without_privileged()) for d in self.demos.values()]
        model_cfg = ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))
        self.privileged: PrivilegedTargets | None = None
        if cfg.train.privileged_weight > 0:
            self.privileged = PrivilegedTargets.from_demos(self.demos, cfg.train.privileged_weight,
                                                           {t.name: str(t.store) for t in self.tasks})
            model_cfg = dataclasses.replace(model_cfg, privileged_size=self.privileged.size)
        self.model = MultiTaskPolicy(model_cfg, entries, norm_stats(self.demos))
        names = [t.name for t in self.tasks]
        self.batcher = MultiTaskBatcher(self.demos, self.model.task_index, None, model_cfg.action_chunk,
                                        self.model.observation.proprio_size, cfg.data.val_fraction, cfg.train.seed,
                                        {t.name: t.max_episodes for t in self.tasks})
        sizes = self.batcher.training_sizes()
        demo_counts = [sizes[t][0] for t in names]
        self.probabilities = task_probabilities(cfg.data.sampling, demo_counts, [t.weight for t in self.tasks],
                                                cfg.data.temperature, frame_counts=[sizes[t][1] for t in names])
        self.batcher.probabilities = self.probabilities
        t = cfg.train
        self.balancer: LossBalancer = make_balancer(t.balancer, names, dict(zip(names, demo_counts, strict=True)),
                                                    t.inverse_loss_momentum,
                                                    {"gradnorm_alpha": t.gradnorm_alpha, "gradnorm_lr": t.gradnorm_lr,
                                                     "cagrad_c": t.cagrad_c, "rgb_update": t.rgb_update})
        self.shared = [p for n, p in self.model.named_parameters() if not n.startswith(("heads.", "privileged_heads."))]
        last = [m for m in self.model.trunk if isinstance(m, torch.nn.Linear)] or [self.model.fuse]
        self.last_shared = list(last[-1].parameters())
        self.head_params = {name: self.model.task_parameters(name) for name in names}
        if self.world > 1:  # identical starting weights on every rank
            for tensor in [*self.model.parameters(), *self.model.buffers(), *self.balancer.parameters()]:
                torch.distributed.broadcast(tensor.data, src=0)
        # The images reach the convs channels-last (they are stored (H, W, 3)); conv weights in the same layout
        # train about 7% faster on CPU. Checkpoints store them contiguous, so nothing outside training sees it.
        self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model) if cfg.optim.ema_decay > 0 else None
        # One fused kernel over all parameters: about 5% of a step on 2 CPU cores against the per-tensor loop.
        self.optimizer = torch.optim.AdamW(list(self.model.parameters()) + list(self.balancer.parameters()),
                                           lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)
        self.step = 0
        self.train_seconds = 0.0  # wall time of the training loop, over resumes (add-task compares with it)
        self._rehearsal: RehearsalBuffer | None = None
        self.log_path = self.run_dir / "train_log.csv"
        self.writer = None

    def _suite_tasks(self) -> list[str]:
        if self.cfg.data.suite is None:
            return []
        from sim.suites import get_suite, load_suite_file  # training -> sim is allowed (periodic eval too)

        if self.cfg.data.suite_file:
            load_suite_file(self.cfg.data.suite_file)
        return [t.name for t in get_suite(self.cfg.data.suite)]

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        self.model.train()
        lr = lr_at(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.batcher.sample(self.rng, self.cfg.train.batch_size)
        if len(self.batch_fingerprints) < 3:  # lets a DDP run show that ranks see different data
            self.batch_fingerprints.append(float(sum(a.sum() for a in batch.actions.values())))
        losses, features = task_losses(self.model, batch)
        action_losses = losses
        if self.privileged is not None:
            probe = privileged_losses(self.model, batch, features, self.privileged)
            losses = {t: loss + self.privileged.weight * probe[t] for t, loss in losses.items()}
        self.optimizer.zero_grad(set_to_none=True)
        every = self.cfg.train.conflict_every
        task_grads = task_gradients(losses, self.shared) if every and (self.step + 1) % every == 0 else None
        ctx = BackwardContext(self.shared, features, self.head_params, self.last_shared)
        weights = self.balancer.backward(losses, ctx)
        self._sync_gradients()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        row = {"step": self.step, "lr": lr, "loss": float(np.mean([float(v.detach()) for v in action_losses.values()])),
               "grad_norm": float(grad_norm)}
        row |= {f"loss/{t}": float(v.detach()) for t, v in action_losses.items()}
        if self.privileged is not None:
            row["privileged_loss"] = float(np.mean([float(v.detach()) for v in probe.values()]))
        row |= {f"weight/{t}": w for t, w in weights.items()}
        row |= {f"samples/{t}": s.stop - s.start for t, s in batch.slices.items()}
        if task_grads is not None:
            row |= conflict_metrics(task_grads, self.shared)
        return row

    @torch.no_grad()
    def validation_losses(self) -> dict[str, float]:
        """Per-task loss of the EMA policy on held-out episodes (`data.val_fraction`); empty without them."""
        batch = self.batcher.validation_batches(self._val_rng, self.cfg.train.batch_size)
        if batch is None:
            return {}
        policy = self.policy
        was_training = policy.training
        policy.eval()
        losses, _ = task_losses(policy, batch)
        policy.train(was_training)
        row = {f"val_loss/{t}": float(v) for t, v in losses.items()}
        return row | {"val_loss": float(np.mean(list(row.values())))}

    def _sync_gradients(self) -> None:
        """DDP: average every gradient over ranks after the balancer ran locally, and average the
        balancers' running state (loss averages, GradNorm weights, RGB angles and consensus) so all
        ranks take the same step with the same state."""
        if self.world == 1:
            return
        dist = torch.distributed
        for p in [*self.model.parameters(), *self.balancer.parameters()]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= self.world
        for buffer in self.balancer.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer /= self.world
        consensus = getattr(getattr(self.balancer, "aggregator", None), "consensus", None)
        if consensus is not None:
            dist.all_reduce(consensus)
            consensus /= self.world

    def _update_ema(self) -> None:
        if self.ema is not None:
            ema_update(self.ema, self.model, self.cfg.optim.ema_decay, self.step)

    @property
    def policy(self) -> MultiTaskPolicy:
        """The weights to evaluate and ship: the EMA when enabled."""
        return self.ema if self.ema is not None else self.model

    # ------------------------------------------------------------------ checkpoints
    def provenance(self) -> dict[str, Any]:
        return {
            "trainer": "mt-policy train",
            "step": self.step,
            "run_dir": str(self.run_dir),
            "stores": {t.name: str(Path(t.store).resolve()) for t in self.tasks},
            "demo_seeds": {n: d.episodes["seed"].tolist() for n, d in self.demos.items()},
            "sampling_probabilities": dict(zip([t.name for t in self.tasks], self.probabilities.tolist(), strict=True)),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "git_commit": _git_commit(),
            "ema": self.ema is not None,
            "train_seconds": self.train_seconds,
        }

    def save(self, name: str = LAST) -> Path:
        tensors, optim_fields = training_state(self.model, self.optimizer)
        tensors |= {f"balancer.{k}": v for k, v in self.balancer.state_dict().items()}
        if self._rehearsal is None:  # drawn once, with its own seed: it never changes the training batches
            self._rehearsal = RehearsalBuffer.from_demos(self.demos, self.cfg.train.rehearsal_per_task,
                                                         self.model.config.action_chunk, self.cfg.train.seed)
        state = {"step": self.step, "train_seconds": self.train_seconds, "numpy_rng": self.rng.bit_generator.state,
                 **optim_fields}
        path = save_checkpoint(self.policy, self.run_dir / "checkpoints" / name, self.provenance(),
                               extra_tensors={"resume": tensors, REHEARSAL: self._rehearsal.to_tensors()},
                               extra_files={STATE_FILE: json.dumps(state)})
        return path

    def restore(self, path: Path) -> None:
        tensors = load_extra(path, "resume")
        state_file = path / STATE_FILE
        if tensors is None or not state_file.is_file():
            raise MtPolicyError(f"{path}: no resume state (resume.safetensors + {STATE_FILE}); cannot resume from it")
        state = json.loads(state_file.read_text())
        restore_training_state(tensors, state, self.model, self.optimizer)
        self.balancer.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("balancer.")})
        if self.ema is not None:
            self.ema.load_state_dict(load_file(str(path / WEIGHTS)))
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if self.world == 1:
            self.rng.bit_generator.state = state["numpy_rng"]
        else:  # any process count can resume: each rank starts a fresh stream keyed by the step
            self.rng = np.random.default_rng([self.cfg.train.seed, self.rank, self.step])

    # ------------------------------------------------------------------ logging
    def _open_logs(self, resumed: bool) -> None:
        if resumed and self.log_path.exists():  # drop rows logged after the checkpoint we resume from
            with self.log_path.open() as f:
                rows = list(csv.DictReader(f))
            self._write_rows([r for r in rows if int(r["step"]) <= self.step], mode="w")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step + 1 if resumed else None)
        except ImportError:
            self.writer = None

    def _columns(self) -> list[str]:
        names = [t.name for t in self.tasks]
        return (["step", "lr", "loss", "grad_norm", "samples_per_s"] + [f"loss/{t}" for t in names]
                + (["privileged_loss"] if self.privileged is not None else [])
                + [f"weight/{t}" for t in names] + [f"samples/{t}" for t in names]
                + ["conflict/cos_min", "conflict/cos_mean", "conflict/fraction", "conflict/update_cos_min"]
                + [f"grad_norm/{t}" for t in names] + ["val_loss"] + [f"val_loss/{t}" for t in names])

    def _write_rows(self, rows: list[dict[str, Any]], mode: str = "a") -> None:
        new = mode == "w" or not self.log_path.exists()
        with self.log_path.open(mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns(), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def _log(self, row: dict[str, Any]) -> None:
        self._write_rows([row])
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and value is not None:
                    self.writer.add_scalar(f"train/{key}", value, row["step"])

    # ------------------------------------------------------------------ the loop
    def fit(self, resume_from: Path | None = None) -> Path:
        if resume_from is not None:
            self.restore(resume_from)
        lead = self.rank == 0  # only rank 0 writes logs, checkpoints and evaluates
        if lead:
            self._open_logs(resumed=resume_from is not None)
        cfg = self.cfg.train
        bar = progress_bar(cfg.steps, "train", "step", cfg.progress and lead, initial=self.step)
        window_start, window_samples = time.perf_counter(), 0
        path = self.run_dir / "checkpoints" / LAST
        while self.step < cfg.steps:
            started = time.perf_counter()
            row = self.train_step()
            self.train_seconds += time.perf_counter() - started
            window_samples += cfg.batch_size
            if (self.step % cfg.log_every == 0 or self.step == cfg.steps) and lead:
                elapsed = time.perf_counter() - window_start
                row["samples_per_s"] = window_samples * self.world / elapsed if elapsed > 0 else None
                self._log(row | self.validation_losses())
                window_start, window_samples = time.perf_counter(), 0
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.1e}",
                                sps=f"{row['samples_per_s'] or 0:.0f}", refresh=False)
            bar.update(1)
            if (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps) and lead:
                path = self.save()
            if self.cfg.eval.every and self.step % self.cfg.eval.every == 0 and self.step < cfg.steps and lead:
                self.evaluate(path, f"step_{self.step}")
        bar.close()
        if self.writer is not None:
            self.writer.flush()
        if self.world > 1:
            self._write_ddp_report()
        return path

    def _write_ddp_report(self) -> None:
        """All ranks: gather a weight checksum and the first batches' fingerprints; rank 0 writes them."""
        dist = torch.distributed
        mine = {"rank": self.rank, "checksum": float(sum(p.double().sum() for p in self.model.parameters())),
                "batch_fingerprints": self.batch_fingerprints}
        everyone: list[dict] = [None] * self.world  # type: ignore[list-item]
        dist.all_gather_object(everyone, mine)
        if self.rank == 0:
            report = {"world_size": self.world, "ranks": everyone,
                      "weights_identical": len({r["checksum"] for r in everyone}) == 1}
            (self.run_dir / "ddp.json").write_text(json.dumps(report, indent=2) + "\n")
        dist.barrier()

    def evaluate(self, checkpoint: Path, name: str) -> dict[str, Any]:
        from sim.evaluate import evaluate  # training -> sim, as the design allows

        e = self.cfg.eval
        result = evaluate(checkpoint, self.run_dir / "eval" / name, episodes=e.episodes, workers=e.workers,
                          videos=e.videos, n_action_steps=e.n_action_steps, max_steps=e.max_steps,
                          progress=self.cfg.train.progress, suite_file=self.cfg.data.suite_file)
        if self.writer is not None:
            for task, r in result["tasks"].items():
                self.writer.add_scalar(f"eval/success/{task}", r["success_rate"], self.step)
            self.writer.add_scalar("eval/mean_success", result["mean_success"], self.step)
        with (self.run_dir / "eval_log.csv").open("a") as f:
            f.write(json.dumps({"step": self.step, "mean_success": result["mean_success"],
                                "tasks": {t: r["success_rate"] for t, r in result["tasks"].items()}}) + "\n")
        return result


def _init_distributed(device: str) -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def leave_distributed() -> None:
    """Leave the process group `_init_distributed` joined, once every rank is done."""
    # Under torchrun, a gloo group still alive at interpreter exit can abort the process ("terminate called
    # without an active exception", SIGABRT) after training succeeded.
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def describe_run(trainer: Trainer) -> str:
    lines = [f"run dir: {trainer.run_dir}", f"model: {trainer.model.describe()['parameters']:,} parameters, "
             f"{asdict(trainer.model.config)}"]
    sizes = trainer.batcher.training_sizes()
    for task, p in zip(trainer.tasks, trainer.probabilities, strict=True):
        episodes, frames = sizes[task.name]
        lines.append(f"  {task.name:28s} {episodes:4d} demos {frames:6d} frames  p={p:.3f}  store={task.store}")
    return "\n".join(lines)
