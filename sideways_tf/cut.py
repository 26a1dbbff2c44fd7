"""Your own Keras model as Sideways units: cut a functional model, make its norms safe.

    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3))
    base = sw.replace_batch_norm(base)                 # BatchNorm -> GroupNorm, affine kept
    units = sw.units_from_model(base, num_units=4)     # or cut_after=["block_3_add", ...]
    pipeline = sw.Pipeline(units, head=..., batch_size=B, frame_shape=(32, 32, 3))

A cut after layer c is valid when c's output is the only tensor that crosses it:
no layer after c reads a tensor made before c (a residual branch would cross,
and a unit passes one activation a_i to the next). Unit k is the sub-model from
cut k-1's tensor to cut k's (keras.Model over the base model's own layers, so
the parameters are shared with it). With num_units=N the N-1 cuts are chosen
among the valid ones to balance each unit's forward + VJP FLOPs (sideways_tf.costs:
Sideways' step time tends to the slowest unit's).

Normalisation inside a unit must not use batch statistics: a unit sees B clips
of one frame per step, never B*K frames, and the VJP is taken at the unit's
current input (algorithm.md s.3), so BatchNormalization couples the clips of a
batch in ways the gradient rules do not model (measured: ResNet50 at B=2 gave
gradient norms of 1e8-1e10). `units_from_model` refuses it, naming the layer;
`replace_batch_norm` is the fix (GroupNormalization, or LayerNormalization, with
BatchNorm's gamma and beta); `allow_batch_norm=True` is the opt-out for those
who know what they do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from sideways_tf.units import Unit


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _producers(model: keras.Model) -> list[list[int]]:
    """For each layer of a functional model (in order), the indices of the layers it reads."""
    made_by = {}
    for k, layer in enumerate(model.layers):
        for t in _as_list(layer.output):
            made_by[id(t)] = k
    reads = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            reads.append([])
            continue
        try:
            inputs = _as_list(layer.input)
        except (AttributeError, ValueError) as e:
            raise ValueError(
                f"Layer {layer.name!r} is called more than once (or not at all) in the model; "
                "units_from_model cuts functional models whose layers are each called once."
            ) from e
        reads.append([made_by[id(t)] for t in inputs])
    return reads


def valid_cuts(model: keras.Model) -> list[str]:
    """Names of the layers after which the model may be cut (one tensor crosses), in order."""
    _check_functional(model)
    reads = _producers(model)
    last = len(model.layers) - 1
    cuts = []
    for c in range(1, last):
        crossing = {j for k in range(c + 1, len(model.layers)) for j in reads[k] if j <= c}
        if crossing == {c}:
            cuts.append(model.layers[c].name)
    return cuts


def _check_functional(model):
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or not model.inputs:
        raise TypeError(
            f"units_from_model cuts a functional keras.Model (keras.applications, or "
            f"keras.Model(inputs, outputs)); got {type(model).__name__}. A Sequential model: "
            "give it an input first (keras.Input) so that it is functional."
        )
    if len(model.inputs) != 1 or len(_as_list(model.outputs)) != 1:
        raise ValueError(
            f"units_from_model needs one input and one output; {model.name!r} has "
            f"{len(model.inputs)} inputs and {len(_as_list(model.outputs))} outputs."
        )


def _crossing_layers(model, c: int) -> list[str]:
    reads = _producers(model)
    return sorted(
        {
            f"{model.layers[j].name} -> {model.layers[k].name}"
            for k in range(c + 1, len(model.layers))
            for j in reads[k]
            if j < c
        }
    )


def batch_norm_layers(layer) -> list[str]:
    """Paths of the BatchNormalization layers inside a layer (recursively)."""
    found = [layer.name] if isinstance(layer, keras.layers.BatchNormalization) else []
    for sub in getattr(layer, "layers", []):  # models and Sequential blocks, in order
        found += batch_norm_layers(sub)
    return found


def units_from_model(
    model: keras.Model,
    cut_after: Sequence[str] | None = None,
    num_units: int | None = None,
    allow_batch_norm: bool = False,
    fusion: str = "concat",
) -> list[Unit]:
    """Cuts a functional Keras model into Sideways units (see the module docstring).

    cut_after: the layer names after which to cut (L-1 names give L units); or
    num_units: L, with cuts balancing forward + VJP FLOPs among the valid ones.
    allow_batch_norm: keep BatchNormalization inside units (the opt-out).
    fusion: the skip integrator of each unit, for skip topologies.
    """
    _check_functional(model)
    if (cut_after is None) == (num_units is None):
        raise ValueError("units_from_model takes cut_after=[layer names] or num_units=N.")
    bn = batch_norm_layers(model)
    if bn and not allow_batch_norm:
        raise ValueError(
            f"{model.name!r} holds BatchNormalization ({', '.join(bn[:3])}"
            f"{', ...' if len(bn) > 3 else ''}; {len(bn)} layers): inside a unit it normalises "
            "over the B clips of one step, never B*K frames, and couples clips in ways the "
            "gradient rules do not model (gradients blow up). Replace it first: "
            "model = sw.replace_batch_norm(model) (GroupNorm, affine weights kept), or pass "
            "allow_batch_norm=True if you know what you do."
        )
    names = [layer.name for layer in model.layers]
    valid = valid_cuts(model)
    if cut_after is None:
        if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1:
            raise ValueError(f"num_units must be a positive integer, got {num_units!r}.")
        if num_units - 1 > len(valid):
            raise ValueError(
                f"{model.name!r} has {len(valid)} valid cuts (one tensor crossing), so at most "
                f"{len(valid) + 1} units; asked for num_units={num_units}."
            )
        cut_after = _balanced_cuts(model, valid, num_units)
    for name in cut_after:
        if name not in names:
            raise ValueError(
                f"cut_after names {name!r}, which is not a layer of {model.name!r}; valid cuts "
                f"are e.g. {valid[:6]}."
            )
        if name not in valid:
            c = names.index(name)
            before = [v for v in valid if names.index(v) < c]
            after = [v for v in valid if names.index(v) > c]
            nearest = ", ".join(repr(v) for v in (before[-1:] + after[:1]))
            raise ValueError(
                f"Cannot cut {model.name!r} after {name!r}: a residual branch crosses the cut "
                f"({'; '.join(_crossing_layers(model, c)[:3])}), and a unit passes one "
                f"activation to the next. The nearest valid cuts: {nearest}."
            )
    order = [names.index(n) for n in cut_after]
    if order != sorted(order) or len(set(order)) != len(order):
        raise ValueError(f"cut_after must list layers in the model's order, got {list(cut_after)}.")
    ends = [model.layers[k].output for k in order] + [model.outputs[0]]
    starts = [model.inputs[0]] + ends[:-1]
    units = []
    for k, (start, end) in enumerate(zip(starts, ends), start=1):
        block = keras.Model(start, end, name=f"{model.name}_part{k}")
        units.append(Unit(block, fusion=fusion, name=f"unit{k}"))
    return units


def _segment_flops(model, bounds: list[int]) -> list[float]:
    """Forward + VJP FLOPs of the sub-models between consecutive layer indices, batch 1."""
    from sideways_tf import costs

    flops = []
    tensors = (
        [model.inputs[0]] + [model.layers[k].output for k in bounds[1:-1]] + [model.outputs[0]]
    )
    for start, end in zip(tensors[:-1], tensors[1:]):
        block = keras.Model(start, end)
        spec = tf.TensorSpec((1, *start.shape[1:]), tf.float32)

        def step(x, block=block):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = block(x, training=True)
            return tape.gradient(y, [x] + block.trainable_variables)

        graph = tf.function(step).get_concrete_function(spec).graph
        flops.append(costs.graph_flops(graph))
    return flops


def _balanced_cuts(model, valid: list[str], num_units: int) -> list[str]:
    """num_units - 1 valid cuts minimising the largest unit's forward + VJP FLOPs."""
    if num_units == 1:
        return []
    names = [layer.name for layer in model.layers]
    points = [names.index(v) for v in valid]
    bounds = [0] + points + [len(model.layers) - 1]
    seg = _segment_flops(model, bounds)  # cost between consecutive candidate cuts
    n = len(seg)
    prefix = np.concatenate([[0.0], np.cumsum(seg)])
    # best[b][i]: smallest max load cutting the first i segments into b units.
    best = [[math.inf] * (n + 1) for _ in range(num_units + 1)]
    choice = [[0] * (n + 1) for _ in range(num_units + 1)]
    best[0][0] = 0.0
    for b in range(1, num_units + 1):
        for i in range(b, n + 1):
            for j in range(b - 1, i):
                load = max(best[b - 1][j], prefix[i] - prefix[j])
                if load < best[b][i]:
                    best[b][i], choice[b][i] = load, j
    cuts, i = [], n
    for b in range(num_units, 1, -1):
        i = choice[b][i]
        cuts.append(valid[i - 1])
    return list(reversed(cuts))


@keras.saving.register_keras_serializable(package="sideways_tf")
class GroupNorm(keras.layers.GroupNormalization):
    """GroupNormalization that takes BatchNormalization's call arguments (for cloning)."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs)


@keras.saving.register_keras_serializable(package="sideways_tf")
class LayerNorm(keras.layers.LayerNormalization):
    """LayerNormalization that takes BatchNormalization's call arguments (for cloning)."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs)


def replace_batch_norm(
    model: keras.Model, norm: str = "group", max_groups: int = 32
) -> keras.Model:
    """A copy of a functional model with every BatchNormalization replaced, gamma and beta kept.

    norm: "group" (GroupNormalization with at most max_groups groups of >= 4 channels,
    per frame and per example) or "layer" (LayerNormalization over channels). Other
    layers keep their weights. The moving statistics are dropped: the new norms
    behave alike in training and evaluation.
    """
    if norm not in ("group", "layer"):
        raise ValueError(f"replace_batch_norm: norm = {norm!r}; use 'group' or 'layer'.")
    _check_functional(model)

    def clone(layer):
        if not isinstance(layer, keras.layers.BatchNormalization):
            return layer.__class__.from_config(layer.get_config())
        if norm == "layer":
            return keras.layers.LayerNormalization(
                axis=layer.axis, epsilon=layer.epsilon, name=layer.name
            )
        channels = int(layer.gamma.shape[0]) if layer.gamma is not None else None
        groups = math.gcd(channels, max(1, min(max_groups, channels // 4)))
        return GroupNorm(groups=groups, axis=layer.axis, epsilon=layer.epsilon, name=layer.name)

    copy = keras.models.clone_model(model, clone_function=clone)
    for old, new in zip(model.layers, copy.layers):
        if isinstance(old, keras.layers.BatchNormalization):
            if old.scale:
                new.gamma.assign(old.gamma)
            if old.center:
                new.beta.assign(old.beta)
        elif old.weights:
            new.set_weights(old.get_weights())
    return copy


__all__ = ["batch_norm_layers", "replace_batch_norm", "units_from_model", "valid_cuts"]
