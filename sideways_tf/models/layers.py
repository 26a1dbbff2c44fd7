"""What every model family shares: the norm and argument checks.

A model factory takes the run's task (gin: train.task) and puts `task.head(frame_shape)`
on its top unit, which keeps its spatial map: the classification head
(tasks.classification.ClassHead) pools it, a future-frame head
(tasks.frame_decoder.FrameDecoder) decodes a frame from it. No factory names a
head: the task does. The older `head=` argument of the factories still works,
with a deprecation message naming train.task (resolve_task).

Normalisation is GroupNorm, per frame and per example, never over the batch: in
a pipeline each unit holds a different frame at every step, and the VJP of step
t is taken at the unit's current input, so batch statistics (and the running
averages evaluation would use) would couple the clips of a batch and the frames
of a clip in ways the gradient rules do not model. GroupNorm behaves the same
in training and evaluation and carries no state besides the unit's buffers.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence

import gin
import keras

from sideways_tf import placement as placement_lib
from sideways_tf import tasks
from sideways_tf.pipeline import Pipeline
from sideways_tf.placement import Placement
from sideways_tf.tasks.frame_decoder import FrameDecoder  # noqa: F401 (its former home)
from sideways_tf.units import Unit

# The factories' older head names, and the FutureFrames.decoder each one is now.
OLD_HEADS = {"frames": "whole", "frame_delta": "delta", "frame_motion": "motion"}


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


def unit_pipeline(
    name: str,
    modules: Sequence[keras.Layer],
    *,
    batch_size,
    frame_shape,
    task,
    topology="chain",
    fusion: str = "concat",
    devices: Sequence[str] | None = None,
    placement: Placement | None = None,
    head: str | None = None,
    num_classes: int | None = None,
) -> Pipeline:
    """Modules H_1..H_L, one per unit, as a Pipeline with the task's head on the top.

    Every model family ends here: unit i is Unit(modules[i-1], fusion, name=f"unit{i}"),
    on devices[i-1] round robin when `devices` is given (else the placement's core),
    and the head is `task.head(frame_shape)`. head and num_classes are the factories'
    deprecated arguments (resolve_task).
    """
    task = resolve_task(name, task, head, num_classes)
    unit_devices = (
        placement_lib.round_robin(len(modules), devices) if devices else [None] * len(modules)
    )
    units = [
        Unit(module, fusion=fusion, device=device, name=f"unit{i}")
        for i, (module, device) in enumerate(zip(modules, unit_devices), start=1)
    ]
    return Pipeline(
        units,
        topology=topology,
        head=task.head(tuple(frame_shape)),
        task=task,
        batch_size=int(batch_size),
        frame_shape=tuple(frame_shape),
        placement=placement,
        name=name,
    )


def resolve_task(model: str, task, head: str | None = None, num_classes=None) -> tasks.Task:
    """The task a factory builds for: `task`, or the one an older `head=` names.

    head (deprecated): "classes" keeps a Classification task; "frames", "frame_delta"
    or "frame_motion" mean FutureFrames(decoder="whole" / "delta" / "motion") with the
    horizon and norm of the deprecated gin configurable frame_loss.
    num_classes (deprecated): with no task, Classification(num_classes).
    """
    if num_classes is not None and (task is None or task is gin.REQUIRED):
        if head in (None, "classes"):
            _deprecated(
                f"{model}: num_classes",
                "train.task = @Classification() and Classification.num_classes",
            )
            task = tasks.Classification(num_classes=int(num_classes))
    if head is not None:
        if head != "classes" and head not in OLD_HEADS:
            raise ValueError(
                f"{model}: head = {head!r} is not a head; the task supplies the head now: "
                "bind train.task = @Classification() or @FutureFrames() (and "
                "FutureFrames.decoder = 'motion', 'delta' or 'whole')."
            )
        if head in OLD_HEADS and not isinstance(task, tasks.FutureFrames):
            old = tasks.frame_loss()
            task = tasks.FutureFrames(old.norm, old.horizon, OLD_HEADS[head])
        new = (
            "train.task = @Classification()"
            if head == "classes"
            else f"train.task = @FutureFrames() with FutureFrames.decoder = {OLD_HEADS[head]!r}"
        )
        _deprecated(f"{model}.head = {head!r}", new)
    if task is None or task is gin.REQUIRED:
        raise ValueError(
            f"{model} needs the run's task, which supplies its head: bind train.task = "
            "@Classification() (with Classification.num_classes = the class count) or "
            "@FutureFrames(); from Python, pass task=sw.tasks.Classification(num_classes=N)."
        )
    return tasks.as_task(task)


def _deprecated(old: str, new: str) -> None:
    """Says once, on stderr and as a DeprecationWarning, that `old` is now `new`."""
    message = f"Deprecated: {old}; the task supplies the head now: bind {new} instead."
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    print(message, file=sys.stderr)


def check_arguments(
    model: str, batch_size, frame_shape, stride: int = 1, width_multiplier: float = 1.0
) -> tuple[int, ...]:
    """Returns frame_shape as ints; raises on a missing or non-positive batch size or width
    multiplier, or a frame_shape that is not [H, W, C] with H, W multiples of stride."""
    if batch_size is gin.REQUIRED:
        raise ValueError(f"{model} needs batch_size (the clips per replica; train() passes it).")
    if int(batch_size) < 1:
        raise ValueError(f"{model}: batch_size must be >= 1, got {batch_size}.")
    if not width_multiplier > 0:
        raise ValueError(
            f"{model}: width_multiplier must be > 0 (1.0 is the standard width, 0.5 half); "
            f"got {width_multiplier}."
        )
    return _check_frame_shape(model, frame_shape, stride)


def _check_frame_shape(model: str, frame_shape, stride: int) -> tuple[int, ...]:
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
