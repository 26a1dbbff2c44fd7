"""Video data: the built-in moving_shapes task, DMVR records, converters and datasets.

  moving_shapes_dataset, moving_shapes_future_dataset   built-in synthetic task
  dmvr_dataset, dmvr_future_frames_dataset              DMVR-style TFRecord reader
  dmvr.skipped_records()                                records it skipped as undecodable
  convert_videos                                        videos -> sharded DMVR records
Dataset listings for UCF101, HMDB51 and Kinetics-600 live in their own modules
(ucf101.py imports TFDS, so it is not imported here).
"""

from sideways_tf.data.convert import convert_videos
from sideways_tf.data.dmvr import dmvr_dataset, dmvr_future_frames_dataset
from sideways_tf.data.moving_shapes import moving_shapes_dataset, moving_shapes_future_dataset

__all__ = [
    "convert_videos",
    "dmvr_dataset",
    "dmvr_future_frames_dataset",
    "moving_shapes_dataset",
    "moving_shapes_future_dataset",
]
