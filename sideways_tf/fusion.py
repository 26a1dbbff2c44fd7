"""Skip integrators C_i: fuse a unit's sources into its input u_i.

    u_i[t] = C_i({ a_j[t-1-d_ji] : j in S(i) })                  (algorithm.md s.3)

Every fusion takes the list [primary, *others] (the primary is the nearest
source, the chain edge) and returns a tensor with the primary's shape. Sources of
another shape are projected by a layer owned by the fusion, and so by the
receiving unit: a strided 1x1 convolution for feature maps (StridedPointwiseConv) ([B, H, W, C]), a
dense layer for vectors ([B, C]), pooling first when a map meets a vector.
"""

from __future__ import annotations

import keras
from keras import ops


def strided_shape(input_shape, stride: int, channels: int) -> tuple:
    """[B, H, W, C] -> [B, ceil(H / s), ceil(W / s), channels] (None stays None)."""
    b, h, w, _ = input_shape
    return (
        b,
        None if h is None else -(-h // stride),
        None if w is None else -(-w // stride),
        channels,
    )


@keras.saving.register_keras_serializable(package="sideways_tf")
class StridedPointwiseConv(keras.layers.Conv2D):
    """Conv2D(filters, 1, strides=s) computed as x[:, ::s, ::s] then a stride-1 1x1 conv.

    The same map, weights and variable paths as the strided 1x1 convolution. Why:
    TF 2.21's oneDNN CPU kernel for the gradient of a strided 1x1 convolution
    corrupts the heap at odd batch sizes (B = 1, 3, 5: the process aborts with
    "free(): invalid pointer"; oneDNN's "1x1 convolution backward_weights writes past
    the rtus workspace"). Subsampling first never runs that kernel.
    """

    def __init__(self, filters: int, stride: int = 1, **kwargs):
        kwargs.pop("kernel_size", None)
        kwargs.pop("strides", None)
        super().__init__(filters, 1, strides=1, **kwargs)
        self.stride = int(stride)

    def call(self, inputs):
        s = self.stride
        return super().call(inputs[:, ::s, ::s, :] if s > 1 else inputs)

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.stride, self.filters)

    def get_config(self):
        return {**super().get_config(), "stride": self.stride}


def _projection(source_shape, target_shape, name: str) -> keras.Layer | None:
    """Returns the layer mapping [B, *source] to [B, *target], or None if equal."""
    source_shape, target_shape = tuple(source_shape[1:]), tuple(target_shape[1:])
    if source_shape == target_shape:
        return None
    if len(target_shape) == 1:
        layers = [keras.layers.GlobalAveragePooling2D()] if len(source_shape) == 3 else []
        if len(source_shape) not in (1, 3):
            raise ValueError(
                f"{name}: cannot project a source of shape {source_shape} to a vector."
            )
        return keras.Sequential([*layers, keras.layers.Dense(target_shape[0])], name=name)
    if len(target_shape) == 3 and len(source_shape) == 3:
        (hs, ws, _), (ht, wt, ct) = source_shape, target_shape
        if hs % ht or ws % wt or hs // ht != ws // wt:
            raise ValueError(
                f"{name}: a skip source of spatial size {hs}x{ws} cannot be strided to the "
                f"receiver's {ht}x{wt} (needs the same integer factor on both axes). Pick "
                "a skip distance between units of compatible resolution, or add a unit "
                "that resamples."
            )
        return StridedPointwiseConv(ct, stride=hs // ht, use_bias=False, name=name)
    raise ValueError(
        f"{name}: cannot fuse a source of shape {source_shape} into a receiver expecting "
        f"{target_shape}; skip edges need both to be feature maps [H, W, C] or vectors [C]."
    )


class Fusion(keras.Layer):
    """Base class: builds one projection per non-primary source that needs one."""

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        self.projections = [None] + [
            _projection(s, shapes[0], name=f"proj_{k}") for k, s in enumerate(shapes[1:], start=1)
        ]
        for proj, shape in zip(self.projections, shapes):
            if proj is not None:
                proj.build(shape)

    def _projected(self, inputs):
        return [x if p is None else p(x) for p, x in zip(self.projections, inputs)]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])


@keras.saving.register_keras_serializable(package="sideways_tf")
class SumFusion(Fusion):
    """Residual fusion: u = a_primary + sum_k P_k(a_k)."""

    def call(self, inputs):
        xs = self._projected(inputs)
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


@keras.saving.register_keras_serializable(package="sideways_tf")
class ConcatFusion(Fusion):
    """u = W [a_primary, P_k(a_k), ...]: concatenation on channels, then a 1x1 conv."""

    def build(self, input_shape):
        super().build(input_shape)
        shapes = [tuple(s) for s in input_shape]
        channels = shapes[0][-1]
        # Projected sources keep their own channel count when only the stride differs.
        concat_channels = sum(
            (shapes[0][-1] if p is not None else s[-1]) for p, s in zip(self.projections, shapes)
        )
        if len(shapes[0]) == 4:
            self.mix = keras.layers.Conv2D(channels, 1, name="mix")
        else:
            self.mix = keras.layers.Dense(channels, name="mix")
        self.mix.build(shapes[0][:-1] + (concat_channels,))

    def call(self, inputs):
        return self.mix(ops.concatenate(self._projected(inputs), axis=-1))


@keras.saving.register_keras_serializable(package="sideways_tf")
class GatedFusion(Fusion):
    """u = a_p + sum_k sigmoid(G_k [a_p, P_k(a_k)]) * P_k(a_k): a learned, input-dependent gate.

    Gates start half open (zero kernel, zero bias), so an untrained gated fusion is
    the residual sum with the skips scaled by 1/2.
    """

    def build(self, input_shape):
        super().build(input_shape)
        shapes = [tuple(s) for s in input_shape]
        channels = shapes[0][-1]
        self.gates = []
        for k in range(1, len(shapes)):
            if len(shapes[0]) == 4:
                gate = keras.layers.Conv2D(
                    channels, 1, kernel_initializer="zeros", name=f"gate_{k}"
                )
            else:
                gate = keras.layers.Dense(channels, kernel_initializer="zeros", name=f"gate_{k}")
            gate.build(shapes[0][:-1] + (2 * channels,))
            self.gates.append(gate)

    def call(self, inputs):
        xs = self._projected(inputs)
        out = xs[0]
        for gate, x in zip(self.gates, xs[1:]):
            out = out + ops.sigmoid(gate(ops.concatenate([xs[0], x], axis=-1))) * x
        return out


FUSIONS = {"sum": SumFusion, "concat": ConcatFusion, "gated": GatedFusion}


def make_fusion(kind: str | Fusion, name: str = "fusion") -> Fusion:
    """Returns a fusion layer from its name ('sum', 'concat', 'gated') or passes one through."""
    if isinstance(kind, Fusion):
        return kind
    if kind not in FUSIONS:
        raise ValueError(f"Unknown fusion {kind!r}; choose one of {sorted(FUSIONS)}.")
    return FUSIONS[kind](name=name)
