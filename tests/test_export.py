"""Streaming export: the SavedModel steps like the pipeline, in a process without sideways_tf."""

import json
import os
import shutil
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from sideways_tf import cli, config_files, export, modes, rules, train
from sideways_tf.data import moving_shapes
from sideways_tf.topology import parse_topology

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_gin_config")]

BATCH = 2
# Skip connections with a delay, so the exported state holds delay lines too.
PARAMS = ["train.mode='skip_sideways'", "tiny_conv_pipeline.topology='skip(2, 1)'"]

# Runs in a fresh interpreter that imports TensorFlow only (no sideways_tf).
TF_ONLY = """
import json, sys
import numpy as np
import tensorflow as tf

export_dir, clip_path, out_path = sys.argv[1:]
model = tf.saved_model.load(export_dir)
meta = json.loads(model.signatures["metadata"]()["json"].numpy())
state = model.signatures["init_state"]()
step = model.signatures["step"]
outputs = []
for x_t in np.load(clip_path).transpose(1, 0, 2, 3, 4):  # [B, K, ...] -> K x [B, ...]
    result = step(frame=tf.constant(x_t), **state)
    outputs.append(result.pop("outputs").numpy())
    state = result
assert sorted(state) == sorted(meta["state_names"]), (sorted(state), meta["state_names"])
assert "sideways_tf" not in sys.modules, "the exported model needed sideways_tf"
np.savez(out_path, outputs=np.stack(outputs), t=state["t"].numpy())
"""


# Feeds `step` `frames` frames a step from a state of the export `state_dir` (default: its
# own), in a fresh TensorFlow-only process; prints the error or the state's shapes after.
TF_ONLY_WRONG_INPUT = """
import json, sys
import tensorflow as tf

export_dir, frames, state_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = tf.saved_model.load(export_dir)
state = tf.saved_model.load(state_dir).signatures["init_state"]()
frame_shape = json.loads(model.signatures["metadata"]()["json"].numpy())["frame_shape"]
try:
    for _ in range(3):  # on a chain, a wrong batch reaches every unit's buffer by step 3
        state = model.signatures["step"](frame=tf.zeros([frames, *frame_shape]), **state)
        state.pop("outputs")
except tf.errors.InvalidArgumentError as e:
    print("refused:", e.message)
else:
    print("accepted:", json.dumps({k: v.shape.as_list() for k, v in state.items()}))
assert "sideways_tf" not in sys.modules
"""


def run_tensorflow_only(script: str, *args, cwd) -> str:
    """Runs `script` with args in a fresh interpreter without sideways_tf; its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    gin.clear_config()
    gin.parse_config_files_and_bindings([config_files.resolve("tiny")], PARAMS)
    train.train(str(path))
    gin.clear_config()
    return path


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory):
    output = tmp_path_factory.mktemp("export") / "model"
    cli.export_main(
        ["--workdir", str(workdir), "--output", str(output), "--batch_size", str(BATCH), "--tflite"]
    )
    gin.clear_config()
    return output


@pytest.fixture(scope="module")
def chain_exported(tmp_path_factory):
    """A chain (no delay lines) exported for BATCH: a wrong batch there gave no error."""
    path = tmp_path_factory.mktemp("chain")
    gin.clear_config()
    gin.parse_config_files_and_bindings([config_files.resolve("tiny")], [])
    train.train(str(path))
    gin.clear_config()
    cli.export_main(
        ["--workdir", str(path), "--output", str(path / "export"), f"--batch_size={BATCH}"]
    )
    gin.clear_config()
    return path / "export"


def clip(num_frames=8):
    """A [B, K, 16, 16, 3] moving_shapes clip, as tiny.gin's eval data draws them."""
    ds = moving_shapes.moving_shapes_dataset(
        split="test",
        num_examples=BATCH,
        num_frames=num_frames,
        frame_size=16,
        shape_size=5,
        distractor_size=3,
    )
    return next(iter(ds.batch(BATCH)))["frames"].numpy()


def test_exported_step_reproduces_forward_step_in_a_tensorflow_only_process(
    workdir, exported, tmp_path
):
    frames = clip()
    pipeline, _ = export.load_pipeline(str(workdir), BATCH)
    # The rebuilt pipeline holds the trained parameters (not a fresh initialisation).
    ckpt = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    kernel = tf.train.load_variable(
        ckpt, "pipeline/conv_pipeline.Sunit1.Sblock1.Sconv.Skernel/.ATTRIBUTES/VARIABLE_VALUE"
    )
    np.testing.assert_array_equal(pipeline.units[0].module.layers[0].kernel.numpy(), kernel)
    expected = np.swapaxes(pipeline(frames, training=False).numpy(), 0, 1)  # [K, B, C]

    np.save(tmp_path / "clip.npy", frames)
    out = tmp_path / "out.npz"
    run_tensorflow_only(TF_ONLY, exported, tmp_path / "clip.npy", out, cwd=tmp_path)
    got = np.load(out)
    assert int(got["t"]) == frames.shape[1]
    assert got["outputs"].shape == expected.shape == (8, BATCH, 12)
    np.testing.assert_allclose(got["outputs"], expected, rtol=1e-5, atol=1e-6)
    # The outputs depend on the frames (a constant or stale output would pass no test).
    assert np.abs(np.diff(expected, axis=0)).max() > 1e-3


def test_metadata_names_frames_classes_fill_and_lag(workdir, exported):
    meta = json.loads((exported / export.METADATA_FILE).read_text())
    assert meta["frame_shape"] == [16, 16, 3] and meta["batch_size"] == BATCH
    assert meta["class_names"] == moving_shapes.class_names(3, 4)
    assert meta["num_classes"] == 12 and meta["mode"] == "skip_sideways"
    topology = parse_topology("skip(2, 1)", 3)
    assert meta["fill_steps"] == topology.fill_steps
    assert (meta["newest_lag"], meta["oldest_lag"]) == (topology.newest_lag(3), 2)
    assert meta["checkpoint_step"] == 6
    assert any(n.startswith("delay_") for n in meta["state_names"])
    # skip(2, 1): unit 3 reads a_2[t-1] and a_1[t-2], both built from x[t-2].
    assert (meta["network"], meta["reads"]) == ("pipelined", "x[t-2]")
    assert meta["network_from"] == "the run's train.mode"


def test_tflite_step_matches_the_saved_model(exported):
    model = tf.saved_model.load(str(exported))
    state = model.signatures["init_state"]()
    runner = tf.lite.Interpreter(str(exported / "model.tflite")).get_signature_runner("step")
    # Every shape fixed (converted from step_fixed_batch): TFLite itself holds B.
    frame = runner.get_input_details()["frame"]
    assert frame["shape_signature"].tolist() == [BATCH, 16, 16, 3]
    interpreter = tf.lite.Interpreter(str(exported / "model.tflite"))
    interpreter.allocate_tensors()
    with pytest.raises(ValueError, match="Dimension mismatch"):
        interpreter.set_tensor(frame["index"], np.zeros([1, 16, 16, 3], np.float32))
    lite_state = {k: v.numpy() for k, v in state.items()}
    for x_t in clip().transpose(1, 0, 2, 3, 4):
        want = model.signatures["step"](frame=tf.constant(x_t), **state)
        got = runner(frame=x_t, **lite_state)
        np.testing.assert_allclose(got["outputs"], want["outputs"].numpy(), rtol=1e-4, atol=1e-5)
        state = {k: v for k, v in want.items() if k != "outputs"}
        lite_state = {k: v for k, v in got.items() if k != "outputs"}


def test_step_leaves_only_the_batch_open_and_step_fixed_batch_fixes_it(exported):
    model = tf.saved_model.load(str(exported))
    _, inputs = model.signatures["step"].structured_input_signature
    assert inputs["frame"].shape.as_list() == [None, 16, 16, 3]
    state = model.signatures["init_state"]()
    fixed = model.step_fixed_batch.get_concrete_function().structured_input_signature[0]
    assert fixed[0].shape.as_list() == [BATCH, 16, 16, 3]
    for name, value in state.items():  # output_i [B, ...], delay_k [d, B, ...]
        assert fixed[1][name].shape == value.shape, name
        if name != "t":
            axis = 1 if name.startswith("delay_") else 0
            assert value.shape[axis] == BATCH, name
            want = value.shape.as_list()
            want[axis] = None
            assert inputs[name].shape.as_list() == want, name


@pytest.mark.parametrize("frames", [1, BATCH + 1])
@pytest.mark.parametrize("pipeline", ["chain", "skip_with_delay_lines"])
def test_a_frame_batch_other_than_the_exported_is_refused_naming_the_fix(
    exported, chain_exported, tmp_path, pipeline, frames
):
    # Before the check: the chain took it silently (its buffers changed batch, step by
    # step), the delay lines failed on a concat that named neither batch.
    model = chain_exported if pipeline == "chain" else exported
    out = run_tensorflow_only(TF_ONLY_WRONG_INPUT, model, frames, model, cwd=tmp_path)
    assert out.startswith("refused:"), out
    assert f"step got a frame batch of shape [{frames}, 16, 16, 3]" in out
    assert f"exported for batch_size={BATCH}, frames [{BATCH}, 16, 16, 3]" in out
    assert f"Feed exactly {BATCH} frames per step" in out
    assert "sideways-export --workdir=W --output=DIR --batch_size=N" in out
    assert "sideways_tf.export.export(W or your pipeline, DIR, batch_size=N)" in out
    assert "State tensors" not in out  # the state was this model's own
    # Exactly BATCH frames are accepted: the check does not refuse everything.
    ok = run_tensorflow_only(TF_ONLY_WRONG_INPUT, model, BATCH, model, cwd=tmp_path)
    shapes = json.loads(ok.removeprefix("accepted:"))
    assert shapes["output_1"] == [BATCH, 16, 16, 4], ok


def test_a_state_of_another_export_is_refused_naming_each_tensor(workdir, exported, tmp_path):
    other = tmp_path / "batch1"
    cli.export_main(["--workdir", str(workdir), "--output", str(other), "--batch_size=1"])
    out = run_tensorflow_only(TF_ONLY_WRONG_INPUT, exported, BATCH, other, cwd=tmp_path)
    assert out.startswith("refused:"), out
    assert "step got a frame batch" not in out  # the frames were right
    assert f"output_1 [1, 16, 16, 4] (not [{BATCH}, 16, 16, 4])" in out
    assert f"delay_1 [1, 1, 16, 16, 3] (not [1, {BATCH}, 16, 16, 3])" in out
    assert "Feed back the state that init_state() or step() of this model returned" in out


def test_workdir_without_a_checkpoint_names_sideways_train(workdir, tmp_path):
    shutil.copy(workdir / "config.gin", tmp_path / "config.gin")
    with pytest.raises(SystemExit, match=f"sideways-train --workdir={tmp_path}"):
        cli.export_main(["--workdir", str(tmp_path), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_workdir_that_is_not_a_run_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.gin not found"):
        export.export(str(tmp_path), str(tmp_path / "out"))


@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_size_below_one_is_refused(workdir, tmp_path, capsys, batch_size):
    with pytest.raises(SystemExit):
        cli.export_main(
            ["--workdir", str(workdir), "--output", str(tmp_path), f"--batch_size={batch_size}"]
        )
    assert "--batch_size must be at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="positive integer"):
        export.load_pipeline(str(workdir), batch_size)


# -- Export from Python: a pipeline in memory -----------------------------------------------


def own_pipeline(batch, topology="skip(2, 1)", head=None):
    """A pipeline cut from a functional Keras model, with skips and a delay line."""
    import keras

    import sideways_tf as sw

    keras.utils.set_random_seed(0)
    frames = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(frames)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    units = sw.units_from_model(keras.Model(frames, x), cut_after=["c1", "c2"])
    head = head or keras.layers.Dense(12, name="head")
    return sw.Pipeline(
        units, topology=topology, head=head, batch_size=batch, frame_shape=(16, 16, 3)
    )


@pytest.fixture(scope="module")
def trained_in_memory():
    """An own pipeline trained a few clips in memory (not from a workdir), B = 4.

    (An odd B crashes skip_sideways training in TF's oneDNN kernels on this CPU: heap
    corruption, the process aborts; TF_ENABLE_ONEDNN_OPTS=0 avoids it.)
    """
    import keras

    import sideways_tf as sw

    pipeline = own_pipeline(batch=4)
    engine = sw.Engine(pipeline, "skip_sideways", keras.optimizers.Adam(1e-2))
    frames = np.concatenate([clip(), clip()[::-1]])  # [4, 8, 16, 16, 3]
    for _ in range(3):
        engine.train_clip(frames, np.array([0, 5, 11, 2], np.int32))
    return pipeline, engine


def test_a_pipeline_in_memory_exports_and_steps_like_predict_steps_without_sideways_tf(
    trained_in_memory, tmp_path
):
    pipeline, engine = trained_in_memory
    frames = np.concatenate([clip(), clip()[::-1]])
    expected = np.swapaxes(engine.predict_steps(frames)["outputs"].numpy(), 0, 1)  # [K, 4, 12]
    buffers = [np.array(b) for b in pipeline.state_variables()]
    units = [(u.device, u.output_buffer.shape) for u in pipeline.units]

    # Exported for B=2 streams, not the pipeline's 4: a copy with the trained parameters.
    meta = export.export(pipeline, str(tmp_path / "model"), batch_size=BATCH)
    assert meta["batch_size"] == BATCH and meta["checkpoint_step"] is None
    assert meta["fill_steps"] == parse_topology("skip(2, 1)", 3).fill_steps
    assert any(n.startswith("delay_") for n in meta["state_names"])
    written = json.loads((tmp_path / "model" / export.METADATA_FILE).read_text())
    assert written["state_names"] == meta["state_names"] and written["num_classes"] == 12
    np.save(tmp_path / "clip.npy", frames[:BATCH])
    out = tmp_path / "out.npz"
    run_tensorflow_only(TF_ONLY, tmp_path / "model", tmp_path / "clip.npy", out, cwd=tmp_path)
    got = np.load(out)
    assert got["outputs"].shape == (8, BATCH, 12)
    np.testing.assert_allclose(got["outputs"], expected[:, :BATCH], rtol=1e-5, atol=1e-5)
    assert np.abs(np.diff(expected, axis=0)).max() > 1e-3  # the outputs follow the frames
    # The pipeline given is left as it was: its buffers, batch and devices.
    for before, b in zip(buffers, pipeline.state_variables()):
        np.testing.assert_array_equal(np.array(b), before)
    assert [(u.device, u.output_buffer.shape) for u in pipeline.units] == units


def test_a_sideways_model_exports_its_mode_and_the_same_step(trained_in_memory, tmp_path):
    import sideways_tf as sw

    pipeline, engine = trained_in_memory
    model = sw.SidewaysModel(pipeline=pipeline)
    model.compile(optimizer="sgd", mode="skip_sideways")
    meta = export.export(model, str(tmp_path / "model"), batch_size=1)
    assert meta["mode"] == "skip_sideways" and meta["batch_size"] == 1
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    state = loaded.signatures["init_state"]()
    frames = clip()
    expected = engine.predict_steps(np.concatenate([frames, frames]))["outputs"].numpy()
    for k in range(frames.shape[1]):
        state = loaded.signatures["step"](frame=tf.constant(frames[:1, k]), **state)
        np.testing.assert_allclose(
            state.pop("outputs").numpy(), expected[:1, k], rtol=1e-5, atol=1e-5
        )


def test_keras_export_writes_ours_with_its_tflite_step_and_sw_export_is_the_module(
    trained_in_memory, tmp_path
):
    import sideways_tf as sw

    vars(sw).pop("export", None)  # as in a fresh process, where only the lazy name gives it
    assert sw.export is export
    pipeline, engine = trained_in_memory
    model = sw.SidewaysModel(pipeline=pipeline)
    model.compile(optimizer="sgd", mode="skip_sideways")
    with pytest.raises(ValueError, match=r"or sw\.export\.export\(model, dir, batch_size=1\)"):
        model.export(str(tmp_path / "keras"), format="tflite")  # Keras' own formats
    meta = model.export(str(tmp_path / "model"), batch_size=1, tflite=True, verbose=False)
    assert meta["tflite"] == str(tmp_path / "model" / "model.tflite")
    assert (meta["mode"], meta["batch_size"]) == ("skip_sideways", 1)
    # TFLite steps one stream as predict_steps does at the model's B = 4.
    runner = tf.lite.Interpreter(meta["tflite"]).get_signature_runner("step")
    state = tf.saved_model.load(str(tmp_path / "model")).signatures["init_state"]()
    state = {k: v.numpy() for k, v in state.items()}
    frames = clip()
    expected = engine.predict_steps(np.concatenate([frames, frames]))["outputs"].numpy()
    for k in range(frames.shape[1]):
        state = runner(frame=frames[:1, k], **state)
        np.testing.assert_allclose(state.pop("outputs"), expected[:1, k], rtol=1e-4, atol=1e-5)


def test_a_wrong_batch_names_the_python_and_the_command_line_fix(trained_in_memory, tmp_path):
    pipeline, _ = trained_in_memory
    export.export(pipeline, str(tmp_path / "model"), batch_size=BATCH)
    out = run_tensorflow_only(
        TF_ONLY_WRONG_INPUT, tmp_path / "model", 1, tmp_path / "model", cwd=tmp_path
    )
    assert out.startswith("refused:"), out
    assert "sideways-export --workdir=W --output=DIR --batch_size=N" in out
    assert "sideways_tf.export.export(W or your pipeline, DIR, batch_size=N)" in out
    with pytest.raises(ValueError, match=r"--batch_size=1 \(Python: export\(\.\.\., batch_size=1"):
        export.export(pipeline, str(tmp_path / "other"), batch_size=0)
    with pytest.raises(TypeError, match="a built sideways_tf.Pipeline or a SidewaysModel"):
        export.export(pipeline.units[0], str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()


# -- The export is the network the run trained: frame_bp's is the per-frame network -------

FRAME_BP = ["train.mode='frame_bp'", "tiny_conv_pipeline.topology='skip(2)'"]


@pytest.fixture(scope="module")
def frame_bp_exported(tmp_path_factory):
    """A frame_bp run on skip(2) (trains the per-frame network), exported for BATCH."""
    path = tmp_path_factory.mktemp("frame_bp")
    gin.clear_config()
    gin.parse_config_files_and_bindings([config_files.resolve("tiny")], FRAME_BP)
    train.train(str(path))
    gin.clear_config()
    cli.export_main(
        ["--workdir", str(path), "--output", str(path / "export"), f"--batch_size={BATCH}"]
        + ["--tflite"]
    )
    gin.clear_config()
    return path, path / "export"


def stream(export_dir, frames):
    """Feeds an export's `step` the clip [B, K, ...] frame by frame: outputs [B, K, ...]."""
    model = tf.saved_model.load(str(export_dir))
    state = model.signatures["init_state"]()
    outputs = []
    for k in range(frames.shape[1]):
        state = model.signatures["step"](frame=tf.constant(frames[:, k]), **state)
        outputs.append(state.pop("outputs").numpy())
    return np.stack(outputs, axis=1), state


def test_a_frame_bp_run_exports_the_per_frame_network_it_trained(frame_bp_exported):
    workdir, exported = frame_bp_exported
    frames = clip()
    pipeline, _ = export.load_pipeline(str(workdir), BATCH)
    want, _ = rules.frame_outputs(pipeline, frames, training=False)  # [B, K, 12]
    predicted, _ = modes.get("frame_bp").predict(pipeline, frames)
    np.testing.assert_allclose(predicted, want, rtol=1e-6, atol=1e-6)
    got, state = stream(exported, frames)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert sorted(state) == ["t"] and int(state["t"]) == frames.shape[1]
    # The pipelined network (what the export stepped before) gives other outputs: on
    # skip(2) it reads x[t-2] .. x[t-1], and from the zero state until T_fill = 3.
    pipelined = pipeline(frames, training=False).numpy()
    assert np.abs(pipelined - got)[:, 3:].max() > 1e-3
    assert np.abs(np.diff(got, axis=1)).max() > 1e-3  # the outputs follow the frames
    # The TFLite step (step_fixed_batch) is the per-frame network too.
    runner = tf.lite.Interpreter(str(exported / "model.tflite")).get_signature_runner("step")
    lite_state = {"t": np.array(0, np.int32)}
    for k in range(3):
        lite = runner(frame=frames[:, k], **lite_state)
        np.testing.assert_allclose(lite.pop("outputs"), want[:, k], rtol=1e-4, atol=1e-5)
        lite_state = lite
    # No buffer holds B in the per-frame network: the step's check still does.
    loaded = tf.saved_model.load(str(exported))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"frame batch of shape \[1, 16"):
        loaded.signatures["step"](frame=tf.zeros([1, 16, 16, 3]), t=tf.constant(0))


def test_a_frame_bp_export_names_its_mode_network_and_frames(frame_bp_exported):
    _, exported = frame_bp_exported
    meta = json.loads((exported / export.METADATA_FILE).read_text())
    loaded = tf.saved_model.load(str(exported))
    assert json.loads(loaded.signatures["metadata"]()["json"].numpy()) == meta
    assert (meta["mode"], meta["network"], meta["reads"]) == ("frame_bp", "per_frame", "x[t]")
    assert (meta["fill_steps"], meta["newest_lag"], meta["oldest_lag"]) == (1, 0, 0)
    assert meta["state_names"] == ["t"] and meta["network_from"] == "the run's train.mode"
    assert meta["topology"] == parse_topology("skip(2)", 3).describe()


def test_a_sideways_model_compiled_for_frame_bp_exports_the_per_frame_network(tmp_path):
    import sideways_tf as sw

    pipeline = own_pipeline(BATCH, topology="skip(2)")
    model = sw.SidewaysModel(pipeline=pipeline)
    model.compile(optimizer="sgd", mode="frame_bp")
    meta = export.export(model, str(tmp_path / "model"), batch_size=BATCH)
    assert (meta["mode"], meta["network"], meta["reads"]) == ("frame_bp", "per_frame", "x[t]")
    assert meta["network_from"] == "the model's compiled mode"
    frames = clip()
    got, _ = stream(tmp_path / "model", frames)
    want, _ = rules.frame_outputs(pipeline, frames, training=False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(pipeline(frames, training=False).numpy() - got)[:, 3:].max() > 1e-3
    # The compiled mode decides: another mode= would export a network it did not train.
    with pytest.raises(ValueError, match="compiled with mode='frame_bp'.*Leave mode= out"):
        export.export(model, str(tmp_path / "other"), mode="skip_sideways")
    assert not (tmp_path / "other").exists()


@keras.saving.register_keras_serializable(package="test_export")
class ChangeHead(keras.layers.Layer):
    """Logits from a_L[t] and the last change seen: Dense([a_L, mean(x[t-lag] - x[t-lag-1])])."""

    reads_last_frame = True
    reads_previous_frame = True

    def __init__(self, classes=12, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.dense = keras.layers.Dense(classes, name="dense")

    def build(self, input_shape):  # a_L[t]: [B, 8]; the frames' 3 channels join it
        self.dense.build((input_shape[0], input_shape[-1] + 3))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.classes)

    def call(self, a, last_frame=None, previous_frame=None, training=None):
        change = keras.ops.mean(last_frame - previous_frame, axis=(1, 2))  # [B, 3]
        return self.dense(keras.ops.concatenate([a, 10.0 * change], axis=-1))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


def test_a_mode_of_ones_own_streams_its_network_and_a_head_reads_the_previous_frame(tmp_path):
    # An unregistered per-frame mode: the export asks the Mode, it compares no names.
    toy = modes.Mode("toy_per_frame", rules.frame_gradients, pipelined=False, fills_before_loss=0)
    pipeline = own_pipeline(BATCH, topology="skip(2)", head=ChangeHead(name="head"))
    assert pipeline.head_reads_previous_frame
    meta = export.export(pipeline, str(tmp_path / "toy"), batch_size=BATCH, mode=toy)
    assert (meta["mode"], meta["network"]) == ("toy_per_frame", "per_frame")
    assert meta["reads"] == "x[t]; the head also reads x[t-1] (the first frame, x[1], for t <= 1)"
    assert (meta["fill_steps"], meta["newest_lag"], meta["oldest_lag"]) == (1, 0, 1)
    assert meta["state_names"] == ["t", "previous_frame"]
    frames = clip()
    got, state = stream(tmp_path / "toy", frames)
    want, _ = rules.frame_outputs(pipeline, frames, training=False)  # x[t-1]; x[1] at t = 1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(state["previous_frame"], frames[:, -1])
    # The previous frame matters: the head given x[t] for it (no change) differs.
    flat = frames.reshape(-1, 16, 16, 3)
    still = pipeline.frame_forward(flat, training=False).numpy().reshape(got.shape)
    assert np.abs(still - got)[:, 1:].max() > 1e-3

    # No mode: the pipelined network, and the metadata says it was the default.
    meta = export.export(pipeline, str(tmp_path / "default"), batch_size=BATCH)
    assert (meta["mode"], meta["network"]) == (None, "pipelined")
    assert meta["network_from"].startswith("default: no mode given")
    assert meta["reads"].startswith("x[t-2] .. x[t-1]; the head also reads x[t-2]")
    assert (meta["newest_lag"], meta["oldest_lag"]) == (1, 2)
    got, _ = stream(tmp_path / "default", frames)
    np.testing.assert_allclose(got, pipeline(frames, training=False), rtol=1e-5, atol=1e-5)
