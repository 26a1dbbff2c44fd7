"""Classification: one label per clip, scored at every valid step.

    targets[t] = y (the clip's label) for every step t;   l_t = CE(y, logits_t)

Evaluation (algorithm.md s.4): top outputs averaged over valid steps, then over
the clips of a video,
    p(video) = mean over its clips c of  mean over valid steps t of logits_t(c),
with accuracy per video and per clip. Every example is scored: a last partial
batch is padded to the buffers' static batch size and the padding is dropped.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
import tqdm

from sideways_tf.data import contract
from sideways_tf.tasks.base import Task, pad_batch


def sparse_softmax_cross_entropy(labels, logits):
    """Per-example loss [B] of integer labels [B] against logits [B, C]."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)


LOSSES = {"sparse_softmax_cross_entropy": sparse_softmax_cross_entropy}


@keras.saving.register_keras_serializable(package="sideways_tf")
class Classification(Task):
    """A label per clip [B] int, logits [B, C] at every step.

    loss: a name from LOSSES, or a callable (labels [B], logits [B, C]) -> [B]
    (a callable does not serialise: Pipeline.get_config refuses it).
    """

    name = "classification"
    label_key = "label"

    def __init__(self, loss: str | Callable = "sparse_softmax_cross_entropy"):
        if isinstance(loss, str) and loss not in LOSSES:
            raise ValueError(f"Unknown loss {loss!r}; choose one of {sorted(LOSSES)}.")
        self.loss_arg = loss
        self._loss = LOSSES[loss] if isinstance(loss, str) else loss

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
        return {"accuracy": float(np.mean(hits))}

    def check_data(self, dataset, binding: str):
        return contract.check_clip_dataset(dataset, binding, labelled=True)

    def evaluate(self, engine, dataset, progress: bool = False) -> dict:
        """Scores {"frames", "label"[, "video_index"]} examples.

        Returns accuracy (per video), clip_accuracy, loss (the task's loss on the
        clip-averaged outputs), num_videos and num_clips. Batches fill every local
        replica (engine.batch_per_process clips).
        """
        batch_size = engine.batch_per_process
        per_video = collections.defaultdict(list)  # video -> [(outputs, label)]
        clip_losses, clip_hits, next_index = [], [], 0
        batches = dataset.batch(batch_size).prefetch(2)
        bar = tqdm.tqdm(batches, desc="eval", unit="batch", disable=not progress, leave=False)
        for batch in bar:
            frames, labels = batch["frames"], batch["label"].numpy()
            n = int(frames.shape[0])
            if "video_index" in batch:
                videos = batch["video_index"].numpy()
            else:
                videos = np.arange(next_index, next_index + n)
            next_index += n
            outputs = engine.predict_clip(pad_batch(frames, batch_size)).numpy()[:n]
            if not np.all(np.isfinite(outputs)):
                raise FloatingPointError(
                    f"Evaluation produced NaN/Inf outputs (batch of videos {videos[:n].tolist()}): "
                    "the parameters or the eval data are not finite. No accuracy is reported."
                )
            losses = self.loss(labels.astype("int32"), outputs)
            clip_losses.extend(np.asarray(losses).tolist())
            clip_hits.extend((outputs.argmax(-1) == labels).tolist())
            for v, out, y in zip(videos, outputs, labels):
                per_video[int(v)].append((out, int(y)))
        if not per_video:
            raise ValueError("The evaluation dataset is empty: check the eval data binding.")
        hits = []
        for v, clips in per_video.items():
            labels = {y for _, y in clips}
            if len(labels) != 1:
                raise ValueError(f"Video {v} has clips with different labels {sorted(labels)}.")
            hits.append(np.mean([out for out, _ in clips], axis=0).argmax() == labels.pop())
        return {
            "accuracy": float(np.mean(hits)),
            "clip_accuracy": float(np.mean(clip_hits)),
            "loss": float(np.mean(clip_losses)),
            "num_videos": len(per_video),
            "num_clips": len(clip_hits),
        }

    def headline(self, metrics: dict) -> str:
        return f"accuracy {metrics['accuracy']:.3f}"

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
        return {"loss": self.loss_arg}

    def __repr__(self):
        return f"Classification(loss={self.loss_arg!r})"
