"""A toy task in one file: the mean brightness of the newest frame seen, regressed.

Registered with gin and Keras here and nowhere else; `train.task = @Brightness()` trains
it through the command line (tests/test_tasks.py). It needs no labels:

    target[t] = mean over pixels of x[t - lag]     l_t = (y[t] - target[t])^2
"""

import gin
import keras
import numpy as np
from keras import ops

from sideways_tf import tasks


@gin.configurable
@keras.saving.register_keras_serializable(package="toy_task")
class Brightness(tasks.Task):
    """The mean of the newest frame the top output has seen, one number per clip and step."""

    name = "brightness"
    label_key = None

    def head(self, frame_shape):
        return tasks.ClassHead(1, name="head")  # (global average pool, then Dense(1))

    def loss(self, targets, outputs):
        return ops.square(outputs[:, 0] - targets)

    def step_targets(self, clip, labels, lag):
        clip = ops.convert_to_tensor(clip)
        num_frames = ops.shape(clip)[1]
        seen = ops.take(clip, ops.maximum(ops.arange(num_frames) - lag, 0), axis=1)
        means = ops.mean(ops.reshape(seen, (ops.shape(clip)[0], num_frames, -1)), -1)
        return means, ops.ones((num_frames,), "float32")  # [B, K], [K]

    def check_data(self, dataset, binding):
        from sideways_tf.data import contract  # (a tf.data dataset: TensorFlow)

        return contract.check_clip_dataset(dataset, binding, labelled=False)

    def metrics(self):
        return BrightnessError(self)

    def export_metadata(self, pipeline, class_names=None):
        return dict(task=self.name, outputs="mean brightness [B, 1] of frame t - newest_lag")


class BrightnessError(tasks.Metrics):
    """Mean absolute error over the scored steps, next to predicting the mean target."""

    def __init__(self, task):
        self.errors, self.targets, self.num_clips = [], [], 0

    def update(self, batch):
        w = np.asarray(batch.weights) > 0
        self.errors.append(
            np.abs(np.asarray(batch.outputs)[:, w, 0] - np.asarray(batch.targets)[:, w])
        )
        self.targets.append(np.asarray(batch.targets)[:, w])
        self.num_clips += int(batch.outputs.shape[0])

    def result(self):
        targets = np.concatenate(self.targets)
        return {
            "brightness_error": float(np.mean(np.concatenate(self.errors))),
            "constant_error": float(np.mean(np.abs(targets - targets.mean()))),
            "num_clips": self.num_clips,
        }
