"""Layer contracts of units and skip integrators."""

import keras
import numpy as np
import pytest

import sideways_tf as sw
from sideways_tf import fusion
from sideways_tf.models import convnet


def test_unit_buffers_are_static_nontrainable_and_reset():
    pipeline = sw.Pipeline(
        [
            sw.Unit(keras.layers.Dense(4), name="u1"),
            sw.Unit(keras.layers.Dense(6), name="u2"),
            sw.Unit(keras.layers.Dense(3), name="u3"),
        ],
        topology=[(0, 1), (1, 2), (2, 3), (1, 3, 2)],
        batch_size=2,
        frame_shape=(5,),
    )
    u1, u2, u3 = pipeline.units
    assert [tuple(b.shape) for b in u1.state_variables] == [(2, 4), (2, 4)]
    # The top has no message buffer; its delayed skip keeps a [d, B, *in] line.
    assert [tuple(b.shape) for b in u3.state_variables] == [(2, 3), (2, 2, 4)]
    assert all(not b.trainable for b in pipeline.state_variables())
    # u3 fuses two sources with the default concat: its Dense, the projection (a Dense,
    # vector 4 -> 6) and the mixing Dense, each kernel + bias.
    assert len(u2.trainable_variables) == 2 and len(u3.trainable_variables) == 6
    assert isinstance(u3.fusion, sw.ConcatFusion)
    for b in pipeline.state_variables():
        b.assign(np.ones(b.shape, "float32"))
    pipeline.reset_state()
    assert all(np.all(np.array(b) == 0) for b in pipeline.state_variables())


def test_unit_needs_static_batch():
    unit = sw.Unit(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="static batch size"):
        unit.build([(None, 4)])


def test_unit_rejects_non_layers_and_unknown_fusion():
    with pytest.raises(TypeError, match="keras.layers.Lambda"):
        sw.Unit(lambda x: x)
    with pytest.raises(ValueError, match="Unknown fusion 'mean'"):
        sw.Unit(keras.layers.Dense(3), fusion="mean")


def test_pipeline_config_round_trip_keeps_outputs():
    pipeline = sw.Pipeline(
        [sw.Unit(keras.layers.Dense(4, name="d"), fusion="gated", name=f"u{i}") for i in range(3)],
        topology="skip(2)",
        head=keras.layers.Dense(2),
        batch_size=2,
        frame_shape=(4,),
    )
    clone = sw.Pipeline.from_config(pipeline.get_config())
    assert clone.topology == pipeline.topology
    assert [u.device for u in clone.units] == [u.device for u in pipeline.units]
    clone.set_weights(pipeline.get_weights())
    clip = np.random.default_rng(0).normal(size=(2, 6, 4)).astype("float32")
    np.testing.assert_allclose(clone(clip), pipeline(clip), rtol=1e-6)


@pytest.mark.parametrize("kind", ["sum", "concat", "gated"])
def test_fusion_keeps_the_primary_shape_and_projects_strided_sources(kind):
    layer = fusion.make_fusion(kind)
    primary, skip = np.ones((2, 4, 4, 8), "float32"), np.ones((2, 8, 8, 3), "float32")
    out = layer([primary, skip])
    assert out.shape == (2, 4, 4, 8)
    assert layer.projections[1].stride == 2


def test_sum_fusion_is_the_residual_sum_when_shapes_agree():
    a, b = np.full((2, 3), 1.5, "float32"), np.full((2, 3), 2.0, "float32")
    np.testing.assert_allclose(fusion.SumFusion()([a, b]), a + b)


def test_gated_fusion_starts_half_open():
    a, b = np.zeros((2, 3), "float32"), np.full((2, 3), 2.0, "float32")
    np.testing.assert_allclose(fusion.GatedFusion()([a, b]), 0.5 * b)


def test_fusion_rejects_incompatible_resolutions():
    with pytest.raises(ValueError, match="cannot be strided"):
        fusion.SumFusion()([np.ones((1, 3, 3, 2), "float32"), np.ones((1, 8, 8, 2), "float32")])


def test_strided_pointwise_conv_is_the_strided_1x1_conv_and_trains_at_odd_batches():
    """The fusion's projection: the same map as Conv2D(c, 1, strides=2) with the same
    weights, and a skip pipeline that strides trains at B = 1 and 3 (a plain strided 1x1
    Conv2D aborts the process there: oneDNN's gradient kernel corrupts the heap)."""
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    ours = fusion.StridedPointwiseConv(6, stride=2, use_bias=False)
    plain = keras.layers.Conv2D(6, 1, strides=2, use_bias=False)
    ours.build(x.shape), plain.build(x.shape)
    plain.kernel.assign(ours.kernel)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(plain(x)), atol=1e-6)
    assert ours.compute_output_shape((2, 7, 8, 4)) == (2, 4, 4, 6)
    copy = fusion.StridedPointwiseConv.from_config(ours.get_config())
    assert copy.stride == 2 and copy.strides == (1, 1)
    for batch in (1, 3):
        pipeline = convnet.tiny_conv_pipeline(
            batch_size=batch,
            frame_shape=(16, 16, 3),
            task=sw.tasks.Classification(num_classes=2),
            topology="skip(2)",
        )
        engine = sw.Engine(pipeline, "skip_sideways", keras.optimizers.Adam(1e-3))
        clip = np.random.default_rng(batch).normal(size=(batch, 6, 16, 16, 3)).astype("float32")
        assert np.isfinite(float(engine.train_clip(clip, np.zeros(batch, "int32"))["loss"]))
