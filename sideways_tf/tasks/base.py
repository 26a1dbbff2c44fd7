"""The Task interface: what a network is trained to output, and how that is scored.

A task is a setting (gin: `train.task = @Classification()` or `@FutureFrames()`)
and a value the pipeline carries (`Pipeline(task=...)`). It has two jobs, kept
apart:
  the objective   its head (`head(frame_shape)`: what a model factory puts on the
                  top unit), step targets, loss, label and data checks, training
                  figures;
  the evaluation  `metrics()`: a fresh `Metrics` accumulator that the one
                  evaluation loop (sideways_tf.evaluate) feeds batch by batch
                  (`EvalBatch`) and reads once (`result`, `headline`).
The engine, the evaluation loop, the train loop and export ask it, and never
branch on which task it is. Every method has the shapes of algorithm.md: clips
[B, K, *frame], the top output of step t y[t] [B, ...], and `lag`, the mode's
input lag: y[t] is built from frames up to x[t - lag] (Mode.input_lag).

A new task is one subclass in one module (sideways_tf/tasks/<name>.py, or your
own), registered with gin (`@gin.configurable`) so that `train.task = @MyTask()`
names it, and with keras.saving.register_keras_serializable so that pipelines
carrying it save. Nothing else changes (tests/test_tasks.py trains a toy one
through the command line).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from sideways_tf import backend

Array = Any  # a tensor of the Keras backend (tf.Tensor, jax.Array) or a numpy array


class EvalBatch(NamedTuple):
    """One batch of an evaluation, as the evaluation loop hands it to Metrics.update.

    outputs:    [n, K, ...] every step's top output y[t] (n real clips, padding dropped);
    targets:    [n, K, ...] what each step is scored against (Task.step_targets);
    weights:    [K] 1.0 where step t is scored (pipeline full, target present), the same
                for every clip; or [n, K], per clip (a streamed video's chunks);
    references: {name: [n, K, ...]} the task's extras (Task.prediction_targets);
    labels:     [n, ...] the batch's `label_key` values, or None;
    videos:     [n] int64 the video each clip comes from (clips of a video pool).
    """

    outputs: Array
    targets: Array
    weights: Array
    references: dict
    labels: Array | None
    videos: Array


class Metrics:
    """An evaluation of one task, accumulated over batches (Task.metrics() makes one).

    update(batch) adds a batch; result() returns the figures (numbers, and
    optionally "images" for TensorBoard); headline(result) is one line for the
    terminal. Every result names its counts: num_clips, num_videos.
    """

    def update(self, batch: EvalBatch) -> None:
        raise NotImplementedError

    def result(self) -> dict:
        raise NotImplementedError

    def protocol_result(self, protocol: str) -> dict:
        """The result of an evaluation protocol ("multiview", "streaming": evaluate.py),
        its figures named apart (e.g. multiview_accuracy). Classification has them."""
        raise ValueError(
            f"{type(self).__name__} reports no {protocol!r} evaluation: the multi-view and "
            "streaming protocols score a label per video (train.task = @Classification())."
        )

    def headline(self, result: dict) -> str:
        shown = [f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float)]
        return ", ".join(shown[:4])


class Task:
    """Base class. Subclasses set `name` and `label_key` and implement the methods."""

    name: str = "task"
    # The data element key whose value a clip is scored against besides its frames
    # ("label" for classification), or None when the frames themselves are the targets.
    label_key: str | None = None

    # -- The objective -------------------------------------------------------------

    def head(self, frame_shape):
        """The Keras layer a model factory puts on its top unit: a_L[t] -> y[t].

        frame_shape: (H, W, C) of the input frames (a frame head predicts one).
        """
        raise NotImplementedError(
            f"{type(self).__name__} supplies no head: give the pipeline one, "
            "Pipeline(units, head=..., task=...), or implement Task.head."
        )

    def loss(self, targets, outputs) -> Array:
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

    def chance_loss(self, top_output_shape) -> float | None:
        """The loss of a model that knows nothing (the stall diagnostic's reference), or None.

        top_output_shape: the head's output shape [B, ...] (Pipeline.top_output_shape).
        """
        return None

    # -- Checks before a run ---------------------------------------------------------

    def check_data(self, dataset, binding: str) -> tuple[int, tuple]:
        """Checks an unbatched clip dataset for this task; returns (K, frame_shape)."""
        raise NotImplementedError

    def check_clip_length(
        self, num_frames: int, lag: int, first_step: int, mode: str, binding: str
    ) -> None:
        """Raises unless clips of K frames give some step a target (first_step: 1-based)."""

    # -- The evaluation --------------------------------------------------------------

    def prediction_targets(self, clip, lag: int) -> tuple[dict, Array]:
        """({name: [B, K, ...]} references besides the targets that the task's Metrics
        read (future frames: the last frame seen), present [K]); computed with the
        predictions, inside the engine's compiled predict step."""
        return {}, ops.ones((ops.shape(clip)[1],), "float32")

    def metrics(self) -> Metrics:
        """A fresh accumulator of this task's evaluation (see Metrics)."""
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
    dtype = keras.backend.standardize_dtype(frames.dtype)
    pad = ops.zeros((batch_size - n, *frames.shape[1:]), dtype)
    return ops.concatenate([frames, pad], axis=0)


def is_concrete(x) -> bool:
    """Whether x holds values here (numpy, an eager tensor, a jax array outside a trace),
    not a placeholder that jax.jit or tf.function traces: checks of values read x only
    then, and only through numpy."""
    if isinstance(x, (np.ndarray, np.generic, bool, int, float)):
        return True
    if isinstance(x, keras.KerasTensor):
        return False
    if backend.is_jax():
        import jax

        return not isinstance(x, jax.core.Tracer)
    return not backend.tf.is_symbolic_tensor(x)


def dtype_name(dtype) -> str:
    """The Keras name of a dtype ("int64", "string"), or numpy's for one Keras has none for."""
    try:
        return keras.backend.standardize_dtype(dtype)
    except ValueError:
        if getattr(dtype, "kind", None) in ("U", "S", "O"):  # numpy text (JAX has no string)
            return "string"
        return str(getattr(dtype, "name", dtype))
