"""Training runs end to end on gin/tiny.gin: summaries, checkpoints, resume, eval, errors."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from toy import event_tags, train_config

from sideways_tf import checkpointing, cli, config_files, workdir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_gin_config")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = config_files.resolve("tiny")
MODE_TOPOLOGY = {
    "frame_bp": "chain",
    "bptt": "skip(2)",
    "sideways": "chain",
    "skip_sideways": "skip(2)",
}


run = train_config


def parameters(workdir):
    path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    return {
        k: tf.train.load_variable(path, k)
        for k, _ in tf.train.list_variables(path)
        if k.startswith("pipeline/") and "VARIABLE_VALUE" in k and "unit" in k
    }


@pytest.mark.parametrize("mode", list(MODE_TOPOLOGY))
def test_every_mode_writes_summaries_and_a_checkpoint(tmp_path, mode):
    result = run(
        tmp_path, f"train.mode='{mode}'", f"tiny_conv_pipeline.topology='{MODE_TOPOLOGY[mode]}'"
    )
    assert result["step"] == 6
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-6")
    tags = event_tags(tmp_path / "train")
    for tag in ("loss", "clip_accuracy", "learning_rate", "frames_per_second"):
        assert tag in tags
    for prefix in ("grad_norm", "buffer_norm", "fidelity/cosine", "fidelity/norm_ratio"):
        assert {f"{prefix}/unit_{i}" for i in (1, 2, 3)} <= tags
    assert "gin/operative_config" in tags and "input_clips" in tags
    assert {"video_accuracy", "clip_accuracy", "loss"} <= event_tags(tmp_path / "eval")
    config = (tmp_path / "config.gin").read_text()
    assert f"train.mode = '{mode}'" in config
    metrics = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["num_videos"] == 10
    assert [h["step"] for h in metrics["history"]] == [3, 6]


def test_stopped_run_resumes_at_the_saved_step_with_the_same_parameters(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(straight)
    run(stopped, "train.stop_at_step=3")  # the "stop": checkpoint at step 3
    saved = parameters(stopped)
    # Resuming restores step 3 (not 0) and the data position, so steps 4-6 see the
    # same batches as the straight run: the final parameters agree.
    result = run(stopped)
    assert result["step"] == 6
    resumed, reference = parameters(stopped), parameters(straight)
    assert saved.keys() == resumed.keys()
    assert any(not np.array_equal(saved[k], resumed[k]) for k in saved)
    for k in reference:
        np.testing.assert_allclose(resumed[k], reference[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_every_file_a_run_writes_is_named_by_its_workdir(tmp_path):
    # A run stopped and resumed writes all it ever writes: LOCK (gone at the end),
    # config.gin, evaluations, checkpoints, summaries; each name is the Workdir's.
    run(tmp_path, "train.stop_at_step=3")
    run(tmp_path)
    wd = workdir.Workdir(str(tmp_path))
    assert set(os.listdir(tmp_path)) == set(wd.names()) - {wd.LOCK}
    state = os.path.basename(workdir.checkpoint_state_file(wd.checkpoints))
    in_checkpoints = [n for n in os.listdir(wd.checkpoints) if n != state]
    files = [workdir.checkpoint_file(n) for n in in_checkpoints]
    assert all(files), in_checkpoints
    assert {f.step for f in files if f.index} == {3, 6}
    assert os.path.exists(workdir.checkpoint_index(wd.checkpoint(6)))
    assert workdir.Workdir.of_checkpoint(wd.checkpoint(6)).config == wd.config
    assert workdir.read_config(wd).rstrip().endswith(workdir.CONFIG_END)
    assert [h["step"] for h in workdir.read_evaluations(wd)["history"]] == [3, 6]


def test_unknown_gin_binding_is_named(tmp_path):
    with pytest.raises(ValueError, match="num_stepz"):
        cli.train_main(
            ["--workdir", str(tmp_path), "--gin_file", TINY, "--gin_param", "train.num_stepz=3"]
            + ["--verbosity=1"]  # (the exception itself; tests/test_cli.py: the message alone)
        )


def test_missing_required_binding_is_named(tmp_path):
    with pytest.raises(ValueError, match="train.mode set to `%gin.REQUIRED`"):
        cli.train_main(
            [
                "--workdir",
                str(tmp_path),
                "--gin_file",
                TINY,
                "--gin_param",
                "train.mode=%gin.REQUIRED",
                "--verbosity=1",
            ]
        )


def test_mode_that_does_not_fit_the_topology_names_the_bindings(tmp_path):
    with pytest.raises(ValueError, match="train.mode = 'sideways'"):
        run(tmp_path, "tiny_conv_pipeline.topology='skip(2)'")


def test_workdir_with_another_model_fails_without_loading(tmp_path):
    run(tmp_path)
    with pytest.raises(checkpointing.ModelMismatchError, match="different model") as error:
        run(
            tmp_path,
            "train.num_steps=9",
            "tiny_conv_pipeline.widths=(4, 8, 16)",
            allow_config_change=True,  # past the config check: the checkpoint check holds
        )
    assert "shape" in str(error.value) and "Nothing was loaded" in str(error.value)
    # The old checkpoint is still the latest and intact.
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-6")
