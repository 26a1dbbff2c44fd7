"""Evaluation: ONE loop that scores a finite dataset, whoever asks.

    evaluate(engine, dataset)   the training loop's periodic evaluation, sideways-eval
                                (evaluate_workdir), the benchmarks;
    score_batch(engine, metrics, clips, labels, videos)
                                one batch of it: what SidewaysModel.evaluate (Keras)
                                runs per step, so Keras reports the same numbers.

Per batch: every step's top output from a fresh state (Engine.predict_steps: the
per-frame network in a per-frame mode, the pipelined one otherwise), the task's
step targets at the mode's input lag, weights [K] (1.0 where the step is scored:
pipeline full, target present), and the video each clip comes from; the task's
Metrics accumulate them (tasks.base.EvalBatch). Classification reports
video_accuracy and clip_accuracy apart, with num_videos and num_clips; future
frames report PSNR and SSIM against copying the last frame seen. Every example is
scored: a last partial batch is padded to the buffers' static batch size and the
padding is dropped.

The field's protocols for classification go through the same Metrics, reported apart
(evaluate_protocols; sideways-eval --protocols=multiview,streaming):
    multiview   N clips x 3 crops per video (the reader's protocol="multiview"), logits
                averaged per video: multiview_accuracy, _videos, _views;
    streaming   each video run once, causally, frame by frame from a fresh state with
                the state carried (Mode.stream_step: the network sideways-export saves),
                its logits averaged over all the video's scored steps and read at its
                end (stream_videos): streaming_accuracy, _videos, _frames.

score_batch is keras.ops and numpy: it runs on either Keras backend (SidewaysModel.evaluate
under KERAS_BACKEND=jax imports no TensorFlow). What reads tf.data (evaluate's batching,
the protocols, check_eval_size), writes TensorBoard summaries or restores a run
(evaluate_workdir) uses TensorFlow, imported when first reached.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import tqdm
from keras import ops

from sideways_tf.backend import tf
from sideways_tf.engine import Engine
from sideways_tf.steps import unroll
from sideways_tf.tasks import EvalBatch, Metrics, Task, pad_batch

STREAM_CHUNK = 16  # frames per call of the streaming protocol (any length gives the same figures)


def _protocols() -> tuple:
    """The evaluation protocols (the readers' protocol_sampling: tf.data, so TensorFlow)."""
    from sideways_tf.data.sampling import PROTOCOLS

    return PROTOCOLS


def evaluate(
    engine: Engine, dataset: tf.data.Dataset, progress: bool = False, protocol: str | None = None
) -> dict:
    """Scores a finite dataset with the task of engine's pipeline; returns the task's
    figures (and "images").

    dataset: unbatched clips ({"frames"[, label][, "video_index"]}); with protocol
    "streaming", whole videos ({"frames" [T, *frame], label, "video_index"}, T varying:
    a reader's protocol="streaming"). protocol None: the task's result; "multiview" or
    "streaming": Metrics.protocol_result, its figures named apart.
    """
    if protocol is not None and protocol not in _protocols():
        raise ValueError(f"protocol = {protocol!r}; use None or one of {_protocols()}.")
    metrics = engine.task.metrics()
    if protocol == "streaming":
        stream_videos(engine, metrics, dataset, progress=progress)
        return metrics.protocol_result(protocol)
    batches = dataset.batch(engine.batch_per_process).prefetch(2)
    bar = tqdm.tqdm(batches, desc="eval", unit="batch", disable=not progress, leave=False)
    next_video, label_key = 0, engine.task.label_key
    for batch in bar:
        labels = batch[label_key] if label_key else None
        _, next_video = score_batch(
            engine, metrics, batch["frames"], labels, batch.get("video_index"), next_video
        )
    return metrics.result() if protocol is None else metrics.protocol_result(protocol)


def stream_videos(
    engine: Engine,
    metrics: Metrics,
    dataset: tf.data.Dataset,
    progress: bool = False,
    chunk: int = STREAM_CHUNK,
) -> None:
    """The streaming protocol: adds every video of `dataset` to `metrics`, each run once.

    B videos at a time (B = engine.batch_per_replica, the streams of the pipeline's
    state), in lockstep from a fresh state (Mode.stream_state), `chunk` frames per call
    with the state carried between calls: y[t] = the step of the network this mode
    trains (Mode.stream_step: frame_bp's per-frame network, the pipelined one otherwise)
    after frames x[1..t] of the video. Each chunk is a row of an EvalBatch with its own
    weights [n, chunk]: 1.0 where step t is scored (t >= the mode's first scored step,
    and frame t is the video's, not padding past its end), so the Metrics pool a video's
    logits over all its scored steps, its prediction at its end.

    dataset: unbatched {"frames" [T, *frame], label, "video_index"}, T varying (a
    reader's protocol="streaming"). Every video needs at least the mode's first scored
    step (T_fill frames for a pipelined mode) or this raises, naming it.
    """
    task, mode, pipeline = engine.task, engine.mode, engine.pipeline
    if task.label_key is None:
        raise ValueError(
            f"The streaming protocol scores a label per video; this pipeline's task "
            f"({task.name}) has none. Evaluate it without a protocol."
        )
    b, lag, first = engine.batch_per_replica, mode.input_lag(pipeline), mode.first_step(pipeline)
    run = _stream_chunks(engine, chunk)

    def presence(video):
        return {**video, "present": tf.ones(tf.shape(video["frames"])[:1], tf.float32)}

    batches = dataset.map(presence).padded_batch(b).prefetch(1)
    bar = tqdm.tqdm(batches, desc="streaming", unit="batch", disable=not progress, leave=False)
    for batch in bar:
        frames, present = batch["frames"], batch["present"]  # [n, T, *frame], [n, T]
        labels, videos = batch[task.label_key], batch["video_index"]
        n, length = int(frames.shape[0]), int(frames.shape[1])
        lengths = tf.reduce_sum(present, axis=1).numpy()  # [n]
        if lengths.min() < first:
            short = int(np.asarray(videos)[lengths.argmin()])
            raise ValueError(
                f"Video {short} has {int(lengths.min())} frames, fewer than the {first} the "
                f"pipeline needs before its first scored output (mode {mode.name}, T_fill = "
                f"{pipeline.fill_steps}): streaming cannot score it. Leave out the videos "
                f"shorter than {first} frames, or use fewer units."
            )
        padded = -(-length // chunk) * chunk  # T rounded up to whole chunks
        frames = pad_batch(frames, b)
        frames = tf.pad(frames, [[0, 0], [0, padded - length]] + [[0, 0]] * (frames.shape.rank - 2))
        present = tf.pad(present, [[0, 0], [0, padded - length]])
        state = mode.stream_state(pipeline)
        for start in range(0, padded, chunk):
            clip = frames[:, start : start + chunk]  # [B, chunk, *frame]
            state, outputs, filled = run(state, clip)
            outputs = outputs[:n]
            _check_finite(outputs, f"streamed videos {np.asarray(videos).tolist()}")
            targets, target_present = task.step_targets(clip[:n], labels, lag)
            weights = present[:, start : start + chunk] * (filled * target_present)[None]
            if float(tf.reduce_sum(weights)) > 0:
                metrics.update(EvalBatch(outputs, targets, weights, {}, labels, videos))


def _stream_chunks(engine: Engine, chunk: int) -> Callable:
    """(state, clip [B, chunk, *frame]) -> (state, outputs [B, chunk, ...], filled
    [chunk]): Mode.stream_step over the chunk, compiled once. With several replicas each
    runs the same streams; the first one's result is read."""
    mode, pipeline, strategy = engine.mode, engine.pipeline, engine.strategy
    first = mode.first_step(pipeline)

    def replica(state, clip):
        def step(state, k):
            state, y = mode.stream_step(pipeline, state, clip[:, k], training=False)
            return state, (y, tf.cast(state["t"] >= first, tf.float32))

        state, (outputs, filled) = unroll(step, state, chunk, static=True)
        return state, outputs, filled

    @tf.function
    def run(state, clip):
        out = strategy.run(replica, args=(state, clip))
        return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], out)

    return run


def evaluate_protocols(
    engine: Engine,
    eval_data: Callable,
    protocols: Sequence[str] | None = None,
    progress: bool = False,
) -> dict:
    """The field's classification protocols, each reported apart: {multiview_accuracy,
    multiview_view_accuracy, multiview_loss, multiview_videos, multiview_views,
    streaming_accuracy, streaming_loss, streaming_videos, streaming_frames}.

    eval_data: the run's evaluation reader (train.eval_data), called with
    protocol="multiview" / "streaming" (dmvr_dataset takes it; its N clips:
    clip_sampling.multiview_clips). protocols: None for all of them.
    """
    protocols = check_protocols(eval_data, _protocols() if protocols is None else protocols)
    result = {}
    for protocol in protocols:
        result.update(evaluate(engine, eval_data(protocol=protocol), progress, protocol))
    return result


def check_protocols(eval_data: Callable, protocols: Sequence[str]) -> list[str]:
    """The protocols as a list ("multiview,streaming" or a sequence), or raises, naming
    an unknown one or a reader that cannot give their clips."""
    if isinstance(protocols, str):
        protocols = [p.strip() for p in protocols.split(",") if p.strip()]
    unknown = [p for p in protocols if p not in _protocols()]
    if unknown:
        raise ValueError(f"Unknown evaluation protocol(s) {unknown}; choose from {_protocols()}.")
    if protocols and not _takes_protocol(eval_data):
        raise ValueError(
            f"The evaluation reader ({_name(eval_data)}) takes no protocol=, so it cannot give "
            f"the {', '.join(protocols)} protocol's clips. The protocols read DMVR records "
            "(train.eval_data = @eval/dmvr_dataset, e.g. data/folder.gin)."
        )
    return list(protocols)


def _takes_protocol(fn) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True  # (cannot tell: the call will say)
    return "protocol" in parameters  # (named: **kwargs may mean something else)


def _name(fn) -> str:
    return getattr(inspect.unwrap(fn), "__name__", repr(fn))


def _check_finite(outputs, which: str) -> None:
    if not np.all(np.isfinite(ops.convert_to_numpy(outputs))):
        raise FloatingPointError(
            f"Evaluation produced NaN/Inf outputs ({which}): the parameters or the eval data "
            "are not finite. No figure is reported."
        )


def score_batch(
    engine: Engine, metrics: Metrics, clips, labels=None, videos=None, next_video: int = 0
) -> tuple[EvalBatch, int]:
    """Adds one batch of n <= batch_per_process clips [n, K, *frame] to `metrics`.

    labels: the task's label_key values [n, ...] (None for a task without labels);
    videos: [n] the video of each clip, or None (then each clip is a video of its
    own, numbered from next_video). Returns (the batch as scored, the next free
    video number).
    """
    clips = ops.convert_to_tensor(clips)
    n = int(clips.shape[0])
    out = engine.predict_steps(pad_batch(clips, engine.batch_per_process))
    outputs = out["outputs"][:n]
    _check_finite(outputs, f"clips {next_video}..{next_video + n - 1} of this evaluation")
    if labels is not None:
        labels = ops.convert_to_tensor(labels)
        engine.task.check_labels(labels, n, num_outputs=int(engine.pipeline.top_output_shape[-1]))
    lag = engine.mode.input_lag(engine.pipeline)
    targets, present = engine.task.step_targets(clips, labels, lag)
    if videos is None:
        videos = np.arange(next_video, next_video + n, dtype=np.int64)
    references = {k: v[:n] for k, v in out.items() if k not in ("outputs", "weights")}
    weights = out["weights"] * present  # [K]
    batch = EvalBatch(outputs, targets, weights, references, labels, videos)
    metrics.update(batch)
    return batch, max(next_video + n, int(np.max(np.asarray(videos))) + 1)


def headline(task: Task, result: dict) -> str:
    """One line of an evaluation's main figures, for the terminal."""
    return task.metrics().headline(result)


def check_eval_size(dataset: tf.data.Dataset, batch_size: int, binding="train.eval_data"):
    """Raises unless the evaluation data holds at least one batch of clips.

    A split smaller than one batch is almost always a wrong pattern or a split cut too
    thin (its score would rest on a handful of clips, the rest of the batch padding).
    Reads at most batch_size clips.
    """
    found = int(dataset.take(batch_size).reduce(0, lambda n, _: n + 1))
    if found < batch_size:
        raise ValueError(
            f"The evaluation data ({binding}) holds {found} clip(s), fewer than one batch of "
            f"{batch_size} (train.global_batch per process). Fix: give the evaluation split at "
            f"least {batch_size} videos (e.g. convert more into it, or cut long videos into "
            "several), raise clip_sampling.num_eval_clips, or lower train.global_batch."
        )


def evaluate_workdir(
    workdir, gin_params=(), progress: bool = True, protocols: Sequence[str] = ()
) -> dict:
    """Evaluates the newest readable checkpoint of a run with the config it saved.

    The run is rebuilt by runs.load_run (parameters only; the training data is
    never read; config.gin is never rewritten); gin_params apply over the saved
    config (e.g. another eval split). protocols: also "multiview" and / or
    "streaming" (evaluate_protocols), their figures named apart in the same result.
    The result is appended to the workdir's eval_metrics.json as its own entry
    (source "sideways-eval", with gin_params). Safe against a live run (load_run
    restores from a snapshot of the checkpoint). Returns {"step", "checkpoint",
    "eval", "headline"}: the training step evaluated, its checkpoint, the figures and
    the task's one line of them.
    """
    from sideways_tf import summaries
    from sideways_tf import workdir as workdir_lib
    from sideways_tf.runs import load_run

    run = load_run(workdir, gin_params=tuple(gin_params))
    if run.eval_data is None:
        raise ValueError(
            f"{run.workdir.config} sets no train.eval_data: there is nothing to evaluate. Give "
            "one: --gin_param=train.eval_data=@eval/moving_shapes_dataset (or your reader)."
        )
    protocols = check_protocols(run.eval_data, protocols)  # before any work
    eval_ds = run.eval_data()
    check_eval_size(eval_ds, run.engine.batch_per_process)
    shown = progress and run.runtime.is_chief
    metrics = evaluate(run.engine, eval_ds, progress=shown)
    metrics.update(evaluate_protocols(run.engine, run.eval_data, protocols, progress=shown))
    images = metrics.pop("images", None)
    if run.runtime.is_chief:
        writer = tf.summary.create_file_writer(run.workdir.summaries("eval"))
        summaries.write_scalars(writer, run.step, metrics)
        if images is not None:
            summaries.write_images(writer, run.step, "predictions", images)
        writer.flush()
        workdir_lib.record_evaluation(
            run.workdir, run.step, metrics, source="sideways-eval", gin_params=list(gin_params)
        )
    return {
        "step": run.step,
        "checkpoint": run.checkpoint,
        "eval": metrics,
        "headline": headline(run.engine.task, metrics),
    }
