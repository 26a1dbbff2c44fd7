"""The settings of a run: gin's `train.*` bindings, checked and resolved in one place.

    Settings   a frozen dataclass bound by gin as `train` (its fields' defaults and
               one-line meanings live here); `check` when made, `check_runtime` and
               `check_model` against the runtime and the model, `resolve(runtime)`
               -> Resolved (mode, global batch, batch per process and per replica);
    adam       the default optimizer (gin: adam.*);
    record_settings, config_with_settings
               Settings given from Python as gin text, so that their workdir's
               config.gin rebuilds them (evaluation, export, resume).

Runtime (devices, strategy: sideways_tf.distribute), task and model (train.task,
train.model_fn), and schedule (steps, intervals, checkpoints) are kept apart.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import sys
import warnings
from collections.abc import Callable
from typing import NamedTuple

import gin
import keras

from sideways_tf import distribute, modes, tasks
from sideways_tf import precision as precision_lib
from sideways_tf.modes import Mode
from sideways_tf.pipeline import Pipeline
from sideways_tf.tasks import Classification, Task


class Resolved(NamedTuple):
    """Settings resolved on a runtime (Settings.resolve)."""

    mode: Mode
    global_batch: int  # clips per training step over every replica
    batch_per_process: int  # clips this process feeds per step
    batch_per_replica: int  # B: the buffers' static batch (the streams a replica carries)


def _deprecated(old: str, new: str) -> None:
    message = f"Deprecated gin binding: {old}; bind {new} instead (same meaning)."
    warnings.warn(message, DeprecationWarning, stacklevel=4)
    print(message, file=sys.stderr)


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

    Words (the same in code, gin, flags and README): a training step is one batch of
    clips (`num_steps`, checkpoint numbers); an update is one optimizer step (one per
    clip, or K / update_every); a computation step t is one frame. `global_batch` is
    the clips of one training step over every replica; `resolve(runtime)` gives the
    batch per process and per replica (B, the buffers' static batch: the streams
    each replica's pipeline carries). Checked when made (`check`), naming the
    binding and what it takes. Older names still bind, with a deprecation message
    naming the new one: train.batch_size (global_batch), train.num_classes (task).
    """

    # -- Task
    mode: str = gin.REQUIRED  # frame_bp | bptt | sideways | skip_sideways (sideways_tf.modes)
    task: Task | None = None  # @Classification() or @FutureFrames(): head, loss, metrics
    model_fn: Callable = gin.REQUIRED  # (batch_size, frame_shape, task, placement) -> Pipeline
    train_data: Callable = gin.REQUIRED  # () -> unbatched {"frames"[, "label"]} dataset
    eval_data: Callable | None = None  # () -> finite dataset scored by the task's evaluation
    seed: int = 0  # parameter initialisation (data seeds are the data's own bindings)
    # -- Schedule
    global_batch: int = 16  # clips per training step over all replicas (B = this / R)
    num_steps: int = 2000  # training steps (batches of clips); sets the LR schedule
    stop_at_step: int | None = None  # end this run early (resume later with the same config)
    optimizer_fn: Callable = adam  # () -> Keras optimizer; gets decay_steps
    update_every: int | None = None  # an update every N frames (None: one per clip)
    carry_state: bool = False  # keep buffers across consecutive clips (streaming)
    jit_compile: bool = False  # XLA-compile the update (units of a replica on one device)
    precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16 (loss-scaled)
    max_non_finite_steps: int = 10  # stop after this many non-finite updates in a row
    stall_after: int = (
        200  # sideways modes: warn if the loss is still at chance after N steps (0: off)
    )
    fidelity_floor: float = 0.1  # sideways modes: warn if a unit's fidelity stays below this
    # -- Logging and checkpoints
    log_every: int = 50  # training steps between train scalars
    fidelity_every: int = 250  # steps between sideways-vs-bptt gradient fidelity (0: off)
    images_every: int = 1000  # steps between sample input clips in TensorBoard (0: off)
    eval_every: int = 500  # steps between evaluations (and at the end)
    checkpoint_every: int = 500  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 3  # checkpoints kept in workdir/checkpoints
    data_checkpoint: str = "full"  # "full" input state, or "symbolic" (positions only)
    progress: bool = True  # progress bar on the terminal
    # -- Deprecated names (still bound, with a message naming the new one)
    batch_size: int | None = None  # now train.global_batch
    num_classes: int | None = None  # now train.task = @Classification(), .num_classes

    def __post_init__(self):
        if self.batch_size is not None:
            _deprecated("train.batch_size", "train.global_batch")
            object.__setattr__(self, "global_batch", self.batch_size)
            object.__setattr__(self, "batch_size", None)
        if self.num_classes is not None and self.task is None:
            _deprecated(
                "train.num_classes",
                "train.task = @Classification() and Classification.num_classes",
            )
            object.__setattr__(self, "task", Classification(num_classes=self.num_classes))
        self.check()

    def check(self):
        """Fails before any work, naming the gin binding and what it takes."""
        positive = (
            "global_batch",
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
        for name in ("fidelity_every", "images_every", "stall_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"train.{name} must be an integer >= 0 (0: off), got {value!r}.")
        for name in ("stop_at_step", "update_every"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"train.{name} must be a positive integer or None, got {value!r}.")
        if isinstance(self.fidelity_floor, bool) or not -1.0 <= self.fidelity_floor <= 1.0:
            raise ValueError(
                f"train.fidelity_floor is a cosine in [-1, 1] (-1: off), got {self.fidelity_floor!r}."
            )
        precision_lib.check_precision(self.precision, "train.precision")
        if self.task is not None and not isinstance(self.task, Task):
            raise ValueError(
                f"train.task = {self.task!r} is not a task; bind train.task = @Classification() "
                "(with Classification.num_classes) or @FutureFrames(), or your Task subclass."
            )
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

    def resolve(self, runtime: distribute.Runtime) -> Resolved:
        """What the settings mean on this runtime, checked against it once."""
        self.check_runtime(runtime)
        return Resolved(
            mode=modes.get(self.mode, "train.mode"),
            global_batch=self.global_batch,
            batch_per_process=self.global_batch // runtime.num_workers,
            batch_per_replica=self.global_batch // runtime.num_replicas,
        )

    def check_runtime(self, runtime: distribute.Runtime):
        """Cross-checks with the runtime (replicas, workers)."""
        if self.global_batch % runtime.num_replicas:
            raise ValueError(
                f"train.global_batch = {self.global_batch} does not split over "
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
        if isinstance(value, tasks.Task):  # @<field>/Task() with its config in the scope
            selector = _configurable_name(type(value))
            config = value.get_config()
            bad = [k for k, v in config.items() if _literal(v) is None]
            if selector is None or bad:
                raise ValueError(
                    f"train.{name} = {value!r} cannot be written to the workdir's config.gin "
                    f"(its class is not registered with gin, or its config {bad} holds values "
                    "gin cannot write). Register the Task class with @gin.configurable and "
                    "give it a get_config of literals."
                )
            imports.add(type(value).__module__)
            lines.append(f"train.{name} = @{name}/{selector}()")
            scoped += [f"{name}/{selector}.{k} = {_literal(v)}" for k, v in config.items()]
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


__all__ = ["Resolved", "Settings", "adam", "config_with_settings", "record_settings"]
