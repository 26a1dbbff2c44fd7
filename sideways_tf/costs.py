"""What each unit costs per computation step: FLOPs, parameters and bytes that cross.

One Sideways step of unit i is a forward pass and a local VJP (algorithm.md s.3):

    a_i[t] = H_i(C_i(u_i[t]))                     forward
    (g_theta_i[t], r_{i->j}[t]) = VJP at u_i[t]   backward, applied to m_i[t]

`unit_costs` counts the floating-point operations of both, as TensorFlow's graph
profiler does (registered op statistics: Conv2D and its two backprops, MatMul,
BiasAdd, ...), on the pipeline's own batch, so the numbers are per step of the
whole batch. These are what placement balances (placement.balance) and what the
schedule simulator (sideways_tf.simulator) turns into step times.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class UnitCost:
    """Per-step cost of one unit on a batch of B frames.

    forward_flops:  FLOPs of C_i then H_i (the top unit includes the head).
    backward_flops: FLOPs of the VJP w.r.t. the unit's inputs and parameters.
    params:         number of parameters theta_i (the top unit includes the head).
    output_bytes:   bytes of a_i[t] [B, *out_i] sent up every step (and of the
                    message m_i[t] sent down: the same shape).
    """

    forward_flops: float
    backward_flops: float
    params: int
    output_bytes: int

    @property
    def flops(self) -> float:
        """Forward plus VJP: what one Sideways step of this unit computes."""
        return self.forward_flops + self.backward_flops


def _graph_flops(graph) -> float:
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    # The profiler warns about a deprecated v1 shape helper on every call.
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return float(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)
    finally:
        logger.setLevel(level)


def unit_costs(pipeline) -> list[UnitCost]:
    """FLOPs of forward and VJP, parameters and output bytes of each unit (bottom first).

    Traces each unit alone on its source shapes [B, ...]; nothing runs and no
    variable changes. The pipeline must be built.
    """
    if not pipeline.built:
        raise ValueError("Build the pipeline first: Pipeline(..., batch_size=B, frame_shape=...).")
    costs = []
    for i, unit in enumerate(pipeline.units, start=1):
        top = i == pipeline.num_units
        theta = pipeline.unit_variables(i)
        specs = [tf.TensorSpec(s, tf.float32) for s in unit.source_shapes]

        def forward(inputs, unit=unit, top=top):
            a = unit(list(inputs), training=True)
            return pipeline.apply_head(a, training=True) if top else a

        def step(inputs, forward=forward, theta=theta):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                out = forward(inputs)
            return tape.gradient(
                out,
                list(inputs) + theta,
                output_gradients=tf.ones_like(out),
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )

        fwd = _graph_flops(tf.function(forward).get_concrete_function(specs).graph)
        both = _graph_flops(tf.function(step).get_concrete_function(specs).graph)
        out_shape = unit.output_shape_
        costs.append(
            UnitCost(
                forward_flops=fwd,
                backward_flops=max(both - fwd, 0.0),
                params=int(sum(np.prod(v.shape) for v in theta)),
                output_bytes=int(np.prod(out_shape)) * tf.as_dtype(unit.output_buffer.dtype).size,
            )
        )
    return costs
