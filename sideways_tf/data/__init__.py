"""Video data that tf.data runs at training and evaluation time.

  moving_shapes_dataset, moving_shapes_future_dataset   built-in synthetic task
  dmvr_dataset, dmvr_future_frames_dataset              DMVR-style TFRecord reader
  dmvr.skipped_records()                                records it skipped as undecodable
  sampling                                              clip sampling and augmentation
ucf101.py reads TFDS' ucf101 (it imports TFDS, so it is not imported here).

The offline side (decoding videos with PyAV, dataset listings, the `sideways-convert`
shard writer) lives in sideways_tf.data.prepare, which training never imports.
"""

from sideways_tf.data.dmvr import dmvr_dataset, dmvr_future_frames_dataset
from sideways_tf.data.moving_shapes import moving_shapes_dataset, moving_shapes_future_dataset

__all__ = [
    "dmvr_dataset",
    "dmvr_future_frames_dataset",
    "moving_shapes_dataset",
    "moving_shapes_future_dataset",
]
