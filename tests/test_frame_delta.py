"""The residual future-frame heads: x^[t - lag + h] = x[t - lag] + D(a_L[t], ...).

Decoder "delta" paints the change D; "motion" mixes shifted copies of x[t - lag]
(D = sum_k w_k (S_k x - x)) with weights read off a_L[t], x[t - lag] and the last change
seen, x[t - lag] - x[t - lag - 1]. A fresh model of either is exactly the copy-the-last-
seen-frame baseline in every mode (which checks that the head's edges deliver x[t - lag]
for the mode's lag), training moves it away from there, and the streaming export carries
the head's lines.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf as sw
from sideways_tf import export
from sideways_tf.models import convnet
from sideways_tf.models.layers import FrameDecoder

MODES = [
    ("frame_bp", "chain"),
    ("bptt", "skip(2)"),
    ("sideways", "chain"),
    ("skip_sideways", "skip(2)"),
    ("skip_sideways", "skip(2, 1)"),
]


HEADS = ["delta", "motion"]  # FutureFrames.decoder: the residual heads


def residual_engine(mode, topology, frame_shape=(8, 8, 3), lr=0.1, horizon=1, head="delta"):
    keras.utils.set_random_seed(0)
    pipeline = convnet.tiny_conv_pipeline(
        batch_size=2,
        frame_shape=frame_shape,
        task=sw.tasks.FutureFrames(horizon=horizon, decoder=head),
        topology=topology,
    )
    return sw.Engine(pipeline, mode, keras.optimizers.SGD(lr))


def random_clip(num_frames=9, frame_shape=(8, 8, 3), seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (2, num_frames, *frame_shape)).astype("float32")


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("horizon", [1, 2])
@pytest.mark.parametrize("mode, topology", MODES)
def test_a_fresh_residual_model_predicts_the_last_seen_frame_exactly(mode, topology, horizon, head):
    eng = residual_engine(mode, topology, horizon=horizon, head=head)
    clip = random_clip()
    out = eng.predict_steps(clip)
    scored = out["weights"].numpy() > 0
    assert scored.sum() >= 4
    # last_seen is x[t - lag] for this mode's lag (the copy-last baseline of evaluation).
    predicted, last = out["outputs"].numpy()[:, scored], out["last_seen"].numpy()[:, scored]
    np.testing.assert_array_equal(predicted, last)
    # The training rule of the mode sees the same: its first loss is copy-last's loss.
    copy_loss = np.mean(
        (out["targets"].numpy()[:, scored] - last) ** 2, axis=(0, 2, 3, 4)
    ).mean()  # mean over pixels and clips per step, then over the scored steps
    metrics = eng.train_clip(clip)
    assert float(metrics["valid_steps"]) == scored.sum()
    np.testing.assert_allclose(float(metrics["loss"]), copy_loss, rtol=1e-5)


def head_frames(pipeline, state, x_t):
    """What the head's edges bring at step t: (x[t - lag], ...) read off the state."""
    previous = (tf.convert_to_tensor(x_t), *state.outputs)
    frames, _ = pipeline.gather(pipeline.num_units + 1, previous, state)
    return frames


def test_the_head_reads_the_last_frame_seen_through_a_delayed_edge_from_the_input():
    eng = residual_engine("sideways", "chain")  # 3 units: lag 2
    pipeline = eng.pipeline
    assert pipeline.head_lag == 2
    assert pipeline.head_edges == (sw.topology.Edge(0, 4, 2),)  # 0 -> the head, delay lag
    (line,) = pipeline.head_lines
    assert tuple(line.shape) == (2, 2, 8, 8, 3)  # x[t-2] .. x[t-1]
    assert any(b is line for b in pipeline.state_variables())  # checkpointed
    clip = random_clip(num_frames=5)
    state = pipeline.zero_state()
    for k in range(5):
        state, _ = pipeline.forward_step(state, clip[:, k])
    np.testing.assert_array_equal(state.delays[-1].numpy(), np.swapaxes(clip[:, 3:5], 0, 1))


def test_a_motion_head_reads_the_frame_before_the_last_through_a_second_edge():
    eng = residual_engine("sideways", "chain", head="motion")  # 3 units: lag 2
    pipeline = eng.pipeline
    assert pipeline.head_lag == 2 and pipeline.head_reads_previous_frame
    assert [e.delay for e in pipeline.head_edges] == [2, 3]  # x[t - lag], x[t - lag - 1]
    assert [tuple(b.shape) for b in pipeline.head_lines] == [(2, 2, 8, 8, 3), (3, 2, 8, 8, 3)]
    clip = random_clip(num_frames=6)
    state = pipeline.zero_state()
    last, previous = head_frames(pipeline, state, clip[:, 0])
    # Before the clip's first frame the lines read as that frame (as copy-last does).
    np.testing.assert_array_equal(last, clip[:, 0])
    np.testing.assert_array_equal(previous, clip[:, 0])
    for k in range(5):
        state, _ = pipeline.forward_step(state, clip[:, k])
    last, previous = head_frames(pipeline, state, clip[:, 5])
    np.testing.assert_array_equal(last.numpy(), clip[:, 3])  # x[t - lag], t = 5
    np.testing.assert_array_equal(previous.numpy(), clip[:, 2])  # x[t - lag - 1]


def test_the_motion_head_moves_the_last_frame_and_follows_the_last_change():
    decoder = FrameDecoder((8, 8, 3), width=4, residual=True, motion_radius=2, previous_frame=True)
    a = tf.random.normal((1, 2, 2, 5))
    last = tf.random.normal((1, 8, 8, 3))
    np.testing.assert_array_equal(decoder(a, last_frame=last, previous_frame=last), last)
    assert len(decoder.offsets) == 24 and decoder.reads_previous_frame
    kernel, bias = decoder.frame.get_weights()
    bias[decoder.offsets.index((0, 1))] = 40.0  # softmax: all weight on x one to the right
    bias[-1] = 20.0  # the amount, tanh(20) = 1: all the way
    decoder.frame.set_weights([kernel, bias])
    moved = decoder(a, last_frame=last, previous_frame=last).numpy()
    bias[-1] = 0.5  # halfway: a convex mix of the pixel and its neighbour
    decoder.frame.set_weights([kernel, bias])
    half = decoder(a, last_frame=last, previous_frame=last).numpy()
    s = np.tanh(0.5)
    np.testing.assert_allclose(
        half[:, :, :-1], (1 - s) * last.numpy()[:, :, :-1] + s * last.numpy()[:, :, 1:], atol=1e-5
    )
    np.testing.assert_allclose(moved[:, :, :-1], last.numpy()[:, :, 1:], atol=1e-6)
    np.testing.assert_allclose(moved[:, :, -1], last.numpy()[:, :, -1], atol=1e-6)  # edge repeats
    # The weights read the last change seen: another previous frame, another prediction.
    decoder.frame.set_weights([np.full_like(kernel, 0.1), np.linspace(-1, 1, len(bias))])
    one = decoder(a, last_frame=last, previous_frame=last).numpy()
    other = decoder(a, last_frame=last, previous_frame=last + 0.5).numpy()
    assert np.abs(one - other).max() > 1e-3
    clone = FrameDecoder.from_config(decoder.get_config())
    assert clone.motion_radius == 2 and clone.reads_previous_frame
    with pytest.raises(ValueError, match="previous_frame=x"):
        clone(a, last_frame=last)
    with pytest.raises(ValueError, match="needs residual=True"):
        FrameDecoder((8, 8, 3), motion_radius=1)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("mode, topology", MODES[:4])
def test_training_moves_every_variable_of_a_residual_model(mode, topology, head):
    eng = residual_engine(mode, topology, lr=0.1, head=head)
    before = {v.path: np.array(v) for v in eng.variables}
    clip = random_clip()
    # The zero last conv lets only itself move on the first clip; then everything does.
    eng.train_clip(clip)
    moved = {v.path for v in eng.variables if np.any(np.array(v) != before[v.path])}
    assert moved == {p for p in before if "/frame/" in p}, moved
    eng.train_clip(random_clip(seed=1))
    eng.train_clip(random_clip(seed=2))
    for v in eng.variables:
        new = np.array(v)
        assert np.all(np.isfinite(new)), v.path
        assert np.any(new != before[v.path]), f"{mode}: {v.path} did not change"
    out = eng.predict_steps(clip)
    scored = out["weights"].numpy() > 0
    assert not np.array_equal(
        out["outputs"].numpy()[:, scored], out["last_seen"].numpy()[:, scored]
    )


@pytest.mark.parametrize("head", HEADS)
def test_the_streaming_export_of_a_residual_model_reproduces_predict(tmp_path, head):
    eng = residual_engine("skip_sideways", "skip(2, 1)", lr=0.5, head=head)
    for seed in range(3):
        eng.train_clip(random_clip(seed=seed))
    pipeline = eng.pipeline
    names = export.state_names(pipeline)
    edge_lines = [b for u in pipeline.units for b in u.delay_buffers if b is not None]
    head_lines = len(pipeline.head_edges)  # (lag > 0: each edge into the head has a line)
    assert len([n for n in names if n.startswith("delay_")]) == len(edge_lines) + head_lines
    # From memory: a copy rebuilt from the Keras config (the conv units' nested layers
    # once came back with clashing variable paths); the shipped head also as TFLite.
    out = str(tmp_path / "export")
    export.export(pipeline, out, batch_size=2)
    loaded = tf.saved_model.load(out)
    lite = None
    if head == "motion":
        lite = tf.lite.Interpreter(export.convert_tflite(out)).get_signature_runner("step")
    clip = random_clip(num_frames=8, seed=7)
    want = eng.predict_steps(clip)
    assert not np.allclose(want["outputs"], want["last_seen"])  # the change is not zero
    state = loaded.signatures["init_state"]()
    lite_state = {k: v.numpy() for k, v in state.items()}
    for k in range(clip.shape[1]):
        state = loaded.signatures["step"](frame=tf.constant(clip[:, k]), **state)
        outputs = state.pop("outputs")
        np.testing.assert_allclose(
            outputs.numpy(), want["outputs"][:, k].numpy(), rtol=1e-5, atol=1e-5
        )
        if lite is not None:
            lite_state = lite(frame=clip[:, k], **lite_state)
            np.testing.assert_allclose(
                lite_state.pop("outputs"), outputs.numpy(), rtol=1e-4, atol=1e-5
            )


def test_residual_decoder_config_round_trips_and_needs_the_last_frame():
    decoder = FrameDecoder((8, 8, 3), width=4, residual=True)
    clone = FrameDecoder.from_config(decoder.get_config())
    assert clone.residual and clone.reads_last_frame
    a = tf.random.normal((1, 2, 2, 5))
    last = tf.random.normal((1, 8, 8, 3))
    np.testing.assert_array_equal(clone(a, last_frame=last).numpy(), last.numpy())
    with pytest.raises(ValueError, match="needs last_frame"):
        clone(a)
    assert not FrameDecoder((8, 8, 3)).reads_last_frame


@pytest.mark.parametrize("head", HEADS)
def test_a_fresh_residual_model_is_copy_last_exactly_in_bfloat16_too(head):
    from sideways_tf import precision

    keras.utils.set_random_seed(0)
    with precision.policy_scope("mixed_bfloat16"):
        pipeline = convnet.tiny_conv_pipeline(
            batch_size=2,
            frame_shape=(8, 8, 3),
            task=sw.tasks.FutureFrames(decoder=head),
            topology="skip(2)",
        )
    assert pipeline.units[0].output_buffer.dtype == "bfloat16"
    assert all(b.dtype == "float32" for b in pipeline.head_lines)  # frames are not rounded
    eng = sw.Engine(pipeline, "skip_sideways", keras.optimizers.SGD(0.1))
    out = eng.predict_steps(random_clip())
    scored = out["weights"].numpy() > 0
    assert out["outputs"].dtype == tf.float32
    np.testing.assert_array_equal(
        out["outputs"].numpy()[:, scored], out["last_seen"].numpy()[:, scored]
    )


@pytest.mark.parametrize("head", HEADS)
def test_a_residual_model_trains_alike_compiled_by_xla_and_not(head):
    # XLA is what a TPU runs: the head's line (and, for frame_motion, its shifted copies
    # and the previous frame) must compile to the same update.
    def trained(jit_compile):
        keras.utils.set_random_seed(0)
        pipeline = convnet.tiny_conv_pipeline(
            batch_size=2,
            frame_shape=(8, 8, 3),
            task=sw.tasks.FutureFrames(decoder=head),
            topology="skip(2)",
        )
        eng = sw.Engine(
            pipeline, "skip_sideways", keras.optimizers.SGD(0.1), jit_compile=jit_compile
        )
        for seed in range(3):
            assert bool(eng.train_clip(random_clip(seed=seed))["applied"])
        return eng

    plain, xla = trained(False), trained(True)
    for a, b in zip(plain.variables, xla.variables):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-5, err_msg=a.path)
    # The head's zero-initialised last conv trained (so the comparison covers the head).
    assert any(np.any(np.array(v) != 0) for v in plain.variables if "/frame/" in v.path)
