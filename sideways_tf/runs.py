"""A run: its settings, how it is built, and how it is loaded back from its workdir.

    Settings     the frozen settings of a run: gin's `train.*` bindings, checked
                 in one place (their defaults and one-line meanings live here);
    build_run    runtime + settings -> pipeline on its cores, optimizer, engine,
                 checkpoint, summary writers (what training uses);
    load_run     workdir -> the same model with its trained parameters, an engine
                 that predicts, and what the run recorded: what evaluation
                 (sideways-eval), export (sideways-export) and the benchmarks use.

Every path of a run is the Workdir's (sideways_tf.workdir).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable
from typing import NamedTuple

import gin
import keras
import tensorflow as tf

from sideways_tf import checkpointing, distribute, modes
from sideways_tf import precision as precision_lib
from sideways_tf import workdir as workdir_lib
from sideways_tf.data import contract
from sideways_tf.engine import Engine
from sideways_tf.pipeline import Pipeline
from sideways_tf.workdir import Workdir


@gin.configurable(module="sideways_tf")
def adam(
    learning_rate: float = 1e-3,  # peak learning rate, after warmup
    warmup_steps: int = 100,  # linear warmup from 0, in optimizer steps
    decay_steps: int = 1000,  # cosine decay to 0 over this many steps after warmup
    clipnorm: float | None = 1.0,  # clip each gradient's norm (None: no clipping)
) -> keras.optimizers.Optimizer:
    """Adam with linear warmup and cosine decay; the run sets decay_steps from num_steps."""
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else learning_rate,
        decay_steps=max(decay_steps - warmup_steps, 1),
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    return keras.optimizers.Adam(schedule, clipnorm=clipnorm)


@gin.configurable("train", module="sideways_tf")
@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a training run is set up with: the gin bindings `train.*`.

    Words: a training step is one batch of clips (`num_steps`, checkpoint numbers);
    an update is one optimizer step (one per clip, or K / update_every); a
    computation step t is one frame. `batch_size` is global: B = batch_size / R
    clips per replica, batch_size / num_workers per process.
    Checked when made (`check`), naming the binding and what it takes.
    """

    # -- Task
    mode: str = gin.REQUIRED  # frame_bp | bptt | sideways | skip_sideways (sideways_tf.modes)
    model_fn: Callable = (
        gin.REQUIRED
    )  # (batch_size, frame_shape, num_classes, placement) -> Pipeline
    train_data: Callable = gin.REQUIRED  # () -> unbatched {"frames"[, "label"]} dataset
    eval_data: Callable | None = None  # () -> finite dataset scored by the task's evaluation
    num_classes: int | None = None  # classes of the task (None: a future-frame head)
    seed: int = 0  # parameter initialisation (data seeds are the data's own bindings)
    # -- Schedule
    batch_size: int = 16  # global: clips per training step over all replicas (B = this / R)
    num_steps: int = 2000  # training steps (batches of clips); sets the LR schedule
    stop_at_step: int | None = None  # end this run early (resume later with the same config)
    optimizer_fn: Callable = adam  # () -> Keras optimizer; gets decay_steps
    update_every: int | None = None  # an update every N frames (None: one per clip)
    carry_state: bool = False  # keep buffers across consecutive clips (streaming)
    jit_compile: bool = False  # XLA-compile the update (units of a replica on one device)
    precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16 (loss-scaled)
    max_non_finite_steps: int = 10  # stop after this many non-finite updates in a row
    # -- Logging and checkpoints
    log_every: int = 50  # training steps between train scalars
    fidelity_every: int = 250  # steps between sideways-vs-bptt gradient fidelity (0: off)
    images_every: int = 1000  # steps between sample input clips in TensorBoard (0: off)
    eval_every: int = 500  # steps between evaluations (and at the end)
    checkpoint_every: int = 500  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 3  # checkpoints kept in workdir/checkpoints
    data_checkpoint: str = "full"  # "full" input state, or "symbolic" (positions only)
    progress: bool = True  # progress bar on the terminal

    def __post_init__(self):
        self.check()

    def check(self):
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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train.{name} must be a positive integer, got {value!r}.")
        for name in ("fidelity_every", "images_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"train.{name} must be an integer >= 0 (0: off), got {value!r}.")
        for name in ("stop_at_step", "update_every"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"train.{name} must be a positive integer or None, got {value!r}.")
        precision_lib.check_precision(self.precision, "train.precision")
        if self.mode is not gin.REQUIRED:
            modes.get(self.mode, "train.mode")
        if self.data_checkpoint not in ("full", "symbolic"):
            raise ValueError(
                f"train.data_checkpoint = {self.data_checkpoint!r}; use 'full' (the input "
                "pipeline's whole state, shuffle buffers included) or 'symbolic' (positions "
                "only: for pipelines that do not reorder, e.g. moving_shapes)."
            )

    @property
    def last_step(self) -> int:
        """The training step this run stops at: num_steps, or stop_at_step if earlier."""
        return (
            self.num_steps if self.stop_at_step is None else min(self.stop_at_step, self.num_steps)
        )

    def updates(self, num_frames: int) -> int:
        """Updates over the whole run for clips of K frames (the LR schedule's length)."""
        return self.num_steps * (num_frames // self.update_every if self.update_every else 1)

    def check_runtime(self, runtime: distribute.Runtime):
        """Cross-checks with the runtime (replicas, workers)."""
        if self.batch_size % runtime.num_replicas:
            raise ValueError(
                f"train.batch_size = {self.batch_size} does not split over "
                f"{runtime.num_replicas} replicas ({runtime.describe()}); use a multiple of "
                f"{runtime.num_replicas}."
            )
        if self.carry_state and runtime.num_workers > 1:
            raise ValueError(
                "train.carry_state = True keeps each replica's buffers across clips, which a "
                "multi-worker checkpoint does not hold (each worker's buffers live in its own "
                "process); use carry_state = False with runtime.strategy = 'multi_worker'."
            )

    def check_model(self, pipeline: Pipeline, dataset, binding: str):
        """Cross-checks with the model and the data: mode vs topology, task vs data, K."""
        mode = modes.get(self.mode)
        try:
            mode.check(pipeline)
        except ValueError as e:
            raise ValueError(
                f"{e} (gin: train.mode = '{self.mode}', and the model's topology.)"
            ) from e
        num_frames, _ = pipeline.task.check_data(dataset, binding)
        if self.update_every and num_frames % self.update_every:
            raise ValueError(
                f"Clips have K={num_frames} frames, not a multiple of train.update_every="
                f"{self.update_every}; pick an update_every that divides K."
            )
        mode.check_clip_length(pipeline, num_frames, f"the num_frames of {binding}")


# -- Settings given from Python, as gin text -------------------------------------------

_FIX = (
    "Give a function registered with gin (@gin.configurable), or a functools.partial of "
    "one with keyword arguments that are literals, e.g. train_data=functools.partial("
    "sideways_tf.data.moving_shapes.moving_shapes_dataset, split='train', num_frames=8); "
    "or bind it in gin (train.{name} = @my_fn) and call train.train(workdir) without "
    "settings."
)


def record_settings(settings: Settings) -> str:
    """The gin text of Settings given from Python: what train() writes to config.gin.

    gin's operative config holds what gin supplied, not the arguments of a Python
    call, so a workdir launched by train.train(workdir, Settings(...)) would not
    rebuild (load_run: evaluation, export, resume). Every field is written as a
    binding `train.<field> = ...`: literals as they are; a gin configurable as
    `@name` (or the reference gin bound it to, `@scope/name`); a functools.partial
    of one as `@<field>/name` with its keyword arguments bound in the scope
    `<field>`. Anything else (a lambda, a plain function, an object) is refused
    here, before any work, naming the field and the fix. Imports of the
    configurables' modules come first, so a fresh process can parse the text.
    """
    imports, lines, scoped = {"sideways_tf.runs"}, [], []
    for field in dataclasses.fields(Settings):
        name, value = field.name, getattr(settings, field.name)
        if value is gin.REQUIRED:
            raise ValueError(f"train.{name} is required: give Settings({name}=...).")
        literal = _literal(value)
        if literal is not None:
            lines.append(f"train.{name} = {literal}")
            continue
        if isinstance(value, functools.partial):
            selector = _configurable_name(value.func)
            bad = [k for k, v in value.keywords.items() if _literal(v) is None]
            if selector is None or value.args or bad:
                why = (
                    f"its function {value.func!r} is not registered with gin"
                    if selector is None
                    else "it has positional arguments"
                    if value.args
                    else f"its arguments {bad} are not literals"
                )
                raise ValueError(
                    f"train.{name} = {value!r} cannot be written to the workdir's config.gin "
                    f"({why}), so the workdir could not be evaluated, exported or resumed. "
                    + _FIX.format(name=name)
                )
            imports.add(inspect.unwrap(value.func).__module__)
            lines.append(f"train.{name} = @{name}/{selector}")
            scoped += [f"{name}/{selector}.{k} = {_literal(v)}" for k, v in value.keywords.items()]
            continue
        reference = _reference(name, value) if callable(value) else None
        if reference is None:
            kind = (
                "a lambda"
                if getattr(value, "__name__", "") == "<lambda>"
                else (
                    "a function gin does not know"
                    if callable(value)
                    else f"a {type(value).__name__}"
                )
            )
            raise ValueError(
                f"train.{name} = {value!r} cannot be written to the workdir's config.gin (it "
                f"is {kind}; gin records literals and its configurables), so the workdir "
                "could not be evaluated, exported or resumed. " + _FIX.format(name=name)
            )
        imports.add(inspect.unwrap(value).__module__)
        lines.append(f"train.{name} = {reference}")
    return "\n".join(
        [f"import {m}" for m in sorted(imports)]
        + ["", "# train.train(workdir, Settings(...)) from Python: the settings it was given."]
        + lines
        + scoped
    )


def config_with_settings(recorded: str) -> str:
    """gin's operative config with its train.* bindings replaced by record_settings' text.

    gin's own train.* lines hold only the defaults of a Settings(...) made in Python.
    The scopes record_settings names after the fields (model_fn/, train_data/, ...)
    are its own too: gin's lines there are whatever calls in those scopes this
    process made before (an evaluation's, a load_run's), which would make a resumed
    run's config differ from the saved one.
    """
    fields = "|".join(f.name for f in dataclasses.fields(Settings))
    ours = re.compile(rf"^(train\.\w+|({fields})/[\w.]+)\s*=")
    kept, skipping = [], False
    for line in gin.operative_config_str().splitlines():
        if line[:1].isspace() and skipping:  # a value continued over lines
            continue
        skipping = ours.match(line) is not None
        if not skipping:
            kept.append(line)
    imports = [x for x in recorded.splitlines() if x.startswith("import ")]
    rest = [x for x in recorded.splitlines() if not x.startswith("import ")]
    return "\n".join(imports + [""] + kept + rest) + "\n"


def _literal(value) -> str | None:
    """gin text of a literal value (parses back equal), or None."""
    if callable(value):
        return None
    text = repr(value)
    try:
        return text if gin.config.parse_value(text) == value else None
    except (SyntaxError, ValueError):
        return None


def _configurable_name(fn) -> str | None:
    """The gin name of a configurable function or class (its wrapper or itself), or None."""
    name = getattr(inspect.unwrap(fn), "__name__", None)
    try:
        registered = gin.get_configurable(name) if name else None
    except (ValueError, KeyError):  # unknown or ambiguous
        return None
    if registered is None or inspect.unwrap(registered) is not inspect.unwrap(fn):
        return None
    if fn is not registered and fn is not inspect.unwrap(fn):
        return None  # a scoped wrapper: its scope is named by the gin binding (_reference)
    return name


def _reference(field: str, fn) -> str | None:
    """`@name` for a configurable, or the binding's `@scope/name` gin made it from; else None."""
    name = _configurable_name(fn)
    if name is not None:
        return f"@{name}"
    try:
        bound = gin.query_parameter(f"train.{field}")
    except (ValueError, KeyError):
        return None
    if isinstance(bound, gin.config.ConfigurableReference) and (
        inspect.unwrap(bound.configurable.wrapper) is inspect.unwrap(fn)
    ):
        return str(bound)
    return None


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

    def build(placement=None):  # None: the probe, each unit on its own device
        with precision_lib.policy_scope(settings.precision):  # (restores the global policy)
            return settings.model_fn(
                batch_size=batch_per_replica,
                frame_shape=frame_shape,
                num_classes=settings.num_classes,
                placement=placement,
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

    Each replica's pipeline holds B = settings.batch_size / R clips.
    "mixed_float16" wraps the optimizer in a LossScaleOptimizer (gin:
    loss_scaling.initial_scale). The checkpoint holds parameters, optimizer, step
    and (given) the data position; buffers only with carry_state (otherwise they
    are zero at every clip's start).
    """
    num_frames, frame_shape = contract.check_clip_dataset(dataset, binding, labelled=False)
    batch_per_replica = settings.batch_size // runtime.num_replicas
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
    per_replica = batch_size or settings.batch_size // runtime.num_replicas
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
