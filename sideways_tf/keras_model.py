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

The batch is fixed per model, not per set of weights: the state buffers [B, ...] are
state, not parameters, so weights saved at one B load into a model built for another
(the buffers start at zero), and `model.with_batch_size(n)` is the same model for n
clips per replica (predict, evaluate or export at B=1 what trained at B=16). fit refuses,
before its first step, training data that would end in a partial batch (numpy arrays
whose length is not a multiple of the batch; a tf.data dataset batched without
drop_remainder=True), and predict and evaluate refuse clips too short to have a scored
step (K < T_fill).

The same code runs on Keras' TensorFlow and JAX backends (KERAS_BACKEND=jax). On JAX
the engine's update is one jax.jit per clip whose new values it assigns to the
variables; Keras' JAX trainer, which threads a stateless state through its steps and
writes it back when its loop ends, is handed an empty state (_get_jax_state, _keras_step),
so the variables always hold what the engine trained: callbacks, History, the progress
bar, TerminateOnNaN, ModelCheckpoint and save / load_model see the same as on
TensorFlow. There, `import sideways_tf.keras_model` and fit / evaluate / predict of
numpy arrays, Python generators or a keras.utils.PyDataset import no TensorFlow; a
tf.data dataset is taken where TensorFlow is installed (Keras reads it as numpy);
tf.distribute strategies and `export` (a SavedModel) are TensorFlow's.
"""

from __future__ import annotations

import contextlib
import sys
import warnings

import keras
import numpy as np
from keras import ops

from sideways_tf import backend, diagnostics, modes, tasks
from sideways_tf import evaluate as evaluation
from sideways_tf.engine import Engine
from sideways_tf.pipeline import Pipeline
from sideways_tf.rebuild import parameters, rebuild_pipeline

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
        _check_logits_head(pipeline)
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
        stall_after: int = 200,
        fidelity_floor: float = 0.1,
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
        stall_after, fidelity_floor: in a Sideways mode, warn (RuntimeWarning) when the
          training loss is still at chance after `stall_after` steps (0: off), or when a
          unit's fidelity (with fidelity_every) stays below `fidelity_floor` for 3
          samples in a row, naming the unit and what usually helps (sideways_tf.diagnostics).
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
            _check_logits_head(self.pipeline)
        if isinstance(fidelity_every, bool) or not isinstance(fidelity_every, int):
            raise ValueError(f"fidelity_every must be an integer >= 0, got {fidelity_every!r}.")
        mode_name = modes.get(mode).name
        watch = diagnostics.StallWatch(
            mode=mode_name,
            approximate=modes.get(mode).approximate,
            units=[u.name for u in self.pipeline.units],
            chance_loss=self.pipeline.task.chance_loss(self.pipeline.top_output_shape),
            after_steps=stall_after,
            fidelity_floor=fidelity_floor,
        )  # (checks the two thresholds before anything is compiled)
        super().compile(optimizer=optimizer, jit_compile=False, **kwargs)
        with self._strategy_scope():
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
            stall_after=stall_after,
            fidelity_floor=fidelity_floor,
            metrics=[
                m if isinstance(m, str) else keras.saving.serialize_keras_object(m)
                for m in metrics or []
            ],
        )
        self._output_metrics = [_metric(m) for m in metrics or []]
        self._loss_mean = keras.metrics.Mean(name="loss")
        self._means: dict[str, keras.metrics.Mean] = {}
        self._fidelity_every = fidelity_every
        self._watch = watch
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
        keep = (
            "mode",
            "update_every",
            "carry_state",
            "jit_compile",
            "fidelity_every",
            "stall_after",
            "fidelity_floor",
            "metrics",
        )
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

        def train_step(data):
            clips, labels, _ = self._unpack(data)
            out = self.engine.train_clip(clips, labels)
            self._steps += 1
            skipped = not bool(out["applied"]) and not bool(out["overflow"])
            if bool(out["applied"]):
                self._loss_mean.update_state(out["loss"])
                self._update_output_metrics(labels, out["outputs"])
                self._non_finite_in_a_row = 0
                for warning in self._watch.loss(self._steps, float(out["loss"])):
                    warnings.warn(f"SidewaysModel.fit, {warning}", RuntimeWarning, stacklevel=3)
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
                    stacklevel=3,
                )
            for i, norm in enumerate(np.asarray(out["grad_norms"]), start=1):
                self._mean_metric(f"grad_norm/unit_{i}").update_state(norm)
            if self._fidelity_every and self._steps % self._fidelity_every == 0:
                host = self._host(clips), None if labels is None else self._host(labels)
                fid = self.engine.gradient_fidelity(*host)
                for i, c in enumerate(np.asarray(fid["cosine"]), start=1):
                    self._mean_metric(f"fidelity/unit_{i}").update_state(c)
                for warning in self._watch.fidelity(self._steps, np.asarray(fid["cosine"])):
                    warnings.warn(f"SidewaysModel.fit, {warning}", RuntimeWarning, stacklevel=3)
            logs = self._logs()
            logs["non_finite_steps"] = self._non_finite_steps
            logs["non_finite_in_a_row"] = self._non_finite_in_a_row
            if skipped:  # nothing was applied: the step's loss is NaN (TerminateOnNaN reads it)
                logs["loss"] = float("nan")
            return logs

        self.train_function = _keras_step(train_step)
        return self.train_function

    def make_test_function(self, force=False):
        """Each Keras test step is one batch of the ONE evaluation loop (evaluate.score_batch):
        evaluate reports what sideways-eval and the training loop report for the same
        parameters and clips (video_accuracy, clip_accuracy, loss, num_videos, ... for
        classification), plus the compiled metrics on the clip outputs."""
        if self.test_function is not None and not force:
            return self.test_function
        self._require_engine("evaluate()")

        def test_step(data):
            clips, labels, videos = self._unpack(data)
            clips, labels = self._host(clips), None if labels is None else self._host(labels)
            self._check_batch(int(clips.shape[0]))
            self._check_scored_steps(int(clips.shape[1]), "evaluate")
            videos = None if videos is None else self._host(videos)
            batch, self._next_video = evaluation.score_batch(
                self.engine, self._evaluation, clips, labels, videos, self._next_video
            )
            if labels is not None and self._output_metrics:  # on p(clip), as in training
                w = batch.weights
                clip_outputs = ops.einsum("nk...,k->n...", batch.outputs, w) / ops.sum(w)
                self._update_output_metrics(labels, clip_outputs)
            result = self._evaluation.result()
            result.pop("images", None)
            logs = {k: float(v) for k, v in result.items()}
            logs.update({m.name: m.result() for m in self._output_metrics})
            return logs

        self.test_function = _keras_step(test_step)
        return self.test_function

    def reset_metrics(self):
        """Keras calls this before every epoch and evaluation: a fresh evaluation too."""
        super().reset_metrics()
        self._evaluation = self.pipeline.task.metrics()
        self._next_video = 0

    def make_predict_function(self, force=False):
        if self.predict_function is not None and not force:
            return self.predict_function
        self._require_engine("predict()")

        def predict_step(data):
            clips, _, _ = keras.utils.unpack_x_y_sample_weight(data)
            clips, n = self._padded(clips)
            self._check_scored_steps(int(self._local_clips(clips).shape[1]), "predict")
            if getattr(self, "_per_step", False):
                return self.engine.predict_steps(clips)["outputs"][:n]
            return self.engine.predict_clip(clips)[:n]

        self.predict_function = _keras_step(predict_step, predict=True)
        return self.predict_function

    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """Keras' fit, its training data checked before the first step.

        Arrays (numpy, tensors) are batched by the model's batch (batch_size defaults to
        it, R x B); a length that is not a multiple of it, or a tf.data dataset whose batch
        axis is not that static size (batched without drop_remainder=True), is refused
        with the fix for that kind of input: a partial last batch cannot train (the
        buffers hold B clips) and would otherwise fail after the epoch's full batches.
        class_weight is refused: every valid step of every clip weighs alike.
        """
        if self.engine is None:  # Keras says what to do (call compile())
            return super().fit(x, y, batch_size=batch_size, **kwargs)
        if kwargs.get("class_weight") is not None:
            raise ValueError(
                "SidewaysModel.fit does not take class_weight: the engine's loss weighs every "
                "valid step of every clip alike. To balance the classes, resample the training "
                "data instead, e.g. tf.data.Dataset.sample_from_datasets over one dataset per "
                "class with the weights you want, or Dataset.rejection_resample."
            )
        batch_size = self._batch_for_arrays(x, batch_size, "fit")
        self._check_whole_batches(x, kwargs.get("validation_split") or 0.0)
        return super().fit(x, y, batch_size=batch_size, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, **kwargs):
        """Keras' evaluate (see make_test_function); arrays are batched by the model's batch
        (batch_size defaults to it; a last partial batch is padded, its padding unscored)."""
        if self.engine is not None:
            batch_size = self._batch_for_arrays(x, batch_size, "evaluate")
        return super().evaluate(x, y, batch_size=batch_size, **kwargs)

    def predict(
        self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, per_step=False
    ):
        """Outputs averaged over valid steps [N, ...], or every step's [N, K, ...] (per_step).

        Arrays are batched by the model's batch (batch_size defaults to it; a last partial
        batch is padded). Clips shorter than T_fill (no scored step) are refused.
        """
        self._require_engine("predict()")
        batch_size = self._batch_for_arrays(x, batch_size, "predict")
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

    # -- Keras' JAX trainer: the variables stay the engine's -----------------------------

    def _get_jax_state(
        self,
        trainable_variables=False,
        non_trainable_variables=False,
        optimizer_variables=False,
        metrics_variables=False,
        purge_model_variables=False,
    ):
        """The state Keras' JAX trainer hands its step functions: one empty list per
        group asked for, and no variable purged (emptied until the loop ends).

        Its own steps are stateless (values in, new values out, written back by
        jax_state_sync); the engine's updates are not: each assigns the new values to
        the variables (backend.function), and our metrics update in place, so the
        variables always hold the current values, which callbacks, save and the next
        step read (see _keras_step).
        """
        del purge_model_variables
        groups = (trainable_variables, non_trainable_variables, optimizer_variables)
        return tuple([] for wanted in (*groups, metrics_variables) if wanted)

    def jax_state_sync(self):
        """Keras' JAX trainer writes its step functions' state into the variables here;
        ours is empty (_get_jax_state): the variables are current already."""
        self._jax_state_synced = True

    # -- Another batch size; export ----------------------------------------------------

    def with_batch_size(self, batch_size: int) -> SidewaysModel:
        """This model for `batch_size` clips per replica (B): the same parameters, compiled
        alike (mode, metrics, engine settings, and the optimizer with its state).

        For predict, evaluate or export at another batch than the one trained at (weights
        trained at B=16, run at B=1), or more training. The pipeline is rebuilt from its
        Keras config (export.rebuild_pipeline: placed as this one, inside this model's
        strategy), so the state buffers [B, ...] take the new B and start at zero; this
        model is left as it was. Weights files need no such step: load_weights fits a file
        saved at any B (the buffers are state, not parameters).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"with_batch_size takes the clips per replica, B, a positive integer; got "
                f"{batch_size!r}."
            )
        with self._strategy_scope():
            pipeline = rebuild_pipeline(
                self.pipeline,
                batch_size,
                what="with_batch_size",
                otherwise="build the model for that batch size and load_weights into it",
            )
            model = SidewaysModel(pipeline=pipeline, name=self.name)
            if self.engine is not None:
                model.compile_from_config(self.get_compile_config())
                ours, theirs = model.optimizer.variables, self.optimizer.variables
                if self.optimizer.built and [v.shape for v in ours] == [v.shape for v in theirs]:
                    for new, old in zip(ours, theirs):
                        new.assign(old)
        return model

    def export(
        self,
        filepath,
        format="tf_saved_model",
        verbose=None,
        input_signature=None,
        batch_size: int = 1,
        tflite: bool = False,
        **kwargs,
    ) -> dict:
        """The streaming SavedModel of this model: sideways_tf.export.export(self, filepath,
        batch_size, tflite=...), under Keras' name.

        Not Keras' `serve` endpoint: a SidewaysModel carries state from frame to frame, so
        the export steps one frame at a time (signatures init_state() and step(frame,
        **state); README "Streaming export") for `batch_size` streams, in the compiled
        mode's network. tflite: also filepath/model.tflite. Returns the export's metadata.
        """
        if format != "tf_saved_model" or input_signature is not None or kwargs:
            given = {"format": format, "input_signature": input_signature, **kwargs}
            raise ValueError(
                f"SidewaysModel.export takes batch_size and tflite, not {given}: it writes the "
                "streaming SavedModel (init_state and step(frame, **state), one frame per "
                "step), which a whole-clip Keras export cannot express. Call "
                "model.export(dir, batch_size=1) (model.export(dir, tflite=True) adds "
                "dir/model.tflite), or sw.export.export(model, dir, batch_size=1)."
            )
        from sideways_tf import export as export_lib  # (a SavedModel: TensorFlow)

        metadata = export_lib.export(self, filepath, batch_size=batch_size, tflite=tflite)
        if verbose or verbose is None:
            print(
                f"Exported the {metadata['network']} network of mode {metadata['mode']} to "
                f"{filepath} for {batch_size} stream(s): signatures init_state() and "
                f"step(frame, **state), frames {[batch_size, *metadata['frame_shape']]}"
                + (f"; TFLite: {metadata['tflite']}" if tflite else "")
                + "."
            )
        return metadata

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
        if _is_distributed(value):
            return ops.concatenate(self.distribute_strategy.experimental_local_results(value), 0)
        return ops.convert_to_tensor(value)

    def _strategy_scope(self):
        """The tf.distribute strategy's scope the model was built in (on JAX, none)."""
        if backend.is_tensorflow():
            return self.distribute_strategy.scope()
        return contextlib.nullcontext()

    def _padded(self, clips):
        """A last partial batch padded to the static batch (returns it and the real count)."""
        if _is_distributed(clips):
            return clips, self.engine.batch_per_process
        clips = ops.convert_to_tensor(clips)
        n = int(clips.shape[0])
        self._check_batch(n)
        return tasks.pad_batch(clips, self.engine.batch_per_process), n

    def _local_clips(self, clips):
        """This process's first replica's clips (the clips themselves without a strategy)."""
        if _is_distributed(clips):
            return self.distribute_strategy.experimental_local_results(clips)[0]
        return clips

    def _check_batch(self, n: int):
        """Refuses a batch of more clips than one step holds (evaluate, predict)."""
        if n > self.engine.batch_per_process:
            raise ValueError(
                f"A batch of {n} clips, but the model holds {self.engine.batch_per_process} "
                f"per step ({self._batch_words()}): batch the data by that, or use "
                f"model.with_batch_size(b), the same model for b clips per replica."
            )

    def _batch_words(self) -> str:
        """How the batch of one step is made, in words: B, or R local replicas x B."""
        b, r = self.pipeline.batch_size, self.engine.local_replicas
        return f"batch_size B={b}" if r == 1 else f"{r} local replicas x batch_size B={b}"

    # -- Input checks (before the first step) --------------------------------------

    def _batch_for_arrays(self, x, batch_size, what: str):
        """The batch_size Keras batches arrays by: the model's (R x B) unless given; another
        is refused. Datasets and generators batch themselves (batch_size unused)."""
        frames = _array_frames(x)
        if frames is None:
            return batch_size
        step = self.engine.batch_per_process
        # fit trains whole batches only; evaluate and predict pad a smaller one
        if batch_size is not None and (batch_size > step or what == "fit" and batch_size < step):
            raise ValueError(
                f"{what}(batch_size={batch_size}), but the model takes {step} clips per step "
                f"({self._batch_words()}; the state buffers hold them). Leave batch_size out "
                f"(it defaults to {step}), or use model.with_batch_size(b): the same model "
                "for b clips per replica."
            )
        return step if batch_size is None else batch_size

    def _check_whole_batches(self, x, validation_split: float = 0.0):
        """Refuses training data that would end in a partial batch, before the first step.

        Arrays: their length (less fit's validation_split) must be a multiple of the batch.
        A tf.data dataset: its batch axis (element_spec) must be the batch, static: a None
        axis means it was batched without drop_remainder=True, and may end short.
        """
        step = self.engine.batch_per_process
        frames = _array_frames(x)
        if frames is not None:
            n = int(frames.shape[0])
            if validation_split:  # what Keras keeps for training
                n = int(np.floor(n * (1.0 - validation_split)))
            if n % step:
                raise ValueError(_partial_arrays_message(n, step, self.engine.local_replicas))
            return
        tf = _loaded_tensorflow()
        if tf is None or not isinstance(x, tf.data.Dataset):
            return  # generators, PyDatasets, distributed datasets: checked per batch
        spec = _frames_spec(x.element_spec)
        rank = 2 + len(self.pipeline.frame_shape)  # [B, K, *frame]
        if spec is None or spec.shape.rank is None or spec.shape.rank not in (rank, rank - 1):
            return  # (a wrong shape: check_clip names it at the first batch)
        if spec.shape.rank == rank - 1:
            raise ValueError(
                f"The training data yields single clips (element_spec {spec.shape}, "
                f"[K, *frame]); batch them by the model's batch: "
                f".batch({step}, drop_remainder=True)."
            )
        b = spec.shape[0]
        if b is None:
            raise ValueError(
                f"The training data's batch axis is not fixed (element_spec {spec.shape}): a "
                "dataset batched without drop_remainder=True ends in a smaller batch when its "
                f"clip count is not a multiple of {step}, and that batch cannot train (the "
                f"state buffers hold {step} clips: {self._batch_words()}); fit would fail "
                "there, after the epoch's full batches trained. Batch with "
                f".batch({step}, drop_remainder=True), or, for a dataset batched already, "
                f".rebatch({step}, drop_remainder=True)."
            )
        if b != step:
            raise ValueError(
                f"The training data's batches hold {b} clips (element_spec {spec.shape}), but "
                f"the model takes {step} per step ({self._batch_words()}). Batch by {step} "
                f"(.batch({step}, drop_remainder=True) or .rebatch({step}, "
                "drop_remainder=True)), or use model.with_batch_size(b), the same model for b "
                "clips per replica."
            )

    def _check_scored_steps(self, num_frames: int, what: str):
        """Refuses clips with no scored step: shorter than T_fill, the first step whose top
        output is built from real frames only (or too short for the task's targets)."""
        mode, p = self.engine.mode, self.pipeline
        first = mode.first_step(p)
        if num_frames < first:
            raise ValueError(
                f"{what} got clips of K={num_frames} frames, but no step of so short a clip is "
                f"scored in mode '{mode.name}' on this pipeline: the top output of step t is "
                f"built from real frames only from step T_fill = {first} ({p.num_units} "
                f"units, {p.topology.describe().splitlines()[0]}), and earlier steps mix in "
                "the buffers' zero state (they are left out of the average, so nothing would "
                f"be left: all-zero outputs). Give clips of at least {first} frames (far "
                "more is better), or use fewer units or a topology that fills sooner."
            )
        p.task.check_clip_length(
            num_frames, mode.input_lag(p), first, mode.name, f"{what}'s clips, axis 1"
        )

    # -- Summary -----------------------------------------------------------------------

    def count_params(self) -> int:
        """Parameters: every weight of the units and the head, trainable or not, but not
        the state buffers (count_buffers; summary lists both apart)."""
        return int(sum(np.prod(v.shape) for v in parameters(self.pipeline)))

    def count_buffers(self) -> int:
        """Elements of the state buffers (outputs, messages, delay lines): B times the
        state of one stream; not parameters."""
        return int(sum(np.prod(b.shape) for b in self.pipeline.state_variables()))

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
        frozen = self.count_params() - sum(params)
        if frozen:
            lines.append(f"Parameters (non-trainable): {frozen:,}")
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


def _array_frames(x):
    """The clips of array input (numpy, a tensor, or the data contract's dict of them), else
    None (a dataset, a generator: Keras does not batch those)."""
    if isinstance(x, dict) and "frames" in x:
        x = x["frames"]
    tf = _loaded_tensorflow()
    array = isinstance(x, np.ndarray) or backend.is_tensor(x)
    if (array or tf is not None and isinstance(x, tf.Tensor)) and x.ndim >= 1:
        return x
    return None


def _frames_spec(spec):
    """The clips' TensorSpec in a dataset's element_spec: (clips, labels), a contract dict
    ({"frames", ...}) or clips alone; None for anything else."""
    if isinstance(spec, dict):
        spec = spec.get("frames")
    elif isinstance(spec, (tuple, list)) and spec:
        spec = spec[0]
    return spec if isinstance(spec, _loaded_tensorflow().TensorSpec) else None


def _keras_step(step, predict: bool = False):
    """Keras' step function (make_train_function's and the others') around step(batch).

    On TensorFlow, Keras calls it with the data iterator (predict: a list of
    steps_per_execution = 1 batches) and reads its logs or outputs. On JAX, Keras calls
    it with (state, iterator): the variables' values, handed through a stateless step
    and written back into the variables after the loop (JAXTrainer.jax_state_sync).
    The engine updates the variables themselves (one jax.jit per clip, whose new
    values it assigns), so the state is empty and goes back as it came
    (SidewaysModel._get_jax_state): nothing stale is ever written over them.
    """
    if backend.is_jax():

        def jax_step(state, iterator):
            return step(next(iterator)), state

        return jax_step
    if predict:
        return lambda data: step(data[0])
    return lambda iterator: step(next(iterator))


def _loaded_tensorflow():
    """TensorFlow where something imported it (always on its backend), else None: a tf.data
    dataset or a tf.distribute value can only come from it, so asking whether a value is
    one never imports it under KERAS_BACKEND=jax."""
    return sys.modules.get("tensorflow")


def _is_distributed(value) -> bool:
    """A tf.distribute per-replica value (a distributed dataset's batch)."""
    tf = _loaded_tensorflow()
    return tf is not None and isinstance(value, tf.distribute.DistributedValues)


def _partial_arrays_message(n: int, step: int, replicas: int) -> str:
    """Why arrays of n clips cannot train at `step` clips per step, and the numpy fixes."""
    keep = n - n % step
    fixes = [f"trim the arrays to {keep} clips (x[:{keep}], y[:{keep}])"] if keep else []
    fits = [b for b in range(step // replicas, 0, -1) if n % (b * replicas) == 0]
    if fits:  # the largest per-replica batch below this one that divides n
        fixes.append(
            f"pick a batch that divides {n}: model.with_batch_size({fits[0]}) is the same "
            f"model for {fits[0]} clip{'s' if fits[0] > 1 else ''} per replica"
        )
    fixes = fixes or [f"give a multiple of {step} clips"]
    where = "fit would fail there, after the full batches trained" if keep else "none would"
    return (
        f"fit got {n} training clips, not a multiple of the model's batch of {step} clips per "
        f"step: the last batch would hold {n % step}, and a partial batch cannot train (the "
        f"state buffers hold {step} clips; {where}). To fix, {' or '.join(fixes)}."
    )


def _check_logits_head(pipeline: Pipeline):
    """Refuses a classifier whose last layer is a softmax: the task's loss takes logits."""
    task = pipeline.task
    if not isinstance(task, tasks.Classification) or not isinstance(task.loss_arg, str):
        return  # (a loss of one's own may take probabilities)
    top = pipeline.head if pipeline.head is not None else pipeline.units[-1].module
    layer = _last_layer(top)
    activation = getattr(layer, "activation", None)
    if isinstance(layer, keras.layers.Softmax) or getattr(activation, "__name__", "") == "softmax":
        raise ValueError(
            f"The head ends in a softmax (layer {layer.name!r}), but the task's loss "
            f"({task.loss_arg}) takes logits: the probabilities would be softmaxed again, "
            "which flattens the gradients and slows or stalls training. Drop the softmax "
            "(e.g. keras.layers.Dense(12) without activation='softmax'); predict then gives "
            "logits, and keras.ops.softmax(logits) the probabilities."
        )


def _last_layer(layer):
    """The layer that makes a Sequential's or a functional model's output (nested too)."""
    while isinstance(layer, keras.Model) and layer.layers:
        if not isinstance(layer, keras.Sequential) and not getattr(layer, "outputs", None):
            break  # a subclassed model: its last attribute need not make its output
        layer = layer.layers[-1]
    return layer


def _metric(m):
    """A metric instance from a name or instance; "accuracy" means sparse categorical."""
    if isinstance(m, str) and m in ACCURACY_NAMES:
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    return keras.metrics.get(m) if isinstance(m, str) else m


__all__ = ["SidewaysModel", "StopOnNonFinite"]
