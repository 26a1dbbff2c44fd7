"""The gradient rules (algorithm.md section 5), each a pure function of explicit state:

    rule(pipeline, state, clip [B, K, *frame], targets [B, K, ...], present [K],
         training=True, loss_scale=None, unrolled=False) -> ClipGradients

targets[:, t] is what the top output of step t is scored against (the task's
step_targets: the clip's label, or a future frame) and present[t] is 0.0 where
step t has no target (it carries no loss, like a step still filling the pipeline).
loss_scale S (a float32 scalar, or None for 1): every loss differentiated is
S * l_t, so gradients and messages come out times S (float16 loss scaling; the
optimizer unscales). unrolled: run a frame loop unrolled over a static K (what the
engine asks for when the update is XLA-compiled: XLA on CPU compiles the backward
convolutions inside a graph loop's body to naive loops, benchmarks/compiled.py);
False keeps a graph loop (memory and graph size flat in K). A rule without a frame
loop ignores it.
  frame_gradients     frame_bp: exact BP of the per-frame network, averaged over frames;
  bptt_gradients      exact gradient of the pipelined network over the clip (one tape, O(K));
  sideways_gradients  sideways and skip_sideways (section 3): a graph loop of
                      `sideways_step`, every unit a forward and a local VJP per step,
                      with O(1) state in K.
Which rule a mode uses, and what else a mode decides, is sideways_tf.modes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
from keras import ops

from sideways_tf import backend
from sideways_tf.pipeline import Pipeline, PipelineState
from sideways_tf.steps import unit_step, unroll


class StepResult(NamedTuple):
    """What one sideways step yields besides the new state."""

    grads: tuple  # g_theta_i[t], one list per unit, aligned with pipeline.unit_variables(i)
    loss: Any  # [] l_t (times S), zero while masked
    outputs: Any  # [B, *out] top output y[t]
    valid: Any  # [] 1.0 once t >= T_fill and step t has a target, else 0.0


class ClipGradients(NamedTuple):
    """A rule's result for one clip (or one chunk of a stream)."""

    grads: tuple  # per unit, averaged over valid steps (times S)
    state: PipelineState  # state after the clip
    loss: Any  # [] mean loss over valid steps (times S)
    outputs: Any  # [B, *out] top outputs averaged over valid steps
    valid_steps: Any  # [] number of valid steps


def masked_loss(pipeline: Pipeline, target, outputs, valid, loss_scale=None):
    """S * mean over the batch of the task's loss, times valid; in float32."""
    outputs = ops.cast(outputs, "float32")
    loss = ops.mean(pipeline.task.loss(target, outputs)) * valid
    return loss if loss_scale is None else loss * ops.cast(loss_scale, loss.dtype)


def valid_step(pipeline: Pipeline, t):
    """1.0 when the top output of step t (1-based) is built from real frames only."""
    return ops.cast(t >= pipeline.fill_steps, "float32")


def sideways_step(
    pipeline: Pipeline,
    state: PipelineState,
    x_t,
    target_t,
    present_t=1.0,
    training=True,
    loss_scale=None,
):
    """One computation step t of algorithm.md section 3, for every unit at once.

        u_i[t] = C_i({a_j[t-1-d_ji]}),  a_i[t] = H_i(u_i[t]),  a_0[t-1] := x[t]
        m_L[t] = d l_t / d a_L[t]                     (the top's fresh loss gradient)
        (g_theta_i[t], r_{i->j}[t]) = VJP of C_i, H_i at u_i[t] applied to m_i[t]
        m_j[t+1] = sum_i r_{i->j}[t]

    Pipeline.step is the skeleton (sources gathered, delay lines advanced, the head
    on the frames its edges bring); each unit's share is one `steps.unit_step`: the
    top differentiates its masked loss through the head (masked_loss: the one place
    the top output meets the task's loss), the others their message. x_t:
    [B, *frame]; target_t: [B, ...] (a label per clip, or a frame); present_t: []
    0.0 when step t has no target. Returns (state at t, StepResult).
    """
    t = state.t + 1
    valid = valid_step(pipeline, t) * ops.cast(present_t, "float32")

    def local_step(i, unit, inputs, head):
        edges = pipeline.topology.sources[i - 1]
        senders = [k for k, e in enumerate(edges) if e.source > 0]
        if head is None:
            own = {"message": state.messages[i - 1]}
        else:
            own = {
                "head": head,
                "loss": lambda y: masked_loss(pipeline, target_t, y, valid, loss_scale),
            }
        out = unit_step(
            unit,
            inputs,
            pipeline.unit_variables(i),
            senders,
            training=training,
            check=lambda a: pipeline.check_unit_output(i, a),
            **own,
        )
        return out.activation, (out, [edges[k].source for k in senders])

    state, extras = pipeline.step(state, x_t, local_step, training=training)
    replies = [[] for _ in range(pipeline.num_units + 1)]  # r_{i->j}[t], gathered per source j
    for out, sources in extras:
        for j, r in zip(sources, out.replies):
            replies[j].append(r)
    messages = []
    for j in range(1, pipeline.num_units):
        with pipeline.unit_scope(j):
            messages.append(_add_n(replies[j]))
    top = extras[-1][0]
    result = StepResult(tuple(out.grads for out, _ in extras), top.loss, top.output, valid)
    return state._replace(messages=tuple(messages)), result


def _add_n(values: list):
    """Sum of a list of tensors (the replies one source receives)."""
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def zero_gradients(pipeline: Pipeline) -> list:
    """One zero tensor per parameter, per unit, on the unit's core (accumulators)."""
    out = []
    for i in range(1, pipeline.num_units + 1):
        with pipeline.unit_scope(i):
            out.append([ops.zeros(v.shape, v.dtype) for v in pipeline.unit_variables(i)])
    return out


def sideways_gradients(
    pipeline, state, clip, targets, present, training=True, loss_scale=None, unrolled=False
) -> ClipGradients:
    """Sideways / Skip-Sideways: `sideways_step` over the clip's frames, in a graph loop.

    g_theta_i = sum over valid steps t of g_theta_i[t], divided by the number of
    valid steps. Memory: the state and one accumulator per parameter, whatever K.
    unrolled: the loop unrolled over a static K instead (for XLA; the graph grows
    with K, the memory still does not).
    """
    clip = ops.convert_to_tensor(clip)
    outputs_zero = ops.zeros((pipeline.batch_size, *pipeline.top_output_shape[1:]))

    def step(carry, k):
        state, accum, loss_sum, n_valid, outputs_sum = carry
        state, out = sideways_step(
            pipeline, state, clip[:, k], targets[:, k], present[k], training, loss_scale
        )
        summed = []
        for i, (au, gu) in enumerate(zip(accum, out.grads), start=1):
            with pipeline.unit_scope(i):  # each unit's accumulator stays on its device
                # float32 like the parameters, whatever dtype a VJP comes out in.
                summed.append([a + ops.cast(g, a.dtype) for a, g in zip(au, gu)])
        carry = (
            state,
            summed,
            loss_sum + out.loss,
            n_valid + out.valid,
            outputs_sum + out.outputs * out.valid,
        )
        return carry, None

    init = (state, zero_gradients(pipeline), 0.0, 0.0, outputs_zero)
    num_steps = clip.shape[1] if unrolled else backend.dynamic_length(clip)
    (state, accum, loss_sum, n_valid, outputs_sum), _ = unroll(
        step, init, num_steps, static=unrolled
    )
    n = ops.maximum(n_valid, 1.0)
    grads = []
    for i, gu in enumerate(accum, start=1):
        with pipeline.unit_scope(i):
            grads.append([g / n for g in gu])
    return ClipGradients(tuple(grads), state, loss_sum / n, outputs_sum / n, n_valid)


def split_per_unit(pipeline: Pipeline, flat) -> tuple:
    """A flat list aligned with all_variables -> one list per unit."""
    out, start = [], 0
    for i in range(1, pipeline.num_units + 1):
        n = len(pipeline.unit_variables(i))
        out.append(list(flat[start : start + n]))
        start += n
    return tuple(out)


def all_variables(pipeline: Pipeline) -> list:
    """theta_1, ..., theta_L flattened in unit order (the head with the top unit)."""
    return [v for i in range(1, pipeline.num_units + 1) for v in pipeline.unit_variables(i)]


def pipelined_forward(
    pipeline,
    state,
    clip,
    targets=None,
    present=None,
    training=True,
    loss_scale=None,
    remat=False,
    unrolled=True,
):
    """The pipelined network over a clip, one forward_step per frame.

    targets [B, K, ...] and present [K] as the task's step_targets. Returns (state,
    mean loss over valid steps (0 without targets), top outputs averaged over valid
    steps [B, ...], number of valid steps). remat: each step's forward rematerialized
    (keras.remat: jax.checkpoint, tf.recompute_grad), for bptt's backward pass.
    unrolled: the frame loop unrolled over a static K (what a TensorFlow tape needs);
    False: one graph loop, which JAX differentiates (jax.lax.scan).
    """
    clip = ops.convert_to_tensor(clip)

    def forward(state, x_t):
        return pipeline.forward_step(state, x_t, training=training)

    if remat:  # keep only each step's state; recompute its activations in the backward pass
        forward = keras.remat(forward)

    def step(carry, k):
        state, loss_sum, n_valid, outputs_sum = carry
        state, y = forward(state, clip[:, k])
        valid = valid_step(pipeline, state.t)
        if present is not None:
            valid *= present[k]
        if targets is not None:
            loss_sum += masked_loss(pipeline, targets[:, k], y, valid, loss_scale)
        return (state, loss_sum, n_valid + valid, outputs_sum + y * valid), None

    outputs_zero = ops.zeros((pipeline.batch_size, *pipeline.top_output_shape[1:]))
    (state, loss_sum, n_valid, outputs_sum), _ = unroll(
        step, (state, 0.0, 0.0, outputs_zero), clip.shape[1], static=unrolled
    )
    n = ops.maximum(n_valid, 1.0)
    return state, loss_sum / n, outputs_sum / n, n_valid


def bptt_gradients(
    pipeline,
    state,
    clip,
    targets,
    present,
    training=True,
    loss_scale=None,
    unrolled=True,
    remat=False,
) -> ClipGradients:
    """The exact gradient of the pipelined network over the clip: one tape over K steps.

    loss = mean over valid steps t of l_t. The tape holds every step's activations,
    so memory grows with K (on TensorFlow the frame loop is unrolled: K must be static).
    remat: the tape keeps only each step's state and recomputes the step's activations
    in the backward pass (the fair memory baseline for Sideways: still O(K) states,
    about twice the forward compute; benchmarks/accelerator.py). unrolled=False on
    JAX: the frame loop is one jax.lax.scan (with remat, jax.checkpoint in its body:
    XLA cannot schedule the recomputation early, as it may in an unrolled graph).
    """
    # A TensorFlow tape needs every step unrolled; JAX differentiates a scan too.
    unrolled = unrolled or not backend.is_jax()

    def forward(_):
        state_out, loss, outputs, n_valid = pipelined_forward(
            pipeline, state, clip, targets, present, training, loss_scale, remat, unrolled
        )
        return loss, (state_out, outputs, n_valid)

    loss, (state, outputs, n_valid), _, flat = backend.vjp(forward, [], all_variables(pipeline))
    return ClipGradients(split_per_unit(pipeline, flat), state, loss, outputs, n_valid)


def frame_outputs(pipeline: Pipeline, clip, training=True):
    """The per-frame network on a clip's K frames as one batch of B*K frames.

    Returns (per-frame outputs [B, K, ...], outputs averaged over the clip [B, ...]).
    """
    clip = ops.convert_to_tensor(clip)
    frames = ops.reshape(clip, (-1, *pipeline.frame_shape))  # [B*K, *frame]
    previous = None
    if pipeline.head_reads_previous_frame:  # x[t - 1], x[0] before the clip's first frame
        previous = ops.concatenate([clip[:, :1], clip[:, :-1]], axis=1)
        previous = ops.reshape(previous, (-1, *pipeline.frame_shape))
    outputs = pipeline.frame_forward(frames, training=training, previous=previous)
    per_step = ops.reshape(outputs, (pipeline.batch_size, -1, *outputs.shape[1:]))  # [B, K, ...]
    return per_step, ops.mean(per_step, axis=1)


def frame_gradients(
    pipeline, state, clip, targets, present, training=True, loss_scale=None, unrolled=False
) -> ClipGradients:
    """frame_bp: exact BP of the per-frame network (no delays), averaged over frames.

    The K frames go through as one batch of B*K frames (the same mean gradient,
    computed in one pass). Every frame with a target counts; the buffers are not used.
    No frame loop: `unrolled` changes nothing.
    """
    del unrolled
    num_frames = backend.dynamic_length(clip)
    frame_targets = ops.reshape(targets, (-1, *targets.shape[2:]))  # [B*K, ...]
    weights = ops.tile(present, [pipeline.batch_size])  # [B*K], frame k of clip b at b*K + k
    total = ops.maximum(ops.sum(weights), 1.0)

    def forward(_):
        per_step, outputs = frame_outputs(pipeline, clip, training=training)
        per_frame = ops.cast(ops.reshape(per_step, (-1, *per_step.shape[2:])), "float32")
        loss = ops.sum(pipeline.task.loss(frame_targets, per_frame) * weights) / total
        if loss_scale is not None:
            loss = loss * ops.cast(loss_scale, loss.dtype)
        return loss, outputs

    loss, outputs, _, flat = backend.vjp(forward, [], all_variables(pipeline))
    state = state._replace(t=state.t + num_frames)
    n = ops.sum(present)
    return ClipGradients(split_per_unit(pipeline, flat), state, loss, outputs, n)


def gradient_fidelity(pipeline: Pipeline, clip, targets, present, loss_scale=None) -> dict:
    """Cosine similarity and norm ratio, per unit, of sideways vs bptt gradients of one clip.

    Both rules from a fresh state, on the pipelined network's targets (the task's
    step_targets at the pipelined input lag), in inference mode (training=False):
    no variable changes (no normalisation statistics move, no random generator
    advances) and both rules see the same network (no Dropout mask drawn twice),
    so the top unit's cosine is exactly 1. Returns {"cosine": [L], "norm_ratio": [L]}.
    """
    side = sideways_gradients(
        pipeline, pipeline.zero_state(), clip, targets, present, False, loss_scale
    )
    exact = bptt_gradients(
        pipeline, pipeline.zero_state(), clip, targets, present, False, loss_scale
    )
    cosine, ratio = [], []
    for gs, ge in zip(side.grads, exact.grads):
        s = ops.concatenate([ops.reshape(g, [-1]) for g in gs], 0)
        e = ops.concatenate([ops.reshape(g, [-1]) for g in ge], 0)
        ns, ne = ops.norm(s), ops.norm(e)
        cosine.append(ops.sum(s * e) / ops.maximum(ns * ne, 1e-30))
        ratio.append(ns / ops.maximum(ne, 1e-30))
    return {"cosine": ops.stack(cosine), "norm_ratio": ops.stack(ratio)}
