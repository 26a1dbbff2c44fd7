"""One way to load a run: load_run serves evaluation, export and the benchmarks."""

import numpy as np
import pytest
from toy import train_config

from sideways_tf import checkpointing, runs
from sideways_tf.evaluate import evaluate_workdir
from sideways_tf.workdir import Workdir


def params(pipeline):
    return {k: np.array(v) for k, v in checkpointing.variables_by_path(pipeline, False).items()}


def test_load_run_restores_the_trained_parameters_or_the_initial_ones(tmp_path):
    train_config(tmp_path, "train.num_steps = 3", "train.progress = False")
    trained = runs.load_run(tmp_path)
    init = runs.load_run(tmp_path, restore=False)
    again = runs.load_run(tmp_path, restore=False)
    assert trained.step == 3 and trained.checkpoint.endswith("ckpt-3")
    assert init.step == 0 and init.checkpoint is None
    a, b, c = params(trained.pipeline), params(init.pipeline), params(again.pipeline)
    assert a.keys() == b.keys()
    assert all(np.array_equal(b[k], c[k]) for k in b)  # the run's seed: the same start
    assert all(not np.array_equal(a[k], b[k]) for k in a)  # every parameter trained
    assert trained.engine.optimizer is None and trained.settings.num_steps == 3
    assert trained.class_names is not None  # moving_shapes names its classes
    result = evaluate_workdir(str(tmp_path), progress=False)
    assert result["step"] == 3 and 0.0 <= result["eval"]["video_accuracy"] <= 1.0


def test_load_run_on_a_directory_that_is_not_a_run_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.gin not found.*sideways-train --workdir"):
        runs.load_run(tmp_path)
    assert Workdir(str(tmp_path)).config.endswith("config.gin")
