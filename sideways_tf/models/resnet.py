"""ResNet-18-style per-frame network, one residual block per Sideways unit.

    stem     conv7x7/2 (64) -> GroupNorm -> ReLU                 (no max pool)
    stage s  `blocks[s]` basic blocks of `widths[s]` channels; the first block of
             every stage after the first has stride 2 and a projection shortcut
    head     the task's (classification: global average pool -> Dense(num_classes))

As in video ResNets at 112x112 (R3D-18's 2D-per-frame counterpart) the stem
has no max pool, so a 112x112 frame gives 56x56 maps in stage 1 and 7x7 in
stage 4: the total stride is 16, and frames must be multiples of 16.

Units: each basic block is a unit, its residual add and its projection
shortcut inside the unit's module (BasicBlock), so skip edges between units
(Skip-Sideways) come on top of the blocks' own residuals. The stem shares the
first unit with the first block: alone it would cost an eighth of a block (3
input channels) while adding a step of fill and two of gradient lag. Forward
MACs per frame at 112x112, width 1 (describe() gives the measured FLOPs):

    resnet18   260M, 231M, 180M, 231M, 180M, 231M, 180M, 231M    (max / mean 1.21)

Normalisation is GroupNorm, never BatchNorm (models/layers.py says why).
"""

from __future__ import annotations

from collections.abc import Sequence

import gin
import keras

from sideways_tf.fusion import StridedPointwiseConv, strided_shape
from sideways_tf.models.layers import check_arguments, group_norm, scaled_width, unit_pipeline
from sideways_tf.pipeline import Pipeline
from sideways_tf.tasks import Task

RESNET18_BLOCKS = (2, 2, 2, 2)
RESNET_WIDTHS = (64, 128, 256, 512)
# For tests: three units, an identity block, a strided block with a projection, an identity block.
_TINY_BLOCKS = (1, 2)
_TINY_WIDTHS = (4, 8)


@keras.saving.register_keras_serializable(package="sideways_tf")
class BasicBlock(keras.Layer):
    """The basic residual block: y = relu(F(x) + P(x)).

        F(x) = norm2(conv2_3x3(relu(norm1(conv1_3x3/stride(x)))))
        P(x) = proj_norm(proj_1x1/stride(x)) when the shape changes, else x

    x: [B, H, W, C_in] -> y: [B, H/stride, W/stride, channels].
    """

    def __init__(self, channels: int, stride: int = 1, **kwargs):
        super().__init__(**kwargs)
        if channels < 1 or stride not in (1, 2):
            raise ValueError(
                f"BasicBlock needs channels >= 1 and stride 1 or 2; got channels={channels}, "
                f"stride={stride}."
            )
        self.channels, self.stride = int(channels), int(stride)
        conv = dict(padding="same", use_bias=False)  # the norm that follows has the bias
        self.conv1 = keras.layers.Conv2D(channels, 3, strides=stride, name="conv1", **conv)
        self.norm1 = group_norm(channels, name="norm1")
        self.conv2 = keras.layers.Conv2D(channels, 3, name="conv2", **conv)
        self.norm2 = group_norm(channels, name="norm2")
        self.proj = self.proj_norm = None  # Created in build() if the shape changes.

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        mid_shape = self.compute_output_shape(input_shape)
        if self.stride != 1 or input_shape[-1] != self.channels:
            self.proj = StridedPointwiseConv(  # (oneDNN: see its docstring)
                self.channels, stride=self.stride, use_bias=False, name="proj"
            )
            self.proj_norm = group_norm(self.channels, name="proj_norm")
            self.proj.build(input_shape)
            self.proj_norm.build(mid_shape)
        self.conv1.build(input_shape)
        self.norm1.build(mid_shape)
        self.conv2.build(mid_shape)
        self.norm2.build(mid_shape)

    def call(self, x, training=None):
        y = keras.ops.relu(self.norm1(self.conv1(x)))  # [B, H/s, W/s, C]
        y = self.norm2(self.conv2(y))
        shortcut = x if self.proj is None else self.proj_norm(self.proj(x))
        return keras.ops.relu(y + shortcut)

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.stride, self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, stride=self.stride)
        return config


def stem(channels: int) -> keras.Sequential:
    """conv7x7/2 -> GroupNorm -> ReLU: [B, H, W, 3] -> [B, H/2, W/2, channels]."""
    return keras.Sequential(
        [
            keras.layers.Conv2D(
                channels, 7, strides=2, padding="same", use_bias=False, name="conv"
            ),
            group_norm(channels, name="norm"),
            keras.layers.ReLU(name="relu"),
        ],
        name="stem",
    )


@gin.configurable(module="sideways_tf.models", denylist=["placement"])
def resnet_pipeline(
    batch_size: int = gin.REQUIRED,
    frame_shape: Sequence[int] = gin.REQUIRED,
    task: Task | None = None,  # the run's task (train.task): it supplies the head
    blocks: Sequence[int] = RESNET18_BLOCKS,  # basic blocks (units) per stage
    widths: Sequence[int] = RESNET_WIDTHS,  # channels of each stage
    stem_width: int = 64,  # channels of the stem
    width_multiplier: float = 1.0,  # scales every conv's channels
    name: str = "resnet",
    **kwargs,  # topology, fusion, devices, placement (models.layers.unit_pipeline)
) -> Pipeline:
    """A ResNet-style pipeline: stem + first block in unit 1, then one block per unit."""
    frame_shape = check_arguments(name, batch_size, frame_shape, 2 ** len(blocks), width_multiplier)
    blocks, widths = tuple(int(n) for n in blocks), tuple(int(w) for w in widths)
    if len(blocks) != len(widths) or not blocks or min(blocks) < 1:
        raise ValueError(
            f"{name}: blocks {blocks} and widths {widths} need one entry per stage, and "
            "every stage at least one block; e.g. blocks=(2, 2, 2, 2), "
            "widths=(64, 128, 256, 512)."
        )
    modules = []
    for s, (n, width) in enumerate(zip(blocks, widths), start=1):
        for k in range(1, n + 1):
            stride = 2 if s > 1 and k == 1 else 1
            modules.append(
                BasicBlock(scaled_width(width, width_multiplier), stride, name=f"block{s}_{k}")
            )
    first = modules[0]
    modules[0] = keras.Sequential(
        [stem(scaled_width(stem_width, width_multiplier)), first], name=f"stem_{first.name}"
    )
    return unit_pipeline(
        name, modules, batch_size=batch_size, frame_shape=frame_shape, task=task, **kwargs
    )


@gin.configurable(module="sideways_tf.models", denylist=["placement"])
def resnet18(**kwargs) -> Pipeline:
    """8 basic blocks (64-512 channels) in 8 units; 1.7 GMACs per 112x112 frame at width 1.

    kwargs: as resnet_pipeline's (width_multiplier, topology, fusion, devices, ...)."""
    return resnet_pipeline(
        blocks=RESNET18_BLOCKS, widths=RESNET_WIDTHS, stem_width=64, name="resnet18", **kwargs
    )


def _tiny_resnet(**kwargs) -> Pipeline:
    """Three units, 4-8 channels, frames multiples of 4: for tests."""
    return resnet_pipeline(
        blocks=_TINY_BLOCKS, widths=_TINY_WIDTHS, stem_width=4, name="tiny_resnet", **kwargs
    )
