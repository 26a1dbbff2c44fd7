"""Checkpoints: parameters, optimizer, buffers, step and data position, resumable.

tf.train.CheckpointManager writes a checkpoint's files first and then the
`checkpoint` state file that points at them, so a run killed while saving
resumes from the previous complete checkpoint, never from a half-written one.
Before restoring, the checkpoint's variables are checked against the model's,
so a workdir holding another model fails with a clear message instead of
loading a half-match.

A reader of a live workdir (evaluation, export: repair=False) never moves or
deletes anything: it links (or copies) the newest checkpoint's files into a
private directory first, so training may rotate it away while it is restored,
and takes the next newest if it vanished before that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import warnings

import keras
import tensorflow as tf

from sideways_tf import workdir as workdir_lib


def variables_by_path(layer, buffers: bool = True, replicas=None) -> dict:
    """{variable path: variable} for the weights (and buffers) of a Keras layer.

    Checkpointing this dict names each value by its Keras path
    ("conv_pipeline/unit1/block1/conv/kernel"), and saves variables that live in
    Python lists (units, delay lines, projections), which TF's object graph skips.

    buffers: include the pipeline's state buffers (only worth saving when they
      carry over between clips: otherwise every clip starts them at zero).
    replicas: a tf.distribute strategy whose replicas each hold their own buffers;
      each replica's copy is saved as "<path>/replica_<r>", so resume is exact.
    """
    state = getattr(layer, "state_variables", ())
    state = {id(b) for b in (state() if callable(state) else state)}
    multi = replicas is not None and replicas.num_replicas_in_sync > 1
    out = {}
    for v in layer.variables:
        is_buffer = id(v) in state
        if is_buffer and not buffers:
            continue
        if is_buffer and multi:
            for r, part in enumerate(replicas.experimental_local_results(v.value)):
                out[f"{v.path}/replica_{r}"] = part
            continue
        if v.path in out:
            raise ValueError(
                f"Two variables share the path {v.path!r}; give the layers distinct names."
            )
        out[v.path] = v
    return out


def _finite(variable) -> bool:
    value = variable.value if isinstance(variable, keras.Variable) else variable
    if not value.dtype.is_floating:
        return True
    return bool(tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(value))))


class ModelMismatchError(ValueError):
    """The checkpoint in a workdir belongs to a different model."""


def _variable_shapes(path: str) -> dict[str, tuple]:
    """{key: shape} of the variables in a checkpoint (not iterator state, not counters)."""
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    return {
        # Checkpoint keys escape "/" inside a name as ".S"; show Keras paths.
        name[: -len(suffix)].replace(".S", "/"): tuple(shape)
        for name, shape in tf.train.list_variables(path)
        if name.endswith(suffix) and not name.startswith("save_counter")
    }


def _expected_shapes(checkpoint: tf.train.Checkpoint) -> dict[str, tuple]:
    """What `checkpoint` would write now: its variables' keys and shapes."""
    with tempfile.TemporaryDirectory() as tmp:
        return _variable_shapes(checkpoint.write(os.path.join(tmp, "probe")))


def _read_every_tensor(path: str):
    """Reads (and so checksums) every tensor of a checkpoint; raises on any damage."""
    reader = tf.train.load_checkpoint(path)
    for key, dtype in reader.get_variable_to_dtype_map().items():
        if dtype != tf.variant:  # (input-pipeline state: checked when restored)
            reader.get_tensor(key)


class NonFiniteError(FloatingPointError):
    """Parameters or optimizer state hold NaN or Inf: nothing is saved."""


class DiskFullError(OSError):
    """A checkpoint could not be written for lack of space; the previous one is intact."""


def is_disk_full(e: BaseException) -> bool:
    """Whether `e` is a write that failed for lack of space (or quota)."""
    if isinstance(e, tf.errors.ResourceExhaustedError):
        return True
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e).lower()
    return isinstance(e, tf.errors.OpError) and (
        "no space left" in text or "quota exceeded" in text
    )


def free_space(directory: str) -> str:
    """Free space of a local directory's disk, as text ("unknown" elsewhere, e.g. gs://)."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


def disk_full_message(what: str, directory: str, intact: str | None) -> str:
    """The one line for a full disk: what failed, free space, what is intact, rerun."""
    kept = (
        f"the last checkpoint, {intact}, is intact"
        if intact
        else "no checkpoint was saved yet (a rerun starts from step 0)"
    )
    return (
        f"Disk full: {what} ({free_space(directory)} free in {directory}); {kept}. Free "
        "space (or lower train.keep_checkpoints) and run the same command again to resume."
    )


def on_disk(directory: str) -> list[str]:
    """Checkpoint prefixes with an index file in `directory`, newest (highest number) first."""
    if not tf.io.gfile.isdir(directory):
        return []
    found = []
    for name in tf.io.gfile.listdir(directory):
        file = workdir_lib.checkpoint_file(name)
        if file and file.index:
            found.append((file.step, os.path.join(directory, file.prefix)))
    return [p for _, p in sorted(found, reverse=True)]


def _written_at(prefix: str) -> float:
    """When checkpoint `prefix` was written (its index file's time), in seconds."""
    try:
        return max(tf.io.gfile.stat(workdir_lib.checkpoint_index(prefix)).mtime_nsec / 1e9, 1.0)
    except tf.errors.OpError:
        return 1.0


def newest_on_disk(directory: str) -> str | None:
    """The newest checkpoint prefix with an index file in `directory`, if any."""
    found = on_disk(directory)
    return found[0] if found else None


def _state_file_problem(directory: str) -> str | None:
    """Why `directory`'s checkpoint state file cannot be read (None: absent or readable)."""
    if not tf.io.gfile.exists(workdir_lib.checkpoint_state_file(directory)):
        return None
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception as e:  # noqa: BLE001 (bytes, proto, an empty state: all unreadable)
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    if state is None or not state.model_checkpoint_path:
        return "not a checkpoint state: garbage, truncated or empty"
    return None


class Checkpointer:
    """Saves and restores `checkpoint` under `directory`, keeping the last `max_to_keep`.

    Restore tries the checkpoints on disk newest first: one that cannot be read
    (truncated, flipped bytes, missing index) is moved to `directory/damaged/` with
    a warning naming it and the reason, and the previous one is tried. An
    unreadable `checkpoint` state file is rebuilt from the checkpoint files present
    (never a silent restart from step 0), and temporary files of an interrupted
    save are removed. `save` refuses variables that are not finite (guard).
    """

    def __init__(
        self,
        directory: str,
        checkpoint: tf.train.Checkpoint,
        max_to_keep: int = 3,
        guard: list | None = None,
        repair: bool = True,
    ):
        self.directory, self.checkpoint, self.max_to_keep = directory, checkpoint, max_to_keep
        self.guard = list(guard or [])
        self.repair = repair
        if repair:
            self._repair()
        problem = None if repair else _state_file_problem(directory)
        if problem:
            # A reader restores from the files present (on_disk); the state file is the
            # training run's, which rebuilds it when it next starts.
            warnings.warn(
                f"{workdir_lib.checkpoint_state_file(directory)} (the checkpoint state file) "
                f"cannot be read ({problem}); restoring from the checkpoint files present. The "
                "training run rebuilds it when it next starts.",
                stacklevel=2,
            )
            self.manager = None
        else:
            self.manager = self._manager()

    def _manager(self):
        return tf.train.CheckpointManager(
            self.checkpoint, self.directory, max_to_keep=self.max_to_keep
        )

    @property
    def latest(self) -> str | None:
        if self.manager is None:
            found = self.on_disk()
            return found[0] if found else None
        return self.manager.latest_checkpoint

    def on_disk(self) -> list[str]:
        """Checkpoint prefixes with an index file, newest (highest number) first."""
        return on_disk(self.directory)

    def _repair(self):
        if not tf.io.gfile.isdir(self.directory):
            return
        for name in tf.io.gfile.listdir(self.directory):
            if workdir_lib.interrupted_save(name):
                path = os.path.join(self.directory, name.rstrip("/"))
                if tf.io.gfile.isdir(path):
                    tf.io.gfile.rmtree(path)
                else:
                    tf.io.gfile.remove(path)
                print(f"Removed {path}, left by an interrupted checkpoint save.")
        present = self.on_disk()
        indexed = {os.path.basename(p) for p in present}
        for name in tf.io.gfile.listdir(self.directory):
            file = workdir_lib.checkpoint_file(name)
            if file and not file.index and file.prefix not in indexed:  # index lost or unwritten
                prefix = os.path.join(self.directory, file.prefix)
                moved = self._quarantine(prefix)
                warnings.warn(
                    f"Checkpoint {prefix} has data but no index; moved it to {moved}.",
                    stacklevel=2,
                )
        try:
            state = tf.train.get_checkpoint_state(self.directory)
            readable = state is not None or not present
            listed = set(state.all_model_checkpoint_paths) if state else set()
            untimed = state is not None and len(state.all_model_checkpoint_timestamps) != len(
                state.all_model_checkpoint_paths
            )
        except Exception:  # noqa: BLE001 (any parse failure means: rebuild it)
            readable, listed, untimed = False, set(), False
        missing = {os.path.basename(p) for p in present} - {os.path.basename(p) for p in listed}
        if present and (not readable or missing or untimed):
            # Every checkpoint present, oldest first, with its index file's time: the
            # manager then rotates the surplus away at the next save (a list without
            # times would mark them all "preserved", kept forever).
            oldest_first = list(reversed(present))
            tf.compat.v1.train.update_checkpoint_state(
                self.directory,
                present[0],
                all_model_checkpoint_paths=oldest_first,
                all_model_checkpoint_timestamps=[_written_at(p) for p in oldest_first],
                last_preserved_timestamp=0.0,
            )
            warnings.warn(
                f"{workdir_lib.checkpoint_state_file(self.directory)} was unreadable or "
                "incomplete; rebuilt it from the checkpoint files present (newest "
                f"{os.path.basename(present[0])}).",
                stacklevel=2,
            )

    def save(self, step: int) -> str:
        bad = [v.path if hasattr(v, "path") else v.name for v in self.guard if not _finite(v)]
        if bad:
            raise NonFiniteError(
                f"Not saving step {step}: {len(bad)} variables hold NaN or Inf (first: "
                f"{bad[0]}). The last checkpoint, {self.latest}, is intact; lower the learning "
                "rate (adam.learning_rate) or check the input data, then resume from it."
            )
        try:
            return self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:
            if not is_disk_full(e):
                raise
            # (the half-written files are temporaries: the next start removes them)
            raise DiskFullError(
                disk_full_message(
                    f"checkpoint step {step} could not be written",
                    self.directory,
                    newest_on_disk(self.directory),
                )
            ) from e

    def restore_latest(self, partial: bool = False) -> str | None:
        """Restores the newest readable checkpoint, if any; returns its path.

        partial: restore what this checkpoint object holds (evaluation: parameters,
        no data position) and ignore the rest.

        The owner of the workdir (repair=True) moves a damaged checkpoint to damaged/
        and tries the previous one. A reader (repair=False) restores from a private
        snapshot of the files (_snapshot) and never moves anything: a checkpoint that
        vanished (rotated away by a live run) or cannot be read is skipped, with a
        warning only for damage.
        """
        tried, vanished = [], []
        for _ in range(3):  # a live run may rotate every listed one away: list again
            for path in self.on_disk():
                if path in tried or path in vanished:
                    continue
                with self._snapshot(path) as source:
                    if source is None:
                        vanished.append(path)
                        continue
                    outcome = self._restore_from(source, path, partial)
                if outcome is None:
                    if tried and self.repair:
                        self._repair()  # the state file named the damaged ones
                        self.manager = self._manager()
                    return path
                if not self.repair and not tf.io.gfile.exists(workdir_lib.checkpoint_index(path)):
                    vanished.append(path)  # gone while read: not damage
                    continue
                tried.append(self._set_aside(path, outcome))
            if not vanished:
                break
        if tried:
            where = (
                f"now in {workdir_lib.damaged_checkpoints(self.directory)}"
                if self.repair
                else "left in place"
            )
            raise RuntimeError(
                f"No checkpoint in {self.directory} can be restored (damaged: "
                f"{', '.join(os.path.basename(p) for p in tried)}, {where}). Nothing was "
                "overwritten; to start again from step 0, use a new --workdir."
            )
        return None

    def _restore_from(self, source: str, path: str, partial: bool) -> Exception | None:
        """Restores the checkpoint at `source` (path's files); the error if it cannot be."""
        try:
            _read_every_tensor(source)  # damage shows here, before anything is assigned
        except Exception as e:  # noqa: BLE001 (truncation, CRC, proto: any is damage)
            return e
        try:
            self.check_matches(source, partial=partial, named=path)
            status = self.checkpoint.restore(source)
            if partial:
                status.expect_partial().assert_existing_objects_matched()
            else:
                status.assert_consumed()
        except ModelMismatchError:
            raise
        except (tf.errors.OpError, ValueError, AssertionError) as e:
            return e
        return None

    @contextlib.contextmanager
    def _snapshot(self, path: str):
        """Yields where to read checkpoint `path` from, or None if it vanished.

        The owner reads it in place. A reader hard-links its files into a private
        directory (a copy where links cannot be made, e.g. gs://): a live run deleting
        the checkpoint then removes only its own names, never the data being read.
        """
        if self.repair:
            yield path
            return
        base = os.path.basename(path)
        local = tempfile.mkdtemp(prefix="sideways_restore_")
        try:
            try:
                files = {
                    n: f
                    for n in tf.io.gfile.listdir(self.directory)
                    if (f := workdir_lib.checkpoint_file(n)) and f.prefix == base
                }
                if not any(f.index for f in files.values()):
                    raise FileNotFoundError(workdir_lib.checkpoint_index(path))
                for name in sorted(files, key=lambda n: files[n].index):  # index last
                    src, dst = os.path.join(self.directory, name), os.path.join(local, name)
                    try:
                        os.link(src, dst)
                    except OSError as e:
                        if e.errno == errno.ENOENT and "://" not in src:
                            raise FileNotFoundError(src) from e
                        tf.io.gfile.copy(src, dst, overwrite=True)
            except (FileNotFoundError, tf.errors.NotFoundError):
                yield None
                return
            yield os.path.join(local, base)
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def _set_aside(self, path: str, error: Exception) -> str:
        """Moves a checkpoint that cannot be restored to damaged/ (a reader leaves it), warning
        why; returns path."""
        lines = str(error).strip().splitlines()
        reason = lines[0][:200] if lines else ""
        done = (
            f"moved it to {self._quarantine(path)}"
            if self.repair
            else "left it in place (the training run sets it aside when it next starts)"
        )
        warnings.warn(
            f"Checkpoint {path} cannot be restored ({type(error).__name__}: {reason}); "
            f"{done} and trying the previous one.",
            stacklevel=3,
        )
        return path

    def _quarantine(self, prefix: str) -> str:
        target = workdir_lib.damaged_checkpoints(self.directory)
        tf.io.gfile.makedirs(target)
        base = os.path.basename(prefix)
        for name in tf.io.gfile.listdir(self.directory):
            file = workdir_lib.checkpoint_file(name)
            if file and file.prefix == base:
                tf.io.gfile.rename(
                    os.path.join(self.directory, name), os.path.join(target, name), overwrite=True
                )
        return os.path.join(target, base)

    def check_matches(self, path: str, partial: bool = False, named: str | None = None):
        """Raises ModelMismatchError unless `path` holds exactly this model's variables.

        partial: the checkpoint may hold more (an optimizer, a data position) than this
        checkpoint object restores; what it restores must be there, with its shapes.
        named: the checkpoint's path in the workdir, when `path` is a snapshot of it.
        """
        have, want = _variable_shapes(path), _expected_shapes(self.checkpoint)
        problems = []
        for key in sorted(set(have) | set(want)):
            if key not in want:
                if partial:
                    continue
                problems.append(f"  {key}: in the checkpoint, not in this model")
            elif key not in have:
                problems.append(f"  {key}: in this model, not in the checkpoint")
            elif have[key] != want[key]:
                problems.append(f"  {key}: shape {have[key]} in the checkpoint, {want[key]} here")
        if problems:
            shown = "\n".join(problems[:8]) + ("\n  ..." if len(problems) > 8 else "")
            path = named or path
            raise ModelMismatchError(
                f"The checkpoint {path} belongs to a different model or run setup "
                f"({len(problems)} differences):\n{shown}\n"
                "Nothing was loaded. Use a new --workdir, or run with the config saved in "
                f"{workdir_lib.Workdir.of_checkpoint(path).config}."
            )


class DataPositions:
    """This worker's input position, saved beside the chief's checkpoints.

    With several workers each reads its own shard, so each has its own position in
    it (a shuffle buffer too, with train.data_checkpoint = 'full'); the chief's
    checkpoint cannot hold them all. Worker w saves its position as
    `checkpoints/worker_<w>/ckpt-N`, at the same steps N as the chief's checkpoint
    and before it (train() puts a barrier between), and restores the one of the step
    the chief's checkpoint was restored at. So a run stopped at any step, by any
    signal or crash, resumes every worker where it was.
    """

    def __init__(self, workdir: workdir_lib.Workdir, iterator, worker: int, max_to_keep: int):
        self.directory = workdir_lib.Workdir.of(workdir).data_positions(worker)
        self.worker = worker
        # One more than the chief keeps: a position is written before its checkpoint.
        self.checkpointer = Checkpointer(
            self.directory, tf.train.Checkpoint(data=iterator), max_to_keep=max_to_keep + 1
        )

    def save(self, step: int) -> str:
        return self.checkpointer.save(step)

    def restore(self, step: int) -> str | None:
        """Restores the position saved at `step`; None if there is none."""
        path = workdir_lib.checkpoint_path(self.directory, step)
        if not tf.io.gfile.exists(workdir_lib.checkpoint_index(path)):
            return None
        try:
            self.checkpointer.checkpoint.restore(path).assert_consumed()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise RuntimeError(
                f"Worker {self.worker}'s data position {path} cannot be restored ({reason}). "
                f"Nothing was trained. To resume with this worker's input restarted from the "
                f"start of its shard (not exactly the uninterrupted run), move {path}.* away "
                "and run the same command again on every worker."
            ) from e
        return path
