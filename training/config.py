"""Typed run configuration, registered with Hydra so a misspelt key fails loudly.

A run config = data (which stores, how tasks are mixed) + model + optim + train + eval. Per-task data
configs may carry local settings (sampling `weight`, `max_episodes`); the global value of the same
setting in `data`, when set (from a config file or the command line), wins over every per-task one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

SAMPLING = ("uniform", "proportional", "temperature", "frames")
BALANCERS = ("equal", "samples", "inverse_loss", "uncertainty", "gradnorm", "pcgrad", "upgrad", "mgda", "cagrad", "rgb")


@dataclass
class TaskDataConfig:
    store: str | None = None
    """Path of the task's demo store; default `<data.root>/<task>.zarr`."""
    weight: float | None = None
    """Local sampling-weight multiplier (default 1)."""
    max_episodes: int | None = None
    """Use only the first N episodes of the store (default: all)."""


@dataclass
class DataConfig:
    root: str = "data/mt3"
    """Directory holding `<task>.zarr` stores for tasks that name no store."""
    suite: str | None = "mt3"
    """A suite whose tasks all join the run (null: only `tasks`)."""
    suite_file: str | None = None
    """YAML file with more suites/tasks (see `sim.suites`)."""
    tasks: dict[str, TaskDataConfig] = field(default_factory=dict)
    """Per-task data configs, keyed by task name; they add to the suite's tasks or refine them."""
    clip_actions: bool = False
    """Train on the actions as executed: each task's recorded actions clipped to its schema's bounds (as eval,
    the ROS node and the env clip them), with the action statistics recomputed from the clipped values.
    Scripted experts often ask for far more than the bounds (Meta-World's up to 12x), and unclipped targets
    spend the loss on magnitudes the robot never executes (measured no better on MT10: bench/RESULTS.md)."""
    sampling: str = "uniform"
    """How batch slots are shared between tasks: uniform | proportional (to demos) | temperature | frames
    (proportional to demo frames, as LeRobot's shuffled loader draws them). Counts are of the training
    episodes: after `max_episodes` and the `val_fraction` hold-out."""
    temperature: float = 2.0
    """For `temperature`: p_t proportional to n_t^(1/T); T=1 is proportional, T->inf uniform."""
    weight: float | None = None
    """Global sampling weight for every task; when set it beats the per-task `weight`."""
    max_episodes: int | None = None
    """Global cap on episodes per task; when set it beats the per-task `max_episodes`."""
    val_fraction: float = 0.0
    """Episodes held out of training per task (for validation loss)."""
    cameras: list[str] | None = None
    """Train on these recorded cameras only, in this order (default: every camera the stores hold)."""


@dataclass
class ModelCfg:
    encoder_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64])
    encoder_strides: list[int] | None = None
    """Conv stride per layer (default: 2 for all but the last); see `ModelConfig.encoder_strides`."""
    encoder_pool: str = "spatial_softmax"
    """spatial_softmax | flatten | attention; see `ModelConfig.encoder_pool`."""
    encoder_norm: str = "none"
    """none | group (GroupNorm after each conv); see `ModelConfig.encoder_norm`."""
    encoder_blocks: int = 0
    """0: one plain conv per layer; N: N residual blocks per layer; see `ModelConfig.encoder_blocks`."""
    attention_layers: int = 2
    """Self-attention blocks of the `attention` pool; see `ModelConfig.attention_layers`."""
    keypoint_sharpness: float = 0.0
    """0: plain spatial softmax; S > 0: a learned softmax scale starting at S; see `ModelConfig.keypoint_sharpness`."""
    proprio_hidden: int = 64
    feature_dim: int = 256
    task_embedding_dim: int = 32
    task_embedding_scale: float = 0.0
    trunk_dims: list[int] = field(default_factory=lambda: [256, 256])
    head_hidden: int = 256
    action_chunk: int = 8
    random_shift: int = 4
    proprio_dropout: float = 0.0
    """Training only: chance a sample's proprio is replaced by its task's mean; see `ModelConfig.proprio_dropout`."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    """Cosine decay ends at lr * min_lr_ratio."""
    grad_clip: float = 1.0
    """Max global gradient norm (0: no clipping)."""
    ema_decay: float = 0.995
    """EMA of the weights used for eval and checkpoints (0: no EMA)."""


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 128
    seed: int = 0
    balancer: str = "equal"
    """equal | samples | inverse_loss | uncertainty | gradnorm | pcgrad | upgrad | mgda | cagrad | rgb."""
    inverse_loss_momentum: float = 0.9
    """For `inverse_loss`: EMA momentum of the detached per-task losses."""
    gradnorm_alpha: float = 1.5
    gradnorm_lr: float = 0.025
    cagrad_c: float = 0.4
    rgb_update: str = "norm_sum"
    """For `rgb`: norm_sum (sum of ||g_i|| v_i) or unit_mean (mean of v_i times the mean norm)."""
    conflict_every: int = 100
    """Log gradient-conflict metrics (pairwise cosines on shared parameters) every N steps (0: never)."""
    checkpoint_every: int = 500
    log_every: int = 50
    threads: int = 0
    """torch CPU threads (0: all cores)."""
    device: str = "cpu"
    resume: bool = False
    """Continue from `<run dir>/checkpoints/last` (use `mt-policy train --resume RUN_DIR`)."""
    progress: bool = True
    rehearsal_per_task: int = 200
    """Training windows per task kept in every checkpoint's rehearsal buffer (for `mt-policy add-task`)."""
    privileged_weight: float = 0.0
    """Weight of the privileged-state loss: per-task linear probes on the shared features learn to predict the
    simulator state the stores recorded (`mt-policy collect --privileged`), normalised per task, with an L1
    loss added to each task's action loss (0: off). It only shapes training; the policy's inputs are unchanged."""


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate in sim every N steps (0: only at the end when `final` is set)."""
    final: bool = True
    episodes: int = 10
    workers: int = 2
    n_action_steps: int | None = None
    """Actions executed per predicted chunk (default: the whole chunk)."""
    max_steps: int | None = None
    """Cap on episode length (default: the task's limit)."""
    videos: int = 1


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelCfg = field(default_factory=ModelCfg)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)


@dataclass(frozen=True)
class ResolvedTask:
    """One task's data settings after precedence (global > per-task > default) is applied."""

    name: str
    store: str
    weight: float
    max_episodes: int | None


def resolve_tasks(data: Any, suite_tasks: list[str]) -> list[ResolvedTask]:
    """Tasks of the run in order (suite first, then extra per-task entries), with settings resolved."""
    names = list(suite_tasks) + [t for t in data.tasks if t not in suite_tasks]
    if not names:
        raise ValueError("the run has no tasks: set data.suite or data.tasks")
    resolved = []
    for name in names:
        local = data.tasks.get(name) or TaskDataConfig()
        store = local.store or f"{data.root}/{name}.zarr"
        weight = data.weight if data.weight is not None else (local.weight if local.weight is not None else 1.0)
        max_eps = data.max_episodes if data.max_episodes is not None else local.max_episodes
        if weight <= 0:
            raise ValueError(f"task {name}: sampling weight must be > 0, got {weight}")
        resolved.append(ResolvedTask(name, store, float(weight), max_eps))
    return resolved


def validate(cfg: Any) -> None:
    """Choice fields and ranges that the type schema cannot check."""
    if cfg.data.sampling not in SAMPLING:
        raise ValueError(f"data.sampling {cfg.data.sampling!r} not one of {SAMPLING}")
    if cfg.train.balancer not in BALANCERS:
        raise ValueError(f"train.balancer {cfg.train.balancer!r} not one of {BALANCERS}")
    if cfg.data.temperature <= 0:
        raise ValueError("data.temperature must be > 0")
    if not 0 <= cfg.data.val_fraction < 1:
        raise ValueError("data.val_fraction must be in [0, 1)")
    if cfg.train.steps < 1 or cfg.train.batch_size < 1:
        raise ValueError("train.steps and train.batch_size must be >= 1")
    if cfg.train.privileged_weight < 0:
        raise ValueError(f"train.privileged_weight must be >= 0, got {cfg.train.privileged_weight}")
