"""A task is a setting: a toy task in one file trains through the command line with one
gin binding (train.task = @Brightness()), and the run evaluates and loads back with it."""

import json

import numpy as np
import pytest
import toy_task

from sideways_tf import cli, config_files, evaluate, runs, tasks
from sideways_tf.models import convnet
from sideways_tf.workdir import Workdir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_gin_config")]


def test_a_toy_task_in_one_file_trains_through_the_cli_with_one_binding(tmp_path):
    workdir = str(tmp_path / "run")
    argv = ["--workdir", workdir, "--gin_file", config_files.resolve("tiny")]
    cli.train_main(
        argv + ["--gin_param", "train.task = @Brightness()", "--gin_param", "train.num_steps = 20"]
    )
    with open(Workdir(workdir).eval_metrics) as f:
        last = json.load(f)["history"][-1]
    # It learned: the error of the trained parameters is far below the initial ones'.
    initial = runs.load_run(workdir, restore=False)
    before = evaluate.evaluate(initial.engine, initial.eval_data())
    assert last["step"] == 20 and last["num_clips"] == before["num_clips"] == 10
    assert last["brightness_error"] < 0.5 * before["brightness_error"]
    # The task is in the run's config, so the workdir loads back with it.
    run = runs.load_run(workdir)
    assert isinstance(run.pipeline.task, toy_task.Brightness)
    assert run.pipeline.top_output_shape == (4, 1)
    assert run.engine.predict_clip(np.zeros((4, 8, 16, 16, 3), "float32")).shape == (4, 1)


def test_the_older_bindings_still_train_and_name_the_new_ones(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    old = [
        "train.task = None",
        "train.num_classes = 12",  # now train.task = @Classification(), .num_classes
        "train.batch_size = 4",  # now train.global_batch
        "train.global_batch = 16",  # (overridden by the older name, as before)
        "train.num_steps = 2",
        "train.eval_every = 2",
    ]
    argv = ["--workdir", workdir, "--gin_file", config_files.resolve("tiny")]
    cli.train_main(argv + [a for p in old for a in ("--gin_param", p)])
    err = capsys.readouterr().err
    assert "train.num_classes; bind train.task = @Classification()" in err
    assert "train.batch_size; bind train.global_batch" in err
    run = runs.load_run(workdir)
    assert repr(run.pipeline.task) == repr(tasks.Classification(num_classes=12))
    assert run.settings.global_batch == 4 and run.pipeline.batch_size == 4


def test_a_model_head_of_the_older_api_is_the_task_it_meant():
    with pytest.warns(DeprecationWarning, match=r"FutureFrames.decoder = 'delta'"):
        pipeline = convnet.tiny_conv_pipeline(
            batch_size=2, frame_shape=(8, 8, 3), num_classes=None, head="frame_delta"
        )
    assert isinstance(pipeline.task, tasks.FutureFrames) and pipeline.task.decoder == "delta"
    assert pipeline.head_reads_frame and not pipeline.head_reads_previous_frame
    with pytest.raises(ValueError, match=r"needs the run's task.*train.task = @Classification"):
        convnet.tiny_conv_pipeline(batch_size=2, frame_shape=(8, 8, 3))
