"""The future-frame heads: the top unit's map a_L[t] -> a predicted frame.

frame_decoder(decoder, frame_shape)   the head FutureFrames.decoder names (DECODERS):
  "whole"    FrameDecoder()                       paints the whole frame;
  "delta"    FrameDecoder(residual=True)          x^[t - lag + h] = x[t - lag] +
                                                  D(a_L[t], x[t - lag]), zero-initialised
                                                  last conv: a fresh model is copy-last;
  "motion"   FrameDecoder(residual=True, motion_radius=MOTION_RADIUS, previous_frame=True)
             D = s (sum_k w_k S_k x - x) over the shifts S_k of x = x[t - lag], with
             softmax weights w and an amount s = tanh(.) in (-1, 1) read off a_L[t],
             x[t - lag] and the last change seen, x[t - lag] - x[t - lag - 1]; also
             copy-last when fresh. A moved pixel is a pixel of the frame, whatever the
             footage (README, "Future-frame prediction").
  "gated"    "motion" with the amount a gate g = clip(tanh(.), 0, 1) in [0, 1]: every
             prediction is a convex mix of the last frame's pixels (gate="learned").
  "checked"  "gated" times a check on the frames seen (gate="checked"): the same motion
             applied to x[t - lag - 1] must explain x[t - lag] better than no motion does,
             or the head copies the last frame there. Moves pixels only where the footage
             just showed that motion, so it falls back to copy-last on footage whose motion
             it cannot follow (README, "Future frames of footage never seen").
"""

from __future__ import annotations

import keras
from keras import ops

MOTION_RADIUS = 2  # decoders that move pixels: by up to 2 px per prediction
GATES = (None, "learned", "checked")  # FrameDecoder(gate=...): how far pixels move, below
CHECK_EPS = 1e-4  # the check's floor on the change seen (frames in [-1, 1]: ~ (0.01)^2)

# FutureFrames.decoder -> FrameDecoder's arguments beyond frame_shape.
DECODERS = {
    "motion": dict(residual=True, motion_radius=MOTION_RADIUS, previous_frame=True),
    "delta": dict(residual=True),
    "whole": dict(),
    "gated": dict(residual=True, motion_radius=MOTION_RADIUS, previous_frame=True, gate="learned"),
    "checked": dict(
        residual=True, motion_radius=MOTION_RADIUS, previous_frame=True, gate="checked"
    ),
}


def frame_decoder(decoder: str, frame_shape) -> FrameDecoder:
    """The FrameDecoder that FutureFrames.decoder names (a key of DECODERS)."""
    if decoder not in DECODERS:
        raise ValueError(
            f"FutureFrames.decoder = {decoder!r} is not a decoder; choose one of "
            f"{tuple(DECODERS)} (gin: FutureFrames.decoder = 'checked')."
        )
    return FrameDecoder(frame_shape, **DECODERS[decoder])


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
      x[t - lag]), which the Pipeline gives it through a delayed edge (Pipeline.head_edges).
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
    gate (motion_radius > 0): how far pixels move, x^ = x + g (sum_k w_k S_k x - x):
      None       g = s = tanh(z) in (-1, 1) (decoder "motion"; s < 0 pushes a pixel away
                 from its neighbours, so the mix is convex only for s >= 0);
      "learned"  g = clip(tanh(z), 0, 1) in [0, 1]: always a convex mix (decoder "gated");
      "checked"  g = c g', g' = clip(tanh(z), 0, 1) and the check c in [0, 1] (decoder
                 "checked"; needs previous_frame=True): the same motion applied to the
                 frame before, x' = x[t - lag - 1], B(a) = x' + a (sum_k w_k S_k x' - x'),
                 is what it would have made of x'; per pixel, over the (2r + 1)^2 window P
                 around it,
                   e(a) = mean_P mean_C (B(a) - x)^2   (that motion's error on the last step)
                   e_c = e(0) = mean_P mean_C (x' - x)^2     (copy-last's)
                   c = clip((e_c - min(e(g'), e(1))) / (e_c + CHECK_EPS), 0, 1).
                 e(a) is convex in a, so e(1) < e_c gives e(g') <= e_c for every g' in
                 [0, 1]: wherever c > 0 the motion the head applies, x' moved by g',
                 would have done no worse than copy-last on the last frame pair seen (the
                 applied amount is checked so that a fraction of a pixel passes; the full
                 step too, so that a fresh gate, g' = 0, has a check to learn from). Where
                 c = 0 the prediction is exactly x[t - lag]; so too where nothing changed
                 (e_c = 0: a still region, a clip's first step).
      z is the last conv's extra channel, zero when fresh: g = 0, exactly copy-last.
      (clip passes the gradient at its bounds, so a fresh gate learns from z = 0.)
    """

    def __init__(
        self,
        frame_shape,
        width: int = 32,
        residual: bool = False,
        motion_radius: int = 0,
        previous_frame: bool = False,
        gate: str | None = None,
        **kwargs,
    ):
        kwargs.setdefault("name", "head")
        if gate not in GATES:
            raise ValueError(
                f"FrameDecoder(gate={gate!r}); choose one of {GATES} (FutureFrames.decoder "
                "'motion', 'gated' or 'checked')."
            )
        if gate and not motion_radius:
            raise ValueError(
                f"FrameDecoder(gate={gate!r}) gates a motion and needs motion_radius > 0 "
                "(FutureFrames.decoder = 'gated' or 'checked')."
            )
        if gate == "checked" and not previous_frame:
            raise ValueError(
                "FrameDecoder(gate='checked') checks the motion on x[t - lag - 1] and needs "
                "previous_frame=True (FutureFrames.decoder = 'checked')."
            )
        if motion_radius and not residual:
            raise ValueError(
                f"FrameDecoder(motion_radius={motion_radius}) moves the last frame seen and "
                "needs residual=True (FutureFrames.decoder = 'motion')."
            )
        if previous_frame and not residual:
            raise ValueError(
                "FrameDecoder(previous_frame=True) reads x[t - lag - 1] next to the last frame "
                "seen and needs residual=True (FutureFrames.decoder = 'motion')."
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
        self.gate = gate
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
                f"{tuple(input_shape)}: the top unit must not pool (a future-frame task's model keeps the map)."
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
        if self.gate is None:
            return last + amount * mix
        gate = ops.clip(amount, 0.0, 1.0)  # [B, H, W, 1]
        if self.gate == "checked":
            previous = ops.cast(previous_frame, "float32")
            return last + self.check(weights, gate, last, previous) * gate * mix
        return last + gate * mix

    def check(self, weights, gate, last, previous):
        """c [B, H, W, 1] in [0, 1]: how much better the motion the head would apply,
        weights [B, H, W, N] moved by gate [B, H, W, 1], explains x = last from x' =
        previous (both [B, H, W, C]) than no motion does, over the (2r + 1)^2 window
        around each pixel (class docstring, gate="checked")."""
        change = ops.sum(weights[..., None] * self._differences(previous), axis=3)
        made = [previous + gate * change, previous + change, previous]  # B(g'), B(1), B(0)
        errors = ops.stack(  # [B, H, W, 3]: e(g'), e(1), e(0) = copy-last's, per pixel
            [ops.mean(ops.square(b - last), axis=-1) for b in made], axis=-1
        )
        window = 2 * self.motion_radius + 1
        errors = ops.average_pool(errors, window, strides=1, padding="same")  # window means
        motion = ops.minimum(errors[..., :1], errors[..., 1:2])
        copy = errors[..., 2:]
        return ops.clip((copy - motion) / (copy + CHECK_EPS), 0.0, 1.0)

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
        if self.gate:  # (absent for the older heads: their saved configs stay as they were)
            config["gate"] = self.gate
        config.pop("autocast", None)
        return config
