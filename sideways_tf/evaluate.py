"""Evaluation: top outputs averaged over valid steps, then over the clips of a video.

    p(video) = mean over its clips c of  mean over valid steps t of logits_t(c)

(algorithm.md s.4). Every example is scored: a last partial batch is padded to
the buffers' static batch size and the padding is dropped from the results.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tqdm

from sideways_tf.engine import Engine


def evaluate(engine: Engine, dataset: tf.data.Dataset, progress: bool = False) -> dict:
    """Scores a finite dataset of {"frames", "label"[, "video_index"]} examples.

    Returns accuracy (per video), clip_accuracy, loss (the pipeline's loss on the
    clip-averaged outputs), num_videos and num_clips. Batches fill every local
    replica (engine.global_batch_size clips).
    """
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
        if n < batch_size:  # Pad to the static batch size; the padding is dropped below.
            pad = tf.zeros((batch_size - n, *frames.shape[1:]), frames.dtype)
            frames = tf.concat([frames, pad], axis=0)
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
