"""The DMVR reader: output contract, clip sampling, corrupt shards."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from sideways_tf.data import contract, dmvr, sampling
from sideways_tf.data.sampling import ClipSampling
from sideways_tf.evaluate import evaluate_workdir

SIZE = 8  # output frames are SIZE x SIZE


def level(t: int) -> int:
    """Brightness of frame t: distinct and far apart after JPEG."""
    return 10 + 7 * t


def jpeg(value: int, height: int = 12, width: int = 18) -> bytes:
    image = tf.fill([height, width, 3], tf.constant(value, tf.uint8))
    return tf.io.encode_jpeg(image, quality=95).numpy()


def write_shards(directory, videos, num_shards):
    """videos: [(num_frames, label)]; video i goes to shard i % num_shards."""
    paths = [
        os.path.join(directory, dmvr.shard_name("s", i, num_shards)) for i in range(num_shards)
    ]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    for i, (num_frames, label) in enumerate(videos):
        frames = [jpeg(level(t)) for t in range(num_frames)]
        example = dmvr.make_sequence_example(frames, label, f"class{label}", f"video{i}")
        writers[i % num_shards].write(example.SerializeToString())
    for w in writers:
        w.close()
    return paths


def frame_levels(frames: np.ndarray) -> list[int]:
    """Normalised [K, S, S, 3] -> the frame index each frame shows (via its brightness)."""
    raw = (frames * np.array(sampling.STDDEV_RGB) + np.array(sampling.MEAN_RGB)) * 255
    return [round((float(f.mean()) - 10) / 7) for f in raw]


def test_training_clips_follow_the_contract_and_the_stride(tmp_path):
    videos = [(20, 0), (30, 1), (25, 2), (24, 3)]
    write_shards(str(tmp_path), videos, num_shards=2)
    ds = dmvr.dmvr_dataset(
        str(tmp_path / "s-*"),
        True,
        sampling=ClipSampling(num_frames=4, stride=3, image_size=SIZE),
        cycle_length=2,
        repeat=True,
    )
    assert ds.element_spec == contract.clip_spec(4, SIZE, SIZE)
    elements = list(ds.take(24).as_numpy_iterator())
    index_of_label = {int(e["label"]): int(e["video_index"]) for e in elements}
    assert sorted(index_of_label) == [0, 1, 2, 3]
    assert len(set(index_of_label.values())) == 4
    starts = set()
    for e in elements:
        assert index_of_label[int(e["label"])] == int(e["video_index"])
        t = frame_levels(e["frames"])
        num_frames = videos[int(e["label"])][0]
        assert t == [t[0], t[0] + 3, t[0] + 6, t[0] + 9]
        assert 0 <= t[0] <= num_frames - 10
        starts.add((int(e["label"]), t[0]))
        assert abs(float(e["frames"].mean())) < 2.5 and e["frames"].std() < 2.5
    # Offsets are random: the same video shows up at different starts.
    assert len(starts) > 6


def test_eval_clips_are_evenly_spaced_and_share_the_video_index(tmp_path):
    write_shards(str(tmp_path), [(21, 5), (9, 7)], num_shards=1)
    ds = dmvr.dmvr_dataset(
        str(tmp_path / "s-*"),
        False,
        sampling=ClipSampling(num_frames=3, stride=2, image_size=SIZE, num_eval_clips=3),
    )
    elements = list(ds.as_numpy_iterator())
    assert len(elements) == 6
    first, second = elements[:3], elements[3:]
    assert {int(e["video_index"]) for e in first} == {0}
    assert {int(e["video_index"]) for e in second} == {1}
    assert [int(e["label"]) for e in elements] == [5, 5, 5, 7, 7, 7]
    # 21 frames, clip span 5: offsets 0, 8, 16.  9 frames: offsets 0, 2, 4.
    assert [frame_levels(e["frames"]) for e in first] == [[0, 2, 4], [8, 10, 12], [16, 18, 20]]
    assert [frame_levels(e["frames"])[0] for e in second] == [0, 2, 4]
    again = list(ds.as_numpy_iterator())
    np.testing.assert_array_equal(again[1]["frames"], elements[1]["frames"])


def test_short_videos_loop_and_the_frames_only_option_drops_labels(tmp_path):
    write_shards(str(tmp_path), [(3, 0)], num_shards=1)
    ds = dmvr.dmvr_dataset(
        str(tmp_path / "s-*"),
        False,
        sampling=ClipSampling(num_frames=7, image_size=SIZE),
        frames_only=True,
    )
    assert ds.element_spec == contract.clip_spec(7, SIZE, SIZE, labelled=False)
    (element,) = list(ds.as_numpy_iterator())
    assert list(element) == ["frames"]
    assert element["frames"].shape == (7, SIZE, SIZE, 3)
    assert frame_levels(element["frames"]) == [0, 1, 2, 0, 1, 2, 0]


def test_corrupt_shards_are_skipped_with_a_warning_naming_the_file(tmp_path, caplog):
    paths = write_shards(str(tmp_path), [(6, i) for i in range(9)], num_shards=3)
    # Shard 1 loses its tail (a truncated copy); shard 2 gets a flipped byte in record 2.
    data = open(paths[1], "rb").read()
    open(paths[1], "wb").write(data[: len(data) * 2 // 3 + 5])  # inside record 3 of 3
    data = bytearray(open(paths[2], "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(paths[2], "wb").write(bytes(data))

    with caplog.at_level(logging.WARNING, logger="sideways_tf.data.dmvr"):
        ds = dmvr.dmvr_dataset(
            str(tmp_path / "s-*"), False, sampling=ClipSampling(num_frames=2, image_size=SIZE)
        )
        labels = sorted(int(e["label"]) for e in ds.as_numpy_iterator())

    # Shard 0 holds videos 0, 3, 6 (intact); shard 1 keeps 1, 4 and shard 2 keeps 2.
    assert labels == [0, 1, 2, 3, 4, 6]
    warned = [r.getMessage() for r in caplog.records if "Corrupt record shard" in r.getMessage()]
    assert len(warned) == 2
    assert any(paths[1] in w for w in warned) and any(paths[2] in w for w in warned)
    assert not any(paths[0] in w for w in warned)
    assert all("re-run sideways-convert" in w for w in warned)


def write_records(path, records):
    """Serialized records (bytes, or SequenceExamples) -> one shard, with valid checksums."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record if isinstance(record, bytes) else record.SerializeToString())
    return str(path)


def video(label, num_frames=4, broken_frame=None):
    frames = [jpeg(level(t)) for t in range(num_frames)]
    if broken_frame is not None:
        frames[broken_frame] = frames[broken_frame][: len(frames[broken_frame]) // 2]
    return dmvr.make_sequence_example(frames, label, f"class{label}", f"video{label}")


@pytest.mark.parametrize("training", [False, True])
def test_records_that_do_not_decode_are_skipped_counted_and_named(tmp_path, caplog, training):
    # Checksums are valid: only the payload is damaged.
    paths = [
        write_records(tmp_path / dmvr.shard_name("s", 0, 2), [video(0), video(1, 4, 2), video(2)]),
        write_records(
            tmp_path / dmvr.shard_name("s", 1, 2),
            [b"\x0a\xffnot a proto", video(4), dmvr.make_sequence_example([], 5, "c", "v")],
        ),
    ]
    before = dmvr.skipped_records()
    with caplog.at_level(logging.WARNING, logger="sideways_tf.data.dmvr"):
        ds = dmvr.dmvr_dataset(
            str(tmp_path / "s-*"), training, sampling=ClipSampling(num_frames=4, image_size=SIZE)
        )
        labels = sorted(int(e["label"]) for e in ds.as_numpy_iterator())

    assert labels == [0, 2, 4]  # every frame is sampled (K = T), so record 1 always fails
    assert dmvr.skipped_records() - before == 3
    warned = sorted(r.getMessage() for r in caplog.records if "Skipped record" in r.getMessage())
    assert len(warned) == 3
    assert f"record 1 (0-based) of shard {paths[0]}: a sampled frame is not a readable JPEG" in (
        "".join(warned)
    )
    for record in (0, 2):
        assert f"record {record} (0-based) of shard {paths[1]}: not a SequenceExample" in (
            "".join(warned)
        )
    assert not any("Corrupt record shard" in r.getMessage() for r in caplog.records)


def test_missing_records_error_says_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No record shards match.*sideways-convert"):
        dmvr.dmvr_dataset(str(tmp_path / "train-*"), True)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("stride", 0, "stride must be >= 1"),
        ("num_eval_clips", 0, "num_eval_clips must be >= 1"),
        ("area_range", (0.5, 0.2), "area_range must be"),
        ("eval_crop_fraction", 1.5, r"eval_crop_fraction must be in \(0, 1\]"),
    ],
)
def test_clip_sampling_rejects_bad_values_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        ClipSampling(**{field: value})


def test_gin_binds_one_clip_sampling_scoped_per_split(tmp_path):
    import gin

    write_shards(str(tmp_path), [(12, 0), (12, 1)], num_shards=1)
    gin.clear_config()
    try:
        gin.parse_config(
            [
                "clip_sampling.num_frames = 3",
                f"clip_sampling.image_size = {SIZE}",
                "eval/clip_sampling.num_eval_clips = 2",
                f"dmvr_dataset.pattern = '{tmp_path}/s-*'",
            ]
        )
        with gin.config_scope("train"):
            assert sampling.clip_sampling() == ClipSampling(num_frames=3, image_size=SIZE)
        with gin.config_scope("eval"):
            eval_ds = dmvr.dmvr_dataset(split_is_training=False)
    finally:
        gin.clear_config()
    assert contract.check_clip_dataset(eval_ds) == (3, (SIZE, SIZE, 3))
    assert len(list(eval_ds.as_numpy_iterator())) == 2 * 2  # 2 videos x 2 eval clips


def test_records_without_label_read_as_minus_one(tmp_path):
    path = str(tmp_path / "u.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        example = dmvr.make_sequence_example([jpeg(50)] * 2, -1, "", "clip")
        w.write(example.SerializeToString())
    parsed = dmvr.parse_record(next(iter(tf.data.TFRecordDataset(path))))
    assert int(parsed["label"]) == -1 and parsed["video_id"].numpy() == b"clip"


@pytest.mark.parametrize("in_graph", [False, True])
def test_sampling_indices_and_crop_boxes(in_graph):
    def run(fn, *args):
        return (tf.function(fn) if in_graph else fn)(*args).numpy()

    idx = run(lambda n: sampling.eval_indices(n, 4, 2, 3), tf.constant(20))
    np.testing.assert_array_equal(idx[:, 0], [0, 6, 13])
    np.testing.assert_array_equal(idx[2], [13, 15, 17, 19])
    idx = run(lambda n: sampling.eval_indices(n, 4, 1, 1), tf.constant(10))
    np.testing.assert_array_equal(idx, [[3, 4, 5, 6]])
    for _ in range(20):
        idx = run(lambda n: sampling.train_indices(n, 5, 2), tf.constant(12))
        assert 0 <= idx[0] <= 3 and list(np.diff(idx)) == [2, 2, 2, 2]
    box = run(lambda: sampling.center_crop_box(tf.constant(100), tf.constant(200), 0.5))
    np.testing.assert_allclose(box, [0.25, 0.375, 0.75, 0.625])
    for _ in range(10):
        y0, x0, y1, x1 = run(lambda: sampling.random_crop_box(tf.constant(60), tf.constant(80)))
        area = (y1 - y0) * (x1 - x0)
        assert 0.29 <= area <= 1.0 and 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1


def test_crop_and_flip_are_shared_by_all_frames_of_a_clip():
    # A horizontal ramp, identical in every frame: any per-frame difference in crop or
    # flip would make the frames differ.
    ramp = tf.tile(tf.range(64, dtype=tf.float32)[None, None, :, None], [5, 48, 1, 3]) * 3
    encoded = tf.cast(ramp, tf.uint8)  # [5, 48, 64, 3], already decoded frames
    flipped = 0
    for _ in range(12):
        clip = sampling.sample_clips(
            encoded, training=True, sampling=ClipSampling(num_frames=5, image_size=16)
        )[0]
        for k in range(1, 5):
            np.testing.assert_allclose(clip[k], clip[0])
        flipped += bool(clip[0, 0, 0, 0] > clip[0, 0, -1, 0])
    assert 0 < flipped < 12


def test_eval_scale_training_crops_keep_evaluations_scale_and_move_its_window():
    # A horizontal ramp of slope 3 per source pixel: a crop's slope per output pixel is its
    # scale. eval_scale crops must match evaluation's slope exactly, at varying positions.
    ramp = tf.tile(tf.range(96, dtype=tf.float32)[None, None, :, None], [2, 32, 1, 3]) * 2
    frames = tf.cast(ramp, tf.uint8)  # [2, 32, 96, 3]: short side 32, 64 columns of play
    kwargs = dict(num_frames=2, image_size=16, pixels="symmetric", flip=False)
    evaluated = sampling.sample_clips(frames, training=False, sampling=ClipSampling(**kwargs))
    eval_slope = np.diff(evaluated[0, 0, 0, :, 0]).mean()
    crop = ClipSampling(train_crop="eval_scale", **kwargs)
    starts, slopes = set(), []
    for _ in range(12):
        clip = sampling.sample_clips(frames, training=True, sampling=crop)[0].numpy()
        slopes.append(np.diff(clip[0, 0, :, 0]).mean())
        starts.add(round(float(clip[0, 0, 0, 0]), 2))
        assert np.ptp(clip[:, :, :, 0], axis=1).max() < 1e-6  # the ramp has no vertical change
    np.testing.assert_allclose(slopes, eval_slope, rtol=1e-4)
    assert len(starts) > 6  # the window moves
    resized = ClipSampling(**kwargs)  # the default (random resized) crop changes the scale
    slopes = [
        np.diff(
            sampling.sample_clips(frames, training=True, sampling=resized)[0, 0, 0, :, 0]
        ).mean()
        for _ in range(12)
    ]
    assert np.ptp(slopes) > 0.05 * eval_slope
    with pytest.raises(ValueError, match="train_crop = 'center'.*eval_scale"):
        ClipSampling(train_crop="center")


def test_training_iterator_can_be_checkpointed_and_restored(tmp_path):
    # The trainer checkpoints its data iterator; augmentation RNGs must not block that.
    write_shards(str(tmp_path), [(8, i) for i in range(6)], num_shards=2)
    ds = dmvr.dmvr_dataset(
        str(tmp_path / "s-*"),
        True,
        sampling=ClipSampling(num_frames=2, image_size=SIZE, shuffle_buffer=4),
        repeat=True,
    )
    iterator = iter(ds.batch(2, drop_remainder=True))
    next(iterator)
    checkpoint = tf.train.Checkpoint(data=iterator)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    valid = {shard * 2**32 + record for shard in range(2) for record in range(3)}
    for _ in range(3):
        next(iterator)
    checkpoint.restore(path)
    after_restore = {i for _ in range(3) for i in next(iterator)["video_index"].numpy().tolist()}
    assert after_restore <= valid and len(after_restore) > 1


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_crop_while_decoding_jpeg_matches_crop_after_decoding(fraction):
    # A smooth diagonal ramp, so a misplaced crop window changes the output.
    y, x = np.mgrid[0:20, 0:30]
    image = np.stack([x * 8, y * 12, (x + y) * 5], -1).astype(np.uint8)
    encoded = tf.stack([tf.io.encode_jpeg(image, quality=100, chroma_downsampling=False)] * 3)
    clips = ClipSampling(num_frames=3, image_size=16, eval_crop_fraction=fraction)
    kwargs = dict(training=False, sampling=clips)
    in_decode = sampling.sample_clips(encoded, jpeg=True, **kwargs)
    after = sampling.sample_clips(tf.io.decode_jpeg(encoded[0])[None], **kwargs)
    assert in_decode.shape == after.shape == (1, 3, 16, 16, 3)
    # The two crop conventions differ by < 1/2 pixel (<= 6 levels); one pixel is 8-12 levels.
    np.testing.assert_allclose(in_decode[0, 0], after[0, 0], atol=0.11)


@pytest.mark.slow
def test_skipped_records_reach_tensorboard_during_training(tmp_path):
    import gin

    from sideways_tf import train

    videos = [video(i % 3, num_frames=8) for i in range(6)] + [video(1, 8, broken_frame=3)]
    write_records(tmp_path / dmvr.shard_name("s", 0, 1), videos)
    gin.clear_config()
    try:
        gin.parse_config(
            [
                "import sideways_tf.data.dmvr",
                "import sideways_tf.models.convnet",
                "train.mode = 'sideways'",
                "train.model_fn = @tiny_conv_pipeline",
                "train.train_data = @dmvr_dataset",
                f"dmvr_dataset.pattern = '{tmp_path}/s-*'",
                "dmvr_dataset.split_is_training = True",
                "dmvr_dataset.repeat = True",
                "clip_sampling.num_frames = 8",
                f"clip_sampling.image_size = {SIZE}",
                "clip_sampling.shuffle_buffer = 2",
                "train.task = @Classification()",
                "Classification.num_classes = 3",
                "train.global_batch = 2",
                "train.num_steps = 8",
                "train.log_every = 4",
                "train.fidelity_every = 0",
                "train.images_every = 0",
                "train.progress = False",
            ]
        )
        train.train(str(tmp_path / "run"))
    finally:
        gin.clear_config()
    values = []
    for name in tf.io.gfile.listdir(str(tmp_path / "run" / "train")):
        path = os.path.join(str(tmp_path / "run" / "train"), name)
        for event in tf.compat.v1.train.summary_iterator(path):
            values += [
                float(tf.make_ndarray(v.tensor))
                for v in event.summary.value
                if v.tag == "data/skipped_records"
            ]
    assert values and max(values) >= 1  # the broken record was read at least once


@pytest.mark.slow
def test_evaluation_of_a_run_whose_training_shards_are_gone(tmp_path):
    """sideways-eval builds only the eval data: deleting the training shards is fine."""
    import gin

    from sideways_tf import train

    (tmp_path / "train").mkdir()
    (tmp_path / "eval").mkdir()
    write_records(
        tmp_path / "train" / dmvr.shard_name("s", 0, 1), [video(i % 3, 8) for i in range(6)]
    )
    write_records(tmp_path / "eval" / dmvr.shard_name("s", 0, 1), [video(i, 8) for i in range(3)])
    bindings = [
        "import sideways_tf.data.dmvr",
        "import sideways_tf.models.convnet",
        "train.mode = 'sideways'",
        "train.model_fn = @tiny_conv_pipeline",
        "train.train_data = @train/dmvr_dataset",
        "train.eval_data = @eval/dmvr_dataset",
        f"train/dmvr_dataset.pattern = '{tmp_path}/train/s-*'",
        "train/dmvr_dataset.split_is_training = True",
        "train/dmvr_dataset.repeat = True",
        f"eval/dmvr_dataset.pattern = '{tmp_path}/eval/s-*'",
        "eval/dmvr_dataset.split_is_training = False",
        "clip_sampling.num_frames = 8",
        f"clip_sampling.image_size = {SIZE}",
        "clip_sampling.shuffle_buffer = 2",
        "train.task = @Classification()",
        "Classification.num_classes = 3",
        "train.global_batch = 2",
        "train.num_steps = 4",
        "train.eval_every = 4",
        "train.fidelity_every = 0",
        "train.images_every = 0",
        "train.progress = False",
    ]
    gin.clear_config()
    try:
        gin.parse_config(bindings)
        trained = train.train(str(tmp_path / "run"))
        gin.clear_config()
        for f in tf.io.gfile.glob(str(tmp_path / "train" / "*")):
            tf.io.gfile.remove(f)
        again = evaluate_workdir(str(tmp_path / "run"))
    finally:
        gin.clear_config()
    assert again["step"] == 4 and again["eval"]["num_videos"] == 3
    assert again["eval"]["video_accuracy"] == pytest.approx(trained["eval"]["video_accuracy"])
    assert again["eval"]["loss"] == pytest.approx(trained["eval"]["loss"], rel=1e-5)
