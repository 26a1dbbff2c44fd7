"""The Task interface: what a network is trained to output, and how that is scored.

A task is a value the pipeline carries (`Pipeline(task=...)`); the engine, the
evaluation, the train loop and export ask it, and never branch on which task it
is (big_vision's one evaluator per task). Every method has the shapes of
algorithm.md: clips [B, K, *frame], the top output of step t y[t] [B, ...], and
`lag`, the mode's input lag: y[t] is built from frames up to x[t - lag]
(sideways_tf.modes.Mode.input_lag).

A new task is one subclass in its own module of sideways_tf/tasks/, registered
with keras.saving.register_keras_serializable so that pipelines carrying it save.
"""

from __future__ import annotations

import tensorflow as tf


class Task:
    """Base class. Subclasses set `name` and `label_key` and implement the methods."""

    name: str = "task"
    # The data element key whose value a clip is scored against besides its frames
    # ("label" for classification), or None when the frames themselves are the targets.
    label_key: str | None = None

    # -- Training ----------------------------------------------------------------

    def loss(self, targets, outputs) -> tf.Tensor:
        """Per-example loss [B] of outputs [B, ...] against step targets [B, ...]."""
        raise NotImplementedError

    def step_targets(self, clip, labels, lag: int):
        """What the top output of every step is scored against, and where it exists.

        clip [B, K, *frame]; labels: the batch's `label_key` values, or None.
        Returns (targets [B, K, ...], present [K] float32: 0.0 where step t has no
        target and carries no loss, like a step still filling the pipeline).
        """
        raise NotImplementedError

    def check_labels(self, labels, batch_size: int, num_outputs: int | None = None) -> None:
        """Raises, naming `labels` and the fix, unless labels fit this task (eager checks too)."""

    def train_metrics(self, outputs, labels) -> dict:
        """Figures of one training batch: outputs averaged over valid steps [B, ...]."""
        return {}

    # -- Checks before a run ---------------------------------------------------------

    def check_data(self, dataset, binding: str) -> tuple[int, tuple]:
        """Checks an unbatched clip dataset for this task; returns (K, frame_shape)."""
        raise NotImplementedError

    def check_clip_length(
        self, num_frames: int, lag: int, first_step: int, mode: str, binding: str
    ) -> None:
        """Raises unless clips of K frames give some step a target (first_step: 1-based)."""

    # -- Evaluation and prediction ---------------------------------------------------

    def prediction_targets(self, clip, lag: int) -> tuple[dict, tf.Tensor]:
        """({name: [B, K, ...]} references to score step outputs against, present [K])."""
        return {}, tf.ones([tf.shape(clip)[1]], tf.float32)

    def step_metrics(self, outputs, references: dict, weights) -> dict:
        """{name: (mean, weight)} of one batch's step outputs [B, K, ...] against the
        references of prediction_targets, over the scored steps (weights [K])."""
        return {}

    def evaluate(self, engine, dataset, progress: bool = False) -> dict:
        """Scores a finite dataset with engine's pipeline; returns numbers (and images)."""
        raise NotImplementedError

    def headline(self, metrics: dict) -> str:
        """One line of an evaluation's main figures, for the terminal."""
        raise NotImplementedError

    # -- Export --------------------------------------------------------------------

    def export_metadata(self, pipeline, class_names=None) -> dict:
        """What a deployer needs to read the exported step's outputs."""
        raise NotImplementedError

    # -- Serialisation (Keras) ---------------------------------------------------------

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def pad_batch(frames, batch_size: int):
    """Pads a last partial batch to the static batch size with zero clips (dropped later)."""
    n = int(frames.shape[0])
    if n == batch_size:
        return frames
    pad = tf.zeros((batch_size - n, *frames.shape[1:]), frames.dtype)
    return tf.concat([frames, pad], axis=0)
