"""The field's evaluation protocols for classification, through the one evaluation loop
and the Classification Metrics: multi-view (N clips x 3 crops per video) and streaming
(each video run once, frame by frame, with the state carried).
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_videos import make_records

import sideways_tf as sw
from sideways_tf import evaluate, tasks
from sideways_tf.data import dmvr
from sideways_tf.data.sampling import ClipSampling, video_clips
from sideways_tf.models import convnet

EVAL_LENGTHS = {"a": [11, 26], "b": [19]}  # three eval videos of different lengths
K = 8  # clip_sampling.num_frames


def test_the_three_crops_run_along_the_long_side_and_the_middle_one_is_the_centred_crop():
    # A landscape frame whose grey level rises from left to right.
    ramp = np.broadcast_to(10 * np.arange(16)[None, None, :, None], (6, 8, 16, 3))
    video = tf.data.Dataset.from_tensors(
        {"encoded": ramp.astype(np.uint8), "label": 1, "video_index": tf.constant(3, tf.int64)}
    )
    three = ClipSampling(num_frames=3, image_size=4, num_eval_clips=2, eval_crops=3)
    clips = list(video_clips(video, training=False, sampling=three))
    assert len(clips) == 6 and {int(c["video_index"]) for c in clips} == {3}
    means = [float(np.mean(c["frames"])) for c in clips]
    assert means[0] < means[1] < means[2] and means[3] < means[4] < means[5]
    one = dataclasses.replace(three, eval_crops=1)
    centred = list(video_clips(video, training=False, sampling=one))
    np.testing.assert_array_equal(clips[1]["frames"], centred[0]["frames"])


def test_a_streamed_video_pools_its_logits_over_all_its_scored_steps():
    metrics = tasks.Classification(num_classes=2).metrics()
    # Video 5, streamed in two chunks of K = 3: the first has one scored step (the
    # pipeline filling), the second two (then the video ends). Its logits over the three
    # steps say class 1, though the mean of the two chunks' means would say 0.
    outputs = tf.constant(
        [[[9.0, 0.0], [0.0, 3.0], [0.0, 3.0]], [[0.0, 3.0], [0.0, 3.0], [0.0, 0.0]]]
    )
    for row, weights in ((0, [[0.0, 0.0, 1.0]]), (1, [[1.0, 1.0, 0.0]])):
        metrics.update(
            tasks.EvalBatch(
                outputs=outputs[row : row + 1],
                targets=tf.ones([1, 3], tf.int32),
                weights=tf.constant(weights),
                references={},
                labels=tf.constant([1]),
                videos=tf.constant([5], tf.int64),
            )
        )
    np.testing.assert_allclose(metrics.video_logits()[5], [0.0, 3.0])
    result = metrics.protocol_result("streaming")
    assert result["streaming_accuracy"] == 1.0
    assert (result["streaming_videos"], result["streaming_frames"]) == (1, 3)
    with pytest.raises(ValueError, match="reports no 'multiview' evaluation"):
        tasks.FutureFrames().metrics().protocol_result("multiview")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return make_records(str(tmp_path_factory.mktemp("protocols")), {"eval": EVAL_LENGTHS})


def eval_data(records, protocol):
    sampling = ClipSampling(num_frames=K, image_size=8, num_eval_clips=2, multiview_clips=3)
    return dmvr.dmvr_dataset(
        f"{records}/eval-*-of-*.tfrecord", False, sampling=sampling, protocol=protocol
    )


def engine_of(mode):
    keras.utils.set_random_seed(0)
    pipeline = convnet.tiny_conv_pipeline(
        batch_size=2,
        frame_shape=(8, 8, 3),
        task=tasks.Classification(num_classes=2),
        topology="skip(2)",
    )
    return sw.Engine(pipeline, mode)


def frame_by_frame(engine, frames) -> np.ndarray:
    """The network one frame at a time through the pipeline with carried state (eagerly),
    the video in row 0 of the batch: its logits averaged over its scored steps [C]."""
    pipeline, scored = engine.pipeline, []
    state = pipeline.zero_state()
    for t, frame in enumerate(frames, start=1):
        x = tf.concat([frame[None], tf.zeros_like(frame)[None]], axis=0)  # [B = 2, *frame]
        if engine.mode.pipelined:
            state, y = pipeline.forward_step(state, x)
            if t >= pipeline.fill_steps:
                scored.append(y[0])
        else:
            scored.append(pipeline.frame_forward(x)[0])
    return np.mean(scored, axis=0)


@pytest.mark.slow
def test_multiview_scores_n_clips_by_3_crops_of_every_video(records):
    engine = engine_of("frame_bp")
    result = evaluate.evaluate(engine, eval_data(records, "multiview"), protocol="multiview")
    assert (result["multiview_videos"], result["multiview_views"]) == (3, 3 * 3 * 3)
    assert set(result) == {
        "multiview_accuracy",
        "multiview_view_accuracy",
        "multiview_loss",
        "multiview_videos",
        "multiview_views",
    }
    standard = evaluate.evaluate(engine, eval_data(records, None))
    assert (standard["num_videos"], standard["num_clips"]) == (3, 3 * 2)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["skip_sideways", "frame_bp"])
def test_streaming_equals_feeding_each_video_frame_by_frame(records, mode):
    engine = engine_of(mode)
    videos = {int(v["video_index"]): v for v in eval_data(records, "streaming")}
    lengths = sorted(int(v["frames"].shape[0]) for v in videos.values())
    assert lengths == [11, 19, 26]  # every frame, whole (stride 1)

    metrics = engine.task.metrics()
    # Chunks of 5 frames: T_fill (3 steps on this skip pipeline) falls inside the first,
    # and each video ends inside a padded chunk.
    evaluate.stream_videos(engine, metrics, eval_data(records, "streaming"), chunk=5)
    streamed = metrics.video_logits()
    assert sorted(streamed) == sorted(videos)
    for index, video in videos.items():
        expected = frame_by_frame(engine, video["frames"])
        np.testing.assert_allclose(streamed[index], expected, rtol=1e-5, atol=1e-5)

    result = evaluate.evaluate(engine, eval_data(records, "streaming"), protocol="streaming")
    first = engine.mode.first_step(engine.pipeline)
    assert result["streaming_videos"] == 3
    assert result["streaming_frames"] == sum(n - first + 1 for n in lengths)
    truth = {i: int(v["label"]) for i, v in videos.items()}
    hits = [streamed[i].argmax() == truth[i] for i in videos]
    assert result["streaming_accuracy"] == pytest.approx(np.mean(hits))
