"""What every model family shares: the norm, the classification head, argument checks.

Normalisation is GroupNorm, per frame and per example, never over the batch: in
a pipeline each unit holds a different frame at every step, and the VJP of step
t is taken at the unit's current input, so batch statistics (and the running
averages evaluation would use) would couple the clips of a batch and the frames
of a clip in ways the gradient rules do not model. GroupNorm behaves the same
in training and evaluation and carries no state besides the unit's buffers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gin
import keras


def scaled_width(width: int, width_multiplier: float) -> int:
    """Channels of a layer at this width multiplier (at least 1)."""
    return max(1, round(width * width_multiplier))


def group_norm(channels: int, name: str) -> keras.layers.GroupNormalization:
    """GroupNorm with at most 32 groups and at least 4 channels per group.

    Groups of 4 or more channels keep the statistics meaningful on the 1x1 maps
    of small frames, where one channel per group would normalise to zero.
    """
    groups = math.gcd(channels, max(1, min(32, channels // 4)))
    return keras.layers.GroupNormalization(groups=groups, name=name)


def classification_head(num_classes: int) -> keras.Sequential:
    """Global average pool of the top unit's map [B, H, W, C], then Dense logits [B, classes]."""
    return keras.Sequential(
        [
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(num_classes, name="logits"),
        ],
        name="head",
    )


def check_arguments(model: str, batch_size, num_classes, width_multiplier) -> None:
    """Raises on a missing or non-positive batch size, class count or width multiplier."""
    if batch_size is gin.REQUIRED or num_classes is gin.REQUIRED:
        raise ValueError(f"{model} needs batch_size and num_classes (train() passes both).")
    if int(batch_size) < 1 or int(num_classes) < 1:
        raise ValueError(
            f"{model}: batch_size and num_classes must be >= 1, got {batch_size} and {num_classes}."
        )
    if not width_multiplier > 0:
        raise ValueError(
            f"{model}: width_multiplier must be > 0 (1.0 is the standard width, 0.5 half); "
            f"got {width_multiplier}."
        )


def check_frame_shape(model: str, frame_shape, stride: int) -> tuple[int, ...]:
    """Returns frame_shape as ints; raises unless it is [H, W, C] with H, W multiples of stride."""
    if frame_shape is gin.REQUIRED or not isinstance(frame_shape, Sequence):
        raise ValueError(f"{model}: give frame_shape as (height, width, channels).")
    frame_shape = tuple(int(s) for s in frame_shape)
    if len(frame_shape) != 3:
        raise ValueError(
            f"{model}: frame_shape must be (height, width, channels), got {frame_shape}."
        )
    h, w, _ = frame_shape
    if h % stride or w % stride:
        good = max(stride, round(h / stride) * stride)
        raise ValueError(
            f"{model}: frame height and width must be multiples of {stride} (the network "
            f"halves them {stride.bit_length() - 1} times and skip edges need exact "
            f"factors); got {h}x{w}. Resize or crop the clips to a multiple, e.g. "
            f"dmvr_dataset.image_size = {good}."
        )
    return frame_shape
