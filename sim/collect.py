"""Scripted-expert demo collection: worker processes roll out episodes, the parent writes the stores.

One writer per store (this process) keeps zarr writes simple and atomic; workers only simulate and
render. Seeds come from `DEMO_SEEDS`, lowest unused first, so a re-run resumes where the stores
stand. Ctrl-C, SIGTERM or a killed worker loses at most the episodes in flight.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mt_policy.demo_store import DemoStore
from mt_policy.errors import MtPolicyError
from mt_policy.progress import progress_bar
from mt_policy.seeds import DEMO_SEEDS
from sim.pool import run_jobs, sigterm_as_interrupt
from sim.tasks import ObservationConfig, TaskSpec

KEEP_CHOICES = ("success", "all")


@dataclass
class RolloutResult:
    task: str
    seed: int
    success: bool
    arrays: dict[str, np.ndarray]
    seconds: float

    @property
    def length(self) -> int:
        return len(self.arrays["action"])


def rollout(env: Any, seed: int, max_steps: int, action_noise: float = 0.0,
            settle_steps: int = 0) -> tuple[dict[str, np.ndarray], bool]:
    """Run the env's scripted expert from `reset(seed)` until success or `max_steps`.

    Frame t holds the observation and the expert's action from it; the episode ends on the step that
    reports success (that action is the last frame), or `settle_steps` steps after it (within
    `max_steps`): success fires the moment a task's distance crosses its threshold (reach's fingertips
    at 5.0 cm, push's puck at 4.7), so demos that stop there never show the expert finishing the motion
    into the goal region, and a policy that comes up a centimetre short has nothing to imitate.

    With `action_noise` > 0 the env executes the expert's action plus Gaussian noise of that standard
    deviation (a fraction of the action range's half-width), clipped to the bounds, while the store keeps
    the clean expert action: the demos then show how the expert recovers from the small errors a learned
    policy makes (DART, Laskey et al. 2017).
    The noise is drawn from the episode seed, so a demo stays a function of (task, seed, noise).
    """
    obs = env.reset(seed)
    action_schema = env.schema.action
    low, high = np.asarray(action_schema.low), np.asarray(action_schema.high)
    noise_rng = np.random.default_rng(seed) if action_noise > 0 else None
    frames: dict[str, list[np.ndarray]] = {key: [] for key in obs}
    frames["action"] = []
    success = False
    settle_left = settle_steps
    for _ in range(max_steps):
        action = env.expert_action()
        for key, value in obs.items():
            frames[key].append(value)
        frames["action"].append(action)
        if noise_rng is not None:
            executed = action + noise_rng.normal(0.0, action_noise, action.shape) * (high - low) / 2
            action = np.clip(executed, low, high).astype(np.float32)
        step = env.step(action)
        obs = step.obs
        if success:
            settle_left -= 1
        success = success or step.success
        if (success and settle_left == 0) or step.truncated:
            break
    return {key: np.stack(values) for key, values in frames.items()}, success


_WORKER_ENVS: dict[tuple[str, ObservationConfig, bool], Any] = {}


def _worker_rollout(spec: TaskSpec, obs_config: ObservationConfig, seed: int, max_steps: int,
                    action_noise: float = 0.0, settle_steps: int = 0, tool_centre: bool = False) -> RolloutResult:
    # The spec travels whole (not by name): tasks registered at run time, e.g. from a suite file,
    # are unknown to a freshly spawned worker's registry.
    start = time.perf_counter()
    env = _WORKER_ENVS.get((spec.name, obs_config, tool_centre))
    if env is None:
        env = _WORKER_ENVS[(spec.name, obs_config, tool_centre)] = spec.make_env(obs_config)
        if tool_centre:
            env.aim_tool_centre()
    arrays, success = rollout(env, seed, max_steps, action_noise, settle_steps)
    return RolloutResult(spec.name, seed, success, arrays, time.perf_counter() - start)


@dataclass
class TaskProgress:
    spec: TaskSpec
    store: DemoStore
    target: int
    seeds: Iterator[int]
    attempts_left: int
    expert: str
    """The name each demo records: the spec's expert, or its tool-centre variant."""
    tool_centre: bool = False
    kept: int = 0
    rejected: int = 0
    exhausted: bool = False

    @property
    def remaining(self) -> int:
        return self.target - self.store.n_episodes


@dataclass
class CollectReport:
    out_dir: Path
    stores: dict[str, Path]
    kept: dict[str, int]
    rejected: dict[str, int]
    frames: int
    wall_seconds: float
    write_seconds: float
    rollout_seconds: float
    interrupted: bool = False
    rejected_total: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def write_share(self) -> float:
        return self.write_seconds / self.wall_seconds if self.wall_seconds else 0.0


def store_path(out_dir: Path, task: str) -> Path:
    return out_dir / f"{task}.zarr"


def collect(
    tasks: list[TaskSpec],
    episodes: int,
    out_dir: str | Path,
    obs_config: ObservationConfig | None = None,
    *,
    workers: int = 2,
    keep: str = "success",
    attempts_factor: float = 3.0,
    max_steps: int | None = None,
    action_noise: float = 0.0,
    settle_steps: int = 0,
    tool_centre: bool = False,
    progress: bool = True,
) -> CollectReport:
    """Fill `out_dir/<task>.zarr` with `episodes` demos per task, resuming whatever is there.

    `action_noise`: see `rollout`; a store remembers it, and appending with another value is refused.
    So is appending to a store recorded under another simulator version (`TaskInfo.env_version`); a
    complete one is kept, with a warning.
    `settle_steps`: expert steps recorded past success (see `rollout`); a store remembers them too.
    `tool_centre`: tasks whose expert puts the hand flange on the goal (`TaskSpec.tool_centre_expert`: reach)
    aim the tool centre at it instead; their stores remember it and name that expert, other tasks ignore it.
    """
    obs_config = obs_config or ObservationConfig()
    if keep not in KEEP_CHOICES:
        raise MtPolicyError(f"keep must be one of {KEEP_CHOICES}, got {keep!r}")
    if episodes < 1 or workers < 1:
        raise MtPolicyError(f"episodes and workers must be >= 1, got {episodes} and {workers}")
    if max_steps is not None and max_steps < 1:
        raise MtPolicyError(f"max_steps must be >= 1, got {max_steps}")
    if not 0.0 <= action_noise <= 1.0:
        raise MtPolicyError(f"action_noise is a fraction of the action range's half-width, 0..1; got {action_noise}")
    if settle_steps < 0:
        raise MtPolicyError(f"settle_steps must be >= 0, got {settle_steps}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    states: dict[str, TaskProgress] = {}
    version_notes: list[str] = []
    for spec in tasks:
        aimed = tool_centre and spec.tool_centre_expert is not None
        # What the store's episodes are a function of, beside task and seed: (value, value of older stores, option).
        recipe = {"action_noise": (action_noise, 0.0, "--action-noise"),
                  "settle_steps": (settle_steps, 0, "--settle-steps"), "tool_centre": (aimed, False, "--tool-centre")}
        schema, info = spec.schema(obs_config), spec.info()
        store = DemoStore.open_or_create(store_path(out_dir, spec.name), schema, info,
                                         created_with={"collector": "mt-policy collect", "keep": keep,
                                                       **{key: value for key, (value, _, _) in recipe.items()}})
        for key, (value, default, flag) in recipe.items():
            was = store.created_with.get(key, default)  # a store older than an option was collected at its default
            if was != value:
                store.close()
                raise MtPolicyError(f"{store.path}: its episodes were collected with {flag} {was}, this run asks for "
                                    f"{value}; use another --out or the same {flag}")
        need = max(0, episodes - store.n_episodes)
        if store.task.recorded_under_another_simulator(info.env_version):
            recorded, now = store.task.env_version, info.env_version
            if need:  # appending would mix two simulators' observations in one store
                store.close()
                raise MtPolicyError(f"{store.path}: recorded with {recorded!r}, but this run simulates {now!r}; "
                                    f"collect into another --out (its {store.n_episodes} demos are kept)")
            version_notes.append(f"{spec.name}: {store.path} was recorded with {recorded!r}, not {now!r}; "
                                 f"kept as it is (collect into another --out to record it again)")
        states[spec.name] = TaskProgress(spec, store, episodes, DEMO_SEEDS.unused(store.used_seeds),
                                         attempts_left=int(need * attempts_factor) + 2,
                                         expert=spec.tool_centre_expert if aimed else spec.expert, tool_centre=aimed)
    report = CollectReport(out_dir, {n: s.store.path for n, s in states.items()}, {}, {}, 0, 0.0, 0.0, 0.0)
    report.warnings.extend(version_notes)
    total = sum(s.remaining for s in states.values() if s.remaining > 0)
    bar = progress_bar(total, "collect", "ep", progress)
    start = time.perf_counter()
    try:
        with sigterm_as_interrupt():
            _run_pool(states, obs_config, workers, keep, max_steps, action_noise, settle_steps, report, bar)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
        for st in states.values():
            st.store.close()
    report.wall_seconds = time.perf_counter() - start
    for name, st in states.items():
        report.kept[name], report.rejected[name] = st.kept, st.rejected
        if st.exhausted and st.remaining > 0:
            report.warnings.append(
                f"{name}: stopped after {st.kept + st.rejected} attempts with {st.store.n_episodes}/{episodes} "
                f"episodes; the expert fails too often (raise --attempts-factor or use --keep all)"
            )
    return report


def _next_job(states: dict[str, TaskProgress], in_flight: dict[str, int], rr: deque[str]) -> tuple[str, int] | None:
    """Round-robin over tasks that still need episodes and have attempts left."""
    for _ in range(len(rr)):
        name = rr[0]
        rr.rotate(-1)
        st = states[name]
        if st.remaining - in_flight.get(name, 0) > 0 and st.attempts_left > 0:
            st.attempts_left -= 1
            return name, next(st.seeds)
        if st.attempts_left <= 0 and st.remaining > 0:
            st.exhausted = True
    return None


def _run_pool(states: dict[str, TaskProgress], obs_config: ObservationConfig, workers: int, keep: str,
              max_steps: int | None, action_noise: float, settle_steps: int, report: CollectReport, bar: Any) -> None:
    rr = deque(states)
    in_flight: dict[str, int] = {}

    def next_job() -> tuple[TaskSpec, ObservationConfig, int, int, float, int, bool] | None:
        job = _next_job(states, in_flight, rr)
        if job is None:
            return None
        name, seed = job
        in_flight[name] = in_flight.get(name, 0) + 1
        st = states[name]
        return (st.spec, obs_config, seed, max_steps or st.store.schema.max_episode_steps, action_noise, settle_steps,
                st.tool_centre)

    def on_result(job: tuple, result: RolloutResult) -> None:
        in_flight[result.task] -= 1
        _record(states[result.task], result, keep, report, bar)

    run_jobs(_worker_rollout, next_job, on_result, workers, report.warnings, what="collection worker")


def _record(st: TaskProgress, result: RolloutResult, keep: str, report: CollectReport, bar: Any) -> None:
    report.rollout_seconds += result.seconds
    if st.remaining <= 0:
        return  # an extra attempt finished after the target was reached; its seed stays unused
    if result.success or keep == "all":
        t0 = time.perf_counter()
        st.store.append_episode(result.arrays, seed=result.seed, success=result.success, expert=st.expert)
        report.write_seconds += time.perf_counter() - t0
        st.kept += 1
        report.frames += result.length
        bar.update(1)
    else:
        st.store.add_rejected_seed(result.seed)
        st.rejected += 1
        report.rejected_total += 1
    elapsed = max(bar.format_dict["elapsed"], 1e-9)
    bar.set_postfix(frames_s=f"{report.frames / elapsed:.0f}", rejected=report.rejected_total, refresh=False)
