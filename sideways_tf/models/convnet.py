"""A VGG-style per-frame convnet cut into Sideways units, one conv block per unit.

Each unit is conv3x3 -> LayerNorm -> ReLU (stride 1 or 2); the top unit keeps its
map and the run's task supplies the head (train.task): classification pools
globally into a dense classifier, future frames decode a frame (tasks.frame_decoder).
With topology "skip(2)" each unit
also reads the unit two below, one frame newer: the connection across time that
lets Skip-Sideways see motion (algorithm.md P5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gin
import keras

from sideways_tf.models.layers import check_arguments, unit_pipeline
from sideways_tf.pipeline import Pipeline
from sideways_tf.placement import Placement
from sideways_tf.tasks import Task


def conv_block(width: int, stride: int, name: str) -> keras.Sequential:
    """conv3x3(stride) -> LayerNorm -> ReLU: one unit's module H_i."""
    layers = [
        keras.layers.Conv2D(width, 3, strides=stride, padding="same", name="conv"),
        keras.layers.LayerNormalization(name="norm"),
        keras.layers.ReLU(name="relu"),
    ]
    return keras.Sequential(layers, name=name)


@gin.configurable(module="sideways_tf.models", denylist=["placement"])
def conv_pipeline(
    batch_size: int = gin.REQUIRED,
    frame_shape: Sequence[int] = gin.REQUIRED,
    task: Task | None = None,  # the run's task (train.task): it supplies the head
    widths: Sequence[int] = (32, 32, 64, 64, 128, 128),  # one conv block (unit) per width
    strides: Sequence[int] = (1, 2, 1, 2, 1, 2),  # spatial stride of each block
    topology: str | Sequence = "chain",  # "chain", "skip(k)", "dense(w)" or an edge list
    fusion: str = "concat",  # skip integrator: "concat", "sum" or "gated" (README: concat best)
    devices: Sequence[str] | None = None,  # spread units over these, e.g. ["GPU:0", "GPU:1"]
    placement: Placement | None = None,  # runtime.placement(cores); None: units on `devices`
    head: str | None = None,  # deprecated: the task supplies the head (train.task)
    num_classes: int | None = None,  # deprecated: Classification.num_classes
) -> Pipeline:
    """Builds the conv pipeline; the top unit keeps its map and the task's head reads it
    (classification: global pool + Dense; future frames: a FrameDecoder)."""
    if len(widths) != len(strides):
        raise ValueError(
            f"conv_pipeline: widths has {len(widths)} entries but strides has {len(strides)}; "
            "give one stride per unit."
        )
    frame_shape = check_arguments("conv_pipeline", batch_size, frame_shape, math.prod(strides))
    return unit_pipeline(
        "conv_pipeline",
        [conv_block(w, s, name=f"block{i}") for i, (w, s) in enumerate(zip(widths, strides), 1)],
        batch_size=batch_size,
        frame_shape=frame_shape,
        task=task,
        topology=topology,
        fusion=fusion,
        devices=devices,
        placement=placement,
        head=head,
        num_classes=num_classes,
    )


# Size variants; conv_pipeline's own bindings still apply to what they leave open.
@gin.configurable(module="sideways_tf.models", denylist=["placement"])
def small_conv_pipeline(widths=(16, 32, 32, 64), strides=(1, 2, 1, 2), **kwargs) -> Pipeline:
    """Four units, 16-64 channels: the moving_shapes model."""
    return conv_pipeline(widths=widths, strides=strides, **kwargs)


@gin.configurable(module="sideways_tf.models", denylist=["placement"])
def tiny_conv_pipeline(widths=(4, 8, 8), strides=(1, 2, 1), **kwargs) -> Pipeline:
    """Three narrow units, for tests."""
    return conv_pipeline(widths=widths, strides=strides, **kwargs)
