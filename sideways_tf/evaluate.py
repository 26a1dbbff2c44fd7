"""Evaluation: ONE loop that scores a finite dataset, whoever asks.

    evaluate(engine, dataset)   the training loop's periodic evaluation, sideways-eval
                                (evaluate_workdir), the benchmarks;
    score_batch(engine, metrics, clips, labels, videos)
                                one batch of it: what SidewaysModel.evaluate (Keras)
                                runs per step, so Keras reports the same numbers.

Per batch: every step's top output from a fresh state (Engine.predict_steps: the
per-frame network in a per-frame mode, the pipelined one otherwise), the task's
step targets at the mode's input lag, weights [K] (1.0 where the step is scored:
pipeline full, target present), and the video each clip comes from; the task's
Metrics accumulate them (tasks.base.EvalBatch). Classification reports
video_accuracy and clip_accuracy apart, with num_videos and num_clips; future
frames report PSNR and SSIM against copying the last frame seen. Every example is
scored: a last partial batch is padded to the buffers' static batch size and the
padding is dropped.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tqdm

from sideways_tf import summaries
from sideways_tf import workdir as workdir_lib
from sideways_tf.engine import Engine
from sideways_tf.runs import load_run
from sideways_tf.tasks import EvalBatch, Metrics, Task, pad_batch


def evaluate(engine: Engine, dataset: tf.data.Dataset, progress: bool = False) -> dict:
    """Scores a finite dataset of unbatched clips ({"frames"[, label][, "video_index"]})
    with the task of engine's pipeline; returns the task's figures (and "images")."""
    metrics = engine.task.metrics()
    batches = dataset.batch(engine.batch_per_process).prefetch(2)
    bar = tqdm.tqdm(batches, desc="eval", unit="batch", disable=not progress, leave=False)
    next_video, label_key = 0, engine.task.label_key
    for batch in bar:
        labels = batch[label_key] if label_key else None
        _, next_video = score_batch(
            engine, metrics, batch["frames"], labels, batch.get("video_index"), next_video
        )
    return metrics.result()


def score_batch(
    engine: Engine, metrics: Metrics, clips, labels=None, videos=None, next_video: int = 0
) -> tuple[EvalBatch, int]:
    """Adds one batch of n <= batch_per_process clips [n, K, *frame] to `metrics`.

    labels: the task's label_key values [n, ...] (None for a task without labels);
    videos: [n] the video of each clip, or None (then each clip is a video of its
    own, numbered from next_video). Returns (the batch as scored, the next free
    video number).
    """
    clips = tf.convert_to_tensor(clips)
    n = int(clips.shape[0])
    out = engine.predict_steps(pad_batch(clips, engine.batch_per_process))
    outputs = out["outputs"][:n]
    if not np.all(np.isfinite(outputs.numpy())):
        raise FloatingPointError(
            f"Evaluation produced NaN/Inf outputs (clips {next_video}..{next_video + n - 1} of "
            "this evaluation): the parameters or the eval data are not finite. No figure is "
            "reported."
        )
    if labels is not None:
        labels = tf.convert_to_tensor(labels)
        engine.task.check_labels(labels, n, num_outputs=int(engine.pipeline.top_output_shape[-1]))
    lag = engine.mode.input_lag(engine.pipeline)
    targets, present = engine.task.step_targets(clips, labels, lag)
    if videos is None:
        videos = tf.range(next_video, next_video + n, dtype=tf.int64)
    references = {k: v[:n] for k, v in out.items() if k not in ("outputs", "weights")}
    weights = out["weights"] * present  # [K]
    batch = EvalBatch(outputs, targets, weights, references, labels, videos)
    metrics.update(batch)
    return batch, max(next_video + n, int(np.max(np.asarray(videos))) + 1)


def headline(task: Task, result: dict) -> str:
    """One line of an evaluation's main figures, for the terminal."""
    return task.metrics().headline(result)


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
            f"{batch_size} (train.global_batch per process). Fix: give the evaluation split at "
            f"least {batch_size} videos (e.g. convert more into it, or cut long videos into "
            "several), raise clip_sampling.num_eval_clips, or lower train.global_batch."
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
