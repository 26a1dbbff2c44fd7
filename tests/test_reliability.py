"""Reliability of training runs: non-finite steps, damaged checkpoints, stops, bad settings."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import gin
import numpy as np
import pytest
import tensorflow as tf
from test_train import TINY, event_tags, parameters, run

from sideways_tf import checkpointing, cli, workdir
from sideways_tf.data.moving_shapes import moving_shapes_dataset
from sideways_tf.evaluate import evaluate_workdir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_gin_config")]


@gin.configurable
def poisoned_moving_shapes(first: int = 5, count: int = 1, **kwargs):
    """moving_shapes with NaN pixels in examples first .. first + count - 1."""

    def poison(index, example):
        bad = (index >= first) & (index < first + count)
        frames = tf.where(bad, tf.fill(tf.shape(example["frames"]), np.nan), example["frames"])
        return {**example, "frames": frames}

    return moving_shapes_dataset(**kwargs).enumerate().map(poison)


ITERATIONS = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"
POISONED = [
    "train.train_data = @poisoned_moving_shapes",
    "poisoned_moving_shapes.split = 'train'",
    "train.data_checkpoint = 'full'",  # (enumerate: positions alone would do as well)
]


def scalar_values(directory, tag):
    values = []
    for name in tf.io.gfile.listdir(str(directory)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(str(directory), name)):
            for v in event.summary.value:
                if v.tag == tag:
                    values.append(float(tf.make_ndarray(v.tensor)))
    return values


# -- Non-finite values -------------------------------------------------------------------


def test_nan_in_one_batch_skips_that_step_and_the_run_goes_on(tmp_path):
    result = run(tmp_path, *POISONED, "poisoned_moving_shapes.first = 5")  # step 2 of 4 clips
    assert result["step"] == 6 and np.isfinite(result["eval"]["loss"])
    for name, value in parameters(tmp_path).items():
        assert np.all(np.isfinite(value)), name
    assert "non_finite_steps" in event_tags(tmp_path / "train")
    assert max(scalar_values(tmp_path / "train", "non_finite_steps")) == 1
    ckpt = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    iterations = tf.train.load_variable(ckpt, ITERATIONS)
    assert int(iterations) == 5  # six steps, one update skipped


def test_a_stream_of_nan_stops_with_a_clear_error_and_a_non_zero_exit(tmp_path):
    args = ["--workdir", str(tmp_path), "--gin_file", TINY]
    for p in POISONED + ["poisoned_moving_shapes.first = 12", "poisoned_moving_shapes.count = 99"]:
        args += ["--gin_param", p]
    args += ["--gin_param", "train.max_non_finite_steps = 2"]
    with pytest.raises(SystemExit) as stopped:
        cli.train_main(args)
    message = str(stopped.value.code)
    assert "2 steps in a row (up to step 5)" in message and "train.max_non_finite_steps" in message
    assert "ckpt-3" in message  # the last good checkpoint, intact
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-3")


def test_a_learning_rate_that_blows_up_stops_and_saves_nothing_non_finite(tmp_path):
    with pytest.raises(checkpointing.NonFiniteError, match="NaN or Inf"):
        run(tmp_path, "adam.learning_rate = 1e38", "train.max_non_finite_steps = 2")
    directory = tmp_path / "checkpoints"
    for name in os.listdir(directory) if directory.exists() else []:
        if name.endswith(".index"):
            prefix = str(tmp_path / "checkpoints" / name[: -len(".index")])
            for key, _ in tf.train.list_variables(prefix):
                value = tf.train.load_variable(prefix, key)
                if np.asarray(value).dtype.kind == "f":
                    assert np.all(np.isfinite(value)), (name, key)


# -- Damaged checkpoints -----------------------------------------------------------------


def _truncate(prefix):
    data = tf.io.gfile.glob(prefix + ".data-*")[0]
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)


def _flip_bytes(prefix):
    data = tf.io.gfile.glob(prefix + ".data-*")[0]
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) // 3)
        chunk = f.read(64)
        f.seek(os.path.getsize(data) // 3)
        f.write(bytes(b ^ 0xFF for b in chunk))


def _remove_index(prefix):
    os.remove(prefix + ".index")


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes, _remove_index])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    straight = run(tmp_path / "straight", "train.num_steps = 8", "train.eval_every = 8")
    run(tmp_path / "damaged", "train.num_steps = 8", "train.eval_every = 8", "train.stop_at_step=6")
    damage(str(tmp_path / "damaged" / "checkpoints" / "ckpt-6"))
    with pytest.warns(UserWarning, match=r"ckpt-6 (cannot be restored|has data but no index)"):
        resumed = run(tmp_path / "damaged", "train.num_steps = 8", "train.eval_every = 8")
    assert resumed["step"] == 8 == straight["step"]
    assert (tmp_path / "damaged" / "checkpoints" / "damaged").is_dir()  # kept for inspection
    a, b = parameters(tmp_path / "damaged"), parameters(tmp_path / "straight")
    for k in b:  # resumed from step 3: the same batches, the same parameters
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_garbage_state_file_is_rebuilt_and_temporary_files_removed_not_a_restart(
    tmp_path, capsys
):
    run(tmp_path)
    capsys.readouterr()
    (tmp_path / "checkpoints" / "checkpoint").write_text("model_checkpoint_path: ]]garbage")
    orphan = tmp_path / "checkpoints" / "ckpt-7_temp"  # an interrupted save's
    orphan.mkdir()
    (orphan / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
    with pytest.warns(UserWarning, match="rebuilt it"):
        result = run(tmp_path, "train.num_steps = 9")
    assert result["step"] == 9 and "ckpt-6 at step 6." in capsys.readouterr().out  # resumed
    names = set(os.listdir(tmp_path / "checkpoints"))
    assert {"ckpt-6.index", "ckpt-9.index"} <= names
    assert not orphan.exists()


@pytest.mark.parametrize("listed", ["newest only", "all, without times"])
def test_a_state_file_that_lost_entries_or_times_still_rotates_to_keep_checkpoints(
    tmp_path, listed
):
    """What a preemption left (a state file naming only its own checkpoint, or a rebuilt
    one without times) must not keep the older checkpoints forever."""
    directory = str(tmp_path / "checkpoints")
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    many = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=10)
    for step in range(1, 6):
        many.save(checkpoint_number=step)
    paths = [os.path.join(directory, f"ckpt-{s}") for s in range(1, 6)]
    tf.compat.v1.train.update_checkpoint_state(
        directory,
        paths[-1],
        all_model_checkpoint_paths=paths[-1:] if listed == "newest only" else paths,
    )
    with pytest.warns(UserWarning, match="rebuilt it"):
        kept = checkpointing.Checkpointer(directory, checkpoint, max_to_keep=2)
    for step in (6, 7):
        kept.save(step)
    assert checkpointing.on_disk(directory) == [
        os.path.join(directory, "ckpt-7"),
        paths[-1][:-1] + "6",
    ]
    state = tf.train.get_checkpoint_state(directory)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-6", "ckpt-7"]
    assert len(state.all_model_checkpoint_timestamps) == 2


# -- Stops and resumes -------------------------------------------------------------------

TRAIN_CMD = "import sys; from sideways_tf import cli; cli.train_main(sys.argv[1:])"


def _train_process(workdir_path, *params):
    args = [sys.executable, "-c", TRAIN_CMD, "--workdir", str(workdir_path), "--gin_file", TINY]
    for p in params:
        args += ["--gin_param", p]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_ctrl_c_at_random_moments_resumes_to_the_same_parameters(tmp_path):
    params = ["train.num_steps = 14", "train.checkpoint_every = 4", "train.eval_every = 100"]
    run(tmp_path / "straight", *params)
    rng = np.random.default_rng(0)
    codes = []
    for delay in rng.uniform(0.5, 2.5, size=2):
        started = time.time()
        proc = _train_process(tmp_path / "stopped", *params)
        config = tmp_path / "stopped" / "config.gin"  # written just before the first step
        while not (config.exists() and config.stat().st_mtime > started):
            assert time.time() < started + 120 and proc.poll() is None
            time.sleep(0.05)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=240)[0]
        codes.append(proc.returncode)
        assert proc.returncode in (0, 130), out[-2000:]
        assert "Traceback" not in out, out[-2000:]
    assert 130 in codes  # at least one landed mid-run
    result = run(tmp_path / "stopped", *params)
    assert result["step"] == 14
    a, b = parameters(tmp_path / "stopped"), parameters(tmp_path / "straight")
    ckpt = tf.train.latest_checkpoint(str(tmp_path / "stopped" / "checkpoints"))
    assert int(tf.train.load_variable(ckpt, ITERATIONS)) == 14
    for k in b:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_lost_final_evaluation_is_redone_on_rerun(tmp_path):
    run(tmp_path)
    path = tmp_path / "eval_metrics.json"
    data = json.loads(path.read_text())
    data["history"] = [h for h in data["history"] if h["step"] < 6]  # killed before it
    path.write_text(json.dumps(data))
    result = run(tmp_path)
    assert result["step"] == 6 and result["eval"]["num_videos"] == 10
    assert [h["step"] for h in json.loads(path.read_text())["history"]] == [3, 6]
    again = run(tmp_path)  # nothing left to do: says so, and returns the recorded eval
    assert again["eval"]["step"] == 6


def test_evaluation_appends_its_own_entry_and_never_rewrites_the_config(tmp_path):
    run(tmp_path)
    config = (tmp_path / "config.gin").read_text()
    gin.clear_config()

    evaluate_workdir(str(tmp_path), ("eval/moving_shapes_dataset.num_examples = 4",))
    assert (tmp_path / "config.gin").read_text() == config
    data = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert data["num_videos"] == 10 and data["step"] == 6  # the training run's record
    assert [(h["source"], h["num_videos"]) for h in data["history"]][-2:] == [
        ("train", 10),
        ("sideways-eval", 4),
    ]


# -- Bad settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "binding, message",
    [
        ("train.checkpoint_every = 0", "train.checkpoint_every must be a positive integer, got 0"),
        ("train.global_batch = 'x'", "train.global_batch must be a positive integer, got 'x'"),
        ("train.global_batch = 0", "train.global_batch must be a positive integer"),
        ("train.global_batch = 2.5", "train.global_batch must be a positive integer, got 2.5"),
        ("train.keep_checkpoints = 0", "train.keep_checkpoints must be a positive integer"),
        ("train.fidelity_every = -1", "train.fidelity_every must be an integer >= 0"),
        ("train.update_every = 3", r"K=8 frames, not a multiple of train.update_every=3"),
        ("train.data_checkpoint = 'some'", "train.data_checkpoint = 'some'"),
        ("moving_shapes_dataset.num_frames = 4", r"K=4 frames.*T_fill = 3.*at least 5"),
    ],
)
def test_bad_settings_fail_before_any_work_naming_the_binding(tmp_path, binding, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, binding)
    assert not (tmp_path / "checkpoints").exists()


def test_a_workdir_that_is_a_file_or_cannot_be_written(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        run(tmp_path / "file")
    with pytest.raises(ValueError, match="cannot be written"):
        run("/proc/sideways_run")


def test_changing_the_mode_or_learning_rate_on_resume_lists_the_difference(tmp_path):
    run(tmp_path, "train.stop_at_step = 3")
    with pytest.raises(workdir.ConfigChangedError) as changed:
        run(tmp_path, "adam.learning_rate = 0.5", "train.mode = 'frame_bp'")
    text = str(changed.value)
    assert (
        "adam.learning_rate: 0.002 -> 0.5" in text
        and "train.mode: 'sideways' -> 'frame_bp'" in text
    )
    assert "--allow_config_change" in text
    # Run length and logging may change; with the flag, anything may.
    assert run(tmp_path, "train.num_steps = 4", "train.log_every = 1")["step"] == 4
    result = run(tmp_path, "adam.learning_rate = 0.5", allow_config_change=True)
    assert result["step"] == 6


def test_a_second_run_on_a_locked_workdir_refuses_and_a_stale_lock_is_taken_over(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    lock = tmp_path / "LOCK"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "x"}))
    with pytest.raises(workdir.WorkdirLockedError, match=f"pid {os.getpid()}"):
        run(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    assert run(tmp_path)["step"] == 6
    assert not lock.exists()  # released at the end


def test_symbolic_data_checkpoints_are_small_and_resume_exactly(tmp_path):
    run(tmp_path / "full", "train.data_checkpoint = 'full'")
    run(tmp_path / "symbolic")  # moving_shapes.gin chooses 'symbolic'

    def size(path):
        ckpt = tf.train.latest_checkpoint(str(path / "checkpoints"))
        return sum(os.path.getsize(f) for f in tf.io.gfile.glob(ckpt + ".*"))

    assert size(tmp_path / "symbolic") < size(tmp_path / "full") / 3
