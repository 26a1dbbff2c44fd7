"""Learning on one stream: the online protocol, in-stream apart from out-of-stream.

One long video (or videos played one after another) x[1..T], in order, B = 1, no
shuffling, the state carried from frame to frame (Engine(carry_state=True)) and one
optimizer step every N frames: the setting of "Learning from One Continuous Video
Stream" (Carreira et al., arXiv 2312.00598). Chunk c (0-based) holds the steps
t = cN + 1 .. (c + 1)N; theta_c are the parameters after c updates.

    in-stream      y[t], t in chunk c, from theta_c and the state the stream carried
                   into the chunk (the buffers the update starts from): the prediction
                   made BEFORE the model trains on chunk c, scored against target[t]
                   (l_t, and the task's figures: PSNR and copy-last for future frames);
    update         theta_{c+1} = the optimizer's step on chunk c's gradient by the
                   mode's rule (Engine.train_clip on the chunk; its loss is l_t of the
                   same theta_c, its forward the in-stream one for a model without
                   Dropout or batch statistics);
    out-of-stream  footage the stream never showed, scored once at the end with the
                   final parameters, each video run once from a fresh state.

    online_stream(engine, frames [B, T, *frame], chunk=N) -> StreamResult
                   one ChunkRecord per chunk (the in-stream curve) and the in-stream
                   figures pooled over every scored step;
    held_out(engine, videos [B, T', *frame] or a list) -> the task's figures.

Both run the network this mode trains one frame at a time (Mode.stream_step, what
sideways-export saves) in inference mode, in one compiled graph loop per engine
(traced once, for any number of frames): the in-stream pass from the engine's
buffers, which it leaves alone; the held-out pass from a fresh state (the same
outputs as Engine.predict_steps on the whole clip: tests/test_online.py). Targets
come from the whole stream (a future frame in the next chunk counts); the update,
like any clip of Engine(carry_state=True), takes its targets from the chunk alone, so
a step whose target frame lies in another chunk is scored but not trained on (future
frames at horizon h and mode lag `lag`: the first lag - h steps of every chunk, or
the last h - lag; none on skip(2) at h = 1): ChunkRecord.trained_steps counts the
steps trained on.
"""

from __future__ import annotations

import dataclasses
import math
import weakref

import numpy as np
import tensorflow as tf

from sideways_tf.engine import Engine
from sideways_tf.steps import unroll
from sideways_tf.tasks import EvalBatch, Metrics


@dataclasses.dataclass(frozen=True)
class ChunkRecord:
    """Chunk c of a stream: what the model predicted before training on it, and the update.

    loss: the in-stream loss, the mean of l_t over the chunk's scored steps and the B
    streams, with theta_c (NaN when no step is scored: the pipeline still filling);
    step_losses: l_t per step [N] (NaN where not scored); figures: the task's Metrics
    of the chunk (future frames: psnr, ssim, psnr_copy_last, ssim_copy_last, loss; {}
    when no step is scored); train_loss, trained_steps, applied: the update's loss (the
    same theta_c, the chunk's own targets), its valid steps, and whether it was applied
    (False: a non-finite step, skipped).
    """

    chunk: int  # c
    first_frame: int  # 0-based index in the stream of the chunk's first frame, cN
    frames: int  # N
    scored: int  # steps scored in-stream: pipeline full and the target inside the stream
    loss: float
    step_losses: tuple
    figures: dict
    train_loss: float
    trained_steps: int
    applied: bool


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """online_stream's result: the chunks in stream order and the pooled in-stream figures.

    in_stream: the task's Metrics over every scored step of the stream (the mean PSNR
    over those frames, not the mean of the chunks' means), its "loss" the mean l_t.
    """

    chunks: list
    in_stream: dict
    frames: int  # T: frames streamed
    chunk: int  # N: frames per update

    def curve(self, key: str = "loss") -> np.ndarray:
        """[C] one figure per chunk: "loss" or a key of the task's figures (NaN unscored)."""
        if key == "loss":
            return np.array([r.loss for r in self.chunks])
        return np.array([r.figures.get(key, math.nan) for r in self.chunks])

    def as_dict(self) -> dict:
        """Plain numbers and lists, for JSON."""
        return {
            "frames": self.frames,
            "chunk": self.chunk,
            "in_stream": self.in_stream,
            "chunks": [dataclasses.asdict(r) for r in self.chunks],
        }


def online_stream(engine: Engine, frames, chunk: int | None = None, labels=None) -> StreamResult:
    """Streams frames x[1..T] once, in order: per chunk, the prediction, then the update.

    engine: an Engine(carry_state=True) with an optimizer, on one replica; its buffers
      are reset first (the stream starts from a fresh state), then carried throughout.
    frames: [B, T, *frame] float, B = engine.batch_per_replica streams in lockstep (the
      protocol: B = 1); T a multiple of N.
    chunk: N, frames per update; None takes the engine's update_every.
    labels: what the task scores against besides the frames ([B] classes), or None.
    """
    n = _check(engine, frames, chunk)
    task, mode, pipeline = engine.task, engine.mode, engine.pipeline
    frames = tf.convert_to_tensor(frames)
    labels = _labels(engine, labels)
    lag = mode.input_lag(pipeline)
    targets, present = task.step_targets(frames, labels, lag)  # [B, T, ...], [T]
    references, _ = task.prediction_targets(frames, lag)  # {name: [B, T, ...]}
    videos = tf.range(engine.batch_per_replica, dtype=tf.int64)
    run = _runner(engine)
    engine.reset_state()
    state = mode.stream_state(pipeline)
    pooled, records = task.metrics(), []
    for c, start in enumerate(range(0, int(frames.shape[1]), n)):
        window = slice(start, start + n)
        clip = frames[:, window]  # [B, N, *frame]
        if mode.pipelined:  # the buffers the update starts from (a per-frame net has none)
            state = mode.named_state(pipeline.read_state(engine.frames_seen))
        state, outputs, filled = run(state, clip)  # theta_c: before the update
        batch = EvalBatch(
            outputs,
            targets[:, window],
            filled * present[window],  # [N]
            {k: v[:, window] for k, v in references.items()},
            labels,
            videos,
        )
        step_losses = _step_losses(task, batch)
        scored = int(np.sum(np.asarray(batch.weights) > 0))
        figures = {}
        if scored:
            figures = _figures(task.metrics(), batch)
            pooled.update(batch)
        update = engine.train_clip(clip, labels)
        records.append(
            ChunkRecord(
                chunk=c,
                first_frame=start,
                frames=n,
                scored=scored,
                loss=float(np.nanmean(step_losses)) if scored else math.nan,
                step_losses=tuple(float(v) for v in step_losses),
                figures=figures,
                train_loss=float(update["loss"]),
                trained_steps=int(round(float(update["valid_steps"]))),
                applied=bool(update["applied"]),
            )
        )
    if not any(r.scored for r in records):
        raise ValueError(
            f"No step of the {int(frames.shape[1])} streamed frames was scored: mode "
            f"{mode.name} needs {mode.first_step(pipeline)} frames before its first scored "
            "output, and a target inside the stream. Stream more frames, or use fewer units."
        )
    return StreamResult(records, _result(pooled), int(frames.shape[1]), n)


def held_out(engine: Engine, videos, labels=None) -> dict:
    """Out-of-stream: the task's figures on footage the stream never showed.

    videos: [B, T', *frame] (B = engine.batch_per_replica), or a list of such arrays
    (lengths may differ); each runs once, frame by frame from a fresh state, with the
    current parameters, every step scored once the pipeline is full and its target
    inside the video. labels: [B] (a list of them for a list), or None. Returns the
    task's figures pooled over every scored step (future frames: psnr, ssim,
    psnr_copy_last, ssim_copy_last, loss, scored_frames). Neither the parameters nor the
    training buffers change.
    """
    single = not isinstance(videos, (list, tuple))
    videos = [videos] if single else list(videos)
    labels = [labels] * len(videos) if single or labels is None else list(labels)
    task, mode, pipeline = engine.task, engine.mode, engine.pipeline
    lag, run, b = mode.input_lag(pipeline), _runner(engine), engine.batch_per_replica
    metrics = task.metrics()
    for i, (frames, y) in enumerate(zip(videos, labels)):
        pipeline.check_clip(frames, name=f"held-out video {i}")
        frames, y = tf.convert_to_tensor(frames), _labels(engine, y)
        _, outputs, filled = run(mode.stream_state(pipeline), frames)
        targets, present = task.step_targets(frames, y, lag)
        references, _ = task.prediction_targets(frames, lag)
        weights = filled * present  # [T']
        if float(tf.reduce_sum(weights)) == 0:
            raise ValueError(
                f"Held-out video {i} has {int(frames.shape[1])} frames: too few for one scored "
                f"step of mode {mode.name} ({mode.first_step(pipeline)} frames fill the "
                "pipeline, and a target must lie inside the video). Give longer videos."
            )
        ids = tf.range(i * b, (i + 1) * b, dtype=tf.int64)
        metrics.update(EvalBatch(outputs, targets, weights, references, y, ids))
    return _result(metrics)


# Per engine, its compiled frame loop (a tf.function traces once per engine, not per call).
_RUNNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _runner(engine: Engine):
    """(named state, clip [B, K, *frame]) -> (state, outputs [B, K, ...] float32, filled [K]).

    Mode.stream_step over the clip's K frames in inference mode, in a graph loop: one
    trace serves every K (a static unroll would trace K steps, tens of seconds on CPU).
    filled[k] is 1.0 where the output is built from real frames only (t >= first step).
    """
    if engine in _RUNNERS:
        return _RUNNERS[engine]
    mode, pipeline, strategy = engine.mode, engine.pipeline, engine.strategy
    first = mode.first_step(pipeline)
    spec = (
        tf.TensorSpec([pipeline.batch_size, *pipeline.top_output_shape[1:]], tf.float32),
        tf.TensorSpec([], tf.float32),
    )

    def replica(state, clip):
        def step(state, k):
            state, y = mode.stream_step(pipeline, state, clip[:, k], training=False)
            return state, (tf.cast(y, tf.float32), tf.cast(state["t"] >= first, tf.float32))

        state, (outputs, filled) = unroll(step, state, tf.shape(clip)[1], output_spec=spec)
        return state, outputs, filled

    @tf.function(autograph=False, reduce_retracing=True)
    def run(state, clip):
        out = strategy.run(replica, args=(state, clip))
        return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], out)

    _RUNNERS[engine] = run
    return run


def _check(engine: Engine, frames, chunk: int | None) -> int:
    """N, once the engine and the frames fit the protocol; else raises naming the fix."""
    if engine.optimizer is None:
        raise ValueError(
            "online_stream trains on the stream, but this Engine has no optimizer. Give one: "
            "Engine(pipeline, mode, keras.optimizers.SGD(...), carry_state=True)."
        )
    if not engine.carry_state:
        raise ValueError(
            "online_stream carries the state from chunk to chunk, but this Engine resets it "
            "for every clip. Build it with Engine(..., carry_state=True)."
        )
    if engine.num_replicas > 1:
        raise ValueError(
            f"online_stream runs one stream on one replica; this Engine has "
            f"{engine.num_replicas}. Build the pipeline and the Engine outside a multi-replica "
            "strategy's scope."
        )
    if chunk is None:
        chunk = engine.update_every
    if chunk is None:
        raise ValueError(
            "online_stream needs N, the frames per update: give chunk=N, or build the Engine "
            "with update_every=N."
        )
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk = {chunk!r}; give N, a positive number of frames per update.")
    if engine.update_every not in (None, chunk):
        raise ValueError(
            f"chunk = {chunk}, but the Engine updates every {engine.update_every} frames: the "
            "in-stream figure is measured once per update. Give the same N to both, or build "
            "the Engine with update_every=None."
        )
    engine.pipeline.check_clip(frames, name="frames")
    num_frames = int(frames.shape[1])
    if num_frames < chunk or num_frames % chunk:
        raise ValueError(
            f"The stream has T = {num_frames} frames, not a multiple of chunk N = {chunk}. "
            f"Trim it (frames[:, :{num_frames // chunk * chunk}]) or pick an N that divides T."
        )
    return chunk


def _labels(engine: Engine, labels):
    """labels as a tensor, checked against the task ([B] classes), or None."""
    if labels is None:
        return None
    labels = tf.convert_to_tensor(labels)
    engine.task.check_labels(
        labels,
        engine.batch_per_replica,
        num_outputs=int(engine.pipeline.top_output_shape[-1]),
    )
    return labels


def _step_losses(task, batch: EvalBatch) -> np.ndarray:
    """l_t per step [N], the mean over the B streams; NaN where the step is not scored."""
    outputs, targets = batch.outputs, batch.targets  # [B, N, ...]
    b, n = int(outputs.shape[0]), int(outputs.shape[1])
    flat = task.loss(
        tf.reshape(targets, (b * n, *targets.shape[2:])),
        tf.reshape(outputs, (b * n, *outputs.shape[2:])),
    )  # [B * N]
    losses = tf.reduce_mean(tf.reshape(flat, (b, n)), axis=0).numpy()
    return np.where(np.asarray(batch.weights) > 0, losses, math.nan)


def _figures(metrics: Metrics, batch: EvalBatch) -> dict:
    metrics.update(batch)
    return _result(metrics)


def _result(metrics: Metrics) -> dict:
    """The Metrics' numbers (images left out), as Python ints and floats."""
    out = {}
    for key, value in metrics.result().items():
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            out[key] = int(value) if isinstance(value, (int, np.integer)) else float(value)
    return out


__all__ = ["ChunkRecord", "StreamResult", "held_out", "online_stream"]
