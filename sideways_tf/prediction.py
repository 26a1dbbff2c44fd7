"""Future-frame prediction: a task of the same engine, with frames as targets.

The top output y[t] of a pipelined network at step t is built from frames up to
x[t - lag], lag = Topology.newest_lag(L) (the shortest path from input to top;
the chain's L - 1). So the frame it predicts, h steps ahead of the newest frame
it has seen, is

    target[t] = x[t - lag + h]          (horizon h >= 1, gin: frame_loss.horizon)

The per-frame network (frame_bp) sees x[t] itself: lag = 0. Targets come from
the clip; a step whose target frame lies outside the clip carries no loss, like
a step still filling the pipeline (t < T_fill). Every metric and baseline is
averaged over the same steps:
    psnr, ssim                    prediction vs target (tf.image), per frame pair;
    psnr_copy_last, ssim_copy_last  the newest frame seen, x[t - lag], as prediction.

Shapes: clips [B, K, H, W, C]; targets the same; present [K] (1.0 where the
target frame is in the clip).
"""

from __future__ import annotations

import gin
import keras
import numpy as np
import tensorflow as tf

PSNR_CAP = 100.0  # dB: the PSNR of identical frames (tf.image.psnr's inf), kept finite


@keras.saving.register_keras_serializable(package="sideways_tf")
class FrameLoss:
    """Per-example pixel loss of a predicted frame: mean over pixels of |e|^2 (l2) or |e| (l1).

    The pipeline's loss for future-frame prediction: `Pipeline(loss=FrameLoss())`.
    Its `horizon` tells the engine which frame is the target (module docstring).
    __call__(target [B, H, W, C], prediction [B, H, W, C]) -> [B] float32.
    """

    targets = "frames"

    def __init__(self, norm: str = "l2", horizon: int = 1):
        if norm not in ("l2", "l1"):
            raise ValueError(f"frame_loss.norm = {norm!r}; use 'l2' (default) or 'l1'.")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(
                f"frame_loss.horizon = {horizon!r}; it counts frames ahead of the newest one "
                "the top output has seen, an integer >= 1."
            )
        self.norm, self.horizon = norm, horizon

    def __call__(self, target, prediction):
        error = tf.cast(prediction, tf.float32) - tf.cast(target, tf.float32)
        error = tf.square(error) if self.norm == "l2" else tf.abs(error)
        return tf.reduce_mean(tf.reshape(error, [tf.shape(error)[0], -1]), axis=1)

    def get_config(self):
        return {"norm": self.norm, "horizon": self.horizon}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"FrameLoss(norm={self.norm!r}, horizon={self.horizon})"


@gin.configurable(module="sideways_tf")
def frame_loss(
    norm: str = "l2",  # "l2" (mean squared error) or "l1" (mean absolute error)
    horizon: int = 1,  # frames ahead of the newest frame the top output has seen
) -> FrameLoss:
    """The future-frame loss a model factory puts on its pipeline (head="frames")."""
    return FrameLoss(norm=norm, horizon=horizon)


def predicts_frames(pipeline) -> bool:
    """True when the pipeline's loss takes frames as targets (future-frame prediction)."""
    return getattr(pipeline.loss_fn, "targets", None) == "frames"


def input_lag(pipeline, mode: str) -> int:
    """t minus the newest frame in the top output at step t: 0 for the per-frame network."""
    return 0 if mode == "frame_bp" else pipeline.topology.newest_lag(pipeline.num_units)


def frame_targets(clip, lag: int, horizon: int):
    """target[t] = x[t - lag + h] for every step of a clip.

    clip: [B, K, *frame]. Returns (targets [B, K, *frame], present [K] float32);
    where t - lag + h falls outside the clip, present is 0 and the target is a
    clamped stand-in that no loss or metric reads.
    """
    clip = tf.convert_to_tensor(clip)
    num_frames = tf.shape(clip)[1]
    source = tf.range(num_frames) - lag + horizon
    present = tf.cast((source >= 0) & (source < num_frames), tf.float32)
    return tf.gather(clip, tf.clip_by_value(source, 0, num_frames - 1), axis=1), present


def last_seen_frames(clip, lag: int):
    """x[t - lag] for every step: the copy-the-last-seen-frame baseline. [B, K, *frame]."""
    clip = tf.convert_to_tensor(clip)
    num_frames = tf.shape(clip)[1]
    return tf.gather(clip, tf.clip_by_value(tf.range(num_frames) - lag, 0, num_frames - 1), axis=1)


def check_horizon(pipeline, mode: str, num_frames: int, binding: str = "the data's num_frames"):
    """Raises unless some step of a K-frame clip has both a full pipeline and a target."""
    if not predicts_frames(pipeline):
        return
    horizon, lag = pipeline.loss_fn.horizon, input_lag(pipeline, mode)
    first = 1 if mode == "frame_bp" else pipeline.fill_steps  # first valid step (1-based)
    # Step t (1-based) is scored when t >= first and its target t - lag + h <= K.
    longest = num_frames + lag - first
    if horizon > longest:
        raise ValueError(
            f"frame_loss.horizon = {horizon} is too far ahead for clips of K={num_frames} frames "
            f"in mode '{mode}' (lag {lag}, first scored step {first}): no step would have its "
            f"target frame inside the clip. Use frame_loss.horizon <= {max(longest, 0)}, or "
            f"longer clips ({binding} >= {first - lag + horizon})."
        )


def frame_metrics(predictions, targets, weights, max_val: float = 2.0) -> dict:
    """PSNR and SSIM per frame pair, averaged with weights (valid steps of valid clips).

    predictions, targets: [B, K, H, W, C]; weights: [B, K] (or [K]), 1.0 for scored
    steps. max_val: the frames' value range (2.0 for frames in [-1, 1]). PSNR is
    capped at PSNR_CAP dB (identical frames). Returns numpy sums and the weight
    total: {"psnr_sum", "ssim_sum", "weight"}, so batches can be pooled exactly.
    """
    predictions = tf.cast(predictions, tf.float32)
    targets = tf.cast(targets, tf.float32)
    weights = tf.broadcast_to(tf.cast(weights, tf.float32), tf.shape(predictions)[:2])
    frame_shape = predictions.shape[2:]
    p = tf.reshape(predictions, (-1, *frame_shape))
    q = tf.reshape(targets, (-1, *frame_shape))
    psnr = tf.minimum(tf.image.psnr(p, q, max_val=max_val), PSNR_CAP)
    size = min(11, int(frame_shape[0]), int(frame_shape[1]))
    ssim = tf.image.ssim(p, q, max_val=max_val, filter_size=size)
    w = tf.reshape(weights, [-1])
    return {
        "psnr_sum": float(tf.reduce_sum(psnr * w)),
        "ssim_sum": float(tf.reduce_sum(ssim * w)),
        "weight": float(tf.reduce_sum(w)),
    }


def prediction_strips(targets, predictions, weights, max_clips: int = 3, max_frames: int = 8):
    """Images for TensorBoard: per clip, the target row above the prediction row.

    Scored steps only, up to max_frames of them. targets/predictions [B, K, H, W, C]
    in [-1, 1]; weights [K]. Returns [N, 2H, F*W, 3] floats in [0, 1].
    """
    steps = np.flatnonzero(np.asarray(weights) > 0)[:max_frames]
    strips = []
    for target, prediction in zip(np.asarray(targets)[:max_clips], np.asarray(predictions)):
        rows = [np.concatenate(list(frames[steps]), axis=1) for frames in (target, prediction)]
        strips.append(np.concatenate(rows, axis=0))
    strips = np.clip((np.stack(strips) + 1.0) / 2.0, 0.0, 1.0)
    return np.repeat(strips, 3, axis=-1) if strips.shape[-1] == 1 else strips


__all__ = [
    "FrameLoss",
    "PSNR_CAP",
    "check_horizon",
    "frame_loss",
    "frame_metrics",
    "frame_targets",
    "input_lag",
    "last_seen_frames",
    "predicts_frames",
    "prediction_strips",
]
