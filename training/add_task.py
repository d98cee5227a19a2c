"""`mt-policy add-task`: attach a task to a trained policy, train it without forgetting the others, report forgetting.

Strategies:
    rehearsal  (default) every batch mixes new-task windows with a `ratio` share of old-task windows,
               spread evenly over the old tasks, from their demo stores or the checkpoint's rehearsal buffer;
    frozen     only the new head and the new task-embedding row train; old outputs stay bit-identical;
    finetune   everything trains on the new task alone: the naive baseline that forgets.

The source checkpoint is only read. Progress goes to `<out>.partial/` (atomic saves with optimiser
and RNG state), so an interrupted run resumes when the same command runs again; the finished
policy is renamed into `<out>` at the end. Every input is checked before any training starts.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from mt_policy.checkpoint import WEIGHTS, load_checkpoint, load_extra, run_config, save_checkpoint
from mt_policy.demo_store import DemoStore, LoadedDemos
from mt_policy.errors import MtPolicyError, SchemaError, UnknownNameError
from mt_policy.model import MultiTaskPolicy, TaskEntry
from mt_policy.policy_edit import extend_policy
from mt_policy.progress import progress_bar
from mt_policy.sampler import WindowSampler, WindowSpec
from training.data import MultiTaskBatcher
from training.rehearsal import RehearsalBuffer
from training.resume_state import restore_training_state, training_state
from training.trainer import REHEARSAL, clip_actions, cosine_lr, ema_update, task_losses

STRATEGIES = ("rehearsal", "frozen", "finetune")
REHEARSAL_SOURCES = ("auto", "stores", "buffer")
STATE_FILE = "add_task_state.json"
MIN_LR_RATIO = 0.05


class AddTaskError(MtPolicyError):
    """add-task cannot run as asked; nothing was trained and the source checkpoint is untouched."""


@dataclass
class AddTaskOptions:
    checkpoint: Path
    task: str
    demos: Path
    out: Path | None = None
    strategy: str = "rehearsal"
    rehearsal_ratio: float = 0.5
    """Share of each batch drawn from the old tasks (rehearsal only), in [0, 1)."""
    rehearsal_source: str = "auto"
    """auto: the old tasks' stores when all exist, else the checkpoint's rehearsal buffer."""
    init_from: str | None = None
    """Task whose embedding row seeds the new one; default: the most similar by description."""
    steps: int | None = None
    """Default: a fifth of the source run's steps (adding a task should cost well under a quarter of a retrain)."""
    batch_size: int | None = None
    """Default: the source run's batch size."""
    lr: float = 3e-4
    warmup_steps: int = 100
    checkpoint_every: int = 250
    eval_episodes: int = 10
    """Episodes per task for the before/after evaluation (0: no evaluation)."""
    workers: int = 2
    n_action_steps: int | None = None
    seed: int = 0
    progress: bool = True

    def resolved_out(self) -> Path:
        return self.out or self.checkpoint.with_name(f"{self.checkpoint.name}+{self.task}")


@dataclass
class Plan:
    """Everything checked and loaded before training starts."""

    model: MultiTaskPolicy
    manifest: dict[str, Any]
    entry: TaskEntry
    new_demos: LoadedDemos
    old_source: str  # "stores", "buffer" or "none"
    old_stores: dict[str, LoadedDemos] = field(default_factory=dict)
    buffer: RehearsalBuffer | None = None
    init_from: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    batch_size: int = 0


def plan(opts: AddTaskOptions) -> Plan:
    """Check every input; raise AddTaskError saying what to fix before anything trains."""
    if opts.strategy not in STRATEGIES:
        raise AddTaskError(f"--strategy {opts.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not 0.0 <= opts.rehearsal_ratio < 1.0:
        raise AddTaskError(f"--rehearsal-ratio {opts.rehearsal_ratio} is outside [0, 1): it is the share of each "
                           f"batch given to old tasks, and the new task needs some of it")
    if opts.rehearsal_source not in REHEARSAL_SOURCES:
        raise AddTaskError(f"--rehearsal-source {opts.rehearsal_source!r}; choose one of {', '.join(REHEARSAL_SOURCES)}")
    if opts.out is not None and opts.out.resolve() == opts.checkpoint.resolve():
        raise AddTaskError("--out is the source checkpoint; add-task never modifies its source, choose another --out")
    model, manifest = load_checkpoint(opts.checkpoint)
    if opts.task in model.task_index:
        raise AddTaskError(f"task {opts.task!r} is already in {opts.checkpoint} ({', '.join(model.task_index)}); "
                           f"choose a new task, or `mt-policy trim` it out first")
    store = DemoStore.open(opts.demos)
    if store.task.name != opts.task:
        raise AddTaskError(f"{opts.demos} holds demos of {store.task.name!r}, not {opts.task!r}")
    if store.n_episodes == 0:
        raise AddTaskError(f"{opts.demos}: the store is empty; collect demos first (mt-policy collect --tasks {opts.task})")
    _check_declared_schema(opts, store, model)
    want = model.observation
    try:  # the store may hold more cameras than the policy sees (a run can train on a subset)
        schema = store.schema.with_cameras(want.camera_names, where=str(opts.demos))
    except SchemaError as err:
        raise AddTaskError(f"{err}; collect the new task's demos with the policy's cameras") from None
    obs = schema.observation
    if obs.cameras != want.cameras or obs.render_quality != want.render_quality:
        raise AddTaskError(
            f"{opts.demos} observes {[(c.name, c.height, c.width) for c in obs.cameras]} ({obs.render_quality} "
            f"rendering), but the policy sees {[(c.name, c.height, c.width) for c in want.cameras]} "
            f"({want.render_quality}); collect the new task's demos with the same --cameras/--image-size/--render-quality")
    if obs.proprio_source != want.proprio_source:
        raise AddTaskError(f"{opts.demos} records proprio as {obs.proprio_source}, the policy reads {want.proprio_source}")
    if opts.init_from is not None and opts.init_from not in model.task_index:
        raise AddTaskError(f"--init-from {opts.init_from!r} is not a task of the checkpoint ({', '.join(model.task_index)})")
    config = run_config(manifest)
    result = Plan(model, manifest, TaskEntry(store.task, schema.without_privileged()), store.load(cameras=want.camera_names), "none",
                  steps=opts.steps or max(1, int(config.get("train", {}).get("steps", 2000)) // 5),
                  batch_size=opts.batch_size or int(config.get("train", {}).get("batch_size", 128)))
    tensors = load_extra(opts.checkpoint, REHEARSAL)  # read once: rehearsal draws from it, the result extends it
    result.buffer = RehearsalBuffer.from_tensors(tensors) if tensors is not None else None
    if opts.strategy == "rehearsal" and opts.rehearsal_ratio > 0:
        _rehearsal_source(opts, result)
    if config.get("data", {}).get("clip_actions"):
        # The source trained on actions clipped to their bounds (its heads' statistics are of clipped values, its
        # rehearsal buffer holds clipped windows): the new head and rehearsal from the stores must see the same.
        result.new_demos = clip_actions({opts.task: result.new_demos})[opts.task]
        result.old_stores = clip_actions(result.old_stores)
    result.init_from = _initial_row(opts, model, store.task.description)
    return result


def _check_declared_schema(opts: AddTaskOptions, store: DemoStore, model: MultiTaskPolicy) -> None:
    """A registered task declares its action size; a store that disagrees is refused."""
    try:
        from sim.evaluate import observation_config
        from sim.tasks import get_task

        declared = get_task(opts.task).schema(observation_config(model.observation))
    except UnknownNameError:
        return  # a task defined only by its store: the store's schema is the declaration
    if declared.action.size != store.schema.action.size:
        raise AddTaskError(f"{opts.demos}: actions are {store.schema.action.size}-D, but task {opts.task} declares "
                           f"{declared.action.size}-D actions; re-collect the demos with this version of the task")


def _rehearsal_source(opts: AddTaskOptions, result: Plan) -> None:
    old = [t.name for t in result.model.tasks]
    stores = (result.manifest.get("provenance") or {}).get("stores") or {}
    have_stores = all(Path(stores.get(t, "/nonexistent"), "zarr.json").is_file() for t in old)
    if opts.rehearsal_source in ("auto", "stores") and have_stores:
        result.old_source = "stores"
        cameras = result.model.observation.camera_names
        result.old_stores = {t: DemoStore.open(stores[t]).load(cameras=cameras) for t in old}
    elif opts.rehearsal_source in ("auto", "buffer") and result.buffer is not None:
        result.old_source = "buffer"
        missing = [t for t in old if t not in result.buffer.tasks]
        if missing:
            raise AddTaskError(f"{opts.checkpoint}: the rehearsal buffer has no windows of {missing}")
    else:
        why = ("the old tasks' stores are not all at the recorded paths" if not have_stores else "")
        why += ("; " if why else "") + ("the checkpoint has no rehearsal buffer" if result.buffer is None else "")
        raise AddTaskError(f"rehearsal needs old-task data and none is usable ({why or opts.rehearsal_source}); "
                           f"use --strategy frozen, or retrain to get a checkpoint with a rehearsal buffer")


def _initial_row(opts: AddTaskOptions, model: MultiTaskPolicy, description: str) -> dict[str, Any]:
    if opts.init_from is not None:
        return {"task": opts.init_from, "by": "--init-from"}
    from training.task_embeddings import most_similar

    candidates = {t.name: t.info.description for t in model.tasks}
    try:
        name, similarity = most_similar(description, candidates, new_name=opts.task)
    except MtPolicyError as err:
        raise AddTaskError(f"cannot pick the new task's embedding row by description: {err}") from None
    return {"task": name, "by": "description similarity (all-MiniLM-L6-v2)", "similarity": round(float(similarity), 4)}


# ---------------------------------------------------------------------------------------------- training
class RehearsalBatches:
    """Batches of `batch_size`: round(ratio * B) old-task windows (uniform over old tasks), the rest new-task."""

    def __init__(self, model: MultiTaskPolicy, p: Plan, ratio: float) -> None:
        chunk = model.config.action_chunk
        self.new = p.entry.name
        self.new_sampler = WindowSampler(p.new_demos, WindowSpec(obs_steps=1, action_steps=chunk))
        self.old = [t.name for t in p.model.tasks] if p.old_source != "none" else []
        self.ratio = ratio if self.old else 0.0
        self.store_samplers = {t: WindowSampler(d, WindowSpec(obs_steps=1, action_steps=chunk))
                               for t, d in p.old_stores.items()}
        self.buffer = p.buffer
        self.assembler = MultiTaskBatcher({self.new: p.new_demos}, model.task_index, np.ones(1), chunk,
                                          model.observation.proprio_size)

    def sample(self, rng: np.random.Generator, batch_size: int):
        n_old = int(round(self.ratio * batch_size))
        parts = {self.new: self.new_sampler.sample(rng, batch_size - n_old)}
        if n_old:
            counts = rng.multinomial(n_old, np.full(len(self.old), 1.0 / len(self.old)))
            for task, k in zip(self.old, counts, strict=True):
                if k:
                    parts[task] = (self.store_samplers[task].sample(rng, int(k)) if task in self.store_samplers
                                   else self.buffer.sample(rng, task, int(k)))
        return self.assembler.assemble(parts)


def _trainable(model: MultiTaskPolicy, strategy: str, new_index: int) -> list[dict[str, Any]]:
    """Optimiser parameter groups; `frozen` trains the new head and (gradient-masked) the new embedding row."""
    if strategy != "frozen":
        return [{"params": list(model.parameters())}]
    for p in model.parameters():
        p.requires_grad_(False)
    head = list(model.heads[model.tasks[new_index].name].parameters())
    for p in head:
        p.requires_grad_(True)
    embedding = model.task_embedding.weight
    embedding.requires_grad_(True)
    mask = torch.zeros_like(embedding)
    mask[new_index] = 1.0
    embedding.register_hook(lambda grad: grad * mask)
    # No weight decay on the embedding: rows with zero gradient then stay bit-identical under AdamW.
    return [{"params": head}, {"params": [embedding], "weight_decay": 0.0}]


def add_task(opts: AddTaskOptions, log=print) -> dict[str, Any]:
    """Run add-task end to end; returns the forgetting report (also written beside the new checkpoint)."""
    start = time.perf_counter()
    p = plan(opts)
    out = opts.resolved_out()
    partial = out.with_name(f"{out.name}.partial")
    new_stats = p.new_demos.stats
    model = extend_policy(p.model, p.entry, (new_stats["obs/proprio"].mean, new_stats["obs/proprio"].std),
                          (new_stats["action"].mean, new_stats["action"].std), init_from=p.init_from["task"],
                          seed=opts.seed)
    new_index = model.task_index[p.entry.name]
    groups = _trainable(model, opts.strategy, new_index)
    decay = float(run_config(p.manifest).get("optim", {}).get("weight_decay", 1e-4))
    optimizer = torch.optim.AdamW(groups, lr=opts.lr, weight_decay=decay)
    ema_decay = float(run_config(p.manifest).get("optim", {}).get("ema_decay", 0.0))
    ema = copy.deepcopy(model) if ema_decay > 0 and opts.strategy != "frozen" else None
    batches = RehearsalBatches(model, p, opts.rehearsal_ratio if opts.strategy == "rehearsal" else 0.0)
    rng = np.random.default_rng(opts.seed)
    torch.manual_seed(opts.seed)
    step, seconds = _resume(partial, opts, model, ema, optimizer, rng)
    log(f"add-task {p.entry.name} ({p.entry.schema.action.size}-D actions) to {opts.checkpoint}: {opts.strategy}"
        + (f", {opts.rehearsal_ratio:.0%} old-task windows from {p.old_source}" if batches.ratio else "")
        + f", embedding row from {p.init_from['task']} ({p.init_from['by']}), {p.steps} steps of {p.batch_size}"
        + (f"; resuming at step {step}" if step else ""))
    bar = progress_bar(p.steps, "add-task", "step", opts.progress, initial=step)
    trainable = [q for g in groups for q in g["params"]]
    try:
        while step < p.steps:
            began = time.perf_counter()
            model.train()
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, p.steps, opts.lr, opts.warmup_steps, MIN_LR_RATIO)
            losses, _ = task_losses(model, batches.sample(rng, p.batch_size))
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            if ema is not None:
                ema_update(ema, model, ema_decay, step)
            step += 1
            seconds += time.perf_counter() - began
            bar.set_postfix(loss=f"{loss.item():.4f}", new=f"{losses[p.entry.name].item():.4f}", refresh=False)
            bar.update(1)
            if step % opts.checkpoint_every == 0 and step < p.steps:
                _save_partial(partial, opts, ema or model, model, optimizer, rng, step, seconds, p)
    finally:
        bar.close()
    policy = ema or model
    final = _save_final(out, partial, opts, policy, p, seconds)
    report = forgetting_report(opts, p, final, seconds, start, log)
    return report


# ---------------------------------------------------------------------------------------------- saving
def _options_record(opts: AddTaskOptions, p: Plan) -> dict[str, Any]:
    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()
              if k not in ("progress", "workers", "eval_episodes", "n_action_steps", "out")}
    return record | {"steps": p.steps, "batch_size": p.batch_size}


def _save_partial(partial: Path, opts: AddTaskOptions, policy: MultiTaskPolicy, model: MultiTaskPolicy,
                  optimizer: torch.optim.Optimizer, rng: np.random.Generator, step: int, seconds: float, p: Plan) -> None:
    tensors, optim_fields = training_state(model, optimizer)
    meta = {"options": _options_record(opts, p), "step": step, "seconds": seconds, "numpy_rng": rng.bit_generator.state,
            **optim_fields}
    save_checkpoint(policy, partial, {"add_task_in_progress": True}, extra_tensors={"resume": tensors},
                    extra_files={STATE_FILE: json.dumps(meta)})


def _resume(partial: Path, opts: AddTaskOptions, model: MultiTaskPolicy, ema: MultiTaskPolicy | None,
            optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> tuple[int, float]:
    state_file = partial / STATE_FILE
    if not state_file.is_file():
        return 0, 0.0
    meta = json.loads(state_file.read_text())
    tensors = load_extra(partial, "resume")
    if tensors is None or meta["options"]["strategy"] != opts.strategy or meta["options"]["task"] != opts.task:
        raise AddTaskError(f"{partial} holds another add-task run ({meta['options']}); remove it to start over")
    restore_training_state(tensors, meta, model, optimizer)
    if ema is not None:
        ema.load_state_dict(load_file(str(partial / WEIGHTS)))
    rng.bit_generator.state = meta["numpy_rng"]
    return int(meta["step"]), float(meta["seconds"])


def _save_final(out: Path, partial: Path, opts: AddTaskOptions, policy: MultiTaskPolicy, p: Plan, seconds: float) -> Path:
    source = p.manifest.get("provenance") or {}
    new_seeds = p.new_demos.episodes["seed"].tolist()
    record = {"source_checkpoint": str(opts.checkpoint.resolve()), "task": p.entry.name, "strategy": opts.strategy,
              "rehearsal_ratio": opts.rehearsal_ratio if opts.strategy == "rehearsal" else 0.0,
              "rehearsal_source": p.old_source, "init_from": p.init_from, "steps": p.steps,
              "batch_size": p.batch_size, "seconds": seconds, "store": str(opts.demos.resolve())}
    provenance = source | {
        "trainer": "mt-policy add-task",
        "stores": (source.get("stores") or {}) | {p.entry.name: str(opts.demos.resolve())},
        "demo_seeds": (source.get("demo_seeds") or {}) | {p.entry.name: new_seeds},
        "add_task": record,
        "lineage": [*(source.get("lineage") or []), record],
    }
    per_task = int(run_config(p.manifest).get("train", {}).get("rehearsal_per_task", 200))
    chunk = policy.config.action_chunk
    old = p.buffer
    if old is None and p.old_stores:  # an older checkpoint without a buffer: build the old tasks' part now
        old = RehearsalBuffer.from_demos(p.old_stores, per_task, chunk, opts.seed)
    buffer = RehearsalBuffer.from_demos({p.entry.name: p.new_demos}, per_task, chunk, opts.seed)
    if old is not None:
        buffer = old.merged(buffer)
    save_checkpoint(policy, out, provenance, extra_tensors={REHEARSAL: buffer.to_tensors()})
    shutil.rmtree(partial, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------- report
def forgetting_report(opts: AddTaskOptions, p: Plan, final: Path, seconds: float, started: float,
                      log=print) -> dict[str, Any]:
    old = [t.name for t in p.model.tasks]
    report: dict[str, Any] = {
        "source_checkpoint": str(opts.checkpoint.resolve()), "checkpoint": str(final.resolve()),
        "task": p.entry.name, "strategy": opts.strategy, "rehearsal_ratio": opts.rehearsal_ratio,
        "rehearsal_source": p.old_source, "init_from": p.init_from, "steps": p.steps,
        "wall_seconds": {"add_task_training": seconds, "add_task_total": None,
                         "original_training": (p.manifest.get("provenance") or {}).get("train_seconds")},
    }
    if opts.eval_episodes > 0:
        from sim.evaluate import evaluate

        common = {"episodes": opts.eval_episodes, "workers": opts.workers, "videos": 0, "progress": opts.progress,
                  "n_action_steps": opts.n_action_steps}
        log(f"evaluating the {len(old)} old tasks before, and all {len(old) + 1} tasks after ({opts.eval_episodes} episodes each)")
        before = evaluate(opts.checkpoint, final.with_name(f"{final.name}-eval-before"), tasks=old, **common)
        after = evaluate(final, final.with_name(f"{final.name}-eval"), **common)
        rows = {t: {"before": before["tasks"][t]["success_rate"], "after": after["tasks"][t]["success_rate"]} for t in old}
        for row in rows.values():
            row["drop"] = row["before"] - row["after"]
        report["old_tasks"] = rows
        report["new_task_success"] = after["tasks"][p.entry.name]["success_rate"]
        report["mean_drop"] = float(np.mean([r["drop"] for r in rows.values()]))
        # LIBERO-style backward transfer: mean change on the old tasks after learning the new one (negative = forgetting).
        report["backward_transfer"] = -report["mean_drop"]
        report["episodes_per_task"] = opts.eval_episodes
    report["wall_seconds"]["add_task_total"] = time.perf_counter() - started  # checks, training and evaluation
    original = report["wall_seconds"]["original_training"]
    report["wall_seconds"]["ratio_to_original"] = seconds / original if original else None
    (final / "forgetting.json").write_text(json.dumps(report, indent=2) + "\n")
    (final / "forgetting.md").write_text(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"# add-task {report['task']} ({report['strategy']})", "",
             f"source: `{report['source_checkpoint']}`  ", f"result: `{report['checkpoint']}`  ",
             f"embedding row initialised from {report['init_from']['task']} ({report['init_from']['by']})", ""]
    if "old_tasks" in report:
        lines += ["| old task | before | after | drop |", "|---|---:|---:|---:|"]
        for task, row in report["old_tasks"].items():
            lines.append(f"| {task} | {row['before']:.0%} | {row['after']:.0%} | {row['drop'] * 100:+.0f} pts |")
        lines += ["", f"new task {report['task']}: **{report['new_task_success']:.0%}** success  ",
                  f"mean old-task drop: **{report['mean_drop'] * 100:.1f} points**; backward transfer "
                  f"{report['backward_transfer'] * 100:+.1f} points ({report['episodes_per_task']} episodes per task)"]
    wall = report["wall_seconds"]
    lines.append(f"\nadd-task training {wall['add_task_training']:.0f} s"
                 + (f" vs original training {wall['original_training']:.0f} s ({wall['ratio_to_original']:.2f}x)"
                    if wall["original_training"] else " (original training time not recorded)"))
    return "\n".join(lines) + "\n"
