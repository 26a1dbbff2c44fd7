"""Modes as values: everything that differs between frame_bp, bptt, sideways and skip_sideways.

A Mode holds its gradient rule (sideways_tf.rules) and answers every question
that depends on the mode, so that no other module compares mode names:

    rule             (pipeline, state, clip, targets, present, training, loss_scale,
                     unrolled)
                     -> ClipGradients
    pipelined        whether the top output of step t is the pipelined network's
                     (reads x[t - lag]) or the per-frame network's (reads x[t])
    input_lag(p)     t minus the newest frame in the top output at step t
    first_step(p)    the first step (1-based) whose output is scored: T_fill, or 1
    min_frames(p)    the shortest clip that trains, and why (algorithm.md s.4)
    check(p)         raises unless the pipeline's topology fits the mode
    predict(p, clip) every step's top output [B, K, ...] and which are filled [K]
    stream_state(p), stream_step(p, state, x_t), stream_lags(p)
                     the trained network one frame at a time (what export saves)

A new mode is one `register(Mode(...))`; tests/test_modes.py registers a toy one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from keras import ops

from sideways_tf import rules
from sideways_tf.steps import unroll

TOPOLOGIES = ("any", "chain", "skips")


@dataclasses.dataclass(frozen=True)
class Mode:
    """One way to train a pipeline. See the module docstring.

    name: the gin value (train.mode). rule: the gradient rule. pipelined: see above.
    topology: "any", "chain" (no skip or delayed edge) or "skips" (at least one).
    fills_before_loss: how many pipeline fills a clip needs before its loss trains
      every unit: 0 (no pipeline: any K), 1 (the top sees real frames from T_fill),
      2 (a loss also needs T_fill - 1 more steps to reach the bottom: 2*T_fill - 1).
    """

    name: str
    rule: Callable
    pipelined: bool = True
    topology: str = "any"
    fills_before_loss: int = 1
    description: str = ""

    def __post_init__(self):
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"Mode {self.name!r}: topology {self.topology!r} not in {TOPOLOGIES}.")
        if self.fills_before_loss not in (0, 1, 2):
            raise ValueError(f"Mode {self.name!r}: fills_before_loss must be 0, 1 or 2.")

    def __str__(self):
        return self.name

    @property
    def approximate(self) -> bool:
        """Whether its gradients are Sideways' approximation (gradient fidelity applies)."""
        return self.rule is rules.sideways_gradients

    # -- Facts for a pipeline ---------------------------------------------------------

    def input_lag(self, pipeline) -> int:
        """t minus the newest frame in the top output at step t (0 for the per-frame network)."""
        return pipeline.topology.newest_lag(pipeline.num_units) if self.pipelined else 0

    def first_step(self, pipeline) -> int:
        """The first step (1-based) whose top output is scored."""
        return pipeline.fill_steps if self.pipelined else 1

    def min_frames(self, pipeline) -> tuple[int, str]:
        """(the shortest clip length K that trains every unit, the reason)."""
        fill = pipeline.fill_steps
        if self.fills_before_loss == 0:
            return 1, "the per-frame network needs one frame"
        if self.fills_before_loss == 1:
            return fill, "the top output is built from real frames only from step T_fill"
        return (
            2 * fill - 1,
            "a loss needs 2*T_fill - 1 steps to reach the bottom unit (algorithm.md s.4)",
        )

    def check(self, pipeline) -> None:
        """Raises unless the pipeline's topology fits this mode, naming the fix."""
        chain = pipeline.topology.is_chain
        if self.topology == "chain" and not chain:
            raise ValueError(
                f"mode='{self.name}' runs on a chain, but this pipeline has skip or delayed "
                f"edges; use {_names('skips')}, or topology='chain'."
            )
        if self.topology == "skips" and chain:
            raise ValueError(
                f"mode='{self.name}' needs skip edges, but this pipeline is a chain; use "
                f"topology='skip(2)' (or another), or {_names('chain')}."
            )

    def check_clip_length(self, pipeline, num_frames: int, binding: str) -> None:
        """Raises unless clips of K frames are long enough for this mode on this pipeline."""
        need, why = self.min_frames(pipeline)
        if num_frames < need:
            raise ValueError(
                f"Clips of K={num_frames} frames ({binding}) are too short for mode "
                f"'{self.name}' on this pipeline (T_fill = {pipeline.fill_steps}): {why}, so K "
                f"must be at least {need}; far more is better. Lengthen the clips (the data's "
                "num_frames binding) or use fewer units."
            )
        pipeline.task.check_clip_length(
            num_frames, self.input_lag(pipeline), self.first_step(pipeline), self.name, binding
        )

    # -- Prediction ----------------------------------------------------------------

    def predict(self, pipeline, clip, training=False):
        """Every step's top output from a fresh state: ([B, K, ...], filled [K] float32).

        filled[t] is 1.0 where the output is built from real frames only.
        """
        clip = ops.convert_to_tensor(clip)
        if not self.pipelined:
            per_step, _ = rules.frame_outputs(pipeline, clip, training=training)
            return per_step, ops.ones((ops.shape(clip)[1],), "float32")

        def step(state, k):
            state, y = pipeline.forward_step(state, clip[:, k], training=training)
            return state, (y, rules.valid_step(pipeline, state.t))

        _, (outputs, filled) = unroll(step, pipeline.zero_state(), clip.shape[1], static=True)
        return outputs, filled

    def predict_clip(self, pipeline, clip, training=False):
        """Top outputs averaged over valid steps, from a fresh state: [B, ...]."""
        if not self.pipelined:
            return rules.frame_outputs(pipeline, clip, training=training)[1]
        state = pipeline.zero_state()
        return rules.pipelined_forward(pipeline, state, clip, training=training)[2]

    # -- Streaming: the network this mode trains, one frame at a time (export) ---------

    def stream_state(self, pipeline) -> dict:
        """A fresh stream of the network this mode trains, as named tensors.

        t: [] int32, frames fed since the fresh state; then what the network carries:
          pipelined: output_1..output_L, a_i[t-1] [B, *out_i], and delay_1..delay_D,
            the lines of PipelineState.delays [d, B, *in] (its messages are for training);
          per-frame: nothing, or previous_frame x[t-1] [B, *frame] for a head that reads
            the previous frame (pipeline.head_reads_previous_frame).
        A subclass whose network is neither overrides stream_state, stream_step and
        stream_lags together.
        """
        if self.pipelined:
            return self.named_state(pipeline.zero_state())
        state = {"t": ops.convert_to_tensor(0, "int32")}
        if pipeline.head_reads_previous_frame:
            state["previous_frame"] = ops.zeros(
                (pipeline.batch_size, *pipeline.frame_shape), "float32"
            )
        return state

    def stream_step(self, pipeline, state: dict, x_t, training=False) -> tuple[dict, Any]:
        """One frame x[t] [B, *frame] through the network this mode trains: (state, y[t]).

        pipelined: pipeline.forward_step, y[t] built from x[t - oldest] .. x[t - newest];
        per-frame: pipeline.frame_forward on x[t] alone, the head given x[t-1] (x[t] itself
        at t = 1), as rules.frame_outputs gives it: y[t] equals predict's step t.
        """
        if self.pipelined:
            state = self.unnamed_state(pipeline, state)
            state, y = pipeline.forward_step(state, x_t, training=training)
            return self.named_state(state), y
        x_t = ops.convert_to_tensor(x_t)  # [B, *frame]
        new, previous = {"t": state["t"] + 1}, None
        if pipeline.head_reads_previous_frame:
            # (a select, not a branch: t may be traced)
            previous = ops.where(ops.equal(state["t"], 0), x_t, state["previous_frame"])
            new["previous_frame"] = x_t
        return new, pipeline.frame_forward(x_t, training=training, previous=previous)

    def stream_lags(self, pipeline) -> tuple[int, int]:
        """(newest, oldest): y[t] of stream_step reads frames x[t - oldest] .. x[t - newest].

        newest = input_lag; oldest = T_fill - 1 for the pipelined network (its longest
        path), 0 for the per-frame one; one older than newest where the head also reads
        the previous frame, if that is older still.
        """
        newest = self.input_lag(pipeline)
        oldest = self.first_step(pipeline) - 1
        return newest, max(oldest, newest + int(pipeline.head_reads_previous_frame))

    @staticmethod
    def named_state(state) -> dict:
        """PipelineState -> {t, output_i, delay_k} (the messages are left out)."""
        named = {"t": state.t}
        named.update({f"output_{i}": a for i, a in enumerate(state.outputs, start=1)})
        named.update({f"delay_{k}": d for k, d in enumerate(state.delays, start=1)})
        return named

    @staticmethod
    def unnamed_state(pipeline, named: dict):
        """{t, output_i, delay_k} -> the pipeline's PipelineState, with no messages."""
        return rules.PipelineState(
            t=named["t"],
            outputs=tuple(named[f"output_{i}"] for i in range(1, pipeline.num_units + 1)),
            messages=(),
            delays=tuple(named[f"delay_{k}"] for k in range(1, len(pipeline.delay_buffers()) + 1)),
        )


MODES: dict[str, Mode] = {}


def register(mode: Mode) -> Mode:
    """Adds a mode (by its name) to MODES; the gin value train.mode can then name it."""
    if not isinstance(mode, Mode):
        raise TypeError(f"register() takes a Mode, got {type(mode).__name__}.")
    MODES[mode.name] = mode
    return mode


def unregister(name: str) -> None:
    """Removes a registered mode (for tests that register a toy one)."""
    MODES.pop(name, None)


def get(mode: str | Mode, binding: str = "mode") -> Mode:
    """The Mode named `mode` (or mode itself); raises naming the binding and the choices."""
    if isinstance(mode, Mode):
        return mode
    if mode not in MODES:
        raise ValueError(f"{binding} = {mode!r} is not a mode; choose one of {list(MODES)}.")
    return MODES[mode]


def _names(topology: str) -> str:
    """'mode=...' for each registered mode made for this topology, or-joined."""
    names = [f"mode='{m.name}'" for m in MODES.values() if m.topology == topology]
    return " or ".join(names) or "another mode"


register(
    Mode(
        "frame_bp",
        rules.frame_gradients,
        pipelined=False,
        fills_before_loss=0,
        description="exact BP of the per-frame network (no delays), a baseline",
    )
)
register(
    Mode(
        "bptt",
        rules.bptt_gradients,
        description="exact gradient of the pipelined network over the clip (memory O(K))",
    )
)
register(
    Mode(
        "sideways",
        rules.sideways_gradients,
        topology="chain",
        fills_before_loss=2,
        description="Sideways on a chain: forward and local VJP per unit per step, O(1) in K",
    )
)
register(
    Mode(
        "skip_sideways",
        rules.sideways_gradients,
        topology="skips",
        fills_before_loss=2,
        description="Skip-Sideways: the same rule on skip connections across time",
    )
)

__all__ = ["MODES", "Mode", "get", "register", "unregister"]
