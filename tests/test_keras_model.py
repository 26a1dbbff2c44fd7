"""SidewaysModel: Keras' fit, evaluate, predict, callbacks and saving over the one engine."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from toy import dense_pipeline

import sideways_tf as sw
from sideways_tf import distribute
from sideways_tf.data.moving_shapes import moving_shapes_dataset, moving_shapes_future_dataset
from sideways_tf.models import convnet, resnet, vgg

FRAMES = dict(frame_size=16, num_frames=6)


def shapes(num, batch=2, seed=0):
    """Tiny moving_shapes as (clips [B, K, 16, 16, 3], labels [B]) batches, the same every epoch."""
    ds = moving_shapes_dataset("train", num_examples=num, seed=seed, **FRAMES)
    return ds.map(lambda e: (e["frames"], e["label"])).batch(batch, drop_remainder=True)


def tiny_model(mode="skip_sideways", batch=2, seed=0, placement=None, **compile_args):
    keras.utils.set_random_seed(seed)
    pipeline = convnet.tiny_conv_pipeline(
        batch_size=batch,
        frame_shape=(16, 16, 3),
        task=sw.tasks.Classification(num_classes=12),
        topology="chain" if mode == "sideways" else "skip(2)",
        placement=placement,
    )
    model = sw.SidewaysModel(pipeline=pipeline)
    compile_args.setdefault("optimizer", keras.optimizers.Adam(1e-2))
    model.compile(mode=mode, metrics=["accuracy"], **compile_args)
    return model


def weights(model):
    return [np.array(v) for v in model.pipeline.trainable_variables]


def test_fit_is_exactly_the_engines_train_clip():
    data = shapes(6)
    model = tiny_model()
    history = model.fit(data, epochs=2, verbose=0)
    reference = tiny_model()
    losses = []
    for _ in range(2):
        for clips, labels in data:
            losses.append(float(reference.engine.train_clip(clips, labels)["loss"]))
    for a, b in zip(weights(model), weights(reference)):
        np.testing.assert_array_equal(a, b)
    assert int(model.optimizer.iterations) == 6
    assert history.history["loss"][1] == pytest.approx(np.mean(losses[3:]), rel=1e-6)
    assert set(history.history) >= {"loss", "accuracy", "grad_norm/unit_1", "grad_norm/unit_3"}


def test_early_stopping_stops_when_the_loss_stops_falling():
    model = tiny_model(optimizer=keras.optimizers.SGD(0.0))  # nothing moves: no improvement
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=1)
    history = model.fit(shapes(4), epochs=10, callbacks=[stop], verbose=0)
    assert len(history.history["loss"]) == 2 and stop.stopped_epoch == 1


def test_model_checkpoint_and_load_model_continue_like_an_uninterrupted_run(tmp_path):
    data = shapes(4)
    path = str(tmp_path / "epoch{epoch}.keras")
    model = tiny_model()
    model.fit(data, epochs=1, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(path)])
    loaded = keras.saving.load_model(str(tmp_path / "epoch1.keras"))
    assert loaded.engine.mode.name == "skip_sideways"
    paths = [v.path for v in loaded.pipeline.variables]  # each unit's conv apart, not conv/kernel
    assert len(set(paths)) == len(paths), sorted(p for p in paths if paths.count(p) > 1)
    assert int(loaded.optimizer.iterations) == 2
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    model.fit(data, epochs=1, verbose=0)
    loaded.fit(data, epochs=1, verbose=0)
    for a, b in zip(weights(loaded), weights(model)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # save_weights / load_weights round trip, optimizer state included.
    model.save_weights(str(tmp_path / "w.weights.h5"))
    fresh = tiny_model(seed=1)
    fresh.load_weights(str(tmp_path / "w.weights.h5"))
    for a, b in zip(weights(fresh), weights(model)):
        np.testing.assert_array_equal(a, b)
    assert int(fresh.optimizer.iterations) == int(model.optimizer.iterations)


BACKUP_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import keras, numpy as np
    from test_keras_model import shapes, tiny_model

    class KillAt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations.numpy() == 5:  # epoch 3, mid-epoch
                os.kill(os.getpid(), signal.SIGKILL)

    model = tiny_model()
    callbacks = [keras.callbacks.BackupAndRestore({backup!r})]
    if sys.argv[1] == "kill":
        callbacks.append(KillAt())
    model.fit(shapes(4), epochs=4, verbose=0, callbacks=callbacks)
    np.savez({out!r}, *[np.array(v) for v in model.pipeline.trainable_variables])
    """
)


@pytest.mark.slow
def test_backup_and_restore_resumes_a_killed_fit_to_the_uninterrupted_parameters(tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "fit.py"
    script.write_text(
        BACKUP_SCRIPT.format(
            tests=tests, backup=str(tmp_path / "backup"), out=str(tmp_path / "resumed.npz")
        )
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    killed = subprocess.run([sys.executable, str(script), "kill"], env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert os.path.exists(tmp_path / "backup")
    resumed = subprocess.run([sys.executable, str(script), "resume"], env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    model = tiny_model()
    model.fit(shapes(4), epochs=4, verbose=0)
    got = np.load(tmp_path / "resumed.npz")
    for k, want in enumerate(weights(model)):
        np.testing.assert_allclose(got[f"arr_{k}"], want, rtol=1e-6, atol=1e-7)


def test_fit_under_mirrored_strategy_equals_one_device_on_the_joined_batch():
    data = shapes(8, batch=4)
    one = tiny_model(batch=4, optimizer=keras.optimizers.SGD(0.05))
    runtime = distribute.make_runtime(strategy="mirrored", devices=["CPU:0", "CPU:1"])
    with runtime.scope():
        two = tiny_model(
            batch=2, placement=runtime.placement(), optimizer=keras.optimizers.SGD(0.05)
        )
    for v, w in zip(two.pipeline.trainable_variables, one.pipeline.trainable_variables):
        v.assign(np.array(w))
    h1 = one.fit(data, epochs=1, verbose=0)
    h2 = two.fit(data, epochs=1, verbose=0)
    assert two.engine.num_replicas == 2
    np.testing.assert_allclose(h2.history["loss"], h1.history["loss"], rtol=1e-5)
    for v, w in zip(two.pipeline.trainable_variables, one.pipeline.trainable_variables):
        for part in runtime.strategy.experimental_local_results(v.value):
            np.testing.assert_allclose(np.array(part), np.array(w), rtol=1e-5, atol=1e-6)


def test_future_frame_fit_reports_psnr_and_ssim_next_to_copying_the_last_frame():
    keras.utils.set_random_seed(0)
    pipeline = convnet.tiny_conv_pipeline(
        batch_size=2,
        frame_shape=(16, 16, 3),
        task=sw.tasks.FutureFrames(decoder="whole"),
        topology="skip(2)",
    )
    model = sw.SidewaysModel(pipeline=pipeline)
    model.compile(optimizer="adam", mode="skip_sideways")
    ds = moving_shapes_future_dataset("train", num_examples=4, **FRAMES)
    data = ds.map(lambda e: e["frames"]).batch(2, drop_remainder=True)
    history = model.fit(data, epochs=1, validation_data=data, verbose=0)
    for key in ("val_psnr", "val_ssim", "val_psnr_copy_last", "val_ssim_copy_last", "loss"):
        assert np.isfinite(history.history[key][0]), key
    assert 0.0 < history.history["val_ssim_copy_last"][0] <= 1.0
    frames = model.predict(data, verbose=0, per_step=True)
    assert frames.shape == (4, *next(iter(data)).shape[1:])  # every step's frame, per clip


def test_summary_lists_units_parameters_and_buffers_apart():
    model = tiny_model()
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    params = sum(int(np.prod(v.shape)) for v in model.pipeline.trainable_variables)
    buffers = sum(int(np.prod(b.shape)) for b in model.pipeline.state_variables())
    assert f"Parameters (trainable): {params:,}" in text
    assert f"State buffers (outputs, messages, delay lines; not trained): {buffers:,}" in text
    assert "1 unit1" in text and "3 unit3 + head" in text and "mode skip_sideways" in text


@pytest.mark.parametrize("mode", ["frame_bp", "bptt", "sideways", "skip_sideways"])
def test_every_mode_trains_through_fit(mode):
    model = tiny_model(mode)
    before = weights(model)
    history = model.fit(shapes(4), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert all(not np.array_equal(a, b) for a, b in zip(before, weights(model)))


@pytest.mark.parametrize("family", [convnet.tiny_conv_pipeline, vgg._tiny_vgg, resnet._tiny_resnet])
def test_every_model_family_trains_through_fit(family):
    keras.utils.set_random_seed(0)
    pipeline = family(
        batch_size=2,
        frame_shape=(16, 16, 3),
        task=sw.tasks.Classification(num_classes=12),
        topology="skip(2)",
    )
    model = sw.SidewaysModel(pipeline=pipeline)
    model.compile(optimizer="adam", mode="skip_sideways", metrics=["accuracy"])
    before = weights(model)
    history = model.fit(shapes(2), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "accuracy" in history.history
    changed = [not np.array_equal(a, b) for a, b in zip(before, weights(model))]
    assert all(changed), [
        v.path for v, c in zip(model.pipeline.trainable_variables, changed) if not c
    ]


def test_predict_and_evaluate_use_the_clip_outputs_averaged_over_valid_steps():
    model = tiny_model()
    data = shapes(4)
    clips = np.concatenate([c for c, _ in data])
    out = model.predict(data, verbose=0)
    np.testing.assert_allclose(
        out,
        model.engine.predict_clip(clips[:2]).numpy().tolist()
        + model.engine.predict_clip(clips[2:]).numpy().tolist(),
        rtol=1e-5,
        atol=1e-6,
    )
    result = model.evaluate(data, verbose=0, return_dict=True)
    labels = np.concatenate([y for _, y in data])
    assert result["accuracy"] == pytest.approx(np.mean(out.argmax(-1) == labels))


def test_compile_errors_name_the_fix():
    model = sw.SidewaysModel(pipeline=dense_pipeline())
    with pytest.raises(ValueError, match=r"call `compile\(\)`"):
        model.fit(tf.data.Dataset.from_tensors((np.zeros((2, 4, 5), "float32"), [0, 1])))
    with pytest.raises(ValueError, match="the pipeline's task decides the loss"):
        model.compile(loss="mse", mode="sideways")
    with pytest.raises(ValueError, match="not a mode"):
        model.compile(mode="sidways")


def test_tensorboard_gets_the_engines_scalars_and_lr_scheduler_and_custom_metrics_apply(tmp_path):
    model = tiny_model(optimizer="sgd")  # a name: keras.optimizers.get
    model.compile(
        optimizer="sgd",
        mode="skip_sideways",
        metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3")],
        fidelity_every=1,
    )
    before = weights(model)
    callbacks = [
        keras.callbacks.TensorBoard(str(tmp_path / "tb")),
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.0),  # nothing may move
    ]
    history = model.fit(shapes(4), epochs=1, verbose=0, callbacks=callbacks)
    for a, b in zip(before, weights(model)):
        np.testing.assert_array_equal(a, b)
    assert {"top3", "fidelity/unit_3", "grad_norm/unit_2"} <= set(history.history)
    assert history.history["fidelity/unit_3"][0] == pytest.approx(1.0, abs=1e-5)  # top: exact
    tags = set()
    for root, _, files in os.walk(tmp_path / "tb" / "train"):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                tags.update(v.tag for v in event.summary.value)
    assert {"epoch_grad_norm/unit_1", "epoch_fidelity/unit_2", "epoch_loss"} <= tags


# -- Non-finite steps in fit (issue 26, item 1) -----------------------------------------


def nan_batches(pattern, batch=2):
    """(clips, labels) batches of tiny moving_shapes, NaN clips where pattern[i] is True."""
    out = []
    for (clips, labels), bad in zip(shapes(2 * len(pattern), batch), pattern):
        out.append((np.full_like(clips, np.nan) if bad else clips.numpy(), labels.numpy()))
    clips, labels = (np.concatenate(x) for x in zip(*out))
    return tf.data.Dataset.from_tensor_slices((clips, labels)).batch(batch, drop_remainder=True)


def test_non_finite_steps_in_fit_are_logged_warned_and_stop_terminate_on_nan():
    model = tiny_model()
    with pytest.warns(RuntimeWarning, match=r"step 1: the loss or gradients are NaN/Inf"):
        history = model.fit(
            nan_batches([True, True, True]),
            verbose=0,
            callbacks=[keras.callbacks.TerminateOnNaN()],
        )
    # Nothing was applied, the loss says so (not 0.0), and TerminateOnNaN stopped at once.
    assert int(model.optimizer.iterations) == 0
    assert np.isnan(history.history["loss"][0])
    assert history.history["non_finite_steps"][0] == 1


def test_half_non_finite_batches_are_counted_and_stop_on_non_finite_stops_in_a_row():
    model = tiny_model()
    with pytest.warns(RuntimeWarning):
        history = model.fit(nan_batches([False, True, False, True]), verbose=0)
    assert int(model.optimizer.iterations) == 2  # the two finite batches
    assert history.history["non_finite_steps"][0] == 2
    assert np.isnan(history.history["loss"][0])  # the epoch's last batch was skipped
    stop = sw.StopOnNonFinite(max_in_a_row=2)
    model = tiny_model()
    with pytest.warns(RuntimeWarning):
        model.fit(nan_batches([True, False, True, True, False, False]), verbose=0, callbacks=[stop])
    assert stop.stopped_at == 3 and int(model.optimizer.iterations) == 1  # batch 1 only
    with pytest.raises(ValueError, match="max_in_a_row must be a positive integer"):
        sw.StopOnNonFinite(max_in_a_row=0)
