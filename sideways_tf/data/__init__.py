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

import importlib

# Names load on first use (PEP 562): the readers import TensorFlow, which a JAX process
# that reaches sideways_tf.data.temporal or camera_motion (numpy) does not need.
_EXPORTS = {
    "dmvr_dataset": "dmvr",
    "moving_shapes_dataset": "moving_shapes",
    "moving_shapes_future_dataset": "moving_shapes",
    "ClipSampling": "sampling",
    "clip_sampling": "sampling",
}


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"sideways_tf.data.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sideways_tf.data' has no attribute {name!r}")


__all__ = [
    "ClipSampling",
    "clip_sampling",
    "dmvr_dataset",
    "moving_shapes_dataset",
    "moving_shapes_future_dataset",
]
