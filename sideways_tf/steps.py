"""The two building blocks every mode, cost model, export and benchmark shares.

    unit_step   one unit's share of a Sideways step (algorithm.md s.3): its forward
                pass and its local VJP,
                    a_i = H_i(C_i(u_i)),
                    (g_theta_i, r_{i->j}) = VJP at u_i applied to m_i
                (the top unit differentiates its loss l_t through the head instead);
    unroll      the frame loop: a step function applied to t = 1..K, as a graph loop
                (tf.while_loop, K may be dynamic) or unrolled in Python (K static,
                what a tape over the whole clip needs).

The engine's rules (sideways_tf.rules), Pipeline.call, prediction, export, the
cost model (sideways_tf.costs) and the benchmarks all call these two, so what a
benchmark times is what trains. How the loop is formed (graph loop or unrolled)
is decided here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import tensorflow as tf


class UnitStep(NamedTuple):
    """What unit_step returns for unit i."""

    activation: tf.Tensor  # a_i [B, *out_i]: what goes into the unit's output buffer
    output: tf.Tensor  # the top unit: the head's output y = head(a_L) [B, ...]; else a_i
    loss: tf.Tensor | None  # [] the top unit's l_t (None for the others)
    replies: list  # r_{i->j}: the VJP w.r.t. each input in `senders` (same order)
    grads: list  # g_theta_i, aligned with `theta`


def unit_step(
    unit: Callable,
    inputs: Sequence[tf.Tensor],
    theta: Sequence,
    senders: Sequence[int],
    *,
    message: tf.Tensor | None = None,
    head: Callable | None = None,
    loss: Callable | None = None,
    training: bool = True,
    check: Callable | None = None,
) -> UnitStep:
    """Forward of one unit on its inputs, then its local VJP (no other unit involved).

    unit: inputs -> a_i (a sideways_tf.Unit: C_i then H_i); inputs: u_i's sources
    [B, *in] per edge; theta: the unit's trainable variables; senders: indices of
    the inputs to send a reply to (those that come from units, not the frame).
    A unit below the top takes `message` m_i [B, *out_i] as the output gradient;
    the top unit gives `head` (a_L -> y) and `loss` (y -> [] l_t) instead, and its
    VJP starts from l_t. check: a -> a, run on the unit's output before anything
    reads it (the pipeline's shape check). Returns UnitStep(a_i, y or a_i, l_t or None, replies, grads).
    """
    top = loss is not None
    if top == (message is not None):
        raise ValueError("unit_step takes either a message (a unit below the top) or a loss.")
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        a = unit(list(inputs), training=training)
        if check is not None:
            a = check(a)
        if top:
            y = head(a) if head is not None else a
            l_t = loss(y)
            target, upstream = l_t, None
        else:
            y, l_t, target, upstream = a, None, a, message
    vjp = tape.gradient(
        target,
        [inputs[k] for k in senders] + list(theta),
        output_gradients=upstream,
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
    return UnitStep(a, y, l_t, vjp[: len(senders)], vjp[len(senders) :])


def unroll(step: Callable, carry, num_steps, *, static: bool = False, output_spec=None):
    """carry, y_t = step(carry, k) for k = 0..K-1; returns (carry, ys).

    step gets the 0-based step index k (a Python int when static, else a scalar
    int32 tensor) and slices its own per-step inputs (clip[:, k], present[k]).
    y_t is a (possibly nested) structure of tensors, or None; ys stacks each leaf
    over steps: [B, ...] leaves become [B, K, ...], scalars [K]; or ys is None.
    static=False: one tf.while_loop (K may be a tensor; memory O(1) in K besides
      the stacked ys; parallel_iterations=1: each step needs the previous carry).
      A step that returns outputs needs `output_spec`: their tf.TensorSpec structure.
    static=True: a Python loop (K must be an int), so that a GradientTape around it
      holds every step (bptt) and every step is traced with static shapes.
    """
    if static:
        outputs = []
        for k in range(int(num_steps)):
            carry, y = step(carry, k)
            outputs.append(y)
        if not outputs or outputs[0] is None:
            return carry, None
        return carry, tf.nest.map_structure(lambda *ys: _stack(list(ys)), *outputs)

    specs = tf.nest.flatten(output_spec) if output_spec is not None else []
    arrays = [tf.TensorArray(s.dtype, size=num_steps, element_shape=s.shape) for s in specs]

    def body(k, carry, arrays):
        carry, y = step(carry, k)
        if output_spec is None:
            if y is not None:
                raise ValueError("unroll(static=False): give output_spec to stack outputs.")
            return k + 1, carry, arrays
        arrays = [a.write(k, v) for a, v in zip(arrays, tf.nest.flatten(y))]
        return k + 1, carry, arrays

    _, carry, arrays = tf.while_loop(
        lambda k, *_: k < num_steps, body, (tf.constant(0), carry, arrays), parallel_iterations=1
    )
    if output_spec is None:
        return carry, None
    stacked = [_from_time_major(a.stack()) for a in arrays]
    return carry, tf.nest.pack_sequence_as(output_spec, stacked)


def _stack(values: list):
    """Per-step values -> one tensor: [B, ...] values on axis 1, scalars on axis 0."""
    if values[0].shape.rank == 0:
        return tf.stack(values)
    return tf.stack(values, axis=1)


def _from_time_major(stacked):
    """[K, B, ...] (a TensorArray's stack) -> [B, K, ...]; [K] stays [K]."""
    if stacked.shape.rank is None or stacked.shape.rank <= 1:
        return stacked
    perm = [1, 0] + list(range(2, stacked.shape.rank))
    return tf.transpose(stacked, perm)


__all__ = ["UnitStep", "unit_step", "unroll"]
