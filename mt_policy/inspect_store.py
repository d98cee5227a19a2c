"""Human-readable views of demo stores: a summary table and a grid of sample frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mt_policy.demo_store import DemoStore
from mt_policy.errors import StoreError


def format_summary(summary: dict[str, Any]) -> str:
    schema = summary["schema"]
    cams = ", ".join(f"{c['name']} {c['height']}x{c['width']}" for c in schema["observation"]["cameras"]) or "none"
    rate = summary["success_rate"]
    lines = [
        f"{summary['path']}",
        f"  task         {summary['task']['name']} ({summary['task']['difficulty']}): {summary['task']['description']}",
        f"  env          {summary['task']['env_id']} [{summary['task']['env_version']}]",
        f"  cameras      {cams} (render {schema['observation']['render_quality']})",
        f"  proprio      {schema['observation']['proprio_size']}-D {schema['observation']['proprio_source']}"
        + (f"; privileged state {schema['privileged_size']}-D (training only)" if schema.get("privileged_size") else ""),
        f"  action       {schema['action']['size']}-D in [{min(schema['action']['low'])}, {max(schema['action']['high'])}] "
        f"at {schema['control_hz']:g} Hz, max {schema['max_episode_steps']} steps",
        f"  episodes     {summary['episodes']} ({summary['frames']} frames, mean length "
        f"{summary['mean_length'] or 0:.1f}); kept-demo success {'-' if rate is None else f'{rate:.0%}'}; "
        f"{summary['rejected_attempts']} rejected attempts",
        f"  disk         {summary['disk_bytes'] / 2**20:.2f} MiB (raw {summary['raw_bytes'] / 2**20:.2f} MiB, "
        f"compression {summary['compression_ratio'] or 0:.1f}x)",
    ]
    return "\n".join(lines)


def sample_grid(stores: list[DemoStore], out: str | Path, episodes_per_store: int = 3, frames_per_episode: int = 6) -> Path:
    """Write a PNG: one row per sampled episode, frames evenly spaced from start to end, per camera."""
    from PIL import Image, ImageDraw

    rows: list[tuple[str, list[np.ndarray]]] = []
    for store in stores:
        cameras = store.schema.observation.camera_names
        if not cameras:
            continue
        picks = np.linspace(0, store.n_episodes - 1, num=min(episodes_per_store, store.n_episodes)).round().astype(int)
        for index in sorted(set(picks.tolist())):
            episode = store.episode(index)
            times = np.linspace(0, len(episode) - 1, num=frames_per_episode).round().astype(int)
            for cam in cameras:
                label = f"{store.task.name} ep{index} seed {episode.seed} {cam}"
                rows.append((label, [episode.arrays[f"obs/{cam}"][t] for t in times]))
    if not rows:
        raise StoreError("no camera images to show: the stores are state-only or empty")
    h = max(f.shape[0] for _, frames in rows for f in frames)
    w = max(f.shape[1] for _, frames in rows for f in frames)
    label_h = 14
    n_cols = max(len(frames) for _, frames in rows)
    canvas = Image.new("RGB", (n_cols * (w + 2), len(rows) * (h + label_h + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, frames) in enumerate(rows):
        y = r * (h + label_h + 2)
        draw.text((2, y + 1), label, fill="black")
        for c, frame in enumerate(frames):
            canvas.paste(Image.fromarray(frame), (c * (w + 2), y + label_h))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
