"""Model families: they train in every mode, describe their units, scale, and fail clearly."""

import re

import keras
import numpy as np
import pytest
from toy import random_clip

import sideways_tf as sw
from sideways_tf import costs, models
from sideways_tf.models import resnet, vgg

TINY = {"vgg": vgg._tiny_vgg, "resnet": resnet._tiny_resnet}
MODE_TOPOLOGY = [
    ("frame_bp", "chain"),
    ("bptt", "skip(2)"),
    ("sideways", "chain"),
    ("skip_sideways", "skip(2)"),
]


def tiny(family, topology="chain", width_multiplier=1.0, fusion="concat", seed=0):
    keras.utils.set_random_seed(seed)
    return TINY[family](
        batch_size=2,
        frame_shape=(16, 16, 3),
        task=sw.tasks.Classification(num_classes=3),
        width_multiplier=width_multiplier,
        topology=topology,
        fusion=fusion,
    )


def conv_kernel_params(pipeline) -> int:
    return sum(int(np.prod(v.shape)) for v in pipeline.trainable_variables if len(v.shape) == 4)


@pytest.mark.parametrize("mode, topology", MODE_TOPOLOGY)
@pytest.mark.parametrize("family", sorted(TINY))
def test_every_variable_gets_a_finite_nonzero_update(family, mode, topology):
    pipeline = tiny(family, topology)
    eng = sw.Engine(pipeline, mode, keras.optimizers.SGD(0.1))
    before = [np.array(v) for v in eng.variables]
    clip, labels = random_clip(pipeline, 2 * pipeline.fill_steps + 3)
    metrics = eng.train_clip(clip, labels)
    assert np.isfinite(float(metrics["loss"]))
    assert len(eng.variables) == len(pipeline.trainable_variables)
    for v, old in zip(eng.variables, before):
        new = np.array(v)
        assert np.all(np.isfinite(new)), v.path
        assert np.any(new != old), f"{family}/{mode}/{topology}: {v.path} was not updated"


@pytest.mark.parametrize(
    "factory, units, convs",
    [(models.vgg8, 5, 8), (models.vgg16, 6, 16), (models.resnet18, 8, 1 + 16 + 3)],
)
def test_full_size_families_have_their_layers_and_units(factory, units, convs):
    p = factory(
        batch_size=1,
        frame_shape=(32, 32, 3),
        task=sw.tasks.Classification(num_classes=10),
        width_multiplier=0.125,
    )
    assert p.num_units == units
    kernels = [v for v in p.trainable_variables if len(v.shape) == 4]
    assert len(kernels) == convs  # resnet18: stem, 16 block convs, 3 projections
    assert p.output_shapes[-1] == (1, 2, 2, 64)  # stride 16, 512 channels at x1/8
    assert p.top_output_shape == (1, 10)
    assert len({v.path for v in p.variables}) == len(p.variables)  # checkpoint names unique


def test_resnet18_has_the_reference_parameter_count_and_shortcuts():
    # torchvision's resnet18: 11,689,512 parameters (norm scale and offset counted, as here).
    p = models.resnet18(
        batch_size=1, frame_shape=(16, 16, 3), task=sw.tasks.Classification(num_classes=1000)
    )
    assert sum(int(np.prod(v.shape)) for v in p.trainable_variables) == 11_689_512
    # Projection shortcuts live inside the unit of each strided block, and only there.
    with_proj = [u.name for u in p.units if any("/proj/" in v.path for v in u.variables)]
    assert with_proj == ["unit3", "unit5", "unit7"]


@pytest.mark.parametrize("family", sorted(TINY))
def test_describe_lists_every_unit_and_totals_are_the_sums(family):
    pipeline = tiny(family, "skip(2)")
    text = models.describe(pipeline)
    unit_costs = costs.unit_costs(pipeline)
    rows = {
        line.split()[0]: line
        for line in text.splitlines()[2:]
        if line.startswith(("unit", "total"))
    }
    assert list(rows) == [u.name for u in pipeline.units] + ["total"]
    numbers = re.compile(r"([\d,]+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+%$")
    parsed = {k: numbers.search(line).groups() for k, line in rows.items()}
    prefix = re.search(r"fwd (\w?)FLOPs", text).group(1)
    scale = {"T": 1e12, "G": 1e9, "M": 1e6, "K": 1e3, "": 1.0}[prefix]
    for (name, (params, fwd, vjp)), c in zip(parsed.items(), unit_costs):
        assert int(params.replace(",", "")) == c.params, name
        assert float(fwd) > 0 and float(vjp) > 0, name
        assert c.forward_flops > 0 and c.backward_flops > 0
        np.testing.assert_allclose(float(fwd) * scale, c.forward_flops, rtol=0.01)
    params, fwd, vjp = parsed["total"]
    assert int(params.replace(",", "")) == sum(c.params for c in unit_costs)
    assert int(params.replace(",", "")) == sum(
        int(np.prod(v.shape)) for v in pipeline.trainable_variables
    )
    np.testing.assert_allclose(
        float(fwd) * scale, sum(c.forward_flops for c in unit_costs), rtol=0.01
    )
    np.testing.assert_allclose(
        float(vjp) * scale, sum(c.backward_flops for c in unit_costs), rtol=0.01
    )


@pytest.mark.parametrize("family", sorted(TINY))
def test_width_multiplier_scales_conv_parameters_quadratically(family):
    one = conv_kernel_params(tiny(family, width_multiplier=1.0))
    two = conv_kernel_params(tiny(family, width_multiplier=2.0))
    # x4 for every conv but the first, whose input (the frame's 3 channels) does not widen.
    assert 3.5 < two / one <= 4.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(frame_shape=(100, 100, 3)), r"multiples of 16.*image_size = 96"),
        (dict(frame_shape=(112, 112)), r"\(height, width, channels\)"),
        (dict(width_multiplier=0.0), r"width_multiplier must be > 0"),
        (dict(batch_size=0), r"batch_size must be >= 1"),
        (dict(topology="ring"), r"use 'chain', 'skip\(k\)'"),
        (dict(fusion="max"), r"choose one of"),
    ],
)
@pytest.mark.parametrize("factory", [models.vgg8, models.resnet18])
def test_bad_arguments_name_the_fix(factory, kwargs, message):
    args = dict(
        batch_size=2,
        frame_shape=(32, 32, 3),
        task=sw.tasks.Classification(num_classes=3),
        width_multiplier=0.125,
    )
    with pytest.raises(ValueError, match=message):
        factory(**{**args, **kwargs})


def test_bad_layouts_name_the_fix():
    with pytest.raises(ValueError, match=r"add up to the 8 conv layers"):
        models.vgg_pipeline(
            batch_size=2,
            frame_shape=(32, 32, 3),
            task=sw.tasks.Classification(num_classes=3),
            unit_sizes=(4, 3),
        )
    with pytest.raises(ValueError, match=r"one entry per stage"):
        models.resnet_pipeline(
            batch_size=2,
            frame_shape=(32, 32, 3),
            task=sw.tasks.Classification(num_classes=3),
            blocks=(2, 2),
        )


@pytest.mark.parametrize("family", sorted(TINY))
def test_config_round_trip_gives_the_same_network(family):
    pipeline = tiny(family, "skip(2)")
    clone = sw.Pipeline.from_config(pipeline.get_config())
    clone.set_weights(pipeline.get_weights())
    x = np.random.default_rng(0).normal(size=(2, *pipeline.frame_shape)).astype("float32")
    np.testing.assert_allclose(clone.frame_forward(x), pipeline.frame_forward(x), rtol=1e-5)
    assert [type(u.module) for u in clone.units] == [type(u.module) for u in pipeline.units]
