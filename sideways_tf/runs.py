"""A run: how it is built, and how it is loaded back from its workdir.

    Settings     (sideways_tf.settings) the frozen settings of a run: gin's
                 `train.*` bindings, checked and resolved once;
    build_run    runtime + settings -> pipeline on its cores, optimizer, engine,
                 checkpoint, summary writers (what training uses);
    load_run     workdir -> the same model with its trained parameters, an engine
                 that predicts, and what the run recorded: what evaluation
                 (sideways-eval), export (sideways-export) and the benchmarks use.

Every path of a run is the Workdir's (sideways_tf.workdir).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import NamedTuple

import gin
import keras
import tensorflow as tf

from sideways_tf import checkpointing, distribute
from sideways_tf import precision as precision_lib
from sideways_tf import workdir as workdir_lib
from sideways_tf.data import contract
from sideways_tf.engine import Engine
from sideways_tf.pipeline import Pipeline
from sideways_tf.settings import Settings, adam, config_with_settings, record_settings
from sideways_tf.workdir import Workdir


class Run(NamedTuple):
    """Everything a training run is built from."""

    runtime: distribute.Runtime
    pipeline: Pipeline
    optimizer: keras.optimizers.Optimizer | None
    engine: Engine
    step: tf.Variable  # training steps (batches of clips) taken
    checkpointer: checkpointing.Checkpointer
    writers: dict  # {"train", "eval"}: summary writers (no-ops off the chief)


def build_pipeline(
    runtime: distribute.Runtime,
    settings: Settings,
    frame_shape: tuple,
    batch_per_replica: int,
    place: bool = True,
) -> Pipeline:
    """The run's model on the runtime's cores, initialised under the run's seed.

    The pipeline's layers are created under the Keras dtype policy
    settings.precision (the global policy is restored afterwards). place=False
    builds without the runtime's placement: each unit on its own device= (export).
    """

    task = {"task": settings.task}
    named = inspect.signature(settings.model_fn).parameters  # (**kwargs: passes task on)
    if "task" not in named and "num_classes" in named:
        # a model_fn of the older signature (batch_size, frame_shape, num_classes, placement)
        task = {"num_classes": getattr(settings.task, "num_classes", None)}

    def build(placement=None):  # None: the probe, each unit on its own device
        with precision_lib.policy_scope(settings.precision):  # (restores the global policy)
            return settings.model_fn(
                batch_size=batch_per_replica,
                frame_shape=frame_shape,
                placement=placement,
                **task,
            )

    cores = runtime.assign_cores(build) if place else None  # 'auto' measures a probe first
    keras.utils.set_random_seed(settings.seed)  # the same initial parameters, probe or not
    with runtime.scope():
        return build(runtime.placement(cores) if place else None)


def build_run(
    workdir: Workdir,
    runtime: distribute.Runtime,
    settings: Settings,
    dataset: tf.data.Dataset,
    binding: str = "train.train_data",
    data_iterator=None,
    repair: bool = True,
) -> Run:
    """Builds pipeline, optimizer, engine, checkpoint and writers on the runtime.

    dataset: the unbatched training data (only its element spec is read), made by
    the gin binding `binding`; the model is checked against it (mode, task, K)
    before anything is written.

    Each replica's pipeline holds B = settings.global_batch / R clips.
    "mixed_float16" wraps the optimizer in a LossScaleOptimizer (gin:
    loss_scaling.initial_scale). The checkpoint holds parameters, optimizer, step
    and (given) the data position; buffers only with carry_state (otherwise they
    are zero at every clip's start).
    """
    num_frames, frame_shape = contract.check_clip_dataset(dataset, binding, labelled=False)
    batch_per_replica = settings.resolve(runtime).batch_per_replica
    pipeline = build_pipeline(runtime, settings, frame_shape, batch_per_replica)
    settings.check_model(pipeline, dataset, binding)
    with runtime.scope():
        optimizer = settings.optimizer_fn(decay_steps=settings.updates(num_frames))
        if settings.precision == "mixed_float16":
            optimizer = precision_lib.loss_scaling(optimizer)
        engine = Engine(
            pipeline,
            settings.mode,
            optimizer,
            update_every=settings.update_every,
            carry_state=settings.carry_state,
            jit_compile=settings.jit_compile,
        )
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    state = dict(
        pipeline=checkpointing.variables_by_path(
            pipeline, buffers=settings.carry_state, replicas=runtime.strategy
        ),
        optimizer=optimizer,
        step=step,
    )
    if settings.carry_state:
        state["engine_step"] = engine.frames_seen
        if engine.message_scale is not None:
            state["message_loss_scale"] = engine.message_scale
    if data_iterator is not None:
        state["data"] = data_iterator
    checkpointer = checkpointing.Checkpointer(
        workdir.checkpoints,
        tf.train.Checkpoint(**state),
        max_to_keep=settings.keep_checkpoints,
        guard=engine.variables + list(optimizer.variables),
        repair=repair,
    )
    return Run(runtime, pipeline, optimizer, engine, step, checkpointer, writers(workdir, runtime))


def writers(workdir: Workdir, runtime: distribute.Runtime) -> dict:
    """{"train", "eval"}: TensorBoard writers on the chief, no-ops elsewhere."""
    if runtime.is_chief:
        return {s: tf.summary.create_file_writer(workdir.summaries(s)) for s in ("train", "eval")}
    return {s: tf.summary.create_noop_writer() for s in ("train", "eval")}


class LoadedRun(NamedTuple):
    """A run rebuilt from its workdir (load_run)."""

    workdir: Workdir
    settings: Settings
    runtime: distribute.Runtime
    pipeline: Pipeline
    engine: Engine  # no optimizer: predicts, evaluates, measures fidelity
    step: int  # the training step of the restored checkpoint (0 when not restored)
    checkpoint: str | None  # its path (None when not restored)
    frame_shape: tuple
    num_frames: int
    class_names: list | None  # names of the labels, when the data names them
    eval_data: Callable | None  # () -> the run's evaluation dataset


def load_run(
    workdir: str | Workdir,
    *,
    batch_size: int | None = None,
    gin_params=(),
    restore: bool = True,
    runtime: distribute.Runtime | None = None,
    precision: str | None = None,
    place: bool = True,
) -> LoadedRun:
    """Rebuilds a run from workdir/config.gin, with its newest readable parameters.

    batch_size: clips per replica of the rebuilt pipeline (default: the run's B).
    gin_params: bindings applied over the saved config (e.g. another eval split).
    restore: False gives the run's initial parameters (a fresh build under its seed).
    runtime: where to build (default: a runtime from the config's bindings; export
      passes a single-device one). precision: build in this Keras policy instead
      of the run's (export: "float32"). place=False: units on their own devices
      (export unpins them afterwards). Restores parameters only: never buffers,
      optimizer state or data position. The training data is never read: shapes
      come from the datasets' element specs. gin has one config per process: this
      clears yours and leaves the run's parsed (re-parse your own files afterwards).
    """
    workdir = Workdir.of(workdir)
    workdir.require_run()
    workdir_lib.read_config(workdir)  # damaged or truncated: named, with the fix
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(
            f"batch_size must be a positive integer (clips per replica), got {batch_size!r}."
        )
    gin.clear_config()
    gin.parse_config_files_and_bindings([workdir.config], list(gin_params), finalize_config=False)
    settings = Settings()
    runtime = runtime or distribute.make_runtime()
    data_fn = settings.eval_data or settings.train_data
    binding = "train.eval_data" if settings.eval_data else "train.train_data"
    dataset = data_fn()
    num_frames, frame_shape = contract.check_clip_dataset(dataset, binding, labelled=False)
    per_replica = batch_size or settings.resolve(runtime).batch_per_replica
    built = settings if precision is None else dataclasses.replace(settings, precision=precision)
    pipeline = build_pipeline(runtime, built, frame_shape, per_replica, place=place)
    with runtime.scope():
        engine = Engine(pipeline, settings.mode)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    path = None
    if restore:
        checkpointer = checkpointing.Checkpointer(
            workdir.checkpoints,
            tf.train.Checkpoint(
                pipeline=checkpointing.variables_by_path(pipeline, buffers=False), step=step
            ),
            max_to_keep=settings.keep_checkpoints,
            repair=False,
        )
        path = checkpointer.restore_latest(partial=True)
        if path is None:
            raise FileNotFoundError(
                f"No checkpoint in {workdir.checkpoints}: there are no trained parameters. "
                f"Train first (sideways-train --workdir={workdir.root}), or point --workdir at "
                "a run that has saved one."
            )
    return LoadedRun(
        workdir=workdir,
        settings=settings,
        runtime=runtime,
        pipeline=pipeline,
        engine=engine,
        step=int(step.numpy()),
        checkpoint=path,
        frame_shape=tuple(frame_shape),
        num_frames=num_frames,
        class_names=contract.class_names(dataset),
        eval_data=settings.eval_data,
    )


__all__ = [
    "LoadedRun",
    "Run",
    "Settings",
    "adam",
    "build_pipeline",
    "build_run",
    "config_with_settings",
    "load_run",
    "record_settings",
    "writers",
]
