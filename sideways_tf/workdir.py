"""A run's workdir: every path of a run, who may write it, its config and evaluations.

    workdir/
      LOCK                 {"pid", "host", "started", "boot_id", "process_start"} of the
                           training run writing here
      config.gin           the operative gin config of the run, ending in CONFIG_END
      eval_metrics.json    the latest training evaluation, and every evaluation so far
                           (a damaged one is kept aside as eval_metrics.json.damaged-<time>)
      checkpoints/         ckpt-N.index and ckpt-N.data-* (Workdir.checkpoint(N)), the
                           `checkpoint` state file, worker_<w>/ (Workdir.data_positions),
                           damaged/ (sideways_tf.checkpointing)
      train/ eval/         TensorBoard event files (sideways_tf.summaries)

`Workdir` and the functions here own these names: no other module spells them
(checkpointing, training and the benchmarks ask this module). Every file written
here is written whole (a temporary file, then a rename: write_config, write_json).
Everything goes through tf.io.gfile, so a workdir may be local or gs://. A file of
the workdir that cannot be read (garbage bytes, truncated, empty) is named in the
error with its fix (DamagedFileError), never a bare UnicodeDecodeError or
JSONDecodeError.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import socket
import warnings
from typing import NamedTuple

import gin
import tensorflow as tf
from gin import config_parser

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
    "train.stall_after",
    "train.fidelity_floor",
)


class Workdir:
    """The paths of a run's workdir (see the module docstring)."""

    CONFIG = "config.gin"
    EVAL_METRICS = "eval_metrics.json"
    LOCK = "LOCK"
    CHECKPOINTS = "checkpoints"
    SPLITS = ("train", "eval")  # TensorBoard event directories

    def __init__(self, root: str):
        self.root = str(root)

    @classmethod
    def of(cls, workdir: str | Workdir) -> Workdir:
        return workdir if isinstance(workdir, Workdir) else cls(workdir)

    @classmethod
    def of_checkpoint(cls, path: str) -> Workdir:
        """The workdir holding checkpoint `path` (checkpoints/ckpt-N, or a worker's
        checkpoints/worker_<w>/ckpt-N)."""
        directory = os.path.dirname(str(path))
        if os.path.basename(directory).startswith(_WORKER_PREFIX):
            directory = os.path.dirname(directory)
        return cls(os.path.dirname(directory))

    def __fspath__(self) -> str:
        return self.root

    def __str__(self) -> str:
        return self.root

    def __repr__(self) -> str:
        return f"Workdir({self.root!r})"

    @property
    def config(self) -> str:
        return os.path.join(self.root, self.CONFIG)

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, self.CHECKPOINTS)

    @property
    def lock_file(self) -> str:
        return os.path.join(self.root, self.LOCK)

    @property
    def eval_metrics(self) -> str:
        return os.path.join(self.root, self.EVAL_METRICS)

    def summaries(self, split: str) -> str:
        """TensorBoard event directory of a split ("train" or "eval")."""
        return os.path.join(self.root, split)

    def checkpoint(self, step: int) -> str:
        """The prefix of the training checkpoint of step `step` (checkpoints/ckpt-N)."""
        return checkpoint_path(self.checkpoints, step)

    def data_positions(self, worker: int) -> str:
        """Where worker `worker` saves its input position (checkpoints/worker_<w>/)."""
        return os.path.join(self.checkpoints, f"{_WORKER_PREFIX}{int(worker)}")

    def names(self) -> tuple[str, ...]:
        """Every name a run may write at the top of the workdir."""
        return (self.LOCK, self.CONFIG, self.EVAL_METRICS, self.CHECKPOINTS, *self.SPLITS)

    def require_run(self):
        """Raises unless this is the workdir of a sideways-train run (it has config.gin)."""
        if not tf.io.gfile.exists(self.config):
            raise FileNotFoundError(
                f"{self.config} not found: is {self.root} the workdir of a sideways-train run? "
                f"Train first: sideways-train --workdir={self.root}."
            )


# -- Checkpoint files -------------------------------------------------------------------
# As tf.train.CheckpointManager names them (checkpoint_name "ckpt"): a checkpoint is
# the prefix <directory>/ckpt-N, its files ckpt-N.index (written last) and
# ckpt-N.data-<shard>-of-<shards>; <directory>/checkpoint is the state file listing them.

_CHECKPOINT_FILE = re.compile(r"(ckpt-(\d+))\.(index|data-.*)")
_WORKER_PREFIX = "worker_"


class CheckpointFile(NamedTuple):
    """A file of a checkpoint: its checkpoint's name ("ckpt-N"), step N, and whether it
    is the index file (else a data shard)."""

    prefix: str
    step: int
    index: bool


def checkpoint_path(directory: str, step: int) -> str:
    """The prefix of the checkpoint of step `step` in `directory`."""
    return os.path.join(str(directory), f"ckpt-{int(step)}")


def checkpoint_file(name: str) -> CheckpointFile | None:
    """What the file `name` (a base name) is of a checkpoint; None if none's."""
    match = _CHECKPOINT_FILE.fullmatch(name)
    if not match:
        return None
    return CheckpointFile(match.group(1), int(match.group(2)), match.group(3) == "index")


def checkpoint_index(prefix: str) -> str:
    """The index file of checkpoint `prefix`: written last, so the checkpoint is whole
    when it is there."""
    return str(prefix) + ".index"


def checkpoint_state_file(directory: str) -> str:
    """The checkpoint state file of `directory` (tf.train.get_checkpoint_state reads it)."""
    return os.path.join(str(directory), "checkpoint")


def damaged_checkpoints(directory: str) -> str:
    """Where checkpoints of `directory` that cannot be restored are set aside."""
    return os.path.join(str(directory), "damaged")


def interrupted_save(name: str) -> bool:
    """Whether `name` (in a checkpoint directory) is a temporary of an interrupted save."""
    return "_temp" in name


class DamagedFileError(ValueError):
    """A file of the workdir cannot be read (garbage bytes, truncated, empty); names the fix."""


# The last line of every config.gin: a file without it was cut short (or predates it).
CONFIG_END = "# -- end of config.gin (sideways_tf) --"


def _read_text(path: str, fix: str) -> str:
    """The UTF-8 text of a workdir file; DamagedFileError naming it and `fix` otherwise."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            raw = f.read()
    except tf.errors.NotFoundError:
        raise
    except tf.errors.OpError as e:
        raise DamagedFileError(f"{path} cannot be read ({e.message.strip()}). {fix}") from e
    if not raw.strip():
        raise DamagedFileError(f"{path} is empty (damaged or cut short). {fix}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DamagedFileError(
            f"{path} is damaged: byte {e.start} is not UTF-8 text (garbage bytes). {fix}"
        ) from None


def _write_text(path: str, text: str):
    """Writes `text` to `path` whole: a temporary file, then a rename over `path`."""
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def write_json(path: str, data: dict):
    """Writes data as JSON to a file of the workdir, whole (temporary file, then rename)."""
    _write_text(path, json.dumps(data, indent=2, sort_keys=True))


def write_config(workdir: str | Workdir, config: str) -> str:
    """Writes workdir/config.gin whole, ending in CONFIG_END; returns its path.

    config: the run's operative gin config (the TensorBoard copy of it is
    summaries.write_config_text's).
    """
    path = Workdir.of(workdir).config
    _write_text(path, config.rstrip("\n") + "\n" + CONFIG_END + "\n")
    return path


def read_config(workdir: str | Workdir, fix: str | None = None) -> str:
    """The text of workdir/config.gin, checked whole; DamagedFileError naming it otherwise.

    Whole: it ends with CONFIG_END, or (a config.gin written before the marker) gin
    parses it. A truncated file must not read as "trained with another config".
    """
    wd = Workdir.of(workdir)
    path = wd.config
    fix = fix or (
        f"It is the run's operative config; its text is also in TensorBoard "
        f"({wd.summaries('train')}, Text tab, gin/operative_config): restore {path} from it "
        f"or from a copy, or rerun sideways-train --workdir={wd.root} with the run's "
        "original --gin_file and --gin_param flags and --allow_config_change, which "
        "writes it anew."
    )
    text = _read_text(path, fix)
    if text.rstrip().endswith(CONFIG_END):
        return text
    try:
        delegate = gin.config.ParserDelegate(skip_unknown=True)
        list(config_parser.ConfigParser(text, delegate))
    except Exception as e:  # noqa: BLE001 (tokenize, syntax, a value cut short: all damage)
        raise DamagedFileError(
            f"{path} is damaged or truncated (gin cannot parse it: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). {fix}"
        ) from None
    return text


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


def _boot_id() -> str | None:
    """This boot of the host (Linux); None where it cannot be told."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _boot_time() -> datetime.datetime | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return datetime.datetime.fromtimestamp(int(line.split()[1]))
    except (OSError, ValueError):
        pass
    return None


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (/proc/<pid>/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its ")".
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _stale_reason(holder: dict, host: str) -> str | None:
    """Why the run that wrote `holder` cannot still hold the lock; None if it may.

    A pid alone proves nothing: after a reboot (or enough processes) it names another
    process. So the lock records the boot and the process's start time, and is stale
    when the boot differs, the pid is gone, or the pid now names a later process.
    """
    pid = holder.get("pid")
    if holder.get("host") != host or not isinstance(pid, int):
        return None
    boot = _boot_id()
    if holder.get("boot_id") and boot and holder["boot_id"] != boot:
        return f"it was taken before this host rebooted (boot {holder['boot_id'][:8]})"
    if not _pid_alive(pid):
        return f"process {pid} is gone"
    start, recorded = process_start(pid), holder.get("process_start")
    if isinstance(recorded, int) and start is not None and start != recorded:
        return f"pid {pid} now names another process (started later than the lock's)"
    if recorded is None:  # a lock from before process_start was recorded: its time
        booted = _boot_time()
        try:
            started = datetime.datetime.fromisoformat(holder.get("started", ""))
        except (TypeError, ValueError):
            started = None
        if booted and started and started < booted:
            return f"it was taken at {holder['started']}, before this host booted"
    return None


@contextlib.contextmanager
def lock(workdir: str | Workdir):
    """Holds workdir/LOCK while a training run writes the workdir.

    A second run on the same workdir refuses to start. A lock whose run cannot be
    alive on this host (another boot, the pid gone, or the pid reused by a later
    process: see _stale_reason) is stale: it is taken over with a message. A lock
    from another host cannot be checked: the error says how to clear it. A LOCK that
    cannot be read is named, with the fix.
    """
    path = Workdir.of(workdir).lock_file
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "boot_id": _boot_id(),
        "process_start": process_start(os.getpid()),
    }
    if tf.io.gfile.exists(path):
        fix = (
            "It cannot tell whether a training run is writing this workdir. If none is "
            f"(check with ps on the host that ran it), delete {path} and run again."
        )
        try:
            holder = json.loads(_read_text(path, fix))
        except json.JSONDecodeError:
            raise DamagedFileError(f"{path} is damaged (not JSON: cut short?). {fix}") from None
        if not isinstance(holder, dict):
            raise DamagedFileError(f"{path} is damaged (not a JSON object). {fix}")
        reason = _stale_reason(holder, me["host"])
        if reason:
            print(f"Taking over a stale lock {path}: {reason}.")
        else:
            raise WorkdirLockedError(
                f"{workdir} is in use by another training run (pid {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('started')}). Stop that run, or use "
                f"another --workdir. If that run is gone (another host), delete {path}."
            )
    write_json(path, me)
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
    wd = Workdir.of(workdir)
    path = wd.config
    if allow_change or not tf.io.gfile.exists(path):
        return  # (a damaged config.gin is then replaced by this run's)
    saved = read_config(
        wd,
        fix=(
            f"Run the same command with --allow_config_change to replace it with this "
            f"command's config (its text is also in TensorBoard, {wd.summaries('train')}, "
            "Text tab, gin/operative_config), or restore it from a copy."
        ),
    )
    changes = config_changes(saved, current)
    if changes:
        shown = "\n".join(changes[:12]) + ("\n  ..." if len(changes) > 12 else "")
        if not saved.rstrip().endswith(CONFIG_END):  # written before the marker, or cut short
            shown += (
                f"\n({path} has no end line {CONFIG_END!r}: written by an older sideways_tf, "
                "or cut short; if cut short, the differences above are not real: rerun with "
                "--allow_config_change to write it anew.)"
            )
        raise ConfigChangedError(
            f"{workdir} was trained with another config ({len(changes)} differences, saved "
            f"in {path}):\n{shown}\nResume with the saved config (--gin_file={path}), use a "
            "new --workdir, or pass --allow_config_change to continue with the new one."
        )


# -- Evaluations ------------------------------------------------------------------------


def read_evaluations(workdir: str | Workdir, set_aside: bool = True) -> dict:
    """eval_metrics.json, or {"history": []} when there is none.

    A damaged file (garbage, truncated, empty, not the expected JSON) is moved aside
    to eval_metrics.json.damaged-<time> with a warning naming both (set_aside), so the
    next record starts a fresh file and no result is lost; set_aside=False raises
    DamagedFileError naming it instead.
    """
    path = Workdir.of(workdir).eval_metrics
    if not tf.io.gfile.exists(path):
        return {"history": []}
    fix = "Its evaluations can be redone with sideways-eval."
    try:
        data = json.loads(_read_text(path, fix))
        if not isinstance(data, dict) or not isinstance(data.get("history", []), list):
            raise DamagedFileError(f"{path} is damaged (not the evaluation record). {fix}")
    except (DamagedFileError, json.JSONDecodeError) as e:
        if isinstance(e, json.JSONDecodeError):
            e = DamagedFileError(f"{path} is damaged (not JSON: {e.msg}, cut short?). {fix}")
        if not set_aside:
            raise e from None
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S.%f")
        aside = f"{path}.damaged-{stamp}"
        try:
            tf.io.gfile.rename(path, aside)
        except tf.errors.NotFoundError:  # another worker set it aside first
            return {"history": []}
        message = (
            f"{e} Kept it as {aside}; evaluations are recorded in a fresh {path} from now on "
            "(the training run redoes its last evaluation if it is due)."
        )
        warnings.warn(message, stacklevel=2)
        print(message)
        return {"history": []}
    data.setdefault("history", [])
    return data


def training_evaluations(workdir: str | Workdir, set_aside: bool = True) -> list[dict]:
    """The training run's evaluations, oldest first (not sideways-eval's entries).

    set_aside: as read_evaluations (a reader that is not the run passes False).
    """
    history = read_evaluations(workdir, set_aside=set_aside).get("history", [])
    return [h for h in history if h.get("source", "train") == "train"]


def evaluated_steps(workdir: str | Workdir) -> set[int]:
    """Steps the training run has an evaluation recorded for."""
    return {h["step"] for h in training_evaluations(workdir)}


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
    write_json(Workdir.of(workdir).eval_metrics, data)
