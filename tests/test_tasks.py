"""A task is a setting: a toy task in one file trains through the command line with one
gin binding (train.task = @Brightness()), and the run evaluates and loads back with it."""

import json

import numpy as np
import pytest
import toy_task

from sideways_tf import cli, config_files, evaluate, runs
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
