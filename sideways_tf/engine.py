"""The engine: ONE update function that trains a pipeline in every mode.

    update(clip, labels):  state -> gradients by the mode's rule -> one optimizer step

What differs between modes is a Mode value (sideways_tf.modes: its gradient rule
from sideways_tf.rules, its input lag, its clip-length and topology checks, how
it predicts); what differs between tasks is a Task value the pipeline carries
(sideways_tf.tasks: step targets, loss, metrics, evaluation). The engine asks
both and branches on neither.
"""

from __future__ import annotations

import functools
import os

import keras
import numpy as np
from keras import ops

from sideways_tf import backend, modes, placement, precision
from sideways_tf.backend import tf
from sideways_tf.fusion import StridedPointwiseConv
from sideways_tf.modes import MODES, Mode
from sideways_tf.pipeline import Pipeline
from sideways_tf.rules import (
    ClipGradients,
    StepResult,
    all_variables,
    bptt_gradients,
    frame_gradients,
    frame_outputs,
    pipelined_forward,
    sideways_gradients,
    sideways_step,
)
from sideways_tf.rules import gradient_fidelity as _rule_fidelity

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def one_message(method):
    """A library check raised while a step was traced reaches the caller as one message.

    TensorFlow re-raises an error from inside a tf.function with the autograph stack
    ("in user code: ..."), 40-80 lines before the line that says what to fix. When the
    innermost frame is sideways_tf's own check (a ValueError, TypeError or KeyError
    raised in this package: a unit's output shape, a label out of range), the error is
    raised again, same type, with that check's message alone and a traceback that ends
    at this call. Anything else (a fault inside TensorFlow or in a user's layer) keeps
    TensorFlow's report. On JAX, an error raised while jax.jit traces keeps every
    frame between this call and the check (the engine, the seam, the rules): the same
    rewrite applies when the innermost frame is this package's.
    """

    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (ValueError, TypeError, KeyError) as e:
            if backend.is_jax():  # (JAX re-raises as is, through the traced frames)
                if not _raised_here(e):
                    raise
                error = type(e)(*e.args)
                raise error from None
            meta = getattr(e, "ag_error_metadata", None)
            stack = getattr(meta, "translated_stack", None)
            if not stack or not os.path.abspath(stack[0].filename).startswith(_PACKAGE_DIR):
                raise
            prefix = f"{type(e).__name__}: "
            text = meta.cause_message
            error = type(e)(text[len(prefix) :] if text.startswith(prefix) else text)
        raise error from None

    return call


def _raised_here(error: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is in sideways_tf."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR)


def step_targets(pipeline: Pipeline, mode: str | Mode, clip, labels):
    """(targets [B, K, ...], present [K]) of the pipeline's task for `mode`'s input lag."""
    lag = modes.get(mode).input_lag(pipeline)
    return pipeline.task.step_targets(ops.convert_to_tensor(clip), labels, lag)


def check_mode(mode: str | Mode, pipeline: Pipeline) -> Mode:
    """The Mode, once it is known to exist and to fit the pipeline's topology."""
    mode = modes.get(mode)
    mode.check(pipeline)
    return mode


def _check_strided_pointwise(pipeline: Pipeline):
    """Refuses what would abort the process: a strided 1x1 Conv2D trained at an odd B on CPU.

    TF 2.21's oneDNN CPU kernel for that convolution's gradient corrupts the heap at
    odd batch sizes ("free(): invalid pointer"). The library's own projections use
    fusion.StridedPointwiseConv (subsample, then stride 1: never that kernel); a
    user's model (e.g. keras.applications ResNet50's shortcuts) may hold plain ones.
    """
    if pipeline.batch_size % 2 == 0 or os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        return
    if not backend.is_tensorflow():  # (a oneDNN kernel of TensorFlow's)
        return
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return
    strided = [
        layer.path if hasattr(layer, "path") else layer.name
        for layer in pipeline._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.Conv2D)
        and not isinstance(layer, StridedPointwiseConv)
        and tuple(layer.kernel_size) == (1, 1)
        and max(layer.strides) > 1
    ]
    if strided:
        raise ValueError(
            f"{len(strided)} layer(s) are 1x1 convolutions with a stride > 1 (first: "
            f"{strided[0]}). Trained with an odd batch (B = {pipeline.batch_size} clips per "
            "replica) on CPU, TF 2.21's oneDNN kernel for their gradient corrupts memory and "
            "the process aborts. Use an even batch size, or set TF_ENABLE_ONEDNN_OPTS=0 "
            "before TensorFlow is imported, or build them as "
            "sideways_tf.fusion.StridedPointwiseConv(filters, stride=s) (the same weights)."
        )


def _all_finite(x):
    return ops.all(ops.isfinite(x))


def _global_norm(tensors):
    return ops.sqrt(sum((ops.sum(ops.square(g)) for g in tensors), ops.convert_to_tensor(0.0)))


class Engine:
    """Trains a pipeline in one mode with one update function, on one device or many.

    Args:
      pipeline: a built Pipeline.
      mode: a name of sideways_tf.modes.MODES ("frame_bp", "bptt", "sideways",
        "skip_sideways") or a Mode.
      optimizer: a Keras optimizer, or its name ("adam", "sgd": keras.optimizers.get),
        built here before the first trace; None for an engine that only predicts
        and measures gradient fidelity.
      update_every: None for one optimizer step per clip (default); N for a step
        every N computation steps (streaming / online learning). K must be a
        multiple of N; the state carries over between the chunks of a clip.
      carry_state: keep the buffers from one clip to the next (consecutive clips of
        the same videos); False starts every new batch of clips from zero.
      jit_compile: XLA-compile the update; needs every unit of a replica on one
        CPU/GPU device (TPU steps are always compiled). A compiled update (or a
        TPU's) runs the frame loop unrolled over the static K (the rules'
        `unrolled`): XLA compiles a graph loop's backward convolutions to naive
        loops on CPU (benchmarks/compiled.py); compile time then grows with K.
        On JAX every update is one jax.jit, whatever jit_compile says.
      unroll: the frame loop's form, if not the compiler's default (unrolled under XLA:
        TF's jit_compile, TPU, JAX; a graph loop otherwise). False under XLA keeps
        one loop body (tf.while_loop, jax.lax.scan): compile time flat in K, but on
        CPU the backward convolutions in a loop body are naive loops (JAX on CPU,
        benchmarks/accelerator.py: skip_sideways 3.0 s per update in a scan, 0.24 s
        unrolled, quickstart network).

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
        mode: str | Mode,
        optimizer: keras.optimizers.Optimizer | str | None = None,
        update_every: int | None = None,
        carry_state: bool = False,
        jit_compile: bool = False,
        unroll: bool | None = None,
    ):
        if not pipeline.built:
            raise ValueError(
                "Build the pipeline first: Pipeline(..., batch_size=B, frame_shape=...)."
            )
        mode = check_mode(mode, pipeline)
        if isinstance(optimizer, str):
            optimizer = keras.optimizers.get(optimizer)
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
        if optimizer is not None:
            _check_strided_pointwise(pipeline)
        self.strategy = backend.Strategy()
        self.variables = all_variables(pipeline)
        first = self.variables[0]
        first = first.value if isinstance(first, keras.Variable) else first
        if backend.is_tensorflow() and not self.strategy.extended.variable_created_in_scope(first):
            raise ValueError(
                "The pipeline's variables were created under another tf.distribute strategy "
                "than this engine's. Build the pipeline, the optimizer and the Engine inside "
                "the same scope: `with runtime.scope(): ...`."
            )
        self.pipeline, self.mode, self.optimizer = pipeline, mode, optimizer
        self.task = pipeline.task
        self.update_every, self.carry_state = update_every, carry_state
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.local_replicas = (
            len(self.strategy.extended.worker_devices)
            if backend.is_tensorflow() and tf.distribute.has_strategy()
            else 1
        )
        with pipeline.unit_variable_scope(pipeline.num_units):
            # Computation steps t (frames) since the last reset, per replica: decides which
            # top losses are masked (t < T_fill).
            self.frames_seen = backend.replica_variable(0, "int32", "steps_since_reset")
        if optimizer is not None:
            optimizer.build(self.variables)
        self.loss_scaled = optimizer is not None and precision.is_loss_scaled(optimizer)
        self.message_scale = None
        if self.loss_scaled:
            with pipeline.unit_variable_scope(pipeline.num_units):
                # S when the buffered messages were formed (rescaled when S changes).
                self.message_scale = backend.replica_variable(
                    float(optimizer.initial_scale), "float32", "message_loss_scale"
                )
        # The frame loop's form follows the compiler: unrolled for XLA (TF's jit_compile, a
        # TPU, and always on JAX), a graph loop otherwise.
        self.unrolled = jit_compile or _on_tpu(pipeline) or backend.is_jax()
        if unroll is not None:
            self.unrolled = bool(unroll)
        # One compiled call each (backend.function: tf.function; on JAX one jax.jit of a
        # stateless function over every variable below).
        jit = jit_compile or backend.is_jax()
        self._update = backend.function(self._update_fn, self.state, jit_compile=jit)
        self._predict = backend.function(self._predict_fn, self.state, jit_compile=jit)
        self._predict_steps = backend.function(self._predict_steps_fn, self.state, jit_compile=jit)
        self._fidelity = backend.function(
            self._fidelity_fn, self.state, jit_compile=backend.is_jax()
        )

    def state(self) -> list:
        """Every variable an update reads or assigns: the pipeline's (parameters, buffers,
        seeds), the optimizer's, the frame counter and the message scale."""
        owned = list(self.pipeline.variables)
        if self.optimizer is not None:
            owned += list(self.optimizer.variables)
        owned += [v for v in (self.frames_seen, self.message_scale) if v is not None]
        return list({id(v): v for v in owned}.values())

    @property
    def batch_per_replica(self) -> int:
        """B: clips each replica trains on per update (the buffers' static batch)."""
        return self.pipeline.batch_size

    @property
    def batch_per_process(self) -> int:
        """Clips this process feeds per update: B times its local replicas."""
        return self.pipeline.batch_size * self.local_replicas

    @property
    def global_batch(self) -> int:
        """Clips per update over every replica of every process: B * R."""
        return self.pipeline.batch_size * self.num_replicas

    # -- Training --------------------------------------------------------------

    def reset_state(self):
        """Zeroes the buffers: the next clip starts a new batch of videos."""
        self.pipeline.reset_state()
        self.frames_seen.assign(0)

    @one_message
    def train_clip(self, clip, labels=None) -> dict:
        """Trains on a batch of clips [B, K, *frame] with labels [B]; returns metrics.

        Labels are what the pipeline's task scores against (tasks.Classification:
        an integer class per clip); a task whose targets are the frames themselves
        (tasks.FutureFrames) takes none.

        With several replicas, clip and labels are either per-replica values (from
        a distributed dataset) or this process's whole batch [R_local * B, ...],
        split here in replica order. Metrics (tensors): loss (mean over valid steps
        and local replicas), outputs [R_local * B, ...] (top outputs averaged over
        valid steps), task: the task's figures of this batch (e.g. clip_accuracy; given labels),
        valid_steps, grad_norms [L] (one per unit, mean over local replicas).
        """
        if self.optimizer is None:
            raise ValueError(
                "This Engine has no optimizer: it predicts and measures gradient fidelity "
                "only. Give one to train: Engine(pipeline, mode, keras.optimizers.Adam(...))."
            )
        clip, labels = self._distribute(clip, labels)
        num_frames = self._local(clip)[0].shape[1]
        if not self.carry_state:  # (a carried stream continues through short clips)
            self.mode.check_clip_length(self.pipeline, num_frames, "the clip's K, axis 1")
        chunk = self.update_every or num_frames
        if num_frames % chunk:
            raise ValueError(
                f"Clip length K={num_frames} is not a multiple of update_every={chunk}; "
                "pick K or update_every so that it is."
            )
        results = [
            self._update(
                clip,
                labels,
                ops.convert_to_tensor(s, "int32"),
                chunk=chunk,
                fresh=s == 0 and not self.carry_state,
            )
            for s in range(0, num_frames, chunk)
        ]
        if len(results) == 1:
            return self._with_task_metrics(results[0], labels)
        weights = ops.stack([r["valid_steps"] for r in results])
        total = ops.maximum(ops.sum(weights), 1.0)
        merged = dict(results[-1])
        merged["valid_steps"] = ops.sum(weights)
        merged["applied"] = ops.all(ops.stack([r["applied"] for r in results]))
        merged["overflow"] = ops.any(ops.stack([r["overflow"] for r in results]))
        for key in ("loss", "outputs"):
            merged[key] = sum(r[key] * r["valid_steps"] for r in results) / total
        return self._with_task_metrics(merged, labels)

    def _with_task_metrics(self, metrics: dict, labels) -> dict:
        """Adds the task's figures of this batch (eagerly; e.g. clip_accuracy of the outputs)."""
        if labels is not None:
            host = ops.concatenate(self._local(labels), axis=0)
            metrics["task"] = self.task.train_metrics(metrics["outputs"], host)
        return metrics

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

        applied = backend.when(finite, apply)
        overflow = self._local(out["overflow"])[0]
        lowered = ops.convert_to_tensor(False)
        if self.loss_scaled:
            lowered = backend.when(overflow, self._lower_loss_scale)
        with backend.control_dependencies([applied, lowered]):
            params_finite = ops.all(ops.stack([_all_finite(v) for v in self.variables]))
            loss_scale = self._loss_scale()
        return {
            "loss": self._local_mean(out["loss"]),
            "outputs": ops.concatenate(self._local(out["outputs"]), axis=0),
            "valid_steps": self._local_mean(out["valid_steps"]),
            "grad_norms": self._local_mean(out["grad_norms"]),
            "applied": applied,
            "params_finite": params_finite,
            "overflow": overflow,
            "loss_scale": loss_scale,
        }

    def _loss_scale(self):
        """[] float32: the LossScaleOptimizer's current scale S, or 1."""
        if not self.loss_scaled:
            return ops.convert_to_tensor(1.0)
        return backend.read(self.optimizer.dynamic_scale)

    def _lower_loss_scale(self):
        """After an overflow: S / 2 and the growth counter reset (LossScaleOptimizer's rule)."""
        self.optimizer.step_counter.assign(0)
        self.optimizer.dynamic_scale.assign(self.optimizer.dynamic_scale * 0.5)

    def _replica_gradients(self, clip, labels, start, chunk: int, fresh: bool):
        """One replica's share: frames [start, start + chunk) of its clips [B, K, *frame].

        Reads the state, takes the mode's gradients, writes the state back (unless
        they are not finite), and returns the gradients scaled by 1 / replicas
        (the optimizer sums them over replicas) and whether every replica's loss
        and gradients are finite (all-reduced: every replica decides alike).
        """
        # Targets come from the whole clip: a chunk's future frames may lie in the next.
        lag = self.mode.input_lag(self.pipeline)
        targets, present = self.task.step_targets(clip, labels, lag)
        if chunk != clip.shape[1]:
            clip, targets = (_frames(x, start, chunk) for x in (clip, targets))
            present = ops.slice(present, [start], [chunk])
        state = self.pipeline.zero_state() if fresh else self.pipeline.read_state(self.frames_seen)
        loss_scale = self._loss_scale() if self.loss_scaled else None
        if loss_scale is not None and not fresh:  # messages formed under an earlier S
            state = state._replace(messages=self._rescale_messages(state.messages, loss_scale))
        # (loss and gradients come out times S)
        out = self.mode.rule(
            self.pipeline,
            state,
            clip,
            targets,
            present,
            loss_scale=loss_scale,
            unrolled=self.unrolled,
        )
        unscale = 1.0 if loss_scale is None else 1.0 / loss_scale
        grads, norms, finite_grads = [], [], []
        for i, gu in enumerate(out.grads, start=1):
            with self.pipeline.unit_scope(i):
                norms.append(_global_norm(gu) * unscale)
                finite_grads += [_all_finite(g) for g in gu]
                scale = 1.0 / self.num_replicas
                grads += [g * scale for g in gu] if self.num_replicas > 1 else list(gu)
        finite_loss, finite_grads = _all_finite(out.loss), ops.all(ops.stack(finite_grads))
        finite = finite_loss & finite_grads

        def write():
            self.pipeline.write_state(out.state)
            self.frames_seen.assign(out.state.t)
            if loss_scale is not None:
                self.message_scale.assign(loss_scale)

        backend.when(finite, write)
        bad = 1.0 - ops.cast(ops.stack([finite_loss, finite_grads]), "float32")
        if self.num_replicas > 1:  # every replica must take the same decision
            bad = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, bad)
        return {
            "grads": grads,
            "finite": ops.all(bad == 0.0),
            # Scaled gradients overflowed, the loss did not: S is too large, not the data bad.
            "overflow": ops.convert_to_tensor(self.loss_scaled) & (bad[0] == 0.0) & (bad[1] > 0.0),
            "loss": out.loss * unscale,
            "outputs": out.outputs,
            "valid_steps": out.valid_steps,
            "grad_norms": ops.stack(norms),
        }

    def _rescale_messages(self, messages, loss_scale) -> tuple:
        """m_i formed under S' = message_scale, brought to S: m_i * S / S' (a power of 2)."""
        ratio = loss_scale / backend.read(self.message_scale)
        out = []
        for j, m in enumerate(messages, start=1):
            with self.pipeline.unit_scope(j):
                out.append(m * ops.cast(ratio, m.dtype))
        return tuple(out)

    # -- Evaluation --------------------------------------------------------------

    @one_message
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
        return ops.concatenate(self._local(out), axis=0)

    def _replica_predict(self, clip):
        return self.mode.predict_clip(self.pipeline, clip, training=False)

    @one_message
    def predict_steps(self, clip) -> dict:
        """Every step's top output from a fresh state, with its target.

        The per-frame network for frame_bp, the pipelined one otherwise; the
        training buffers are not touched. clip: [R_local * B, K, *frame]. Returns
        {"outputs": [R_local * B, K, ...], "weights": [K], 1.0 where step t is
        scored (pipeline full, and its target present)}, plus the task's references
        (Task.prediction_targets; future frames: "targets" and "last_seen", x[t - lag],
        the copy-the-last-seen-frame baseline).
        """
        clip, _ = self._distribute(clip, None)
        return self._predict_steps(clip)

    def _predict_steps_fn(self, clip):
        out = self.strategy.run(self._replica_predict_steps, args=(clip,))
        merged = {
            k: ops.concatenate(self._local(v), axis=0) for k, v in out.items() if k != "weights"
        }
        merged["weights"] = self._local(out["weights"])[0]  # the same on every replica
        return merged

    def _replica_predict_steps(self, clip):
        outputs, filled = self.mode.predict(self.pipeline, clip, training=False)
        references, present = self.task.prediction_targets(clip, self.mode.input_lag(self.pipeline))
        return {"outputs": outputs, "weights": filled * present, **references}

    # -- Diagnostics -------------------------------------------------------------

    @one_message
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
            loss_scale = self._loss_scale() if self.loss_scaled else None
            return gradient_fidelity(self.pipeline, c, y, loss_scale=loss_scale)

        out = self.strategy.run(fidelity, (clip, labels))
        return {k: self._local_mean(v) for k, v in out.items()}

    # -- Replicas ------------------------------------------------------------------

    def _local(self, value) -> tuple:
        """This process's per-replica components of a value (one without a strategy)."""
        return self.strategy.experimental_local_results(value)

    def _local_mean(self, value):
        parts = self._local(value)
        return sum(parts[1:], parts[0]) / len(parts) if len(parts) > 1 else parts[0]

    def _distribute(self, clip, labels):
        """Checks the input and hands each local replica its B clips."""
        if backend.is_tensorflow() and isinstance(clip, tf.distribute.DistributedValues):
            for c in self._local(clip):
                self.pipeline.check_clip(c)
            if labels is not None:
                for y in self._local(labels):
                    self._check_labels(y)
            return clip, labels
        self.pipeline.check_clip(clip, batch_size=self.batch_per_process)
        clip = ops.convert_to_tensor(clip)
        if labels is not None:
            self._check_labels(labels, self.batch_per_process)  # (before JAX refuses a dtype)
            labels = ops.convert_to_tensor(labels)
        if self.local_replicas == 1:
            return clip, labels
        b, n = self.pipeline.batch_size, self.local_replicas

        def split(x):
            return self.strategy.experimental_distribute_values_from_function(
                lambda ctx: x[(ctx.replica_id_in_sync_group % n) * b :][:b]
            )

        return split(clip), None if labels is None else split(labels)

    def _check_labels(self, labels, batch_size=None):
        self.task.check_labels(
            labels,
            batch_size or self.pipeline.batch_size,
            num_outputs=int(self.pipeline.top_output_shape[-1]),
        )

    def state_sizes(self) -> dict:
        """{buffer name: number of elements}: what the engine holds besides parameters."""
        return {v.path: int(np.prod(v.shape)) for v in self.pipeline.state_variables()}


def _frames(x, start, count: int):
    """x[:, start : start + count] of a [B, K, ...] tensor, with a static count."""
    begin = [0, start] + [0] * (len(x.shape) - 2)
    return ops.slice(x, begin, [x.shape[0], count, *x.shape[2:]])


def _on_tpu(pipeline) -> bool:
    return isinstance(pipeline.plan, placement.TPUPlan)


def gradient_fidelity(pipeline: Pipeline, clip, labels=None, loss_scale=None) -> dict:
    """Cosine similarity and norm ratio, per unit, of sideways vs bptt gradients of one clip.

    labels: what the pipeline's task scores against ([B] for classification, None
    for future frames). Targets at the pipelined network's input lag. Returns
    {"cosine": [L], "norm_ratio": [L]}.
    """
    lag = pipeline.topology.newest_lag(pipeline.num_units)
    targets, present = pipeline.task.step_targets(ops.convert_to_tensor(clip), labels, lag)
    return _rule_fidelity(pipeline, clip, targets, present, loss_scale=loss_scale)


__all__ = [
    "MODES",
    "Engine",
    "ClipGradients",
    "StepResult",
    "sideways_step",
    "step_targets",
    "sideways_gradients",
    "bptt_gradients",
    "pipelined_forward",
    "frame_gradients",
    "frame_outputs",
    "gradient_fidelity",
    "all_variables",
    "check_mode",
]
