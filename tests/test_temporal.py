"""Temporal tasks made by the input pipeline (data/temporal.py): their labels, and the
per-frame ceiling that frame_bp cannot leave on arrow of time.

Frame t of the test video has the value 4t, so each clip's frame indices can be read
back from its pixels.
"""

import json
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_videos import make_records

import sideways_tf as sw
from sideways_tf import cli, config_files, evaluate, tasks
from sideways_tf.data import moving_shapes, temporal
from sideways_tf.data.sampling import ClipSampling, video_clips, video_streams
from sideways_tf.engine import check_mode
from sideways_tf.models import convnet

T = 40  # frames of the indexed video


def indexed_video():
    """One video whose frame t is the grey level 4t: {"encoded" uint8 [T, 8, 16, 3], ...}."""
    frames = np.broadcast_to((4 * np.arange(T))[:, None, None, None], (T, 8, 16, 3))
    return tf.data.Dataset.from_tensors(
        {
            "encoded": frames.astype(np.uint8),
            "label": tf.constant(-1),  # an unlabelled record
            "video_index": tf.constant(7, tf.int64),
        }
    )


def frame_indices(clip) -> np.ndarray:
    """[K, S, S, 3] in [-1, 1] ("symmetric" pixels) -> the source frame of each step [K]."""
    grey = (np.asarray(clip)[..., 0].mean(axis=(1, 2)) + 1.0) / 2.0 * 255.0
    return np.round(grey / 4.0).astype(int)


def sampling(task, **kwargs):
    defaults = dict(num_frames=5, stride=2, image_size=4, pixels="symmetric", flip=False)
    return ClipSampling(temporal_task=task, **{**defaults, **kwargs})


def test_an_evaluation_clip_comes_forward_and_reversed_and_the_reversed_one_says_so():
    clips = list(
        video_clips(indexed_video(), training=False, sampling=sampling("arrow", num_eval_clips=2))
    )
    assert [int(c["label"]) for c in clips] == [0, 1, 0, 1]
    # A clip and its reverse are two videos to classify: video x 2 + class.
    assert [int(c["video_index"]) for c in clips] == [14, 15, 14, 15]
    for forward, backward in (clips[0:2], clips[2:4]):
        np.testing.assert_array_equal(backward["frames"], forward["frames"][::-1])
        assert np.all(np.diff(frame_indices(forward["frames"])) == 2)  # stride 2
    assert frame_indices(clips[0]["frames"])[0] == 0  # windows evenly spaced: first ...
    assert frame_indices(clips[2]["frames"])[-1] == T - 1  # ... and last


def test_training_draws_the_direction_and_labels_it():
    clips = list(video_clips(indexed_video().repeat(24), training=True, sampling=sampling("arrow")))
    labels = [int(c["label"]) for c in clips]
    assert set(labels) == {0, 1}
    for clip, label in zip(clips, labels):
        steps = np.diff(frame_indices(clip["frames"]))
        assert np.all(steps == (2 if label == 0 else -2)), (label, steps)


@pytest.mark.parametrize("training", [False, True])
def test_speed_takes_every_first_second_or_fourth_frame_and_labels_which(training):
    videos = indexed_video().repeat(30 if training else 1)
    clips = list(video_clips(videos, training=training, sampling=sampling("speed")))
    labels = [int(c["label"]) for c in clips]
    if training:
        assert set(labels) == {0, 1, 2}
    else:  # the middle window at the three speeds, about the same centre frame
        assert labels == [0, 1, 2]
        centres = [frame_indices(c["frames"])[2] for c in clips]
        assert max(centres) - min(centres) <= 2
    for clip, label in zip(clips, labels):
        steps = np.diff(frame_indices(clip["frames"]))
        assert np.all(steps == 2 * (1, 2, 4)[label]), (label, steps)  # stride 2 x speed


def test_moving_shapes_makes_the_same_labels_from_its_rendered_window():
    options = dict(num_frames=5, frame_size=16, shape_size=5)
    arrow = list(moving_shapes.moving_shapes_dataset("eval", 2, temporal_task="arrow", **options))
    assert [int(c["label"]) for c in arrow] == [0, 1, 0, 1]
    assert [int(c["video_index"]) for c in arrow] == [0, 1, 2, 3]
    for forward, backward in (arrow[0:2], arrow[2:4]):
        np.testing.assert_array_equal(backward["frames"], forward["frames"][::-1])
    assert not np.array_equal(arrow[0]["frames"], arrow[1]["frames"])  # it does move

    speed = list(moving_shapes.moving_shapes_dataset("eval", 1, temporal_task="speed", **options))
    x1, x2, x4 = (np.asarray(c["frames"]) for c in speed)
    # A window of 17 frames; x1 takes 6..10, x2 4, 6, ..., 12, x4 0, 4, ..., 16.
    np.testing.assert_array_equal(temporal.TEMPORAL_TASKS["speed"].clip_offsets(5, 1)[:, 2], 8)
    np.testing.assert_array_equal(x1[2], x2[2])
    np.testing.assert_array_equal(x2[2], x4[2])  # the centre frame is shared ...
    np.testing.assert_array_equal(x1[0], x2[1])  # ... and frame 6
    np.testing.assert_array_equal(x2[0], x4[1])  # ... and frame 4
    assert not np.array_equal(x1[1], x2[1])
    train = moving_shapes.moving_shapes_dataset("train", 12, temporal_task="speed", **options)
    assert {int(c["label"]) for c in train} == {0, 1, 2}


def test_the_task_and_the_data_must_name_the_same_temporal_task():
    task = tasks.TemporalClassification("speed")
    assert (task.num_classes, task.per_frame_ceiling) == (3, pytest.approx(1 / 3))
    again = tasks.TemporalClassification.from_config(task.get_config())
    assert (again.temporal_task, again.class_names) == ("speed", ("x1", "x2", "x4"))
    data = moving_shapes.moving_shapes_dataset("eval", 2, temporal_task="arrow", num_frames=5)
    with pytest.raises(ValueError, match="TEMPORAL_TASK = 'arrow' or 'speed'"):
        task.check_data(data, "train.eval_data")
    with pytest.raises(ValueError, match="clip_sampling.temporal_task = 'reverse' is not a"):
        sampling("reverse")


@pytest.mark.parametrize("task", ["arrow", "speed"])
def test_streaming_plays_each_video_whole_once_per_class_and_labels_it(task):
    streams = list(video_streams(indexed_video(), sampling=sampling(task, stride=1)))
    assert [int(v["label"]) for v in streams] == list(range(len(streams)))
    n = len(streams)
    assert [int(v["video_index"]) for v in streams] == [7 * n + y for y in range(n)]
    seen = [frame_indices(v["frames"]).tolist() for v in streams]
    if task == "arrow":  # the whole video forward, then backward
        assert seen == [list(range(T)), list(range(T))[::-1]]
    else:  # every first, second and fourth frame, forward
        assert seen == [list(range(0, T, v)) for v in (1, 2, 4)]


def pooled_logits(engine, data) -> dict:
    """{video: its logits averaged over its scored steps} through the evaluation loop."""
    metrics = engine.task.metrics()
    for batch in data.batch(engine.batch_per_process):
        evaluate.score_batch(engine, metrics, batch["frames"], batch["label"], batch["video_index"])
    return metrics.video_logits(), metrics.result()


def test_a_per_frame_model_that_predicts_both_directions_is_still_right_on_exactly_half():
    keras.utils.set_random_seed(0)
    pipeline = convnet.tiny_conv_pipeline(
        batch_size=4,
        frame_shape=(16, 16, 3),
        task=tasks.TemporalClassification("arrow"),
        topology="skip(2)",
    )
    data = moving_shapes.moving_shapes_dataset(
        "eval", 16, temporal_task="arrow", num_frames=8, frame_size=16, shape_size=5
    )
    frame_bp = sw.Engine(pipeline, "frame_bp")
    logits, _ = pooled_logits(frame_bp, data)
    # A fresh model says one class for every clip; move the boundary to the median
    # video, so that this per-frame model says "forward" for some and "reversed" for others.
    margins = np.array([p[1] - p[0] for p in logits.values()])
    pipeline.head.logits.bias.assign([0.0, -float(np.median(margins))])
    logits, result = pooled_logits(frame_bp, data)
    said = {v: int(p.argmax()) for v, p in logits.items()}
    assert set(said.values()) == {0, 1}
    # A clip and its reverse (videos 2i, 2i + 1): the same prediction, so one is right.
    for i in range(16):
        np.testing.assert_allclose(logits[2 * i], logits[2 * i + 1], atol=1e-5)
    assert result["clip_accuracy"] == result["video_accuracy"] == 0.5
    assert result["per_frame_ceiling"] == 0.5

    # The same parameters pipelined (the bptt network with its skip) see the order.
    seen, _ = pooled_logits(sw.Engine(pipeline, "bptt"), data)
    assert max(np.abs(seen[2 * i] - seen[2 * i + 1]).max() for i in range(16)) > 1e-3


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_gin_config")
def test_frame_bp_stays_exactly_at_the_per_frame_ceiling_on_arrow_of_time(tmp_path, capsys):
    # A per-frame network pooled over frames sees a clip and its reverse alike, and the
    # evaluation holds both: it is right on exactly one of each pair, whatever it learnt.
    records = make_records(str(tmp_path), {"train": {"all": [24, 24]}, "eval": {"all": [24, 30]}})
    workdir = str(tmp_path / "run")
    small = [
        f"TRAIN_RECORDS='{records}/train-*-of-*.tfrecord'",
        f"EVAL_RECORDS='{records}/eval-*-of-*.tfrecord'",
        "clip_sampling.num_frames = 8",
        "clip_sampling.image_size = 8",
        "clip_sampling.multiview_clips = 2",
        "train.global_batch = 2",
        "train.num_steps = 4",
        "train.eval_every = 4",
        "train.checkpoint_every = 4",
        "train.fidelity_every = 0",
        "train.images_every = 0",
        "train.progress = False",
        "conv_pipeline.widths = (4, 4, 8, 8)",
    ]
    argv = [f"--workdir={workdir}", "--gin_file=experiments/folder_arrow_frame_bp"]
    cli.train_main(argv + [f"--gin_param={p}" for p in small])
    with open(os.path.join(workdir, "eval_metrics.json")) as f:
        trained = json.load(f)
    # 2 videos x 2 directions, 4 windows each.
    assert (trained["num_videos"], trained["num_clips"]) == (4, 16)
    assert trained["clip_accuracy"] == trained["video_accuracy"] == 0.5
    assert trained["per_frame_ceiling"] == 0.5
    capsys.readouterr()

    cli.eval_main([f"--workdir={workdir}", "--protocols=multiview"])
    out = capsys.readouterr().out
    assert "per-frame ceiling 0.500" in out and "(4 videos x 6 views)" in out
    with open(os.path.join(workdir, "eval_metrics.json")) as f:
        again = json.load(f)["history"][-1]
    # Multi-view: per video (a source video in one direction), 2 windows x 3 crops.
    assert (again["multiview_videos"], again["multiview_views"]) == (4, 24)
    assert again["multiview_accuracy"] == again["multiview_view_accuracy"] == 0.5
    assert again["clip_accuracy"] == 0.5


@pytest.mark.usefixtures("fresh_gin_config")
@pytest.mark.parametrize("data", ["folder", "moving_shapes"])
@pytest.mark.parametrize("task", ["arrow", "speed"])
def test_the_shipped_experiments_pick_the_task_with_one_binding_for_every_mode(data, task):
    for mode in ("frame_bp", "bptt", "sideways", "skip_sideways"):
        gin.clear_config()
        name = f"experiments/{data}_{task}_{mode}"
        path = config_files.resolve(name)
        header = open(path).read().split("\ninclude")[0]
        assert f"sideways-train --gin_file={name} " in header
        assert all(word in header for word in ("Needs:", "Time:", "Result:"))
        gin.parse_config_files_and_bindings([path], [])
        assert gin.query_parameter("train.mode") == mode
        # One binding picks the task: the data and the task read the same macro.
        assert gin.query_parameter("TEMPORAL_TASK/macro.value") == task
        reader = "clip_sampling" if data == "folder" else "moving_shapes_dataset"
        for binding in (f"{reader}.temporal_task", "TemporalClassification.temporal_task"):
            assert str(gin.query_parameter(binding)) == "%TEMPORAL_TASK", binding
        model_fn = gin.query_parameter("train.model_fn").scoped_configurable_fn
        pipeline = model_fn(
            batch_size=1, frame_shape=(8, 8, 3), task=tasks.TemporalClassification(task)
        )
        check_mode(mode, pipeline)  # raises if the topology does not fit the mode
