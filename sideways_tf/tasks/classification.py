"""Classification: one label per clip, scored at every valid step.

    targets[t] = y (the clip's label) for every step t;   l_t = CE(y, logits_t)

Evaluation (algorithm.md s.4): top outputs averaged over valid steps, then over
the clips of a video,
    p(clip)  = mean over valid steps t of logits_t(clip)
    p(video) = mean over its clips c of p(c),
reported apart: clip_accuracy (argmax p(clip) per clip) and video_accuracy
(argmax p(video) per video), with num_clips and num_videos; loss is the
objective, l_t averaged over every scored step of every clip.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import gin
import keras
import numpy as np
import tensorflow as tf

from sideways_tf.data import contract
from sideways_tf.tasks.base import EvalBatch, Metrics, Task


def sparse_softmax_cross_entropy(labels, logits):
    """Per-example loss [B] of integer labels [B] against logits [B, C]."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)


LOSSES = {"sparse_softmax_cross_entropy": sparse_softmax_cross_entropy}


@keras.saving.register_keras_serializable(package="sideways_tf")
class ClassHead(keras.layers.Layer):
    """The classification head: a_L[t] -> logits [B, num_classes].

    A map [B, h, w, c] (or any rank > 2) is averaged over its inner axes first
    (global average pooling); a vector [B, c] goes to the Dense layer as it is.
    """

    def __init__(self, num_classes: int, **kwargs):
        kwargs.setdefault("name", "head")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.logits = keras.layers.Dense(self.num_classes, name="logits")

    def build(self, input_shape):
        self.logits.build((input_shape[0], input_shape[-1]))

    def call(self, x):
        if len(x.shape) > 2:
            x = keras.ops.mean(x, axis=tuple(range(1, len(x.shape) - 1)))
        return self.logits(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@gin.configurable(module="sideways_tf")
@keras.saving.register_keras_serializable(package="sideways_tf")
class Classification(Task):
    """A label per clip [B] int, logits [B, C] at every step.

    num_classes: C, the head's outputs (gin: Classification.num_classes); None
      when the pipeline is given a head of its own (Pipeline(head=...)).
    loss: a name from LOSSES, or a callable (labels [B], logits [B, C]) -> [B]
      (a callable does not serialise: Pipeline.get_config refuses it).
    """

    name = "classification"
    label_key = "label"

    def __init__(
        self,
        num_classes: int | None = None,
        loss: str | Callable = "sparse_softmax_cross_entropy",
    ):
        if isinstance(loss, str) and loss not in LOSSES:
            raise ValueError(f"Unknown loss {loss!r}; choose one of {sorted(LOSSES)}.")
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(
                f"Classification.num_classes = {num_classes!r}; give the dataset's class "
                "count, an integer >= 1."
            )
        self.num_classes = num_classes
        self.loss_arg = loss
        self._loss = LOSSES[loss] if isinstance(loss, str) else loss

    def head(self, frame_shape):
        if self.num_classes is None:
            raise ValueError(
                "Classification.num_classes is not set, so the head's size is unknown: bind "
                "it to the dataset's class count (gin: Classification.num_classes = 101), or "
                "give the pipeline a head of its own."
            )
        return ClassHead(self.num_classes)

    def loss(self, targets, outputs):
        return self._loss(targets, outputs)

    def step_targets(self, clip, labels, lag: int):
        if labels is None:
            raise ValueError(
                "This pipeline classifies clips, so training and fidelity need labels [B]; "
                "the data must yield 'label' (or give the model head='frame_delta' to predict frames)."
            )
        num_frames = tf.shape(clip)[1]
        labels = tf.convert_to_tensor(labels)
        targets = tf.tile(labels[:, None], tf.stack([1, num_frames]))  # [B, K]
        return targets, tf.ones([num_frames], tf.float32)

    def check_labels(self, labels, batch_size: int, num_outputs: int | None = None) -> None:
        shape = tuple(labels.shape)
        dtype = tf.as_dtype(labels.dtype)
        if not dtype.is_integer:
            raise ValueError(
                f"labels have dtype {dtype.name}; classification takes integer class indices "
                f"[B] = [{batch_size}] (not one-hot, not names): e.g. tf.argmax(one_hot, -1), "
                "or map names to indices with a lookup table."
            )
        if shape != (batch_size,):
            hint = (
                " One-hot or per-frame labels? Give one class index per clip: "
                "tf.argmax(one_hot, -1), or labels[:, 0] for per-frame labels of one class."
                if len(shape) > 1
                else ""
            )
            raise ValueError(
                f"labels have shape {shape}; expected [B] = [{batch_size}], one class index "
                f"per clip.{hint}"
            )
        if num_outputs is not None and tf.executing_eagerly():
            values = np.asarray(labels)
            if values.size and (values.min() < 0 or values.max() >= num_outputs):
                bad = values[(values < 0) | (values >= num_outputs)]
                raise ValueError(
                    f"labels hold {bad.tolist()[:5]}, outside [0, {num_outputs}): the head has "
                    f"{num_outputs} outputs. Build the model with num_classes = the dataset's "
                    "class count (gin: train.num_classes), or fix the labels."
                )

    def train_metrics(self, outputs, labels) -> dict:
        hits = np.argmax(np.asarray(outputs), -1) == np.asarray(labels)
        return {"clip_accuracy": float(np.mean(hits))}

    def check_data(self, dataset, binding: str):
        return contract.check_clip_dataset(dataset, binding, labelled=True)

    def metrics(self) -> ClassificationMetrics:
        return ClassificationMetrics(self)

    def export_metadata(self, pipeline, class_names=None) -> dict:
        num_classes = int(pipeline.top_output_shape[-1])
        names = list(class_names) if class_names is not None else None
        return dict(
            task="classes",
            outputs="logits [B, num_classes]",
            horizon=None,
            num_classes=num_classes,
            class_names=names if names is not None and len(names) == num_classes else None,
        )

    def get_config(self) -> dict:
        if not isinstance(self.loss_arg, str):
            raise ValueError(
                "Only pipelines with a named loss (see sideways_tf.tasks.classification.LOSSES) "
                f"serialise; this one has {self.loss_arg!r}."
            )
        return {"num_classes": self.num_classes, "loss": self.loss_arg}

    def __repr__(self):
        return f"Classification(num_classes={self.num_classes!r}, loss={self.loss_arg!r})"


class ClassificationMetrics(Metrics):
    """Clip and video accuracy, and the loss, of a classification evaluation.

    Per clip: p(clip) = sum_t w_t y[t] / sum_t w_t over the scored steps; per video:
    the mean of its clips' p. Returns video_accuracy, clip_accuracy, loss (mean l_t
    over scored steps), num_videos, num_clips, scored_steps.
    """

    def __init__(self, task: Classification):
        self.task = task
        self.per_video = collections.defaultdict(list)  # video -> [(p(clip) [C], label)]
        self.hits, self.loss_sum, self.scored = 0, 0.0, 0.0

    def update(self, batch: EvalBatch) -> None:
        outputs = tf.cast(batch.outputs, tf.float32)  # [n, K, C]
        n, num_steps = int(outputs.shape[0]), int(outputs.shape[1])
        weights = tf.cast(batch.weights, tf.float32)  # [K]
        total = float(tf.reduce_sum(weights))
        if total == 0:
            raise ValueError(
                "No step of the evaluation clips has a full pipeline: lengthen the eval clips "
                "(their num_frames binding) or use fewer units."
            )
        flat_targets = tf.reshape(batch.targets, [n * num_steps])
        per_step = self.task.loss(flat_targets, tf.reshape(outputs, [n * num_steps, -1]))
        self.loss_sum += float(tf.reduce_sum(per_step * tf.tile(weights, [n])))
        self.scored += total * n
        clips = (tf.einsum("nkc,k->nc", outputs, weights) / total).numpy()  # p(clip) [n, C]
        labels = np.asarray(batch.labels).astype(np.int64)
        self.hits += int(np.sum(clips.argmax(-1) == labels))
        for v, p, y in zip(np.asarray(batch.videos), clips, labels):
            self.per_video[int(v)].append((p, int(y)))

    def result(self) -> dict:
        if not self.per_video:
            raise ValueError("The evaluation dataset is empty: check the eval data binding.")
        hits = []
        for v, clips in self.per_video.items():
            labels = {y for _, y in clips}
            if len(labels) != 1:
                raise ValueError(f"Video {v} has clips with different labels {sorted(labels)}.")
            hits.append(np.mean([p for p, _ in clips], axis=0).argmax() == labels.pop())
        num_clips = sum(len(c) for c in self.per_video.values())
        return {
            "video_accuracy": float(np.mean(hits)),
            "clip_accuracy": self.hits / num_clips,
            "loss": self.loss_sum / self.scored,
            "num_videos": len(self.per_video),
            "num_clips": num_clips,
            "scored_steps": int(round(self.scored)),
        }

    def headline(self, result: dict) -> str:
        return (
            f"video accuracy {result['video_accuracy']:.3f} ({result['num_videos']} videos), "
            f"clip accuracy {result['clip_accuracy']:.3f} ({result['num_clips']} clips)"
        )
