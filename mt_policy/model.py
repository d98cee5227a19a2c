"""`MultiTaskPolicy`: the exportable tensor core (encoder, task FiLM, trunk, per-task heads).

    images (B, H, W, 3) uint8 per camera ─► CNN + spatial softmax ─┐
    proprio (B, P) float (per-task normalised, zero-padded to P) ─► MLP ─┴► fuse ─► FiLM(task) ─► trunk
    trunk ─► heads[task]: (B, Ta * A_task) ─► de-normalised chunk (B, Ta, A_task)

Normalisation statistics are buffers, so a checkpoint (and its ONNX graph) carries them. The
action-chunk queue lives outside, in `mt_policy.runner`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mt_policy.errors import SchemaError, unknown_name
from mt_policy.schema import ObservationSchema, TaskEntry, camera_key

__all__ = ["ModelConfig", "MultiTaskPolicy", "NormStats", "TaskEntry", "shared_observation"]

STD_FLOOR = 1e-2  # constant features (e.g. an unused gripper dim) must not blow up when normalised


ENCODER_POOLS = ("spatial_softmax", "flatten", "attention")
ENCODER_NORMS = ("none", "group")
GROUP_NORM_CHANNELS = 8  # channels per GroupNorm group
ATTENTION_HEADS = 4
ATTENTION_QUERIES = 4  # learned read-out queries of the `attention` pool; their outputs are concatenated


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters (saved in every checkpoint)."""

    encoder_channels: tuple[int, ...] = (16, 32, 64, 64)
    """Conv widths per camera; the first layers run at full resolution and dominate the cost."""
    encoder_strides: tuple[int, ...] | None = None
    """Stride of each conv layer (default: 2 for all but the last). The spatial softmax locates objects on
    the last map, so fewer stride-2 layers mean finer keypoints at a higher cost per layer."""
    encoder_pool: str = "spatial_softmax"
    """How a camera's last conv map becomes a vector: `spatial_softmax` (x, y of each channel's peak) or
    `flatten` (every cell of the map through one linear layer: keeps small objects a softmax may miss) or
    `attention` (the cells as tokens with learned positions, `attention_layers` self-attention blocks, then
    `ATTENTION_QUERIES` learned queries read them out: ACT's structure over its feature map, at our scale).
    `spatial_softmax` stays the default: `attention` trains at about half its speed on 2 CPU cores and measured
    no better per sample on MT10 (bench/RESULTS.md, the peers section)."""
    attention_layers: int = 2
    """Self-attention blocks over the map's cells when `encoder_pool` is `attention` (ignored otherwise)."""
    keypoint_sharpness: float = 0.0
    """`spatial_softmax` only: 0 takes the softmax of the conv map as it is; S > 0 multiplies the map by a learned
    scale that starts at S, so early keypoints follow small objects (reach's goal probe placed the marker to 3.6 cm
    against 4.4 cm at S=10). 0 is the default: on MT10 S=10 scored 71.6% against 79.0%, the scale fell to 0.46 and
    the fit lagged throughout (bench/RESULTS.md)."""
    encoder_norm: str = "none"
    """Normalisation after each conv: `none`, or `group` (GroupNorm, 8 channels a group). `none` is the default:
    GroupNorm makes the CNN's forward + backward about 1.7x slower on 2 CPU cores and measured no better per
    sample (bench/RESULTS.md, the peers section)."""
    encoder_blocks: int = 0
    """Residual blocks per encoder layer: 0 keeps one plain conv a layer; N >= 1 makes each layer N basic
    residual blocks (two 3x3 convs and a skip; the first block takes the layer's stride), so the encoder is
    deeper at the same output map size. 0 is the default: at 1 or 2 blocks it measured no better per sample on
    MT10, and 2 train about 2.7x slower on 2 CPU cores (bench/RESULTS.md, the peers section)."""
    proprio_hidden: int = 64
    feature_dim: int = 256
    """Width of the fused feature that FiLM modulates."""
    task_embedding_dim: int = 32
    task_embedding_scale: float = 0.0
    """Multiplier on the task embedding before FiLM; 0 disables task conditioning (heads still differ)."""
    trunk_dims: tuple[int, ...] = (256, 256)
    head_hidden: int = 256
    action_chunk: int = 8
    """Ta: future actions predicted per call."""
    random_shift: int = 4
    """Pixels of random-shift augmentation in training (0: none)."""
    proprio_dropout: float = 0.0
    """Training only: the chance that a sample's proprio vector is replaced by its task's mean (zero once
    normalised), so the policy cannot lean on the hand's path alone to tell one demo from another and must
    read the goal from the image (0: never). 0 is the default: on reach alone 0.7 lifted success from 45/160 to
    93/160 (two seeds), but on MT10 it scored 76.8% against 79.0% (bench/RESULTS.md)."""
    privileged_size: int = 0
    """Entries of the demos' privileged simulator state (object, goal and hand positions) that a per-task linear
    probe on the trunk features learns to predict in training, so the shared encoder must locate what the task
    turns on (0: no probe). Never an input; the probes are not part of the exported graph."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder_channels", tuple(self.encoder_channels))
        if self.encoder_strides is not None:
            object.__setattr__(self, "encoder_strides", tuple(self.encoder_strides))
            if len(self.encoder_strides) != len(self.encoder_channels) or min(self.encoder_strides) < 1:
                raise ValueError(f"encoder_strides must give a positive stride per layer of encoder_channels "
                                 f"{self.encoder_channels}, got {self.encoder_strides}")
        object.__setattr__(self, "trunk_dims", tuple(self.trunk_dims))
        if not self.encoder_channels or min(self.encoder_channels) < 1:
            raise ValueError(f"encoder_channels must be positive, got {self.encoder_channels}")
        if self.encoder_pool not in ENCODER_POOLS:
            raise ValueError(f"encoder_pool must be one of {list(ENCODER_POOLS)}, got {self.encoder_pool!r}")
        if self.encoder_norm not in ENCODER_NORMS:
            raise ValueError(f"encoder_norm must be one of {list(ENCODER_NORMS)}, got {self.encoder_norm!r}")
        if self.encoder_blocks < 0:
            raise ValueError(f"encoder_blocks must be >= 0, got {self.encoder_blocks}")
        if self.attention_layers < 0:
            raise ValueError(f"attention_layers must be >= 0, got {self.attention_layers}")
        if self.keypoint_sharpness < 0:
            raise ValueError(f"keypoint_sharpness must be >= 0 (0: a plain softmax), got {self.keypoint_sharpness}")
        if self.action_chunk < 1 or self.feature_dim < 1 or self.task_embedding_dim < 1:
            raise ValueError("action_chunk, feature_dim and task_embedding_dim must be >= 1")
        if self.task_embedding_scale < 0 or self.random_shift < 0 or self.privileged_size < 0:
            raise ValueError("task_embedding_scale, random_shift and privileged_size must be >= 0")
        if not 0.0 <= self.proprio_dropout < 1.0:
            raise ValueError(f"proprio_dropout must be in [0, 1), got {self.proprio_dropout}")


@dataclass
class NormStats:
    """Per-task mean/std of proprio and actions, plus per-camera image mean/std (0..1 scale)."""

    proprio: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    action: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    image: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def shared_observation(tasks: list[TaskEntry]) -> ObservationSchema:
    """The observation every task must share (cameras, image sizes, render quality); proprio padded to the max."""
    if not tasks:
        raise SchemaError("a policy needs at least one task")
    first = tasks[0].schema.observation
    for entry in tasks[1:]:
        obs = entry.schema.observation
        if obs.cameras != first.cameras or obs.render_quality != first.render_quality:
            raise SchemaError(
                f"task {entry.name} observes {[(c.name, c.height, c.width) for c in obs.cameras]} "
                f"({obs.render_quality}), but {tasks[0].name} observes "
                f"{[(c.name, c.height, c.width) for c in first.cameras]} ({first.render_quality}); "
                f"one policy needs the same cameras and image size for every task"
            )
    return ObservationSchema(first.cameras, max(t.schema.observation.proprio_size for t in tasks),
                             first.proprio_source, first.render_quality)


class SpatialSoftmax(nn.Module):
    """Expected (x, y) image position of each channel's activation: 2 numbers per channel. With `sharpness`
    S > 0 the map is first multiplied by a learned scale starting at S (learned in log space, so it stays
    positive)."""

    def __init__(self, sharpness: float = 0.0) -> None:
        super().__init__()
        self._coords: dict[tuple, torch.Tensor] = {}  # not a buffer: derived from the input size, never saved
        if sharpness > 0:
            self.log_sharpness = nn.Parameter(torch.tensor(math.log(sharpness)))
        else:
            self.log_sharpness = None

    def coords(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """(H*W, 2) pixel coordinates in [-1, 1], x then y; cached, so a traced graph holds them as a constant."""
        key = (h, w, like.device, like.dtype)
        if key not in self._coords:
            ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, h, device=like.device, dtype=like.dtype),
                                    torch.linspace(-1.0, 1.0, w, device=like.device, dtype=like.dtype), indexing="ij")
            self._coords[key] = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)
        return self._coords[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.log_sharpness is not None:
            x = x * self.log_sharpness.exp()
        attention = F.softmax(x.flatten(2), dim=-1)  # (B, C, H*W)
        # One matmul against the pixel coordinates: a single MatMul node in ONNX instead of a chain of reductions.
        keypoints = attention @ self.coords(int(h), int(w), x)  # (B, C, 2)
        return keypoints.transpose(1, 2).reshape(b, 2 * c)  # (B, 2C): all x, then all y


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, D) -> (B, heads, N, D / heads)."""
    return x.reshape(x.shape[0], x.shape[1], heads, x.shape[2] // heads).transpose(1, 2)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head, for (B, N, D) inputs. Written out in matmuls rather than torch's
    fused attention, so the traced ONNX graph holds plain MatMul/Softmax nodes, not an attention op that
    the graph's opset or a runtime may lack."""
    b, n, d = q.shape
    scores = _split_heads(q, heads) @ _split_heads(k, heads).transpose(-2, -1) * (d // heads) ** -0.5
    return (F.softmax(scores, dim=-1) @ _split_heads(v, heads)).transpose(1, 2).reshape(b, n, d)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} (the last encoder channel count) must divide into {heads} heads")
        self.heads = heads
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.out(multi_head_attention(self.q(x), k, v, self.heads))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP, both residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attention(h, h)
        return x + self.mlp(self.norm2(x))


class AttentionPool(nn.Module):
    """The map's cells as tokens (with a learned position each) through self-attention blocks, then read
    out by learned queries: (B, C, h, w) -> (B, queries * C). Unlike the spatial softmax, a query can weigh
    what an object is against where it is, and relate several cells (ACT's transformer does this at 18M
    parameters)."""

    def __init__(self, channels: int, cells: int, layers: int, queries: int = ATTENTION_QUERIES,
                 heads: int = ATTENTION_HEADS) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.randn(cells, channels) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(channels, heads) for _ in range(layers)])
        self.queries = nn.Parameter(torch.randn(queries, channels) * 0.02)
        self.norm = nn.LayerNorm(channels)
        self.readout = Attention(channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.blocks(x.flatten(2).transpose(1, 2) + self.position))  # (B, h*w, C)
        queries = self.queries.expand(x.shape[0], -1, -1)
        return self.readout(queries, tokens).flatten(1)


def _conv_norm(c_in: int, c_out: int, stride: int, norm: str) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)]
    if norm == "group":
        layers.append(nn.GroupNorm(max(1, c_out // GROUP_NORM_CHANNELS), c_out))
    return layers


class ResidualBlock(nn.Module):
    """relu(skip(x) + gain * conv(relu(conv(x)))), the gain starting at 0 so that an unnormalised stack
    starts as its skips and cannot blow up at initialisation (the SkipInit idea)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.branch = nn.Sequential(*_conv_norm(c_in, c_out, stride, norm), nn.ReLU(), *_conv_norm(c_out, c_out, 1, norm))
        # A strided skip averages, then projects (as ResNet-D): it sees every pixel, and it keeps clear of a
        # oneDNN bug (uxlfoundation/oneDNN#6035: the weight gradient of a strided 1x1 conv over channels-last
        # input with few channels writes out of bounds), which segfaulted torch 2.10 here on our images.
        skip: list[nn.Module] = []
        if stride > 1:
            skip.append(nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False))
        if c_in != c_out:
            skip.append(nn.Conv2d(c_in, c_out, 1))
        self.skip = nn.Sequential(*skip)  # empty: the identity
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.skip(x) + self.gain * self.branch(x))


class CameraEncoder(nn.Module):
    def __init__(self, channels: tuple[int, ...], out_dim: int, strides: tuple[int, ...] | None = None,
                 pool: str = "spatial_softmax", image_size: tuple[int, int] = (96, 96), norm: str = "none",
                 blocks: int = 0, attention_layers: int = 2, keypoint_sharpness: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        strides = strides or tuple(2 if i < len(channels) - 1 else 1 for i in range(len(channels)))
        for c_out, stride in zip(channels, strides, strict=True):
            if blocks:
                layers += [ResidualBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, norm)
                           for i in range(blocks)]
            else:
                layers += [*_conv_norm(c_in, c_out, stride, norm), nn.ReLU()]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        if pool in ("flatten", "attention"):
            with torch.no_grad():
                cells = self.conv(torch.zeros(1, 3, *image_size)).numel()
        if pool == "flatten":
            self.pool: nn.Module = nn.Flatten()
            self.proj = nn.Linear(cells, out_dim)
        elif pool == "attention":
            self.pool = AttentionPool(c_in, cells // c_in, attention_layers)
            self.proj = nn.Linear(ATTENTION_QUERIES * c_in, out_dim)
        else:
            self.pool = SpatialSoftmax(keypoint_sharpness)
            self.proj = nn.Linear(2 * c_in, out_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) normalised
        return F.relu(self.proj(self.pool(self.conv(image))))


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ-style augmentation of channels-last images (B, H, W, C), any dtype: replicate-pad by `pad` pixels and
    crop back at a random offset per sample, done as one gather with clamped indices (what replicate padding
    reads), so uint8 frames are shifted before they are widened to float."""
    b, h, w = images.shape[:3]
    ox = torch.randint(0, 2 * pad + 1, (b,), device=images.device)
    oy = torch.randint(0, 2 * pad + 1, (b,), device=images.device)
    rows = (oy[:, None] - pad + torch.arange(h, device=images.device)[None, :]).clamp_(0, h - 1)  # (B, H)
    cols = (ox[:, None] - pad + torch.arange(w, device=images.device)[None, :]).clamp_(0, w - 1)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MultiTaskPolicy(nn.Module):
    """Shared encoder + task-conditioned trunk + one head per task (each with its own action size)."""

    def __init__(self, config: ModelConfig, tasks: list[TaskEntry], stats: NormStats | None = None) -> None:
        super().__init__()
        self.config = config
        self.tasks = list(tasks)
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise SchemaError(f"duplicate task names {names}")
        self.observation = shared_observation(self.tasks)
        self.task_index = {name: i for i, name in enumerate(names)}
        n_tasks, p = len(self.tasks), self.observation.proprio_size

        self.encoders = nn.ModuleDict({c.name: CameraEncoder(config.encoder_channels, config.feature_dim,
                                                                 config.encoder_strides, config.encoder_pool,
                                                                 (c.height, c.width), config.encoder_norm,
                                                                 config.encoder_blocks, config.attention_layers,
                                                                 config.keypoint_sharpness)
                                       for c in self.observation.cameras})
        self.proprio_mlp = _mlp([p, config.proprio_hidden, config.feature_dim])
        self.fuse = nn.Linear(config.feature_dim * (len(self.encoders) + 1), config.feature_dim)
        self.task_embedding = nn.Embedding(n_tasks, config.task_embedding_dim)
        self.film = nn.Linear(config.task_embedding_dim, 2 * config.feature_dim, bias=False)
        nn.init.zeros_(self.film.weight)  # start as the identity modulation
        self.trunk = _mlp([config.feature_dim, *config.trunk_dims])
        trunk_out = config.trunk_dims[-1] if config.trunk_dims else config.feature_dim
        self.heads = nn.ModuleDict({
            t.name: _mlp([trunk_out, config.head_hidden, config.action_chunk * t.schema.action.size]) for t in self.tasks
        })
        if config.privileged_size:
            self.privileged_heads = nn.ModuleDict({t.name: nn.Linear(trunk_out, config.privileged_size)
                                                   for t in self.tasks})
        # Normalisation buffers (identity until `set_stats`).
        self.register_buffer("proprio_mean", torch.zeros(n_tasks, p))
        self.register_buffer("proprio_std", torch.ones(n_tasks, p))
        for c in self.observation.cameras:
            self.register_buffer(f"image_mean_{c.name}", torch.full((3,), 0.5))
            self.register_buffer(f"image_std_{c.name}", torch.full((3,), 0.25))
        for t in self.tasks:
            a = t.schema.action.size
            self.register_buffer(f"action_mean_{self.task_index[t.name]}", torch.zeros(a))
            self.register_buffer(f"action_std_{self.task_index[t.name]}", torch.ones(a))
        if stats is not None:
            self.set_stats(stats)

    # ------------------------------------------------------------------ normalisation
    def set_stats(self, stats: NormStats) -> None:
        with torch.no_grad():
            for name, (mean, std) in stats.proprio.items():
                i = self.task_index[name]
                self.proprio_mean[i, : len(mean)] = torch.as_tensor(mean, dtype=torch.float32)
                self.proprio_std[i, : len(std)] = torch.as_tensor(np.maximum(std, STD_FLOOR), dtype=torch.float32)
            for name, (mean, std) in stats.action.items():
                i = self.task_index[name]
                getattr(self, f"action_mean_{i}").copy_(torch.as_tensor(mean, dtype=torch.float32))
                getattr(self, f"action_std_{i}").copy_(torch.as_tensor(np.maximum(std, STD_FLOOR), dtype=torch.float32))
            for cam, (mean, std) in stats.image.items():
                getattr(self, f"image_mean_{cam}").copy_(torch.as_tensor(mean, dtype=torch.float32))
                getattr(self, f"image_std_{cam}").copy_(torch.as_tensor(np.maximum(std, STD_FLOOR), dtype=torch.float32))

    def task_ids(self, tasks: str | list[str] | torch.Tensor, batch: int) -> torch.Tensor:
        """Task indices (B,) from a name, a list of names, or indices; unknown ones list the known tasks."""
        if isinstance(tasks, torch.Tensor):
            ids = tasks.long().reshape(-1)
            if ids.numel() and (ids.min() < 0 or ids.max() >= len(self.tasks)):
                bad = int(ids[(ids < 0) | (ids >= len(self.tasks))][0])
                raise unknown_name("task index", str(bad), [f"{i} ({t.name})" for i, t in enumerate(self.tasks)])
            return ids
        names = [tasks] * batch if isinstance(tasks, str) else list(tasks)
        for name in names:
            if name not in self.task_index:
                raise unknown_name("task", name, list(self.task_index))
        return torch.tensor([self.task_index[n] for n in names], dtype=torch.long)

    def normalize_action(self, task: str, action: torch.Tensor) -> torch.Tensor:
        i = self.task_index[task]
        return (action - getattr(self, f"action_mean_{i}")) / getattr(self, f"action_std_{i}")

    def denormalize_action(self, task: str, action: torch.Tensor) -> torch.Tensor:
        i = self.task_index[task]
        return action * getattr(self, f"action_std_{i}") + getattr(self, f"action_mean_{i}")

    # ------------------------------------------------------------------ forward
    def features(self, obs: Mapping[str, torch.Tensor], task_ids: torch.Tensor) -> torch.Tensor:
        """Trunk features (B, D). `obs` holds 'obs/<camera>' uint8 (B, H, W, 3) and 'obs/proprio' (B, P_task)."""
        proprio = obs["obs/proprio"].float()
        p = self.observation.proprio_size
        if proprio.shape[-1] < p:
            proprio = F.pad(proprio, (0, p - proprio.shape[-1]))
        proprio = (proprio - self.proprio_mean[task_ids]) / self.proprio_std[task_ids]
        if self.training and self.config.proprio_dropout:
            kept = torch.rand(proprio.shape[0], 1, device=proprio.device) >= self.config.proprio_dropout
            proprio = proprio * kept
        parts = [self.proprio_mlp(proprio)]
        for name, encoder in self.encoders.items():
            image = obs[camera_key(name)]  # (B, H, W, 3) uint8
            if self.training and self.config.random_shift:
                image = random_shift(image, self.config.random_shift)  # commutes with the per-channel affine below
            image = image.permute(0, 3, 1, 2).float()  # (B, 3, H, W), 0..255, channels-last in memory
            # (x / 255 - mean) / std as one multiply-add: two elementwise passes fewer at full resolution
            std = getattr(self, f"image_std_{name}")
            scale, shift = 1.0 / (255.0 * std), -getattr(self, f"image_mean_{name}") / std
            parts.append(encoder(image * scale[None, :, None, None] + shift[None, :, None, None]))
        fused = F.relu(self.fuse(torch.cat(parts, dim=-1)))
        gamma, beta = self.film(self.task_embedding(task_ids) * self.config.task_embedding_scale).chunk(2, dim=-1)
        return self.trunk(fused * (1.0 + gamma) + beta)

    def head(self, task: str, features: torch.Tensor) -> torch.Tensor:
        """Normalised action chunk (B, Ta, A_task) of one task's head."""
        out = self.heads[task](features)
        return out.view(features.shape[0], self.config.action_chunk, -1)

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters only `task`'s losses train: its action head and, if any, its privileged-state probe."""
        modules = [self.heads[task]] + ([self.privileged_heads[task]] if self.config.privileged_size else [])
        return [p for m in modules for p in m.parameters()]

    def forward(self, obs: Mapping[str, torch.Tensor], task: str) -> torch.Tensor:
        """De-normalised action chunk (B, Ta, A_task) for a batch of one task."""
        if task not in self.task_index:
            raise unknown_name("task", task, list(self.task_index))
        batch = obs["obs/proprio"].shape[0]
        ids = torch.full((batch,), self.task_index[task], dtype=torch.long, device=obs["obs/proprio"].device)
        return self.denormalize_action(task, self.head(task, self.features(obs, ids)))

    def describe(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "tasks": [t.name for t in self.tasks],
                "parameters": sum(p.numel() for p in self.parameters())}
