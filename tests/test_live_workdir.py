"""A live workdir (export and evaluation while training rotates checkpoints), damaged
workdir files named with their fix, a stale LOCK told by boot and process start time,
a full disk in one line, and a clean export --output."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import gin
import pytest
import tensorflow as tf
from test_train import TINY, run

from sideways_tf import checkpointing, cli, export, workdir
from sideways_tf.evaluate import evaluate_workdir
from sideways_tf.runs import load_run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_gin_config")]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (checkpoints 3 and 6, evaluations at 3 and 6)."""
    path = tmp_path_factory.mktemp("trained")
    run(path)
    gin.clear_config()
    return path


@pytest.fixture
def copy(trained, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


# -- Export and evaluation against a live run ------------------------------------------------


def test_export_and_evaluation_in_a_loop_against_a_run_checkpointing_every_step(tmp_path):
    live = tmp_path / "live"
    params = [
        "train.num_steps = 100000",
        "train.checkpoint_every = 1",
        "train.keep_checkpoints = 1",
        "train.eval_every = 100000",
        "train.log_every = 100000",
        "train.fidelity_every = 0",
        "train.images_every = 0",
    ]
    command = [sys.executable, "-c", "from sideways_tf import cli; cli.train_main()"]
    command += ["--workdir", str(live), "--gin_file", TINY]
    for p in params:
        command += ["--gin_param", p]
    env = {**os.environ, "PYTHONPATH": REPO}
    log = open(tmp_path / "train.log", "w")  # noqa: SIM115 (open for the process's life)
    training = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while not glob.glob(str(live / "checkpoints" / "ckpt-*.index")):
            assert training.poll() is None, (tmp_path / "train.log").read_text()
            assert time.time() < deadline, "no checkpoint after 90 s"
            time.sleep(0.2)
        steps, output = [], tmp_path / "export"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a reader must not warn of damage here
            for _ in range(3):
                metadata = export.export(str(live), str(output))
                gin.clear_config()
                steps.append(metadata["checkpoint_step"])
                assert metadata["checkpoint"] == f"ckpt-{metadata['checkpoint_step']}"
                written = json.loads((output / export.METADATA_FILE).read_text())
                assert written["checkpoint_step"] == metadata["checkpoint_step"]
            result = evaluate_workdir(str(live), progress=False)
            gin.clear_config()
            # The restore alone, many times: each one races the run's next rotation.
            loaded = load_run(str(live), restore=False)
            gin.clear_config()
            step = tf.Variable(0, dtype=tf.int64)
            parameters = checkpointing.variables_by_path(loaded.pipeline, buffers=False)
            reader = checkpointing.Checkpointer(
                str(live / "checkpoints"),
                tf.train.Checkpoint(pipeline=parameters, step=step),
                repair=False,
            )
            restored = [reader.restore_latest(partial=True) for _ in range(40)]
        assert all(restored) and int(step.numpy()) >= result["step"]
        assert training.poll() is None, "the run ended early: the loop tested nothing"
        assert steps == sorted(steps) and steps[-1] > steps[0] > 0, steps  # rotated meanwhile
        assert result["step"] >= steps[-1] and result["checkpoint"].endswith(
            f"ckpt-{result['step']}"
        )
        recorded = json.loads((live / "eval_metrics.json").read_text())["history"]
        assert [(h["source"], h["step"]) for h in recorded] == [("sideways-eval", result["step"])]
        assert not (live / "checkpoints" / "damaged").exists()  # a reader moves nothing
    finally:
        training.send_signal(signal.SIGTERM)
        training.wait(timeout=60)
        log.close()
    assert training.returncode == 143, (tmp_path / "train.log").read_text()


class _Listed(checkpointing.Checkpointer):
    """A reader whose listing was taken just before the run rotated ckpt-9 away."""

    def on_disk(self):
        return [os.path.join(self.directory, "ckpt-9"), *super().on_disk()]


def _checkpoints(tmp_path):
    value = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=value), str(tmp_path), max_to_keep=5)
    for step in (1, 2):
        value.assign(float(step))
        manager.save(checkpoint_number=step)
    value.assign(-1.0)
    return value


def test_a_reader_skips_a_vanished_or_damaged_checkpoint_and_moves_nothing(tmp_path):
    value = _checkpoints(tmp_path)
    reader = _Listed(str(tmp_path), tf.train.Checkpoint(v=value), repair=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # vanished is not damage: no warning
        assert reader.restore_latest(partial=True) == str(tmp_path / "ckpt-2")
    assert float(value.numpy()) == 2.0

    data = glob.glob(str(tmp_path / "ckpt-2.data-*"))[0]
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    reader = checkpointing.Checkpointer(str(tmp_path), tf.train.Checkpoint(v=value), repair=False)
    with pytest.warns(UserWarning, match="ckpt-2 cannot be restored.*left it in place"):
        assert reader.restore_latest(partial=True) == str(tmp_path / "ckpt-1")
    assert float(value.numpy()) == 1.0
    assert os.path.exists(data) and not (tmp_path / "damaged").exists()
    # The owner (the training run) sets it aside.
    owner = checkpointing.Checkpointer(str(tmp_path), tf.train.Checkpoint(v=value))
    with pytest.warns(UserWarning, match="moved it to"):
        owner.restore_latest()
    assert (tmp_path / "damaged").exists() and not os.path.exists(data)


# -- A clean --output ----------------------------------------------------------------------


def test_export_replaces_a_previous_export_whole_and_refuses_other_files(copy, tmp_path, capsys):
    output = tmp_path / "out"
    cli.export_main(["--workdir", str(copy), "--output", str(output), "--tflite"])
    assert (output / "model.tflite").exists()
    capsys.readouterr()
    cli.export_main(["--workdir", str(copy), "--output", str(output)])
    out = capsys.readouterr().out
    assert f"Replaced the previous export in {output}" in out and "model.tflite" in out
    assert "Exported step 6 (checkpoint ckpt-6)" in out
    assert not (output / "model.tflite").exists()  # not a stale one beside the new model
    assert (output / "saved_model.pb").exists() and (output / export.METADATA_FILE).exists()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        cli.export_main(["--workdir", str(copy), "--output", str(mine)])
    err = capsys.readouterr().err
    assert "notes.txt" in err and "not part of a sideways export" in err
    assert os.listdir(mine) == ["notes.txt"]  # nothing written, nothing removed


# -- Damaged workdir files -----------------------------------------------------------------

DAMAGE = {
    "garbage": lambda raw: b"\xff\xfe\x00\x9c garbage \x80" * 7,
    "truncated": lambda raw: raw[: len(raw) // 2],
    "empty": lambda raw: b"",
}


def damage(path, kind):
    raw = path.read_bytes()
    path.write_bytes(DAMAGE[kind](raw))
    return path.read_bytes()


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_config_is_named_with_its_fix_not_another_config(copy, kind, capsys):
    path = copy / "config.gin"
    damage(path, kind)
    with pytest.raises(SystemExit) as ended:
        cli.eval_main(["--workdir", str(copy)])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and "--allow_config_change" in err and "Traceback" not in err
    with pytest.raises(workdir.DamagedFileError, match=str(path)) as resumed:
        run(copy)  # resuming: no "trained with another config"
    assert "--allow_config_change" in str(resumed.value)
    # The fix it names works: the run resumes and writes config.gin anew.
    assert run(copy, "train.num_steps = 7", allow_config_change=True)["step"] == 7
    assert workdir.read_config(copy).rstrip().endswith(workdir.CONFIG_END)


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_eval_history_is_kept_aside_and_no_evaluation_is_lost(copy, kind, capsys):
    path = copy / "eval_metrics.json"
    damaged = damage(path, kind)
    with pytest.warns(UserWarning, match=str(path)):
        result = evaluate_workdir(str(copy), ("eval/moving_shapes_dataset.num_examples = 4",))
    out = capsys.readouterr().out
    aside = glob.glob(str(path) + ".damaged-*")
    assert len(aside) == 1 and aside[0] in out
    assert open(aside[0], "rb").read() == damaged  # kept as it was
    history = json.loads(path.read_text())["history"]
    assert [(h["source"], h["step"], h["num_videos"]) for h in history] == [("sideways-eval", 6, 4)]
    assert history[0]["loss"] == result["eval"]["loss"]


def test_a_resumed_run_keeps_a_damaged_eval_history_aside_and_records_its_own(copy):
    path = copy / "eval_metrics.json"
    damage(path, "garbage")
    with pytest.warns(UserWarning, match=str(path)):
        result = run(copy, "train.num_steps = 9")
    assert result["step"] == 9
    steps = [h["step"] for h in json.loads(path.read_text())["history"]]
    assert steps == [6, 9]  # the lost one at 6 redone, then 9
    assert len(glob.glob(str(path) + ".damaged-*")) == 1


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_lock_is_named_with_its_fix(tmp_path, kind):
    path = tmp_path / "LOCK"
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "x"}))
    damage(path, kind)
    with pytest.raises(workdir.DamagedFileError, match=f"{path} is") as refused:
        with workdir.lock(str(tmp_path)):
            pass
    assert f"delete {path}" in str(refused.value)


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_state_file_does_not_stop_a_reader(copy, kind):
    path = copy / "checkpoints" / "checkpoint"
    damaged = damage(path, kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_run(str(copy))
    assert loaded.step == 6 and loaded.checkpoint.endswith("ckpt-6")
    said = [str(w.message) for w in caught if "state file" in str(w.message)]
    assert said and str(path) in said[0] and "training run rebuilds it" in said[0]
    assert path.read_bytes() == damaged  # a reader writes nothing


# -- A stale lock ----------------------------------------------------------------------------


def test_a_lock_is_stale_after_a_reboot_or_when_its_pid_names_a_later_process(tmp_path, capsys):
    path = tmp_path / "LOCK"
    with workdir.lock(str(tmp_path)):
        mine = json.loads(path.read_text())
    assert mine["process_start"] == workdir.process_start(os.getpid())
    assert mine["boot_id"] == open("/proc/sys/kernel/random/boot_id").read().strip()

    path.write_text(json.dumps(mine))  # this very process, this boot: in use
    with pytest.raises(workdir.WorkdirLockedError, match=f"pid {os.getpid()}"):
        with workdir.lock(str(tmp_path)):
            pass
    # The same pid, alive, yet another process: taken before a reboot, or started
    # at another time, or (a lock without those) taken before this boot.
    for holder, reason in [
        ({**mine, "boot_id": "another-boot"}, "before this host rebooted"),
        ({**mine, "process_start": mine["process_start"] - 1}, "names another process"),
        (
            {"pid": os.getpid(), "host": mine["host"], "started": "2000-01-01T00:00:00"},
            "before this host booted",
        ),
    ]:
        path.write_text(json.dumps(holder))
        with workdir.lock(str(tmp_path)):
            assert json.loads(path.read_text())["process_start"] == mine["process_start"]
        assert reason in capsys.readouterr().out
        assert not path.exists()


# -- A full disk -------------------------------------------------------------------------------


def _mount_tmpfs(path, kib):
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk needs a tiny tmpfs: mount as root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def test_a_full_disk_while_saving_a_checkpoint_says_what_is_intact_in_one_line(tmp_path, capsys):
    run(tmp_path / "src", "train.stop_at_step = 3", "train.images_every = 0")
    pages = sum(  # tmpfs holds each file in 4 KiB pages
        -(-os.path.getsize(os.path.join(d, f)) // 4096)
        for d, _, fs in os.walk(tmp_path / "src")
        for f in fs
    )
    disk = tmp_path / "disk"
    # Room for the run's small files, not for a second checkpoint (~25 KiB).
    _mount_tmpfs(disk, 4 * pages + 28)
    try:
        shutil.copytree(tmp_path / "src", disk / "run")
        args = ["--workdir", str(disk / "run"), "--gin_file", TINY]
        for p in ["train.images_every = 0", "train.fidelity_every = 0"]:
            args += ["--gin_param", p]
        with pytest.raises(SystemExit) as ended:
            cli.train_main(args)
        message = str(ended.value.code)
        assert message.count("\n") == 0 and message.startswith("sideways-train: Disk full")
        intact = disk / "run" / "checkpoints" / "ckpt-3"
        assert f"the last checkpoint, {intact}, is intact" in message
        assert "free in" in message and "run the same command again" in message
        assert tf.train.load_checkpoint(str(intact)) is not None  # and it is
    finally:
        # Lazily: this process's TensorBoard writers still hold files there.
        subprocess.run(["umount", "-l", str(disk)], check=False)
