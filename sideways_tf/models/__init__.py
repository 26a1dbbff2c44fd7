"""Model families cut into Sideways units, gin-configurable by their factory functions.

convnet.py  conv_pipeline and its small / tiny variants (moving_shapes)
vgg.py      vgg8, vgg16: VGG-style convnets, units cut to balance FLOPs
resnet.py   resnet18: stem + 8 basic residual blocks, one block per unit
summary.py  describe(pipeline): per-unit shapes, parameters and FLOPs
"""

from sideways_tf.models.convnet import conv_pipeline, small_conv_pipeline, tiny_conv_pipeline
from sideways_tf.models.resnet import BasicBlock, resnet18, resnet_pipeline
from sideways_tf.models.summary import describe
from sideways_tf.models.vgg import vgg8, vgg16, vgg_pipeline

__all__ = [
    "BasicBlock",
    "conv_pipeline",
    "describe",
    "resnet_pipeline",
    "resnet18",
    "small_conv_pipeline",
    "tiny_conv_pipeline",
    "vgg_pipeline",
    "vgg8",
    "vgg16",
]
