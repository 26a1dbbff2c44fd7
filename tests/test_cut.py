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


@pytest.mark.parametrize("norm, kind", [("group", cut.GroupNorm), ("layer", cut.LayerNorm)])
def test_replace_batch_norm_keeps_gamma_and_beta_and_leaves_no_batch_norm(norm, kind):
    net = residual_net()
    rng = np.random.default_rng(0)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(rng.normal(size=layer.gamma.shape))
            layer.beta.assign(rng.normal(size=layer.beta.shape))
    fixed = cut.replace_batch_norm(net, norm=norm)
    assert cut.batch_norm_layers(fixed) == [] and cut.batch_norm_layers(net)
    for old, new in zip(net.layers, fixed.layers):
        if isinstance(old, keras.layers.BatchNormalization):
            assert type(new) is kind
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


def frame(shape=(16, 16, 3), seed=0):
    return np.random.default_rng(seed).normal(size=(1, *shape)).astype("float32")


def composed(units, x):
    """H_L(...H_1(x)): the units' own modules, one after the other."""
    for unit in units:
        x = unit.module(x, training=False)
    return np.asarray(x)


def conv_layers(prefix):
    return [
        keras.layers.Conv2D(4, 3, padding="same", name=f"{prefix}_conv1"),
        keras.layers.ReLU(name=f"{prefix}_relu"),
        keras.layers.Conv2D(4, 3, strides=2, padding="same", name=f"{prefix}_conv2"),
    ]


@pytest.mark.parametrize("with_input", [True, False])
def test_a_plain_sequential_is_cut_and_its_units_compose_to_it(with_input):
    keras.utils.set_random_seed(0)
    first = [keras.Input((16, 16, 3))] if with_input else []
    model = keras.Sequential(first + conv_layers("a") + conv_layers("b"), name="plain")
    names = ["a_conv1", "a_relu", "a_conv2", "b_conv1", "b_relu"]
    assert cut.valid_cuts(model) == names
    units = cut.units_from_model(model, cut_after=["a_conv2", "b_relu"])
    if not with_input:  # no shape to balance FLOPs with: the message says what to give
        with pytest.raises(ValueError, match=r"needs the input shape.*keras.Input\(\(H, W, C\)\)"):
            cut.units_from_model(model, num_units=2)
    pipeline = sw.Pipeline(
        units, "skip(2)", head=keras.layers.Flatten(), batch_size=1, frame_shape=(16, 16, 3)
    )
    assert [u.output_shape_ for u in pipeline.units] == [(1, 8, 8, 4), (1, 8, 8, 4), (1, 4, 4, 4)]
    x = frame()
    np.testing.assert_allclose(composed(units, x), np.asarray(model(x)), rtol=1e-6)
    if with_input:
        balanced = cut.units_from_model(model, num_units=3)
        np.testing.assert_allclose(composed(balanced, x), np.asarray(model(x)), rtol=1e-6)


def model_with_a_nested_block(inner_kind):
    """stem -> a nested block (its own residual inside) -> head convs: the block in the middle."""
    if inner_kind == "functional":
        a = keras.Input((16, 16, 4))
        b = keras.layers.Conv2D(4, 3, padding="same", name="in_conv")(a)
        b = keras.layers.Add(name="in_add")([a, b])
        inner = keras.Model(a, keras.layers.ReLU(name="in_relu")(b), name="inner")
    else:
        inner = keras.Sequential(
            [
                keras.layers.Conv2D(4, 3, padding="same", name="in_conv"),
                keras.layers.ReLU(name="in_relu"),
            ],
            name="inner",
        )
    x = inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(x)
    x = inner(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="top_conv")(x)
    x = keras.layers.ReLU(name="top_relu")(x)
    return keras.Model(inputs, x, name="outer")


@pytest.mark.parametrize("inner_kind", ["functional", "sequential"])
def test_a_nested_model_in_the_middle_is_flattened_and_cut_inside_or_at_its_end(inner_kind):
    keras.utils.set_random_seed(0)
    model = model_with_a_nested_block(inner_kind)
    valid = cut.valid_cuts(model)
    inside = ["in_add"] if inner_kind == "functional" else ["in_conv"]
    assert valid == ["stem", *inside, "in_relu", "top_conv"]
    x = frame()
    for cuts in (["stem", inside[0]], ["inner", "top_conv"]):  # the block's name: its end
        units = cut.units_from_model(model, cut_after=cuts)
        np.testing.assert_allclose(composed(units, x), np.asarray(model(x)), rtol=1e-6)
    assert units[0].module.operations[-1].name == "in_relu"
    if inner_kind == "functional":
        with pytest.raises(
            ValueError, match=r"after 'in_conv': a residual branch crosses.*stem -> in_add"
        ):
            cut.units_from_model(model, cut_after=["in_conv"])


def test_graphs_it_cannot_cut_are_refused_naming_the_layer_and_what_to_do():
    shared = keras.layers.Conv2D(3, 3, padding="same", name="shared_conv")
    x = inputs = keras.Input((8, 8, 3))
    twice = keras.Model(inputs, shared(shared(x)), name="twice")
    with pytest.raises(ValueError, match=r"'shared_conv' is called more than once.*its own layer"):
        cut.valid_cuts(twice)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match=r"got Subclassed.*sw.Unit\(block\)"):
        cut.units_from_model(Subclassed(), num_units=2)

    a = keras.Input((8, 8, 3))
    pair = keras.Model(
        a, [keras.layers.ReLU(name="p1")(a), keras.layers.ReLU(name="p2")(a)], name="pair"
    )
    x = inputs = keras.Input((8, 8, 3))
    y, z = pair(x)
    two = keras.Model(inputs, keras.layers.Add()([y, z]), name="two_out")
    with pytest.raises(ValueError, match=r"nested model 'pair' has 2 outputs.*custom keras.Layer"):
        cut.valid_cuts(two)


class ConvBlock(keras.layers.Layer):
    """A hand-written block: conv, then a norm created in build() (as many blocks do)."""

    def __init__(self, norm="batch", **kwargs):
        super().__init__(**kwargs)
        self.norm_kind = norm
        self.conv = keras.layers.Conv2D(4, 3, padding="same")

    def build(self, input_shape):
        self.conv.build(input_shape)
        if self.norm_kind == "batch":
            self.norm = keras.layers.BatchNormalization(name="late_bn")
        else:
            self.norm = keras.layers.GroupNormalization(groups=1, name="late_gn")
        self.norm.build((*input_shape[:-1], 4))

    def call(self, x):
        return self.norm(self.conv(x))


def test_a_hand_written_unit_with_batch_norm_is_refused_naming_the_layers_and_the_fixes():
    block = keras.Sequential(
        [keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(name="bn")]
    )
    with pytest.raises(
        ValueError,
        match=r"Unit 'unit1' holds BatchNormalization \(bn; 1 layers\).*sw.replace_batch_norm"
        r".*GroupNormalization.*allow_batch_norm=True",
    ):
        sw.Unit(block, name="unit1")
    allowed = sw.Unit(block, allow_batch_norm=True, name="unit1")
    assert sw.Unit.from_config(allowed.get_config()).allow_batch_norm
    sw.Pipeline([allowed], head=keras.layers.Flatten(), batch_size=2, frame_shape=(8, 8, 3))

    # A norm the module creates in build() is caught when the pipeline builds the unit.
    late = sw.Unit(ConvBlock(), name="late")
    with pytest.raises(ValueError, match=r"Unit 'late' holds BatchNormalization \(late_bn"):
        sw.Pipeline([late], head=keras.layers.Flatten(), batch_size=2, frame_shape=(8, 8, 3))
    fine = sw.Unit(ConvBlock(norm="group"), name="fine")
    sw.Pipeline([fine], head=keras.layers.Flatten(), batch_size=2, frame_shape=(8, 8, 3))


def test_replace_batch_norm_refuses_batch_norm_out_of_its_reach_naming_it():
    x = inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, ConvBlock(name="block")(x), name="custom")
    assert cut.batch_norm_layers(model) == ["late_bn"]
    with pytest.raises(ValueError, match=r"inside a custom layer.*\(late_bn\).*GroupNormalization"):
        cut.replace_batch_norm(model)
