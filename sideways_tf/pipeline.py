"""Pipeline: units, the edges between them, a task head and a loss.

The pipeline holds the network and its state; it knows two forward passes,
  frame_forward   the per-frame network, every unit on the same frame (no delays);
  forward_step    one computation step of the pipelined network (algorithm.md s.3):
                  u_i[t] = C_i({a_j[t-1-d_ji]}), a_i[t] = H_i(u_i[t]), a_0[t-1] := x[t].
Both are pure functions of an explicit PipelineState; the units' buffers store
that state between calls (read_state / write_state / reset_state). How
gradients are formed from these passes is the engine's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from sideways_tf import placement as placement_lib
from sideways_tf import tasks
from sideways_tf import topology as topology_lib
from sideways_tf.steps import unroll
from sideways_tf.units import Unit, _per_replica_buffers


class PipelineState(NamedTuple):
    """What the pipeline carries from step t-1 to step t (all K-independent).

    t:        [] int32, steps taken since the last reset.
    outputs:  a_i[t-1] for i = 1..L, each [B, *out_i].
    messages: m_i[t] for i = 1..L-1, each [B, *out_i] (the top needs none).
    delays:   one line [d, B, *in] per delayed edge, oldest first; then, when the
              head reads the last frame seen (a residual head, e.g. FrameDecoder(
              residual=True)) and lag > 0, the head's line [lag, B, *frame] holding
              x[t-lag] .. x[t-1], lag = Topology.newest_lag(L); a head that also reads
              the frame before it (FrameDecoder(previous_frame=True)) has a line one
              longer, [lag + 1, B, *frame], from x[t-lag-1].
    """

    t: tf.Tensor
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
        the frame itself in the per-frame network), carried to it by a delay line
        from the input (the last entry of PipelineState.delays; a buffer, like the
        units' lines, so it is checkpointed and streams in export). A head that also
        has `reads_previous_frame = True` is given x[t - lag - 1] too (the line is one
        longer; before the clip's first frame it holds that frame, as copy-last does).
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
        # Index of each delayed edge's line in PipelineState.delays: _slots[i][k].
        self._slots, n = {}, 0
        for i, into in enumerate(self.topology.sources, start=1):
            self._slots[i] = {}
            for k, e in enumerate(into):
                if e.delay > 0:
                    self._slots[i][k], n = n, n + 1
        self.plan, self.cores = _plan_for(units, placement)
        if (batch_size is None) != (frame_shape is None):
            raise ValueError("Give both batch_size and frame_shape to build now, or neither.")
        if batch_size is not None:
            self.build((batch_size, *frame_shape))

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
        self._build_head_line()

    def _build_head_line(self):
        """The head's line from the input: x[t-lag] .. x[t-1], [lag, B, *frame] float32
        (from x[t-lag-1], [lag + 1, B, *frame], for a head that reads the previous frame).

        Only for a head that reads the last frame seen, and only when the line is not
        empty (the one-unit pipeline's top output sees x[t] itself). Frames stay float32
        in every precision, so that a residual head's x[t - lag] + 0 is the frame exactly.
        """
        self.head_lag = self.topology.newest_lag(self.num_units)
        self.head_line = None
        length = self.head_lag + int(self.head_reads_previous_frame)
        if not self.head_reads_frame or length == 0:
            return
        with self.unit_variable_scope(self.num_units), _per_replica_buffers():
            self.head_line = self.add_weight(
                shape=(length, self.batch_size, *self.frame_shape),
                initializer="zeros",
                trainable=False,
                name="head_line",
                dtype="float32",
                autocast=False,
            )

    @property
    def head_reads_frame(self) -> bool:
        """Whether the head takes the last frame seen, x[t - lag], besides a_L[t]."""
        return bool(getattr(self.head, "reads_last_frame", False))

    @property
    def head_reads_previous_frame(self) -> bool:
        """Whether the head also takes the frame before it, x[t - lag - 1]."""
        return self.head_reads_frame and bool(getattr(self.head, "reads_previous_frame", False))

    # -- Variables ---------------------------------------------------------------

    def unit_variables(self, i: int) -> list:
        """theta_i: trainable variables of unit i (1-based); the top also owns the head."""
        variables = list(self.units[i - 1].trainable_variables)
        if i == self.num_units and self.head is not None:
            variables += list(self.head.trainable_variables)
        return variables

    # -- State -----------------------------------------------------------------

    def delay_buffers(self) -> list:
        """The delay lines of every delayed edge, then the head's line (if any), in
        PipelineState.delays order."""
        lines = [b for u in self.units for b in u.delay_buffers if b is not None]
        return lines + ([self.head_line] if getattr(self, "head_line", None) is not None else [])

    def state_variables(self) -> list:
        """Every buffer of every unit, and the head's line: the whole state besides parameters."""
        head = [self.head_line] if getattr(self, "head_line", None) is not None else []
        return [b for u in self.units for b in u.state_variables] + head

    def read_state(self, t) -> PipelineState:
        return PipelineState(
            t=tf.convert_to_tensor(t, tf.int32),
            outputs=tuple(tf.convert_to_tensor(u.output_buffer) for u in self.units),
            messages=tuple(tf.convert_to_tensor(u.message_buffer) for u in self.units[:-1]),
            delays=tuple(tf.convert_to_tensor(b) for b in self.delay_buffers()),
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
                outputs.append(tf.zeros(u.output_buffer.shape, u.output_buffer.dtype))
                if u.message_buffer is not None:
                    messages.append(tf.zeros(u.message_buffer.shape, u.message_buffer.dtype))
                delays += [tf.zeros(b.shape, b.dtype) for b in u.delay_buffers if b is not None]
        if self.head_line is not None:
            with self.unit_scope(self.num_units):
                delays.append(tf.zeros(self.head_line.shape, self.head_line.dtype))
        return PipelineState(
            t=tf.constant(0, tf.int32),
            outputs=tuple(outputs),
            messages=tuple(messages),
            delays=tuple(delays),
        )

    def reset_state(self):
        for u in self.units:
            u.reset_state()
        if self.head_line is not None:
            self.head_line.assign(tf.zeros(self.head_line.shape, self.head_line.dtype))

    # -- Forward passes ----------------------------------------------------------

    def gather(self, i: int, previous: Sequence, state: PipelineState):
        """Sources of unit i at step t: a_j[t-1-d] for each edge, and the advanced delay lines.

        previous: a_j[t-1] for j = 0..L, with previous[0] = x[t].
        Returns (inputs, {line index: new line}).
        """
        inputs, new_lines = [], {}
        slot = self._slots[i]
        for k, e in enumerate(self.topology.sources[i - 1]):
            if e.delay == 0:
                inputs.append(previous[e.source])
                continue
            line = state.delays[slot[k]]  # [d, B, ...], holds a_j[t-1-d] .. a_j[t-2]
            inputs.append(line[0])
            newest = tf.cast(previous[e.source], line.dtype)  # (frames come in float32)
            new_lines[slot[k]] = tf.concat([line[1:], newest[None]], axis=0)
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

    def head_frame(self, state: PipelineState, x_t):
        """What the head reads besides a_L[t] at step t: (x[t - lag] or None,
        x[t - lag - 1] or None, new head line).

        x_t: [B, *frame]. The line holds x[t-lag] .. x[t-1] (from x[t-lag-1] for a head
        that reads the previous frame): the head reads its oldest entries and x[t] goes
        in last. At a fresh state (t = 0) the line is read as if it held x[0] (the clip's
        start repeats, as in the copy-last baseline). Returns (None, None, None) for a
        head that reads no frame, (x_t, None, None) when the line is empty (lag = 0).
        """
        if not self.head_reads_frame:
            return None, None, None
        if self.head_line is None:
            return x_t, None, None
        line = state.delays[-1]  # the head's line is the last one
        newest = tf.cast(x_t, line.dtype)
        line = tf.where(state.t == 0, tf.broadcast_to(newest[None], tf.shape(line)), line)
        new_line = tf.concat([line[1:], newest[None]], axis=0)
        if not self.head_reads_previous_frame:
            return line[0], None, new_line
        last = line[1] if self.head_lag > 0 else newest
        return last, line[0], new_line

    def apply_head(self, a_top, training=None, last_frame=None, previous_frame=None):
        """The task head on the top unit's output, in float32 (Keras' convention for a
        model's outputs under mixed precision: losses and metrics are taken in float32).

        last_frame: x[t - lag] [B, *frame], for a head that reads the last frame seen
        (head_frame gives it); previous_frame: x[t - lag - 1], for a head that also reads
        the frame before it; both ignored by other heads.
        """
        if self.head is None:
            out = a_top
        elif self.head_reads_frame:
            if last_frame is None:
                raise ValueError(
                    f"The head {self.head.name!r} predicts a change from the last frame seen "
                    "and needs last_frame= (x[t - lag], Pipeline.head_frame); the pipeline's "
                    "forward passes give it."
                )
            extra = {"previous_frame": previous_frame} if self.head_reads_previous_frame else {}
            out = self.head(a_top, last_frame=last_frame, training=training, **extra)
        else:
            out = self.head(a_top, training=training)
        return tf.cast(out, tf.float32)

    def forward_step(self, state: PipelineState, x_t, training=None):
        """One step of the pipelined network. x_t: [B, *frame]. Returns (state, top output)."""
        previous = (tf.convert_to_tensor(x_t), *state.outputs)
        outputs, lines = [], list(state.delays)
        for i, unit in enumerate(self.units, start=1):
            with self.unit_scope(i):
                inputs, new_lines = self.gather(i, previous, state)
                outputs.append(self.check_unit_output(i, unit(inputs, training=training)))
                for k, line in new_lines.items():
                    lines[k] = line
        with self.unit_scope(self.num_units):
            last_frame, previous_frame, head_line = self.head_frame(state, x_t)
            if head_line is not None:
                lines[-1] = head_line
            logits = self.apply_head(
                outputs[-1],
                training=training,
                last_frame=last_frame,
                previous_frame=previous_frame,
            )
        return state._replace(t=state.t + 1, outputs=tuple(outputs), delays=tuple(lines)), logits

    def frame_forward(self, x, training=None, previous=None):
        """The per-frame network: every unit works on the same frame. x: [N, *frame];
        previous: the frame before each [N, *frame], for a head that reads it (default x)."""
        activations = [x]
        for i, (unit, into) in enumerate(zip(self.units, self.topology.sources), start=1):
            with self.unit_scope(i):
                activations.append(unit([activations[e.source] for e in into], training=training))
        with self.unit_scope(self.num_units):
            # No delays: the newest frame in the top's output is x itself.
            previous = x if previous is None else previous
            return self.apply_head(
                activations[-1], training=training, last_frame=x, previous_frame=previous
            )

    def call(self, clip, training=None):
        """Pipelined outputs of a whole clip from a zero state: [B, K, ...] -> [B, K, out]."""
        clip = tf.convert_to_tensor(clip)
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
        dtype = tf.as_dtype(clip.dtype)
        if not dtype.is_floating:
            raise TypeError(
                f"{name} has dtype {dtype.name}; the pipeline takes float frames. Convert and "
                "normalise first, e.g. tf.cast(frames, tf.float32) / 127.5 - 1."
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
