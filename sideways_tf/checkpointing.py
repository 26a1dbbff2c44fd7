"""Checkpoints: parameters, optimizer, buffers, step and data position, resumable.

tf.train.CheckpointManager writes a checkpoint's files first and then the
`checkpoint` state file that points at them, so a run killed while saving
resumes from the previous complete checkpoint, never from a half-written one.
Before restoring, the checkpoint's variables are checked against the model's,
so a workdir holding another model fails with a clear message instead of
loading a half-match.
"""

from __future__ import annotations

import os
import tempfile

import tensorflow as tf


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


class Checkpointer:
    """Saves and restores `checkpoint` under `directory`, keeping the last `max_to_keep`."""

    def __init__(self, directory: str, checkpoint: tf.train.Checkpoint, max_to_keep: int = 3):
        self.checkpoint = checkpoint
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def save(self, step: int) -> str:
        return self.manager.save(checkpoint_number=step)

    def restore_latest(self) -> str | None:
        """Restores the newest checkpoint, if any; returns its path."""
        path = self.latest
        if path is None:
            return None
        self.check_matches(path)
        self.checkpoint.restore(path).assert_consumed()
        return path

    def check_matches(self, path: str):
        """Raises ModelMismatchError unless `path` holds exactly this model's variables."""
        have, want = _variable_shapes(path), _expected_shapes(self.checkpoint)
        problems = []
        for key in sorted(set(have) | set(want)):
            if key not in want:
                problems.append(f"  {key}: in the checkpoint, not in this model")
            elif key not in have:
                problems.append(f"  {key}: in this model, not in the checkpoint")
            elif have[key] != want[key]:
                problems.append(f"  {key}: shape {have[key]} in the checkpoint, {want[key]} here")
        if problems:
            shown = "\n".join(problems[:8]) + ("\n  ..." if len(problems) > 8 else "")
            raise ModelMismatchError(
                f"The checkpoint {path} belongs to a different model or run setup "
                f"({len(problems)} differences):\n{shown}\n"
                "Nothing was loaded. Use a new --workdir, or run with the config saved in "
                f"{os.path.join(os.path.dirname(os.path.dirname(path)), 'config.gin')}."
            )
