"""Future-frame prediction: a task of the same engine, with frames as targets.

The top output y[t] of a pipelined network at step t is built from frames up to
x[t - lag], lag the mode's input lag (Mode.input_lag: Topology.newest_lag(L),
the shortest path from input to top, the chain's L - 1; 0 for the per-frame
network). So the frame it predicts, h steps ahead of the newest frame it has
seen, is

    target[t] = x[t - lag + h]          (horizon h >= 1, gin: FutureFrames.horizon)

Targets come from the clip; a step whose target frame lies outside the clip
carries no loss, like a step still filling the pipeline (t < T_fill). Every
metric and baseline is averaged over the same steps:
    psnr, ssim                      prediction vs target (tf.image's, in keras.ops:
                                    `psnr`, `ssim`), per frame pair;
    psnr_copy_last, ssim_copy_last  the newest frame seen, x[t - lag], as prediction.

Shapes: clips [B, K, H, W, C]; targets the same; present [K] (1.0 where the
target frame is in the clip).
"""

from __future__ import annotations

import gin
import keras
import numpy as np
from keras import ops

from sideways_tf.tasks.base import EvalBatch, Metrics, Task
from sideways_tf.tasks.frame_decoder import DECODERS as HEADS
from sideways_tf.tasks.frame_decoder import frame_decoder

PSNR_CAP = 100.0  # dB: the PSNR of identical frames (tf.image.psnr's inf), kept finite

# How the head makes the frame (FutureFrames.decoder; tasks.frame_decoder):
#   "checked" moves the last frame seen's pixels where the same motion explains the last
#             change seen better than copying did, else copies it (the folder configs');
#   "gated"   moves them by a learned gate in [0, 1] (no check);
#   "motion"  moves them by an amount in (-1, 1) (residual, motion_radius 2, previous
#             frame); the default;
#   "delta"   the last frame seen plus a change painted from the features (residual);
#   "whole"   the whole frame painted from the features.
DECODERS = tuple(HEADS)


@gin.configurable(module="sideways_tf")
@keras.saving.register_keras_serializable(package="sideways_tf")
class FutureFrames(Task):
    """Predict the frame h steps ahead of the newest one seen; pixel loss |e|^2 or |e|.

    loss(target [B, H, W, C], prediction [B, H, W, C]) -> [B] float32: the mean
    over pixels of the squared (l2) or absolute (l1) error. decoder: how the head
    makes the frame, one of DECODERS (gin: FutureFrames.decoder).
    """

    name = "future_frames"
    label_key = None

    def __init__(self, norm: str = "l2", horizon: int = 1, decoder: str = "motion"):
        if norm not in ("l2", "l1"):
            raise ValueError(f"FutureFrames.norm = {norm!r}; use 'l2' (default) or 'l1'.")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(
                f"FutureFrames.horizon = {horizon!r}; it counts frames ahead of the newest one "
                "the top output has seen, an integer >= 1."
            )
        if decoder not in DECODERS:
            raise ValueError(
                f"FutureFrames.decoder = {decoder!r} is not a decoder; choose one of {DECODERS} "
                "(gin: FutureFrames.decoder = 'checked')."
            )
        self.norm, self.horizon, self.decoder = norm, horizon, decoder

    def head(self, frame_shape):
        return frame_decoder(self.decoder, frame_shape)

    def __call__(self, target, prediction):
        return self.loss(target, prediction)

    def loss(self, targets, outputs):
        error = ops.cast(outputs, "float32") - ops.cast(targets, "float32")
        error = ops.square(error) if self.norm == "l2" else ops.abs(error)
        return ops.mean(ops.reshape(error, (ops.shape(error)[0], -1)), axis=1)

    def step_targets(self, clip, labels, lag: int):
        return frame_targets(clip, lag, self.horizon)

    def check_data(self, dataset, binding: str):
        from sideways_tf.data import contract  # (tf.data: imports TensorFlow)

        return contract.check_clip_dataset(dataset, binding, labelled=False)

    def check_clip_length(
        self, num_frames: int, lag: int, first_step: int, mode: str, binding: str
    ) -> None:
        # Step t (1-based) is scored when t >= first_step and its target t - lag + h <= K.
        longest = num_frames + lag - first_step
        if self.horizon > longest:
            raise ValueError(
                f"FutureFrames.horizon = {self.horizon} is too far ahead for clips of "
                f"K={num_frames} frames in mode '{mode}' (lag {lag}, first scored step "
                f"{first_step}): no step would have its target frame inside the clip. Use "
                f"FutureFrames.horizon <= {max(longest, 0)}, or longer clips ({binding} >= "
                f"{first_step - lag + self.horizon})."
            )

    def prediction_targets(self, clip, lag: int):
        targets, present = frame_targets(clip, lag, self.horizon)
        return {"targets": targets, "last_seen": last_seen_frames(clip, lag)}, present

    def metrics(self) -> FrameMetrics:
        return FrameMetrics(self)

    def export_metadata(self, pipeline, class_names=None) -> dict:
        return dict(
            task="future_frames",
            outputs="frames [B, H, W, C]: step t predicts x[t - newest_lag + horizon]",
            horizon=self.horizon,
            num_classes=None,
            class_names=None,
        )

    def get_config(self) -> dict:
        return {"norm": self.norm, "horizon": self.horizon, "decoder": self.decoder}


class FrameMetrics(Metrics):
    """PSNR and SSIM of the predictions and of copy-last, and the pixel loss.

    Every figure is a mean over the scored steps of every clip (weights). Returns
    psnr, ssim, psnr_copy_last, ssim_copy_last, loss, num_clips, num_videos,
    scored_frames, and images: target / prediction strips of the first batch.
    """

    KEYS = ("psnr", "ssim", "psnr_copy_last", "ssim_copy_last", "loss")

    def __init__(self, task: FutureFrames, max_val: float = 2.0):
        self.task, self.max_val = task, max_val
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.weight, self.num_clips, self.videos, self.images = 0.0, 0, set(), None

    def update(self, batch: EvalBatch) -> None:
        outputs, targets = batch.outputs, batch.targets
        last, weights = batch.references["last_seen"], batch.weights
        n = int(outputs.shape[0])
        model = frame_metrics(outputs, targets, weights, self.max_val)
        copy = frame_metrics(last, targets, weights, self.max_val)
        for key in ("psnr", "ssim"):
            self.sums[key] += model[f"{key}_sum"]
            self.sums[f"{key}_copy_last"] += copy[f"{key}_sum"]
        per_step = self.task.loss(
            ops.reshape(targets, (-1, *targets.shape[2:])),
            ops.reshape(outputs, (-1, *outputs.shape[2:])),
        )
        per_clip = ops.broadcast_to(ops.cast(weights, "float32"), tuple(outputs.shape[:2]))
        self.sums["loss"] += float(ops.sum(per_step * ops.reshape(per_clip, (-1,))))
        self.weight += model["weight"]
        self.num_clips += n
        self.videos.update(int(v) for v in np.asarray(batch.videos))
        if self.images is None:
            self.images = prediction_strips(targets, outputs, weights)

    def result(self) -> dict:
        if self.num_clips == 0:
            raise ValueError("The evaluation dataset is empty: check the eval data binding.")
        if self.weight == 0:
            raise ValueError(
                "No step of the evaluation clips has both a full pipeline and a target frame: "
                "lengthen the clips or lower FutureFrames.horizon."
            )
        out = {k: v / self.weight for k, v in self.sums.items()}
        out.update(
            num_clips=self.num_clips,
            num_videos=len(self.videos),
            scored_frames=int(round(self.weight)),
            images=self.images,
        )
        return out

    def headline(self, result: dict) -> str:
        return (
            f"PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.3f} (copy last frame: "
            f"{result['psnr_copy_last']:.2f} dB, {result['ssim_copy_last']:.3f}), "
            f"{result['num_clips']} clips"
        )


FrameLoss = FutureFrames  # the name this task had before tasks were values


@gin.configurable(module="sideways_tf")
def frame_loss(
    norm: str = "l2",  # "l2" (mean squared error) or "l1" (mean absolute error)
    horizon: int = 1,  # frames ahead of the newest frame the top output has seen
) -> FutureFrames:
    """Deprecated: bind train.task = @FutureFrames() and FutureFrames.horizon / .norm."""
    return FutureFrames(norm=norm, horizon=horizon)


def frame_targets(clip, lag: int, horizon: int):
    """target[t] = x[t - lag + h] for every step of a clip.

    clip: [B, K, *frame]. Returns (targets [B, K, *frame], present [K] float32);
    where t - lag + h falls outside the clip, present is 0 and the target is a
    clamped stand-in that no loss or metric reads.
    """
    clip = ops.convert_to_tensor(clip)
    num_frames = ops.shape(clip)[1]
    source = ops.arange(num_frames) - lag + horizon  # [K] int32
    present = ops.cast(ops.logical_and(source >= 0, source < num_frames), "float32")
    return ops.take(clip, ops.clip(source, 0, num_frames - 1), axis=1), present


def last_seen_frames(clip, lag: int):
    """x[t - lag] for every step: the copy-the-last-seen-frame baseline. [B, K, *frame]."""
    clip = ops.convert_to_tensor(clip)
    num_frames = ops.shape(clip)[1]
    return ops.take(clip, ops.clip(ops.arange(num_frames) - lag, 0, num_frames - 1), axis=1)


def frame_metrics(predictions, targets, weights, max_val: float = 2.0) -> dict:
    """PSNR and SSIM per frame pair, averaged with weights (valid steps of valid clips).

    predictions, targets: [B, K, H, W, C]; weights: [B, K] (or [K]), 1.0 for scored
    steps. max_val: the frames' value range (2.0 for frames in [-1, 1]). PSNR is
    capped at PSNR_CAP dB (identical frames). Returns numpy sums and the weight
    total: {"psnr_sum", "ssim_sum", "weight"}, so batches can be pooled exactly.
    """
    predictions = ops.cast(predictions, "float32")
    targets = ops.cast(targets, "float32")
    weights = ops.broadcast_to(ops.cast(weights, "float32"), tuple(predictions.shape[:2]))
    frame_shape = tuple(predictions.shape[2:])
    p = ops.reshape(predictions, (-1, *frame_shape))
    q = ops.reshape(targets, (-1, *frame_shape))
    psnr_values = ops.minimum(psnr(p, q, max_val), PSNR_CAP)
    size = min(11, int(frame_shape[0]), int(frame_shape[1]))
    ssim_values = ssim(p, q, max_val, filter_size=size)
    w = ops.reshape(weights, (-1,))
    return {
        "psnr_sum": float(ops.sum(psnr_values * w)),
        "ssim_sum": float(ops.sum(ssim_values * w)),
        "weight": float(ops.sum(w)),
    }


def psnr(a, b, max_val: float):
    """PSNR [N] of frames a, b [N, H, W, C] float32 (tf.image.psnr, the same float32 ops):
    20 log10(max_val) - 10 log10(mse), mse the mean over pixels and channels; inf where
    the frames are identical."""
    max_val = ops.convert_to_tensor(max_val, "float32")
    mse = ops.mean(ops.square(a - b), axis=(-3, -2, -1))
    return 20 * ops.log(max_val) / ops.log(10.0) - np.float32(10 / np.log(10)) * ops.log(mse)


def ssim(a, b, max_val: float, filter_size: int = 11, filter_sigma: float = 1.5):
    """SSIM [N] of frames a, b [N, H, W, C] float32 (tf.image.ssim, the same float32 ops).

    With means mu, variances s^2 and covariance s_ab under a Gaussian window (size
    filter_size <= H, W, sigma filter_sigma; valid positions only), per channel,
        SSIM = mean over positions of l * cs,  l = (2 mu_a mu_b + c1) / (mu_a^2 + mu_b^2 + c1),
        cs = (2 s_ab + c2) / (s_a^2 + s_b^2 + c2),  c1 = (0.01 max_val)^2, c2 = (0.03 max_val)^2,
    then the mean over channels.
    """
    c1 = np.square(np.float32(0.01) * np.float32(max_val))
    c2 = np.square(np.float32(0.03) * np.float32(max_val))
    coords = ops.cast(ops.arange(filter_size), "float32") - np.float32((filter_size - 1) / 2.0)
    g = ops.square(coords) * (np.float32(-0.5) / np.square(np.float32(filter_sigma)))  # [S]
    g = ops.reshape(g, (1, -1)) + ops.reshape(g, (-1, 1))  # [S, S]
    window = ops.reshape(ops.softmax(ops.reshape(g, (1, -1)), axis=-1), (filter_size,) * 2)
    kernel = ops.tile(window[:, :, None, None], (1, 1, int(a.shape[-1]), 1))  # [S, S, C, 1]

    def mean(x):  # the window's weighted mean at every valid position
        return ops.depthwise_conv(x, kernel, strides=1, padding="valid")

    mean_a, mean_b = mean(a), mean(b)
    num0 = mean_a * mean_b * 2.0
    den0 = ops.square(mean_a) + ops.square(mean_b)
    luminance = (num0 + c1) / (den0 + c1)
    num1 = mean(a * b) * 2.0
    den1 = mean(ops.square(a) + ops.square(b))
    cs = (num1 - num0 + c2) / (den1 - den0 + c2)
    per_channel = ops.mean(luminance * cs, axis=(-3, -2))  # [N, C]
    return ops.mean(per_channel, axis=-1)


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
