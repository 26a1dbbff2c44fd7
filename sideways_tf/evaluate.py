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

from sideways_tf import summaries
from sideways_tf import workdir as workdir_lib
from sideways_tf.engine import Engine
from sideways_tf.runs import load_run


def evaluate(engine: Engine, dataset: tf.data.Dataset, progress: bool = False) -> dict:
    """Scores a finite dataset of unbatched clips with the task of engine's pipeline."""
    return engine.task.evaluate(engine, dataset, progress=progress)


def check_eval_size(dataset: tf.data.Dataset, batch_size: int, binding="train.eval_data"):
    """Raises unless the evaluation data holds at least one batch of clips.

    A split smaller than one batch is almost always a wrong pattern or a split cut too
    thin (its score would rest on a handful of clips, the rest of the batch padding).
    Reads at most batch_size clips.
    """
    found = int(dataset.take(batch_size).reduce(0, lambda n, _: n + 1))
    if found < batch_size:
        raise ValueError(
            f"The evaluation data ({binding}) holds {found} clip(s), fewer than one batch of "
            f"{batch_size} (train.batch_size per process). Fix: give the evaluation split at "
            f"least {batch_size} videos (e.g. convert more into it, or cut long videos into "
            "several), raise clip_sampling.num_eval_clips, or lower train.batch_size."
        )


def evaluate_workdir(workdir, gin_params=(), progress: bool = True) -> dict:
    """Evaluates the newest readable checkpoint of a run with the config it saved.

    The run is rebuilt by runs.load_run (parameters only; the training data is
    never read; config.gin is never rewritten); gin_params apply over the saved
    config (e.g. another eval split). The result is appended to the workdir's
    eval_metrics.json as its own entry (source "sideways-eval", with gin_params).
    Safe against a live run (load_run restores from a snapshot of the checkpoint).
    Returns {"step", "checkpoint", "eval"}: the training step evaluated, its checkpoint.
    """
    run = load_run(workdir, gin_params=tuple(gin_params))
    if run.eval_data is None:
        raise ValueError(
            f"{run.workdir.config} sets no train.eval_data: there is nothing to evaluate. Give "
            "one: --gin_param=train.eval_data=@eval/moving_shapes_dataset (or your reader)."
        )
    eval_ds = run.eval_data()
    check_eval_size(eval_ds, run.engine.batch_per_process)
    metrics = evaluate(run.engine, eval_ds, progress=progress and run.runtime.is_chief)
    images = metrics.pop("images", None)
    if run.runtime.is_chief:
        writer = tf.summary.create_file_writer(run.workdir.summaries("eval"))
        summaries.write_scalars(writer, run.step, metrics)
        if images is not None:
            summaries.write_images(writer, run.step, "predictions", images)
        writer.flush()
        workdir_lib.record_evaluation(
            run.workdir, run.step, metrics, source="sideways-eval", gin_params=list(gin_params)
        )
    return {"step": run.step, "checkpoint": run.checkpoint, "eval": metrics}
