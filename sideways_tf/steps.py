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
from typing import Any, NamedTuple

import keras
from keras import ops

from sideways_tf import backend


class UnitStep(NamedTuple):
    """What unit_step returns for unit i."""

    activation: Any  # a_i [B, *out_i]: what goes into the unit's output buffer
    output: Any  # the top unit: the head's output y = head(a_L) [B, ...]; else a_i
    loss: Any  # [] the top unit's l_t (None for the others)
    replies: list  # r_{i->j}: the VJP w.r.t. each input in `senders` (same order)
    grads: list  # g_theta_i, aligned with `theta`


def unit_step(
    unit: Callable,
    inputs: Sequence,
    theta: Sequence,
    senders: Sequence[int],
    *,
    message=None,
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

    def forward(inputs):
        a = unit(list(inputs), training=training)
        if check is not None:
            a = check(a)
        if not top:
            return a, None
        y = head(a) if head is not None else a
        return loss(y), (a, y)

    target, aux, replies, grads = backend.vjp(forward, inputs, theta, message, wrt=senders)
    if top:
        (a, y), l_t = aux, target
    else:
        a, y, l_t = target, target, None
    return UnitStep(a, y, l_t, replies, grads)


def unroll(step: Callable, carry, num_steps, *, static: bool = False, output_spec=None):
    """carry, y_t = step(carry, k) for k = 0..K-1; returns (carry, ys).

    step gets the 0-based step index k (a Python int when static, else a scalar
    int32 tensor) and slices its own per-step inputs (clip[:, k], present[k]).
    y_t is a (possibly nested) structure of tensors, or None; ys stacks each leaf
    over steps: [B, ...] leaves become [B, K, ...], scalars [K]; or ys is None.
    static=False: one graph loop (tf.while_loop, K may be a tensor; jax.lax.scan;
      memory O(1) in K besides the stacked ys; each step needs the previous carry).
      On TensorFlow, a step that returns outputs needs `output_spec`: their
      tf.TensorSpec structure.
    static=True: a Python loop (K must be an int), so that a tape around it holds
      every step (bptt) and every step is traced with static shapes.
    """
    if not static:
        return backend.loop(step, carry, num_steps, output_spec=output_spec)
    outputs = []
    for k in range(int(num_steps)):
        carry, y = step(carry, k)
        outputs.append(y)
    if not outputs or outputs[0] is None:
        return carry, None
    return carry, keras.tree.map_structure(lambda *ys: _stack(list(ys)), *outputs)


def _stack(values: list):
    """Per-step values -> one tensor: [B, ...] values on axis 1, scalars on axis 0."""
    if len(values[0].shape) == 0:
        return ops.stack(values)
    return ops.stack(values, axis=1)


__all__ = ["UnitStep", "unit_step", "unroll"]
