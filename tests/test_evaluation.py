"""ONE evaluation: every path (the training loop, sideways-eval, SidewaysModel.evaluate)
runs sideways_tf.evaluate's loop and reports the same numbers for the same checkpoint.

Classification reports per-video and per-clip figures under different names, with
their counts; a video's clips pool their averaged logits before the argmax.
"""

import json

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from toy import train_config

import sideways_tf as sw
from sideways_tf import cli, evaluate, runs, tasks
from sideways_tf.workdir import Workdir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_gin_config")]

CLASSIFICATION = (
    "tiny",
    # Eval videos cut into 2 clips each: per video and per clip differ.
    ["eval/moving_shapes_dataset.clips_per_video = 2"],
    ("video_accuracy", "clip_accuracy", "loss", "num_videos", "num_clips", "scored_steps"),
)
FUTURE_FRAMES = (
    "experiments/moving_shapes_future_skip_sideways",
    [
        "train.num_steps = 3",
        "train.global_batch = 2",
        "train.eval_every = 3",
        "train.progress = False",
        "train.fidelity_every = 0",
        "moving_shapes_future_dataset.num_frames = 8",
        "moving_shapes_future_dataset.frame_size = 16",
        "eval/moving_shapes_future_dataset.num_examples = 5",  # a partial last batch
        "conv_pipeline.widths = (4, 4, 4, 4)",
    ],
    ("psnr", "ssim", "psnr_copy_last", "ssim_copy_last", "loss", "num_clips", "scored_frames"),
)


def keras_evaluate(workdir):
    """SidewaysModel.evaluate on the run's eval data, with the run's checkpoint."""
    run = runs.load_run(workdir)
    model = sw.SidewaysModel(pipeline=run.pipeline)
    model.compile(mode=run.settings.mode)
    data = run.eval_data().batch(run.engine.batch_per_process)
    return model.evaluate(data, verbose=0, return_dict=True)


@pytest.mark.parametrize("config, params, keys", [CLASSIFICATION, FUTURE_FRAMES])
def test_one_checkpoint_gives_equal_metrics_through_every_path(tmp_path, config, params, keys):
    workdir = str(tmp_path / "run")
    trained = train_config(workdir, *params, config=config)["eval"]  # the loop's last eval
    cli.eval_main(["--workdir", workdir])  # sideways-eval: recorded in eval_metrics.json
    with open(Workdir(workdir).eval_metrics) as f:
        history = json.load(f)["history"]
    standalone = [h for h in history if h.get("source") == "sideways-eval"][-1]
    gin.clear_config()
    from_keras = keras_evaluate(workdir)
    for key in keys:
        assert standalone[key] == pytest.approx(trained[key], rel=1e-5, abs=1e-6), key
        assert from_keras[key] == pytest.approx(trained[key], rel=1e-5, abs=1e-6), key
    if "video_accuracy" in keys:  # 2 clips per video: the counts tell the two apart
        assert trained["num_clips"] == 2 * trained["num_videos"] == 20


def test_video_accuracy_pools_the_clips_of_a_video_and_clip_accuracy_does_not():
    metrics = tasks.Classification(num_classes=2).metrics()
    # Video 0: clips of logits favouring 1 weakly and 0 strongly -> the video says 0;
    # its label is 0, so the video is right while one of its two clips is wrong.
    outputs = tf.constant([[[0.0, 1.0]] * 3, [[5.0, 0.0]] * 3, [[0.0, 2.0]] * 3])  # [3, K=3, 2]
    labels = tf.constant([0, 0, 1])
    metrics.update(
        tasks.EvalBatch(
            outputs=outputs,
            targets=tf.tile(labels[:, None], [1, 3]),
            weights=tf.constant([0.0, 1.0, 1.0]),  # step 1 still filling: not scored
            references={},
            labels=labels,
            videos=tf.constant([0, 0, 1], tf.int64),
        )
    )
    result = metrics.result()
    assert result["video_accuracy"] == 1.0 and result["clip_accuracy"] == pytest.approx(2 / 3)
    assert (result["num_videos"], result["num_clips"], result["scored_steps"]) == (2, 3, 6)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, outputs[:, 0])
    assert result["loss"] == pytest.approx(float(tf.reduce_mean(loss)), rel=1e-6)


def test_an_evaluation_of_non_finite_outputs_is_refused():
    pipeline = sw.Pipeline(
        [sw.Unit(keras.layers.Dense(3), name="u")],
        task=tasks.Classification(),
        batch_size=2,
        frame_shape=(4,),
    )
    engine = sw.Engine(pipeline, "sideways")
    data = tf.data.Dataset.from_tensor_slices(
        {"frames": np.full((2, 3, 4), np.nan, "float32"), "label": np.zeros(2, "int32")}
    )
    with pytest.raises(FloatingPointError, match="No figure is reported"):
        evaluate.evaluate(engine, data)
