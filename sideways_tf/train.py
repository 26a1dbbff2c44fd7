"""Training runs: `train(workdir)`, the one gin root of every experiment.

    sideways-train --gin_file=gin/experiments/moving_shapes_skip_sideways.gin --workdir=/tmp/run

The loop reads top to bottom: data, model and engine, checkpoint (resume), then
steps with logging, gradient fidelity, evaluation and checkpoints. Everything a
run writes goes under `workdir`:
    config.gin              the operative gin config (also in TensorBoard text)
    checkpoints/ckpt-N.*    parameters, optimizer, buffers, step, data position
    train/, eval/           TensorBoard event files
    eval_metrics.json       the latest evaluation, with its step and history
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import gin
import keras
import numpy as np
import tensorflow as tf
import tqdm

from sideways_tf import checkpointing, distribute, summaries
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
    num_classes: int,
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
) -> Run:
    """Builds pipeline, optimizer, engine, checkpoint and writers on the runtime.

    batch_size is the global batch; each replica's pipeline holds B = batch_size / R.
    The checkpoint holds parameters, optimizer, step and (given) the data position;
    buffers only with carry_state (otherwise they are zero at every clip's start).
    """
    per_replica = batch_size // runtime.num_replicas

    def build():
        return model_fn(batch_size=per_replica, frame_shape=frame_shape, num_classes=num_classes)

    cores = runtime.assign_cores(build)  # 'auto' measures a probe pipeline first
    keras.utils.set_random_seed(seed)  # the same initial parameters, probe or not
    with runtime.scope(cores):
        pipeline = build()
        try:
            check_mode(mode, pipeline)
        except ValueError as e:
            raise ValueError(f"{e} (gin: train.mode = '{mode}', and the model's topology.)") from e
        optimizer = optimizer_fn(decay_steps=decay_steps)
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
        state["engine_step"] = engine.step
    if data_iterator is not None:
        state["data"] = data_iterator
    directory = os.path.join(workdir, "checkpoints")
    checkpointer = checkpointing.Checkpointer(
        directory, tf.train.Checkpoint(**state), max_to_keep=keep_checkpoints
    )
    if runtime.is_chief:
        writers = {
            split: tf.summary.create_file_writer(os.path.join(workdir, split))
            for split in ("train", "eval")
        }
    else:
        writers = {split: tf.summary.create_noop_writer() for split in ("train", "eval")}
    return Run(runtime, pipeline, optimizer, engine, step, checkpointer, writers)


@gin.configurable(module="sideways_tf", denylist=["workdir", "eval_only"])
def train(
    workdir: str,
    # -- Task ----------------------------------------------------------------
    mode: str = gin.REQUIRED,  # frame_bp | bptt | sideways | skip_sideways
    model_fn: Callable = gin.REQUIRED,  # (batch_size, frame_shape, num_classes) -> Pipeline
    train_data: Callable = gin.REQUIRED,  # () -> unbatched {"frames", "label"} dataset
    eval_data: Callable | None = None,  # () -> finite dataset scored by evaluate()
    num_classes: int = gin.REQUIRED,  # classes of the task (the head's width)
    seed: int = 0,  # parameter initialisation (data seeds are the data's own bindings)
    # -- Schedule ------------------------------------------------------------
    batch_size: int = 16,  # clips per step over all replicas (B = batch_size / replicas)
    num_steps: int = 2000,  # training steps (batches of clips); sets the LR schedule
    stop_at_step: int | None = None,  # end this run early (resume later with the same config)
    optimizer_fn: Callable = adam,  # () -> Keras optimizer; gets decay_steps
    update_every: int | None = None,  # optimizer step every N frames (None: once per clip)
    carry_state: bool = False,  # keep buffers across consecutive clips (streaming)
    jit_compile: bool = False,  # XLA-compile the update (units of a replica on one device)
    # -- Logging and checkpoints ----------------------------------------------
    log_every: int = 50,  # steps between train scalars
    fidelity_every: int = 250,  # steps between sideways-vs-bptt gradient fidelity (0: off)
    images_every: int = 1000,  # steps between sample input clips in TensorBoard (0: off)
    eval_every: int = 500,  # steps between evaluations (and at the end)
    checkpoint_every: int = 500,  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 3,  # checkpoints kept in workdir/checkpoints
    progress: bool = True,  # progress bar on the terminal
    eval_only: bool = False,
) -> dict:
    """Trains (or, with eval_only, evaluates the latest checkpoint); returns final metrics.

    The runtime (strategy, replicas, cores per replica, placement) comes from the
    gin configurable `runtime` (sideways_tf.distribute.make_runtime).
    """
    for name, value in (
        ("log_every", log_every),
        ("eval_every", eval_every),
        ("checkpoint_every", checkpoint_every),
        ("keep_checkpoints", keep_checkpoints),
        ("batch_size", batch_size),
        ("num_steps", num_steps),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"train.{name} must be a positive integer, got {value!r}.")

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
    if runtime.is_chief:
        tf.io.gfile.makedirs(workdir)

    # -- Data --------------------------------------------------------------------
    train_ds = train_data()
    spec = train_ds.element_spec
    for key in ("frames", "label"):
        if key not in spec:
            raise ValueError(
                f"train.train_data yields {sorted(spec)}; a training dataset must yield "
                "'frames' [K, H, W, C] and 'label'. Bind train.train_data to a labelled "
                "dataset (the future-frames variants have no labels)."
            )
    num_frames, *frame_shape = spec["frames"].shape
    if num_frames is None or None in frame_shape:
        raise ValueError(
            f"train.train_data yields frames of shape {spec['frames'].shape}; the "
            "pipeline needs a static clip length and frame size."
        )
    local_batch = batch_size // runtime.num_workers  # this process's replicas' clips
    train_iter = iter(
        runtime.shard_dataset(train_ds).batch(local_batch, drop_remainder=True).prefetch(2)
    )
    eval_ds = eval_data() if eval_data is not None else None  # finite; re-read at each eval

    # -- Model, engine, checkpoint: resume where the last run stopped ----------------
    updates_per_clip = num_frames // update_every if update_every else 1
    run = build_run(
        workdir,
        runtime,
        mode=mode,
        model_fn=model_fn,
        num_classes=num_classes,
        batch_size=batch_size,
        frame_shape=tuple(frame_shape),
        optimizer_fn=optimizer_fn,
        decay_steps=num_steps * updates_per_clip,
        update_every=update_every,
        carry_state=carry_state,
        jit_compile=jit_compile,
        seed=seed,
        keep_checkpoints=keep_checkpoints,
        data_iterator=train_iter,
    )
    pipeline, optimizer, engine, step, writers = (
        run.pipeline,
        run.optimizer,
        run.engine,
        run.step,
        run.writers,
    )
    # Several workers must agree on the step a preemption stops at: TF's
    # PreemptionCheckpointHandler does, through the coordination service (it installs
    # its own SIGTERM handler, saves at the same step everywhere and ends the
    # process; rerun to resume). Created first: it adds its own counter to the checkpoint.
    preemption = None
    if runtime.num_workers > 1:
        preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
            runtime.cluster_resolver, run.checkpointer.manager
        )
    restored = run.checkpointer.restore_latest()
    if runtime.is_chief:
        summaries.write_config(writers["train"], workdir)

    def run_eval():
        if eval_ds is None:
            return None
        metrics = evaluate(engine, eval_ds, progress=progress and runtime.is_chief)
        if not runtime.is_chief:
            return metrics
        summaries.write_scalars(writers["eval"], int(step.numpy()), metrics)
        path = os.path.join(workdir, "eval_metrics.json")
        history = []
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                history = [
                    h for h in json.load(f).get("history", []) if h["step"] < int(step.numpy())
                ]
        record = {"step": int(step.numpy()), **metrics}
        summaries.write_json(path, {**record, "mode": mode, "history": history + [record]})
        return metrics

    if eval_only:
        if restored is None:
            raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints to evaluate.")
        return {"step": int(step.numpy()), "eval": run_eval()}

    # -- Training loop ------------------------------------------------------------------
    bar = tqdm.tqdm(
        total=num_steps,
        initial=int(step.numpy()),
        unit="step",
        disable=not (progress and runtime.is_chief),
        dynamic_ncols=True,
    )
    window = {"loss": [], "hits": []}
    last_time, last_step, eval_metrics = time.time(), int(step.numpy()), None
    interrupted = []
    # SIGTERM (preemption, `kill`) ends the run after the current step, with a checkpoint.
    in_main_thread = threading.current_thread() is threading.main_thread() and preemption is None
    if in_main_thread:
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: interrupted.append(True))
    try:
        last = num_steps if stop_at_step is None else min(stop_at_step, num_steps)
        while int(step.numpy()) < last and not interrupted:
            batch = next(train_iter)
            frames, labels = batch["frames"], batch["label"]
            if not window["loss"]:  # first step of each logging window
                _check_labels(labels, num_classes)
            metrics = engine.train_clip(frames, labels)
            step.assign_add(1)
            s = int(step.numpy())
            bar.update(1)
            if preemption is not None:
                preemption.save_checkpoint_if_preempted(checkpoint_number=s)
            window["loss"].append(float(metrics["loss"]))
            window["hits"].append(np.mean(np.argmax(metrics["logits"], -1) == labels.numpy()))

            if s % log_every == 0 or s == last:
                now = time.time()
                fps = (s - last_step) * batch_size * num_frames / max(now - last_time, 1e-9)
                last_time, last_step = now, s
                scalars = {
                    "loss": np.mean(window["loss"]),
                    "accuracy": np.mean(window["hits"]),
                    "learning_rate": float(optimizer.learning_rate),
                    "frames_per_second": fps,
                }
                window = {"loss": [], "hits": []}
                summaries.write_scalars(writers["train"], s, scalars)
                summaries.write_per_unit(writers["train"], s, "grad_norm", metrics["grad_norms"])
                summaries.write_per_unit(
                    writers["train"],
                    s,
                    "buffer_norm",
                    [np.linalg.norm(np.array(u.output_buffer)) for u in pipeline.units],
                )
                bar.set_postfix(
                    loss=f"{scalars['loss']:.3f}",
                    acc=f"{scalars['accuracy']:.3f}",
                    fps=f"{fps:.0f}",
                )
            if fidelity_every and (s % fidelity_every == 0 or s == 1):
                fid = engine.gradient_fidelity(frames, labels)
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
                    bar.write(f"step {s}: eval accuracy {eval_metrics['accuracy']:.3f}")
    except KeyboardInterrupt:
        interrupted.append(True)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
        bar.close()
        for w in writers.values():
            w.flush()
    if interrupted:
        path = _save(run, int(step.numpy()))
        print(
            f"Stopped at step {int(step.numpy())}; saved {path}. Run again with the same workdir to resume."
        )
    return {"step": int(step.numpy()), "eval": eval_metrics}


def _save(run: Run, step: int) -> str | None:
    """The chief writes the checkpoint; other workers hold the same parameters."""
    return run.checkpointer.save(step) if run.runtime.is_chief else None


def evaluate_workdir(workdir: str, gin_params: tuple = ()) -> dict:
    """Evaluates the latest checkpoint of a run with the config it saved."""
    config = os.path.join(workdir, "config.gin")
    if not tf.io.gfile.exists(config):
        raise FileNotFoundError(
            f"{config} not found: is {workdir} the workdir of a sideways-train run?"
        )
    gin.parse_config_files_and_bindings([config], list(gin_params), finalize_config=False)
    return train(workdir, eval_only=True)


def _check_labels(labels, num_classes: int):
    top = int(tf.reduce_max(labels))
    if top >= num_classes or int(tf.reduce_min(labels)) < 0:
        raise ValueError(
            f"The training data has label {top}, outside [0, train.num_classes={num_classes}); "
            "set train.num_classes (NUM_CLASSES in the data gin file) to the dataset's class count."
        )
