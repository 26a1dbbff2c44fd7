"""SidewaysModel's Keras loop on either Keras backend: no TensorFlow is named here.

Run it on JAX as `KERAS_BACKEND=jax pytest tests/test_keras_jax.py`; it passes on
TensorFlow too. tests/conftest.py imports TensorFlow only on its backend, but
keras.utils.set_random_seed (tiny) seeds TensorFlow wherever it is installed, so that
the library itself imports none is checked in a child process. The engine assigns
the variables' new values itself (on JAX, one jax.jit per clip whose outputs it
writes back), while Keras' JAX trainer threads a stateless state through its steps
and writes it back when its loop ends: these tests check that what the engine
trained is what the model holds, reports, saves and predicts with.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import sideways_tf as sw
from sideways_tf.models import convnet

B, K, C, FRAME = 2, 6, 4, (8, 8, 2)


def clips(n=8, seed=0, labels=None):
    """n clips [n, K, 8, 8, 2] whose class (default: i % C) sets their mean, and the labels."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(np.arange(n) % C if labels is None else labels, "int32")
    x = rng.normal(size=(n, K, *FRAME)) * 0.3 + labels[:, None, None, None, None] * 0.5
    return x.astype("float32"), labels


def tiny(seed=0, **compile_args):
    keras.utils.set_random_seed(seed)
    pipeline = convnet.tiny_conv_pipeline(
        batch_size=B,
        frame_shape=FRAME,
        task=sw.tasks.Classification(num_classes=C),
        topology="skip(2)",
    )
    model = sw.SidewaysModel(pipeline=pipeline)
    compile_args.setdefault("optimizer", keras.optimizers.Adam(1e-2))
    model.compile(mode="skip_sideways", metrics=["accuracy"], **compile_args)
    return model


def weights(model):
    return [np.array(v) for v in model.pipeline.trainable_variables]


@pytest.fixture(scope="module")
def trained():
    """A model fit for 4 epochs on clips(8), validated on clips(4, seed=5), and its history
    (read-only for the tests)."""
    model = tiny()
    x, y = clips()
    history = model.fit(x, y, epochs=4, shuffle=False, validation_data=clips(4, 5), verbose=0)
    return model, history.history


def test_fit_lowers_the_loss_and_the_model_holds_what_the_engine_trained(trained):
    model, history = trained
    assert history["loss"][-1] < 0.8 * history["loss"][0], history["loss"]
    units = {f"grad_norm/unit_{i}" for i in range(1, 4)}
    assert set(history) >= {"loss", "accuracy", "non_finite_steps", *units}
    assert history["non_finite_steps"] == [0, 0, 0, 0]
    for name in units:
        assert all(np.isfinite(v) and v > 0 for v in history[name]), (name, history[name])
    assert int(model.optimizer.iterations) == 16  # 4 epochs x 4 batches, none lost
    # Replayed through the engine alone, batch by batch: the same parameters, the same
    # epoch mean loss (Keras' loop wrote no stale state over the engine's updates).
    reference, (x, y) = tiny(), clips()
    losses = [
        float(reference.engine.train_clip(x[i : i + B], y[i : i + B])["loss"])
        for _ in range(4)
        for i in range(0, 8, B)
    ]
    for a, b in zip(weights(model), weights(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert history["loss"][-1] == pytest.approx(np.mean(losses[-4:]), rel=1e-5)
    # The last epoch's validation is an evaluation of the parameters fit ended with.
    final = model.evaluate(*clips(4, 5), verbose=0, return_dict=True)
    for name in ("loss", "clip_accuracy", "video_accuracy", "num_clips"):
        assert history[f"val_{name}"][-1] == pytest.approx(final[name], rel=1e-6), name


def test_a_py_dataset_trains_as_the_arrays_do():
    x, y = clips()

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[i * B : (i + 1) * B], y[i * B : (i + 1) * B]

    arrays, dataset = tiny(), tiny()
    arrays.fit(x, y, epochs=2, shuffle=False, verbose=0)
    history = dataset.fit(Batches(), epochs=2, shuffle=False, verbose=0).history
    assert len(history["loss"]) == 2 and int(dataset.optimizer.iterations) == 8
    for a, b in zip(weights(dataset), weights(arrays)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_nan_batch_warns_reports_a_nan_loss_and_terminate_on_nan_stops():
    model = tiny()
    x, y = clips()
    x[2, 3] = np.nan  # batch 2 of 4
    before = weights(model)
    with pytest.warns(RuntimeWarning, match="NaN/Inf, so the update was skipped"):
        history = model.fit(
            x,
            y,
            epochs=3,
            shuffle=False,
            verbose=0,
            callbacks=[keras.callbacks.TerminateOnNaN()],
        ).history
    assert len(history["loss"]) == 1 and np.isnan(history["loss"][0])
    assert history["non_finite_steps"] == [1]
    assert int(model.optimizer.iterations) == 1  # batch 1 applied, batch 2 skipped, stopped
    after = weights(model)
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))


def test_fit_refuses_arrays_that_end_in_a_partial_batch(trained):
    model, _ = trained
    x, y = clips(7)
    with pytest.raises(ValueError, match="not a multiple of the model's batch"):
        model.fit(x, y, epochs=1, verbose=0)


def test_evaluate_reports_the_clip_and_video_accuracy_of_predict(trained):
    model, _ = trained
    videos = np.array([0, 0, 1, 1, 2, 2, 3], "int64")  # 4 videos, of 2 clips but the last
    # 7 clips: the last batch is padded, its padding unscored
    x, y = clips(7, seed=1, labels=videos % C)
    data = {"frames": x, "label": y, "video_index": videos}
    result = model.evaluate(data, verbose=0, return_dict=True)
    p = model.predict(x, verbose=0)  # p(clip): outputs averaged over the scored steps
    assert p.shape == (7, C)
    assert result["num_clips"] == 7 and result["num_videos"] == 4
    assert result["clip_accuracy"] == pytest.approx(np.mean(p.argmax(-1) == y))
    assert result["accuracy"] == pytest.approx(result["clip_accuracy"])
    per_video = [p[videos == v].mean(0).argmax() == y[videos == v][0] for v in range(4)]
    assert result["video_accuracy"] == pytest.approx(np.mean(per_video))
    # Each clip a video of its own when the data names none.
    alone = model.evaluate(x, y, verbose=0, return_dict=True)
    assert alone["num_videos"] == 7
    assert alone["video_accuracy"] == pytest.approx(result["clip_accuracy"])


def test_predict_gives_a_row_per_clip_and_per_step_outputs(trained):
    model, _ = trained
    x, _ = clips(5, seed=2)
    p = model.predict(x, verbose=0)
    steps = model.predict(x, verbose=0, per_step=True)
    assert p.shape == (5, C) and steps.shape == (5, K, C)
    # A padded last batch: its clip is predicted as in a full one.
    np.testing.assert_allclose(p[:4], model.predict(x[:4], verbose=0), atol=1e-6)
    # p(clip) is the mean of the scored steps' outputs (the last ones: the pipeline is full).
    first = model.engine.mode.first_step(model.pipeline)
    np.testing.assert_allclose(p, steps[:, first - 1 :].mean(1), atol=1e-5)


def test_save_and_load_model_predict_the_same_with_the_optimizer_state(trained, tmp_path):
    model, _ = trained
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.engine.mode.name == "skip_sideways"
    x, _ = clips(4, seed=3)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 16
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def test_with_batch_size_one_predicts_each_stream_as_the_batch_did(trained):
    model, _ = trained
    one = model.with_batch_size(1)
    assert one.pipeline.batch_size == 1 and one.engine.batch_per_process == 1
    x, _ = clips(4, seed=4)
    p = model.predict(x, verbose=0)
    np.testing.assert_allclose(one.predict(x, verbose=0), p, atol=1e-5)
    np.testing.assert_allclose(one.predict(x[3:], verbose=0)[0], p[3], atol=1e-5)
    assert model.pipeline.batch_size == B  # the model itself is left as it was


NO_TENSORFLOW = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import keras
    import sideways_tf as sw
    import sideways_tf.keras_model
    from sideways_tf.models import convnet
    from test_keras_jax import B, C, FRAME, clips

    def imported():
        return "tensorflow" in sys.modules

    assert not imported(), "import sideways_tf.keras_model imported TensorFlow"
    # (not keras.utils.set_random_seed: where TensorFlow is installed, it imports it to seed it)
    pipeline = convnet.tiny_conv_pipeline(
        batch_size=B, frame_shape=FRAME, task=sw.tasks.Classification(num_classes=C),
        topology="skip(2)",
    )
    model = sw.SidewaysModel(pipeline=pipeline)
    model.compile(optimizer="adam", mode="skip_sideways", metrics=["accuracy"])
    x, y = clips(4)
    model.fit(x, y, epochs=1, verbose=0)
    assert not imported(), "fit imported TensorFlow"
    model.evaluate(x, y, verbose=0)
    assert not imported(), "evaluate imported TensorFlow"
    p = model.predict(x, verbose=0)
    assert not imported(), "predict imported TensorFlow"

    # Keras itself imports TensorFlow where it is installed (serialize_keras_object, under
    # get_config, asks whether it is): the rest runs as if it were not.
    sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError
    keras.utils.set_random_seed(0)
    one = model.with_batch_size(1)
    assert abs(one.predict(x[:1], verbose=0) - p[:1]).max() < 1e-5
    model.save({path!r})
    loaded = keras.saving.load_model({path!r})
    assert abs(loaded.predict(x, verbose=0) - p).max() < 1e-6
    loaded.fit(x, y, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations) == 4
    print("ran without TensorFlow")
    """
)


@pytest.mark.slow
def test_the_jax_path_runs_without_tensorflow(tmp_path):
    """Under KERAS_BACKEND=jax: import, fit, evaluate and predict import no TensorFlow;
    with_batch_size, save, load_model and more fit run where it is not installed.
    (jax is in the test extra: a missing jax fails here, it is not skipped.)"""
    tests = os.path.dirname(os.path.abspath(__file__))
    script = NO_TENSORFLOW.format(tests=tests, path=str(tmp_path / "model.keras"))
    run = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "KERAS_BACKEND": "jax"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "ran without TensorFlow", run.stdout


OTHER_BACKEND = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import keras
    import sideways_tf.keras_model  # (registers SidewaysModel for load_model)
    from test_keras_jax import clips

    model = keras.saving.load_model({path!r})
    result = model.evaluate(*clips(7, 1), verbose=0, return_dict=True)
    before = model.predict(clips(4, 3)[0], verbose=0)
    model.fit(*clips(), epochs=1, shuffle=False, verbose=0)
    after = model.predict(clips(4, 3)[0], verbose=0)
    print(json.dumps([keras.backend.backend(), result, before.tolist(), after.tolist()]))
    """
)


@pytest.mark.slow
def test_a_model_saved_on_one_backend_evaluates_and_trains_alike_on_the_other(trained, tmp_path):
    """The .keras file is the same on both backends: loaded on the other one, the model
    reports the same evaluation, predicts the same, and an epoch more trains it alike."""
    import importlib.util
    import json

    other = "tensorflow" if keras.backend.backend() == "jax" else "jax"
    assert importlib.util.find_spec(other) is not None, (
        f"{other} is not installed; pip install -e '.[test]' installs both backends"
    )
    model, _ = trained
    path = str(tmp_path / "model.keras")
    model.save(path)
    here = keras.saving.load_model(path)  # (a copy: the fixture stays as it was)
    result = here.evaluate(*clips(7, 1), verbose=0, return_dict=True)
    before = here.predict(clips(4, 3)[0], verbose=0)
    here.fit(*clips(), epochs=1, shuffle=False, verbose=0)
    after = here.predict(clips(4, 3)[0], verbose=0)
    tests = os.path.dirname(os.path.abspath(__file__))
    run = subprocess.run(
        [sys.executable, "-c", OTHER_BACKEND.format(tests=tests, path=path)],
        env={**os.environ, "KERAS_BACKEND": other},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    backend, their_result, their_before, their_after = json.loads(run.stdout.splitlines()[-1])
    assert backend == other
    for name in ("clip_accuracy", "video_accuracy", "num_clips", "accuracy"):
        assert their_result[name] == result[name], name
    assert their_result["loss"] == pytest.approx(result["loss"], rel=1e-5)
    np.testing.assert_allclose(their_before, before, atol=1e-5)
    np.testing.assert_allclose(their_after, after, atol=1e-3)
