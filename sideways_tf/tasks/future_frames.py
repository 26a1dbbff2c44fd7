"""Future-frame prediction: a task of the same engine, with frames as targets.

The top output y[t] of a pipelined network at step t is built from frames up to
x[t - lag], lag the mode's input lag (Mode.input_lag: Topology.newest_lag(L),
the shortest path from input to top, the chain's L - 1; 0 for the per-frame
network). So the frame it predicts, h steps ahead of the newest frame it has
seen, is

    target[t] = x[t - lag + h]          (horizon h >= 1, gin: frame_loss.horizon)

Targets come from the clip; a step whose target frame lies outside the clip
carries no loss, like a step still filling the pipeline (t < T_fill). Every
metric and baseline is averaged over the same steps:
    psnr, ssim                      prediction vs target (tf.image), per frame pair;
    psnr_copy_last, ssim_copy_last  the newest frame seen, x[t - lag], as prediction.

Shapes: clips [B, K, H, W, C]; targets the same; present [K] (1.0 where the
target frame is in the clip).
"""

from __future__ import annotations

import gin
import keras
import numpy as np
import tensorflow as tf
import tqdm

from sideways_tf.data import contract
from sideways_tf.tasks.base import Task, pad_batch

PSNR_CAP = 100.0  # dB: the PSNR of identical frames (tf.image.psnr's inf), kept finite


@keras.saving.register_keras_serializable(package="sideways_tf")
class FutureFrames(Task):
    """Predict the frame h steps ahead of the newest one seen; pixel loss |e|^2 or |e|.

    loss(target [B, H, W, C], prediction [B, H, W, C]) -> [B] float32: the mean
    over pixels of the squared (l2) or absolute (l1) error.
    """

    name = "future_frames"
    label_key = None

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
        return self.loss(target, prediction)

    def loss(self, targets, outputs):
        error = tf.cast(outputs, tf.float32) - tf.cast(targets, tf.float32)
        error = tf.square(error) if self.norm == "l2" else tf.abs(error)
        return tf.reduce_mean(tf.reshape(error, [tf.shape(error)[0], -1]), axis=1)

    def step_targets(self, clip, labels, lag: int):
        return frame_targets(clip, lag, self.horizon)

    def check_data(self, dataset, binding: str):
        return contract.check_clip_dataset(dataset, binding, labelled=False)

    def check_clip_length(
        self, num_frames: int, lag: int, first_step: int, mode: str, binding: str
    ) -> None:
        # Step t (1-based) is scored when t >= first_step and its target t - lag + h <= K.
        longest = num_frames + lag - first_step
        if self.horizon > longest:
            raise ValueError(
                f"frame_loss.horizon = {self.horizon} is too far ahead for clips of "
                f"K={num_frames} frames in mode '{mode}' (lag {lag}, first scored step "
                f"{first_step}): no step would have its target frame inside the clip. Use "
                f"frame_loss.horizon <= {max(longest, 0)}, or longer clips ({binding} >= "
                f"{first_step - lag + self.horizon})."
            )

    def prediction_targets(self, clip, lag: int):
        targets, present = frame_targets(clip, lag, self.horizon)
        return {"targets": targets, "last_seen": last_seen_frames(clip, lag)}, present

    def step_metrics(self, outputs, references: dict, weights, max_val: float = 2.0) -> dict:
        model = frame_metrics(outputs, references["targets"], weights, max_val)
        copy = frame_metrics(references["last_seen"], references["targets"], weights, max_val)
        w = max(model["weight"], 1e-9)
        return {
            "psnr": (model["psnr_sum"] / w, model["weight"]),
            "ssim": (model["ssim_sum"] / w, model["weight"]),
            "psnr_copy_last": (copy["psnr_sum"] / w, model["weight"]),
            "ssim_copy_last": (copy["ssim_sum"] / w, model["weight"]),
        }

    def evaluate(self, engine, dataset, progress: bool = False, max_val: float = 2.0) -> dict:
        """Scores future-frame prediction on a finite dataset of {"frames"} clips in [-1, 1].

        Returns psnr, ssim (mean over the valid steps of every clip), the same for
        the copy-the-last-seen-frame baseline (psnr_copy_last, ssim_copy_last), loss
        (the pixel loss, same average), num_clips, scored_frames, and images:
        target / prediction strips of the first batch (for TensorBoard).
        """
        batch_size = engine.batch_per_process
        sums = dict.fromkeys(("psnr", "ssim", "psnr_copy_last", "ssim_copy_last", "loss"), 0.0)
        weight, num_clips, images = 0.0, 0, None
        batches = dataset.batch(batch_size).prefetch(2)
        bar = tqdm.tqdm(batches, desc="eval", unit="batch", disable=not progress, leave=False)
        for batch in bar:
            n = int(batch["frames"].shape[0])
            out = engine.predict_steps(pad_batch(batch["frames"], batch_size))
            outputs, targets, last = (out[k][:n] for k in ("outputs", "targets", "last_seen"))
            if not np.all(np.isfinite(outputs.numpy())):
                raise FloatingPointError(
                    f"Evaluation produced NaN/Inf frames (clips {num_clips}..{num_clips + n - 1}):"
                    " the parameters or the eval data are not finite. No PSNR is reported."
                )
            weights = out["weights"]
            model = frame_metrics(outputs, targets, weights, max_val)
            copy = frame_metrics(last, targets, weights, max_val)
            sums["psnr"] += model["psnr_sum"]
            sums["ssim"] += model["ssim_sum"]
            sums["psnr_copy_last"] += copy["psnr_sum"]
            sums["ssim_copy_last"] += copy["ssim_sum"]
            per_step = self.loss(
                tf.reshape(targets, (-1, *targets.shape[2:])),
                tf.reshape(outputs, (-1, *outputs.shape[2:])),
            )
            sums["loss"] += float(tf.reduce_sum(per_step * tf.tile(weights, [n])))
            weight += model["weight"]
            num_clips += n
            if images is None:
                images = prediction_strips(targets, outputs, weights)
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

    def headline(self, metrics: dict) -> str:
        return (
            f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f} (copy last frame: "
            f"{metrics['psnr_copy_last']:.2f} dB, {metrics['ssim_copy_last']:.3f})"
        )

    def export_metadata(self, pipeline, class_names=None) -> dict:
        return dict(
            task="future_frames",
            outputs="frames [B, H, W, C]: step t predicts x[t - newest_lag + horizon]",
            horizon=self.horizon,
            num_classes=None,
            class_names=None,
        )

    def get_config(self) -> dict:
        return {"norm": self.norm, "horizon": self.horizon}


FrameLoss = FutureFrames  # the name this task had before tasks were values


@gin.configurable(module="sideways_tf")
def frame_loss(
    norm: str = "l2",  # "l2" (mean squared error) or "l1" (mean absolute error)
    horizon: int = 1,  # frames ahead of the newest frame the top output has seen
) -> FutureFrames:
    """The future-frame task a model factory puts on its pipeline (head="frame_delta", "frame_motion" or "frames")."""
    return FutureFrames(norm=norm, horizon=horizon)


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
