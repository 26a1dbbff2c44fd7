"""Streaming export: a trained run as a SavedModel that steps one frame at a time.

    sideways-export --workdir=/tmp/run --output=/tmp/run/export [--batch_size=1]
    sideways_tf.export.export(workdir_or_pipeline, "/tmp/export", batch_size=1)   # Python
    sw.export.export(model, "/tmp/export", batch_size=1, tflite=True)  # + model.tflite
    model.export("/tmp/export", batch_size=1)        # a SidewaysModel: the same, Keras' name

From Python, `export` takes a workdir or a Pipeline / SidewaysModel in memory (one
you built and trained yourself, e.g. from units_from_model); both write the same
SavedModel and metadata.

The export is the network the run trained, as its Mode steps it (Mode.stream_step):
the pipelined network for frame-pipelined modes (bptt, sideways, skip_sideways), the
per-frame network for frame_bp (Mode.pipelined False). The SavedModel has two
signatures (MoViNet's streaming pattern, under Keras 3 via tf.saved_model.save on a
tf.Module):

    init_state()            -> {t, ...}, all zeros
    step(frame, **state)    -> {outputs, **new_state}

where `frame` is x[t], float32 [B, H, W, C], and `outputs` is y[t], the head on the top
unit's fresh output, [B, num_classes] (a frame for future frames). The state is what
the network carries between steps at inference (Mode.stream_state):
    t               [] int32, frames fed since init_state
  the pipelined network (PipelineState without the gradient messages):
    output_i        a_i[t-1], the output buffer of unit i      [B, *out_i]
    delay_k         the k-th delay line of the topology        [d, B, *in]
  the per-frame network (every unit on x[t], no delays):
    previous_frame  x[t-1], only for a head that reads the previous frame  [B, *frame]
A client feeds every returned state tensor back into the next step. The signature
leaves the batch axes open so that `step` can check them at run time: a frame batch
other than B, or a state tensor of another shape (e.g. another export's), is refused
with an error naming the shapes and the fix. `step_fixed_batch` (a function of the
SavedModel, not a signature) is the same step with every shape fixed and no check;
it is what `convert_tflite` converts.

What a deployer needs is in `sideways_export.json` next to the SavedModel, and in
the SavedModel itself as the signature `metadata() -> {"json"}`:
    frame_shape, batch_size, num_classes, class_names (moving_shapes; else null),
    mode        the run's mode (null: a bare Pipeline exported with no mode=);
    network     "pipelined" or "per_frame": the network `step` runs; network_from says
                what chose it (the run's train.mode, the compiled mode, mode=, or the
                default, the pipelined network);
    reads       the frames y[t] reads, in words: "x[t]" (per-frame), "x[t-2] .. x[t-1]"
                (pipelined), and those the head reads besides;
    fill_steps  T_fill: the output of step t (1-based) is built from real frames only
                for t >= T_fill; earlier outputs mix in the zero state (per-frame: 1);
    newest_lag, oldest_lag: the output of step t reads frames x[t - oldest_lag] ..
                x[t - newest_lag] (chain of L units: L-1 .. L-1, one frame; per-frame:
                0 .. 0; a head that reads the previous frame: one older than newest);
    topology, checkpoint, checkpoint_step, state_names.

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

from sideways_tf import checkpointing, distribute, modes, placement
from sideways_tf.pipeline import Pipeline, PipelineState
from sideways_tf.rebuild import parameters, rebuild_pipeline  # noqa: F401 (export.parameters)
from sideways_tf.rebuild import unpin as _unpin
from sideways_tf.runs import load_run

METADATA_FILE = "sideways_export.json"

# What a bare Pipeline exported with no mode= streams: the pipelined network. Never
# registered and never trained (no rule); metadata "mode" is null for it.
PIPELINED_NETWORK = modes.Mode(
    "(no mode: the pipelined network)", rule=None, description="export's default network"
)


def state_names(pipeline: Pipeline, mode: modes.Mode | str | None = None) -> list[str]:
    """Names of the exported state tensors (Mode.stream_state; None: the pipelined
    network's, in PipelineState order, messages left out)."""
    return list(_stream_mode(mode).stream_state(pipeline))


def state_to_dict(state: PipelineState) -> dict:
    """PipelineState -> {t, output_i, delay_k} (messages are not needed at inference)."""
    return modes.Mode.named_state(state)


def dict_to_state(pipeline: Pipeline, named: dict) -> PipelineState:
    """{t, output_i, delay_k} -> PipelineState, with no messages."""
    return modes.Mode.unnamed_state(pipeline, named)


def _stream_mode(mode: modes.Mode | str | None) -> modes.Mode:
    """The Mode whose network is streamed: `mode`, or PIPELINED_NETWORK for None."""
    return PIPELINED_NETWORK if mode is None else modes.get(mode, "export(mode=...)")


class StreamingModule(tf.Module):
    """init_state() and step(frame, **state) of a built pipeline, as tf.functions.

    mode: the Mode the pipeline trained in; the step is its network's
    (Mode.stream_state, Mode.stream_step). None: the pipelined network.
    """

    def __init__(self, pipeline: Pipeline, metadata: dict, mode: modes.Mode | str | None = None):
        super().__init__(name="sideways_streaming")
        # The pipeline and the mode are held outside TF's object tracking (their Python
        # bookkeeping does not save); the parameters are tracked as plain variables.
        self._holder = _Untracked(pipeline)
        self._mode = _Untracked(_stream_mode(mode))
        self.parameters = [
            v.value for v in checkpointing.variables_by_path(pipeline, buffers=False).values()
        ]
        zero = self._mode.value.stream_state(pipeline)
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
        return self._mode.value.stream_state(self.pipeline)

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
        new_state, outputs = self._mode.value.stream_step(
            self.pipeline, state, frame, training=False
        )
        return {"outputs": outputs, **new_state}

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
        names = [k for k in got if k != "frame"]  # none where the state is t alone (per-frame)
        state = tf.constant("")
        if names:
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
            state = tf.where(tf.reduce_any(wrong), state, "")
        message = tf.strings.strip(tf.where(ok["frame"], "", frame) + state)
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

    No runtime and no device pins: every unit runs on the default device. The metadata
    names the run's mode (train.mode) and the network it trained, which export steps.
    Returns (pipeline, metadata).
    """
    pipeline, metadata, _ = _from_workdir(workdir, batch_size)
    return pipeline, metadata


def _from_workdir(workdir: str, batch_size: int, mode=None) -> tuple[Pipeline, dict, modes.Mode]:
    """load_pipeline, and the run's Mode. mode: None, or the run's own (else refused)."""
    _check_batch_size(batch_size)
    single = distribute.Runtime(None, placement.DevicePlan.single([None]))
    # Built in float32 whatever the run's precision (its parameters are float32 anyway).
    run = load_run(workdir, batch_size=batch_size, runtime=single, precision="float32", place=False)
    pipeline = run.pipeline
    _unpin(pipeline)
    trained = modes.get(run.settings.mode, "train.mode")
    _check_mode_agrees(trained, mode, f"the run in {workdir} trained in mode={trained.name!r}")
    metadata = _metadata(
        pipeline,
        run.frame_shape,
        batch_size,
        run.class_names,
        mode=trained,
        network_from="the run's train.mode",
        trained_precision=run.settings.precision,
        checkpoint=os.path.basename(run.checkpoint),
        checkpoint_step=run.step,
    )
    return pipeline, metadata, trained


def _check_mode_agrees(trained: modes.Mode, mode, what: str):
    """Refuses export(..., mode=M) where the source knows another mode it trained in."""
    if mode is not None and _stream_mode(mode) != trained:
        raise ValueError(
            f"export(..., mode={str(mode)!r}), but {what}: the export is the network the "
            f"run trained. Leave mode= out (mode={trained.name!r} is exported)."
        )


def _metadata(
    pipeline: Pipeline, frame_shape, batch_size: int, class_names, mode, network_from, **run
) -> dict:
    """sideways_export.json: what a server needs to feed and read the exported step.

    mode: the Mode trained (its network is exported), or None (the pipelined network);
    network_from: what chose the network, in words.
    run: trained_precision, checkpoint, checkpoint_step (where it came from).
    """
    topology = pipeline.topology
    stream = _stream_mode(mode)
    newest, oldest = stream.stream_lags(pipeline)
    return dict(
        format="sideways_tf streaming export 1",
        frame_shape=list(frame_shape),
        frame_dtype="float32",
        batch_size=batch_size,
        **pipeline.task.export_metadata(pipeline, class_names),
        fill_steps=stream.first_step(pipeline),
        newest_lag=newest,
        oldest_lag=oldest,
        reads=_reads(pipeline, stream),
        num_units=topology.num_units,
        mode=None if mode is None else stream.name,
        network="pipelined" if stream.pipelined else "per_frame",
        network_from=network_from,
        trained_precision=run["trained_precision"],
        topology=topology.describe(),
        checkpoint=run["checkpoint"],
        checkpoint_step=run["checkpoint_step"],
        state_names=state_names(pipeline, stream),
    )


def _reads(pipeline: Pipeline, mode: modes.Mode) -> str:
    """The frames y[t] of the exported step reads, in words (metadata "reads").

    "x[t]" (per-frame), "x[t-2]" (chain of 3), "x[t-3] .. x[t-1]" (oldest .. newest over
    the units' paths); a head that reads the previous frame adds it.
    """

    def frame(lag):
        return f"x[t-{lag}]" if lag else "x[t]"

    newest, _ = mode.stream_lags(pipeline)
    oldest = max(mode.first_step(pipeline) - 1, newest)  # the units' paths only
    words = frame(newest) if oldest == newest else f"{frame(oldest)} .. {frame(newest)}"
    if pipeline.head_reads_previous_frame:
        words += (
            f"; the head also reads {frame(newest + 1)} (the first frame, x[1], for "
            f"t <= {newest + 1})"
        )
    return words


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer (the streams served at once), got "
            f"{batch_size!r}; e.g. --batch_size=1 (Python: export(..., batch_size=1))."
        )


def pipeline_from_memory(
    model, batch_size: int = 1, mode: modes.Mode | str | None = None
) -> tuple[Pipeline, dict]:
    """A copy of a Pipeline (or a SidewaysModel's) with `batch_size` streams, and the metadata.

    The copy is rebuilt from the pipeline's Keras config (unbuilt units, no device pins,
    the default device) and given the pipeline's parameters (never its buffers), so the
    pipeline you pass is left as it was. Returns (pipeline, metadata); the metadata's
    mode is the SidewaysModel's compiled mode, else `mode` (the mode a bare Pipeline
    trained in: its network is exported; None: the pipelined network, metadata mode
    null), its checkpoint and checkpoint_step None.
    """
    copy, metadata, _ = _from_memory(model, batch_size, mode)
    return copy, metadata


def _from_memory(model, batch_size: int, mode=None) -> tuple[Pipeline, dict, modes.Mode | None]:
    """pipeline_from_memory, and the Mode streamed (None: the pipelined network)."""
    from sideways_tf.keras_model import SidewaysModel  # (keras_model imports the engine)

    _check_batch_size(batch_size)
    mode = None if mode is None else _stream_mode(mode)
    network_from = "default: no mode given (export(..., mode=M) names it)"
    if mode is not None:
        network_from = "export(..., mode=...)"
    if isinstance(model, SidewaysModel):
        if model.engine is not None:
            compiled = model.engine.mode
            _check_mode_agrees(compiled, mode, f"the model is compiled with mode={compiled.name!r}")
            mode, network_from = compiled, "the model's compiled mode"
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
    copy = rebuild_pipeline(
        model,
        batch_size,
        pinned=False,
        what="export",
        otherwise="train with sideways-train and export its workdir (sideways-export --workdir=W)",
    )
    metadata = _metadata(
        copy,
        copy.frame_shape,
        batch_size,
        None,
        mode=mode,
        network_from=network_from,
        trained_precision="float32",
        checkpoint=None,
        checkpoint_step=None,
    )
    return copy, metadata, mode


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


def export(
    source,
    output: str,
    batch_size: int = 1,
    mode: modes.Mode | str | None = None,
    tflite: bool = False,
) -> dict:
    """Writes the streaming SavedModel of `source` to `output`.

    source: a workdir (its newest readable checkpoint), or a built Pipeline or
    SidewaysModel in memory (its current parameters; pipeline_from_memory).
    batch_size: B, the streams the export serves at once (its state holds B).
    mode: the mode a bare Pipeline trained in (a name of MODES or a Mode): the step is
    that mode's network (frame_bp: the per-frame one). None: the pipelined network. A
    workdir or a compiled SidewaysModel knows its mode; another mode= is refused.
    Safe against a live run: load_run restores from a snapshot of the checkpoint, so
    training may rotate it away meanwhile. `output` is checked first (check_output);
    the export is written beside it and then swapped in, so a previous export there is
    replaced whole (its model.tflite too) and a failed export leaves it as it was.
    tflite: also write output/model.tflite, the step (convert_tflite; sideways-export
    --tflite).
    Returns the metadata (also written to output/sideways_export.json), with
    "replaced": the previous export's files, and "tflite": the TFLite file's path or
    None (neither in the file).
    """
    if not isinstance(tflite, bool):
        raise ValueError(f"tflite must be True or False, got {tflite!r}.")
    previous = check_output(output)
    if isinstance(source, (str, os.PathLike)):
        pipeline, metadata, mode = _from_workdir(os.fspath(source), batch_size, mode)
    else:
        pipeline, metadata, mode = _from_memory(source, batch_size, mode)
    module = StreamingModule(pipeline, metadata, mode)
    output = output.rstrip("/")
    staging = f"{output}.partial-{os.getpid()}"
    if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)
    try:
        tf.saved_model.save(module, staging, signatures=module.signatures())
        with tf.io.gfile.GFile(os.path.join(staging, METADATA_FILE), "w") as f:
            f.write(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        if tflite:
            convert_tflite(staging)
        if tf.io.gfile.exists(output):
            tf.io.gfile.rmtree(output)
        tf.io.gfile.rename(staging, output)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    written = os.path.join(output, "model.tflite") if tflite else None
    return {**metadata, "replaced": previous, "tflite": written}


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
