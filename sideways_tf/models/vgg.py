"""VGG-style per-frame convnets cut into Sideways units: vgg8 and vgg16.

The network is stages of conv3x3 -> GroupNorm -> ReLU layers; a 2x2 max pool
ends every stage but the last, and the task's head reads the top map (classification:
global pool and Dense):

    vgg8   stages (64), (128), (256, 256), (512, 512), (512, 512)          8 conv layers
    vgg16  stages (64, 64), (128, 128), (256 x4), (512 x4), (512 x4)      16 conv layers

Four pools: frames must be multiples of 16 on both sides (112 -> 7x7 at the top),
so every unit's map divides the ones below it by a power of two, which the
strided projections of skip edges need (fusion.py).

How the layers are cut into units (`unit_sizes`, conv layers per unit, bottom
first): a unit is a run of consecutive conv layers; a stage's pool goes with its
last conv, so a unit ending a stage sends up (and gets back as a message) the
pooled map, 4x fewer bytes. The cut balances the units' FLOPs, since a
pipelined step lasts as long as the slowest unit's forward plus VJP
(algorithm.md s.7), with as few units as that allows: every unit adds a step of
fill and two of gradient lag (2(L-i), algorithm.md s.4). In VGG a stage's first
conv costs half of the others (half the input channels) and a last-stage conv a
quarter (half the side, same width), so units hold 1 to 5 layers. Forward MACs
per frame at 112x112, width 1 (describe() gives the measured FLOPs):

    vgg8   (3, 1, 1, 1, 2)      484M, 462M, 231M, 462M, 231M    (max / mean 1.29)
    vgg16  (2, 3, 2, 2, 2, 5)   484M, 925M, 925M, 694M, 925M, 925M    (1.14)

Normalisation is GroupNorm, never BatchNorm (models/layers.py says why).
"""

from __future__ import annotations

from collections.abc import Sequence

import gin
import keras

from sideways_tf.models.layers import check_arguments, group_norm, scaled_width, unit_pipeline
from sideways_tf.pipeline import Pipeline
from sideways_tf.tasks import Task

VGG8_STAGES = ((64,), (128,), (256, 256), (512, 512), (512, 512))
VGG8_UNITS = (3, 1, 1, 1, 2)
VGG16_STAGES = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)
VGG16_UNITS = (2, 3, 2, 2, 2, 5)
# For tests: three units over three narrow stages, a pool inside a unit and at its end.
_TINY_STAGES = ((4,), (8,), (8, 8))
_TINY_UNITS = (2, 1, 1)


def vgg_unit_module(layers: Sequence[tuple[str, int, bool]], name: str) -> keras.Sequential:
    """One unit's module H_i: conv3x3 -> GroupNorm -> ReLU [-> max pool] per layer.

    layers: (layer name, e.g. "conv3_1", channels, ends its stage) per conv layer.
    """
    out = []
    for layer_name, channels, ends_stage in layers:
        suffix = layer_name.removeprefix("conv")  # "3_1": stage 3, layer 1
        out += [
            keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=layer_name),
            group_norm(channels, name=f"norm{suffix}"),
            keras.layers.ReLU(name=f"relu{suffix}"),
        ]
        if ends_stage:
            out.append(keras.layers.MaxPooling2D(2, name=f"pool{suffix.split('_')[0]}"))
    return keras.Sequential(out, name=name)


@gin.configurable(module="sideways_tf.models", denylist=["placement"])
def vgg_pipeline(
    batch_size: int = gin.REQUIRED,
    frame_shape: Sequence[int] = gin.REQUIRED,
    task: Task | None = None,  # the run's task (train.task): it supplies the head
    stages: Sequence[Sequence[int]] = VGG8_STAGES,  # conv widths, one tuple per stage
    unit_sizes: Sequence[int] = VGG8_UNITS,  # conv layers per unit, bottom first
    width_multiplier: float = 1.0,  # scales every conv's channels
    name: str = "vgg",
    **kwargs,  # topology, fusion, devices, placement (models.layers.unit_pipeline)
) -> Pipeline:
    """A VGG-style pipeline: `stages` of conv layers cut into units by `unit_sizes`."""
    stride = 2 ** (len(stages) - 1)
    frame_shape = check_arguments(name, batch_size, frame_shape, stride, width_multiplier)
    layers = [
        (
            f"conv{s}_{k}",
            scaled_width(width, width_multiplier),
            k == len(widths) and s < len(stages),
        )
        for s, widths in enumerate(stages, start=1)
        for k, width in enumerate(widths, start=1)
    ]
    unit_sizes = tuple(int(n) for n in unit_sizes)
    if sum(unit_sizes) != len(layers) or min(unit_sizes) < 1:
        raise ValueError(
            f"{name}: unit_sizes {unit_sizes} must be positive and add up to the "
            f"{len(layers)} conv layers of the stages; e.g. unit_sizes = "
            f"{(1,) * len(layers)} puts one conv layer in each unit."
        )
    ends = [sum(unit_sizes[:i]) for i in range(len(unit_sizes) + 1)]
    modules = [vgg_unit_module(layers[a:b], name="convs") for a, b in zip(ends, ends[1:])]
    return unit_pipeline(
        name, modules, batch_size=batch_size, frame_shape=frame_shape, task=task, **kwargs
    )


# Size variants (topology, fusion, devices, width_multiplier... as vgg_pipeline's).
@gin.configurable(module="sideways_tf.models", denylist=["placement"])
def vgg8(**kwargs) -> Pipeline:
    """8 conv layers (64-512 channels) in 5 units; 1.9 GMACs per 112x112 frame at width 1."""
    return vgg_pipeline(stages=VGG8_STAGES, unit_sizes=VGG8_UNITS, name="vgg8", **kwargs)


@gin.configurable(module="sideways_tf.models", denylist=["placement"])
def vgg16(**kwargs) -> Pipeline:
    """16 conv layers (64-512 channels) in 6 units; 4.9 GMACs per 112x112 frame at width 1."""
    return vgg_pipeline(stages=VGG16_STAGES, unit_sizes=VGG16_UNITS, name="vgg16", **kwargs)


def _tiny_vgg(**kwargs) -> Pipeline:
    """Three units, 4-8 channels, frames multiples of 4: for tests."""
    return vgg_pipeline(stages=_TINY_STAGES, unit_sizes=_TINY_UNITS, name="tiny_vgg", **kwargs)
