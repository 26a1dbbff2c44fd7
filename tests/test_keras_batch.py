"""SidewaysModel's batch size set free, and its input refused before the first step
(issue 26, items 4 and 5): weights of any B, with_batch_size, partial batches, clips
with no scored step, a softmax head, class_weight, count_params."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from toy import dense_pipeline

import sideways_tf as sw


def dense_model():
    """Three Dense units on vector frames [2, 5] (a chain: T_fill = 3), compiled."""
    model = sw.SidewaysModel(pipeline=dense_pipeline())
    model.compile(optimizer=keras.optimizers.SGD(0.1), mode="sideways")
    return model


def vector_clips(n, num_frames=6, seed=0):
    """(clips [n, K, 5] float32, labels [n] int32) for dense_model."""
    rng = np.random.default_rng(seed)
    clips = rng.normal(size=(n, num_frames, 5)).astype("float32")
    return clips, rng.integers(0, 3, n).astype("int32")


# -- The batch size set free after training (item 4) ------------------------------------


def skip_model(batch, seed=0):
    """Three Dense units over skip(2) (delay lines, messages: every kind of buffer), B clips."""
    model = sw.SidewaysModel(pipeline=dense_pipeline("skip(2)", batch=batch, seed=seed))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), mode="skip_sideways")
    return model


def test_weights_trained_at_b4_load_into_a_b1_model_and_predict_the_same_per_stream(tmp_path):
    clips, labels = vector_clips(4)
    trained = skip_model(batch=4)
    trained.fit(clips, labels, epochs=2, verbose=0)
    want = trained.predict(clips, verbose=0)  # [4, 3]: the 4 clips at once
    trained.save_weights(str(tmp_path / "b4.weights.h5"))
    trained.save(str(tmp_path / "b4.keras"))

    # A model built for one stream takes the file (its buffers are state, not parameters).
    single = skip_model(batch=1, seed=1)
    single.load_weights(str(tmp_path / "b4.weights.h5"))
    assert int(single.optimizer.iterations) == 2
    assert {b.shape[0] for u in single.pipeline.units for b in u.state_variables[:2]} == {1}
    np.testing.assert_allclose(single.predict(clips, verbose=0), want, rtol=1e-5, atol=1e-5)

    # with_batch_size: the same model for one stream, compiled alike; the model is untouched.
    one = trained.with_batch_size(1)
    assert (one.pipeline.batch_size, one.engine.mode.name) == (1, "skip_sideways")
    for a, b in zip(one.optimizer.variables, trained.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))  # the optimizer's state too
    np.testing.assert_allclose(one.predict(clips, verbose=0), want, rtol=1e-5, atol=1e-5)
    assert trained.pipeline.units[0].output_buffer.shape[0] == 4
    loaded = keras.saving.load_model(str(tmp_path / "b4.keras")).with_batch_size(1)
    np.testing.assert_allclose(loaded.predict(clips, verbose=0), want, rtol=1e-5, atol=1e-5)


def test_fit_refuses_a_partial_last_batch_before_the_first_step_with_advice_for_the_input():
    model = dense_model()  # B = 2
    clips, labels = vector_clips(5)
    with pytest.raises(ValueError, match=r"trim the arrays to 4 clips \(x\[:4\], y\[:4\]\)"):
        model.fit(clips, labels, verbose=0)
    with pytest.raises(ValueError, match=r"model.with_batch_size\(1\)"):
        model.fit(clips, labels, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((clips, labels))
    with pytest.raises(ValueError, match=r"\.batch\(2, drop_remainder=True\)"):
        model.fit(dataset.batch(2), verbose=0)
    with pytest.raises(ValueError, match=r"batches hold 4 clips .* model takes 2 per step"):
        model.fit(dataset.batch(4, drop_remainder=True), verbose=0)
    with pytest.raises(ValueError, match=r"fit\(batch_size=4\), but the model takes 2"):
        model.fit(clips[:4], labels[:4], batch_size=4, verbose=0)
    with pytest.raises(ValueError, match="does not take class_weight"):
        model.fit(clips[:4], labels[:4], class_weight={0: 1.0, 1: 2.0, 2: 1.0}, verbose=0)
    assert int(model.optimizer.iterations) == 0  # nothing trained before any refusal
    # Arrays are batched by the model's B (not Keras' default 32): 4 clips, 2 updates.
    model.fit(clips[:4], labels[:4], verbose=0)
    model.fit(dataset.batch(2, drop_remainder=True), verbose=0)
    assert int(model.optimizer.iterations) == 4


# -- Predict and evaluate; the head; the counts (item 5) --------------------------------


def test_predict_and_evaluate_refuse_clips_with_no_scored_step_naming_the_minimum_length():
    model = dense_model()  # a chain of 3 units: T_fill = 3
    short, labels = vector_clips(2, num_frames=2)
    with pytest.raises(ValueError, match=r"predict got clips of K=2 .* at least 3 frames"):
        model.predict(short, verbose=0)  # (it returned all-zero logits)
    with pytest.raises(ValueError, match=r"at least 3 frames"):
        model.predict(short, verbose=0, per_step=True)
    with pytest.raises(ValueError, match=r"evaluate got clips of K=2 .* T_fill = 3"):
        model.evaluate(short, labels, verbose=0)
    shortest, labels = vector_clips(3, num_frames=3)  # one scored step; a partial batch
    out = model.predict(shortest, verbose=0)
    assert out.shape == (3, 3) and np.abs(out).min() > 0
    assert np.isfinite(model.evaluate(shortest, labels, verbose=0, return_dict=True)["loss"])


@pytest.mark.parametrize(
    "head",
    [
        lambda: keras.layers.Dense(3, activation="softmax"),
        lambda: keras.Sequential([keras.layers.Dense(3), keras.layers.Activation("softmax")]),
        lambda: keras.Sequential([keras.layers.Dense(3), keras.layers.Softmax()]),
    ],
    ids=["dense", "activation", "softmax_layer"],
)
def test_a_head_ending_in_softmax_is_refused_because_the_task_takes_logits(head):
    pipeline = dense_pipeline()
    pipeline = sw.Pipeline(pipeline.units, head=head(), batch_size=2, frame_shape=(5,))
    with pytest.raises(ValueError, match=r"ends in a softmax .* takes logits.*Drop the softmax"):
        sw.SidewaysModel(pipeline=pipeline)


def test_count_params_counts_parameters_not_buffers_which_count_buffers_reports():
    model = dense_model()
    model.pipeline.units[0].module.trainable = False  # non-trainable parameters count too
    pipeline = model.pipeline
    size = lambda variables: sum(int(np.prod(v.shape)) for v in variables)  # noqa: E731
    buffers = size(pipeline.state_variables())
    trainable, frozen = size(pipeline.trainable_weights), size(pipeline.non_trainable_weights)
    assert frozen - buffers == 5 * 5 + 5  # unit 1's Dense
    assert model.count_params() == trainable + frozen - buffers
    assert model.count_buffers() == buffers > 0
    assert keras.Model.count_params(model) == model.count_params() + buffers  # Keras' count
    lines = []
    model.summary(print_fn=lines.append)
    assert f"Parameters (non-trainable): {frozen - buffers:,}" in lines
