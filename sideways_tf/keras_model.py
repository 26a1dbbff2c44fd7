"""SidewaysModel: a keras.Model whose fit, evaluate and predict train with Sideways.

    model = sw.SidewaysModel(units, topology="skip(2)", head=head, batch_size=16,
                             frame_shape=(32, 32, 3))
    model.compile(optimizer="adam", metrics=["accuracy"], mode="skip_sideways")
    model.fit(train_ds, epochs=3, validation_data=eval_ds, callbacks=[...])
    model.save("run.keras"); keras.saving.load_model("run.keras")

Each training step of `fit` is the engine's ONE update function
(`Engine.train_clip`, sideways_tf.engine), reached through Keras' public hook
`make_train_function`: Keras' loop, progress bar, History and callbacks drive it,
and the engine runs its own `strategy.run`, so the model also trains under a
tf.distribute strategy's scope (build and compile it there) with the engine's
replica logic. batch_size is B, the clips per replica (the buffers' static
batch, as Pipeline's). The batches fed to fit, evaluate and predict hold the
global batch, R x B clips for R replicas (R = 1 without a strategy): (clips
[R*B, K, *frame], labels [R*B]) for classification, or clips alone when the
task's targets are the frames (tasks.FutureFrames); each replica gets its B.

Logs: loss (mean over valid steps and the epoch's batches), the compiled metrics
on the clip outputs averaged over valid steps (e.g. "accuracy"), and in
evaluation the task's figures from the library's one evaluation loop
(sideways_tf.evaluate: classification video_accuracy and clip_accuracy with
num_videos and num_clips, future frames psnr, ssim and the copy-last-frame
baseline), the same numbers sideways-eval reports; and the engine's health figures per unit, grad_norm/unit_i (and,
with compile(fidelity_every=N), fidelity/unit_i: the sideways-vs-bptt gradient
cosine), which Keras' TensorBoard callback writes as scalars.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from sideways_tf import evaluate as evaluation
from sideways_tf import modes, tasks
from sideways_tf.engine import Engine
from sideways_tf.pipeline import Pipeline

ACCURACY_NAMES = ("accuracy", "acc", "sparse_categorical_accuracy")


@keras.saving.register_keras_serializable(package="sideways_tf")
class SidewaysModel(keras.Model):
    """A Sideways pipeline as a keras.Model (see the module docstring).

    Args:
      units: the L units, bottom first (sideways_tf.Unit), or None with `pipeline`.
      topology, head, task, batch_size, frame_shape: as sideways_tf.Pipeline;
        batch_size is B per replica (the buffers' static batch); batch the data
        by the global batch, R x B (engine.global_batch).
      pipeline: a built Pipeline to wrap instead.
    """

    def __init__(
        self,
        units=None,
        topology="chain",
        head=None,
        task=None,
        batch_size=None,
        frame_shape=None,
        pipeline: Pipeline | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (pipeline is None) == (units is None):
            raise ValueError(
                "SidewaysModel takes units (with topology, head, task, batch_size, "
                "frame_shape) or a built pipeline=Pipeline(...), not both or neither."
            )
        if pipeline is None:
            if batch_size is None or frame_shape is None:
                raise ValueError(
                    "SidewaysModel(units, ...) needs batch_size (clips per replica: the buffers "
                    "hold a static batch) and frame_shape, e.g. batch_size=16, "
                    "frame_shape=(32, 32, 3)."
                )
            pipeline = Pipeline(
                units,
                topology=topology,
                head=head,
                task=task,
                batch_size=batch_size,
                frame_shape=frame_shape,
            )
        if not pipeline.built:
            raise ValueError(
                "Build the pipeline first: Pipeline(..., batch_size=B, frame_shape=...)."
            )
        self.pipeline = pipeline
        self.engine = None
        self.built = True

    # -- Keras plumbing ---------------------------------------------------------------

    def call(self, clips, training=False):
        """Top outputs of every step from a zero state: [B, K, *frame] -> [B, K, ...]."""
        return self.pipeline(clips, training=training)

    def compile(
        self,
        optimizer="adam",
        loss=None,
        metrics=None,
        mode: str = "skip_sideways",
        update_every: int | None = None,
        carry_state: bool = False,
        jit_compile: bool = False,
        fidelity_every: int = 0,
        **kwargs,
    ):
        """Sets the optimizer, metrics and the Sideways engine.

        optimizer: a Keras optimizer or its name ("adam", "sgd").
        loss: None (the pipeline's task decides the loss); a task (tasks.Classification(),
          tasks.FutureFrames(horizon=h)) replaces the pipeline's.
        metrics: Keras metrics on the clip outputs averaged over valid steps, given
          the labels (names or instances; "accuracy" is sparse categorical accuracy).
        mode: a name of sideways_tf.MODES; update_every, carry_state, jit_compile: as
          sideways_tf.Engine. fidelity_every: every N training steps, log the per-unit
          cosine of the sideways gradient against bptt's (0: never).
        """
        if kwargs.get("steps_per_execution", 1) != 1:
            raise ValueError(
                "SidewaysModel runs one engine update per Keras step; leave "
                "steps_per_execution at 1."
            )
        if loss is not None:
            if not isinstance(loss, tasks.Task):
                raise ValueError(
                    f"loss = {loss!r}: the pipeline's task decides the loss. Leave loss=None, "
                    "or give a task: loss=sw.tasks.Classification() or "
                    "sw.tasks.FutureFrames(horizon=1)."
                )
            self.pipeline.task = loss
        if isinstance(fidelity_every, bool) or not isinstance(fidelity_every, int):
            raise ValueError(f"fidelity_every must be an integer >= 0, got {fidelity_every!r}.")
        mode_name = modes.get(mode).name
        super().compile(optimizer=optimizer, jit_compile=False, **kwargs)
        with self.distribute_strategy.scope():
            self.engine = Engine(
                self.pipeline,
                mode,
                self.optimizer,
                update_every=update_every,
                carry_state=carry_state,
                jit_compile=jit_compile,
            )
        self._sideways_config = dict(
            mode=mode_name,
            update_every=update_every,
            carry_state=carry_state,
            jit_compile=jit_compile,
            fidelity_every=fidelity_every,
            metrics=[
                m if isinstance(m, str) else keras.saving.serialize_keras_object(m)
                for m in metrics or []
            ],
        )
        self._output_metrics = [_metric(m) for m in metrics or []]
        self._loss_mean = keras.metrics.Mean(name="loss")
        self._means: dict[str, keras.metrics.Mean] = {}
        self._fidelity_every = fidelity_every
        self._steps = 0
        self._non_finite_steps = self._non_finite_in_a_row = 0  # skipped updates (fit)

    def get_compile_config(self):
        config = super().get_compile_config() or {}
        config.pop("metrics", None)
        config.pop("loss", None)
        return {**config, **getattr(self, "_sideways_config", {})}

    def compile_from_config(self, config):
        config = dict(config)
        config["metrics"] = [
            m if isinstance(m, str) else keras.saving.deserialize_keras_object(m)
            for m in config.get("metrics", [])
        ]
        optimizer = config.pop("optimizer", "adam")
        if isinstance(optimizer, dict):
            optimizer = keras.saving.deserialize_keras_object(optimizer)
        keep = ("mode", "update_every", "carry_state", "jit_compile", "fidelity_every", "metrics")
        self.compile(optimizer=optimizer, **{k: config[k] for k in keep if k in config})

    @property
    def metrics(self):
        if self.engine is None:
            return []
        return [self._loss_mean, *self._output_metrics, *self._means.values()]

    def _mean_metric(self, name: str) -> keras.metrics.Mean:
        if name not in self._means:
            self._means[name] = keras.metrics.Mean(name=name)
        return self._means[name]

    def get_config(self):
        return {
            **super().get_config(),
            "pipeline": keras.saving.serialize_keras_object(self.pipeline),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        pipeline = keras.saving.deserialize_keras_object(config.pop("pipeline"))
        return cls(pipeline=pipeline, **config)

    # -- Training, evaluation, prediction ----------------------------------------------

    def _require_engine(self, what: str):
        if self.engine is None:
            raise RuntimeError(
                f"Call model.compile(optimizer=..., mode=...) before {what}: it builds the "
                "Sideways engine."
            )

    def _unpack(self, data):
        """(clips, labels or None, videos or None) of a batch: (clips, labels), clips alone,
        or a dict of the data contract ({"frames", "label", "video_index"}: what the
        library's readers yield, batched)."""
        key = self.pipeline.task.label_key
        if isinstance(data, dict) and "frames" in data:
            if key is not None and key not in data:
                raise ValueError(
                    f"The batch has no {key!r}, which the pipeline's task "
                    f"({type(self.pipeline.task).__name__}) scores clips against."
                )
            return data["frames"], data.get(key) if key else None, data.get("video_index")
        clips, labels, weights = keras.utils.unpack_x_y_sample_weight(data)
        if weights is not None:
            raise ValueError(
                "SidewaysModel does not take sample weights: every valid step of every clip "
                "counts alike. Give (clips, labels) or clips alone."
            )
        if key is None:
            labels = None  # the frames are the targets
        elif labels is None:
            raise ValueError(
                f"The pipeline's task ({type(self.pipeline.task).__name__}) scores clips "
                "against labels: give a dataset of (clips [B, K, *frame], labels [B])."
            )
        return clips, labels, None

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        self._require_engine("fit()")

        def train_function(iterator):
            clips, labels, _ = self._unpack(next(iterator))
            out = self.engine.train_clip(clips, labels)
            self._steps += 1
            skipped = not bool(out["applied"]) and not bool(out["overflow"])
            if bool(out["applied"]):
                self._loss_mean.update_state(out["loss"])
                self._update_output_metrics(labels, out["outputs"])
                self._non_finite_in_a_row = 0
            elif skipped:  # (a float16 overflow only lowers the loss scale: not the data's fault)
                self._non_finite_in_a_row += 1
                self._non_finite_steps += 1
                warnings.warn(
                    f"SidewaysModel.fit, step {self._steps}: the loss or gradients are NaN/Inf, "
                    f"so the update was skipped ({self._non_finite_in_a_row} in a row, "
                    f"{self._non_finite_steps} in all; logs 'non_finite_steps'). Check the clips "
                    "for NaN/Inf and lower the learning rate. To stop: "
                    "keras.callbacks.TerminateOnNaN() at the first such step, or "
                    "sw.StopOnNonFinite(max_in_a_row=10) as sideways-train does.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            for i, norm in enumerate(np.asarray(out["grad_norms"]), start=1):
                self._mean_metric(f"grad_norm/unit_{i}").update_state(norm)
            if self._fidelity_every and self._steps % self._fidelity_every == 0:
                host = self._host(clips), None if labels is None else self._host(labels)
                fid = self.engine.gradient_fidelity(*host)
                for i, c in enumerate(np.asarray(fid["cosine"]), start=1):
                    self._mean_metric(f"fidelity/unit_{i}").update_state(c)
            logs = self._logs()
            logs["non_finite_steps"] = self._non_finite_steps
            logs["non_finite_in_a_row"] = self._non_finite_in_a_row
            if skipped:  # nothing was applied: the step's loss is NaN (TerminateOnNaN reads it)
                logs["loss"] = float("nan")
            return logs

        self.train_function = train_function
        return train_function

    def make_test_function(self, force=False):
        """Each Keras test step is one batch of the ONE evaluation loop (evaluate.score_batch):
        evaluate reports what sideways-eval and the training loop report for the same
        parameters and clips (video_accuracy, clip_accuracy, loss, num_videos, ... for
        classification), plus the compiled metrics on the clip outputs."""
        if self.test_function is not None and not force:
            return self.test_function
        self._require_engine("evaluate()")

        def test_function(iterator):
            clips, labels, videos = self._unpack(next(iterator))
            clips, labels = self._host(clips), None if labels is None else self._host(labels)
            videos = None if videos is None else self._host(videos)
            batch, self._next_video = evaluation.score_batch(
                self.engine, self._evaluation, clips, labels, videos, self._next_video
            )
            if labels is not None and self._output_metrics:  # on p(clip), as in training
                w = batch.weights
                clip_outputs = tf.einsum("nk...,k->n...", batch.outputs, w) / tf.reduce_sum(w)
                self._update_output_metrics(labels, clip_outputs)
            result = self._evaluation.result()
            result.pop("images", None)
            logs = {k: float(v) for k, v in result.items()}
            logs.update({m.name: m.result() for m in self._output_metrics})
            return logs

        self.test_function = test_function
        return test_function

    def reset_metrics(self):
        """Keras calls this before every epoch and evaluation: a fresh evaluation too."""
        super().reset_metrics()
        self._evaluation = self.pipeline.task.metrics()
        self._next_video = 0

    def make_predict_function(self, force=False):
        if self.predict_function is not None and not force:
            return self.predict_function
        self._require_engine("predict()")

        def predict_function(data):
            (data,) = data  # Keras hands a list of steps_per_execution (= 1) batches
            clips, _, _ = keras.utils.unpack_x_y_sample_weight(data)
            clips, n = self._padded(clips)
            if getattr(self, "_per_step", False):
                return self.engine.predict_steps(clips)["outputs"][:n]
            return self.engine.predict_clip(clips)[:n]

        self.predict_function = predict_function
        return predict_function

    def predict(
        self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, per_step=False
    ):
        """Outputs averaged over valid steps [N, ...], or every step's [N, K, ...] (per_step)."""
        previous, self._per_step = getattr(self, "_per_step", False), per_step
        self.predict_function = None
        try:
            return super().predict(
                x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
            )
        finally:
            self._per_step = previous
            self.predict_function = None

    def reset_state(self):
        """Zeroes the buffers (the next clip starts new videos; carry_state runs)."""
        self._require_engine("reset_state()")
        self.engine.reset_state()

    # -- Helpers ---------------------------------------------------------------------

    def _update_output_metrics(self, labels, outputs, n=None):
        if labels is None or not self._output_metrics:
            return
        labels = self._host(labels)
        outputs = outputs if n is None else outputs[:n]
        for metric in self._output_metrics:
            metric.update_state(labels, outputs)

    def _logs(self) -> dict:
        return {m.name: m.result() for m in self.metrics}

    def _host(self, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return tf.concat(self.distribute_strategy.experimental_local_results(value), 0)
        return tf.convert_to_tensor(value)

    def _padded(self, clips):
        """A last partial batch padded to the static batch (returns it and the real count)."""
        if isinstance(clips, tf.distribute.DistributedValues):
            return clips, self.engine.batch_per_process
        clips = tf.convert_to_tensor(clips)
        n = int(clips.shape[0])
        if n > self.engine.batch_per_process:
            raise ValueError(
                f"A batch of {n} clips, but the model holds {self.engine.batch_per_process} "
                "per step (batch_size B per replica x the local replicas): batch the data by "
                "that."
            )
        return tasks.pad_batch(clips, self.engine.batch_per_process), n

    # -- Summary -----------------------------------------------------------------------

    def summary(self, print_fn=None, **kwargs):
        """Units, parameters and state buffers apart (buffers are not parameters)."""
        print_fn = print_fn or print
        p = self.pipeline
        params = [
            int(sum(np.prod(v.shape) for v in p.unit_variables(i)))
            for i in range(1, p.num_units + 1)
        ]
        buffers = [int(sum(np.prod(b.shape) for b in u.state_variables)) for u in p.units]
        mode = self.engine.mode.name if self.engine is not None else "(not compiled)"
        lines = [
            f'SidewaysModel "{self.name}": {p.num_units} units, '
            f"{p.topology.describe().splitlines()[0]}, "
            f"mode {mode}, task {type(p.task).__name__}, batch {p.batch_size} per replica, "
            f"frames {p.frame_shape}",
            f"{'unit':<28}{'output':<22}{'parameters':>12}{'buffers':>12}",
        ]
        for i, (u, shape) in enumerate(zip(p.units, p.output_shapes), start=1):
            name = f"{i} {u.name}" + (" + head" if i == p.num_units and p.head is not None else "")
            lines.append(f"{name:<28}{str(shape[1:]):<22}{params[i - 1]:>12,}{buffers[i - 1]:>12,}")
        lines.append(f"Parameters (trainable): {sum(params):,}")
        lines.append(
            f"State buffers (outputs, messages, delay lines; not trained): {sum(buffers):,}"
        )
        if self.engine is not None and self.optimizer is not None and self.optimizer.built:
            slots = int(sum(np.prod(v.shape) for v in self.optimizer.variables))
            lines.append(f"Optimizer state: {slots:,}")
        for line in lines:
            print_fn(line)


@keras.saving.register_keras_serializable(package="sideways_tf")
class StopOnNonFinite(keras.callbacks.Callback):
    """Stops `fit` after `max_in_a_row` updates in a row were skipped for NaN/Inf loss or
    gradients: the policy of sideways-train (train.max_non_finite_steps), as a callback.

    keras.callbacks.TerminateOnNaN stops at the first such step; this one tolerates a
    few (a bad clip now and then), and says why it stopped.
    """

    def __init__(self, max_in_a_row: int = 10):
        super().__init__()
        if isinstance(max_in_a_row, bool) or not isinstance(max_in_a_row, int) or max_in_a_row < 1:
            raise ValueError(f"max_in_a_row must be a positive integer, got {max_in_a_row!r}.")
        self.max_in_a_row = max_in_a_row
        self.stopped_at = None  # the batch fit stopped at, if it did

    def on_train_batch_end(self, batch, logs=None):
        in_a_row = int((logs or {}).get("non_finite_in_a_row", 0))
        if in_a_row >= self.max_in_a_row:
            self.stopped_at = batch
            self.model.stop_training = True
            print(
                f"StopOnNonFinite: {in_a_row} updates in a row (up to batch {batch}) had NaN "
                "or Inf loss or gradients and were skipped; training stops. Check the input "
                "data for NaN/Inf and the learning rate."
            )

    def get_config(self):
        return {"max_in_a_row": self.max_in_a_row}


def _metric(m):
    """A metric instance from a name or instance; "accuracy" means sparse categorical."""
    if isinstance(m, str) and m in ACCURACY_NAMES:
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    return keras.metrics.get(m) if isinstance(m, str) else m


__all__ = ["SidewaysModel", "StopOnNonFinite"]
