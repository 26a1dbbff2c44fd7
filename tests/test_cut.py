"""Cutting your own functional Keras model into units, and making its norms safe."""

import keras
import numpy as np
import pytest

import sideways_tf as sw
from sideways_tf import cut


@pytest.fixture(scope="module")
def resnet50():
    return keras.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))


def residual_net():
    """A small functional net with BatchNorm and residual blocks (cuts only between blocks)."""
    x = inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(x)
    for k in range(3):
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"b{k}_conv")(x)
        y = keras.layers.BatchNormalization(name=f"b{k}_bn")(y)
        y = keras.layers.ReLU(name=f"b{k}_relu")(y)
        x = keras.layers.Add(name=f"b{k}_add")([x, y])
    return keras.Model(inputs, x, name="resnetish")


def test_batch_norm_is_refused_naming_the_layers_and_the_fix(resnet50):
    with pytest.raises(
        ValueError, match=r"holds BatchNormalization \(conv1_bn.*sw.replace_batch_norm"
    ):
        cut.units_from_model(resnet50, num_units=4)
    assert len(cut.units_from_model(resnet50, num_units=2, allow_batch_norm=True)) == 2


def test_a_cut_that_a_residual_branch_crosses_names_the_branch_and_the_nearest_valid_cuts(resnet50):
    fixed = cut.replace_batch_norm(resnet50)
    valid = cut.valid_cuts(fixed)
    assert "conv2_block1_out" in valid and "conv2_block1_2_conv" not in valid
    with pytest.raises(
        ValueError,
        match=r"after 'conv2_block1_2_conv': a residual branch crosses.*pool1_pool -> "
        r"conv2_block1_0_conv.*nearest valid cuts: 'pool1_pool', 'conv2_block1_add'",
    ):
        cut.units_from_model(fixed, cut_after=["conv2_block1_2_conv"])
    units = cut.units_from_model(fixed, cut_after=["conv2_block3_out", "conv3_block4_out"])
    assert [u.name for u in units] == ["unit1", "unit2", "unit3"]


def test_replace_batch_norm_keeps_gamma_and_beta_and_leaves_no_batch_norm():
    net = residual_net()
    rng = np.random.default_rng(0)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(rng.normal(size=layer.gamma.shape))
            layer.beta.assign(rng.normal(size=layer.beta.shape))
    fixed = cut.replace_batch_norm(net)
    assert cut.batch_norm_layers(fixed) == [] and cut.batch_norm_layers(net)
    for old, new in zip(net.layers, fixed.layers):
        if isinstance(old, keras.layers.BatchNormalization):
            assert isinstance(new, keras.layers.GroupNormalization)
            np.testing.assert_array_equal(np.array(new.gamma), np.array(old.gamma))
            np.testing.assert_array_equal(np.array(new.beta), np.array(old.beta))
        else:
            for a, b in zip(old.weights, new.weights):
                np.testing.assert_array_equal(np.array(a), np.array(b))


@pytest.mark.parametrize("mode, topology", [("sideways", "chain"), ("skip_sideways", "skip(2)")])
def test_a_cut_model_trains_every_variable(mode, topology):
    keras.utils.set_random_seed(0)
    units = cut.units_from_model(cut.replace_batch_norm(residual_net()), num_units=3)
    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    pipeline = sw.Pipeline(units, topology, head=head, batch_size=2, frame_shape=(16, 16, 3))
    engine = sw.Engine(pipeline, mode, keras.optimizers.Adam(1e-2))
    before = [np.array(v) for v in engine.variables]
    rng = np.random.default_rng(0)
    clip = rng.normal(size=(2, 8, 16, 16, 3)).astype("float32")
    metrics = engine.train_clip(clip, np.array([0, 1], "int32"))
    assert np.isfinite(float(metrics["loss"]))
    changed = [not np.array_equal(b, np.array(v)) for b, v in zip(before, engine.variables)]
    assert all(changed), [v.path for v, c in zip(engine.variables, changed) if not c]
