"""Training runs: `train(workdir)`, the one gin root of every experiment.

    sideways-train --gin_file=gin/experiments/moving_shapes_skip_sideways.gin --workdir=/tmp/run

The run reads top to bottom: settings, runtime (sideways_tf.distribute), data,
model and engine (build_run, shared with evaluation), resume (config check,
restore, a lost evaluation redone), then steps with logging, gradient fidelity,
evaluation and checkpoints. Everything a run writes goes under `workdir`
(sideways_tf.workdir):
    LOCK                    pid, host and start of the training run writing here
    config.gin              the operative gin config (also in TensorBoard text)
    checkpoints/ckpt-N.*    parameters, optimizer, step, data position (and buffers
                            with carry_state); damaged ones go to checkpoints/damaged/
    train/, eval/           TensorBoard event files
    eval_metrics.json       the latest training evaluation, and every evaluation
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import gin
import keras
import numpy as np
import tensorflow as tf
import tqdm

from sideways_tf import checkpointing, distribute, modes, summaries
from sideways_tf import precision as precision_lib
from sideways_tf import workdir as workdir_lib
from sideways_tf.data import contract
from sideways_tf.engine import Engine, check_mode
from sideways_tf.evaluate import evaluate
from sideways_tf.pipeline import Pipeline


@gin.configurable(module="sideways_tf")
def adam(
    learning_rate: float = 1e-3,  # peak learning rate, after warmup
    warmup_steps: int = 100,  # linear warmup from 0, in optimizer steps
    decay_steps: int = 1000,  # cosine decay to 0 over this many steps after warmup
    clipnorm: float | None = 1.0,  # clip each gradient's norm (None: no clipping)
) -> keras.optimizers.Optimizer:
    """Adam with linear warmup and cosine decay; `train` sets decay_steps from num_steps."""
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else learning_rate,
        decay_steps=max(decay_steps - warmup_steps, 1),
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    return keras.optimizers.Adam(schedule, clipnorm=clipnorm)


class Run(NamedTuple):
    """Everything a run is built from, for training and for evaluation alike."""

    runtime: distribute.Runtime
    pipeline: Pipeline
    optimizer: keras.optimizers.Optimizer
    engine: Engine
    step: tf.Variable  # training steps (batches of clips) taken
    checkpointer: checkpointing.Checkpointer
    writers: dict  # {"train", "eval"}: summary writers (no-ops off the chief)


def build_run(
    workdir: str,
    runtime: distribute.Runtime,
    *,
    mode: str,
    model_fn: Callable,
    num_classes: int | None,
    batch_size: int,
    frame_shape: tuple,
    optimizer_fn: Callable,
    decay_steps: int,
    update_every: int | None,
    carry_state: bool,
    jit_compile: bool,
    seed: int,
    keep_checkpoints: int,
    data_iterator=None,
    repair: bool = True,
    precision: str = "float32",
) -> Run:
    """Builds pipeline, optimizer, engine, checkpoint and writers on the runtime.

    batch_size is the global batch; each replica's pipeline holds B = batch_size / R.
    The pipeline's layers are created under the Keras dtype policy `precision`
    (the global policy is restored afterwards); "mixed_float16" wraps the optimizer
    in a LossScaleOptimizer (gin: loss_scaling.initial_scale).
    The checkpoint holds parameters, optimizer, step and (given) the data position;
    buffers only with carry_state (otherwise they are zero at every clip's start).
    """
    per_replica = batch_size // runtime.num_replicas

    def build(placement=None):  # None: the probe, each unit on its own device
        with precision_lib.policy_scope(precision):  # (restores the global policy)
            return model_fn(
                batch_size=per_replica,
                frame_shape=frame_shape,
                num_classes=num_classes,
                placement=placement,
            )

    cores = runtime.assign_cores(build)  # 'auto' measures a probe pipeline first
    keras.utils.set_random_seed(seed)  # the same initial parameters, probe or not
    with runtime.scope():
        pipeline = build(runtime.placement(cores))
        try:
            check_mode(mode, pipeline)
        except ValueError as e:
            raise ValueError(f"{e} (gin: train.mode = '{mode}', and the model's topology.)") from e
        optimizer = optimizer_fn(decay_steps=decay_steps)
        if precision == "mixed_float16":
            optimizer = precision_lib.loss_scaling(optimizer)
        engine = Engine(
            pipeline,
            mode,
            optimizer,
            update_every=update_every,
            carry_state=carry_state,
            jit_compile=jit_compile,
        )
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    state = dict(
        pipeline=checkpointing.variables_by_path(
            pipeline, buffers=carry_state, replicas=runtime.strategy
        ),
        optimizer=optimizer,
        step=step,
    )
    if carry_state:
        state["engine_step"] = engine.frames_seen
        if engine.message_scale is not None:
            state["message_loss_scale"] = engine.message_scale
    if data_iterator is not None:
        state["data"] = data_iterator
    directory = os.path.join(workdir, "checkpoints")
    checkpointer = checkpointing.Checkpointer(
        directory,
        tf.train.Checkpoint(**state),
        max_to_keep=keep_checkpoints,
        guard=engine.variables + list(optimizer.variables),
        repair=repair,
    )
    if runtime.is_chief:
        writers = {
            split: tf.summary.create_file_writer(os.path.join(workdir, split))
            for split in ("train", "eval")
        }
    else:
        writers = {split: tf.summary.create_noop_writer() for split in ("train", "eval")}
    return Run(runtime, pipeline, optimizer, engine, step, checkpointer, writers)


@gin.configurable(
    module="sideways_tf", denylist=["workdir", "eval_only", "allow_config_change", "eval_params"]
)
def train(
    workdir: str,
    # -- Task ----------------------------------------------------------------
    mode: str = gin.REQUIRED,  # frame_bp | bptt | sideways | skip_sideways
    model_fn: Callable = gin.REQUIRED,  # (batch_size, frame_shape, num_classes) -> Pipeline
    train_data: Callable = gin.REQUIRED,  # () -> unbatched {"frames"[, "label"]} dataset
    eval_data: Callable | None = None,  # () -> finite dataset scored by evaluate()
    num_classes: int | None = None,  # classes of the task (None: a head="frames" model)
    seed: int = 0,  # parameter initialisation (data seeds are the data's own bindings)
    # -- Schedule ------------------------------------------------------------
    batch_size: int = 16,  # clips per step over all replicas (B = batch_size / replicas)
    num_steps: int = 2000,  # training steps (batches of clips); sets the LR schedule
    stop_at_step: int | None = None,  # end this run early (resume later with the same config)
    optimizer_fn: Callable = adam,  # () -> Keras optimizer; gets decay_steps
    update_every: int | None = None,  # optimizer step every N frames (None: once per clip)
    carry_state: bool = False,  # keep buffers across consecutive clips (streaming)
    jit_compile: bool = False,  # XLA-compile the update (units of a replica on one device)
    precision: str = "float32",  # float32 | mixed_bfloat16 | mixed_float16 (loss-scaled)
    max_non_finite_steps: int = 10,  # stop after this many non-finite updates in a row
    # -- Logging and checkpoints ----------------------------------------------
    log_every: int = 50,  # steps between train scalars
    fidelity_every: int = 250,  # steps between sideways-vs-bptt gradient fidelity (0: off)
    images_every: int = 1000,  # steps between sample input clips in TensorBoard (0: off)
    eval_every: int = 500,  # steps between evaluations (and at the end)
    checkpoint_every: int = 500,  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 3,  # checkpoints kept in workdir/checkpoints
    data_checkpoint: str = "full",  # "full" input state, or "symbolic" (positions only)
    progress: bool = True,  # progress bar on the terminal
    eval_only: bool = False,
    allow_config_change: bool = False,
    eval_params: tuple = (),
) -> dict:
    """Trains (or, with eval_only, evaluates the latest checkpoint); returns final metrics.

    The runtime (strategy, replicas, cores per replica, placement) comes from the
    gin configurable `runtime` (sideways_tf.distribute.make_runtime). Returns
    {"step", "eval", "interrupted"}: interrupted is None, "SIGINT" or "SIGTERM".
    """
    _check_settings(
        mode=mode,
        precision=precision,
        batch_size=batch_size,
        num_steps=num_steps,
        stop_at_step=stop_at_step,
        update_every=update_every,
        max_non_finite_steps=max_non_finite_steps,
        log_every=log_every,
        fidelity_every=fidelity_every,
        images_every=images_every,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        data_checkpoint=data_checkpoint,
    )
    if eval_only and eval_data is None:
        raise ValueError("train.eval_data is not set: there is nothing to evaluate.")

    # -- Runtime -------------------------------------------------------------------
    runtime = distribute.make_runtime()
    if batch_size % runtime.num_replicas:
        raise ValueError(
            f"train.batch_size = {batch_size} does not split over {runtime.num_replicas} "
            f"replicas ({runtime.describe()}); use a multiple of {runtime.num_replicas}."
        )
    if carry_state and runtime.num_workers > 1:
        raise ValueError(
            "train.carry_state = True keeps each replica's buffers across clips, which a "
            "multi-worker checkpoint does not hold (each worker's buffers live in its own "
            "process); use carry_state = False with runtime.strategy = 'multi_worker'."
        )
    chief_trains = runtime.is_chief and not eval_only
    if chief_trains:
        workdir_lib.check_writable(workdir)
    with contextlib.ExitStack() as stack:
        if chief_trains:
            stack.enter_context(workdir_lib.lock(workdir))
        return _run(**locals())


def _run(
    workdir,
    runtime,
    mode,
    model_fn,
    train_data,
    eval_data,
    num_classes,
    seed,
    batch_size,
    num_steps,
    stop_at_step,
    optimizer_fn,
    update_every,
    carry_state,
    jit_compile,
    precision,
    max_non_finite_steps,
    log_every,
    fidelity_every,
    images_every,
    eval_every,
    checkpoint_every,
    keep_checkpoints,
    data_checkpoint,
    progress,
    eval_only,
    allow_config_change,
    eval_params,
    **_,
) -> dict:
    """The run itself, once settings, runtime and the workdir lock are in place."""
    # -- Data --------------------------------------------------------------------
    # Evaluation never builds (or needs) the training data: shapes come from eval_data.
    data_binding = "train.eval_data" if eval_only else "train.train_data"
    source = (eval_data if eval_only else train_data)()
    # Labels are checked once the model says its task (future frames need none).
    num_frames, frame_shape = contract.check_clip_dataset(source, data_binding, labelled=False)
    train_iter, iter_checkpointable = None, False
    if not eval_only:
        train_iter, iter_checkpointable = runtime.batches(
            lambda: source, batch_size, symbolic=data_checkpoint == "symbolic"
        )
    if update_every and num_frames % update_every:
        raise ValueError(
            f"Clips have K={num_frames} frames, not a multiple of train.update_every="
            f"{update_every}; pick an update_every that divides K."
        )

    # -- Model, engine, checkpoint ----------------------------------------------------
    updates_per_clip = num_frames // update_every if update_every else 1
    run = build_run(
        workdir,
        runtime,
        mode=mode,
        model_fn=model_fn,
        num_classes=num_classes,
        batch_size=batch_size,
        frame_shape=frame_shape,
        optimizer_fn=optimizer_fn,
        decay_steps=num_steps * updates_per_clip,
        update_every=update_every,
        carry_state=carry_state,
        jit_compile=jit_compile,
        seed=seed,
        keep_checkpoints=keep_checkpoints,
        data_iterator=train_iter if iter_checkpointable else None,
        repair=runtime.is_chief and not eval_only,
        precision=precision,
    )
    pipeline, optimizer, engine, step, writers = (
        run.pipeline,
        run.optimizer,
        run.engine,
        run.step,
        run.writers,
    )
    task = pipeline.task
    task.check_data(source, data_binding)
    modes.get(mode).check_clip_length(pipeline, num_frames, f"the num_frames of {data_binding}")
    eval_ds = eval_data() if eval_data is not None else None  # finite; re-read at each eval

    def run_eval(source_name="train"):
        if eval_ds is None:
            return None
        metrics = evaluate(engine, eval_ds, progress=progress and runtime.is_chief)
        images = metrics.pop("images", None)  # future frames: target / prediction strips
        s = int(step.numpy())
        if runtime.is_chief:
            summaries.write_scalars(writers["eval"], s, metrics)
            if images is not None:
                summaries.write_images(writers["eval"], s, "predictions", images)
            extra = {"gin_params": list(eval_params)} if source_name != "train" else {"mode": mode}
            workdir_lib.record_evaluation(workdir, s, metrics, source=source_name, **extra)
        return metrics

    if eval_only:
        if run.checkpointer.restore_latest(partial=True) is None:
            raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints to evaluate.")
        return {"step": int(step.numpy()), "eval": run_eval("sideways-eval"), "interrupted": None}

    # -- Resume: check the config, restore, redo a lost evaluation -------------------------
    # Several workers must agree on the step a preemption stops at: TF's
    # PreemptionCheckpointHandler does, through the coordination service (it installs
    # its own SIGTERM handler, saves at the same step everywhere and ends the
    # process; rerun to resume). Created first: it adds its own counter to the checkpoint.
    preemption = None
    if runtime.num_workers > 1:
        preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
            runtime.cluster_resolver, run.checkpointer.manager
        )
    if runtime.is_chief:
        workdir_lib.check_config(workdir, gin.operative_config_str(), allow_config_change)
    restored = run.checkpointer.restore_latest()
    last = num_steps if stop_at_step is None else min(stop_at_step, num_steps)
    if runtime.is_chief:
        summaries.write_config(writers["train"], workdir)
        print(f"Runtime: {runtime.describe()}.")
        if restored:
            print(f"Resumed from {restored} at step {int(step.numpy())}.")
            if not iter_checkpointable:
                print("runtime.distributed_input: the input stream restarts from its start.")
    eval_metrics = None
    s = int(step.numpy())
    due = s > 0 and (s % eval_every == 0 or s >= last)
    if due and s not in workdir_lib.evaluated_steps(workdir):
        print(f"Step {s} has no evaluation on record (the last run stopped before it); running it.")
        eval_metrics = run_eval()
    if s >= last:
        history = workdir_lib.read_evaluations(workdir).get("history", [])
        done = [h for h in history if h.get("source", "train") == "train" and h["step"] == s]
        eval_metrics = eval_metrics or (done[-1] if done else None)
        limit = (
            "stop_at_step" if stop_at_step is not None and stop_at_step < num_steps else "num_steps"
        )
        print(f"Already at step {s} (train.{limit} = {last}): nothing left to train.")
        return {"step": s, "eval": eval_metrics, "interrupted": None}

    # -- Training loop ------------------------------------------------------------------
    bar = tqdm.tqdm(
        total=num_steps,
        initial=s,
        unit="step",
        disable=not (progress and runtime.is_chief),
        dynamic_ncols=True,
    )
    window = collections.defaultdict(list)  # figures of the steps since the last log
    last_time, last_step = time.time(), s
    non_finite_in_a_row, non_finite_total, overflow_total = 0, 0, 0
    # Ctrl-C and SIGTERM (preemption, `kill`) set a flag the loop reads between steps:
    # the step in flight completes, a checkpoint is written, the run exits 130 / 143.
    stop = _StopSignals(sigterm=preemption is None)
    try:
        while int(step.numpy()) < last and not stop.received:
            batch = next(train_iter)
            labels = batch[task.label_key] if task.label_key else None  # (None: frames only)
            metrics = engine.train_clip(batch["frames"], labels)
            frames = runtime.to_host(batch["frames"])  # this process's clips, replica order
            host_labels = None if labels is None else runtime.to_host(labels)
            step.assign_add(1)
            s = int(step.numpy())
            bar.update(1)
            if preemption is not None:
                preemption.save_checkpoint_if_preempted(checkpoint_number=s)
            if not bool(metrics["params_finite"]):
                raise checkpointing.NonFiniteError(
                    f"Step {s}: the update made parameters NaN or Inf (loss and gradients "
                    f"were finite): the learning rate is too high for this model "
                    f"(adam.learning_rate = {float(optimizer.learning_rate):g} now). Nothing "
                    f"was saved; the last checkpoint, {run.checkpointer.latest}, is intact."
                )
            if bool(metrics["overflow"]):
                # float16 loss scaling: the scaled gradients overflowed and the engine halved
                # the scale. Expected (mostly at the start); not the data's fault.
                overflow_total += 1
                summaries.write_scalars(
                    writers["train"],
                    s,
                    {"loss_scale": float(metrics["loss_scale"]), "overflow_steps": overflow_total},
                )
                continue
            if not bool(metrics["applied"]):
                non_finite_in_a_row += 1
                non_finite_total += 1
                bar.write(
                    f"step {s}: loss or gradients are NaN/Inf; the update was skipped "
                    f"({non_finite_in_a_row} in a row)."
                )
                summaries.write_scalars(writers["train"], s, {"non_finite_steps": non_finite_total})
                if non_finite_in_a_row >= max_non_finite_steps:
                    raise checkpointing.NonFiniteError(
                        f"{non_finite_in_a_row} steps in a row (up to step {s}) had NaN or Inf "
                        "loss or gradients; stopping (train.max_non_finite_steps = "
                        f"{max_non_finite_steps}). Check the input data for NaN/Inf and the "
                        f"learning rate; the last checkpoint, {run.checkpointer.latest}, is intact."
                    )
                continue
            non_finite_in_a_row = 0
            window["loss"].append(float(metrics["loss"]))
            for name, value in metrics.get("task", {}).items():
                window[name].append(value)

            if s % log_every == 0 or s == last:
                now = time.time()
                fps = (s - last_step) * batch_size * num_frames / max(now - last_time, 1e-9)
                last_time, last_step = now, s
                scalars = {
                    "loss": np.mean(window["loss"]),
                    "learning_rate": float(optimizer.learning_rate),
                    "frames_per_second": fps,
                    "non_finite_steps": non_finite_total,
                }
                task_scalars = {k: np.mean(v) for k, v in window.items() if k != "loss"}
                scalars.update(task_scalars)
                if engine.loss_scaled:
                    scalars["loss_scale"] = float(metrics["loss_scale"])
                    scalars["overflow_steps"] = overflow_total
                reader = sys.modules.get("sideways_tf.data.dmvr")  # (only if records are read)
                if reader is not None:
                    scalars["data/skipped_records"] = reader.skipped_records()
                window = collections.defaultdict(list)
                summaries.write_scalars(writers["train"], s, scalars)
                summaries.write_per_unit(writers["train"], s, "grad_norm", metrics["grad_norms"])
                summaries.write_per_unit(
                    writers["train"],
                    s,
                    "buffer_norm",
                    [
                        np.linalg.norm(np.asarray(u.output_buffer, np.float32))
                        for u in pipeline.units
                    ],
                )
                shown = {k[:3]: f"{v:.3f}" for k, v in {"loss": scalars["loss"], **task_scalars}.items()}
                bar.set_postfix(**shown, fps=f"{fps:.0f}")
            if fidelity_every and (s % fidelity_every == 0 or s == 1):
                fid = engine.gradient_fidelity(frames, host_labels)
                summaries.write_per_unit(writers["train"], s, "fidelity/cosine", fid["cosine"])
                summaries.write_per_unit(
                    writers["train"], s, "fidelity/norm_ratio", fid["norm_ratio"]
                )
            if images_every and (s % images_every == 0 or s == 1):
                summaries.write_clips(writers["train"], s, "input_clips", frames)
            if s % checkpoint_every == 0 or s == last:
                _save(run, s)
            if s % eval_every == 0 or s == last:
                eval_metrics = run_eval()
                if eval_metrics:
                    bar.write(f"step {s}: eval {task.headline(eval_metrics)}")
    finally:
        stop.restore()
        bar.close()
        for w in writers.values():
            w.flush()
    s = int(step.numpy())
    if stop.received:
        path = _save(run, s)
        if runtime.is_chief:
            print(
                f"Stopped ({stop.received}) at step {s}; saved {path}. Run the same command "
                "again to resume."
            )
    return {"step": s, "eval": eval_metrics, "interrupted": stop.received}


class _StopSignals:
    """SIGINT / SIGTERM handlers that only set a flag; the loop stops between steps.

    A second Ctrl-C while stopping raises KeyboardInterrupt as usual (no checkpoint:
    the one being written would be inconsistent).
    """

    def __init__(self, sigterm: bool = True):
        self.received = None
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        names = ["SIGINT"] + (["SIGTERM"] if sigterm else [])
        for name in names:
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _check_settings(**settings):
    """Fails before any work, naming the gin binding and what it takes."""
    positive = (
        "batch_size",
        "num_steps",
        "max_non_finite_steps",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
    )
    for name in positive:
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"train.{name} must be a positive integer, got {value!r}.")
    for name in ("fidelity_every", "images_every"):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"train.{name} must be an integer >= 0 (0: off), got {value!r}.")
    for name in ("stop_at_step", "update_every"):
        value = settings[name]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"train.{name} must be a positive integer or None, got {value!r}.")
    precision_lib.check_precision(settings["precision"], "train.precision")
    modes.get(settings["mode"], "train.mode")
    if settings["data_checkpoint"] not in ("full", "symbolic"):
        raise ValueError(
            f"train.data_checkpoint = {settings['data_checkpoint']!r}; use 'full' (the input "
            "pipeline's whole state, shuffle buffers included) or 'symbolic' (positions only: "
            "for pipelines that do not reorder, e.g. moving_shapes)."
        )


def _save(run: Run, step: int) -> str | None:
    """The chief writes the checkpoint; other workers hold the same parameters."""
    return run.checkpointer.save(step) if run.runtime.is_chief else None


def evaluate_workdir(workdir: str, gin_params: tuple = ()) -> dict:
    """Evaluates the latest checkpoint of a run with the config it saved.

    Restores parameters only; never reads the training data, never rewrites
    config.gin; its result is appended to eval_metrics.json as its own entry.
    """
    config = os.path.join(workdir, "config.gin")
    if not tf.io.gfile.exists(config):
        raise FileNotFoundError(
            f"{config} not found: is {workdir} the workdir of a sideways-train run?"
        )
    gin.parse_config_files_and_bindings([config], list(gin_params), finalize_config=False)
    return train(workdir, eval_only=True, eval_params=tuple(gin_params))
