"""The pure helpers of benchmarks/smoothness.py: clip construction and aggregation."""

import importlib.util
import os

import numpy as np
import pytest

from sideways_tf.data.moving_shapes import moving_shapes_dataset

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "smoothness.py")
_spec = importlib.util.spec_from_file_location("smoothness", _PATH)
smoothness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smoothness)


def _tagged(num_clips, num_frames):
    """Frames whose every pixel holds the frame index: [N, T, 2, 2, 1]."""
    t = np.arange(num_frames, dtype=np.float32)[None, :, None, None, None]
    return np.broadcast_to(t, (num_clips, num_frames, 2, 2, 1))


@pytest.mark.parametrize("stride", [1, 2, 3, 4])
def test_subsample_takes_every_stride_th_frame(stride):
    k = 5
    out = smoothness.subsample(_tagged(2, (k - 1) * stride + 1), stride, k)
    assert out.shape == (2, k, 2, 2, 1)
    np.testing.assert_array_equal(out[:, :, 0, 0, 0], [np.arange(k) * stride] * 2)


def test_subsample_rejects_short_clips_and_bad_strides():
    with pytest.raises(ValueError, match="at least 9 frames"):
        smoothness.subsample(_tagged(1, 8), stride=2, num_frames=5)
    with pytest.raises(ValueError, match="positive"):
        smoothness.subsample(_tagged(1, 8), stride=0, num_frames=5)


def test_stride_of_a_video_is_the_video_at_stride_times_speed():
    # On moving_shapes (static background, i.i.d. noise) stride s at speed v shows
    # the shape where speed s * v puts it: the README's reading relies on this.
    opts = dict(frame_size=16, shape_size=5, noise_std=0.0)
    long = moving_shapes_dataset("test", 3, num_frames=7, speed=1, **opts)
    fast = moving_shapes_dataset("test", 3, num_frames=4, speed=2, **opts)
    long = np.stack([c["frames"] for c in long.as_numpy_iterator()])
    fast = np.stack([c["frames"] for c in fast.as_numpy_iterator()])
    np.testing.assert_allclose(smoothness.subsample(long, 2, 4), fast, atol=1e-6)
    assert not np.allclose(long[:, :4], fast)  # the motion differs without the stride


def test_static_scene_holds_the_scene_with_fresh_noise():
    first = np.zeros((2, 8, 8, 3), np.float32)  # mid-grey in [-1, 1]: no clipping
    still = smoothness.static_scene(first, 64, noise_std=0.0, seed=0)
    np.testing.assert_array_equal(still, np.zeros((2, 64, 8, 8, 3)))
    noisy = smoothness.static_scene(first, 64, noise_std=0.05, seed=0)
    assert noisy.shape == (2, 64, 8, 8, 3) and noisy.dtype == np.float32
    assert not np.allclose(noisy[:, 0], noisy[:, 1])  # fresh noise per frame
    # std 0.05 in [0, 1] units is 0.1 in [-1, 1] units; uniform noise never exceeds sqrt(3) std.
    np.testing.assert_allclose(noisy.std(), 0.1, rtol=0.05)
    assert np.abs(noisy).max() <= 0.1 * 3**0.5 + 1e-6
    np.testing.assert_array_equal(noisy, smoothness.static_scene(first, 64, 0.05, seed=0))


def test_summarize_is_the_mean_and_sample_std_over_batches():
    out = smoothness.summarize([[1.0, 0.5], [3.0, 0.5], [2.0, 0.5]])
    np.testing.assert_allclose(out["mean"], [2.0, 0.5])
    np.testing.assert_allclose(out["std"], [1.0, 0.0])  # ddof=1: sqrt((1 + 1 + 0) / 2)
    assert out["n"] == 3
    np.testing.assert_allclose(smoothness.summarize([[0.9, 0.8]])["std"], [0.0, 0.0])
    with pytest.raises(ValueError, match="n_batches, L"):
        smoothness.summarize([0.9, 0.8])


def test_displacement_and_table():
    assert smoothness.displacement("stride", 4, base_speed=2) == 8.0
    assert smoothness.displacement("speed", smoothness.FROZEN, base_speed=2) == 0.0
    row = dict(
        mode="sideways",
        params="trained",
        sweep="stride",
        value=2,
        displacement=4.0,
        cosine={"mean": [0.5, 1.0], "std": [0.25, 0.0]},
        norm_ratio={"mean": [0.75, 1.0], "std": [0.0, 0.0]},
    )
    table = smoothness.markdown_table([row, dict(row, params="init")], "trained").splitlines()
    assert len(table) == 3  # header, rule, the one trained row
    assert table[2] == (
        "| sideways | stride 2 | 4 | 0.500 ± 0.250 | 1.000 ± 0.000 | 0.750 ± 0.000 | 1.000 ± 0.000 |"
    )


def test_chain_lag_distances_wrap_around_the_frame():
    # Unit i of a 4-unit chain combines frames 2(4-i) apart: 6, 4, 2, 0.
    assert smoothness.chain_lag_distances(1, 4, 32) == [6.0, 4.0, 2.0, 0.0]
    assert smoothness.chain_lag_distances(4, 4, 32) == [8.0, 16.0, 8.0, 0.0]  # 24 px is 8 back
    # 8 px/frame for 4 frames is one full turn of a 32-pixel frame: same position.
    assert smoothness.chain_lag_distances(8, 4, 32) == [16.0, 0.0, 16.0, 0.0]
    assert smoothness.wrapped_distance(33, 32) == 1.0


def test_falls_table_counts_paired_batches():
    def row(value, cosines):
        per_batch = [[c, c, c, 1.0] for c in cosines]
        return dict(
            mode="sideways",
            params="trained",
            sweep="speed",
            value=value,
            per_batch={"cosine": per_batch},
        )

    rows = [row(smoothness.FROZEN, [1, 1, 1]), row(0, [0.9, 0.8, 0.7]), row(1, [0.5, 0.9, 0.1])]
    table = smoothness.falls_table(rows).splitlines()
    assert table[2:] == ["| sideways | 0 -> 1 | 2/3 | 2/3 | 2/3 |"]  # frozen is left out
