"""The engine: ONE update function that trains a pipeline in every mode.

    update(clip, labels):  state -> gradients by the mode's rule -> one optimizer step

The gradient rules (algorithm.md section 5), each a pure function
    rule(pipeline, state, clip [B, K, *frame], targets [B, K, ...], present [K]) -> ClipGradients
where targets[:, t] is what the top output of step t is scored against (the
clip's label at every step, or a future frame: sideways_tf.prediction) and
present[t] is 0.0 where step t has no target (it carries no loss, like a step
that is still filling the pipeline).
  frame_bp       exact BP of the per-frame network, averaged over the clip's frames;
  bptt           exact gradient of the pipelined network over the clip (one tape, O(K));
  sideways /     section 3, a graph loop over frames of `sideways_step`: every unit
  skip_sideways  does a forward and a local VJP per step, with O(1) state in K.
`sideways` and `skip_sideways` are the same rule on a chain or a skip topology.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from sideways_tf import placement, precision, prediction
from sideways_tf.pipeline import Pipeline, PipelineState

MODES = ("frame_bp", "bptt", "sideways", "skip_sideways")


class StepResult(NamedTuple):
    """What one sideways step yields besides the new state."""

    grads: tuple  # g_theta_i[t], one list per unit, aligned with pipeline.unit_variables(i)
    loss: tf.Tensor  # [] l_t, zero while masked
    logits: tf.Tensor  # [B, *out] top output
    valid: tf.Tensor  # [] 1.0 once t >= T_fill, else 0.0


class ClipGradients(NamedTuple):
    """A rule's result for one clip (or one chunk of a stream)."""

    grads: tuple  # per unit, averaged over valid steps
    state: PipelineState  # state after the clip
    loss: tf.Tensor  # [] mean loss over valid steps
    logits: tf.Tensor  # [B, *out] top outputs averaged over valid steps
    valid_steps: tf.Tensor  # [] number of valid steps


def _valid(pipeline: Pipeline, t) -> tf.Tensor:
    """1.0 when the top output of step t (1-based) is built from real frames only."""
    return tf.cast(t >= pipeline.fill_steps, tf.float32)


def _masked_loss(pipeline, target, logits, valid):
    """The loss in float32, times the loss scale S when the engine scales losses (float16)."""
    logits = tf.cast(logits, tf.float32)
    return precision.scale_loss(tf.reduce_mean(pipeline.loss_fn(target, logits)) * valid)


def step_targets(pipeline: Pipeline, mode: str, clip, labels):
    """What the top output of every step is scored against, and where it exists.

    Classification: the clip's label at every step. Future frames (the pipeline's
    loss is a prediction.FrameLoss): x[t - lag + h], lag being the mode's
    (prediction.input_lag). clip: [B, K, *frame]; labels: [B] or None.
    Returns (targets [B, K, ...], present [K] float32).
    """
    clip = tf.convert_to_tensor(clip)
    if prediction.predicts_frames(pipeline):
        lag = prediction.input_lag(pipeline, mode)
        return prediction.frame_targets(clip, lag, pipeline.loss_fn.horizon)
    if labels is None:
        raise ValueError(
            "This pipeline classifies clips, so training and fidelity need labels [B]; "
            "the data must yield 'label' (or give the model head='frames' to predict frames)."
        )
    num_frames = tf.shape(clip)[1]
    labels = tf.convert_to_tensor(labels)
    targets = tf.tile(labels[:, None], tf.stack([1, num_frames]))
    return targets, tf.ones([num_frames], tf.float32)


def sideways_step(
    pipeline: Pipeline, state: PipelineState, x_t, target_t, present_t=1.0, training=True
):
    """One computation step t of algorithm.md section 3, for every unit at once.

        u_i[t] = C_i({a_j[t-1-d_ji]}),  a_i[t] = H_i(u_i[t]),  a_0[t-1] := x[t]
        m_L[t] = d l_t / d a_L[t]                     (the top's fresh loss gradient)
        (g_theta_i[t], r_{i->j}[t]) = VJP of C_i, H_i at u_i[t] applied to m_i[t]
        m_j[t+1] = sum_i r_{i->j}[t]

    Units read only the previous step's buffers, so no unit waits on another.
    x_t: [B, *frame]; target_t: [B, ...] (a label per clip, or a frame); present_t:
    [] 0.0 when step t has no target. Returns (state at t, StepResult).
    """
    num_units = pipeline.num_units
    x_t = tf.convert_to_tensor(x_t)
    t = state.t + 1
    valid = _valid(pipeline, t) * tf.cast(present_t, tf.float32)
    previous = (x_t, *state.outputs)  # a_j[t-1], j = 0..L
    outputs, lines, grads = [], list(state.delays), []
    replies = [[] for _ in range(num_units + 1)]  # r_{i->j}[t], gathered per source j
    for i, unit in enumerate(pipeline.units, start=1):
        edges = pipeline.topology.sources[i - 1]
        with pipeline.unit_scope(i):
            inputs, new_lines = pipeline.gather(i, previous, state)
            theta = pipeline.unit_variables(i)
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                a = unit(inputs, training=training)
                if i == num_units:
                    logits = pipeline.apply_head(a, training=training)
                    loss = _masked_loss(pipeline, target_t, logits, valid)
                    target, upstream = loss, None
                else:
                    target, upstream = a, state.messages[i - 1]
            senders = [k for k, e in enumerate(edges) if e.source > 0]
            vjp = tape.gradient(
                target,
                [inputs[k] for k in senders] + theta,
                output_gradients=upstream,
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            for k, r in zip(senders, vjp):
                replies[edges[k].source].append(r)
            grads.append(vjp[len(senders) :])
            outputs.append(a)
            for k, line in new_lines.items():
                lines[k] = line
    messages = []
    for j in range(1, num_units):
        with pipeline.unit_scope(j):
            messages.append(tf.add_n(replies[j]))
    new_state = PipelineState(t, tuple(outputs), tuple(messages), tuple(lines))
    return new_state, StepResult(tuple(grads), loss, logits, valid)


def _zeros_like_vars(pipeline):
    out = []
    for i in range(1, pipeline.num_units + 1):
        with pipeline.unit_scope(i):
            out.append([tf.zeros(v.shape, v.dtype) for v in pipeline.unit_variables(i)])
    return out


def sideways_gradients(pipeline, state, clip, targets, present, training=True) -> ClipGradients:
    """Sideways / Skip-Sideways: a graph loop of `sideways_step` over the clip's frames.

    g_theta_i = sum over valid steps t of g_theta_i[t], divided by the number of
    valid steps. Memory: the state and one accumulator per parameter, whatever K.
    """
    clip = tf.convert_to_tensor(clip)
    num_frames = tf.shape(clip)[1]
    logits_zero = tf.zeros((pipeline.batch_size, *pipeline.top_output_shape[1:]))

    def body(k, state, accum, loss_sum, n_valid, logits_sum):
        state, step = sideways_step(
            pipeline, state, clip[:, k], targets[:, k], present[k], training=training
        )
        summed = []
        for i, (au, gu) in enumerate(zip(accum, step.grads), start=1):
            with pipeline.unit_scope(i):  # each unit's accumulator stays on its device
                # float32 like the parameters, whatever dtype a VJP comes out in.
                summed.append([a + tf.cast(g, a.dtype) for a, g in zip(au, gu)])
        accum = summed
        return (
            k + 1,
            state,
            accum,
            loss_sum + step.loss,
            n_valid + step.valid,
            logits_sum + step.logits * step.valid,
        )

    init = (tf.constant(0), state, _zeros_like_vars(pipeline), 0.0, 0.0, logits_zero)
    _, state, accum, loss_sum, n_valid, logits_sum = tf.while_loop(
        lambda k, *_: k < num_frames, body, init, parallel_iterations=1
    )
    n = tf.maximum(n_valid, 1.0)
    grads = []
    for i, gu in enumerate(accum, start=1):
        with pipeline.unit_scope(i):
            grads.append([g / n for g in gu])
    return ClipGradients(tuple(grads), state, loss_sum / n, logits_sum / n, n_valid)


def _split_per_unit(pipeline, flat):
    out, start = [], 0
    for i in range(1, pipeline.num_units + 1):
        n = len(pipeline.unit_variables(i))
        out.append(list(flat[start : start + n]))
        start += n
    return tuple(out)


def all_variables(pipeline) -> list:
    """theta_1, ..., theta_L flattened in unit order (the head with the top unit)."""
    return [v for i in range(1, pipeline.num_units + 1) for v in pipeline.unit_variables(i)]


def unrolled_forward(pipeline, state, clip, targets=None, present=None, training=True):
    """The pipelined network over a clip, one forward_step per frame (K static).

    targets [B, K, ...] and present [K] as in step_targets. Returns (state, mean
    loss over valid steps (0 without targets), top outputs averaged over valid
    steps [B, ...], number of valid steps).
    """
    loss_sum, n_valid, logits_sum = 0.0, 0.0, 0.0
    for k, x_t in enumerate(tf.unstack(tf.convert_to_tensor(clip), axis=1)):
        state, logits = pipeline.forward_step(state, x_t, training=training)
        valid = _valid(pipeline, state.t)
        if present is not None:
            valid *= present[k]
        if targets is not None:
            loss_sum += _masked_loss(pipeline, targets[:, k], logits, valid)
        n_valid += valid
        logits_sum += logits * valid
    n = tf.maximum(n_valid, 1.0)
    return state, loss_sum / n, logits_sum / n, n_valid


def bptt_gradients(pipeline, state, clip, targets, present, training=True) -> ClipGradients:
    """The exact gradient of the pipelined network over the clip: one tape over K steps.

    loss = mean over valid steps t of l_t. The tape holds every step's activations,
    so memory grows with K (the frame loop is unrolled: K must be static).
    """
    theta = all_variables(pipeline)
    with tf.GradientTape() as tape:
        state, loss, logits, n_valid = unrolled_forward(
            pipeline, state, clip, targets, present, training
        )
    flat = tape.gradient(loss, theta, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return ClipGradients(_split_per_unit(pipeline, flat), state, loss, logits, n_valid)


def frame_logits(pipeline, clip, training=True):
    """The per-frame network on a clip's K frames as one batch of B*K frames.

    Returns (per-frame outputs [B*K, ...], outputs averaged over the clip [B, ...]).
    """
    clip = tf.convert_to_tensor(clip)
    frames = tf.reshape(clip, (-1, *pipeline.frame_shape))  # [B*K, *frame]
    logits = pipeline.frame_forward(frames, training=training)
    per_clip = tf.reshape(logits, (pipeline.batch_size, -1, *logits.shape[1:]))  # [B, K, ...]
    return logits, tf.reduce_mean(per_clip, axis=1)


def frame_gradients(pipeline, state, clip, targets, present, training=True) -> ClipGradients:
    """frame_bp: exact BP of the per-frame network (no delays), averaged over frames.

    The K frames go through as one batch of B*K frames (the same mean gradient,
    computed in one pass). Every frame with a target counts; the buffers are not used.
    """
    num_frames = tf.shape(clip)[1]
    frame_targets = tf.reshape(targets, (-1, *targets.shape[2:]))  # [B*K, ...]
    weights = tf.tile(present, [pipeline.batch_size])  # [B*K], frame k of clip b at b*K + k
    total = tf.maximum(tf.reduce_sum(weights), 1.0)
    theta = all_variables(pipeline)
    with tf.GradientTape() as tape:
        per_frame, logits = frame_logits(pipeline, clip, training=training)
        per_frame = tf.cast(per_frame, tf.float32)
        loss = tf.reduce_sum(pipeline.loss_fn(frame_targets, per_frame) * weights) / total
        loss = precision.scale_loss(loss)  # (times S when the engine scales losses)
    flat = tape.gradient(loss, theta, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    state = state._replace(t=state.t + num_frames)
    n = tf.reduce_sum(present)
    return ClipGradients(_split_per_unit(pipeline, flat), state, loss, logits, n)


RULES = {
    "frame_bp": frame_gradients,
    "bptt": bptt_gradients,
    "sideways": sideways_gradients,
    "skip_sideways": sideways_gradients,
}


def check_mode(mode: str, pipeline: Pipeline):
    """Raises unless `mode` exists and fits the pipeline's topology."""
    if mode not in RULES:
        raise ValueError(f"Unknown mode {mode!r}; choose one of {list(MODES)}.")
    if mode == "sideways" and not pipeline.topology.is_chain:
        raise ValueError(
            "mode='sideways' is plain Sideways on the chain, but this pipeline has skip or "
            "delayed edges; use mode='skip_sideways', or topology='chain'."
        )
    if mode == "skip_sideways" and pipeline.topology.is_chain:
        raise ValueError(
            "mode='skip_sideways' needs skip edges, but this pipeline is a chain; use "
            "topology='skip(2)' (or another), or mode='sideways'."
        )


def _all_finite(x) -> tf.Tensor:
    return tf.reduce_all(tf.math.is_finite(x))


def _global_norm(tensors):
    return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in tensors] + [tf.constant(0.0)]))


class Engine:
    """Trains a pipeline in one mode with one update function, on one device or many.

    Args:
      pipeline: a built Pipeline.
      mode: "frame_bp", "bptt", "sideways" or "skip_sideways".
      optimizer: a Keras optimizer (built here, before the first trace); None for
        an engine that only predicts and measures gradient fidelity.
      update_every: None for one optimizer step per clip (default); N for a step
        every N computation steps (streaming / online learning). K must be a
        multiple of N; the state carries over between the chunks of a clip.
      carry_state: keep the buffers from one clip to the next (consecutive clips of
        the same videos); False starts every new batch of clips from zero.
      jit_compile: XLA-compile the update; needs every unit of a replica on one
        CPU/GPU device (TPU steps are always compiled).

    Data parallelism: create the pipeline, the optimizer and the engine inside a
    tf.distribute strategy's scope (sideways_tf.distribute.Runtime.scope()). Each
    replica then runs the whole clip on its own B clips with its own buffers, in
    one `strategy.run`; the optimizer all-reduces (sums) the replicas' gradients
    once per parameter update, so each replica's gradient is scaled by
    1 / num_replicas: R replicas of B clips update exactly as one device on R*B.

    Loss scaling (float16, sideways_tf.precision): with a LossScaleOptimizer the
    rules differentiate S * loss (S its dynamic scale), the optimizer unscales.
    Gradients that overflow while the loss is finite halve S and skip the update
    (metrics["overflow"], not a non-finite step); a non-finite loss is the data's
    or the model's fault and is skipped as without scaling.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        mode: str,
        optimizer: keras.optimizers.Optimizer | None = None,
        update_every: int | None = None,
        carry_state: bool = False,
        jit_compile: bool = False,
    ):
        if not pipeline.built:
            raise ValueError(
                "Build the pipeline first: Pipeline(..., batch_size=B, frame_shape=...)."
            )
        check_mode(mode, pipeline)
        if update_every is not None and update_every < 1:
            raise ValueError(
                f"update_every must be a positive number of steps, got {update_every}."
            )
        if jit_compile and pipeline.num_devices > 1 and not _on_tpu(pipeline):
            raise ValueError(
                "jit_compile=True needs every unit of a replica on one device (XLA cannot "
                "reach variables on other devices); use jit_compile=False for multi-device "
                "pipelines (gin: train.jit_compile = False)."
            )
        self.strategy = tf.distribute.get_strategy()
        self.variables = all_variables(pipeline)
        first = self.variables[0]
        first = first.value if isinstance(first, keras.Variable) else first
        if not self.strategy.extended.variable_created_in_scope(first):
            raise ValueError(
                "The pipeline's variables were created under another tf.distribute strategy "
                "than this engine's. Build the pipeline, the optimizer and the Engine inside "
                "the same scope: `with runtime.scope(): ...`."
            )
        self.pipeline, self.mode, self.optimizer = pipeline, mode, optimizer
        self.rule = RULES[mode]
        self.update_every, self.carry_state = update_every, carry_state
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.local_replicas = (
            len(self.strategy.extended.worker_devices) if tf.distribute.has_strategy() else 1
        )
        with pipeline.unit_variable_scope(pipeline.num_units):
            # Steps since the last reset (per replica): decides which top losses are masked.
            self.step = tf.Variable(
                0,
                dtype=tf.int32,
                trainable=False,
                name="steps_since_reset",
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        if optimizer is not None:
            optimizer.build(self.variables)
        self.loss_scaled = optimizer is not None and precision.is_loss_scaled(optimizer)
        self.message_scale = None
        if self.loss_scaled:
            with pipeline.unit_variable_scope(pipeline.num_units):
                # S when the buffered messages were formed (rescaled when S changes).
                self.message_scale = tf.Variable(
                    float(optimizer.initial_scale),
                    dtype=tf.float32,
                    trainable=False,
                    name="message_loss_scale",
                    synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )
        self._update = tf.function(self._update_fn, jit_compile=jit_compile)
        self._predict = tf.function(self._predict_fn, jit_compile=jit_compile)
        self._predict_steps = tf.function(self._predict_steps_fn, jit_compile=jit_compile)
        self._fidelity = tf.function(self._fidelity_fn)

    @property
    def global_batch_size(self) -> int:
        """Clips per step in this process: B per replica times its local replicas."""
        return self.pipeline.batch_size * self.local_replicas

    # -- Training --------------------------------------------------------------

    def reset_state(self):
        """Zeroes the buffers: the next clip starts a new batch of videos."""
        self.pipeline.reset_state()
        self.step.assign(0)

    def train_clip(self, clip, labels=None) -> dict:
        """Trains on a batch of clips [B, K, *frame] with labels [B]; returns metrics.

        Future-frame prediction (the pipeline's loss is a prediction.FrameLoss)
        takes its targets from the clip: labels are not needed.

        With several replicas, clip and labels are either per-replica values (from
        a distributed dataset) or this process's whole batch [R_local * B, ...],
        split here in replica order. Metrics (tensors): loss (mean over valid steps
        and local replicas), logits [R_local * B, ...] (averaged over valid steps),
        valid_steps, grad_norms [L] (one per unit, mean over local replicas).
        """
        if self.optimizer is None:
            raise ValueError(
                "This Engine has no optimizer: it predicts and measures gradient fidelity "
                "only. Give one to train: Engine(pipeline, mode, keras.optimizers.Adam(...))."
            )
        clip, labels = self._distribute(clip, labels)
        num_frames = self._local(clip)[0].shape[1]
        chunk = self.update_every or num_frames
        if num_frames % chunk:
            raise ValueError(
                f"Clip length K={num_frames} is not a multiple of update_every={chunk}; "
                "pick K or update_every so that it is."
            )
        results = [
            self._update(clip, labels, tf.constant(s), chunk, fresh=s == 0 and not self.carry_state)
            for s in range(0, num_frames, chunk)
        ]
        if len(results) == 1:
            return results[0]
        weights = tf.stack([r["valid_steps"] for r in results])
        total = tf.maximum(tf.reduce_sum(weights), 1.0)
        merged = dict(results[-1])
        merged["valid_steps"] = tf.reduce_sum(weights)
        merged["applied"] = tf.reduce_all([r["applied"] for r in results])
        merged["overflow"] = tf.reduce_any([r["overflow"] for r in results])
        for key in ("loss", "logits"):
            merged[key] = sum(r[key] * r["valid_steps"] for r in results) / total
        return merged

    def _update_fn(self, clip, labels, start, chunk: int, fresh: bool):
        """THE update function: read state, take gradients by the mode's rule, apply.

        The clip (or chunk) runs in one strategy.run (`_replica_gradients`, once per
        replica, or once without a strategy), which also says whether every
        replica's loss and gradients are finite. Only then does a second
        strategy.run hand the gradients to the optimizer (its one all-reduce per
        update): a non-finite update is skipped, parameters and optimizer stay as
        they were and metrics["applied"] is False. (The decision sits between the
        two: an optimizer's all-reduce cannot sit in a conditional inside a replica.)
        Under loss scaling, a skip because the scaled gradients overflowed (the loss
        is finite) halves the scale: metrics["overflow"], metrics["loss_scale"].
        """
        out = self.strategy.run(
            self._replica_gradients,
            args=(clip, labels, start),
            kwargs={"chunk": chunk, "fresh": fresh},
        )
        finite = self._local(out["finite"])[0]  # the same on every replica

        def apply():
            self.strategy.run(lambda g: self.optimizer.apply(g, self.variables), (out["grads"],))
            return tf.constant(True)

        applied = tf.cond(finite, apply, lambda: tf.constant(False))
        overflow = self._local(out["overflow"])[0]
        lowered = tf.constant(False)
        if self.loss_scaled:
            lowered = tf.cond(overflow, self._lower_loss_scale, lambda: tf.constant(False))
        with tf.control_dependencies([applied, lowered]):
            params_finite = tf.reduce_all([_all_finite(v) for v in self.variables])
            loss_scale = self._loss_scale()
        return {
            "loss": self._local_mean(out["loss"]),
            "logits": tf.concat(self._local(out["logits"]), axis=0),
            "valid_steps": self._local_mean(out["valid_steps"]),
            "grad_norms": self._local_mean(out["grad_norms"]),
            "applied": applied,
            "params_finite": params_finite,
            "overflow": overflow,
            "loss_scale": loss_scale,
        }

    def _loss_scale(self) -> tf.Tensor:
        """[] float32: the LossScaleOptimizer's current scale S, or 1."""
        if not self.loss_scaled:
            return tf.constant(1.0)
        return tf.convert_to_tensor(self.optimizer.dynamic_scale)

    def _lower_loss_scale(self):
        """After an overflow: S / 2 and the growth counter reset (LossScaleOptimizer's rule)."""
        self.optimizer.step_counter.assign(0)
        self.optimizer.dynamic_scale.assign(self.optimizer.dynamic_scale * 0.5)
        return tf.constant(True)

    def _replica_gradients(self, clip, labels, start, chunk: int, fresh: bool):
        """One replica's share: frames [start, start + chunk) of its clips [B, K, *frame].

        Reads the state, takes the mode's gradients, writes the state back (unless
        they are not finite), and returns the gradients scaled by 1 / replicas
        (the optimizer sums them over replicas) and whether every replica's loss
        and gradients are finite (all-reduced: every replica decides alike).
        """
        # Targets come from the whole clip: a chunk's future frames may lie in the next.
        targets, present = step_targets(self.pipeline, self.mode, clip, labels)
        if chunk != clip.shape[1]:
            clip, targets = (_frames(x, start, chunk) for x in (clip, targets))
            present = present[start : start + chunk]
        state = self.pipeline.zero_state() if fresh else self.pipeline.read_state(self.step)
        loss_scale = self._loss_scale() if self.loss_scaled else None
        if loss_scale is not None and not fresh:  # messages formed under an earlier S
            state = state._replace(messages=self._rescale_messages(state.messages, loss_scale))
        with precision.scaled_losses(loss_scale):  # (loss and gradients come out times S)
            out = self.rule(self.pipeline, state, clip, targets, present)
        unscale = 1.0 if loss_scale is None else 1.0 / loss_scale
        grads, norms, finite_grads = [], [], []
        for i, gu in enumerate(out.grads, start=1):
            with self.pipeline.unit_scope(i):
                norms.append(_global_norm(gu) * unscale)
                finite_grads += [_all_finite(g) for g in gu]
                scale = 1.0 / self.num_replicas
                grads += [g * scale for g in gu] if self.num_replicas > 1 else list(gu)
        finite_loss, finite_grads = _all_finite(out.loss), tf.reduce_all(finite_grads)
        finite = finite_loss & finite_grads

        def write():
            self.pipeline.write_state(out.state)
            self.step.assign(out.state.t)
            if loss_scale is not None:
                self.message_scale.assign(loss_scale)
            return tf.constant(True)

        tf.cond(finite, write, lambda: tf.constant(False))
        bad = 1.0 - tf.cast(tf.stack([finite_loss, finite_grads]), tf.float32)
        if self.num_replicas > 1:  # every replica must take the same decision
            bad = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, bad)
        return {
            "grads": grads,
            "finite": tf.reduce_all(bad == 0.0),
            # Scaled gradients overflowed, the loss did not: S is too large, not the data bad.
            "overflow": tf.constant(self.loss_scaled) & (bad[0] == 0.0) & (bad[1] > 0.0),
            "loss": out.loss * unscale,
            "logits": out.logits,
            "valid_steps": out.valid_steps,
            "grad_norms": tf.stack(norms),
        }

    def _rescale_messages(self, messages, loss_scale) -> tuple:
        """m_i formed under S' = message_scale, brought to S: m_i * S / S' (a power of 2)."""
        ratio = loss_scale / tf.convert_to_tensor(self.message_scale)
        out = []
        for j, m in enumerate(messages, start=1):
            with self.pipeline.unit_scope(j):
                out.append(m * tf.cast(ratio, m.dtype))
        return tuple(out)

    # -- Evaluation --------------------------------------------------------------

    def predict_clip(self, clip):
        """Top outputs averaged over valid steps, from a fresh state: [B, K, ...] -> [B, ...].

        frame_bp evaluates the per-frame network; the other modes the pipelined one.
        The training buffers are not touched. With several local replicas, clip is
        [R_local * B, K, ...] and is split over them.
        """
        clip, _ = self._distribute(clip, None)
        return self._predict(clip)

    def _predict_fn(self, clip):
        out = self.strategy.run(self._replica_predict, args=(clip,))
        return tf.concat(self._local(out), axis=0)

    def _replica_predict(self, clip):
        if self.mode == "frame_bp":
            return frame_logits(self.pipeline, clip, training=False)[1]
        state = self.pipeline.zero_state()
        return unrolled_forward(self.pipeline, state, clip, training=False)[2]

    def predict_steps(self, clip) -> dict:
        """Every step's top output from a fresh state, with its target.

        The per-frame network for frame_bp, the pipelined one otherwise; the
        training buffers are not touched. clip: [R_local * B, K, *frame]. Returns
        {"outputs": [R_local * B, K, ...], "weights": [K], 1.0 where step t is
        scored (pipeline full, and its target present)}, and for future-frame
        prediction "targets" (as outputs) and "last_seen": x[t - lag], the
        copy-the-last-seen-frame baseline.
        """
        clip, _ = self._distribute(clip, None)
        return self._predict_steps(clip)

    def _predict_steps_fn(self, clip):
        out = self.strategy.run(self._replica_predict_steps, args=(clip,))
        merged = {k: tf.concat(self._local(v), axis=0) for k, v in out.items() if k != "weights"}
        merged["weights"] = self._local(out["weights"])[0]  # the same on every replica
        return merged

    def _replica_predict_steps(self, clip):
        pipeline = self.pipeline
        if self.mode == "frame_bp":
            per_frame = frame_logits(pipeline, clip, training=False)[0]
            outputs = tf.reshape(per_frame, (pipeline.batch_size, -1, *per_frame.shape[1:]))
            filled = tf.ones([clip.shape[1]], tf.float32)
        else:
            state, outputs, filled = pipeline.zero_state(), [], []
            for x_t in tf.unstack(clip, axis=1):
                state, y = pipeline.forward_step(state, x_t, training=False)
                outputs.append(y)
                filled.append(_valid(pipeline, state.t))
            outputs, filled = tf.stack(outputs, axis=1), tf.stack(filled)
        if not prediction.predicts_frames(pipeline):
            return {"outputs": outputs, "weights": filled}
        targets, present = step_targets(pipeline, self.mode, clip, None)
        last_seen = prediction.last_seen_frames(clip, prediction.input_lag(pipeline, self.mode))
        return {
            "outputs": outputs,
            "targets": targets,
            "last_seen": last_seen,
            "weights": filled * present,
        }

    # -- Diagnostics -------------------------------------------------------------

    def gradient_fidelity(self, clip, labels=None) -> dict:
        """Per unit, how well the sideways gradient matches bptt's on this clip.

        Both start from a fresh state with the current parameters; nothing is
        updated. Returns {"cosine": [L], "norm_ratio": [L]} (sideways / bptt),
        averaged over local replicas.
        """
        clip, labels = self._distribute(clip, labels)
        return self._fidelity(clip, labels)

    def _fidelity_fn(self, clip, labels):
        def fidelity(c, y):
            # Scaled like training (float16 messages stay in range); cosines and ratios
            # do not depend on S.
            with precision.scaled_losses(self._loss_scale() if self.loss_scaled else None):
                return gradient_fidelity(self.pipeline, c, y)

        out = self.strategy.run(fidelity, (clip, labels))
        return {k: self._local_mean(v) for k, v in out.items()}

    # -- Replicas ------------------------------------------------------------------

    def _local(self, value) -> tuple:
        """This process's per-replica components of a value (one without a strategy)."""
        return self.strategy.experimental_local_results(value)

    def _local_mean(self, value):
        parts = self._local(value)
        return tf.add_n(list(parts)) / len(parts) if len(parts) > 1 else parts[0]

    def _distribute(self, clip, labels):
        """Checks the input and hands each local replica its B clips."""
        if isinstance(clip, tf.distribute.DistributedValues):
            for c in self._local(clip):
                self.pipeline.check_clip(c)
            if labels is not None:
                for y in self._local(labels):
                    self._check_labels(y)
            return clip, labels
        self.pipeline.check_clip(clip, batch_size=self.global_batch_size)
        clip = tf.convert_to_tensor(clip)
        if labels is not None:
            labels = tf.convert_to_tensor(labels)
            self._check_labels(labels, self.global_batch_size)
        if self.local_replicas == 1:
            return clip, labels
        b, n = self.pipeline.batch_size, self.local_replicas

        def split(x):
            return self.strategy.experimental_distribute_values_from_function(
                lambda ctx: x[(ctx.replica_id_in_sync_group % n) * b :][:b]
            )

        return split(clip), None if labels is None else split(labels)

    def _check_labels(self, labels, batch_size=None):
        batch_size = batch_size or self.pipeline.batch_size
        if tuple(labels.shape[:1]) != (batch_size,):
            raise ValueError(
                f"labels have shape {tuple(labels.shape)}; expected [B] = "
                f"[{batch_size}], one label per clip."
            )

    def state_sizes(self) -> dict:
        """{buffer name: number of elements}: what the engine holds besides parameters."""
        return {v.path: int(np.prod(v.shape)) for v in self.pipeline.state_variables()}


def _frames(x, start, count: int):
    """x[:, start : start + count] of a [B, K, ...] tensor, with a static count."""
    begin = [0, start] + [0] * (x.shape.rank - 2)
    return tf.slice(x, begin, [x.shape[0], count, *x.shape[2:]])


def _on_tpu(pipeline) -> bool:
    return isinstance(pipeline.plan, placement.TPUPlan)


def gradient_fidelity(pipeline: Pipeline, clip, labels=None) -> dict:
    """Cosine similarity and norm ratio, per unit, of sideways vs bptt gradients of one clip.

    labels: [B] for classification, None for future-frame prediction.
    """
    targets, present = step_targets(pipeline, "bptt", clip, labels)
    side = sideways_gradients(pipeline, pipeline.zero_state(), clip, targets, present)
    exact = bptt_gradients(pipeline, pipeline.zero_state(), clip, targets, present)
    cosine, ratio = [], []
    for gs, ge in zip(side.grads, exact.grads):
        s = tf.concat([tf.reshape(g, [-1]) for g in gs], 0)
        e = tf.concat([tf.reshape(g, [-1]) for g in ge], 0)
        ns, ne = tf.norm(s), tf.norm(e)
        cosine.append(tf.reduce_sum(s * e) / tf.maximum(ns * ne, 1e-30))
        ratio.append(ns / tf.maximum(ne, 1e-30))
    return {"cosine": tf.stack(cosine), "norm_ratio": tf.stack(ratio)}


__all__ = [
    "MODES",
    "RULES",
    "Engine",
    "ClipGradients",
    "StepResult",
    "sideways_step",
    "step_targets",
    "sideways_gradients",
    "bptt_gradients",
    "unrolled_forward",
    "frame_gradients",
    "frame_logits",
    "gradient_fidelity",
    "all_variables",
    "check_mode",
]
