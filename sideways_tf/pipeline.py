"""Pipeline: units, the edges between them, a task head and a loss.

The pipeline holds the network and its state; it knows two forward passes,
  frame_forward   the per-frame network, every unit on the same frame (no delays);
  forward_step    one computation step of the pipelined network (algorithm.md s.3):
                  u_i[t] = C_i({a_j[t-1-d_ji]}), a_i[t] = H_i(u_i[t]), a_0[t-1] := x[t].
Both are pure functions of an explicit PipelineState; the units' buffers store
that state between calls (read_state / write_state / reset_state).

`step(state, x_t, unit_fn)` is the ONE skeleton of a pipelined computation step:
it gathers every unit's sources (delay lines advanced), runs `unit_fn` per unit on
its core, and hands the top unit the head y = head(a_L, frames). forward_step
runs it with the plain forward pass, rules.sideways_step with each unit's forward
and local VJP. What the head reads besides a_L[t] (a residual frame head: the
last frame seen, x[t - lag], and the one before) reaches it through ordinary
delayed edges from the input into receiver L + 1, the head (`head_edges`): their
delay lines are buffers like the units' ones. How gradients are formed from these
passes is the rules' and the engine's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from sideways_tf import backend, tasks
from sideways_tf import placement as placement_lib
from sideways_tf import topology as topology_lib
from sideways_tf.backend import tf
from sideways_tf.steps import unroll
from sideways_tf.units import Unit, _per_replica_buffers, load_buffers


class PipelineState(NamedTuple):
    """What the pipeline carries from step t-1 to step t (all K-independent).

    t:        [] int32, steps taken since the last reset.
    outputs:  a_i[t-1] for i = 1..L, each [B, *out_i].
    messages: m_i[t] for i = 1..L-1, each [B, *out_i] (the top needs none).
    delays:   one line [d, B, *in] per delayed edge, oldest first, the head's edges
              last: a head that reads the last frame seen (FrameDecoder(residual=True))
              has the edge 0 -> L+1 with delay lag = Topology.newest_lag(L), a line
              [lag, B, *frame] holding x[t-lag] .. x[t-1] (none when lag = 0); one that
              also reads the frame before it (FrameDecoder(previous_frame=True)) has a
              second edge with delay lag + 1.
    """

    t: Any
    outputs: tuple
    messages: tuple
    delays: tuple


@keras.saving.register_keras_serializable(package="sideways_tf")
class Pipeline(keras.Layer):
    """Units 1..L over a topology, plus a head and a task on the top unit.

    Args:
      units: the L units, bottom first.
      topology: "chain", "skip(k)", "skip(k, d)", "dense(w)" or an edge list
        (see sideways_tf.topology).
      head: Keras layer applied to the top unit's output (logits); it lives on the
        top unit's device and its parameters count as the top unit's. None: identity.
        A head with `reads_last_frame = True` (FrameDecoder(residual=True)) is also
        given x[t - lag], the newest frame in a_L[t] (lag = Topology.newest_lag(L);
        the frame itself in the per-frame network), through an edge from the input
        with delay lag (`head_edges`; its line is a buffer like the units' lines, so
        it is checkpointed and streams in export). A head that also has
        `reads_previous_frame = True` is given x[t - lag - 1] too, by a second edge
        (before the clip's first frame the head's lines hold that frame, as copy-last
        does).
      task: what the top output is trained to be (sideways_tf.tasks): a Task
        (tasks.Classification(), tasks.FutureFrames(horizon=h)), or, for
        classification, a loss name of tasks.LOSSES or a per-example loss callable
        (labels [B], logits [B, C]) -> [B]. Default: classification with softmax
        cross-entropy.
      loss: the older name of `task` (give one of the two).
      batch_size: static batch size B of the state buffers (per replica).
      frame_shape: shape of one frame, e.g. (H, W, C).
      placement: a sideways_tf.placement.Placement, e.g. `runtime.placement(cores)`
        (build the pipeline inside that runtime's `scope()`): unit i goes to logical
        core k_i = placement.cores[i-1] (contiguous blocks if cores is None) of its
        plan, and the units must leave device=None. None: each unit stays on its own
        `device` (one core per distinct device, in order). Not part of get_config.

    `plan` and `cores` (k_i of unit i at index i-1) record the outcome.
    """

    def __init__(
        self,
        units: Sequence[Unit],
        topology: str | Sequence = "chain",
        head: keras.Layer | None = None,
        task: tasks.Task | str | Callable | None = None,
        batch_size: int | None = None,
        frame_shape: Sequence[int] | None = None,
        loss: str | Callable | None = None,
        placement: placement_lib.Placement | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        units = list(units)
        for k, u in enumerate(units):
            if not isinstance(u, Unit):
                raise TypeError(
                    f"Pipeline unit {k} is a {type(u).__name__}; wrap each block in "
                    "sideways_tf.Unit(block, device=...)."
                )
        self.units = units
        self.topology = topology_lib.parse_topology(topology, len(units))
        self._topology_arg = topology
        self.head = head
        if task is not None and loss is not None:
            raise ValueError("Give the pipeline a task or a loss (the older name), not both.")
        self.task = tasks.as_task(task if task is not None else loss or tasks.Classification())
        for i, (unit, into) in enumerate(zip(units, self.topology.sources), start=1):
            unit.delays = tuple(e.delay for e in into)
            unit.has_message = i < len(units)
        # What the head reads besides a_L[t]: edges 0 -> L+1 (x[t - lag], x[t - lag - 1]).
        lag = self.topology.newest_lag(len(units))
        reads = self.head_reads_frame + self.head_reads_previous_frame
        self.head_edges = tuple(topology_lib.Edge(0, len(units) + 1, lag + k) for k in range(reads))
        # Index of each delayed edge's line in PipelineState.delays: _slots[i][k].
        self._slots, n = {}, 0
        for i in range(1, len(units) + 2):
            self._slots[i] = {}
            for k, e in enumerate(self.sources(i)):
                if e.delay > 0:
                    self._slots[i][k], n = n, n + 1
        self.plan, self.cores = _plan_for(units, placement)
        if (batch_size is None) != (frame_shape is None):
            raise ValueError("Give both batch_size and frame_shape to build now, or neither.")
        if batch_size is not None:
            self.build((batch_size, *frame_shape))

    def sources(self, i: int) -> tuple:
        """The edges into unit i (1-based), or into the head (i = L + 1)."""
        return self.head_edges if i == len(self.units) + 1 else self.topology.sources[i - 1]

    @property
    def loss_fn(self) -> Callable:
        """The task's per-example loss (targets, outputs) -> [B]."""
        return self.task.loss

    @property
    def num_units(self) -> int:
        return len(self.units)

    @property
    def fill_steps(self) -> int:
        """T_fill: first step whose top output is built from real frames only."""
        return self.topology.fill_steps

    def unit_scope(self, i: int):
        """Where unit i's (1-based) ops run: its core, in the replica being traced."""
        return self.plan.run_scope(self.cores[i - 1])

    def unit_variable_scope(self, i: int):
        """Where unit i's variables are created: its core, in every replica."""
        return self.plan.variable_scope(self.cores[i - 1])

    @property
    def num_devices(self) -> int:
        """Distinct cores the units of one replica use."""
        return len(set(self.cores))

    # -- Build -----------------------------------------------------------------

    def build(self, input_shape):
        """input_shape: (B, *frame_shape), B static. Builds units bottom-up."""
        input_shape = tuple(input_shape)
        if len(input_shape) < 2 or input_shape[0] is None:
            raise ValueError(
                f"Build the pipeline with a static frame batch shape (B, H, W, C); got "
                f"{input_shape}. State buffers need a static batch size."
            )
        self.batch_size, self.frame_shape = int(input_shape[0]), tuple(input_shape[1:])
        shapes = [input_shape]
        for i, (unit, into) in enumerate(zip(self.units, self.topology.sources), start=1):
            source_shapes = [shapes[e.source] for e in into]
            if not unit.built:
                with self.unit_variable_scope(i):
                    unit.build(source_shapes)
            elif unit.source_shapes != source_shapes:
                raise ValueError(
                    f"Unit {unit.name!r} was built for sources {unit.source_shapes}, but the "
                    f"topology feeds it {source_shapes}; use a fresh unit."
                )
            shapes.append(unit.output_shape_)
        with self.unit_variable_scope(self.num_units):
            if self.head is not None:
                spec = self.head.compute_output_spec(keras.KerasTensor(shapes[-1]))
                if not self.head.built:
                    self.head.build(shapes[-1])
                self.top_output_shape = tuple(spec.shape)
            else:
                self.top_output_shape = shapes[-1]
        self.output_shapes = shapes[1:]
        # The head's delay lines, [d, B, *frame] per head edge with d > 0 (none for the
        # one-unit pipeline's last frame: its top output sees x[t] itself). Frames stay
        # float32 in every precision, so that a residual head's x[t - lag] + 0 is the
        # frame exactly.
        with self.unit_variable_scope(self.num_units), _per_replica_buffers():
            self.head_lines = [
                self.add_weight(
                    shape=(e.delay, self.batch_size, *self.frame_shape),
                    initializer="zeros",
                    trainable=False,
                    name=f"head_line_{k}",
                    dtype="float32",
                    autocast=False,
                )
                for k, e in enumerate(self.head_edges)
                if e.delay > 0
            ]

    @property
    def head_reads_frame(self) -> bool:
        """Whether the head takes the last frame seen, x[t - lag], besides a_L[t]."""
        return bool(getattr(self.head, "reads_last_frame", False))

    @property
    def head_reads_previous_frame(self) -> bool:
        """Whether the head also takes the frame before it, x[t - lag - 1]."""
        return self.head_reads_frame and bool(getattr(self.head, "reads_previous_frame", False))

    @property
    def head_lag(self) -> int:
        """lag: the newest frame in a_L[t] is x[t - lag] (Topology.newest_lag(L))."""
        return self.topology.newest_lag(self.num_units)

    # -- Variables ---------------------------------------------------------------

    def unit_variables(self, i: int) -> list:
        """theta_i: trainable variables of unit i (1-based); the top also owns the head."""
        variables = list(self.units[i - 1].trainable_variables)
        if i == self.num_units and self.head is not None:
            variables += list(self.head.trainable_variables)
        return variables

    # -- State -----------------------------------------------------------------

    def delay_buffers(self) -> list:
        """The delay lines of every delayed edge, the head's last, in PipelineState.delays
        order."""
        lines = [b for u in self.units for b in u.delay_buffers if b is not None]
        return lines + list(getattr(self, "head_lines", []))

    def state_variables(self) -> list:
        """Every buffer of every unit, and the head's lines: the whole state besides
        parameters."""
        return [b for u in self.units for b in u.state_variables] + list(self.head_lines)

    def read_state(self, t) -> PipelineState:
        return PipelineState(
            t=ops.cast(backend.read(t), "int32"),
            outputs=tuple(backend.read(u.output_buffer) for u in self.units),
            messages=tuple(backend.read(u.message_buffer) for u in self.units[:-1]),
            delays=tuple(backend.read(b) for b in self.delay_buffers()),
        )

    def write_state(self, state: PipelineState):
        for u, a in zip(self.units, state.outputs):
            u.output_buffer.assign(a)
        for u, m in zip(self.units, state.messages):
            u.message_buffer.assign(m)
        for b, line in zip(self.delay_buffers(), state.delays):
            b.assign(line)

    def zero_state(self) -> PipelineState:
        """A fresh state as tensors (buffers untouched), each on its unit's core."""
        outputs, messages, delays = [], [], []
        for i, u in enumerate(self.units, start=1):
            with self.unit_scope(i):
                outputs.append(ops.zeros(u.output_buffer.shape, u.output_buffer.dtype))
                if u.message_buffer is not None:
                    messages.append(ops.zeros(u.message_buffer.shape, u.message_buffer.dtype))
                delays += [ops.zeros(b.shape, b.dtype) for b in u.delay_buffers if b is not None]
        if self.head_lines:
            with self.unit_scope(self.num_units):
                delays += [ops.zeros(b.shape, b.dtype) for b in self.head_lines]
        return PipelineState(
            t=ops.convert_to_tensor(0, "int32"),
            outputs=tuple(outputs),
            messages=tuple(messages),
            delays=tuple(delays),
        )

    def reset_state(self):
        for u in self.units:
            u.reset_state()
        for b in self.head_lines:
            b.assign(ops.zeros(b.shape, b.dtype))

    def load_own_variables(self, store):
        """Keras' loading of the pipeline's own variables, the head's delay lines: as
        Unit.load_own_variables (a line saved at another batch size starts at zero)."""
        load_buffers(getattr(self, "head_lines", []), store)

    # -- Forward passes ----------------------------------------------------------

    def gather(self, i: int, previous: Sequence, state: PipelineState):
        """Sources of unit i (or of the head, i = L + 1) at step t: a_j[t-1-d] for each
        edge, and the advanced delay lines.

        previous: a_j[t-1] for j = 0..L, with previous[0] = x[t].
        Returns (inputs, {line index: new line}). The head's lines from the input read,
        at a fresh state (t = 0), as if they held x[0]: the clip's start repeats, as in
        the copy-last baseline (masked steps only, for the units' own edges).
        """
        inputs, new_lines = [], {}
        slot = self._slots[i]
        for k, e in enumerate(self.sources(i)):
            if e.delay == 0:
                inputs.append(previous[e.source])
                continue
            line = state.delays[slot[k]]  # [d, B, ...], holds a_j[t-1-d] .. a_j[t-2]
            newest = ops.cast(previous[e.source], line.dtype)  # (frames come in float32)
            if i > self.num_units:
                line = ops.where(state.t == 0, newest[None], line)  # (broadcast over d)
            inputs.append(line[0])
            new_lines[slot[k]] = ops.concatenate([line[1:], newest[None]], axis=0)
        return inputs, new_lines

    def check_unit_output(self, i: int, a):
        """Returns a_i, or raises naming unit i when its output's shape is not the declared one.

        The buffers, the messages and the graph loop are shaped by what the unit
        declared when it was built (its compute_output_spec); a layer that returns
        another shape at run time would otherwise fail deep inside tf.while_loop.
        """
        want = tuple(self.units[i - 1].output_shape_)
        got = tuple(a.shape)
        if len(got) != len(want) or any(g is not None and g != w for g, w in zip(got, want)):
            raise ValueError(
                f"Unit {i} ({self.units[i - 1].name!r}) returned an output of shape {got}, but "
                f"declared {want} when it was built (its layer's compute_output_spec). Make the "
                "layer's call return the shape it declares (e.g. fix compute_output_shape), or "
                "wrap the block so that its output shape is static."
            )
        return a

    def apply_head(self, a_top, frames: Sequence = (), training=None):
        """y[t] = head(a_L[t], frames), in float32 (Keras' convention for a model's outputs
        under mixed precision: losses and metrics are taken in float32).

        frames: what the head's edges bring (gather(L + 1)): x[t - lag] for a head that
        reads the last frame seen, then x[t - lag - 1] for one that reads the frame
        before it; nothing for other heads.
        """
        if self.head is None:
            out = a_top
        elif self.head_edges:
            if len(frames) != len(self.head_edges):
                raise ValueError(
                    f"The head {self.head.name!r} reads {len(self.head_edges)} frame(s) besides "
                    "a_L[t] (x[t - lag], then x[t - lag - 1]); the pipeline's forward passes "
                    "give them (Pipeline.gather(L + 1))."
                )
            names = ("last_frame", "previous_frame")[: len(frames)]
            out = self.head(a_top, training=training, **dict(zip(names, frames)))
        else:
            out = self.head(a_top, training=training)
        return ops.cast(out, "float32")

    def step(self, state: PipelineState, x_t, unit_fn: Callable, training=None):
        """The skeleton of one pipelined computation step t, for every unit at once.

            u_i[t] = C_i({a_j[t-1-d_ji]}),  a_0[t-1] := x[t]

        unit_fn(i, unit, inputs, head) -> (a_i [B, *out_i], extra) runs unit i on its
        sources (inside its core's scope); `head` is None below the top and, for unit
        L, the function a_L -> y[t] (the head on the frames its edges bring). Units
        read only the previous step's buffers, so no unit waits on another. x_t:
        [B, *frame]. Returns (state at t without messages changed, [extra_i per unit]).
        """
        previous = (ops.convert_to_tensor(x_t), *state.outputs)  # a_j[t-1], j = 0..L
        outputs, extras, lines = [], [], list(state.delays)
        for i, unit in enumerate(self.units, start=1):
            with self.unit_scope(i):
                inputs, new_lines = self.gather(i, previous, state)
                head = None
                if i == self.num_units:
                    frames, head_lines = self.gather(i + 1, previous, state)
                    new_lines.update(head_lines)

                    def head(a, frames=frames):
                        return self.apply_head(a, frames, training=training)

                a, extra = unit_fn(i, unit, inputs, head)
                outputs.append(self.check_unit_output(i, a))
                extras.append(extra)
                for k, line in new_lines.items():
                    lines[k] = line
        new_state = state._replace(t=state.t + 1, outputs=tuple(outputs), delays=tuple(lines))
        return new_state, extras

    def forward_step(self, state: PipelineState, x_t, training=None):
        """One step of the pipelined network. x_t: [B, *frame]. Returns (state, top output)."""

        def forward(i, unit, inputs, head):
            a = unit(inputs, training=training)
            return a, None if head is None else head(self.check_unit_output(i, a))

        state, extras = self.step(state, x_t, forward, training=training)
        return state, extras[-1]

    def frame_forward(self, x, training=None, previous=None):
        """The per-frame network: every unit works on the same frame. x: [N, *frame];
        previous: the frame before each [N, *frame], for a head that reads it (default x)."""
        activations = [x]
        for i, (unit, into) in enumerate(zip(self.units, self.topology.sources), start=1):
            with self.unit_scope(i):
                activations.append(unit([activations[e.source] for e in into], training=training))
        with self.unit_scope(self.num_units):
            # No delays: the newest frame in the top's output is x itself.
            frames = (x, x if previous is None else previous)[: len(self.head_edges)]
            return self.apply_head(activations[-1], frames, training=training)

    def call(self, clip, training=None):
        """Pipelined outputs of a whole clip from a zero state: [B, K, ...] -> [B, K, out]."""
        clip = ops.convert_to_tensor(clip)
        if clip.shape[1] is None:
            raise ValueError("Pipeline.call needs a static clip length K.")

        def step(state, k):
            return self.forward_step(state, clip[:, k], training=training)

        return unroll(step, self.zero_state(), clip.shape[1], static=True)[1]

    # -- Input checks --------------------------------------------------------------

    def check_clip(self, clip, name: str = "clip", batch_size: int | None = None):
        """Raises a clear error unless clip is float [B, K, *frame_shape] with the buffers' B.

        batch_size: the batch expected when it is not B (R local replicas: R * B).
        """
        shape = tuple(clip.shape)
        batch_size = batch_size or self.batch_size
        expected = (batch_size, "K", *self.frame_shape)
        if not backend.is_floating(clip.dtype):
            raise TypeError(
                f"{name} has dtype {keras.backend.standardize_dtype(clip.dtype)}; the pipeline "
                "takes float frames. Convert and normalise first, e.g. "
                "keras.ops.cast(frames, 'float32') / 127.5 - 1."
            )
        if len(shape) != len(expected):
            raise ValueError(
                f"{name} has shape {shape}; expected [B, K, *frame] = {expected} "
                "(a batch of clips, time second)."
            )
        if shape[0] != batch_size:
            replicas = batch_size // self.batch_size
            per = f" ({replicas} local replicas x {self.batch_size})" if replicas > 1 else ""
            raise ValueError(
                f"{name} has batch size {shape[0]}, but the state buffers were built for "
                f"batch_size={batch_size}{per}. Batch with drop_remainder=True, or rebuild the "
                "pipeline with the batch size you feed."
            )
        if shape[2:] != self.frame_shape:
            raise ValueError(
                f"{name} frames have shape {shape[2:]}, but the pipeline was built for frames "
                f"of shape {self.frame_shape}. Resize the input or rebuild with that frame_shape."
            )

    def describe(self) -> str:
        lines = [self.topology.describe()]
        for i, (u, s) in enumerate(zip(self.units, self.output_shapes), start=1):
            n = int(sum(np.prod(v.shape) for v in self.unit_variables(i)))
            where = self.plan.device(self.cores[i - 1]) or "default device"
            lines.append(
                f"  unit {i} {u.name}: out {s[1:]}, {n} params, core {self.cores[i - 1]} ({where})"
            )
        return "\n".join(lines)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=[keras.saving.serialize_keras_object(u) for u in self.units],
            topology=(
                self._topology_arg
                if isinstance(self._topology_arg, str)
                else [tuple(e) for e in self._topology_arg]
            ),
            head=keras.saving.serialize_keras_object(self.head) if self.head else None,
            task=keras.saving.serialize_keras_object(self.task),
            batch_size=getattr(self, "batch_size", None),
            frame_shape=getattr(self, "frame_shape", None),
        )
        return config

    @classmethod
    def from_config(cls, config):
        """The pipeline of get_config, its units and head unbuilt until Pipeline.build.

        Every nested build_config is dropped, so each layer is built by its parent and
        its variables' paths name the parent ("block1/conv/kernel"). Deserialized built,
        a sublayer is built alone: two units' convs would both be "conv/kernel", a path
        that checkpoints and the export (variables by path) cannot tell apart.
        """
        config = dict(config)
        config["units"] = [
            keras.saving.deserialize_keras_object(_unbuilt(u)) for u in config["units"]
        ]
        if config["head"] is not None:
            config["head"] = keras.saving.deserialize_keras_object(_unbuilt(config["head"]))
        if isinstance(config.get("task"), dict):
            config["task"] = keras.saving.deserialize_keras_object(config["task"])
        return cls(**config)


def _unbuilt(config):
    """A Keras config without any "build_config", at every depth."""
    if isinstance(config, dict):
        return {k: _unbuilt(v) for k, v in config.items() if k != "build_config"}
    if isinstance(config, (list, tuple)):
        return type(config)(_unbuilt(v) for v in config)
    return config


def _plan_for(
    units, placement: placement_lib.Placement | None
) -> tuple[placement_lib.Plan, list[int]]:
    """The plan and per-unit core indices: the placement's, or the units' own devices."""
    if placement is None:
        devices = list(dict.fromkeys(u.device for u in units))  # distinct, in order
        return placement_lib.DevicePlan.single(devices), [devices.index(u.device) for u in units]
    if not isinstance(placement, placement_lib.Placement):
        raise TypeError(
            f"Pipeline placement is a {type(placement).__name__}; give a "
            "sideways_tf.placement.Placement, e.g. runtime.placement([0, 0, 1]), or None."
        )
    pinned = [u.name for u in units if u.device is not None]
    if pinned:
        raise ValueError(
            f"Units {pinned} have a device= of their own, but the pipeline is given a "
            "runtime's placement, which places units by logical core. Leave Unit(device=None) "
            "and set runtime.placement (core indices per unit, or 'auto')."
        )
    plan = placement.plan
    if isinstance(plan, placement_lib.DevicePlan) and len(plan.devices) > 1:
        if not tf.distribute.has_strategy():  # replicas' variables would not be mirrored
            raise ValueError(
                f"The placement spans {len(plan.devices)} replicas, but the pipeline is built "
                "outside their strategy; build it inside the runtime's scope: "
                "`with runtime.scope(): model_fn(..., placement=runtime.placement(cores))`."
            )
    return plan, placement.cores_for(len(units))
