"""A run's workdir: every path of a run, who may write it, its config and evaluations.

    workdir/
      LOCK                 {"pid", "host", "started"} of the training run writing here
      config.gin           the operative gin config of the run (written once per run)
      eval_metrics.json    the latest training evaluation, and every evaluation so far
      checkpoints/         ckpt-N.* (sideways_tf.checkpointing)
      train/ eval/         TensorBoard event files (sideways_tf.summaries)

`Workdir` owns these names: no other module spells them. Everything here goes
through tf.io.gfile, so a workdir may be local or gs://.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import socket

import tensorflow as tf

from sideways_tf import summaries

# Bindings that may change between a run and its resumption: run length and logging.
RESUMABLE_CHANGES = (
    "train.num_steps",
    "train.stop_at_step",
    "train.log_every",
    "train.fidelity_every",
    "train.images_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.progress",
    "train.max_non_finite_steps",
)


class Workdir:
    """The paths of a run's workdir (see the module docstring)."""

    def __init__(self, root: str):
        self.root = str(root)

    @classmethod
    def of(cls, workdir: str | Workdir) -> Workdir:
        return workdir if isinstance(workdir, Workdir) else cls(workdir)

    def __fspath__(self) -> str:
        return self.root

    def __str__(self) -> str:
        return self.root

    def __repr__(self) -> str:
        return f"Workdir({self.root!r})"

    @property
    def config(self) -> str:
        return os.path.join(self.root, "config.gin")

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, "checkpoints")

    @property
    def lock_file(self) -> str:
        return os.path.join(self.root, "LOCK")

    @property
    def eval_metrics(self) -> str:
        return os.path.join(self.root, "eval_metrics.json")

    def summaries(self, split: str) -> str:
        """TensorBoard event directory of a split ("train" or "eval")."""
        return os.path.join(self.root, split)

    def require_run(self):
        """Raises unless this is the workdir of a sideways-train run (it has config.gin)."""
        if not tf.io.gfile.exists(self.config):
            raise FileNotFoundError(
                f"{self.config} not found: is {self.root} the workdir of a sideways-train run? "
                f"Train first: sideways-train --workdir={self.root}."
            )


class WorkdirLockedError(RuntimeError):
    """Another training run is writing this workdir."""


class ConfigChangedError(ValueError):
    """A resumed run's config differs from the one the workdir was started with."""


def check_writable(workdir: str | Workdir):
    """Creates workdir if needed; raises naming --workdir if it is a file or read-only."""
    if tf.io.gfile.exists(workdir) and not tf.io.gfile.isdir(workdir):
        raise ValueError(
            f"--workdir={workdir} is a file, not a directory; pick a directory for the run."
        )
    workdir = str(workdir)
    probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
    try:
        tf.io.gfile.makedirs(workdir)
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
        tf.io.gfile.remove(probe)
    except (tf.errors.OpError, OSError) as e:
        raise ValueError(
            f"--workdir={workdir} cannot be written ({type(e).__name__}: {e}); pick a "
            "writable directory."
        ) from e


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def lock(workdir: str | Workdir):
    """Holds workdir/LOCK while a training run writes the workdir.

    A second run on the same workdir refuses to start. A lock left by a process
    that no longer exists on this host is stale: it is taken over with a warning.
    A lock from another host cannot be checked: the error says how to clear it.
    """
    path = Workdir.of(workdir).lock_file
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if tf.io.gfile.exists(path):
        try:
            with tf.io.gfile.GFile(path) as f:
                holder = json.load(f)
        except (json.JSONDecodeError, tf.errors.OpError):
            holder = {}
        same_host = holder.get("host") == me["host"]
        if same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
            print(f"Taking over a stale lock {path}: process {holder['pid']} is gone.")
        else:
            raise WorkdirLockedError(
                f"{workdir} is in use by another training run (pid {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('started')}). Stop that run, or use "
                f"another --workdir. If that run is gone (another host), delete {path}."
            )
    summaries.write_json(path, me)
    try:
        yield
    finally:
        with contextlib.suppress(tf.errors.OpError):
            tf.io.gfile.remove(path)


# -- Config ---------------------------------------------------------------------------


def bindings(config: str) -> dict[str, str]:
    """{"scope/configurable.param": value text} of an operative gin config string."""
    out, key = {}, None
    for line in config.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and key is not None:  # a value continued over lines
            out[key] += " " + line.strip()
            continue
        match = re.match(r"^([\w./]+)\s*=\s*(.*)$", line)
        if match:
            key = match.group(1)
            out[key] = match.group(2).strip()
        else:
            key = None
    return {k: re.sub(r"\s+", " ", v) for k, v in out.items()}


def config_changes(saved: str, current: str, allowed=RESUMABLE_CHANGES) -> list[str]:
    """Lines describing each binding that differs, except those in `allowed`."""
    before, after = bindings(saved), bindings(current)
    changes = []
    for key in sorted(set(before) | set(after)):
        name = key.split("/")[-1]
        if name in allowed or key.startswith("runtime."):
            continue
        if before.get(key) != after.get(key):
            changes.append(f"  {key}: {before.get(key, '(unset)')} -> {after.get(key, '(unset)')}")
    return changes


def check_config(workdir: str | Workdir, current: str, allow_change: bool):
    """Raises ConfigChangedError when resuming with a config that differs in substance.

    Run length, logging and the runtime (strategy, devices) may change; anything
    else (mode, model, data, optimizer) would silently turn the run into another.
    """
    path = Workdir.of(workdir).config
    if allow_change or not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        saved = f.read()
    changes = config_changes(saved, current)
    if changes:
        shown = "\n".join(changes[:12]) + ("\n  ..." if len(changes) > 12 else "")
        raise ConfigChangedError(
            f"{workdir} was trained with another config ({len(changes)} differences, saved "
            f"in {path}):\n{shown}\nResume with the saved config (--gin_file={path}), use a "
            "new --workdir, or pass --allow_config_change to continue with the new one."
        )


# -- Evaluations ------------------------------------------------------------------------


def read_evaluations(workdir: str | Workdir) -> dict:
    path = Workdir.of(workdir).eval_metrics
    if not tf.io.gfile.exists(path):
        return {"history": []}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def evaluated_steps(workdir: str | Workdir) -> set[int]:
    """Steps the training run has an evaluation recorded for."""
    return {
        h["step"]
        for h in read_evaluations(workdir).get("history", [])
        if h.get("source", "train") == "train"
    }


def record_evaluation(
    workdir: str | Workdir, step: int, metrics: dict, source: str = "train", **extra
):
    """Appends an evaluation to eval_metrics.json.

    A training evaluation replaces any later-step entries (a resumed run redoes
    them) and becomes the file's top-level record; `sideways-eval` appends its own
    entry (source "sideways-eval", its gin params) and leaves the top level alone.
    """
    data = read_evaluations(workdir)
    history = data.get("history", [])
    record = {"step": int(step), "source": source, **metrics, **extra}
    if source == "train":
        history = [h for h in history if h.get("source", "train") != "train" or h["step"] < step]
        top = {k: v for k, v in record.items() if k != "source"}
        data = {**data, **top}
    data["history"] = history + [record]
    summaries.write_json(Workdir.of(workdir).eval_metrics, data)
