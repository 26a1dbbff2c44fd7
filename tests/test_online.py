"""The online-stream protocol (sideways_tf.online): in-stream figures measured before the
chunk's update, the stream consumed in order with the state carried, the records' counts.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sideways_tf as sw
from sideways_tf import evaluate, online
from sideways_tf.models import convnet

N = 4  # frames per update
T = 3 * N  # frames streamed


def tiny_pipeline(topology, decoder, seed=0):
    """Three conv units on 8x8 RGB frames, future frames at h = 1, B = 1."""
    keras.utils.set_random_seed(seed)
    return convnet.tiny_conv_pipeline(
        batch_size=1,
        frame_shape=(8, 8, 3),
        task=sw.FutureFrames(horizon=1, decoder=decoder),
        topology=topology,
    )


def stream(num_frames=T, seed=1):
    """[1, T, 8, 8, 3] frames in [-1, 1]: a smooth pattern drifting one pixel a frame, plus
    noise (so that order matters and a change of parameters shows in the loss)."""
    rng = np.random.default_rng(seed)
    base = np.sin(np.arange(8 + num_frames)[:, None] / 2.0 + np.arange(8)[None, :] / 3.0)
    frames = np.stack(
        [np.broadcast_to(base[t : t + 8, :, None], (8, 8, 3)) for t in range(num_frames)]
    )
    frames = 0.8 * frames + 0.1 * rng.normal(size=frames.shape)
    return np.clip(frames, -1, 1)[None].astype(np.float32)


def chunk_loss(pipeline, state, clip, targets, present, first_step):
    """Mean l_t over the scored steps of a chunk: the pipelined network's plain forward
    pass from `state` (a PipelineState) with the pipeline's current parameters."""
    losses = []
    for k in range(clip.shape[1]):
        state, y = pipeline.forward_step(state, clip[:, k], training=False)
        if int(state.t) >= first_step and float(present[k]) > 0:
            losses.append(float(tf.reduce_mean(pipeline.task.loss(targets[:, k], y))))
    return float(np.mean(losses))


def test_in_stream_loss_is_measured_before_the_update_on_the_same_chunk():
    frames = stream()
    measured = sw.Engine(
        tiny_pipeline("skip(2)", "whole"),
        "skip_sideways",
        keras.optimizers.SGD(2.0),
        carry_state=True,
    )
    replay_pipeline = tiny_pipeline("skip(2)", "whole", seed=5)
    replay_pipeline.set_weights(measured.pipeline.get_weights())
    replay = sw.Engine(
        replay_pipeline, "skip_sideways", keras.optimizers.SGD(2.0), carry_state=True
    )
    lag = replay.mode.input_lag(replay_pipeline)
    assert lag == 1  # h = 1: every step's target lies in its own chunk (the update scores it too)
    first = replay.mode.first_step(replay_pipeline)
    targets, present = replay_pipeline.task.step_targets(frames, None, lag)

    result = online.online_stream(measured, frames, chunk=N)

    for record in result.chunks:
        window = slice(record.first_frame, record.first_frame + N)
        clip = frames[:, window]
        start = replay_pipeline.read_state(replay.frames_seen)  # the state the chunk starts from
        args = (clip, targets[:, window], present[window], first)
        before = chunk_loss(replay_pipeline, start, *args)  # theta_c
        update = replay.train_clip(clip)
        after = chunk_loss(replay_pipeline, start, *args)  # theta_{c+1}, the same state
        np.testing.assert_allclose(record.loss, before, rtol=1e-5)
        assert abs(after - before) > 0.01 * before, "the update should change the chunk's loss"
        assert abs(record.loss - after) > 0.01 * before
        # The update's own loss is l_t with the same theta_c, over the same steps.
        np.testing.assert_allclose(record.train_loss, float(update["loss"]), rtol=1e-5)
        np.testing.assert_allclose(record.loss, record.train_loss, rtol=1e-4)


@pytest.fixture(scope="module", params=[("sideways", "chain"), ("frame_bp", "chain")], ids=str)
def frozen(request):
    """A stream run with frozen parameters (SGD(0)): (engine, frames, result)."""
    mode, topology = request.param
    engine = sw.Engine(
        tiny_pipeline(topology, "motion"), mode, keras.optimizers.SGD(0.0), carry_state=True
    )
    frames = stream()
    return engine, frames, online.online_stream(engine, frames, chunk=N)


def test_the_stream_runs_in_order_with_the_state_carried(frozen):
    engine, frames, result = frozen
    mode, pipeline, task = engine.mode, engine.pipeline, engine.task
    lag = mode.input_lag(pipeline)
    targets, present = task.step_targets(frames, None, lag)
    # The same frames fed one by one from a fresh state through the network the mode trains.
    state, expected = mode.stream_state(pipeline), []
    for t in range(T):
        state, y = mode.stream_step(pipeline, state, frames[:, t], training=False)
        scored = int(state["t"]) >= mode.first_step(pipeline) and float(present[t]) > 0
        expected.append(float(tf.reduce_mean(task.loss(targets[:, t], y))) if scored else np.nan)
    got = np.concatenate([r.step_losses for r in result.chunks])
    np.testing.assert_allclose(got, expected, rtol=1e-5, equal_nan=True)
    assert int(engine.frames_seen) == T  # the engine's buffers ran on through every chunk
    assert int(engine.optimizer.iterations) == T // N  # one update per chunk


def test_held_out_equals_the_evaluation_loop(frozen):
    engine, frames, _ = frozen
    video = frames[:, :8]
    figures = online.held_out(engine, video)
    metrics = engine.task.metrics()
    evaluate.score_batch(engine, metrics, video)  # Engine.predict_steps on the whole clip
    reference = metrics.result()
    for key in ("psnr", "ssim", "psnr_copy_last", "loss", "scored_frames"):
        np.testing.assert_allclose(figures[key], reference[key], rtol=1e-5)
    two = online.held_out(engine, [video, video[:, :6]])
    assert two["num_videos"] == 2
    assert two["scored_frames"] == 2 * figures["scored_frames"] - 2


def test_records_count_chunks_frames_and_scored_steps(frozen):
    engine, frames, result = frozen
    mode, pipeline = engine.mode, engine.pipeline
    lag, first = mode.input_lag(pipeline), mode.first_step(pipeline)
    assert (result.frames, result.chunk, len(result.chunks)) == (T, N, T // N)
    assert [r.first_frame for r in result.chunks] == [0, N, 2 * N]
    assert all(r.frames == N and len(r.step_losses) == N and r.applied for r in result.chunks)
    # Step t (1-based) is scored from the first full step on, while x[t - lag + 1] is in the stream.
    scored = [first <= t <= T + lag - 1 for t in range(1, T + 1)]
    assert [r.scored for r in result.chunks] == [sum(scored[c : c + N]) for c in range(0, T, N)]
    assert result.in_stream["scored_frames"] == sum(scored)
    losses = np.concatenate([r.step_losses for r in result.chunks])
    np.testing.assert_array_equal(np.isnan(losses), np.logical_not(scored))
    # The update takes its targets from the chunk alone: a step whose target frame is in
    # another chunk (h = 1: |lag - 1| steps of each) is scored, not trained on.
    assert [r.trained_steps for r in result.chunks[1:]] == [N - abs(lag - 1)] * (T // N - 1)
    curve = result.curve("psnr")
    assert curve.shape == (T // N,) and np.all(curve > 0)
    assert result.as_dict()["chunks"][1]["first_frame"] == N


def test_protocol_mistakes_are_named_with_their_fix():
    pipeline = tiny_pipeline("chain", "whole")
    frames = stream()
    resetting = sw.Engine(pipeline, "sideways", keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match=r"carry_state=True"):
        online.online_stream(resetting, frames, chunk=N)
    carried = sw.Engine(pipeline, "sideways", keras.optimizers.SGD(0.1), carry_state=True)
    with pytest.raises(ValueError, match=r"give chunk=N, or build the Engine with update_every=N"):
        online.online_stream(carried, frames)
    with pytest.raises(ValueError, match=r"T = 12 frames, not a multiple of chunk N = 5"):
        online.online_stream(carried, frames, chunk=5)
    chunked = sw.Engine(
        pipeline, "sideways", keras.optimizers.SGD(0.1), update_every=2, carry_state=True
    )
    with pytest.raises(ValueError, match=r"updates every 2 frames"):
        online.online_stream(chunked, frames, chunk=N)
    with pytest.raises(ValueError, match=r"no optimizer"):
        online.online_stream(sw.Engine(pipeline, "sideways", carry_state=True), frames, chunk=N)
