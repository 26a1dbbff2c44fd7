"""Your own Keras model as Sideways units: cut a Keras graph, make its norms safe.

    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3))
    base = sw.replace_batch_norm(base)                 # BatchNorm -> GroupNorm, affine kept
    units = sw.units_from_model(base, num_units=4)     # or cut_after=["block_3_add", ...]
    pipeline = sw.Pipeline(units, head=..., batch_size=B, frame_shape=(32, 32, 3))

The model is a functional keras.Model or a keras.Sequential with one input and one
output. Nested functional models and Sequential blocks are flattened: the graph
that is cut is the sequence of calls of its leaf layers (and Keras ops), each
read where Keras' own graph runs it, so a cut may fall inside a nested block; a
nested block's name also names the cut after its output. Any other layer (a
custom layer, a subclassed model) is a leaf: it stays whole in one unit.

A cut after call c is valid when c's output is the only tensor that crosses it:
no call after c reads a tensor made before c (a residual branch would cross,
and a unit passes one activation a_i to the next). Unit k is the sub-model from
cut k-1's tensor to cut k's (a keras.Model over the base model's own layers, so
the parameters are shared with it). With num_units=N the N-1 cuts are chosen
among the valid ones to balance each unit's forward + VJP FLOPs (Sideways' step time
tends to the slowest unit's), as TensorFlow's graph profiler counts them
(sideways_tf.costs) or, on Keras' JAX backend, XLA's cost analysis of the jitted VJP.

Normalisation inside a unit must not use batch statistics: a unit sees B clips
of one frame per step, never B*K frames, and the VJP is taken at the unit's
current input (algorithm.md s.3), so BatchNormalization couples the clips of a
batch in ways the gradient rules do not model (measured: ResNet50 at B=2 gave
gradient norms of 1e8-1e10). `Unit` refuses it, naming the layers, and
`units_from_model` before it cuts; `replace_batch_norm` is the fix
(GroupNormalization, or LayerNormalization, with BatchNorm's gamma and beta);
`allow_batch_norm=True` is the opt-out for those who know what they do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import keras
import numpy as np

from sideways_tf import backend
from sideways_tf.backend import tf  # (the graph profiler: TensorFlow, imported on first use)
from sideways_tf.units import Unit, batch_norm_layers, check_batch_norm


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _tensors(x) -> list:
    """The KerasTensors in a structure of call arguments (constants left out)."""
    return [t for t in keras.tree.flatten(x) if isinstance(t, keras.KerasTensor)]


class _Call(NamedTuple):
    """One call of a leaf layer (or Keras op) in the flattened graph."""

    name: str
    inputs: list  # the KerasTensors it reads
    outputs: list  # the KerasTensors it makes


class _Graph(NamedTuple):
    """A model flattened: its input x, its output, the calls between, in an order that
    runs (each call after the calls it reads), and each nested block's name with the
    index of the call that makes its output."""

    name: str
    input: keras.KerasTensor
    output: keras.KerasTensor
    calls: list
    blocks: dict


def _is_graph(layer) -> bool:
    """Whether Keras knows the layer's graph: a functional model or a Sequential."""
    return isinstance(layer, (keras.Function, keras.Sequential))


def _unbuilt_sequential(model) -> bool:
    """A keras.Sequential without an input shape yet (no Input, never built or called)."""
    return isinstance(model, keras.Sequential) and not model.built


def _check_model(model):
    if not isinstance(model, keras.Model) or not _is_graph(model):
        raise TypeError(
            "units_from_model cuts a Keras graph: a functional keras.Model "
            "(keras.Model(inputs, outputs), keras.applications) or a keras.Sequential; got "
            f"{type(model).__name__}, whose layers Keras does not see as a graph. Build it "
            "functionally, or make the units by hand: sw.Unit(block) for each block."
        )
    if _unbuilt_sequential(model):
        return
    inputs, outputs = model.inputs, _as_list(model.outputs)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"units_from_model needs one input and one output; {model.name!r} has "
            f"{len(inputs)} inputs and {len(outputs)} outputs."
        )


def _flatten(model: keras.Model) -> _Graph:
    """Calls every leaf layer of `model` once more, on a fresh input, nested blocks inlined.

    Keras runs the graph (clone_model with the layers themselves and a call_function), so
    every argument a layer was called with is kept; the new calls share the layers, and
    their weights, with the model.
    """
    calls, blocks, made_by, names = [], {}, {}, {}

    def call(layer, *args, **kwargs):
        if id(layer) in names:
            raise ValueError(
                f"Layer {layer.name!r} is called more than once in {model.name!r} (shared "
                "weights). A unit owns its parameters, so units_from_model needs each layer "
                "called once: give each call its own layer, or keep the calls inside one "
                "custom keras.Layer (a leaf, it stays whole in one unit)."
            )
        if layer.name in names.values():
            raise ValueError(
                f"Two layers of {model.name!r} (nested blocks flattened) are named "
                f"{layer.name!r}; cuts are named by layer: rename one (name=...)."
            )
        names[id(layer)] = layer.name
        if _is_graph(layer):
            extra = {k: v for k, v in kwargs.items() if k not in ("training", "mask")}
            if len(args) != 1 or extra:
                raise ValueError(
                    f"The nested model {layer.name!r} is called with "
                    f"{len(args)} positional arguments and {sorted(extra)}; units_from_model "
                    "flattens nested models called on their inputs alone: call it as "
                    f"{layer.name}(x), or make it a custom keras.Layer (it stays whole)."
                )
            if isinstance(layer, keras.Sequential):
                x = args[0]
                for sub in layer.layers:
                    x = call(sub, x)
                out = x
            else:
                if len(layer.outputs) != 1:
                    raise ValueError(
                        f"The nested model {layer.name!r} has {len(layer.outputs)} outputs; "
                        "units_from_model flattens nested models with one output: make it a "
                        "custom keras.Layer (it stays whole in one unit)."
                    )
                first = len(calls)
                keras.models.clone_model(
                    layer, input_tensors=args[0], clone_function=lambda op: op, call_function=call
                )
                # Keras runs the node of the block's output last (depth 0); the model it
                # returns holds copies of our tensors, so its output is read from our calls.
                out = calls[-1].outputs if len(calls) > first else _tensors(args[0])
                if len(out) != 1:
                    raise ValueError(
                        f"The nested model {layer.name!r} ends in a layer with {len(out)} "
                        "outputs; make the block a custom keras.Layer (it stays whole)."
                    )
                out = out[0]
            ends = _tensors(out)
            if len(ends) == 1 and id(ends[0]) in made_by:
                blocks[layer.name] = made_by[id(ends[0])]
            return out
        out = layer(*args, **kwargs)
        for t in _tensors(out):
            made_by[id(t)] = len(calls)
        calls.append(_Call(layer.name, _tensors((args, kwargs)), _tensors(out)))
        return out

    source = model.inputs[0]
    if isinstance(model, keras.Sequential):
        x = keras.Input(batch_shape=source.shape, dtype=source.dtype)
        output = x
        for layer in model.layers:
            output = call(layer, output)
    else:
        flat = keras.models.clone_model(model, clone_function=lambda op: op, call_function=call)
        x, output = flat.inputs[0], flat.outputs[0]
    return _Graph(model.name, x, output, calls, blocks)


def _sequential_layers(model: keras.Sequential, seen=None) -> list:
    """The leaf layers of a Sequential without an input shape, nested Sequentials inlined
    (without shapes, other nested models stay whole)."""
    seen = {} if seen is None else seen
    out = []
    for layer in model.layers:
        if id(layer) in seen or layer.name in seen.values():
            raise ValueError(
                f"{model.name!r} holds the layer {layer.name!r} twice (or two layers of that "
                "name); units_from_model needs each layer once: give each place its own "
                "layer (name=...)."
            )
        seen[id(layer)] = layer.name
        if isinstance(layer, keras.Sequential):
            out += _sequential_layers(layer, seen)
        else:
            out.append(layer)
    return out


def _cut_sequential(model, cut_after, num_units, allow_batch_norm, fusion) -> list[Unit]:
    """units_from_model for a Sequential without an input shape: a Sequential per unit over
    the model's own layers, built by the pipeline on its frames."""
    layers = _sequential_layers(model)
    names = [layer.name for layer in layers]
    if cut_after is None:
        if num_units != 1:
            raise ValueError(
                f"num_units={num_units!r} balances the units' FLOPs, which needs the input "
                f"shape, and Sequential {model.name!r} has none yet: give it "
                "keras.Input((H, W, C)) as its first layer (or call model.build((None, H, W, "
                f"C))), or cut by name, cut_after=[...] among {names[:-1][:6]}."
            )
        cut_after = []
    order = []
    for name in cut_after:
        if name not in names[:-1]:
            raise ValueError(
                f"cut_after names {name!r}, which is not a layer of {model.name!r} before its "
                f"last; valid cuts are {names[:-1][:6]}{' ...' if len(names) > 7 else ''}."
            )
        order.append(names.index(name))
    if order != sorted(order) or len(set(order)) != len(order):
        raise ValueError(f"cut_after must list layers in the model's order, got {list(cut_after)}.")
    bounds = [0] + [k + 1 for k in order] + [len(layers)]
    return [
        Unit(
            keras.Sequential(layers[a:b], name=f"{model.name}_part{k}"),
            fusion=fusion,
            allow_batch_norm=allow_batch_norm,
            name=f"unit{k}",
        )
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]), start=1)
    ]


def _live(graph: _Graph) -> list[list]:
    """Per call c, the tensors that cross a cut after c: made at or before c, read after it
    (the model's output is read after the last call). Each as (tensor, maker, reader)."""
    made = {id(graph.input): -1}
    for c, call in enumerate(graph.calls):
        for t in call.outputs:
            made[id(t)] = c
    last_read = {}  # id -> (tensor, index of its last reader)
    for k, call in enumerate(graph.calls):
        for t in call.inputs:
            if id(t) not in made:
                raise ValueError(
                    f"Layer {call.name!r} of {graph.name!r} reads a tensor that no layer of "
                    "the model makes (a tensor from another model?); units_from_model cuts "
                    "self-contained graphs: make it a model input or a constant."
                )
            last_read[id(t)] = (t, k)
    last_read[id(graph.output)] = (graph.output, len(graph.calls))
    live = [[] for _ in graph.calls]
    for t, reader in last_read.values():
        for c in range(max(made[id(t)], 0), min(reader, len(graph.calls))):
            live[c].append((t, made[id(t)], reader))
    return live


def _valid(graph: _Graph) -> dict:
    """{c: a_c}: the calls c after which the graph may be cut (one tensor, made by c,
    crosses), in order, each with the tensor that crosses."""
    live = _live(graph)
    return {
        c: crossing[0][0]
        for c, crossing in enumerate(live[:-1])
        if len(crossing) == 1 and crossing[0][1] == c
    }


def valid_cuts(model: keras.Model) -> list[str]:
    """Names of the layers after which the model may be cut (one tensor crosses), in order.

    Nested models and Sequential blocks are flattened (their layers are named); the
    model is a functional keras.Model or a keras.Sequential.
    """
    _check_model(model)
    if _unbuilt_sequential(model):
        return [layer.name for layer in _sequential_layers(model)[:-1]]
    graph = _flatten(model)
    return [graph.calls[c].name for c in _valid(graph)]


def _crossing(graph: _Graph, c: int) -> list[str]:
    """'maker -> reader' for each tensor made before call c and read after it."""
    maker = {id(t): call.name for call in graph.calls for t in call.outputs}
    maker[id(graph.input)] = "input"
    found = []
    for k in range(c + 1, len(graph.calls)):
        for t in graph.calls[k].inputs:
            j = maker[id(t)]
            if j != graph.calls[c].name and f"{j} -> {graph.calls[k].name}" not in found:
                found.append(f"{j} -> {graph.calls[k].name}")
    return found


def units_from_model(
    model: keras.Model,
    cut_after: Sequence[str] | None = None,
    num_units: int | None = None,
    allow_batch_norm: bool = False,
    fusion: str = "concat",
) -> list[Unit]:
    """Cuts a functional or Sequential Keras model into Sideways units (module docstring).

    cut_after: the layer names after which to cut (L-1 names give L units; a nested
    block's name cuts after its output); or
    num_units: L, with cuts balancing forward + VJP FLOPs among the valid ones.
    allow_batch_norm: keep BatchNormalization inside units (the opt-out).
    fusion: the skip integrator of each unit, for skip topologies.
    Returns L units, unit k the sub-model a_k = H_k(a_{k-1}) with a_0 = x, sharing the
    model's layers and weights; composed they compute the model.
    """
    _check_model(model)
    if (cut_after is None) == (num_units is None):
        raise ValueError("units_from_model takes cut_after=[layer names] or num_units=N.")
    if not allow_batch_norm:
        check_batch_norm(model, repr(model.name))
    if _unbuilt_sequential(model):
        return _cut_sequential(model, cut_after, num_units, allow_batch_norm, fusion)
    graph = _flatten(model)
    valid = _valid(graph)
    index = {call.name: c for c, call in enumerate(graph.calls)}
    index.update(graph.blocks)
    if cut_after is None:
        if isinstance(num_units, bool) or not isinstance(num_units, int) or num_units < 1:
            raise ValueError(f"num_units must be a positive integer, got {num_units!r}.")
        if num_units - 1 > len(valid):
            raise ValueError(
                f"{model.name!r} has {len(valid)} valid cuts (one tensor crossing), so at most "
                f"{len(valid) + 1} units; asked for num_units={num_units}."
            )
        order = _balanced_cuts(graph, valid, num_units)
    else:
        order = [_cut_index(graph, valid, index, name) for name in cut_after]
    if order != sorted(order) or len(set(order)) != len(order):
        raise ValueError(f"cut_after must list layers in the model's order, got {list(cut_after)}.")
    ends = [valid[c] for c in order] + [graph.output]
    starts = [graph.input] + ends[:-1]
    units = []
    for k, (start, end) in enumerate(zip(starts, ends), start=1):
        block = keras.Model(start, end, name=f"{model.name}_part{k}")
        units.append(Unit(block, fusion=fusion, allow_batch_norm=allow_batch_norm, name=f"unit{k}"))
    return units


def _cut_index(graph: _Graph, valid: dict, index: dict, name: str) -> int:
    """The call after which `name` cuts, or a ValueError naming the nearest valid cuts."""
    names = [graph.calls[c].name for c in valid]
    if name not in index:
        raise ValueError(
            f"cut_after names {name!r}, which is not a layer of {graph.name!r}; valid cuts "
            f"are e.g. {names[:6]} (sw.valid_cuts(model) lists them all)."
        )
    c = index[name]
    if c not in valid:
        nearest = [v for v in valid if v < c][-1:] + [v for v in valid if v > c][:1]
        raise ValueError(
            f"Cannot cut {graph.name!r} after {name!r}: a residual branch crosses the cut "
            f"({'; '.join(_crossing(graph, c)[:3])}), and a unit passes one "
            "activation to the next. The nearest valid cuts: "
            f"{', '.join(repr(graph.calls[v].name) for v in nearest)}."
        )
    return c


def _segment_flops(graph: _Graph, tensors: list) -> list[float]:
    """Forward + VJP FLOPs of the sub-models between consecutive tensors, batch 1."""
    vjp_flops = _vjp_flops_jax if backend.is_jax() else _vjp_flops_tf
    return [
        vjp_flops(keras.Model(start, end), (1, *start.shape[1:]))
        for start, end in zip(tensors[:-1], tensors[1:])
    ]


def _vjp_flops_tf(block: keras.Model, shape: tuple) -> float:
    """FLOPs of block's forward and VJP (w.r.t. input and parameters) on float32 [shape],
    as TensorFlow's graph profiler counts them (sideways_tf.costs.graph_flops)."""
    from sideways_tf import costs

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = block(x, training=True)
        return tape.gradient(y, [x] + block.trainable_variables)

    spec = tf.TensorSpec(shape, tf.float32)
    return costs.graph_flops(tf.function(step).get_concrete_function(spec).graph)


def _vjp_flops_jax(block: keras.Model, shape: tuple) -> float:
    """The same on Keras' JAX backend: XLA's cost analysis of the jitted forward and VJP
    (lowered on shapes alone; nothing runs)."""
    import jax
    import jax.numpy as jnp

    others = [v.value for v in block.non_trainable_variables]

    def step(x, theta):
        def forward(x, theta):
            return block.stateless_call(theta, others, x, training=True)[0]

        y, pullback = jax.vjp(forward, x, theta)
        return pullback(jnp.ones_like(y))

    theta = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in block.trainable_variables]
    cost = jax.jit(step).lower(jax.ShapeDtypeStruct(shape, jnp.float32), theta).cost_analysis()
    if isinstance(cost, (list, tuple)):  # (older JAX: one dict per computation)
        cost = cost[0]
    return float(cost.get("flops", 0.0))


def _balanced_cuts(graph: _Graph, valid: dict, num_units: int) -> list[int]:
    """num_units - 1 valid cuts (call indices) minimising the largest unit's forward + VJP
    FLOPs."""
    if num_units == 1:
        return []
    points = list(valid)
    tensors = [graph.input] + [valid[c] for c in points] + [graph.output]
    seg = _segment_flops(graph, tensors)  # cost between consecutive candidate cuts
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
        cuts.append(points[i - 1])
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
    """A copy of a model with every BatchNormalization replaced, gamma and beta kept.

    model: a functional keras.Model or a keras.Sequential; nested ones are copied too.
    norm: "group" (GroupNorm: GroupNormalization with at most max_groups groups of >= 4
    channels, per frame and per example) or "layer" (LayerNorm: LayerNormalization over
    the BatchNorm's axis, the channels). Other layers keep their weights. The moving
    statistics are dropped: the new norms behave alike in training and evaluation.
    A BatchNormalization inside a custom layer (a leaf Keras cannot copy through) is
    refused, naming it.
    """
    if norm not in ("group", "layer"):
        raise ValueError(f"replace_batch_norm: norm = {norm!r}; use 'group' or 'layer'.")
    _check_model(model)
    if _unbuilt_sequential(model):
        raise ValueError(
            f"replace_batch_norm sizes each norm by its channels, and Sequential "
            f"{model.name!r} has no input shape yet: give it keras.Input((H, W, C)) as its "
            "first layer (or call model.build((None, H, W, C))) first."
        )
    pairs = []  # (original, copy) of every leaf layer

    def clone(layer):
        if not isinstance(layer, keras.Layer):
            return layer  # a Keras op (x + y in the graph): no state, reused
        if not isinstance(layer, keras.layers.BatchNormalization):
            new = layer.__class__.from_config(layer.get_config())
        else:
            options = dict(
                axis=layer.axis,
                epsilon=layer.epsilon,
                center=layer.center,
                scale=layer.scale,
                name=layer.name,
            )
            if norm == "layer":
                new = LayerNorm(**options)
            else:
                channels = int(layer.moving_mean.shape[0])  # [C] (gamma is absent if not scale)
                groups = math.gcd(channels, max(1, min(max_groups, channels // 4)))
                new = GroupNorm(groups=groups, **options)
        pairs.append((layer, new))
        return new

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for old, new in pairs:
        if isinstance(old, keras.layers.BatchNormalization):
            if old.scale:
                new.gamma.assign(old.gamma)
            if old.center:
                new.beta.assign(old.beta)
        elif old.weights:
            new.set_weights(old.get_weights())
    left = batch_norm_layers(copy)
    if left:
        raise ValueError(
            f"replace_batch_norm copies {model.name!r} layer by layer, but BatchNormalization "
            f"inside a custom layer is out of its reach ({', '.join(left[:3])}): use "
            "keras.layers.GroupNormalization in that layer's code instead."
        )
    return copy


__all__ = ["batch_norm_layers", "replace_batch_norm", "units_from_model", "valid_cuts"]
