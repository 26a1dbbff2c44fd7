"""Moving shapes: output contract, determinism, disjoint splits, and no per-frame leak."""

import hashlib
import time

import gin
import numpy as np
import pytest
import tensorflow as tf

from sideways_tf.data import moving_shapes as ms

# Clean frames: no texture, no noise, so the shape can be located exactly.
CLEAN = {"noise_std": 0.0, "background_texture": 0.0}


def _take(ds: tf.data.Dataset, n: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in next(iter(ds.batch(n))).items()}


def _digests(frames: np.ndarray) -> set[bytes]:
    return {hashlib.sha256(f.tobytes()).digest() for f in frames}


# ----------------------------------------------------------------------------- contract


def test_contract_shapes_dtypes_ranges_and_sizes():
    info = ms.moving_shapes_info()
    ds = ms.moving_shapes_dataset("eval")
    assert ds.element_spec == info.element_spec
    assert info.clip_shape == (16, 32, 32, 3) and info.num_classes == 12
    assert int(ds.cardinality()) == ms.DEFAULT_EVAL_EXAMPLES
    assert ms.moving_shapes_dataset("train").cardinality() == tf.data.INFINITE_CARDINALITY
    assert int(ms.moving_shapes_dataset("train", num_examples=5).cardinality()) == 5

    batch = _take(ds, 64)
    frames = batch["frames"]  # [B, K, H, W, 3]
    assert frames.min() >= -1.0 and frames.max() <= 1.0
    assert abs(frames.mean()) < 0.6  # roughly centred, not a [0, 1] image
    np.testing.assert_array_equal(batch["video_index"], np.arange(64))
    assert set(batch["label"]) <= set(range(12)) and len(set(batch["label"])) > 6


def test_class_names_and_label_layout():
    assert ms.num_classes(3, 4) == 12 and ms.num_classes(5, 2) == 10
    names = ms.class_names(3, 4)
    assert names[:5] == ["square/right", "square/left", "square/down", "square/up", "circle/right"]
    assert names[-1] == "triangle/up"
    info = ms.moving_shapes_info(num_shapes=5, num_directions=2)
    assert info.class_names[info.str2int("diamond/left")] == "diamond/left"
    assert info.int2str(9) == "diamond/left"

    # The eager parameter path and the tf.data graph path agree on every label.
    labels = _take(ms.moving_shapes_dataset("test", 16, seed=3), 16)["label"]
    for i, label in enumerate(labels):
        params = ms.video_params("test", seed=3, index=i)
        assert params["label"] == label == params["shape"][0] * 4 + params["direction"][0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "validation"}, "use one of"),
        ({"num_directions": 3}, "use 2"),
        ({"num_shapes": 6}, "pick 1 to 5"),
        ({"speed": 16}, "speed=2"),
        ({"num_distractors": 1, "distractor_size": 9}, "must be smaller than shape_size"),
        ({"clips_per_video": 0}, "clips_per_video"),
        ({"shape_size": 40}, "shape_size=40"),
    ],
)
def test_bad_options_raise_naming_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ms.moving_shapes_dataset(**kwargs)


def test_gin_binds_the_factory_options():
    try:
        gin.parse_config(
            "sideways_tf.data.moving_shapes_dataset.num_frames = 4\n"
            "moving_shapes_dataset.frame_size = 24\n"
        )
        ds = ms.moving_shapes_dataset("eval", 2)
    finally:
        gin.clear_config()
    assert ds.element_spec["frames"].shape == (4, 24, 24, 3)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_clips_and_clips_depend_only_on_their_index():
    a = _take(ms.moving_shapes_dataset("train", seed=5), 24)
    b = _take(ms.moving_shapes_dataset("train", seed=5), 24)
    np.testing.assert_array_equal(a["frames"], b["frames"])
    np.testing.assert_array_equal(a["label"], b["label"])
    skipped = _take(ms.moving_shapes_dataset("train", seed=5).skip(7), 1)
    np.testing.assert_array_equal(skipped["frames"][0], a["frames"][7])
    other = _take(ms.moving_shapes_dataset("train", seed=6), 24)
    assert not _digests(other["frames"]) & _digests(a["frames"])


def test_splits_and_seeds_never_share_a_clip():
    n = 256
    seen = {}
    for seed in (0, 1):
        for split in ms.SPLITS:
            frames = _take(ms.moving_shapes_dataset(split, n, seed=seed, num_frames=4), n)["frames"]
            digests = _digests(frames)
            assert len(digests) == n
            for other, theirs in seen.items():
                assert not digests & theirs, f"{(seed, split)} repeats clips of {other}"
            seen[(seed, split)] = digests


# ----------------------------------------------------------------------------- geometry


def _centres(gray: np.ndarray, labels: np.ndarray, num_directions: int = 4) -> np.ndarray:
    """Centres of the labelled shape in clean grey frames [N, T, H, W]: int [N, T, 2].

    Found by circular cross-correlation with the label's shape mask.
    """
    n, t, h, w = gray.shape
    masks = ms.shape_masks(3, 9, h, w)[labels // num_directions]  # [N, H, W]
    gray = gray - gray.min(axis=(-2, -1), keepdims=True)  # flat background -> 0
    corr = np.fft.irfft2(
        np.fft.rfft2(gray) * np.conj(np.fft.rfft2(masks))[:, None], s=(h, w)
    )  # [N, T, H, W]
    flat = corr.reshape(n, t, -1).argmax(-1)
    return np.stack([flat // w, flat % w], axis=-1)


def test_motion_matches_label_and_positions_are_uniform_at_every_step():
    n = 2000
    ds = ms.moving_shapes_dataset("eval", n, num_frames=8, **CLEAN)
    batch = _take(ds.map(lambda e: {**e, "frames": tf.reduce_mean(e["frames"], -1)}), n)
    labels = batch["label"]
    direction = labels % 4
    centres = _centres(batch["frames"], labels)  # [N, T, 2]

    # Each step moves by speed (2) along the labelled direction, wrapping at the edges.
    steps = np.array([[0, 1], [0, -1], [1, 0], [-1, 0]]) * 2
    moves = np.mod(np.diff(centres, axis=1) + 16, 32) - 16  # [N, T - 1, 2] in [-16, 16)
    np.testing.assert_array_equal(moves, np.broadcast_to(steps[direction][:, None], moves.shape))

    # Per direction and step, row and column of the centre are uniform over the frame:
    # chi-square with 31 degrees of freedom against its 0.1 % critical value.
    worst = 0.0
    for d in range(4):
        pos = centres[direction == d]  # [n_d, T, 2]
        expected = len(pos) / 32
        for step in range(pos.shape[1]):
            for axis in range(2):
                counts = np.bincount(pos[:, step, axis], minlength=32)
                worst = max(worst, ((counts - expected) ** 2 / expected).sum())
    assert worst < 61.1, worst


def test_shapes_wrap_around_instead_of_leaving_the_frame():
    batch = _take(ms.moving_shapes_dataset("eval", 64, **CLEAN), 64)
    frames = batch["frames"]  # [N, T, H, W, 3]
    background = np.median(frames, axis=(2, 3), keepdims=True)
    mass = np.abs(frames - background).sum(axis=(2, 3, 4))  # [N, T] painted amount
    np.testing.assert_allclose(mass, np.broadcast_to(mass[:, :1], mass.shape), rtol=1e-4)
    # Some clip shows the shape split across an edge (pixels lit on both borders).
    lit = np.abs(frames - background).sum(-1) > 0.1  # [N, T, H, W]
    assert (lit[..., 0, :].any(-1) & lit[..., -1, :].any(-1)).any()
    assert (lit[..., :, 0].any(-1) & lit[..., :, -1].any(-1)).any()


@pytest.mark.parametrize("num_distractors", [0, 2])
def test_mean_frame_is_the_same_for_every_direction_at_every_step(num_distractors):
    n = 2000

    def pooled(example):  # mean over 4x4 blocks keeps the test light: [K, 8, 8, 3]
        frames = tf.nn.avg_pool2d(example["frames"], 4, 4, "VALID")
        return {"frames": frames, "label": example["label"]}

    ds = ms.moving_shapes_dataset("eval", n, num_distractors=num_distractors).map(pooled)
    batch = _take(ds, n)
    frames, direction = batch["frames"], batch["label"] % 4
    worst = 0.0
    for d in range(4):
        mine, rest = frames[direction == d], frames[direction != d]
        se = np.sqrt(mine.var(0) / len(mine) + rest.var(0) / len(rest))
        worst = max(worst, np.abs((mine.mean(0) - rest.mean(0)) / se).max())
    # 4 x 16 x 192 z-scores: the largest of that many standard normals stays below 5.
    assert worst < 5.0, worst


# ----------------------------------------------------------------------------- clips


def test_clips_per_video_are_consecutive_windows_of_one_video():
    clips = _take(ms.moving_shapes_dataset("eval", 4, clips_per_video=3, num_frames=8), 12)
    np.testing.assert_array_equal(clips["video_index"], np.repeat(np.arange(4), 3))
    np.testing.assert_array_equal(clips["label"], np.repeat(clips["label"][::3], 3))
    videos = _take(ms.moving_shapes_dataset("eval", 4, num_frames=24), 4)
    np.testing.assert_array_equal(clips["frames"].reshape(4, 24, 32, 32, 3), videos["frames"])
    np.testing.assert_array_equal(clips["label"][::3], videos["label"])


def test_future_frames_extend_the_labelled_clip():
    future = ms.moving_shapes_future_dataset("test", 3, seed=2, horizon=5)
    assert set(future.element_spec) == {"frames"}
    assert future.element_spec["frames"].shape == (21, 32, 32, 3)
    frames = _take(future, 3)["frames"]
    clips = _take(ms.moving_shapes_dataset("test", 3, seed=2), 3)["frames"]
    np.testing.assert_array_equal(frames[:, :16], clips)
    assert not np.array_equal(frames[:, 16:], frames[:, 11:16])  # the future moves on


def test_generation_is_fast():
    ds = ms.moving_shapes_dataset("train").batch(64).prefetch(2)
    it = iter(ds)
    next(it)  # trace and warm up
    start = time.perf_counter()
    for _ in range(8):
        next(it)
    rate = 8 * 64 / (time.perf_counter() - start)
    assert rate > 150, f"{rate:.0f} clips/s"  # about 1500-2000 clips/s on 2 idle cores


# ----------------------------------------------------------------------------- no leak


# Frames the probes look at: pairs (t, t + 1) spread over the clip.
_PAIR_STARTS = (0, 5, 10, 14)
_STEPS = [t + i for t in _PAIR_STARTS for i in (0, 1)]


def _probe_inputs(split: str, n: int, **options) -> dict[str, np.ndarray]:
    """Grey frames [N, 8, H, W] and 4x4-pooled colour frames [N, 8, H/4, W/4, 3] at _STEPS."""

    def reduce(example):  # computed in tf.data so that full clips never pile up in memory
        frames = tf.gather(example["frames"], _STEPS)  # [8, H, W, 3]
        return {
            "gray": tf.reduce_mean(frames, -1),
            "pooled": tf.nn.avg_pool2d(frames, 4, 4, "VALID"),
            "label": example["label"],
        }

    return _take(ms.moving_shapes_dataset(split, n, **options).map(reduce), n)


def _frame_features(gray: np.ndarray, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame features: [N, T, F], and spectra [N, T, H, W // 2 + 1].

    Translation-invariant shape features (normalised |FFT| of the grey frame) plus
    pooled pixels, which would expose any position, colour or background cue.
    """
    n, t = gray.shape[:2]
    spectra = np.fft.rfft2(gray - gray.mean((-2, -1), keepdims=True))
    mag = np.abs(spectra)
    mag /= np.linalg.norm(mag, axis=(-2, -1), keepdims=True) + 1e-6
    return np.concatenate([mag.reshape(n, t, -1), pooled.reshape(n, t, -1)], -1), spectra


def _pair_features(spectra: np.ndarray, reach: int = 4) -> np.ndarray:
    """Circular cross-correlation of frames (t, t + 1) for shifts up to reach: [N, P, S]."""
    h = spectra.shape[-2]
    corr = np.fft.irfft2(np.conj(spectra[:, 0::2]) * spectra[:, 1::2], s=(h, h))
    window = np.arange(-reach, reach + 1) % h
    corr = corr[..., window, :][..., window]  # [N, P, 2 * reach + 1, 2 * reach + 1]
    corr /= np.linalg.norm(corr, axis=(-2, -1), keepdims=True) + 1e-6
    return corr.reshape(corr.shape[0], corr.shape[1], -1)


def _fit_and_score(train_x, train_y, test_x, test_y, k, l2=100.0):
    """Linear (ridge) classifier on rows = frames; a clip's score averages its frames.

    Returns (single-frame accuracy, clip accuracy) on the test clips.
    """
    n, t, f = train_x.shape
    x = train_x.reshape(-1, f)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = (x - mu) / sd
    targets = np.eye(k)[np.repeat(train_y, t)] - 1.0 / k
    weights = np.linalg.solve(x.T @ x + l2 * np.eye(f), x.T @ targets)
    scores = ((test_x - mu) / sd) @ weights  # [N, T, k]
    frame_acc = (scores.argmax(-1) == test_y[:, None]).mean()
    clip_acc = (scores.mean(1).argmax(-1) == test_y).mean()
    return frame_acc, clip_acc


@pytest.mark.parametrize("num_distractors", [0, 2])
def test_per_frame_model_is_capped_at_shape_accuracy_and_two_frames_beat_it(num_distractors):
    train = _probe_inputs("train", 1000, num_distractors=num_distractors)
    test = _probe_inputs("eval", 600, num_distractors=num_distractors)
    train_f, train_s = _frame_features(train["gray"], train["pooled"])
    test_f, test_s = _frame_features(test["gray"], test["pooled"])
    y, y_test = train["label"], test["label"]

    # Single frames name the shape ...
    shape_frame, shape_clip = _fit_and_score(train_f, y // 4, test_f, y_test // 4, 3)
    assert shape_frame > 0.9 and shape_clip > 0.9, (shape_frame, shape_clip)
    # ... but not the direction: 12-way accuracy stays at shape accuracy / 4.
    frame_acc, clip_acc = _fit_and_score(train_f, y, test_f, y_test, 12)
    ceiling = shape_clip / 4
    assert frame_acc < ceiling + 0.05 and clip_acc < ceiling + 0.06, (frame_acc, clip_acc)

    # Two consecutive frames reveal it.
    pair = np.concatenate([train_f[:, 0::2], _pair_features(train_s)], -1)
    pair_test = np.concatenate([test_f[:, 0::2], _pair_features(test_s)], -1)
    pair_frame, pair_clip = _fit_and_score(pair, y, pair_test, y_test, 12)
    assert pair_frame > 0.6 and pair_clip > 0.8, (pair_frame, pair_clip)
    print(
        f"shape {shape_frame:.3f}/{shape_clip:.3f}, 12-way per-frame {frame_acc:.3f}/"
        f"{clip_acc:.3f}, two-frame {pair_frame:.3f}/{pair_clip:.3f} (frame/clip)"
    )
    if num_distractors:
        return

    # Control: the per-frame probe does see a leak when there is one. A motion trail
    # (frame t + 1 blended with frame t) tells horizontal from vertical motion, which
    # lifts the probe well above the ceiling.
    def trail(x):
        return (x[:, 1::2] + 0.5 * x[:, 0::2]) / 1.5

    leaky_f, _ = _frame_features(trail(train["gray"]), trail(train["pooled"]))
    leaky_test_f, _ = _frame_features(trail(test["gray"]), trail(test["pooled"]))
    _, leaky_clip = _fit_and_score(leaky_f, y, leaky_test_f, y_test, 12)
    print(f"per-frame probe on frames with a motion trail: {leaky_clip:.3f}")
    assert leaky_clip > ceiling + 0.15, leaky_clip
