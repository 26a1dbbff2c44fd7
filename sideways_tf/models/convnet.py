"""A VGG-style per-frame convnet cut into Sideways units, one conv block per unit.

Each unit is conv3x3 -> LayerNorm -> ReLU (stride 1 or 2); the last unit pools
globally and the head is a dense classifier; with head="frame_delta" (or "frames") the top keeps
its map and the head decodes a future frame (models.layers.FrameDecoder). With topology "skip(2)" each unit
also reads the unit two below, one frame newer: the connection across time that
lets Skip-Sideways see motion (algorithm.md P5).
"""

from __future__ import annotations

from collections.abc import Sequence

import gin
import keras

from sideways_tf import placement as placement_lib
from sideways_tf.models.layers import check_arguments, task_head
from sideways_tf.pipeline import Pipeline
from sideways_tf.placement import Placement
from sideways_tf.units import Unit


def conv_block(width: int, stride: int, name: str, pool: bool = False) -> keras.Sequential:
    """conv3x3(stride) -> LayerNorm -> ReLU [-> global average pool]: one unit's module H_i."""
    layers = [
        keras.layers.Conv2D(width, 3, strides=stride, padding="same", name="conv"),
        keras.layers.LayerNormalization(name="norm"),
        keras.layers.ReLU(name="relu"),
    ]
    if pool:
        layers.append(keras.layers.GlobalAveragePooling2D(name="pool"))
    return keras.Sequential(layers, name=name)


@gin.configurable(module="sideways_tf.models", denylist=["placement"])
def conv_pipeline(
    batch_size: int = gin.REQUIRED,
    frame_shape: Sequence[int] = gin.REQUIRED,
    num_classes: int | None = gin.REQUIRED,
    widths: Sequence[int] = (32, 32, 64, 64, 128, 128),  # one conv block (unit) per width
    strides: Sequence[int] = (1, 2, 1, 2, 1, 2),  # spatial stride of each block
    topology: str | Sequence = "chain",  # "chain", "skip(k)", "dense(w)" or an edge list
    fusion: str = "concat",  # skip integrator: "concat", "sum" or "gated" (README: concat best)
    devices: Sequence[str] | None = None,  # spread units over these, e.g. ["GPU:0", "GPU:1"]
    head: str = "classes",  # "classes" (logits), "frame_delta", "frame_motion" or "frames"
    placement: Placement | None = None,  # runtime.placement(cores); None: units on `devices`
) -> Pipeline:
    """Builds the conv pipeline; the last unit pools, the head is Dense(num_classes).

    head="frame_delta", "frame_motion" or "frames": the last unit keeps its map and a FrameDecoder
    predicts a frame (a change from the last frame seen, or the whole frame).
    """
    if len(widths) != len(strides):
        raise ValueError(
            f"conv_pipeline: widths has {len(widths)} entries but strides has {len(strides)}; "
            "give one stride per unit."
        )
    check_arguments("conv_pipeline", batch_size, num_classes, 1.0, head)
    unit_devices = (
        placement_lib.round_robin(len(widths), devices) if devices else [None] * len(widths)
    )
    units = [
        Unit(
            conv_block(w, s, name=f"block{i + 1}", pool=head == "classes" and i == len(widths) - 1),
            fusion=fusion,
            device=d,
            name=f"unit{i + 1}",
        )
        for i, (w, s, d) in enumerate(zip(widths, strides, unit_devices))
    ]
    if head == "classes":
        head_layer, loss = (
            keras.layers.Dense(num_classes, name="head"),
            "sparse_softmax_cross_entropy",
        )
    else:
        head_layer, loss = task_head(head, num_classes, frame_shape, "conv_pipeline")
    return Pipeline(
        units,
        topology=topology,
        head=head_layer,
        loss=loss,
        batch_size=batch_size,
        frame_shape=tuple(frame_shape),
        placement=placement,
        name="conv_pipeline",
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
