"""Task suites: named lists of registered tasks (`mt3`, `mt10`, `mt50`, and suites from YAML files).

A suite file looks like this; its optional `tasks` section registers gymnasium MuJoCo tasks
(see `sim.gym_tasks`) that its suites, or any later command, can then name::

    tasks:
      my-reacher:
        env_id: Reacher-v5
        expert: sim.reacher:expert          # expert(env, raw_obs) -> action
        success: sim.reacher:success        # success(env, info) -> bool
        description: Touch the target with the fingertip
        difficulty: easy                    # easy | medium | hard | very_hard
        agent_pos: [0, 1, 2, 3, 6, 7]       # optional: observation entries forming agent_pos
    suites:
      kitchen:
        tasks: [drawer-open-v3, drawer-close-v3, my-reacher]
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mt_policy.errors import MtPolicyError, unknown_name
from sim.gym_tasks import gym_task_from_dict
from sim.metaworld_tasks import TASKS
from sim.tasks import TaskSpec, get_task, register_task

# Three tasks whose experts finish in under 100 steps and that a small policy learns from one 96 px
# camera: smoke tests and `make demo`. (reach-v3, also quick, is left out: its goal marker floats in
# 3-D and one camera cannot tell its depth, so from pixels it needs the MT10 benchmark's budget.)
MT3 = ("button-press-topdown-v3", "drawer-close-v3", "window-close-v3")
# Meta-World's MT10 list, in its own order.
MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")
MT50 = tuple(TASKS)

_SUITES: dict[str, tuple[str, ...]] = {"mt3": MT3, "mt10": MT10, "mt50": MT50}


def register_suite(name: str, tasks: list[str] | tuple[str, ...], *, replace: bool = False) -> tuple[str, ...]:
    """Register a suite; every task must already be registered, and names may not repeat."""
    if not tasks:
        raise MtPolicyError(f"suite {name!r} lists no tasks")
    duplicates = sorted({t for t in tasks if list(tasks).count(t) > 1})
    if duplicates:
        raise MtPolicyError(f"suite {name!r} lists tasks more than once: {duplicates}")
    for task in tasks:
        get_task(task)  # raises with the list of known tasks
    if name in _SUITES and not replace:
        raise MtPolicyError(f"suite {name!r} already exists")
    _SUITES[name] = tuple(tasks)
    return _SUITES[name]


def load_suite_file(path: str | Path) -> list[str]:
    """Register every suite of a YAML file; return their names."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise MtPolicyError(f"{path}: cannot read suite file ({err})") from None
    suites = data.get("suites") if isinstance(data, dict) else None
    if not isinstance(suites, dict):
        raise MtPolicyError(f"{path}: expected a mapping 'suites: {{name: {{tasks: [...]}}}}'")
    tasks = data.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise MtPolicyError(f"{path}: 'tasks' must map task names to their definitions")
    for name, entry in tasks.items():
        if not isinstance(entry, dict):
            raise MtPolicyError(f"{path}: tasks.{name} must be a mapping")
        register_task(gym_task_from_dict(str(name), entry, where=f"{path}: tasks.{name}"), replace=True)
    for name, entry in suites.items():
        tasks = entry.get("tasks") if isinstance(entry, dict) else None
        if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
            raise MtPolicyError(f"{path}: suites.{name}.tasks must be a list of task names")
        try:
            register_suite(str(name), tasks, replace=True)
        except MtPolicyError as err:
            raise MtPolicyError(f"{path}: suites.{name}: {err}") from None
    return list(suites)


def suite_names() -> list[str]:
    return list(_SUITES)


def get_suite(name: str) -> list[TaskSpec]:
    if name not in _SUITES:
        raise unknown_name("suite", name, list(_SUITES))
    return [get_task(t) for t in _SUITES[name]]


def resolve_tasks(suite: str | None = None, tasks: str | list[str] | None = None) -> list[TaskSpec]:
    """Tasks named by a suite or by an explicit comma-separated list (exactly one of the two)."""
    if (suite is None) == (tasks is None):
        raise MtPolicyError("name either a suite or a list of tasks")
    if suite is not None:
        return get_suite(suite)
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks or [])
    return [get_task(t) for t in names if t]
