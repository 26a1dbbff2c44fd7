"""Training runs: `train(workdir)`, the one entry of every experiment.

    sideways-train --gin_file=gin/experiments/moving_shapes_skip_sideways.gin --workdir=/tmp/run

The run reads top to bottom: settings (gin's train.*: sideways_tf.runs.Settings),
runtime (sideways_tf.distribute), data, model and engine (runs.build_run),
resume (config check, restore, a lost evaluation redone), then training steps
with logging, gradient fidelity, evaluation and checkpoints. Everything a run
writes goes under its Workdir (sideways_tf.workdir): LOCK, config.gin,
checkpoints/, train/ and eval/ (TensorBoard), eval_metrics.json. Evaluating a
finished run is sideways_tf.evaluate.evaluate_workdir (sideways-eval).
"""

from __future__ import annotations

import collections
import contextlib
import signal
import sys
import threading
import time

import gin
import numpy as np
import tensorflow as tf
import tqdm

from sideways_tf import checkpointing, diagnostics, distribute, summaries
from sideways_tf import workdir as workdir_lib
from sideways_tf.evaluate import check_eval_size, evaluate, headline
from sideways_tf.runs import Run, build_run
from sideways_tf.settings import Settings, adam, config_with_settings, record_settings
from sideways_tf.workdir import Workdir

__all__ = ["Settings", "adam", "train"]


def train(
    workdir: str | Workdir, settings: Settings | None = None, allow_config_change: bool = False
) -> dict:
    """Trains a run in `workdir`; returns {"step", "eval", "interrupted"}.

    settings: the run's Settings (default: gin's train.* bindings, `Settings()`).
      Settings given from Python are written to workdir/config.gin with the rest of
      gin's operative config (runs.record_settings), so the workdir evaluates,
      exports and resumes; a field gin cannot record (a lambda) is refused first.
    The runtime (strategy, replicas, cores per replica, placement) comes from the
    gin configurable `runtime` (sideways_tf.distribute.make_runtime).
    allow_config_change: resume a workdir whose config.gin differs in substance.
    interrupted is None, "SIGINT" or "SIGTERM" (with several workers: the signal
    that some worker received; every worker stops at the same step and returns it).
    """
    recorded = record_settings(settings) if settings is not None else None
    settings = settings if settings is not None else Settings()
    workdir = Workdir.of(workdir)

    # -- Runtime -------------------------------------------------------------------
    runtime = distribute.make_runtime()
    settings.resolve(runtime)  # (checks the settings against the runtime, before any work)
    if runtime.is_chief:
        workdir_lib.check_writable(workdir)
    try:
        with contextlib.ExitStack() as stack:
            if runtime.is_chief:
                stack.enter_context(workdir_lib.lock(workdir))
            return _train(workdir, runtime, settings, allow_config_change, recorded)
    except checkpointing.DiskFullError:
        raise
    except (tf.errors.OpError, OSError) as e:
        if not checkpointing.is_disk_full(e):
            raise
        # Any file of the run (config.gin, LOCK, eval_metrics.json, events): one line.
        failed = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise checkpointing.DiskFullError(
            checkpointing.disk_full_message(
                f"writing the workdir failed ({failed})",
                workdir.root,
                checkpointing.newest_on_disk(workdir.checkpoints),
            )
        ) from e


def _train(
    workdir: Workdir,
    runtime: distribute.Runtime,
    settings: Settings,
    allow_config_change: bool,
    recorded: str | None = None,
) -> dict:
    """The run itself, once settings, runtime and the workdir lock are in place.

    recorded: the gin text of settings given from Python (runs.record_settings).
    """
    # -- Data --------------------------------------------------------------------
    data_binding = "train.train_data"
    source = settings.train_data()  # (build_run checks it against the contract and the task)
    train_iter, iter_checkpointable = runtime.batches(
        lambda: source, settings.global_batch, symbolic=settings.data_checkpoint == "symbolic"
    )

    # -- Model, engine, checkpoint ----------------------------------------------------
    # One worker: its data position is part of the checkpoint. Several: each worker
    # reads its own shard and saves its own position beside the chief's checkpoint.
    several = runtime.num_workers > 1
    run = build_run(
        workdir,
        runtime,
        settings,
        source,
        data_binding,
        data_iterator=train_iter if iter_checkpointable and not several else None,
        repair=runtime.is_chief,
    )
    positions = (
        checkpointing.DataPositions(
            workdir, train_iter, runtime.worker_index, settings.keep_checkpoints
        )
        if several and iter_checkpointable
        else None
    )
    num_frames = int(source.element_spec["frames"].shape[0])  # K, checked by build_run
    pipeline, optimizer, engine, step, writers = (
        run.pipeline,
        run.optimizer,
        run.engine,
        run.step,
        run.writers,
    )
    task = pipeline.task
    watch = diagnostics.StallWatch(
        mode=engine.mode.name,
        approximate=engine.mode.approximate,
        units=[u.name for u in pipeline.units],
        chance_loss=task.chance_loss(pipeline.top_output_shape),
        after_steps=settings.stall_after,
        fidelity_floor=settings.fidelity_floor,
    )
    eval_ds = (
        settings.eval_data() if settings.eval_data is not None else None
    )  # finite; re-read each time
    if eval_ds is not None:
        check_eval_size(eval_ds, engine.batch_per_process)  # before the first step

    def run_eval():
        if eval_ds is None:
            return None
        metrics = evaluate(engine, eval_ds, progress=settings.progress and runtime.is_chief)
        images = metrics.pop("images", None)  # e.g. future frames: target / prediction strips
        step_now = int(step.numpy())
        if runtime.is_chief:
            summaries.write_scalars(writers["eval"], step_now, metrics)
            if images is not None:
                summaries.write_images(writers["eval"], step_now, "predictions", images)
            workdir_lib.record_evaluation(workdir, step_now, metrics, mode=settings.mode)
        return metrics

    # -- Resume: check the config, restore, redo a lost evaluation -------------------------
    # What config.gin records: gin's operative config (and the settings given from Python).
    config = gin.operative_config_str() if recorded is None else config_with_settings(recorded)
    if runtime.is_chief:
        workdir_lib.check_config(workdir, config, allow_config_change)
    restored = run.checkpointer.restore_latest()
    if restored and positions is not None and positions.restore(int(step.numpy())) is None:
        print(
            f"Worker {runtime.worker_index} has no data position for step {int(step.numpy())} "
            f"in {positions.directory} (saved with another number of workers, or by an "
            "older version): its input restarts from the start of its shard, so this run "
            "will not be exactly the uninterrupted one."
        )
    last = settings.last_step
    if runtime.is_chief:
        workdir_lib.write_config(workdir, config)
        summaries.write_config_text(writers["train"], config)
        print(f"Runtime: {runtime.describe()}.")
        if restored:
            print(f"Resumed from {restored} at step {int(step.numpy())}.")
            if not iter_checkpointable:
                print("runtime.distributed_input: the input stream restarts from its start.")
    eval_metrics = None
    s = int(step.numpy())
    due = s > 0 and (s % settings.eval_every == 0 or s >= last)
    if due and s not in workdir_lib.evaluated_steps(workdir):
        print(f"Step {s} has no evaluation on record (the last run stopped before it); running it.")
        eval_metrics = run_eval()
    if s >= last:
        done = [h for h in workdir_lib.training_evaluations(workdir) if h["step"] == s]
        eval_metrics = eval_metrics or (done[-1] if done else None)
        limit = "stop_at_step" if last < settings.num_steps else "num_steps"
        print(f"Already at step {s} (train.{limit} = {last}): nothing left to train.")
        return {"step": s, "eval": eval_metrics, "interrupted": None}

    # -- Training loop ------------------------------------------------------------------
    bar = tqdm.tqdm(
        total=settings.num_steps,
        initial=s,
        unit="step",
        disable=not (settings.progress and runtime.is_chief),
        dynamic_ncols=True,
    )
    window = collections.defaultdict(list)  # figures of the steps since the last log
    last_time, last_step = time.time(), s
    non_finite_in_a_row, non_finite_total, overflow_total = 0, 0, 0
    # Ctrl-C and SIGTERM (preemption, `kill`) set a flag the loop reads between steps:
    # the step in flight completes, a checkpoint is written, the run exits 130 / 143.
    # With several workers, a signal to any of them stops all at the same step: after
    # every step the workers share their flags (one all-reduce, Runtime.per_worker).
    stop = _StopSignals()
    try:
        stop.agree(runtime)  # (a signal while the run was being built)
        while int(step.numpy()) < last and not stop.agreed:
            batch = next(train_iter)
            labels = batch[task.label_key] if task.label_key else None  # (None: frames only)
            metrics = engine.train_clip(batch["frames"], labels)
            frames = runtime.to_host(batch["frames"])  # this process's clips, replica order
            host_labels = None if labels is None else runtime.to_host(labels)
            step.assign_add(1)
            s = int(step.numpy())
            bar.update(1)
            stop.agree(runtime)
            if not bool(metrics["params_finite"]):
                raise checkpointing.NonFiniteError(
                    f"Step {s}: the update made parameters NaN or Inf (loss and gradients "
                    f"were finite): the learning rate is too high for this model "
                    f"(adam.learning_rate = {float(optimizer.learning_rate):g} now). Nothing "
                    f"was saved; the last checkpoint, {run.checkpointer.latest}, is intact."
                )
            if bool(metrics["overflow"]):
                # float16 loss scaling: the scaled gradients overflowed and the engine halved
                # the scale. Expected (mostly at the start); not the data's fault.
                overflow_total += 1
                summaries.write_scalars(
                    writers["train"],
                    s,
                    {"loss_scale": float(metrics["loss_scale"]), "overflow_steps": overflow_total},
                )
                continue
            if not bool(metrics["applied"]):
                non_finite_in_a_row += 1
                non_finite_total += 1
                bar.write(
                    f"step {s}: loss or gradients are NaN/Inf; the update was skipped "
                    f"({non_finite_in_a_row} in a row)."
                )
                summaries.write_scalars(writers["train"], s, {"non_finite_steps": non_finite_total})
                if non_finite_in_a_row >= settings.max_non_finite_steps:
                    raise checkpointing.NonFiniteError(
                        f"{non_finite_in_a_row} steps in a row (up to step {s}) had NaN or Inf "
                        "loss or gradients; stopping (train.max_non_finite_steps = "
                        f"{settings.max_non_finite_steps}). Check the input data for NaN/Inf and the "
                        f"learning rate; the last checkpoint, {run.checkpointer.latest}, is intact."
                    )
                continue
            non_finite_in_a_row = 0
            window["loss"].append(float(metrics["loss"]))
            for warning in watch.loss(s, float(metrics["loss"])) if runtime.is_chief else ():
                bar.write(f"warning: {warning}")
            for name, value in metrics.get("task", {}).items():
                window[name].append(value)

            if s % settings.log_every == 0 or s == last:
                now = time.time()
                fps = (
                    (s - last_step)
                    * settings.global_batch
                    * num_frames
                    / max(now - last_time, 1e-9)
                )
                last_time, last_step = now, s
                scalars = {
                    "loss": np.mean(window["loss"]),
                    "learning_rate": float(optimizer.learning_rate),
                    "frames_per_second": fps,
                    "non_finite_steps": non_finite_total,
                }
                task_scalars = {k: np.mean(v) for k, v in window.items() if k != "loss"}
                scalars.update(task_scalars)
                if engine.loss_scaled:
                    scalars["loss_scale"] = float(metrics["loss_scale"])
                    scalars["overflow_steps"] = overflow_total
                reader = sys.modules.get("sideways_tf.data.dmvr")  # (only if records are read)
                if reader is not None:
                    scalars["data/skipped_records"] = reader.skipped_records()
                window = collections.defaultdict(list)
                summaries.write_scalars(writers["train"], s, scalars)
                summaries.write_per_unit(writers["train"], s, "grad_norm", metrics["grad_norms"])
                summaries.write_per_unit(
                    writers["train"],
                    s,
                    "buffer_norm",
                    [
                        np.linalg.norm(np.asarray(u.output_buffer, np.float32))
                        for u in pipeline.units
                    ],
                )
                shown = {
                    k[:3]: f"{v:.3f}" for k, v in {"loss": scalars["loss"], **task_scalars}.items()
                }
                bar.set_postfix(**shown, fps=f"{fps:.0f}")
                if bar.disable and runtime.is_chief:  # (train.progress = False: a line instead)
                    train_figures = {"loss": scalars["loss"], **task_scalars}
                    figures = ", ".join(f"{k} {v:.3f}" for k, v in train_figures.items())
                    print(f"step {s}: train {figures} ({fps:.0f} frames/s)", flush=True)
            if settings.fidelity_every and (s % settings.fidelity_every == 0 or s == 1):
                fid = engine.gradient_fidelity(frames, host_labels)
                summaries.write_per_unit(writers["train"], s, "fidelity/cosine", fid["cosine"])
                summaries.write_per_unit(
                    writers["train"], s, "fidelity/norm_ratio", fid["norm_ratio"]
                )
                for warning in (
                    watch.fidelity(s, np.asarray(fid["cosine"])) if runtime.is_chief else ()
                ):
                    bar.write(f"warning: {warning}")
            if settings.images_every and (s % settings.images_every == 0 or s == 1):
                summaries.write_clips(writers["train"], s, "input_clips", frames)
            if s % settings.checkpoint_every == 0 or s == last:
                _save(run, s, positions)
            if s % settings.eval_every == 0 or s == last:
                eval_metrics = run_eval()
                if eval_metrics:
                    bar.write(f"step {s}: eval {headline(task, eval_metrics)}")
    except _PEER_LOST as e:
        if not several:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise distribute.PeerLostError(
            f"Worker {runtime.worker_index} lost contact with another worker at step "
            f"{int(step.numpy())} ({type(e).__name__}: {first[:200]}). The last checkpoint is "
            f"{checkpointing.newest_on_disk(workdir.checkpoints) or 'none (a rerun starts at step 0)'}; "
            "once every host is up, run the same command again on every worker to resume "
            "from it."
        ) from e
    finally:
        stop.restore()
        bar.close()
        for w in writers.values():
            w.flush()
    s = int(step.numpy())
    if stop.agreed:
        path = _save(run, s, positions)
        if not several:
            print(
                f"Stopped ({stop.agreed}) at step {s}; saved {path}. Run the same command "
                "again to resume."
            )
        else:
            saved = path or workdir.checkpoint(s)
            where = f" and this worker's data position in {positions.directory}" * bool(positions)
            print(
                f"Worker {runtime.worker_index}: stopped at step {s}, as every worker did "
                f"(worker {stop.by} received {stop.agreed}); the chief saved {saved}{where}. "
                "Run the same command again on every worker to resume. (Exit code "
                f"{128 + signal.Signals[stop.agreed].value} on every worker.)"
            )
    return {"step": s, "eval": eval_metrics, "interrupted": stop.agreed}


# What a collective raises when another worker is gone (killed, crashed, unreachable).
_PEER_LOST = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


class _StopSignals:
    """SIGINT / SIGTERM handlers that only set a flag; the loop stops between steps.

    received: the signal this process got. agreed: the one every worker stops for
    (after agree(); with one worker, the same), sent to worker `by`. A second
    Ctrl-C while stopping raises KeyboardInterrupt as usual (no checkpoint: the one
    being written would be inconsistent).
    """

    def __init__(self):
        self.received = self.agreed = None
        self.by = None
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def agree(self, runtime: distribute.Runtime):
        """Every worker learns which got a signal, at the same step (one all-reduce)."""
        received = self.received  # (read once: a signal may land during the all-reduce)
        if runtime.num_workers == 1:
            self.agreed, self.by = received, 0 if received else None
            return
        codes = runtime.per_worker(signal.Signals[received].value if received else 0)
        for worker, code in enumerate(codes):
            if code:
                self.agreed, self.by = signal.Signals(code).name, worker
                return

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _save(run: Run, step: int, positions: checkpointing.DataPositions | None = None) -> str | None:
    """The chief writes the checkpoint; other workers hold the same parameters.

    With several workers, each first saves its data position, and all meet at a
    barrier before the chief writes: a checkpoint on disk always has every worker's
    position beside it.
    """
    if positions is not None:
        positions.save(step)
    if run.runtime.num_workers > 1:
        run.runtime.per_worker(0)  # the barrier
    return run.checkpointer.save(step) if run.runtime.is_chief else None
