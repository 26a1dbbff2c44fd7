"""Future frames of footage never seen: the gated and checked motion heads, and the
synthetic camera motion the cross-video benchmark trains on.

Decoder "gated": x^ = x + g (sum_k w_k S_k x - x), x = x[t - lag], g = clip(tanh(z), 0, 1).
Decoder "checked": g times c, the check that the same motion applied to x' = x[t - lag - 1]
explains x better than no motion (c = 0: exactly copy-last). Both are copy-last when fresh.
camera_motion: a virtual camera over a photograph, deterministic per seed.
"""

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf as sw
from sideways_tf import config_files
from sideways_tf.data import camera_motion
from sideways_tf.models import convnet
from sideways_tf.tasks.frame_decoder import DECODERS, FrameDecoder, frame_decoder

GATED = ["gated", "checked"]


def tiny_engine(mode, topology, decoder, lr=0.1):
    keras.utils.set_random_seed(0)
    pipeline = convnet.tiny_conv_pipeline(
        batch_size=2,
        frame_shape=(8, 8, 3),
        task=sw.tasks.FutureFrames(decoder=decoder),
        topology=topology,
    )
    return sw.Engine(pipeline, mode, keras.optimizers.SGD(lr))


def random_clip(num_frames=9, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (2, num_frames, 8, 8, 3)).astype("float32")


def decoder_with(gate, bias_index=None, bias=40.0, amount=20.0):
    """A built motion head whose last conv ignores its input: all softmax weight on the
    offset bias_index (None: uniform) and the amount z = `amount` everywhere."""
    decoder = FrameDecoder(
        (8, 8, 3), width=4, residual=True, motion_radius=2, previous_frame=True, gate=gate
    )
    a = tf.random.normal((1, 2, 2, 5))
    x = tf.zeros((1, 8, 8, 3))
    decoder(a, last_frame=x, previous_frame=x)  # builds
    kernel, biases = decoder.frame.get_weights()
    biases[:] = 0.0
    if bias_index is not None:
        biases[bias_index] = bias
    biases[-1] = amount
    decoder.frame.set_weights([np.zeros_like(kernel), biases])
    return decoder, a


def texture(size=8, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(-1, 1, (1, size, size, 3)), tf.float32)


# ---- decoder names ----------------------------------------------------------------------


def test_every_decoder_name_selects_its_head_and_an_unknown_name_is_refused():
    heads = {name: frame_decoder(name, (8, 8, 3)) for name in DECODERS}
    assert [h.gate for h in heads.values()] == [None, None, None, "learned", "checked"]
    assert (heads["whole"].residual, heads["delta"].motion_radius) == (False, 0)
    assert all(heads[n].reads_previous_frame and heads[n].motion_radius == 2 for n in GATED)
    assert sw.tasks.DECODERS == tuple(DECODERS)
    assert sw.tasks.FutureFrames().decoder == "motion"  # the older default stays
    assert sw.tasks.FutureFrames(decoder="checked").head((8, 8, 3)).gate == "checked"
    with pytest.raises(ValueError, match=r"FutureFrames.decoder = 'moton' is not a decoder.*"):
        sw.tasks.FutureFrames(decoder="moton")
    with pytest.raises(ValueError, match="choose one of"):
        frame_decoder("moton", (8, 8, 3))
    with pytest.raises(ValueError, match="needs previous_frame=True"):
        FrameDecoder((8, 8, 3), residual=True, motion_radius=2, gate="checked")
    with pytest.raises(ValueError, match="needs motion_radius > 0"):
        FrameDecoder((8, 8, 3), residual=True, gate="learned")
    with pytest.raises(ValueError, match="choose one of"):
        FrameDecoder((8, 8, 3), residual=True, motion_radius=2, gate="soft")


@pytest.mark.usefixtures("fresh_gin_config")
def test_the_shipped_folder_future_experiments_use_the_checked_decoder():
    for mode in ("skip_sideways", "sideways", "bptt", "frame_bp"):
        gin.clear_config()
        gin.parse_config_files_and_bindings(
            [config_files.resolve(f"experiments/folder_future_{mode}")], []
        )
        assert gin.query_parameter("FutureFrames.decoder") == "checked", mode


def test_a_checked_head_config_round_trips_and_an_older_one_loads_as_it_was():
    decoder, a = decoder_with("checked", bias_index=7)
    clone = FrameDecoder.from_config(decoder.get_config())
    assert clone.gate == "checked" and clone.reads_previous_frame
    older = frame_decoder("motion", (8, 8, 3)).get_config()
    assert "gate" not in older  # saved motion heads keep their config
    assert FrameDecoder.from_config(older).gate is None


# ---- copy-last at initialisation --------------------------------------------------------


@pytest.mark.parametrize(
    "mode, topology, decoder",
    [
        ("frame_bp", "chain", "checked"),  # lag 0
        ("sideways", "chain", "checked"),  # lag 2
        ("skip_sideways", "skip(2)", "checked"),  # lag 1
        ("skip_sideways", "skip(2)", "gated"),
    ],
)
def test_a_fresh_gated_model_predicts_the_last_seen_frame_exactly(mode, topology, decoder):
    eng = tiny_engine(mode, topology, decoder)
    out = eng.predict_steps(random_clip())
    scored = out["weights"].numpy() > 0
    assert scored.sum() >= 4
    np.testing.assert_array_equal(
        out["outputs"].numpy()[:, scored], out["last_seen"].numpy()[:, scored]
    )


@pytest.mark.parametrize("decoder", GATED)
def test_training_moves_every_variable_of_a_gated_model(decoder):
    # The gate starts at clip(tanh(0), 0, 1) = 0, the bound: a gate that passed no gradient
    # there would never open, and the units below would never train.
    eng = tiny_engine("skip_sideways", "skip(2)", decoder)
    before = {v.path: np.array(v) for v in eng.variables}
    for seed in range(3):
        eng.train_clip(random_clip(seed=seed))
    for v in eng.variables:
        assert np.all(np.isfinite(np.array(v))), v.path
        assert np.any(np.array(v) != before[v.path]), f"{v.path} did not change"
    out = eng.predict_steps(random_clip(seed=5))
    assert not np.array_equal(out["outputs"].numpy(), out["last_seen"].numpy())


# ---- the gate's range -------------------------------------------------------------------


def test_the_gate_stays_in_zero_one_where_the_motion_amount_does_not():
    right = [(0, 1)]  # an offset: each pixel taken from the one to its right
    x = texture()
    for gate in (None, "learned"):
        index = FrameDecoder((8, 8, 3), residual=True, motion_radius=2).offsets.index(right[0])
        closed, a = decoder_with(gate, index, amount=-20.0)  # z << 0
        out = closed(a, last_frame=x, previous_frame=x).numpy()
        if gate is None:  # "motion": s = tanh(z) = -1 pushes pixels away from the neighbour
            np.testing.assert_allclose(out[:, :, :-1], 2 * x[:, :, :-1] - x[:, :, 1:], atol=1e-5)
        else:  # "gated": g = 0, exactly copy-last
            np.testing.assert_array_equal(out, x.numpy())
        opened, a = decoder_with(gate, index, amount=20.0)  # z >> 0: g = 1, all the way
        out = opened(a, last_frame=x, previous_frame=x).numpy()
        np.testing.assert_allclose(out[:, :, :-1], x.numpy()[:, :, 1:], atol=1e-6)
    # Whatever its weights, a gated prediction is a convex mix of the 5x5 neighbourhood.
    keras.utils.set_random_seed(3)
    decoder = FrameDecoder(
        (8, 8, 3), width=4, residual=True, motion_radius=2, previous_frame=True, gate="learned"
    )
    a = tf.random.normal((2, 2, 2, 5))
    x = tf.random.uniform((2, 8, 8, 3), -1, 1)
    decoder(a, last_frame=x, previous_frame=x)
    kernel, bias = decoder.frame.get_weights()
    decoder.frame.set_weights([np.random.default_rng(0).normal(0, 3, kernel.shape), bias + 2])
    out = decoder(a, last_frame=x, previous_frame=-x).numpy()
    padded = np.pad(x.numpy(), [(0, 0), (2, 2), (2, 2), (0, 0)], mode="symmetric")
    windows = np.stack(
        [padded[:, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)], axis=0
    )
    assert np.all(out >= windows.min(0) - 1e-6) and np.all(out <= windows.max(0) + 1e-6)
    assert np.abs(out - x.numpy()).max() > 0.05  # it did move pixels


# ---- the check --------------------------------------------------------------------------


def smooth_frame(width=12):
    """[1, 8, width, 3] smooth content in [-1, 1]: a shift by 2 px changes it more than by 1."""
    rows, cols = np.meshgrid(np.arange(8), np.arange(width), indexing="ij")
    channels = [np.sin(0.5 * cols + c) * np.cos(0.2 * rows + c) for c in range(3)]
    return tf.constant(np.stack(channels, -1)[None], tf.float32)


def test_the_checked_head_continues_a_motion_the_last_frames_showed_and_copies_otherwise():
    offsets = FrameDecoder((8, 8, 3), residual=True, motion_radius=2).offsets
    frame = smooth_frame()
    previous, last = frame[:, :, 2:10], frame[:, :, 3:11]  # content moved 1 px to the left
    # The motion "from the right" (offset (0, 1)) is the one the last two frames show:
    # the check passes and the head continues it (away from the repeated right edge).
    follows, a = decoder_with("checked", offsets.index((0, 1)))
    weights = tf.one_hot(tf.fill((1, 8, 8), offsets.index((0, 1))), len(offsets))
    check = follows.check(weights, tf.ones((1, 8, 8, 1)), last, previous).numpy()
    assert check.min() >= 0.0 and check.max() <= 1.0
    assert np.all(check[:, :, :5] > 0.99)
    out = follows(a, last_frame=last, previous_frame=previous).numpy()
    np.testing.assert_allclose(out[:, :, :5], frame.numpy()[:, :, 4:9], atol=1e-3)
    # The opposite motion explains the last change worse than no motion: c = 0, exactly
    # copy-last.
    against, a = decoder_with("checked", offsets.index((0, -1)))
    np.testing.assert_array_equal(against(a, last_frame=last, previous_frame=previous), last)
    # Without the check ("gated") the same wrong motion is applied.
    wrong, a = decoder_with("learned", offsets.index((0, -1)))
    assert np.abs(wrong(a, last_frame=last, previous_frame=previous) - last).max() > 0.1
    # A motion of half a pixel (the frame before, moved halfway to its right neighbour) is
    # checked with its amount: g' = 1/2 passes the check, and the head continues it.
    half = 0.5 * previous + 0.5 * frame[:, :, 3:11]
    halfway, a = decoder_with("checked", offsets.index((0, 1)), amount=float(np.arctanh(0.5)))
    check = halfway.check(weights, tf.fill((1, 8, 8, 1), 0.5), half, previous).numpy()
    assert np.all(check[:, :, :5] > 0.99)
    out = halfway(a, last_frame=half, previous_frame=previous).numpy()
    np.testing.assert_allclose(
        out[:, :, :5], 0.5 * half[:, :, :5] + 0.5 * half[:, :, 1:6], atol=5e-3
    )  # (c = e_c / (e_c + CHECK_EPS) = 0.99+: the change here is small)
    # Nothing changed between the last two frames (a still region, a clip's first step):
    # nothing moves, whatever the weights and the gate say.
    np.testing.assert_array_equal(follows(a, last_frame=last, previous_frame=last), last)


# ---- synthetic camera motion ------------------------------------------------------------


def photograph(height=96, width=120, seed=0):
    """A smooth random texture standing in for a photograph (uint8 [H, W, 3])."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (height // 8 + 1, width // 8 + 1, 3))
    fine = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
    return np.clip(fine + rng.normal(0, 20, fine.shape), 0, 255).astype(np.uint8)


SMALL = camera_motion.CameraMotion(size=16, view=(0.4, 0.6))


def test_camera_videos_are_deterministic_per_seed_and_move():
    image, other = photograph(), photograph(seed=1)
    video = camera_motion.camera_video(image, 12, seed=3, motion=SMALL, objects=[other])
    assert video.shape == (12, 16, 16, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(
        video, camera_motion.camera_video(image, 12, seed=3, motion=SMALL, objects=[other])
    )
    assert not np.array_equal(video, camera_motion.camera_video(image, 12, seed=4, motion=SMALL))
    # A panning camera (no still draws, no start or stop): every frame differs from the one
    # before; with the pan, zoom, roll, shake, gain and noise off, every frame is the same
    # picture, unless an object crosses it.
    panning = camera_motion.CameraMotion(
        size=16, view=(0.4, 0.6), still=0.0, start_stop=0.0, noise=(0.0, 0.0)
    )
    steps = np.diff(camera_motion.camera_video(image, 8, 5, panning).astype(float), axis=0)
    assert np.all(np.abs(steps).mean(axis=(1, 2, 3)) > 1.0)
    frozen = dict(size=16, still=1.0, zoom=0.0, roll=0.0, shake_p=0.0, noise=(0.0, 0.0), gain=0)
    still = camera_motion.camera_video(image, 6, 5, camera_motion.CameraMotion(**frozen))
    np.testing.assert_array_equal(still, np.broadcast_to(still[:1], still.shape))
    crossed = camera_motion.camera_video(
        image, 6, 5, camera_motion.CameraMotion(**frozen, object_p=1.0), objects=[other]
    ).astype(float)
    assert np.all(np.abs(np.diff(crossed, axis=0)).max(axis=(1, 2, 3)) > 10)


@pytest.mark.parametrize("pan", [1, 3])
def test_a_pan_by_p_pixels_moves_the_content_by_p_pixels(pan):
    image = photograph()
    frames, size = 5, 16
    centre = np.stack([np.full(frames, 48.0), 40.0 + pan * np.arange(frames)], -1)[:, None]
    path = camera_motion.CameraPath(
        centre=centre,
        scale=np.ones((frames, 1)),
        angle=np.zeros((frames, 1)),
        gain=np.ones(frames),
        noise=0.0,
    )
    motion = camera_motion.CameraMotion(size=size)
    video = camera_motion.render(image, path, motion, np.random.default_rng(0)).astype(int)
    for t in range(frames - 1):
        # The camera moved right by p px: what was at column j + p is now at column j.
        np.testing.assert_array_equal(video[t + 1][:, :-pan], video[t][:, pan:])
        for wrong in (pan - 1, pan + 1):
            if wrong > 0:
                assert np.abs(video[t + 1][:, :-wrong] - video[t][:, wrong:]).mean() > 2.0
    assert np.abs(video[1] - video[0]).mean() > 2.0  # and it did move


def test_a_view_that_does_not_fit_the_photograph_is_refused_with_the_fix():
    whole = camera_motion.CameraMotion(size=16, view=(1.0, 1.0))  # no room to roll
    with pytest.raises(ValueError, match="smaller CameraMotion.view"):
        camera_motion.camera_video(photograph(), 4, 0, whole)


def test_the_streaming_export_of_a_checked_model_reproduces_predict(tmp_path):
    # The own-videos configs export this head (sideways-export): its check reads the
    # head's two lines, x[t - lag] and x[t - lag - 1], step by step as predict does.
    from sideways_tf import export

    eng = tiny_engine("skip_sideways", "skip(2, 1)", "checked", lr=0.5)
    for seed in range(3):
        eng.train_clip(random_clip(seed=seed))
    out = str(tmp_path / "export")
    export.export(eng.pipeline, out, batch_size=2)
    loaded = tf.saved_model.load(out)
    lite = tf.lite.Interpreter(export.convert_tflite(out)).get_signature_runner("step")
    clip = random_clip(num_frames=8, seed=7)
    want = eng.predict_steps(clip)
    assert not np.allclose(want["outputs"], want["last_seen"])  # it moves pixels
    state = loaded.signatures["init_state"]()
    lite_state = {k: v.numpy() for k, v in state.items()}
    for k in range(clip.shape[1]):
        state = loaded.signatures["step"](frame=tf.constant(clip[:, k]), **state)
        outputs = state.pop("outputs").numpy()
        np.testing.assert_allclose(outputs, want["outputs"][:, k], rtol=1e-5, atol=1e-5)
        lite_state = lite(frame=clip[:, k], **lite_state)
        np.testing.assert_allclose(lite_state.pop("outputs"), outputs, rtol=1e-4, atol=1e-5)
