"""The engine: one update function for every mode, devices, retracing, bad input."""

import keras
import numpy as np
import pytest
from toy import compile_fn, conv_pipeline, dense_pipeline, flat, random_clip, rule_grads

import sideways_tf as sw
from sideways_tf import backend, engine

MODE_TOPOLOGY = [
    ("frame_bp", "skip(2)"),
    ("bptt", "skip(2)"),
    ("sideways", "chain"),
    ("skip_sideways", "skip(2)"),
    ("skip_sideways", "dense(2)"),
]


@pytest.mark.parametrize("fusion", ["sum", "concat", "gated"])
@pytest.mark.parametrize("mode, topology", MODE_TOPOLOGY)
def test_every_variable_gets_a_finite_nonzero_update(mode, topology, fusion):
    pipeline = conv_pipeline(topology=topology, fusion=fusion)
    eng = sw.Engine(pipeline, mode, keras.optimizers.SGD(0.1))
    before = [np.array(v) for v in eng.variables]
    clip, labels = random_clip(pipeline, 2 * pipeline.fill_steps + 3)
    metrics = eng.train_clip(clip, labels)
    assert np.isfinite(float(metrics["loss"]))
    for v, old in zip(eng.variables, before):
        new = np.array(v)
        assert np.all(np.isfinite(new)), v.path
        assert np.any(new != old), f"{mode}/{topology}/{fusion}: {v.path} was not updated"


def test_one_trace_for_many_clips(monkeypatch):
    # The Python bodies run once per trace (tf.function's or jax.jit's), never per call.
    traces = {"_update_fn": 0, "_predict_fn": 0}

    def counted(name):
        method = getattr(sw.Engine, name)

        def body(*args, **kwargs):
            traces[name] += 1
            return method(*args, **kwargs)

        return body

    for name in traces:
        monkeypatch.setattr(sw.Engine, name, counted(name))
    pipeline = dense_pipeline("skip(2)")
    eng = sw.Engine(pipeline, "skip_sideways", keras.optimizers.SGD(0.1))
    for seed in range(4):
        eng.train_clip(*random_clip(pipeline, 10, seed=seed))
        eng.predict_clip(random_clip(pipeline, 10, seed=seed)[0])
    assert traces == {"_update_fn": 1, "_predict_fn": 1}
    if backend.is_tensorflow():
        assert eng._update.experimental_get_tracing_count() == 1
        assert eng._predict.experimental_get_tracing_count() == 1


@pytest.mark.tf_only  # Unit(device="CPU:1"): tf.device placement on the 4 logical CPUs
@pytest.mark.parametrize("rule", [engine.sideways_gradients, engine.bptt_gradients])
def test_same_gradients_on_one_device_and_on_two(rule):
    one = conv_pipeline(topology="skip(2)", devices=["CPU:0"])
    two = conv_pipeline(topology="skip(2)", devices=["CPU:0", "CPU:1"])
    two.set_weights(one.get_weights())
    # The second half of the units, their parameters and buffers live on CPU:1.
    assert "CPU:1" in two.units[-1].output_buffer.value.device
    assert "CPU:1" in two.units[-1].module.weights[0].value.device
    assert "CPU:0" in two.units[0].module.weights[0].value.device
    clip, labels = random_clip(one, 9)

    def grads(p):
        return flat(compile_fn(lambda c, y: rule_grads(rule, p, c, y), p)(clip, labels))

    for g1, g2 in zip(grads(one), grads(two)):
        np.testing.assert_allclose(g2, g1, rtol=1e-5, atol=1e-7)


def test_streaming_updates_every_n_steps_and_carries_state():
    pipeline = dense_pipeline("chain")
    eng = sw.Engine(pipeline, "sideways", keras.optimizers.SGD(0.1), update_every=4)
    eng.train_clip(*random_clip(pipeline, 12))
    assert int(eng.optimizer.iterations) == 3
    assert int(eng.frames_seen) == 12  # the state ran on across the three chunks
    with pytest.raises(ValueError, match="not a multiple of update_every=4"):
        eng.train_clip(*random_clip(pipeline, 10))


def test_carry_state_between_clips_skips_refill():
    pipeline = dense_pipeline("chain", num_units=3)
    fresh = sw.Engine(pipeline, "sideways", keras.optimizers.SGD(0.0))
    carried = sw.Engine(pipeline, "sideways", keras.optimizers.SGD(0.0), carry_state=True)
    clip, labels = random_clip(pipeline, 8)
    for _ in range(2):
        m_fresh, m_carried = fresh.train_clip(clip, labels), carried.train_clip(clip, labels)
    assert float(m_fresh["valid_steps"]) == 8 - pipeline.fill_steps + 1
    assert float(m_carried["valid_steps"]) == 8  # full from its first step
    assert int(carried.frames_seen) == 16 and int(fresh.frames_seen) == 8


def test_prediction_leaves_training_state_alone():
    pipeline = dense_pipeline("skip(2)")
    eng = sw.Engine(pipeline, "skip_sideways", keras.optimizers.SGD(0.1), carry_state=True)
    clip, labels = random_clip(pipeline, 8)
    eng.train_clip(clip, labels)
    state = [np.array(v) for v in pipeline.state_variables()]
    logits = eng.predict_clip(clip)
    assert logits.shape == (2, 3)
    for v, old in zip(pipeline.state_variables(), state):
        np.testing.assert_array_equal(np.array(v), old)


def test_gradient_fidelity_is_exact_at_the_top_and_approximate_below():
    pipeline = dense_pipeline("chain", num_units=3)
    eng = sw.Engine(pipeline, "sideways", keras.optimizers.SGD(0.1))
    fid = {k: np.asarray(v) for k, v in eng.gradient_fidelity(*random_clip(pipeline, 12)).items()}
    assert fid["cosine"].shape == (3,)
    # The top unit's gradient is exact; below it, stale messages make it approximate.
    np.testing.assert_allclose([fid["cosine"][-1], fid["norm_ratio"][-1]], [1.0, 1.0], rtol=1e-4)
    assert np.all(fid["cosine"][:-1] < 0.999) and np.all(fid["cosine"] > -1.0)


# -- Bad input -------------------------------------------------------------------


@pytest.fixture
def chain_engine():
    pipeline = dense_pipeline("chain", batch=2, dim=5)
    return sw.Engine(pipeline, "sideways", keras.optimizers.SGD(0.1))


def test_frame_of_wrong_shape(chain_engine):
    with pytest.raises(
        ValueError, match=r"frames have shape \(6,\).*built for frames of shape \(5,\)"
    ):
        chain_engine.train_clip(np.zeros((2, 8, 6), "float32"), np.zeros(2, "int32"))


def test_frame_of_wrong_dtype(chain_engine):
    with pytest.raises(TypeError, match="dtype uint8.*ops.cast"):
        chain_engine.train_clip(np.zeros((2, 8, 5), "uint8"), np.zeros(2, "int32"))


def test_batch_size_other_than_buffers(chain_engine):
    with pytest.raises(ValueError, match="batch size 3.*batch_size=2.*drop_remainder=True"):
        chain_engine.train_clip(np.zeros((3, 8, 5), "float32"), np.zeros(3, "int32"))


def test_clip_without_time_axis(chain_engine):
    with pytest.raises(ValueError, match=r"expected \[B, K, \*frame\]"):
        chain_engine.train_clip(np.zeros((2, 5), "float32"), np.zeros(2, "int32"))


def test_edge_to_a_later_unit():
    with pytest.raises(ValueError, match="must go to a later unit"):
        dense_pipeline([(0, 1), (1, 2), (3, 2), (2, 3)])


def test_device_that_does_not_exist():
    if backend.is_tensorflow():
        message = "'CPU:9' does not exist.*CPU:0"
    else:  # a unit's own device is a tf.device placement: refused on JAX, naming the fix
        message = r"Unit\(device='CPU:9'\).*TensorFlow backend.*leave device=None"
    with pytest.raises(ValueError, match=message):
        sw.Unit(keras.layers.Dense(3), device="CPU:9")


def test_mode_must_fit_topology():
    with pytest.raises(ValueError, match="use mode='skip_sideways'"):
        sw.Engine(dense_pipeline("skip(2)"), "sideways", keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="needs skip edges"):
        sw.Engine(dense_pipeline("chain"), "skip_sideways", keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="'backprop' is not a mode"):
        sw.Engine(dense_pipeline("chain"), "backprop", keras.optimizers.SGD(0.1))


def test_an_engine_without_optimizer_measures_fidelity_and_refuses_to_train():
    pipeline = dense_pipeline("skip(2)", num_units=3)
    eng = sw.Engine(pipeline, "skip_sideways")
    clip, labels = random_clip(pipeline, 10)
    fidelity = eng.gradient_fidelity(clip, labels)
    assert fidelity["cosine"].shape == (3,) and float(fidelity["cosine"][-1]) > 0.999
    before = [np.array(v) for v in eng.variables]
    with pytest.raises(ValueError, match="no optimizer"):
        eng.train_clip(clip, labels)
    assert all(np.array_equal(np.array(v), b) for v, b in zip(eng.variables, before))


def test_the_engine_checks_clips_labels_and_unit_outputs_before_any_trace():
    pipeline = dense_pipeline("chain", num_units=4)  # T_fill = 4: sideways needs K >= 7
    eng = sw.Engine(pipeline, "sideways", keras.optimizers.Adam(0.1))
    before = [np.array(v) for v in eng.variables]
    clip, labels = random_clip(pipeline, 3)
    with pytest.raises(ValueError, match=r"K=3 frames \(the clip's K, axis 1\).*at least 7"):
        eng.train_clip(clip, labels)
    assert all(np.array_equal(b, np.array(v)) for b, v in zip(before, eng.variables))
    clip, labels = random_clip(pipeline, 8)
    with pytest.raises(ValueError, match=r"labels have shape \(2, 3\).*One-hot or per-frame"):
        eng.train_clip(clip, np.eye(3, dtype="int32")[labels])
    with pytest.raises(ValueError, match="labels have dtype string.*integer class indices"):
        eng.train_clip(clip, np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"labels hold \[7\], outside \[0, 3\).*num_classes"):
        eng.train_clip(clip, np.array([0, 7], "int32"))


class _Liar(keras.layers.Layer):
    """Declares [B, 5] and returns [B, 4]."""

    def call(self, x):
        return x[:, :4]

    def compute_output_shape(self, shape):
        return shape


def test_a_unit_whose_output_is_not_what_it_declared_is_named():
    units = [sw.Unit(keras.layers.Dense(5), name="fine"), sw.Unit(_Liar(), name="liar")]
    pipeline = sw.Pipeline(units, head=keras.layers.Dense(3), batch_size=2, frame_shape=(5,))
    with pytest.raises(ValueError, match=r"^Unit 2 \('liar'\) returned an output of shape") as e:
        sw.Engine(pipeline, "sideways", keras.optimizers.SGD(0.1)).train_clip(
            *random_clip(pipeline, 6)
        )
    # One message, not TensorFlow's autograph report; the traceback ends at the library's call.
    assert "in user code" not in str(e.value) and "\n" not in str(e.value)
    assert e.traceback[-1].path.name == "engine.py"
    assert len(e.traceback) <= 3, e.traceback  # this test, Engine.train_clip (one_message)


def test_fidelity_changes_no_variable_and_is_exact_at_the_top_with_dropout():
    keras.utils.set_random_seed(0)
    block = lambda: keras.Sequential([keras.layers.Dense(8, "tanh"), keras.layers.Dropout(0.5)])  # noqa: E731
    units = [sw.Unit(block(), name=f"u{i}") for i in range(3)]
    pipeline = sw.Pipeline(units, head=keras.layers.Dense(3), batch_size=2, frame_shape=(5,))
    eng = sw.Engine(pipeline, "sideways", keras.optimizers.SGD(0.1))
    clip, labels = random_clip(pipeline, 8)
    eng.train_clip(clip, labels)  # (training draws masks: the seed generators move here)
    everything = [*pipeline.variables, *eng.optimizer.variables]
    before = [np.array(v) for v in everything]
    first = eng.gradient_fidelity(clip, labels)
    second = eng.gradient_fidelity(clip, labels)
    for v, b in zip(everything, before):
        np.testing.assert_array_equal(np.array(v), b, err_msg=v.path)
    assert float(first["cosine"][-1]) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(np.array(first["cosine"]), np.array(second["cosine"]))


def test_a_plain_strided_1x1_conv_trained_at_an_odd_batch_is_refused_naming_it():
    """TensorFlow's oneDNN CPU kernel for its gradient aborts the process: refused there.

    On JAX (XLA's kernels) there is no such kernel, and the same pipeline trains.
    """

    def unit(stride):
        return sw.Unit(keras.Sequential([keras.layers.Conv2D(4, 1, strides=stride, name="c")]))

    def build(batch, stride):
        return sw.Pipeline(
            [unit(stride), unit(1)],
            "chain",
            head=keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)]),
            batch_size=batch,
            frame_shape=(8, 8, 3),
        )

    if backend.is_jax():
        eng = sw.Engine(build(3, 2), "sideways", keras.optimizers.Adam(1e-3))
        clip = np.random.default_rng(0).normal(size=(3, 4, 8, 8, 3)).astype("float32")
        metrics = eng.train_clip(clip, np.array([0, 1, 0], "int32"))
        assert bool(metrics["applied"]) and np.isfinite(float(metrics["loss"]))
    else:
        with pytest.raises(
            ValueError, match=r"1x1 convolutions with a stride > 1.*odd batch \(B = 3"
        ):
            sw.Engine(build(3, 2), "sideways", keras.optimizers.Adam(1e-3))
    sw.Engine(build(2, 2), "sideways", keras.optimizers.Adam(1e-3))  # even: no abort, accepted
    sw.Engine(build(3, 1), "sideways", keras.optimizers.Adam(1e-3))  # unstrided: accepted
    sw.Engine(build(3, 2), "sideways")  # predicting only: no gradient kernel
