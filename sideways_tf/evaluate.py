"""Evaluation: top outputs averaged over valid steps, then over the clips of a video.

    p(video) = mean over its clips c of  mean over valid steps t of logits_t(c)

(algorithm.md s.4). Future-frame prediction scores every valid step instead:
PSNR and SSIM of prediction vs target, averaged over the valid steps of every
clip, next to the copy-the-last-seen-frame baseline on the same steps
(sideways_tf.prediction). Every example is scored: a last partial batch is
padded to the buffers' static batch size and the padding is dropped.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tqdm

from sideways_tf import prediction
from sideways_tf.engine import Engine


def evaluate(engine: Engine, dataset: tf.data.Dataset, progress: bool = False) -> dict:
    """Scores a finite dataset of {"frames", "label"[, "video_index"]} examples.

    Returns accuracy (per video), clip_accuracy, loss (the pipeline's loss on the
    clip-averaged outputs), num_videos and num_clips. Batches fill every local
    replica (engine.global_batch_size clips).
    """
    if prediction.predicts_frames(engine.pipeline):
        return evaluate_frames(engine, dataset, progress=progress)
    batch_size = engine.global_batch_size
    per_video = collections.defaultdict(list)  # video -> [(logits, label)]
    clip_losses, clip_hits, next_index = [], [], 0
    batches = dataset.batch(batch_size).prefetch(2)
    for batch in tqdm.tqdm(batches, desc="eval", unit="batch", disable=not progress, leave=False):
        frames, labels = batch["frames"], batch["label"].numpy()
        n = int(frames.shape[0])
        if "video_index" in batch:
            videos = batch["video_index"].numpy()
        else:
            videos = np.arange(next_index, next_index + n)
        next_index += n
        frames = _pad(frames, batch_size)
        logits = engine.predict_clip(frames).numpy()[:n]
        if not np.all(np.isfinite(logits)):
            raise FloatingPointError(
                f"Evaluation produced NaN/Inf outputs (batch of videos {videos[:n].tolist()}): "
                "the parameters or the eval data are not finite. No accuracy is reported."
            )
        losses = engine.pipeline.loss_fn(labels.astype("int32"), logits)
        clip_losses.extend(losses.numpy().tolist())
        clip_hits.extend((logits.argmax(-1) == labels).tolist())
        for v, lg, y in zip(videos, logits, labels):
            per_video[int(v)].append((lg, int(y)))
    if not per_video:
        raise ValueError("The evaluation dataset is empty: check the eval data binding.")
    hits = []
    for v, clips in per_video.items():
        labels = {y for _, y in clips}
        if len(labels) != 1:
            raise ValueError(f"Video {v} has clips with different labels {sorted(labels)}.")
        hits.append(np.mean([lg for lg, _ in clips], axis=0).argmax() == labels.pop())
    return {
        "accuracy": float(np.mean(hits)),
        "clip_accuracy": float(np.mean(clip_hits)),
        "loss": float(np.mean(clip_losses)),
        "num_videos": len(per_video),
        "num_clips": len(clip_hits),
    }


def evaluate_frames(
    engine: Engine, dataset: tf.data.Dataset, progress: bool = False, max_val: float = 2.0
) -> dict:
    """Scores future-frame prediction on a finite dataset of {"frames"} clips in [-1, 1].

    Returns psnr, ssim (mean over the valid steps of every clip), the same for
    the copy-the-last-seen-frame baseline (psnr_copy_last, ssim_copy_last), loss
    (the pipeline's pixel loss, same average), num_clips, scored_frames, and
    images: target / prediction strips of the first batch (for TensorBoard).
    """
    batch_size = engine.global_batch_size
    sums = {"psnr": 0.0, "ssim": 0.0, "psnr_copy_last": 0.0, "ssim_copy_last": 0.0, "loss": 0.0}
    weight, num_clips, images = 0.0, 0, None
    batches = dataset.batch(batch_size).prefetch(2)
    for batch in tqdm.tqdm(batches, desc="eval", unit="batch", disable=not progress, leave=False):
        n = int(batch["frames"].shape[0])
        out = engine.predict_steps(_pad(batch["frames"], batch_size))
        outputs, targets, last = (out[k][:n] for k in ("outputs", "targets", "last_seen"))
        if not np.all(np.isfinite(outputs.numpy())):
            raise FloatingPointError(
                f"Evaluation produced NaN/Inf frames (clips {num_clips}..{num_clips + n - 1}): "
                "the parameters or the eval data are not finite. No PSNR is reported."
            )
        weights = out["weights"]
        model = prediction.frame_metrics(outputs, targets, weights, max_val)
        copy = prediction.frame_metrics(last, targets, weights, max_val)
        sums["psnr"] += model["psnr_sum"]
        sums["ssim"] += model["ssim_sum"]
        sums["psnr_copy_last"] += copy["psnr_sum"]
        sums["ssim_copy_last"] += copy["ssim_sum"]
        per_step = engine.pipeline.loss_fn(
            tf.reshape(targets, (-1, *targets.shape[2:])),
            tf.reshape(outputs, (-1, *outputs.shape[2:])),
        )
        w = tf.tile(weights, [n])
        sums["loss"] += float(tf.reduce_sum(per_step * w))
        weight += model["weight"]
        num_clips += n
        if images is None:
            images = prediction.prediction_strips(targets, outputs, weights)
    if num_clips == 0:
        raise ValueError("The evaluation dataset is empty: check the eval data binding.")
    if weight == 0:
        raise ValueError(
            "No step of the evaluation clips has both a full pipeline and a target frame: "
            "lengthen the clips or lower frame_loss.horizon."
        )
    metrics = {k: v / weight for k, v in sums.items()}
    metrics.update(num_clips=num_clips, scored_frames=int(round(weight)), images=images)
    return metrics


def _pad(frames, batch_size: int):
    """Pads a last partial batch to the static batch size with zero clips (dropped later)."""
    n = int(frames.shape[0])
    if n == batch_size:
        return frames
    pad = tf.zeros((batch_size - n, *frames.shape[1:]), frames.dtype)
    return tf.concat([frames, pad], axis=0)
