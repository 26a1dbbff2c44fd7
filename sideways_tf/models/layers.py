"""What every model family shares: the norm, the task heads, argument checks.

Heads (a factory's `head` argument):
  "classes"      global average pool + Dense logits, softmax cross-entropy per clip;
  "frames"       FrameDecoder back to the frame size, pixel loss against a future
                 frame (sideways_tf.tasks.frame_loss: norm and horizon in gin); the
                 decoder paints the whole frame;
  "frame_delta"  the same decoder predicts the change from the last frame seen:
                 x^[t - lag + h] = x[t - lag] + D(a_L[t], x[t - lag]), zero-initialised
                 last conv (FrameDecoder(residual=True)), so a fresh
                 model predicts exactly the copy-last baseline (benchmarks/
                 future_study.py pins it: its change comes from the features);
  "frame_motion" the change moves the last frame's pixels: D = s (sum_k w_k S_k x - x)
                 over the shifts S_k of x = x[t - lag] by up to MOTION_RADIUS pixels,
                 softmax weights w and an amount s = tanh(.) read off a_L[t],
                 x[t - lag] and the last change seen, x[t - lag] - x[t - lag - 1]
                 (FrameDecoder(residual=True, motion_radius=2, previous_frame=True));
                 also exactly copy-last when fresh. A moved pixel is a pixel of the
                 frame, whatever the footage, so it carries to videos the model never
                 saw (the future-frame configs ship it; README, "Future-frame
                 prediction" and "Real footage").

Normalisation is GroupNorm, per frame and per example, never over the batch: in
a pipeline each unit holds a different frame at every step, and the VJP of step
t is taken at the unit's current input, so batch statistics (and the running
averages evaluation would use) would couple the clips of a batch and the frames
of a clip in ways the gradient rules do not model. GroupNorm behaves the same
in training and evaluation and carries no state besides the unit's buffers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gin
import keras
from keras import ops

from sideways_tf import tasks

HEADS = ("classes", "frames", "frame_delta", "frame_motion")
FRAME_HEADS = ("frames", "frame_delta", "frame_motion")  # heads that predict a frame
MOTION_RADIUS = 2  # head "frame_motion": pixels move by up to 2 px per prediction


def scaled_width(width: int, width_multiplier: float) -> int:
    """Channels of a layer at this width multiplier (at least 1)."""
    return max(1, round(width * width_multiplier))


def group_norm(channels: int, name: str) -> keras.layers.GroupNormalization:
    """GroupNorm with at most 32 groups and at least 4 channels per group.

    Groups of 4 or more channels keep the statistics meaningful on the 1x1 maps
    of small frames, where one channel per group would normalise to zero.
    """
    groups = math.gcd(channels, max(1, min(32, channels // 4)))
    return keras.layers.GroupNormalization(groups=groups, name=name)


def classification_head(num_classes: int) -> keras.Sequential:
    """Global average pool of the top unit's map [B, H, W, C], then Dense logits [B, classes]."""
    return keras.Sequential(
        [
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(num_classes, name="logits"),
        ],
        name="head",
    )


@keras.saving.register_keras_serializable(package="sideways_tf")
class FrameDecoder(keras.layers.Layer):
    """The future-frame head: top unit's map a_L[t] [B, h, w, c] -> a frame [B, H, W, C].

    Stages of nearest x2 upsampling + conv3x3(width) + ReLU until the map is as
    large as the frame (a bilinear resize when H/h is not a power of two), then
    a linear conv3x3 to C channels (frames are in [-1, 1]); call that D(a_L[t]).

    residual=False: the prediction is D(a_L[t]) (the decoder paints the frame).
    residual=True:  the prediction is x[t - lag] + D(a_L[t], x[t - lag]), the last
      frame the top output has seen plus a predicted change; the upsampled features
      and x[t - lag] are concatenated into a conv3x3(width) + ReLU ("fuse") before the
      last conv, so the change can follow what the frame holds. call(a, last_frame=
      x[t - lag]), which the Pipeline gives it from a delay line (Pipeline.head_frame).
      The last conv starts at zero, so a fresh model predicts exactly x[t - lag]
      (copy-last), and the sum is taken in float32 whatever the compute dtype.
    motion_radius=r > 0: D = s (sum_k w_k S_k x - x), x = x[t - lag], over the last frame's
      shifts S_k by (dy, dx), |dy|, |dx| <= r, (0, 0) excluded (edges repeat), with
      w = softmax of N = (2r + 1)^2 - 1 channels of the last conv (where each pixel comes
      from) and s = tanh of one more (how far towards them; 0 when fresh, from the zero
      conv). With s in [0, 1] the prediction is a convex mix of the last frame's pixels
      around each pixel: the change moves pixels, it never paints new values.
    previous_frame=True: the weights also read the last change seen, x[t - lag] -
      x[t - lag - 1] (call(..., previous_frame=x[t - lag - 1]); the Pipeline's head line
      is one frame longer): the motion the frames show, whatever the features carry.
    """

    def __init__(
        self,
        frame_shape,
        width: int = 32,
        residual: bool = False,
        motion_radius: int = 0,
        previous_frame: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("name", "head")
        if motion_radius and not residual:
            raise ValueError(
                f"FrameDecoder(motion_radius={motion_radius}) moves the last frame seen and "
                "needs residual=True (head='frame_motion')."
            )
        if previous_frame and not residual:
            raise ValueError(
                "FrameDecoder(previous_frame=True) reads x[t - lag - 1] next to the last frame "
                "seen and needs residual=True (head='frame_motion')."
            )
        if residual:
            # last_frame stays float32 (the sublayers still cast their own inputs).
            kwargs["autocast"] = False
        super().__init__(**kwargs)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.width = int(width)
        self.residual = bool(residual)
        self.motion_radius = int(motion_radius)
        self.previous_frame = bool(previous_frame)
        r = self.motion_radius
        # (dy, dx) of the shifted copies of x[t - lag] the change mixes, the centre excluded.
        self.offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy or dx]

    @property
    def reads_last_frame(self) -> bool:
        return self.residual

    @property
    def reads_previous_frame(self) -> bool:
        return self.previous_frame

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"FrameDecoder needs the top unit's spatial map [B, h, w, c], got "
                f"{tuple(input_shape)}: the top unit must not pool (head='frames' keeps the map)."
            )
        (h, w), (height, width, channels) = input_shape[1:3], self.frame_shape
        self.stages = []
        while h < height or w < width:
            n = len(self.stages) + 1
            self.stages += [
                keras.layers.UpSampling2D(2, name=f"up{n}"),
                keras.layers.Conv2D(self.width, 3, padding="same", name=f"conv{n}"),
                keras.layers.ReLU(name=f"relu{n}"),
            ]
            h, w = 2 * h, 2 * w
        if (h, w) != (height, width):
            self.stages.append(keras.layers.Resizing(height, width, name="resize"))
        shape = tuple(input_shape)
        for layer in self.stages:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.fuse = None
        if self.residual:
            # The change is read off the features and the last frame together, so that it
            # can move what the frame holds (an edge, a texture), not only paint over it.
            self.fuse = keras.layers.Conv2D(
                self.width, 3, padding="same", activation="relu", name="fuse"
            )
            frames_in = channels * (2 if self.previous_frame else 1)
            self.fuse.build((*shape[:-1], shape[-1] + frames_in))
            shape = (*shape[:-1], self.width)
        init = "zeros" if self.residual else "glorot_uniform"  # residual: D = 0 at the start
        self.frame = keras.layers.Conv2D(
            len(self.offsets) + 1 if self.offsets else channels,
            3,
            padding="same",
            kernel_initializer=init,
            name="frame",
        )
        self.frame.build(shape)

    def call(self, x, last_frame=None, previous_frame=None):
        """x: a_L[t] [B, h, w, c]; last_frame: x[t - lag] [B, H, W, C] (residual only);
        previous_frame: x[t - lag - 1] [B, H, W, C] (previous_frame=True only)."""
        for layer in self.stages:
            x = layer(x)
        if not self.residual:
            return self.frame(x)
        if last_frame is None:
            raise ValueError(
                "FrameDecoder(residual=True) predicts x[t - lag] + D(a_L[t], x[t - lag]) and "
                "needs last_frame=x[t - lag] [B, H, W, C]; inside a Pipeline it is given."
            )
        last = ops.cast(last_frame, "float32")
        seen = [last]
        if self.previous_frame:
            if previous_frame is None:
                raise ValueError(
                    "FrameDecoder(previous_frame=True) also needs previous_frame=x[t - lag - 1] "
                    "[B, H, W, C]; inside a Pipeline it is given."
                )
            seen.append(last - ops.cast(previous_frame, "float32"))  # the last change seen
        x = self.fuse(ops.concatenate([x] + [ops.cast(f, x.dtype) for f in seen], axis=-1))
        if not self.motion_radius:
            return last + ops.cast(self.frame(x), "float32")
        out = ops.cast(self.frame(x), "float32")  # [B, H, W, N + 1]
        weights = ops.softmax(out[..., :-1], axis=-1)  # [B, H, W, N]: where pixels come from
        amount = ops.tanh(out[..., -1:])  # [B, H, W, 1]: how far towards them, 0 when fresh
        mix = ops.sum(weights[..., None] * self._differences(last), axis=3)  # sum_k w_k S_k x - x
        return last + amount * mix

    def _differences(self, frame):
        """S_k x - x for every offset k: [B, H, W, C] -> [B, H, W, N, C] (edge pixels repeat)."""
        r = self.motion_radius
        height, width = self.frame_shape[:2]
        padded = ops.pad(frame, [[0, 0], [r, r], [r, r], [0, 0]], mode="symmetric")
        shifted = [
            padded[:, r + dy : r + dy + height, r + dx : r + dx + width, :]
            for dy, dx in self.offsets
        ]
        return ops.stack(shifted, axis=3) - frame[:, :, :, None, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.frame_shape)

    def get_config(self):
        config = {**super().get_config(), "frame_shape": self.frame_shape, "width": self.width}
        config.update(
            residual=self.residual,
            motion_radius=self.motion_radius,
            previous_frame=self.previous_frame,
        )
        config.pop("autocast", None)
        return config


def task_head(head: str, num_classes, frame_shape, model: str):
    """(head layer, loss) for head "classes" (logits), "frames" or "frame_delta" (future
    frames: painted whole, or as a change from the last frame seen)."""
    if head == "classes":
        return classification_head(int(num_classes)), "sparse_softmax_cross_entropy"
    if head in FRAME_HEADS:
        decoder = FrameDecoder(
            frame_shape,
            residual=head != "frames",
            motion_radius=MOTION_RADIUS if head == "frame_motion" else 0,
            previous_frame=head == "frame_motion",
        )
        return decoder, tasks.frame_loss()
    raise ValueError(f"{model}: head = {head!r}; choose one of {list(HEADS)}.")


def check_arguments(
    model: str, batch_size, num_classes, width_multiplier, head: str = "classes"
) -> None:
    """Raises on a missing or non-positive batch size, class count or width multiplier."""
    if head not in HEADS:
        raise ValueError(f"{model}: head = {head!r}; choose one of {list(HEADS)}.")
    if head in FRAME_HEADS:
        num_classes = 1  # (no classes to predict)
    if batch_size is gin.REQUIRED or num_classes in (gin.REQUIRED, None):
        raise ValueError(
            f"{model} needs batch_size and num_classes (train() passes both; set "
            "train.num_classes), or head='frame_delta' (or 'frames') to predict frames."
        )
    if int(batch_size) < 1 or int(num_classes) < 1:
        raise ValueError(
            f"{model}: batch_size and num_classes must be >= 1, got {batch_size} and {num_classes}."
        )
    if not width_multiplier > 0:
        raise ValueError(
            f"{model}: width_multiplier must be > 0 (1.0 is the standard width, 0.5 half); "
            f"got {width_multiplier}."
        )


def check_frame_shape(model: str, frame_shape, stride: int) -> tuple[int, ...]:
    """Returns frame_shape as ints; raises unless it is [H, W, C] with H, W multiples of stride."""
    if frame_shape is gin.REQUIRED or not isinstance(frame_shape, Sequence):
        raise ValueError(f"{model}: give frame_shape as (height, width, channels).")
    frame_shape = tuple(int(s) for s in frame_shape)
    if len(frame_shape) != 3:
        raise ValueError(
            f"{model}: frame_shape must be (height, width, channels), got {frame_shape}."
        )
    h, w, _ = frame_shape
    if h % stride or w % stride:
        good = max(stride, round(h / stride) * stride)
        raise ValueError(
            f"{model}: frame height and width must be multiples of {stride} (the network "
            f"halves them {stride.bit_length() - 1} times and skip edges need exact "
            f"factors); got {h}x{w}. Resize or crop the clips to a multiple, e.g. "
            f"dmvr_dataset.image_size = {good}."
        )
    return frame_shape
