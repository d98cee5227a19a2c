"""Per-task success rates of a policy in sim: parallel policy rollouts on the evaluation seeds.

The policy is a PyTorch checkpoint, an ONNX export (`mt-policy export`) run through
`deploy.runtime.PolicyRuntime`, or a LeRobot policy directory written by `bench/peers.py` (`LeRobotPeer`:
LeRobot's own policy class and processors, one `select_action` per step); the runtime and LeRobot are
imported lazily, only for their kinds. The observation config comes
from the policy's schema, never from options, so the policy sees what it was trained on. Episode i of every task runs on `EVAL_SEEDS.seed(i)`; when the checkpoint
records its demo seeds, any overlap is refused. Worker processes load the checkpoint once, keep one
env per task and drive the model through `ChunkRunner`, the wrapper the ROS node uses as well. The
parent gathers outcomes and writes `eval.json`, `eval.md`, `eval.png` and `videos/` (see
`sim.eval_report`).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mt_policy.checkpoint import load_checkpoint
from mt_policy.errors import MtPolicyError, UnknownNameError, unknown_name
from mt_policy.progress import progress_bar
from mt_policy.runner import ChunkRunner, torch_predictor
from mt_policy.schema import ObservationSchema, TaskEntry, camera_key
from mt_policy.seeds import EVAL_SEEDS, check_disjoint
from sim.eval_report import (
    EpisodeOutcome,
    format_markdown,
    gif_stride,
    group_macro,
    plot_success,
    task_summary,
    wilson_interval,
    write_gif,
)
from sim.pool import run_jobs, sigterm_as_interrupt
from sim.tasks import ObservationConfig, TaskEnv, TaskSpec, get_task

__all__ = ["EvalError", "evaluate", "observation_config", "run_episode", "wilson_interval"]

EVAL_JSON, EVAL_MD, EVAL_PNG, VIDEO_DIR = "eval.json", "eval.md", "eval.png", "videos"
POLICY_KINDS = ("checkpoint", "onnx", "lerobot")
_KIND_NAMES = {"checkpoint": "checkpoint", "onnx": "export", "lerobot": "LeRobot policy"}


class EvalError(MtPolicyError):
    """An evaluation cannot run as asked: unknown tasks, seed overlap, a schema mismatch, bad options."""


@dataclass(frozen=True)
class PolicySource:
    """Where a worker loads the policy from: a checkpoint (PyTorch), an export (PolicyRuntime on `provider`)
    or a LeRobot policy directory (`kind="lerobot"`)."""

    path: str
    kind: str = "checkpoint"
    provider: str = "cpu"


@dataclass(frozen=True)
class EpisodeJob:
    """Everything a worker needs for one episode; the spec travels whole (suite-file tasks included)."""

    policy: PolicySource
    spec: TaskSpec
    obs_config: ObservationConfig
    seed: int
    max_steps: int
    n_action_steps: int | None
    temporal_ensemble: float | None
    record_camera: str | None
    """Camera whose frames come back for a video; None: this episode's video would not be kept."""
    frame_stride: int


@dataclass
class EpisodeResult:
    outcome: EpisodeOutcome
    frames: np.ndarray | None
    seconds: float


def observation_config(observation: ObservationSchema) -> ObservationConfig:
    """The `ObservationConfig` that makes envs produce what a policy with this observation schema reads."""
    sizes = {(c.height, c.width) for c in observation.cameras}
    if len(sizes) > 1:
        raise EvalError(f"cameras of different image sizes {sorted(sizes)} cannot be rendered by one env config")
    image_size = next(iter(sizes)) if sizes else ObservationConfig().image_size
    return ObservationConfig(observation.camera_names, image_size, observation.proprio_source,
                             observation.render_quality)


def run_episode(env: TaskEnv, act: Callable[[dict[str, np.ndarray]], np.ndarray], seed: int, max_steps: int,
                record_camera: str | None = None, frame_stride: int = 1) -> tuple[bool, int, np.ndarray | None]:
    """Roll out `act` from `env.reset(seed)` until success, truncation or `max_steps`.

    Returns (success, steps taken, frames): frames (T, H, W, 3) of `record_camera` every `frame_stride`
    steps from the reset on, plus the last one; None when not recording. Actions are clipped to the
    schema's bounds, as the robot would clip them.
    """
    low, high = np.asarray(env.schema.action.low), np.asarray(env.schema.action.high)
    obs = env.reset(seed)
    frames = [obs[camera_key(record_camera)]] if record_camera else None
    success, steps = False, 0
    while steps < max_steps:
        result = env.step(np.clip(act(obs), low, high).astype(np.float32))
        obs, steps, success = result.obs, steps + 1, result.success
        if frames is not None and (steps % frame_stride == 0 or success or result.truncated or steps == max_steps):
            frames.append(obs[camera_key(record_camera)])
        if success or result.truncated:
            break
    return success, steps, (np.stack(frames) if frames is not None else None)


_POLICIES: dict[PolicySource, Any] = {}
_ENVS: dict[tuple[str, ObservationConfig], TaskEnv] = {}


def _stateless() -> None:
    """Our policies keep nothing between calls (the ChunkRunner, new every episode, holds the queue)."""


def _predictor(source: PolicySource, task: str) -> tuple[Callable[[dict[str, np.ndarray]], np.ndarray], int,
                                                         Callable[[], None]]:
    """The worker's (cached) policy as a predictor for `task`, its action chunk length, and what to call at
    every episode start."""
    policy = _POLICIES.get(source)
    if source.kind == "onnx":
        if policy is None:
            from deploy.runtime import PolicyRuntime

            policy = _POLICIES[source] = PolicyRuntime(source.path, provider=source.provider, threads=1)
        policy.set_task(task)
        return policy.predict, policy.policy.action_chunk, _stateless
    if policy is None:
        import torch

        torch.set_num_threads(1)  # workers are the unit of parallelism
        if source.kind == "lerobot":
            from sim.lerobot_peer import LeRobotPeer

            loaded = LeRobotPeer(source.path)
        else:
            loaded = load_checkpoint(source.path)[0]
        policy = _POLICIES[source] = loaded
    if source.kind == "lerobot":
        return policy.predict, 1, policy.reset  # task-agnostic: LeRobot's ACT/Diffusion take no task input
    return torch_predictor(policy, task), policy.config.action_chunk, _stateless


def _worker_episode(job: EpisodeJob) -> EpisodeResult:
    start = time.perf_counter()
    predict, chunk, reset = _predictor(job.policy, job.spec.name)
    env = _ENVS.get((job.spec.name, job.obs_config))
    if env is None:
        env = _ENVS[(job.spec.name, job.obs_config)] = job.spec.make_env(job.obs_config)
    reset()
    runner = ChunkRunner(predict, chunk, job.n_action_steps, job.temporal_ensemble)
    success, steps, frames = run_episode(env, runner.act, job.seed, job.max_steps, job.record_camera,
                                         job.frame_stride)
    return EpisodeResult(EpisodeOutcome(job.spec.name, job.seed, success, steps), frames,
                         time.perf_counter() - start)


@dataclass(frozen=True)
class _PolicyInfo:
    """What evaluation needs to know about a policy before any worker loads it."""

    tasks: list[TaskEntry]
    observation: ObservationSchema
    action_chunk: int
    provenance: dict[str, Any]


def _policy_info(source: PolicySource) -> _PolicyInfo:
    if source.kind == "lerobot":
        from sim.lerobot_peer import peer_tasks, read_peer_manifest

        manifest = read_peer_manifest(source.path)
        tasks = peer_tasks(source.path, manifest)
        return _PolicyInfo(tasks, tasks[0].schema.observation, 1, manifest.get("provenance") or {})
    if source.kind == "onnx":
        from deploy.manifest import read_export

        exported = read_export(source.path)
        return _PolicyInfo(list(exported.tasks), exported.observation, exported.action_chunk, exported.provenance)
    model, manifest = load_checkpoint(source.path)
    return _PolicyInfo(list(model.tasks), model.observation, model.config.action_chunk, manifest.get("provenance") or {})


def _select_tasks(info: _PolicyInfo, tasks: str | list[str] | None, kind: str) -> list[TaskEntry]:
    if tasks is None:
        return list(info.tasks)
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise EvalError("no tasks named")
    by_name = {t.name: t for t in info.tasks}
    for name in names:
        if name not in by_name:
            raise unknown_name(f"{'exported' if kind == 'onnx' else _KIND_NAMES[kind]} task", name, list(by_name))
    return [by_name[n] for n in names]


def registry_spec(entry: TaskEntry, obs_config: ObservationConfig, suite_file: str | Path | None) -> TaskSpec:
    """The registry entry that simulates a policy's task, checked against the schema the policy was trained on."""
    try:
        spec = get_task(entry.name)
    except UnknownNameError:
        hint = f" (not defined in {suite_file} either)" if suite_file else "; pass the suite file defining it (--suite-file)"
        raise EvalError(f"policy task {entry.name!r} is not a registered task{hint}") from None
    schema = spec.schema(obs_config)
    if schema.observation != entry.schema.observation or schema.action != entry.schema.action:
        raise EvalError(f"task {entry.name}: the environment now produces {schema.observation}, {schema.action}, "
                        f"but the policy was trained on {entry.schema.observation}, {entry.schema.action}")
    return spec


def _check_demo_seeds(provenance: dict[str, Any], names: list[str], eval_seeds: list[int]) -> None:
    demo_seeds = provenance.get("demo_seeds")
    if demo_seeds is None:
        return
    if not isinstance(demo_seeds, dict):
        raise EvalError(f"checkpoint provenance 'demo_seeds' must map task names to seed lists, got {demo_seeds!r}")
    for name in names:
        try:
            check_disjoint((int(s) for s in demo_seeds.get(name, [])), eval_seeds)
        except ValueError as err:
            raise EvalError(f"task {name}: {err}; the checkpoint was trained on these initial states, so its "
                            f"success rate would measure memorisation") from None


class _VideoKeeper:
    """Keeps up to `per_outcome` success and failure GIFs per task; says which episodes are worth recording."""

    def __init__(self, out_dir: Path, per_outcome: int, camera: str | None, hz: dict[str, float]) -> None:
        self.out_dir, self.per_outcome, self.camera, self.hz = out_dir, per_outcome, camera, hz
        self.saved: dict[tuple[str, bool], int] = {}
        for stale in [*out_dir.glob("*_success_seed*.gif"), *out_dir.glob("*_failure_seed*.gif")]:
            stale.unlink()  # a previous run's videos would mix with this run's

    def _open(self, task: str, success: bool) -> bool:
        return self.saved.get((task, success), 0) < self.per_outcome

    def camera_for(self, task: str) -> str | None:
        if self.camera is None or not (self._open(task, True) or self._open(task, False)):
            return None
        return self.camera

    def offer(self, result: EpisodeResult) -> None:
        o = result.outcome
        if result.frames is None or not self._open(o.task, o.success):
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = f"{o.task}_{'success' if o.success else 'failure'}_seed{o.seed}.gif"
        write_gif(result.frames, self.out_dir / name, self.hz[o.task], gif_stride(self.hz[o.task]))
        self.saved[(o.task, o.success)] = self.saved.get((o.task, o.success), 0) + 1


@dataclass(frozen=True)
class EvalPlan:
    """A checked evaluation: the policy's tasks to run, their sim specs, seeds and step limits."""

    info: _PolicyInfo
    entries: list[TaskEntry]
    obs_config: ObservationConfig
    specs: dict[str, TaskSpec]
    seeds: list[int]
    limits: dict[str, int]


def plan_evaluation(source: PolicySource, tasks: str | list[str] | None, episodes: int, n_action_steps: int | None,
                    temporal_ensemble: float | None, suite_file: str | Path | None,
                    max_steps: int | None, first_episode: int = 0) -> EvalPlan:
    """Every check an evaluation makes before the first rollout (shared by sim eval and eval over ROS).

    Episode i runs on evaluation seed `first_episode + i`: a later slice of the range lets a user tune
    settings on seeds that the reported (first) ones never see.
    """
    info = _policy_info(source)
    chunk = info.action_chunk
    what = _KIND_NAMES[source.kind]
    if n_action_steps is not None and not 1 <= n_action_steps <= chunk:
        raise EvalError(f"n_action_steps must be in [1, {chunk}] (the {what}'s action chunk), got {n_action_steps}")
    if temporal_ensemble is not None and temporal_ensemble < 0:
        raise EvalError(f"temporal_ensemble must be >= 0, got {temporal_ensemble}")
    if suite_file is not None:
        from sim.suites import load_suite_file

        load_suite_file(suite_file)
    entries = _select_tasks(info, tasks, source.kind)
    obs_config = observation_config(info.observation)
    specs = {e.name: registry_spec(e, obs_config, suite_file) for e in entries}
    try:
        seeds = EVAL_SEEDS.take(episodes, first_episode)
    except ValueError:
        raise EvalError(f"first_episode must be in [0, {len(EVAL_SEEDS) - episodes}] for {episodes} episodes "
                        f"({len(EVAL_SEEDS)} evaluation seeds), got {first_episode}") from None
    _check_demo_seeds(info.provenance, list(specs), seeds)
    limits = {e.name: min(max_steps or e.schema.max_episode_steps, e.schema.max_episode_steps) for e in entries}
    return EvalPlan(info, entries, obs_config, specs, seeds, limits)


def evaluate(
    checkpoint: str | Path,
    out_dir: str | Path,
    tasks: str | list[str] | None = None,
    episodes: int = 10,
    workers: int = 2,
    videos: int = 2,
    n_action_steps: int | None = None,
    temporal_ensemble: float | None = None,
    progress: bool = True,
    suite_file: str | Path | None = None,
    max_steps: int | None = None,
    onnx_provider: str | None = None,
    kind: str | None = None,
    first_episode: int = 0,
) -> dict[str, Any]:
    """Evaluate every task of `checkpoint` (or the `tasks` subset) on `episodes` eval seeds; return eval.json.

    The seeds are the evaluation range's first ones, or from its `first_episode`-th on.

    `kind` says what `checkpoint` is (`POLICY_KINDS`); by default a checkpoint, or with `onnx_provider` an
    export directory run by `PolicyRuntime` on that provider. `kind="lerobot"`: a LeRobot policy directory
    (`LeRobotPeer`), one action per call, reset at every episode start.
    `max_steps` caps episodes below each task's limit (smoke tests only: rates are then not comparable).
    """
    start = time.perf_counter()
    if episodes < 1 or workers < 1 or videos < 0 or (max_steps is not None and max_steps < 1):
        raise EvalError(f"need episodes >= 1, workers >= 1, videos >= 0, max_steps >= 1; got {episodes}, "
                        f"{workers}, {videos}, {max_steps}")
    kind = kind or ("onnx" if onnx_provider else "checkpoint")
    if kind not in POLICY_KINDS or (onnx_provider and kind != "onnx"):
        raise EvalError(f"kind must be one of {POLICY_KINDS} (onnx_provider only with 'onnx'); got {kind!r}, "
                        f"onnx_provider {onnx_provider!r}")
    checkpoint = Path(checkpoint).resolve()
    source = PolicySource(str(checkpoint), kind, onnx_provider or "cpu")
    plan = plan_evaluation(source, tasks, episodes, n_action_steps, temporal_ensemble, suite_file, max_steps,
                           first_episode)
    info, entries, obs_config, specs, seeds, limits = (plan.info, plan.entries, plan.obs_config, plan.specs,
                                                       plan.seeds, plan.limits)
    chunk = info.action_chunk
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    camera = obs_config.cameras[0] if obs_config.cameras and videos > 0 else None
    keeper = _VideoKeeper(out_dir / VIDEO_DIR, videos, camera, {e.name: e.schema.control_hz for e in entries})

    def make_job(task: str, seed: int) -> EpisodeJob:
        return EpisodeJob(source, specs[task], obs_config, seed, limits[task], n_action_steps,
                          temporal_ensemble, keeper.camera_for(task), gif_stride(keeper.hz[task]))

    outcomes, warnings = _rollouts(make_job, list(specs), seeds, workers, keeper, progress)
    report = _report(checkpoint, entries, specs, outcomes, seeds, n_action_steps or chunk, temporal_ensemble,
                     max_steps, warnings)
    report["policy"] = {"kind": source.kind} | ({"provider": source.provider} if source.kind == "onnx" else {})
    report["wall_seconds"] = time.perf_counter() - start
    (out_dir / EVAL_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / EVAL_MD).write_text(format_markdown(report))
    plot_success(report, out_dir / EVAL_PNG)
    return report


def _rollouts(make_job: Callable[[str, int], EpisodeJob], names: list[str], seeds: list[int], workers: int,
              keeper: _VideoKeeper, progress: bool) -> tuple[dict[str, list[EpisodeOutcome]], list[str]]:
    """Run every (task, seed) episode, interleaving tasks; return outcomes by task and warnings."""
    outcomes: dict[str, list[EpisodeOutcome]] = {n: [] for n in names}
    warnings: list[str] = []
    todo = deque((name, seed) for seed in seeds for name in names)
    bar = progress_bar(len(todo), "eval", "ep", progress)
    finished = wins = 0

    def on_result(result: EpisodeResult) -> None:
        nonlocal finished, wins
        outcomes[result.outcome.task].append(result.outcome)
        keeper.offer(result)
        finished, wins = finished + 1, wins + result.outcome.success
        bar.set_postfix(success=f"{wins / finished:.0%}", refresh=False)
        bar.update(1)

    try:
        with sigterm_as_interrupt():
            run_jobs(_worker_episode, lambda: (make_job(*todo.popleft()),) if todo else None,
                     lambda job, result: on_result(result), min(workers, len(todo)), warnings,
                     what="evaluation worker")
    finally:
        bar.close()
    for name in names:
        outcomes[name].sort(key=lambda o: o.seed)
    return outcomes, warnings


def _report(checkpoint: Path, entries: list[TaskEntry], specs: dict[str, TaskSpec],
            outcomes: dict[str, list[EpisodeOutcome]], seeds: list[int], n_action_steps: int,
            temporal_ensemble: float | None, max_steps: int | None, warnings: list[str]) -> dict[str, Any]:
    rows = {e.name: task_summary(outcomes[e.name], e.info.difficulty or specs[e.name].difficulty,
                                 e.info.description or specs[e.name].description) for e in entries}
    groups = group_macro(rows)
    return {
        "checkpoint": str(checkpoint),
        "episodes_per_task": len(seeds),
        "eval_seeds": {"first": seeds[0], "count": len(seeds)},
        "n_action_steps": n_action_steps,
        "temporal_ensemble": temporal_ensemble,
        "max_steps": max_steps,
        "tasks": rows,
        "mean_success": float(np.mean([r["success_rate"] for r in rows.values()])),
        "group_macro": groups,
        "group_macro_mean": float(np.mean(list(groups.values()))),
        "warnings": warnings,
        "wall_seconds": None,
    }
