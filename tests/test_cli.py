"""The command lines end a user's mistake with `command: message` and exit 2, no traceback.

In-process runs of cli.*_main on mistakes that fail before training starts.
"""

import os
import subprocess
import sys

import gin
import keras
import pytest

import sideways_tf as sw
from sideways_tf import checkpointing, cli, train, workdir

pytestmark = pytest.mark.usefixtures("fresh_gin_config")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_argv(tmp_path, *params, gin_file="tiny"):
    argv = [f"--workdir={tmp_path / 'run'}", f"--gin_file={gin_file}"]
    return argv + [f"--gin_param={p}" for p in params]


def usage_error(main, argv, capsys) -> str:
    """Runs a command that must stop on a mistake; returns its stderr."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    assert exited.value.code == 2, (out, err)
    assert "Traceback" not in out + err
    assert str(exited.value) == err.strip()  # in-process callers get the message too
    return err


@pytest.mark.parametrize(
    "binding, expected",
    [
        (
            "train.num_step=3",
            [
                "Configurable 'train' doesn't have a parameter named 'num_step'.",
                "In bindings string line 1\n    train.num_step=3",
                "Did you mean train.num_steps?",
            ],
        ),
        ("trian.num_steps=1", ["No configurable matching 'trian'.", "trian.num_steps=1"]),
        ("train.model_fn=@nothing", ["No configurable matching reference '@nothing'"]),
        (
            "train.num_steps=)",
            [
                "Unable to parse value.\n  In bindings string line 1",
                "    train.num_steps=)\n" + " " * 20 + "^",  # the caret under ")"
            ],
        ),
        ("train.num_steps=[1,", ["gin could not parse the config", "left open?"]),
    ],
)
def test_a_gin_binding_gin_refuses_is_a_message_with_its_location(
    tmp_path, capsys, binding, expected
):
    err = usage_error(cli.train_main, train_argv(tmp_path, binding), capsys)
    assert err.startswith("sideways-train: ")
    for fragment in expected:
        assert fragment in err, err


def test_clips_too_short_for_the_mode_are_a_message_naming_k_and_the_binding(tmp_path, capsys):
    err = usage_error(
        cli.train_main, train_argv(tmp_path, "moving_shapes_dataset.num_frames=2"), capsys
    )
    assert err.startswith(
        "sideways-train: Clips of K=2 frames (the num_frames of train.train_data)"
    )
    assert "K must be at least 5" in err
    assert " at 0x" not in err  # ... without the function's address
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_gin_file_is_a_message_listing_the_shipped_ones(tmp_path, capsys):
    err = usage_error(cli.train_main, train_argv(tmp_path, gin_file="no_such_config"), capsys)
    assert err.startswith("sideways-train: gin config 'no_such_config' not found")
    assert "experiments/moving_shapes_skip_sideways" in err


def test_a_required_binding_left_out_is_a_message(tmp_path, capsys):
    err = usage_error(cli.train_main, train_argv(tmp_path, gin_file="base"), capsys)
    assert "Required bindings for `train` not provided in config" in err
    assert "'model_fn'" in err


@pytest.mark.parametrize("main", [cli.eval_main, cli.export_main])
def test_a_workdir_that_is_not_a_run_is_a_message(tmp_path, capsys, main):
    argv = [f"--workdir={tmp_path}"]
    if main is cli.export_main:
        argv.append(f"--output={tmp_path / 'out'}")
    err = usage_error(main, argv, capsys)
    command = "sideways-eval" if main is cli.eval_main else "sideways-export"
    assert err.startswith(f"{command}: {tmp_path / 'config.gin'} not found")
    assert "the workdir of a sideways-train run?" in err


@pytest.mark.parametrize(
    "argv, error, match",
    [
        (["--gin_param=train.num_step=3"], ValueError, "num_step'.\n  In bindings string"),
        (["--gin_file=no_such_config"], FileNotFoundError, "'no_such_config' not found"),
        (["--gin_param=moving_shapes_dataset.num_frames=2"], ValueError, "K=2"),
    ],
)
def test_verbosity_one_lets_the_exception_propagate(tmp_path, argv, error, match):
    with pytest.raises(error, match=match) as raised:
        cli.train_main([f"--workdir={tmp_path}", "--gin_file=tiny", *argv, "--verbosity=1"])
    assert len(raised.traceback) > 2  # the frames down to the raise, for a bug report


def test_an_error_raised_inside_keras_keeps_its_traceback(tmp_path, monkeypatch):
    """Not a check of a setting (a fault, or a setting no check knows): not hidden."""
    monkeypatch.setattr(train, "train", lambda *a, **k: keras.layers.Dense(units=-1))
    with pytest.raises(ValueError, match="invalid value for `units`"):
        cli.train_main(train_argv(tmp_path))


@pytest.mark.parametrize(
    "error, code",
    [
        (KeyboardInterrupt(), 130),
        (
            checkpointing.NonFiniteError("NaN in dense/kernel"),
            "sideways-train: NaN in dense/kernel",
        ),
        (workdir.WorkdirLockedError("held by pid 7"), "sideways-train: held by pid 7"),
        (workdir.ConfigChangedError("mode differs"), "sideways-train: mode differs"),
    ],
)
def test_a_run_that_cannot_go_on_keeps_its_exit(tmp_path, capsys, monkeypatch, error, code):
    def stopped(*args, **kwargs):
        raise error

    monkeypatch.setattr(train, "train", stopped)
    with pytest.raises(SystemExit) as exited:
        cli.train_main(train_argv(tmp_path))
    assert exited.value.code == code  # a string: printed, exit status 1
    if code == 130:
        assert "keeps its last checkpoint. Run again to resume." in capsys.readouterr().out


@pytest.mark.slow
def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
    """The whole process: exit status and everything on stderr (TensorFlow's start-up too)."""
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # conftest's
    proc = subprocess.run(
        [sys.executable, "-c", "from sideways_tf import cli; cli.train_main()"]
        + train_argv(tmp_path, "train.num_step=3"),
        env={**environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("sideways-train: Configurable 'train' doesn't have a parameter")
    assert proc.stderr.count("\n") == 4, proc.stderr  # message, location (2), hint
    assert "cuInit" not in proc.stderr  # (looking for a GPU on a machine without one)


class _Liar(keras.layers.Layer):
    """Declares its input's shape and returns half of its channels."""

    def call(self, x):
        return x[..., : x.shape[-1] // 2]

    def compute_output_shape(self, shape):
        return shape


@gin.configurable
def cli_test_liar_pipeline(batch_size, frame_shape, task=None, placement=None):
    units = [sw.Unit(keras.layers.Conv2D(4, 1), name="fine"), sw.Unit(_Liar(), name="liar")]
    head = task.head(frame_shape)
    return sw.Pipeline(units, head=head, task=task, batch_size=batch_size, frame_shape=frame_shape)


def test_an_error_raised_inside_the_compiled_step_is_one_message(tmp_path, capsys):
    """The unit's check runs while TensorFlow traces the step (autograph's 40-80 line
    report around it): the command prints the check's message alone."""
    err = usage_error(
        cli.train_main, train_argv(tmp_path, "train.model_fn=@cli_test_liar_pipeline"), capsys
    )
    assert err.startswith("sideways-train: Unit 2 ('liar') returned an output of shape")
    assert err.count("\n") == 1 and "in user code" not in err
