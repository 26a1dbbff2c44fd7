"""keras.applications networks, weights=None, cut into 3 units and trained in skip_sideways.

Each network of NETWORKS is built at its smallest input (32x32; InceptionV3 and
InceptionResNetV2 75x75, Xception 71x71), its BatchNormalization replaced with
each documented norm (sw.replace_batch_norm, "layer" and "group"), cut into 3
units at valid cuts spread over its graph (nested blocks flattened: ConvNeXt's
Sequential stem and downsampling blocks), and:
  - the units, composed, compute the copy's output on a frame (the flattened graph
    is the network's own); without BatchNorm the copy computes the network's;
  - the "group" copy trains one clip in skip_sideways (B=2, K=5, Adam): the loss is
    finite, and every trainable variable gets a finite, non-zero update once the
    pipeline is full.
The topology is the chain plus the skip edge 1 -> 3 (a_1 fused into unit 3's
input): the skip from the frame into unit 2 that skip(2) adds needs the frame to
stride to the first cut's resolution by an integer, which NASNet's stem (32 -> 15)
never allows. The steps run eagerly: a trace of these graphs costs 20-100 s each
on CPU, more than a clip's steps (tests/test_applications.py trains MobileNetV2 and
ResNet50 compiled, in every mode). A clip costs 2-20 s per network eagerly, so
each trains one.

All 40 networks of keras.applications (Keras 3.15) build at these sizes; the four
in EXCLUDED are too large to train beside another CI worker.
`test_every_keras_application_is_listed` fails on a Keras that adds a network,
until it is listed in NETWORKS or in EXCLUDED with its reason.
"""

import gc

import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf as sw
from sideways_tf import cut

pytestmark = pytest.mark.slow

BATCH = 2  # (ResNets' strided 1x1 shortcuts need an even batch on CPU: Engine says so)
TOPOLOGY = [(0, 1), (1, 2), (2, 3), (1, 3)]  # the chain, and a_1 skips unit 2
STEPS = 1  # a clip of K = 5 frames: the pipeline fills, then every unit learns (one update)
# name: (keyword arguments beyond weights=None, include_top=False; frame side).
NETWORKS = {
    "ConvNeXtTiny": ({}, 32),
    "ConvNeXtSmall": ({}, 32),
    "ConvNeXtBase": ({}, 32),
    "DenseNet121": ({}, 32),
    "DenseNet169": ({}, 32),
    "DenseNet201": ({}, 32),
    "EfficientNetB0": ({}, 32),
    "EfficientNetB1": ({}, 32),
    "EfficientNetB2": ({}, 32),
    "EfficientNetB3": ({}, 32),
    "EfficientNetB4": ({}, 32),
    "EfficientNetB5": ({}, 32),
    "EfficientNetB6": ({}, 32),
    "EfficientNetB7": ({}, 32),
    "EfficientNetV2B0": ({}, 32),
    "EfficientNetV2B1": ({}, 32),
    "EfficientNetV2B2": ({}, 32),
    "EfficientNetV2B3": ({}, 32),
    "EfficientNetV2S": ({}, 32),
    "EfficientNetV2M": ({}, 32),
    "InceptionResNetV2": ({}, 75),  # its minimum input
    "InceptionV3": ({}, 75),  # its minimum input
    "MobileNet": ({"alpha": 0.25}, 32),
    "MobileNetV2": ({"alpha": 0.35}, 32),
    "MobileNetV3Small": ({"alpha": 0.75}, 32),
    "MobileNetV3Large": ({"alpha": 0.75}, 32),
    "NASNetMobile": ({}, 32),
    "ResNet50": ({}, 32),
    "ResNet101": ({}, 32),
    "ResNet152": ({}, 32),
    "ResNet50V2": ({}, 32),
    "ResNet101V2": ({}, 32),
    "ResNet152V2": ({}, 32),
    "VGG16": ({}, 32),
    "VGG19": ({}, 32),
    "Xception": ({}, 71),  # its minimum input
}
# Networks that build, cut and compose with both norms (checked by hand), but whose
# training here costs more host memory or time than a CI worker beside another can
# take: peak RSS and time of this test alone, one clip, the 2-core CPU under load.
EXCLUDED = {
    "ConvNeXtLarge": "196M parameters, 11.0 GB, 61 s; ConvNeXtSmall's graph (3-3-27-3), wider",
    "ConvNeXtXLarge": "348M parameters, 16.6 GB, 76 s (two clips); ConvNeXtSmall's graph, wider",
    "EfficientNetV2L": "118M parameters, 5.2 GB, 109 s; EfficientNetV2M's blocks, more of them",
    "NASNetLarge": "85M parameters, 5.3 GB, 193 s; NASNetMobile's cells, more and wider",
}


def test_every_keras_application_is_listed():
    networks = {n for n in dir(keras.applications) if n[0].isupper()}
    assert networks == set(NETWORKS) | set(EXCLUDED), networks ^ (set(NETWORKS) | set(EXCLUDED))


def spread_cuts(model, side: int) -> list[str]:
    """Two valid cuts near 1/3 and 2/3 of the flattened graph, a_1 strideable to a_2.

    (The fusion of a_1 into unit 3 subsamples it by an integer factor, the same on
    both axes.) Reads the cut tensors' shapes from cut's own flattened graph.
    """
    graph = cut._flatten(model)
    found = [(graph.calls[c].name, tuple(t.shape[1:])) for c, t in cut._valid(graph).items()]
    n, best = len(found), None
    for i in range(n):
        for j in range(i + 1, n):
            (h1, w1, _), (h2, w2, _) = found[i][1], found[j][1]
            if h1 % h2 or w1 % w2 or h1 // h2 != w1 // w2:
                continue
            score = abs(i - n / 3) + abs(j - 2 * n / 3)
            if best is None or score < best[0]:
                best = (score, [found[i][0], found[j][0]])
    assert best is not None, f"no pair of valid cuts of {model.name} strides (side {side})"
    return best[1]


def composed(units, frame):
    """a_3 = H_3(H_2(H_1(x))): the units' own modules, one after the other, on [1, H, W, 3]."""
    a = frame
    for unit in units:
        a = unit.module(a, training=False)
    return np.asarray(a)


@pytest.fixture
def eagerly():
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.mark.usefixtures("eagerly")
@pytest.mark.parametrize("name", list(NETWORKS))
def test_application_cut_in_3_units_composes_and_trains_in_skip_sideways(name):
    kwargs, side = NETWORKS[name]
    frame_shape = (side, side, 3)
    keras.utils.set_random_seed(0)
    base = getattr(keras.applications, name)(
        weights=None, include_top=False, input_shape=frame_shape, **kwargs
    )
    frame = np.random.default_rng(0).uniform(-1, 1, size=(1, *frame_shape)).astype("float32")
    reference = np.asarray(base(frame, training=False))
    has_batch_norm = bool(cut.batch_norm_layers(base))

    cuts = None
    for norm in ("layer", "group"):
        fixed = sw.replace_batch_norm(base, norm=norm)
        assert not cut.batch_norm_layers(fixed)
        cuts = cuts or spread_cuts(fixed, side)
        units = sw.units_from_model(fixed, cut_after=cuts)
        assert [u.module.operations[-1].name for u in units[:-1]] == cuts
        whole = np.asarray(fixed(frame, training=False))
        np.testing.assert_allclose(composed(units, frame), whole, rtol=1e-5, atol=1e-5)
        if not has_batch_norm:  # nothing replaced: the copy is the network itself
            np.testing.assert_allclose(whole, reference, rtol=1e-5, atol=1e-5)
    del base, fixed  # only the last copy's units stay (ConvNeXtBase: 88M parameters)
    gc.collect()

    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    pipeline = sw.Pipeline(units, TOPOLOGY, head=head, batch_size=BATCH, frame_shape=frame_shape)
    engine = sw.Engine(pipeline, "skip_sideways", keras.optimizers.Adam(1e-3))
    num_frames = engine.mode.min_frames(pipeline)[0]  # 2 T_fill - 1: the clip fills it
    assert num_frames == 5
    before = [np.array(v) for v in pipeline.trainable_variables]
    rng = np.random.default_rng(1)
    losses = []
    for _ in range(STEPS):
        clips = rng.uniform(-1, 1, size=(BATCH, num_frames, *frame_shape)).astype("float32")
        losses.append(float(engine.train_clip(clips, np.arange(BATCH, dtype="int32") % 2)["loss"]))
    assert np.all(np.isfinite(losses)), losses
    after = [np.array(v) for v in pipeline.trainable_variables]
    paths = [v.path for v in pipeline.trainable_variables]
    bad = [p for p, a in zip(paths, after) if not np.all(np.isfinite(a))]
    assert not bad, f"non-finite after training: {bad[:5]}"
    still = [p for p, b, a in zip(paths, before, after) if np.array_equal(b, a)]
    assert not still, f"{len(still)} of {len(paths)} variables never updated, e.g. {still[:5]}"
