"""Streaming export: a trained run as a SavedModel that steps one frame at a time.

    sideways-export --workdir=/tmp/run --output=/tmp/run/export [--batch_size=1]
    sideways_tf.export.export(workdir_or_pipeline, "/tmp/export", batch_size=1)   # Python

From Python, `export` takes a workdir or a Pipeline / SidewaysModel in memory (one
you built and trained yourself, e.g. from units_from_model); both write the same
SavedModel and metadata.

The SavedModel has two signatures (MoViNet's streaming pattern, under Keras 3 via
tf.saved_model.save on a tf.Module):

    init_state()            -> {t, output_1..output_L, delay_1..delay_D}, all zeros
    step(frame, **state)    -> {outputs, **new_state}

where `frame` is x[t], float32 [B, H, W, C], and `outputs` is the head on the top
unit's fresh output, [B, num_classes]. The state is what the pipeline carries
between steps at inference (PipelineState without the gradient messages):
    t           [] int32, frames fed since init_state
    output_i    a_i[t-1], the output buffer of unit i      [B, *out_i]
    delay_k     the k-th delay line of the topology        [d, B, *in]
A client feeds every returned state tensor back into the next step. The signature
leaves the batch axes open so that `step` can check them at run time: a frame batch
other than B, or a state tensor of another shape (e.g. another export's), is refused
with an error naming the shapes and the fix. `step_fixed_batch` (a function of the
SavedModel, not a signature) is the same step with every shape fixed and no check;
it is what `convert_tflite` converts.

What a deployer needs is in `sideways_export.json` next to the SavedModel, and in
the SavedModel itself as the signature `metadata() -> {"json"}`:
    frame_shape, batch_size, num_classes, class_names (moving_shapes; else null),
    fill_steps  T_fill: the output of step t (1-based) is built from real frames only
                for t >= T_fill; earlier outputs mix in the zero state;
    newest_lag, oldest_lag: the output of step t reads frames x[t - oldest_lag] ..
                x[t - newest_lag] (chain of L units: L-1 .. L-1, one frame);
    mode, topology, checkpoint, checkpoint_step, state_names.

The export is traced with no device pins (default device) and restores parameters
only (never buffers or optimizer state), as evaluation does. It is float32 whatever
train.precision the run trained in (parameters are float32 in every precision):
state tensors and outputs are float32; metadata trained_precision names the run's.
"""

from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf

from sideways_tf import checkpointing, distribute, placement
from sideways_tf.pipeline import Pipeline, PipelineState
from sideways_tf.runs import load_run

METADATA_FILE = "sideways_export.json"


def state_names(pipeline: Pipeline) -> list[str]:
    """Names of the exported state tensors, in PipelineState order (messages left out)."""
    num_delays = len(pipeline.delay_buffers())
    return (
        ["t"]
        + [f"output_{i}" for i in range(1, pipeline.num_units + 1)]
        + [f"delay_{k}" for k in range(1, num_delays + 1)]
    )


def state_to_dict(state: PipelineState) -> dict:
    """PipelineState -> {t, output_i, delay_k} (messages are not needed at inference)."""
    named = {"t": state.t}
    named.update({f"output_{i}": a for i, a in enumerate(state.outputs, start=1)})
    named.update({f"delay_{k}": d for k, d in enumerate(state.delays, start=1)})
    return named


def dict_to_state(pipeline: Pipeline, named: dict) -> PipelineState:
    """{t, output_i, delay_k} -> PipelineState, with no messages."""
    num_delays = len(pipeline.delay_buffers())
    return PipelineState(
        t=named["t"],
        outputs=tuple(named[f"output_{i}"] for i in range(1, pipeline.num_units + 1)),
        messages=(),
        delays=tuple(named[f"delay_{k}"] for k in range(1, num_delays + 1)),
    )


class StreamingModule(tf.Module):
    """init_state() and step(frame, **state) of a built pipeline, as tf.functions."""

    def __init__(self, pipeline: Pipeline, metadata: dict):
        super().__init__(name="sideways_streaming")
        # The pipeline itself is held outside TF's object tracking (its Python
        # bookkeeping does not save); its parameters are tracked as plain variables.
        self._holder = _Untracked(pipeline)
        self.parameters = [
            v.value for v in checkpointing.variables_by_path(pipeline, buffers=False).values()
        ]
        zero = state_to_dict(pipeline.zero_state())
        self._shapes = {k: v.shape for k, v in zero.items()}
        self._dtypes = {k: v.dtype for k, v in zero.items()}
        self._metadata_json = json.dumps(metadata, sort_keys=True)
        self._batch_size = pipeline.batch_size
        self._frame_shape = tf.TensorShape((pipeline.batch_size, *pipeline.frame_shape))
        # The signature leaves the batch axes open and the graph checks them (_step): a
        # loaded signature does not check the shapes it is called with, and Grappler folds
        # a check of a shape it knows statically (a placeholder's, or one the step's ops
        # pin) into "true". So the step must not fix B itself (tests/test_export.py).
        frame = tf.TensorSpec([None, *pipeline.frame_shape], tf.float32, "frame")
        specs = {
            k: tf.TensorSpec(_open_batch_axis(k, shape), self._dtypes[k], name=k)
            for k, shape in self._shapes.items()
        }
        # The same step with every shape fixed and no check: what TFLite converts.
        self.step_fixed_batch = tf.function(
            self._forward,
            input_signature=[
                tf.TensorSpec(self._frame_shape, tf.float32, "frame"),
                {k: tf.TensorSpec(v, self._dtypes[k], name=k) for k, v in self._shapes.items()},
            ],
        )
        self._outputs = self.step_fixed_batch.get_concrete_function().structured_outputs["outputs"]
        self.init_state = tf.function(self._init_state, input_signature=[])
        self.step = tf.function(self._step, input_signature=[frame, specs])
        self.metadata = tf.function(self._metadata, input_signature=[])

    @property
    def pipeline(self) -> Pipeline:
        return self._holder.value

    def _init_state(self):
        return state_to_dict(self.pipeline.zero_state())

    def _step(self, frame, state):
        # Every input with an open batch axis is checked (t, a scalar, would be folded). The
        # step runs in a branch, not after a control dependency on an assert: Grappler may
        # run the step's ops first, and a concat of two batches fails before it, unclearly.
        want = {"frame": self._frame_shape, **self._shapes}
        got = {k: tf.shape(v) for k, v in {"frame": frame, **state}.items() if k != "t"}
        ok = {k: _shape_equals(v, want[k]) for k, v in got.items()}
        return tf.cond(
            tf.reduce_all(tf.stack(list(ok.values()))),
            lambda: self._forward(frame, state),
            lambda: self._refuse(ok, got),
        )

    def _forward(self, frame, state):
        new_state, outputs = self.pipeline.forward_step(
            dict_to_state(self.pipeline, state), frame, training=False
        )
        return {"outputs": outputs, **state_to_dict(new_state)}

    def _refuse(self, ok: dict, got: dict):
        """Fails, naming the inputs whose shape is not as exported, and the fix.

        No quote marks in the message: the assert prints them escaped. The zeros it would
        return only give the branch the step's structure.
        """
        b = self._batch_size
        frame = tf.strings.join(
            [
                "step got a frame batch of shape ",
                _format_shape(got["frame"]),
                f", but this model was exported for batch_size={b}, frames "
                f"{self._frame_shape.as_list()} (its state holds {b} streams). Feed exactly "
                f"{b} frames per step, or re-export for your batch: sideways-export "
                "--workdir=W --output=DIR --batch_size=N (W: the workdir of the training run), "
                "or in Python sideways_tf.export.export(W or your pipeline, DIR, batch_size=N). ",
            ]
        )
        names = [k for k in got if k != "frame"]
        wrong = tf.logical_not(tf.stack([ok[k] for k in names]))
        each = tf.stack(
            [
                tf.strings.join(
                    [k, " ", _format_shape(got[k]), f" (not {self._shapes[k].as_list()})"]
                )
                for k in names
            ]
        )
        state = tf.strings.join(
            [
                "State tensors whose shape differs from this model: ",
                tf.strings.reduce_join(tf.boolean_mask(each, wrong), separator=", "),
                ". Feed back the state that init_state() or step() of this model returned "
                f"(exported for batch_size={b}), not the state of another export.",
            ]
        )
        message = tf.strings.strip(
            tf.where(ok["frame"], "", frame) + tf.where(tf.reduce_any(wrong), state, "")
        )
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            zeros = {k: tf.zeros(shape, self._dtypes[k]) for k, shape in self._shapes.items()}
            return {"outputs": tf.zeros(self._outputs.shape, self._outputs.dtype), **zeros}

    def _metadata(self):
        return {"json": tf.constant(self._metadata_json)}

    def signatures(self) -> dict:
        return {
            "init_state": self.init_state.get_concrete_function(),
            "step": self.step.get_concrete_function(),
            "metadata": self.metadata.get_concrete_function(),
        }


def _open_batch_axis(name: str, shape: tf.TensorShape) -> list:
    """The signature's shape of a state tensor: its batch axis (delay lines: axis 1) open."""
    dims = shape.as_list()
    if name != "t":
        dims[1 if name.startswith("delay_") else 0] = None
    return dims


def _shape_equals(got, want: tf.TensorShape):
    """Whether the runtime shape `got` (int32 vector) is `want`, whatever got's length."""
    want = tf.constant(want.as_list(), tf.int32)
    padded = tf.concat([got, tf.fill([tf.size(want)], -1)], axis=0)[: tf.size(want)]
    return tf.logical_and(tf.equal(tf.size(got), tf.size(want)), tf.reduce_all(padded == want))


def _format_shape(got):
    """[1, 16, 16, 4] from an int32 shape vector, at run time."""
    return "[" + tf.strings.reduce_join(tf.strings.as_string(got), separator=", ") + "]"


class _Untracked:
    """A plain holder: TF's trackable attribute wrapping leaves it alone."""

    def __init__(self, value):
        self.value = value


def load_pipeline(workdir: str, batch_size: int = 1) -> tuple[Pipeline, dict]:
    """A run's pipeline (runs.load_run) with `batch_size` streams, and the export metadata.

    No runtime and no device pins: every unit runs on the default device.
    Returns (pipeline, metadata).
    """
    _check_batch_size(batch_size)
    single = distribute.Runtime(None, placement.DevicePlan.single([None]))
    # Built in float32 whatever the run's precision (its parameters are float32 anyway).
    run = load_run(workdir, batch_size=batch_size, runtime=single, precision="float32", place=False)
    pipeline = run.pipeline
    _unpin(pipeline)
    metadata = _metadata(
        pipeline,
        run.frame_shape,
        batch_size,
        run.class_names,
        mode=run.settings.mode,
        trained_precision=run.settings.precision,
        checkpoint=os.path.basename(run.checkpoint),
        checkpoint_step=run.step,
    )
    return pipeline, metadata


def _metadata(pipeline: Pipeline, frame_shape, batch_size: int, class_names, **run) -> dict:
    """sideways_export.json: what a server needs to feed and read the exported step.

    run: mode, trained_precision, checkpoint, checkpoint_step (where it came from).
    """
    topology = pipeline.topology
    return dict(
        format="sideways_tf streaming export 1",
        frame_shape=list(frame_shape),
        frame_dtype="float32",
        batch_size=batch_size,
        **pipeline.task.export_metadata(pipeline, class_names),
        fill_steps=topology.fill_steps,
        newest_lag=topology.newest_lag(topology.num_units),
        oldest_lag=topology.fill_steps - 1,
        num_units=topology.num_units,
        mode=run["mode"],
        trained_precision=run["trained_precision"],
        topology=topology.describe(),
        checkpoint=run["checkpoint"],
        checkpoint_step=run["checkpoint_step"],
        state_names=state_names(pipeline),
    )


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer (the streams served at once), got "
            f"{batch_size!r}; e.g. --batch_size=1 (Python: export(..., batch_size=1))."
        )


def pipeline_from_memory(model, batch_size: int = 1) -> tuple[Pipeline, dict]:
    """A copy of a Pipeline (or a SidewaysModel's) with `batch_size` streams, and the metadata.

    The copy is rebuilt from the pipeline's Keras config (unbuilt units, no device pins,
    the default device) and given the pipeline's parameters (never its buffers), so the
    pipeline you pass is left as it was. Returns (pipeline, metadata); the metadata's
    mode is the SidewaysModel's compiled mode (None for a bare Pipeline), its
    checkpoint and checkpoint_step None.
    """
    from sideways_tf.keras_model import SidewaysModel  # (keras_model imports the engine)

    _check_batch_size(batch_size)
    mode = None
    if isinstance(model, SidewaysModel):
        mode = model.engine.mode.name if model.engine is not None else None
        model = model.pipeline
    if not isinstance(model, Pipeline) or not model.built:
        raise TypeError(
            f"export takes a workdir (str), a built sideways_tf.Pipeline or a SidewaysModel; "
            f"got {type(model).__name__}. Build the pipeline first: Pipeline(units, ..., "
            "batch_size=B, frame_shape=(H, W, C))."
        )
    low = sorted({u.compute_dtype for u in model.units} - {"float32"})
    if low:
        raise ValueError(
            f"The pipeline computes in {', '.join(low)} (a mixed Keras dtype policy); the "
            "export is float32. Build the same pipeline under "
            "sideways_tf.precision.policy_scope('float32'), copy the weights "
            "(set_weights), and export that; or export the workdir of a run "
            "(sideways-export --workdir=W rebuilds it in float32)."
        )
    config = model.get_config()
    config.update(batch_size=batch_size, frame_shape=tuple(model.frame_shape))
    # Unpinned: traced on the default device (from_config leaves the units unbuilt, so
    # their buffers take the new batch).
    config["units"] = [{**u, "config": {**u["config"], "device": None}} for u in config["units"]]
    try:
        copy = Pipeline.from_config(config)
    except Exception as e:
        raise ValueError(
            f"export could not rebuild the pipeline from its Keras config for batch_size="
            f"{batch_size} ({type(e).__name__}: {e}). Register your own layers with "
            "@keras.saving.register_keras_serializable() and give them get_config, or train "
            "with sideways-train and export its workdir (sideways-export --workdir=W)."
        ) from e
    ours, theirs = _parameters(copy), _parameters(model)
    if len(ours) != len(theirs):
        raise ValueError(
            f"export rebuilt the pipeline from its Keras config with {len(ours)} parameters, "
            f"but it has {len(theirs)}: some layer's get_config does not rebuild it as it is. "
            "Fix that get_config, or export the workdir of a run (sideways-export --workdir=W)."
        )
    for new, old in zip(ours, theirs):
        if new.name != old.name or tuple(new.shape) != tuple(old.shape):
            raise ValueError(
                f"export rebuilt the pipeline, but its parameter {new.path} {tuple(new.shape)} "
                f"does not match {old.path} {tuple(old.shape)}: the layers' get_config does "
                "not rebuild them as they are. Fix their get_config, or export a workdir."
            )
        new.assign(old.numpy())
    metadata = _metadata(
        copy,
        copy.frame_shape,
        batch_size,
        None,
        mode=mode,
        trained_precision="float32",
        checkpoint=None,
        checkpoint_step=None,
    )
    return copy, metadata


def _parameters(pipeline: Pipeline) -> list:
    """Every weight of the units and the head but the buffers, in build order."""
    buffers = {id(b) for b in pipeline.state_variables()}
    weights = [w for u in pipeline.units for w in u.weights if id(w) not in buffers]
    return weights + (list(pipeline.head.weights) if pipeline.head is not None else [])


def _unpin(pipeline: Pipeline):
    """Traces on the default device: drops the units' own devices from the plan."""
    for unit in pipeline.units:
        unit.device = None
    pipeline.plan = placement.DevicePlan.single([None])
    pipeline.cores = [0] * pipeline.num_units


# What an export directory holds: the SavedModel, the metadata, the optional TFLite step.
EXPORT_FILES = frozenset(
    {"saved_model.pb", "fingerprint.pb", "variables", "assets", METADATA_FILE, "model.tflite"}
)


def check_output(output: str) -> list[str]:
    """What `output` holds now, if it may take an export; refuses anything but an export.

    A new or empty directory takes it; a previous export (only EXPORT_FILES) is
    replaced whole, so no file of it (an old model.tflite) outlives it; a directory
    holding anything else is refused, naming those files, before any work.
    Returns the names of the previous export's files (empty: nothing replaced).
    """
    if not tf.io.gfile.exists(output):
        return []
    if not tf.io.gfile.isdir(output):
        raise ValueError(f"--output={output} is a file; give a directory for the export.")
    present = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(output))
    foreign = [n for n in present if n not in EXPORT_FILES]
    if foreign:
        shown = ", ".join(foreign[:8]) + (", ..." if len(foreign) > 8 else "")
        raise ValueError(
            f"--output={output} holds files that are not part of a sideways export ({shown}); "
            "nothing was written. Give a new or empty directory (a previous export there is "
            "replaced whole), or move those files away."
        )
    return present


def export(source, output: str, batch_size: int = 1) -> dict:
    """Writes the streaming SavedModel of `source` to `output`.

    source: a workdir (its newest readable checkpoint), or a built Pipeline or
    SidewaysModel in memory (its current parameters; pipeline_from_memory).
    batch_size: B, the streams the export serves at once (its state holds B).
    Safe against a live run: load_run restores from a snapshot of the checkpoint, so
    training may rotate it away meanwhile. `output` is checked first (check_output);
    the export is written beside it and then swapped in, so a previous export there is
    replaced whole (its model.tflite too) and a failed export leaves it as it was.
    Returns the metadata (also written to output/sideways_export.json), with
    "replaced": the previous export's files (not in the file).
    """
    previous = check_output(output)
    if isinstance(source, (str, os.PathLike)):
        pipeline, metadata = load_pipeline(os.fspath(source), batch_size)
    else:
        pipeline, metadata = pipeline_from_memory(source, batch_size)
    module = StreamingModule(pipeline, metadata)
    output = output.rstrip("/")
    staging = f"{output}.partial-{os.getpid()}"
    if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)
    try:
        tf.saved_model.save(module, staging, signatures=module.signatures())
        with tf.io.gfile.GFile(os.path.join(staging, METADATA_FILE), "w") as f:
            f.write(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        if tf.io.gfile.exists(output):
            tf.io.gfile.rmtree(output)
        tf.io.gfile.rename(staging, output)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    return {**metadata, "replaced": previous}


def convert_tflite(output: str) -> str:
    """Converts the step of an exported SavedModel to output/model.tflite (signature "step").

    TFLite gets `step_fixed_batch`, the step with every shape fixed: the converter drops
    the `step` signature's assert, and its open batch axis would leave a TFLite step that
    returns zeros for a wrong batch. With fixed shapes the interpreter refuses one itself.
    """
    loaded = tf.saved_model.load(output)
    with tempfile.TemporaryDirectory() as staging:
        step = loaded.step_fixed_batch.get_concrete_function()
        tf.saved_model.save(loaded, staging, signatures={"step": step})
        converter = tf.lite.TFLiteConverter.from_saved_model(staging, signature_keys=["step"])
        model = converter.convert()
    path = os.path.join(output, "model.tflite")
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(model)
    return path
