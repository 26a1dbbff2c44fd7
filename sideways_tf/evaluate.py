"""Evaluation: the pipeline's task scores a finite dataset (one evaluator per task).

    evaluate(engine, dataset) = engine.task.evaluate(engine, dataset)

Classification scores top outputs averaged over valid steps, then over the
clips of a video (sideways_tf.tasks.classification); future frames score PSNR
and SSIM at every valid step against copying the last seen frame
(sideways_tf.tasks.future_frames). Every example is scored: a last partial batch
is padded to the buffers' static batch size and the padding is dropped.
"""

from __future__ import annotations

import tensorflow as tf

from sideways_tf.engine import Engine


def evaluate(engine: Engine, dataset: tf.data.Dataset, progress: bool = False) -> dict:
    """Scores a finite dataset of unbatched clips with the task of engine's pipeline."""
    return engine.task.evaluate(engine, dataset, progress=progress)
