"""Tasks: what a pipeline is trained to output, and how it is scored (tasks/base.py).

    Classification   a label per clip, logits at every step (classification.py)
    TemporalClassification
                     the same, the label made from time: arrow of time, playback speed
                     (classification.py; the data side: data/temporal.py)
    FutureFrames     the frame h steps ahead of the newest seen (future_frames.py;
                     its heads: frame_decoder.py)

A task is a gin setting, `train.task = @Classification()` or `@FutureFrames()`: it
supplies the model's head, the objective and the evaluation's Metrics.
`as_task` turns what a Pipeline accepts as `task` (or the older `loss`) into a Task.
"""

from __future__ import annotations

from sideways_tf.tasks.base import EvalBatch, Metrics, Task, pad_batch
from sideways_tf.tasks.classification import (
    LOSSES,
    ClassHead,
    Classification,
    TemporalClassification,
)
from sideways_tf.tasks.frame_decoder import FrameDecoder, frame_decoder
from sideways_tf.tasks.future_frames import DECODERS, FrameLoss, FutureFrames, frame_loss


def as_task(task) -> Task:
    """A Task from a Task, a loss name of LOSSES, or a per-example loss callable."""
    if isinstance(task, Task):
        return task
    if isinstance(task, str) or callable(task):
        return Classification(loss=task)
    raise TypeError(
        f"task = {task!r}: give a sideways_tf.tasks.Task (Classification(), FutureFrames()), "
        f"a loss name from {sorted(LOSSES)}, or a loss callable (labels, logits) -> [B]."
    )


__all__ = [
    "DECODERS",
    "LOSSES",
    "ClassHead",
    "Classification",
    "EvalBatch",
    "FrameDecoder",
    "FrameLoss",
    "FutureFrames",
    "Metrics",
    "Task",
    "TemporalClassification",
    "as_task",
    "frame_decoder",
    "frame_loss",
    "pad_batch",
]
