"""Video data that tf.data runs at training and evaluation time.

  moving_shapes_dataset, moving_shapes_future_dataset   built-in synthetic task
  dmvr_dataset                                          DMVR-style TFRecord reader
  dmvr.skipped_records()                                records it skipped as undecodable
  ClipSampling, clip_sampling                           clips and augmentation, every reader
  contract.clip_spec, contract.check_clip_dataset       what every clip dataset yields
ucf101.py reads TFDS' ucf101 (it imports TFDS, so it is not imported here).

The offline side (decoding videos with PyAV, dataset listings, the `sideways-convert`
shard writer) lives in sideways_tf.data.prepare, which training never imports.
"""

from sideways_tf.data.dmvr import dmvr_dataset
from sideways_tf.data.moving_shapes import moving_shapes_dataset, moving_shapes_future_dataset
from sideways_tf.data.sampling import ClipSampling, clip_sampling

__all__ = [
    "ClipSampling",
    "clip_sampling",
    "dmvr_dataset",
    "moving_shapes_dataset",
    "moving_shapes_future_dataset",
]
