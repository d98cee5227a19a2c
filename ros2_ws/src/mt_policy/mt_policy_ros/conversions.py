"""ROS messages <-> numpy, with errors that name the topic and what was expected. No rclpy node logic here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mt_policy.errors import MtPolicyError

ENCODINGS = {"rgb8": False, "bgr8": True}  # encoding -> channels reversed


class MessageError(MtPolicyError):
    """A message that does not fit the policy's schema; the node drops it and keeps running."""


def image_to_array(msg: Any, topic: str, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a sensor_msgs/Image (rgb8 or bgr8, any row padding)."""
    if msg.encoding not in ENCODINGS:
        raise MessageError(f"{topic}: encoding {msg.encoding!r}, expected rgb8 (or bgr8)")
    if (msg.height, msg.width) != (height, width):
        raise MessageError(f"{topic}: image is {msg.height}x{msg.width}, expected {height}x{width}")
    if msg.step < 3 * width or len(msg.data) < msg.step * height:
        raise MessageError(f"{topic}: {len(msg.data)} bytes with step {msg.step} do not hold a "
                           f"{height}x{width} rgb8 image")
    rows = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * height).reshape(height, msg.step)
    image = rows[:, : 3 * width].reshape(height, width, 3)
    return np.ascontiguousarray(image[..., ::-1] if ENCODINGS[msg.encoding] else image)


def array_to_image(msg: Any, image: np.ndarray) -> Any:
    """Fill a sensor_msgs/Image with an (H, W, 3) uint8 RGB array."""
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = "rgb8", 0, 3 * int(image.shape[1])
    msg.data = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    return msg


def joint_state_to_proprio(msg: Any, topic: str, size: int, names: Sequence[str] = ()) -> np.ndarray:
    """float32 (size,) from JointState.position, picked by `names` when given; finite or refused."""
    if names:
        index = {n: i for i, n in enumerate(msg.name)}
        missing = [n for n in names if n not in index]
        if missing:
            raise MessageError(f"{topic}: joints {missing} missing (message has {list(msg.name)})")
        if max(index[n] for n in names) >= len(msg.position):
            raise MessageError(f"{topic}: {len(msg.position)} positions for {len(msg.name)} names")
        values = np.array([msg.position[index[n]] for n in names], dtype=np.float32)
    else:
        values = np.asarray(msg.position, dtype=np.float32)
    if values.shape != (size,):
        raise MessageError(f"{topic}: {values.size} joint positions, expected {size}")
    if not np.isfinite(values).all():
        raise MessageError(f"{topic}: NaN/inf in joint positions {values.tolist()}")
    return values
