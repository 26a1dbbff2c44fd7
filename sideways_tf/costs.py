"""What each unit costs per computation step: FLOPs, parameters and bytes that cross.

One Sideways step of unit i is a forward pass and a local VJP (algorithm.md s.3):

    a_i[t] = H_i(C_i(u_i[t]))                     forward
    (g_theta_i[t], r_{i->j}[t]) = VJP at u_i[t]   backward, applied to m_i[t]

`unit_costs` counts the floating-point operations of both in the unit's own
`steps.unit_step` (the step the engine runs), as TensorFlow's graph profiler does
(registered op statistics: Conv2D and its two backprops, MatMul, BiasAdd, ...), on
the pipeline's own batch, so the numbers are per step of the whole batch. These are
what placement balances (placement.balance) and what the schedule simulator
(sideways_tf.simulator) turns into step times.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np

from sideways_tf.backend import tf  # (the graph profiler: TensorFlow, imported on first use)
from sideways_tf.steps import unit_step


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


def graph_flops(graph) -> float:
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


def _traced_unit_step(pipeline, i: int):
    """Unit i's `steps.unit_step` traced into a graph on float32 inputs [B, ...] per source.

    Below the top the message m_i is ones [B, *out_i]; the top unit goes through the
    head to l = sum(y), so its VJP also starts from ones (on y).
    """
    unit, theta = pipeline.units[i - 1], pipeline.unit_variables(i)
    senders = pipeline.topology.senders(i)

    def step(*inputs):
        if i == pipeline.num_units:
            # A frame head's x[t - lag] (and x[t - lag - 1]): their values do not change the cost.
            frame = tf.zeros((pipeline.batch_size, *pipeline.frame_shape), tf.float32)
            frames = [frame] * len(pipeline.head_edges)
            head = functools.partial(pipeline.apply_head, frames=frames, training=True)
            return unit_step(unit, list(inputs), theta, senders, head=head, loss=tf.reduce_sum)
        ones = tf.ones(unit.output_shape_, unit.compute_dtype)  # m_i [B, *out_i]
        return unit_step(unit, list(inputs), theta, senders, message=ones)

    specs = [tf.TensorSpec(s, tf.float32) for s in unit.source_shapes]
    return tf.compat.v1.wrap_function(step, specs)


def unit_costs(pipeline) -> list[UnitCost]:
    """FLOPs of forward and VJP, parameters and output bytes of each unit (bottom first).

    Traces each unit's `steps.unit_step` alone (_traced_unit_step) on its source
    shapes; forward + VJP counts the whole traced step, forward the part of that same
    graph that a_i (and the top's l) depend on. Nothing runs and no variable changes.
    The pipeline must be built.
    """
    if not pipeline.built:
        raise ValueError("Build the pipeline first: Pipeline(..., batch_size=B, frame_shape=...).")
    costs = []
    for i, unit in enumerate(pipeline.units, start=1):
        traced = _traced_unit_step(pipeline, i)
        out = traced.structured_outputs
        fetches = [out.activation] + ([out.loss] if out.loss is not None else [])
        # Fed the sources only (the graph's first inputs; the rest are captured variables).
        forward = traced.prune(traced.inputs[: len(unit.source_shapes)], fetches)
        fwd = graph_flops(forward.graph)
        both = graph_flops(traced.graph)
        out_shape = unit.output_shape_
        costs.append(
            UnitCost(
                forward_flops=fwd,
                backward_flops=max(both - fwd, 0.0),
                params=int(sum(np.prod(v.shape) for v in pipeline.unit_variables(i))),
                output_bytes=int(np.prod(out_shape)) * tf.as_dtype(unit.output_buffer.dtype).size,
            )
        )
    return costs
