"""keras.applications networks (weights=None, 32x32 frames) cut into 4 units and trained.

MobileNetV2 (alpha=0.35) and ResNet50, each in all four modes (benchmarks/applications.py
runs them longer). The toy task is learnable
in a few dozen steps: two classes, bright vs dark clips.
"""

import keras
import numpy as np
import pytest

import sideways_tf as sw
from sideways_tf import cut

pytestmark = pytest.mark.slow

FRAME = (32, 32, 3)  # the smallest input keras.applications accepts
BATCH = 2  # (ResNet50's strided 1x1 shortcuts need an even batch on CPU: Engine says so)
TOPOLOGY = {
    "frame_bp": "skip(2)",
    "bptt": "skip(2)",
    "sideways": "chain",
    "skip_sideways": "skip(2)",
}
STEPS = 16


def mobilenet_v2():
    return keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=FRAME, alpha=0.35
    )


def resnet50():
    return keras.applications.ResNet50(weights=None, include_top=False, input_shape=FRAME)


def bright_dark(num_frames, seed):
    """Clips [B, K, 32, 32, 3] of noise around +0.5 (label 1) or -0.5 (label 0); labels [B]."""
    rng = np.random.default_rng(seed)
    labels = np.arange(BATCH, dtype=np.int32) % 2
    level = np.where(labels == 1, 0.5, -0.5)[:, None, None, None, None]
    clips = level + rng.uniform(-0.5, 0.5, size=(BATCH, num_frames, *FRAME))
    return clips.astype("float32"), labels


def cut_names(units):
    """The layer names after which `units` were cut (the last layer of each but the top)."""
    return [u.module.layers[-1].name for u in units[:-1]]


@pytest.fixture(scope="module")
def mobilenet_cuts():
    """The FLOP-balanced 4-unit cuts of MobileNetV2 (found once; each test cuts a fresh copy)."""
    units = sw.units_from_model(sw.replace_batch_norm(mobilenet_v2()), num_units=4)
    assert len(units) == 4
    return cut_names(units)


def pipeline_of(make_base, cuts, topology, seed=0):
    """A fresh copy of the network, BatchNorm replaced, cut after `cuts`, with a Dropout head."""
    keras.utils.set_random_seed(seed)
    units = sw.units_from_model(sw.replace_batch_norm(make_base()), cut_after=cuts)
    head = keras.Sequential(
        [keras.layers.GlobalAveragePooling2D(), keras.layers.Dropout(0.3), keras.layers.Dense(2)]
    )
    return sw.Pipeline(units, topology, head=head, batch_size=BATCH, frame_shape=FRAME)


def clip_length(engine):
    """K: the mode's shortest clip plus a little (bptt's trace grows with K)."""
    return max(engine.mode.min_frames(engine.pipeline)[0] + 1, 4)


def train_and_check(pipeline, mode, steps=STEPS):
    """`steps` steps on bright/dark clips; asserts finite, falling loss, every variable moved."""
    engine = sw.Engine(pipeline, mode, keras.optimizers.Adam(1e-3))
    num_frames = clip_length(engine)
    before = [np.array(v) for v in pipeline.trainable_variables]
    losses = []
    for step in range(steps):
        clips, labels = bright_dark(num_frames, seed=step)
        losses.append(float(engine.train_clip(clips, labels)["loss"]))
    assert np.all(np.isfinite(losses)), losses
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses
    still = [
        v.path
        for b, v in zip(before, pipeline.trainable_variables)
        if np.array_equal(b, np.array(v))
    ]
    assert not still, f"{mode}: {len(still)} variables never updated, e.g. {still[:5]}"
    return losses


def test_mobilenet_v2_with_batch_norm_is_refused_naming_the_layer_and_the_fix():
    with pytest.raises(
        ValueError, match=r"holds BatchNormalization \(bn_Conv1.*replace_batch_norm"
    ):
        sw.units_from_model(mobilenet_v2(), num_units=4)


@pytest.mark.parametrize("mode", list(TOPOLOGY))
def test_mobilenet_v2_cut_in_4_units_learns_in_every_mode(mobilenet_cuts, mode):
    pipeline = pipeline_of(mobilenet_v2, mobilenet_cuts, TOPOLOGY[mode])
    assert pipeline.num_units == 4 and not any(
        cut.batch_norm_layers(u.module) for u in pipeline.units
    )
    train_and_check(pipeline, mode)


def test_fidelity_on_a_cut_mobilenet_with_dropout_is_exact_at_the_top_and_changes_nothing(
    mobilenet_cuts,
):
    pipeline = pipeline_of(mobilenet_v2, mobilenet_cuts, "skip(2)")
    engine = sw.Engine(pipeline, "skip_sideways", keras.optimizers.Adam(1e-3))
    clips, labels = bright_dark(clip_length(engine), seed=0)
    rng = np.random.default_rng(1)
    for b in pipeline.state_variables():  # buffers mid-stream: a reset or a write would show
        b.assign(rng.normal(size=b.shape).astype("float32"))
    every = pipeline.variables + list(engine.optimizer.variables)  # parameters, buffers
    before = [np.array(v) for v in every]
    fidelity = engine.gradient_fidelity(clips, labels)
    cosine = np.asarray(fidelity["cosine"])
    assert cosine.shape == (4,)
    np.testing.assert_allclose(cosine[-1], 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(fidelity["norm_ratio"])[-1], 1.0, atol=1e-4)
    changed = [v.path for b, v in zip(before, every) if not np.array_equal(b, np.array(v))]
    assert not changed, changed


@pytest.fixture(scope="module")
def resnet_cuts():
    """The FLOP-balanced 4-unit cuts of ResNet50; at B = 3 its strided 1x1 shortcuts are
    refused before they could abort the process (oneDNN)."""
    units = sw.units_from_model(sw.replace_batch_norm(resnet50()), num_units=4)
    odd = sw.Pipeline(units, "chain", head=keras.layers.Dense(2), batch_size=3, frame_shape=FRAME)
    with pytest.raises(ValueError, match="TF_ENABLE_ONEDNN_OPTS=0"):
        sw.Engine(odd, "sideways", keras.optimizers.Adam(1e-3))
    return cut_names(units)


@pytest.mark.parametrize("mode", list(TOPOLOGY))
def test_resnet50_cut_in_4_units_learns_in_every_mode(resnet_cuts, mode):
    pipeline = pipeline_of(resnet50, resnet_cuts, TOPOLOGY[mode])
    train_and_check(pipeline, mode, steps=10)  # (about 1 s a step)
