"""Future-frame prediction: target alignment, metrics in closed form, heads, errors, runs."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_properties import frames_in, tagged_clip
from toy import event_tags, train_config

import sideways_tf as sw
from sideways_tf import engine, export, modes
from sideways_tf.evaluate import evaluate
from sideways_tf.models import convnet, resnet, vgg
from sideways_tf.models.layers import FrameDecoder
from sideways_tf.tasks import future_frames as prediction


def identity_pipeline(topology, num_units, frame_shape, horizon=1, batch_size=1):
    """Units that pass their summed inputs on (identity Dense on the last axis)."""
    units = [
        sw.Unit(
            keras.layers.Dense(
                frame_shape[-1], use_bias=False, kernel_initializer="identity", name="id"
            ),
            fusion="sum",  # (the summed inputs: concat would mix them with a learned conv)
            name=f"unit{i + 1}",
        )
        for i in range(num_units)
    ]
    return sw.Pipeline(
        units,
        topology=topology,
        task=prediction.FutureFrames(horizon=horizon),
        batch_size=batch_size,
        frame_shape=frame_shape,
    )


# -- Alignment ------------------------------------------------------------------


@pytest.mark.parametrize("horizon", [1, 3])
@pytest.mark.parametrize("topology", ["chain", "skip(2)", "skip(3)", "skip(2, 1)"])
def test_target_is_horizon_frames_after_the_newest_frame_the_top_has_seen(topology, horizon):
    num_units, num_frames = 4, 14
    dim = num_frames + 1
    pipeline = identity_pipeline(topology, num_units, (dim,), horizon)
    clip = tagged_clip(num_frames, dim)  # x[t] = one-hot(t), t = 1..K
    targets, present = engine.step_targets(pipeline, "sideways", clip, None)
    lag = pipeline.topology.newest_lag(num_units)
    state, scored = pipeline.zero_state(), 0
    for k in range(num_frames):
        state, y = pipeline.forward_step(state, clip[:, k])
        t = k + 1
        target = frames_in(targets[0, k])
        if not 1 <= t - lag + horizon <= num_frames:  # the target frame is outside the clip
            assert float(present[k]) == 0.0, (t, lag)
            continue
        assert float(present[k]) == 1.0
        assert target == {t - lag + horizon}
        if t >= pipeline.fill_steps:  # the output holds real frames only
            assert max(frames_in(y[0])) == t - lag  # the newest frame seen ...
            assert target == {max(frames_in(y[0])) + horizon}  # ... and h frames later
            scored += 1
    assert scored == num_frames - pipeline.fill_steps + 1 - max(0, horizon - lag)


def test_per_frame_network_targets_the_next_frame_of_its_own_input():
    num_frames, horizon = 6, 2
    pipeline = identity_pipeline("chain", 3, (num_frames + 1,), horizon)
    clip = tagged_clip(num_frames, num_frames + 1)
    targets, present = engine.step_targets(pipeline, "frame_bp", clip, None)
    for k in range(num_frames):
        seen = frames_in(pipeline.frame_forward(clip[:, k])[0])
        if k + horizon < num_frames:
            assert frames_in(targets[0, k]) == {max(seen) + horizon}
        assert float(present[k]) == float(k + horizon < num_frames)


@pytest.mark.parametrize("mode", ["frame_bp", "bptt", "sideways"])
def test_only_steps_with_a_full_pipeline_and_a_target_count(mode):
    num_frames, horizon = 9, 4
    pipeline = identity_pipeline("chain", 3, (4, 4, 1), horizon, batch_size=2)
    clip = np.random.default_rng(0).uniform(-1, 1, (2, num_frames, 4, 4, 1)).astype("float32")
    eng = sw.Engine(pipeline, mode, keras.optimizers.SGD(0.0))
    got = float(eng.train_clip(clip)["valid_steps"])
    lag = modes.get(mode).input_lag(pipeline)  # 2 on the chain of 3, 0 per frame
    first = 1 if mode == "frame_bp" else pipeline.fill_steps
    want = sum(1 for t in range(first, num_frames + 1) if t - lag + horizon <= num_frames)
    assert got == want == (num_frames - horizon if mode == "frame_bp" else 5)


# -- Metrics, as evaluation reports them ---------------------------------------------


def ramp_clips(offsets, num_frames, size=16):
    """Clip b: constant frames x[k] = -0.9 + offsets[b] * k: a uniform step per frame."""
    k = np.arange(num_frames, dtype="float32")
    clips = [-0.9 + c * k for c in offsets]
    return np.stack(
        [np.broadcast_to(c[:, None, None, None], (num_frames, size, size, 1)) for c in clips]
    ).astype("float32")


@pytest.mark.parametrize("mode", ["sideways", "bptt", "frame_bp"])
def test_psnr_and_ssim_equal_closed_form_values_averaged_over_steps_and_clips(mode):
    horizon, num_frames = 2, 9
    offsets = [0.05, 0.1, 0.02]  # three clips: a batch of 2, then a padded batch of 1
    pipeline = identity_pipeline("chain", 3, (16, 16, 1), horizon, batch_size=2)
    eng = sw.Engine(pipeline, mode, keras.optimizers.SGD(0.0))
    clips = ramp_clips(offsets, num_frames)
    ds = tf.data.Dataset.from_tensor_slices({"frames": clips})
    metrics = evaluate(eng, ds)
    # The identity network's prediction is the newest frame it has seen, x[t - lag]:
    # the target x[t - lag + h] differs by h * offset everywhere.
    lag = modes.get(mode).input_lag(pipeline)
    first = 1 if mode == "frame_bp" else pipeline.fill_steps
    steps = [t for t in range(first, num_frames + 1) if t - lag + horizon <= num_frames]
    c1 = (0.01 * 2.0) ** 2  # SSIM of constant images a, b: (2ab + C1) / (a^2 + b^2 + C1)
    psnr, ssim, n = 0.0, 0.0, 0
    for c in offsets:
        for t in steps:
            a = -0.9 + c * (t - lag - 1)  # x[t - lag] (1-based frames, 0-based k)
            b = a + c * horizon
            psnr += 20 * np.log10(2.0 / (c * horizon))
            ssim += (2 * a * b + c1) / (a * a + b * b + c1)
            n += 1
    assert metrics["num_clips"] == 3 and metrics["scored_frames"] == n
    np.testing.assert_allclose(metrics["psnr"], psnr / n, rtol=1e-4)
    np.testing.assert_allclose(metrics["ssim"], ssim / n, rtol=1e-4)
    # The copy-the-last-seen-frame baseline is exactly this network.
    np.testing.assert_allclose(metrics["psnr_copy_last"], metrics["psnr"], rtol=1e-6)
    np.testing.assert_allclose(metrics["ssim_copy_last"], metrics["ssim"], rtol=1e-6)
    np.testing.assert_allclose(
        metrics["loss"], np.mean([(c * horizon) ** 2 for c in offsets]), rtol=1e-4
    )
    assert metrics["images"].shape[1:] == (32, min(len(steps), 8) * 16, 3)


def test_identical_frames_give_ssim_one_and_the_psnr_cap():
    pipeline = identity_pipeline("chain", 2, (16, 16, 1), 1, batch_size=2)
    eng = sw.Engine(pipeline, "sideways", keras.optimizers.SGD(0.0))
    clips = ramp_clips([0.0, 0.0], 6)
    metrics = evaluate(eng, tf.data.Dataset.from_tensor_slices({"frames": clips}))
    assert metrics["psnr"] == pytest.approx(prediction.PSNR_CAP)
    assert metrics["ssim"] == pytest.approx(1.0, abs=1e-6)


# -- Heads ------------------------------------------------------------------------------

FAMILIES = {
    "conv": lambda **kw: convnet.tiny_conv_pipeline(**kw),
    "vgg": vgg._tiny_vgg,
    "resnet": resnet._tiny_resnet,
}


@pytest.mark.parametrize(
    "mode, topology",
    [
        ("frame_bp", "chain"),
        ("bptt", "skip(2)"),
        ("sideways", "chain"),
        ("skip_sideways", "skip(2)"),
    ],
)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_frame_heads_train_every_variable_in_every_mode(family, mode, topology):
    keras.utils.set_random_seed(0)
    pipeline = FAMILIES[family](
        batch_size=2,
        frame_shape=(16, 16, 3),
        task=sw.tasks.FutureFrames(decoder="whole"),
        topology=topology,
    )
    assert pipeline.top_output_shape == (2, 16, 16, 3)
    eng = sw.Engine(pipeline, mode, keras.optimizers.SGD(0.1))
    before = [np.array(v) for v in eng.variables]
    clip = np.random.default_rng(0).uniform(-1, 1, (2, 2 * pipeline.fill_steps + 2, 16, 16, 3))
    metrics = eng.train_clip(clip.astype("float32"))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["valid_steps"]) > 0
    for v, old in zip(eng.variables, before):
        new = np.array(v)
        assert np.all(np.isfinite(new)), v.path
        assert np.any(new != old), f"{family}/{mode}: {v.path} was not updated"


def test_frame_decoder_resizes_when_the_factor_is_not_a_power_of_two():
    decoder = FrameDecoder((24, 24, 3), width=4)
    out = decoder(tf.zeros((1, 4, 4, 8)))  # 4 -> 8 -> 16 -> 32, resized to 24
    assert out.shape == (1, 24, 24, 3)
    with pytest.raises(ValueError, match="must not pool"):
        FrameDecoder((8, 8, 3))(tf.zeros((1, 16)))


# -- Errors -------------------------------------------------------------------------------


def test_a_horizon_past_the_clip_names_the_binding_and_the_limit():
    pipeline = identity_pipeline("chain", 4, (5,), horizon=9)
    # sideways: T_fill = 4, lag = 3, K = 8: the longest horizon is 8 + 3 - 4 = 7.
    with pytest.raises(ValueError, match=r"FutureFrames.horizon = 9 .*FutureFrames.horizon <= 7"):
        modes.get("sideways").check_clip_length(pipeline, 8, "num_frames")
    modes.get("sideways").check_clip_length(
        identity_pipeline("chain", 4, (5,), horizon=7), 8, "num_frames"
    )
    with pytest.raises(ValueError, match=r"horizon <= 7"):
        modes.get("frame_bp").check_clip_length(pipeline, 8, "num_frames")
    with pytest.raises(ValueError, match="an integer >= 1"):
        prediction.FutureFrames(horizon=0)
    with pytest.raises(ValueError, match="'l2' .* or 'l1'"):
        prediction.FutureFrames(norm="l3")


def test_classification_without_labels_says_what_is_missing():
    from toy import dense_pipeline

    pipeline = dense_pipeline("chain")
    eng = sw.Engine(pipeline, "sideways", keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="need labels"):
        eng.train_clip(np.zeros((2, 8, 5), "float32"))


# -- A run ---------------------------------------------------------------------------------


def test_future_frame_run_reports_psnr_and_writes_prediction_images(tmp_path):
    workdir = str(tmp_path / "run")
    result = train_config(
        workdir,
        "train.num_steps = 3",
        "train.global_batch = 2",
        "train.eval_every = 3",
        "train.progress = False",
        "train.fidelity_every = 2",
        "moving_shapes_future_dataset.num_frames = 8",
        "moving_shapes_future_dataset.frame_size = 16",
        "eval/moving_shapes_future_dataset.num_examples = 3",
        "conv_pipeline.widths = (4, 4, 4, 4)",
        config="experiments/moving_shapes_future_skip_sideways",
    )
    metrics = result["eval"]
    for key in ("psnr", "ssim", "psnr_copy_last", "ssim_copy_last", "loss"):
        assert np.isfinite(metrics[key]), key
    assert metrics["num_clips"] == 3 and "images" not in metrics
    with open(os.path.join(workdir, "eval_metrics.json")) as f:
        assert json.load(f)["history"][-1]["psnr"] == pytest.approx(metrics["psnr"])
    assert {"predictions", "psnr", "ssim_copy_last"} <= event_tags(os.path.join(workdir, "eval"))

    # The streaming export of a future-frame run steps out frames, and says which.
    out = str(tmp_path / "export")
    meta = export.export(workdir, out, batch_size=1)
    assert meta["task"] == "future_frames" and meta["horizon"] == 1
    assert meta["num_classes"] is None and meta["class_names"] is None
    pipeline, _ = export.load_pipeline(workdir, batch_size=1)
    clip = np.random.default_rng(0).uniform(-1, 1, (1, 5, 16, 16, 3)).astype("float32")
    loaded = tf.saved_model.load(out)
    state = loaded.signatures["init_state"]()
    for k, want in enumerate(np.swapaxes(pipeline(clip, training=False).numpy(), 0, 1)):
        named = {n: state[n] for n in meta["state_names"]}
        state = loaded.signatures["step"](frame=tf.constant(clip[:, k]), **named)
        assert state["outputs"].shape == (1, 16, 16, 3)
        np.testing.assert_allclose(state["outputs"].numpy(), want, rtol=1e-5, atol=1e-6)


def test_a_run_with_a_horizon_past_its_clips_stops_before_training(tmp_path):
    with pytest.raises(ValueError, match="FutureFrames.horizon = 12 is too far ahead"):
        train_config(
            tmp_path / "run",
            "HORIZON = 12",
            "moving_shapes_future_dataset.horizon = 1",
            "moving_shapes_future_dataset.num_frames = 8",
            "moving_shapes_future_dataset.frame_size = 16",
            "train.progress = False",
            config="experiments/moving_shapes_future_sideways",
        )
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "checkpoint")


def test_frame_heads_train_in_bfloat16_with_float32_predictions_and_loss():
    from sideways_tf import precision

    keras.utils.set_random_seed(0)
    with precision.policy_scope("mixed_bfloat16"):
        pipeline = convnet.tiny_conv_pipeline(
            batch_size=2,
            frame_shape=(8, 8, 2),
            task=sw.tasks.FutureFrames(decoder="whole"),
            topology="skip(2)",
        )
    assert pipeline.units[0].output_buffer.dtype == "bfloat16"
    eng = sw.Engine(pipeline, "skip_sideways", keras.optimizers.SGD(0.1))
    clip = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 8, 2)).astype("float32")
    losses = [float(eng.train_clip(clip)["loss"]) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    out = eng.predict_steps(clip)
    assert out["outputs"].dtype == tf.float32 and out["outputs"].shape == (2, 8, 8, 8, 2)
