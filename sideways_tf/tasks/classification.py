"""Classification: one label per clip, scored at every valid step.

    targets[t] = y (the clip's label) for every step t;   l_t = CE(y, logits_t)

Evaluation (algorithm.md s.4): top outputs averaged over valid steps, then over
the clips of a video,
    p(clip)  = sum_t w_t logits_t(clip) / sum_t w_t      (w_t: 1 where step t is scored)
    p(video) = the same mean over every scored step of all its clips (its clips' p
               averaged, when they have the same scored steps),
reported apart: clip_accuracy (argmax p(clip) per clip) and video_accuracy
(argmax p(video) per video), with num_clips and num_videos; loss is the
objective, l_t averaged over every scored step of every clip. A task that knows the
accuracy a per-frame model is held to (`per_frame_ceiling`) reports it with them.

The field's protocols are the same Metrics over other clips (evaluate.py,
Metrics.protocol_result): multi-view (N clips x 3 crops of a video: p(video)) and
streaming (a video run once in consecutive chunks with carried state, each chunk a
row with its own weights, [n, K]: p(video) is the mean over the whole video's scored
steps).

TemporalClassification is the classification of a temporal task (data/temporal.py:
arrow of time, playback speed), whose labels the input pipeline makes.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable

import gin
import keras
import numpy as np
from keras import ops

from sideways_tf.tasks.base import EvalBatch, Metrics, Task, dtype_name, is_concrete


def sparse_softmax_cross_entropy(labels, logits):
    """Per-example loss [B] of integer labels [B] against logits [B, C]:
    l = log sum_c exp(logits_c) - logits_y (on TensorFlow, the fused
    tf.nn.sparse_softmax_cross_entropy_with_logits; on JAX, log_softmax)."""
    return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)


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
    per_frame_ceiling: the accuracy a per-frame model (frame_bp) is held to on the data,
      reported with every evaluation (`per_frame_ceiling`), e.g. 0.25 on moving_shapes
      (it cannot tell 4 directions apart); None: not known.
    """

    name = "classification"
    label_key = "label"

    def __init__(
        self,
        num_classes: int | None = None,
        loss: str | Callable = "sparse_softmax_cross_entropy",
        per_frame_ceiling: float | None = None,
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
        if per_frame_ceiling is not None and not 0.0 <= per_frame_ceiling <= 1.0:
            raise ValueError(
                f"Classification.per_frame_ceiling = {per_frame_ceiling!r}; give the accuracy a "
                "per-frame model is held to, in [0, 1] (or None)."
            )
        self.num_classes = num_classes
        self.loss_arg = loss
        self._loss = LOSSES[loss] if isinstance(loss, str) else loss
        self.per_frame_ceiling = None if per_frame_ceiling is None else float(per_frame_ceiling)

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

    def chance_loss(self, top_output_shape) -> float | None:
        """ln C: the cross-entropy of uniform logits (C = num_classes, or the head's outputs)."""
        if self.loss_arg != "sparse_softmax_cross_entropy":
            return None  # (a loss of one's own: its chance level is not known here)
        num_classes = self.num_classes or top_output_shape[-1]
        return math.log(num_classes) if num_classes and num_classes > 1 else None

    def step_targets(self, clip, labels, lag: int):
        if labels is None:
            raise ValueError(
                "This pipeline classifies clips, so training and fidelity need labels [B]; "
                "the data must yield 'label' (or give the model head='frame_delta' to predict frames)."
            )
        num_frames = ops.shape(clip)[1]
        labels = ops.convert_to_tensor(labels)
        targets = ops.tile(ops.expand_dims(labels, 1), (1, num_frames))  # [B, K]
        return targets, ops.ones((num_frames,), "float32")

    def check_labels(self, labels, batch_size: int, num_outputs: int | None = None) -> None:
        """The shape and dtype always (static, so also inside a trace); the values
        (0 <= y < num_outputs) where labels are concrete (numpy, eager tensors)."""
        if not hasattr(labels, "shape"):
            labels = np.asarray(labels)
        shape = tuple(labels.shape)
        dtype = dtype_name(labels.dtype)
        if dtype == "string" or not keras.backend.is_int_dtype(dtype):
            raise ValueError(
                f"labels have dtype {dtype}; classification takes integer class indices "
                f"[B] = [{batch_size}] (not one-hot, not names): e.g. "
                "keras.ops.argmax(one_hot, -1), or map names to indices with a lookup table."
            )
        if shape != (batch_size,):
            hint = (
                " One-hot or per-frame labels? Give one class index per clip:"
                " keras.ops.argmax(one_hot, -1), or labels[:, 0] for per-frame labels of one"
                " class."
                if len(shape) > 1
                else ""
            )
            raise ValueError(
                f"labels have shape {shape}; expected [B] = [{batch_size}], one class index "
                f"per clip.{hint}"
            )
        if num_outputs is not None and is_concrete(labels):
            values = np.asarray(labels)
            if values.size and (values.min() < 0 or values.max() >= num_outputs):
                bad = values[(values < 0) | (values >= num_outputs)]
                raise ValueError(
                    f"labels hold {bad.tolist()[:5]}, outside [0, {num_outputs}): the head has "
                    f"{num_outputs} outputs. Build the model with num_classes = the dataset's "
                    "class count (gin: Classification.num_classes), or fix the labels."
                )

    def train_metrics(self, outputs, labels) -> dict:
        """clip_accuracy: the fraction of clips whose outputs [B, C] (averaged over valid
        steps) have their argmax at the label [B]; a float, or a float32 scalar tensor
        inside a trace."""
        hits = ops.equal(ops.argmax(outputs, axis=-1), ops.convert_to_tensor(labels))  # [B]
        if is_concrete(hits):
            return {"clip_accuracy": float(np.mean(np.asarray(hits)))}
        return {"clip_accuracy": ops.mean(ops.cast(hits, "float32"))}

    def check_data(self, dataset, binding: str):
        from sideways_tf.data import contract  # (tf.data: imports TensorFlow)

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
        config = {"num_classes": self.num_classes, "loss": self.loss_arg}
        if self.per_frame_ceiling is not None:
            config["per_frame_ceiling"] = self.per_frame_ceiling
        return config

    def __repr__(self):
        ceiling = (
            ""
            if self.per_frame_ceiling is None
            else f", per_frame_ceiling={self.per_frame_ceiling}"
        )
        return f"Classification(num_classes={self.num_classes!r}, loss={self.loss_arg!r}{ceiling})"


@gin.configurable(module="sideways_tf")
@keras.saving.register_keras_serializable(package="sideways_tf")
class TemporalClassification(Classification):
    """Classification of a temporal task: arrow of time ("arrow", 2 classes) or playback
    speed ("speed", 3 classes), labels made by the input pipeline (data/temporal.py).

    The classes and the per-frame ceiling (1/2, 1/3) follow from the task. The data must
    make the same task's labels: the shipped data files bind both from one macro,
    TEMPORAL_TASK (data/folder_temporal.gin: clip_sampling.temporal_task;
    data/moving_shapes_temporal.gin: moving_shapes_dataset.temporal_task), and
    check_data compares the classes a reader names.
    """

    def __init__(
        self,
        temporal_task: str,
        loss: str | Callable = "sparse_softmax_cross_entropy",
    ):
        # (sideways_tf.data: its package imports the TensorFlow readers)
        from sideways_tf.data import temporal as temporal_lib

        task = temporal_lib.get(temporal_task, "TemporalClassification.temporal_task")
        if task is None:
            raise ValueError(
                "TemporalClassification.temporal_task = None; give 'arrow' or 'speed' (or "
                "bind train.task = @Classification() for the labels the data holds)."
            )
        super().__init__(task.num_classes, loss, per_frame_ceiling=task.per_frame_ceiling)
        self.temporal_task = task.name
        self.class_names = task.class_names

    def check_data(self, dataset, binding: str):
        from sideways_tf.data import contract

        shape = super().check_data(dataset, binding)
        names = contract.class_names(dataset)
        if names is not None and tuple(names) != self.class_names:
            raise ValueError(
                f"{binding} names the classes {names}, but the task is the temporal task "
                f"{self.temporal_task!r} with classes {list(self.class_names)}. Bind both from "
                "one value: TEMPORAL_TASK = 'arrow' or 'speed' with the shipped data files "
                "(data/folder_temporal.gin, data/moving_shapes_temporal.gin), or set "
                "clip_sampling.temporal_task (moving_shapes_dataset.temporal_task) to "
                f"{self.temporal_task!r}."
            )
        return shape

    def export_metadata(self, pipeline, class_names=None) -> dict:
        return super().export_metadata(pipeline, class_names or self.class_names)

    def get_config(self) -> dict:
        config = super().get_config()
        return {"temporal_task": self.temporal_task, "loss": config["loss"]}

    def __repr__(self):
        return (
            f"TemporalClassification(temporal_task={self.temporal_task!r}, loss={self.loss_arg!r})"
        )


class ClassificationMetrics(Metrics):
    """Clip and video accuracy, and the loss, of a classification evaluation.

    Per row of a batch (a clip, or a chunk of a streamed video) with weights w [K] (or
    its own [n, K]): the weighted sum of its logits and sum_t w_t; p(clip) = their ratio.
    A video pools the sums of all its rows: p(video) = the mean of its logits over all
    its scored steps (= the mean of its clips' p when they share the weights). Returns
    video_accuracy, clip_accuracy, loss (mean l_t over scored steps), num_videos,
    num_clips (rows with a scored step), scored_steps, and per_frame_ceiling when the
    task knows it.
    """

    def __init__(self, task: Classification):
        self.task = task
        self.sums = {}  # video -> sum over its scored steps of w_t logits_t [C]
        self.weights = collections.defaultdict(float)  # video -> sum of w_t
        self.labels = collections.defaultdict(set)  # video -> its clips' labels
        self.hits, self.clips, self.loss_sum, self.scored = 0, 0, 0.0, 0.0

    def update(self, batch: EvalBatch) -> None:
        outputs = ops.cast(batch.outputs, "float32")  # [n, K, C]
        n, num_steps = int(outputs.shape[0]), int(outputs.shape[1])
        weights = ops.broadcast_to(ops.cast(batch.weights, "float32"), (n, num_steps))  # [n, K]
        if float(ops.sum(weights)) == 0:
            raise ValueError(
                "No step of the evaluation clips has a full pipeline: lengthen the eval clips "
                "(their num_frames binding) or use fewer units."
            )
        flat_targets = ops.reshape(batch.targets, (n * num_steps,))
        per_step = self.task.loss(flat_targets, ops.reshape(outputs, (n * num_steps, -1)))
        self.loss_sum += float(ops.sum(per_step * ops.reshape(weights, (-1,))))
        self.scored += float(ops.sum(weights))
        sums = np.asarray(ops.einsum("nkc,nk->nc", outputs, weights))  # [n, C]
        totals = np.asarray(ops.sum(weights, axis=1))  # [n]
        labels = np.asarray(batch.labels).astype(np.int64)
        scored = totals > 0
        clips = sums[scored] / totals[scored, None]  # p(clip) [n', C]
        self.hits += int(np.sum(clips.argmax(-1) == labels[scored]))
        self.clips += int(np.sum(scored))
        for v, total, row, y in zip(np.asarray(batch.videos), totals, sums, labels):
            if total == 0:
                continue
            v = int(v)
            self.sums[v] = self.sums[v] + row if v in self.sums else row
            self.weights[v] += float(total)
            self.labels[v].add(int(y))

    def video_logits(self) -> dict:
        """{video: p(video) [C]}: its logits averaged over all its scored steps."""
        return {v: total / self.weights[v] for v, total in self.sums.items()}

    def result(self) -> dict:
        if not self.sums:
            raise ValueError("The evaluation dataset is empty: check the eval data binding.")
        hits = []
        for v, p in self.video_logits().items():
            labels = self.labels[v]
            if len(labels) != 1:
                raise ValueError(f"Video {v} has clips with different labels {sorted(labels)}.")
            hits.append(p.argmax() == next(iter(labels)))
        result = {
            "video_accuracy": float(np.mean(hits)),
            "clip_accuracy": self.hits / self.clips,
            "loss": self.loss_sum / self.scored,
            "num_videos": len(self.sums),
            "num_clips": self.clips,
            "scored_steps": int(round(self.scored)),
        }
        if self.task.per_frame_ceiling is not None:
            result["per_frame_ceiling"] = self.task.per_frame_ceiling
        return result

    def protocol_result(self, protocol: str) -> dict:
        """The figures of an evaluation protocol, named apart (evaluate.evaluate_protocols):
        multiview_{accuracy, view_accuracy, loss, videos, views} (views: every clip x crop
        scored) or streaming_{accuracy, loss, videos, frames} (frames: scored steps)."""
        r = self.result()
        if protocol == "multiview":
            return {
                "multiview_accuracy": r["video_accuracy"],
                "multiview_view_accuracy": r["clip_accuracy"],
                "multiview_loss": r["loss"],
                "multiview_videos": r["num_videos"],
                "multiview_views": r["num_clips"],
            }
        if protocol == "streaming":
            return {
                "streaming_accuracy": r["video_accuracy"],
                "streaming_loss": r["loss"],
                "streaming_videos": r["num_videos"],
                "streaming_frames": r["scored_steps"],
            }
        return super().protocol_result(protocol)

    def headline(self, result: dict) -> str:
        line = (
            f"video accuracy {result['video_accuracy']:.3f} ({result['num_videos']} videos), "
            f"clip accuracy {result['clip_accuracy']:.3f} ({result['num_clips']} clips)"
        )
        if "per_frame_ceiling" in result:
            line += f", per-frame ceiling {result['per_frame_ceiling']:.3f}"
        if "multiview_accuracy" in result:
            views = result["multiview_views"] // max(result["multiview_videos"], 1)
            line += (
                f"; multi-view accuracy {result['multiview_accuracy']:.3f} "
                f"({result['multiview_videos']} videos x {views} views)"
            )
        if "streaming_accuracy" in result:
            line += (
                f"; streaming accuracy {result['streaming_accuracy']:.3f} "
                f"({result['streaming_videos']} videos, {result['streaming_frames']} frames)"
            )
        return line
