"""The properties P1-P5 of algorithm.md section 6, on tiny pipelines, on either backend.

Core checks run both eagerly and compiled as the engine compiles (tf.function on
TensorFlow, one jax.jit on JAX: toy.compile_fn): the two differ more often than one
would think.
"""

import keras
import numpy as np
import pytest
from keras import ops
from toy import compile_fn, dense_pipeline, flat, random_clip, rule_grads

import sideways_tf as sw
from sideways_tf import backend, engine

TOPOLOGIES = ["chain", "skip(2)", "dense(3)", "skip(2, 1)"]


def run_eagerly_or_not(fn, compiled, pipeline):
    return compile_fn(fn, pipeline) if compiled else fn


@pytest.mark.parametrize("compiled", [False, True])
def test_p1_one_unit_sideways_equals_frame_bp(compiled):
    pipeline = dense_pipeline("chain", num_units=1)
    clip, labels = random_clip(pipeline, 6)

    def grads(rule):
        fn = run_eagerly_or_not(lambda c, y: rule_grads(rule, pipeline, c, y), compiled, pipeline)
        return fn(clip, labels)

    side, frame = flat(grads(engine.sideways_gradients)), flat(grads(engine.frame_gradients))
    np.testing.assert_allclose(side[0], frame[0], rtol=1e-5, atol=1e-7)


def per_step_gradients(pipeline, clip, labels, compiled):
    """g_theta_i[t] for every step t (1-based), by looping sideways_step."""

    def steps(clip, labels):
        state, out = pipeline.zero_state(), []
        for k in range(clip.shape[1]):
            state, step = engine.sideways_step(pipeline, state, clip[:, k], labels)
            out.append(step.grads)
        return out

    return [flat(g) for g in run_eagerly_or_not(steps, compiled, pipeline)(clip, labels)]


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_p2_constant_input_gives_frame_bp_gradient_once_full(topology, compiled):
    pipeline = dense_pipeline(topology, num_units=4)
    fill = pipeline.fill_steps
    num_frames = 2 * fill + 2
    frame = np.random.default_rng(1).normal(size=(2, 1, 5)).astype("float32")
    clip = np.repeat(frame, num_frames, axis=1)  # x[t] = x
    labels = np.array([0, 2], "int32")
    steps = per_step_gradients(pipeline, clip, labels, compiled)
    # frame_bp on one frame = BP of the DAG on x (the mean over identical frames).
    reference = flat(rule_grads(engine.frame_gradients, pipeline, frame, labels, "frame_bp"))
    for t in range(2 * fill - 1, num_frames + 1):
        for i, (got, want) in enumerate(zip(steps[t - 1], reference), start=1):
            np.testing.assert_allclose(
                got, want, rtol=2e-5, atol=1e-7, err_msg=f"{topology}: unit {i} at step {t}"
            )
    # Before it is full the bottom unit has received nothing (messages are still zero).
    assert np.all(steps[fill - 1][0] == 0.0)
    assert not np.allclose(steps[2 * fill - 3][0], reference[0], rtol=1e-3)


def identity_pipeline(topology, num_units, dim):
    """Units that pass their (fused) input through, and loss 0.5 ||a_L||^2.

    Then a_i carries exactly the frames it mixes, and the loss gradient is the top
    activation itself: messages carry the frames whose losses they come from.
    """
    units = [
        sw.Unit(
            keras.layers.Dense(dim, use_bias=False, kernel_initializer="identity"),
            fusion="sum",  # (the summed frames: concat would mix them with a learned conv)
            name=f"unit{i + 1}",
        )
        for i in range(num_units)
    ]
    return sw.Pipeline(
        units,
        topology=topology,
        loss=lambda labels, a: 0.5 * ops.sum(ops.square(a), axis=-1),
        batch_size=1,
        frame_shape=(dim,),
    )


def tagged_clip(num_frames, dim):
    """x[t] = one-hot(t) for t = 1..K: every activation says which frames it holds."""
    return np.eye(dim, dtype="float32")[1 : num_frames + 1][None]  # [1, K, dim]


def frames_in(vector):
    return {int(k) for k in np.flatnonzero(np.abs(vector) > 1e-6)}


@pytest.mark.parametrize("compiled", [False, True])
def test_p3_chain_provenance(compiled):
    num_units, num_frames = 4, 14
    pipeline = identity_pipeline("chain", num_units, dim=num_frames + 1)
    clip, labels = tagged_clip(num_frames, num_frames + 1), np.zeros([1], "int32")

    def run(clip, labels):
        state, trace = pipeline.zero_state(), []
        for k in range(num_frames):
            state, _ = engine.sideways_step(pipeline, state, clip[:, k], labels)
            trace.append((state.outputs, state.messages))
        return trace

    trace = run_eagerly_or_not(run, compiled, pipeline)(clip, labels)
    for t in range(1, num_frames + 1):
        outputs, messages = trace[t - 1]
        for i in range(1, num_units + 1):
            # u_i[t] (= a_i[t] here) carries frame t-i+1.
            want = {t - i + 1} if t - i + 1 >= 1 else set()
            assert frames_in(outputs[i - 1][0]) == want, (t, i)
        for i in range(1, num_units):
            # m_i at step t+1 carries the loss of frame (t+1) - 2L + i + 1 (zero while masked).
            frame = (t + 1) - 2 * num_units + i + 1
            want = {frame} if frame >= 1 else set()
            assert frames_in(messages[i - 1][0]) == want, (t + 1, i)
            # ... so unit i combines activation and gradient 2(L-i) frames apart.
            if frame >= 1:
                assert ((t + 1) - i + 1) - frame == 2 * (num_units - i)


def test_p3_skip_mixes_a_newer_frame():
    num_units, k, num_frames = 4, 3, 12
    pipeline = identity_pipeline(f"skip({k})", num_units, dim=num_frames + 1)
    clip = tagged_clip(num_frames, num_frames + 1)
    state = pipeline.zero_state()
    for step in range(num_frames):
        state, _ = pipeline.forward_step(state, clip[:, step])
    t = num_frames
    for i in range(k, num_units + 1):
        # Unit i mixes frame t-i+1 (chain source i-1) and, from source i-k, frame t-i+k:
        # k-1 steps newer than its direct input.
        mixed = frames_in(state.outputs[i - 1][0])
        assert min(mixed) == t - i + 1
        assert t - i + k in mixed
        assert max(mixed) == t - pipeline.topology.newest_lag(i)


def test_p4_state_does_not_grow_with_clip_length():
    sizes, variables = [], []
    pipeline = dense_pipeline("skip(2)", num_units=3)
    eng = sw.Engine(pipeline, "skip_sideways", keras.optimizers.Adam(1e-3))
    for num_frames in (8, 64):
        clip, labels = random_clip(pipeline, num_frames)
        eng.train_clip(clip, labels)
        sizes.append(eng.state_sizes())
        variables.append(
            sorted((v.path, tuple(v.shape)) for v in pipeline.variables + eng.optimizer.variables)
        )
    assert sizes[0] == sizes[1] and len(sizes[0]) > 0
    assert variables[0] == variables[1]


def test_p4_bptt_tape_grows_with_clip_length_and_sideways_does_not():
    pipeline = dense_pipeline("skip(2)", num_units=3)  # B = 2, dim = 5
    lengths = (8, 64)

    if backend.is_tensorflow():  # the traced graph: bptt's tape holds every step's ops
        import tensorflow as tf

        def graph_size(rule, num_frames):
            spec = (
                tf.TensorSpec((2, num_frames, 5), tf.float32),
                tf.TensorSpec((2,), tf.int32),
            )
            fn = tf.function(lambda c, y: rule_grads(rule, pipeline, c, y))
            return len(fn.get_concrete_function(*spec).graph.get_operations())

        bptt = [graph_size(engine.bptt_gradients, k) for k in lengths]
        side = [graph_size(engine.sideways_gradients, k) for k in lengths]
        assert bptt[1] > 6 * bptt[0]  # activations of every step stay on the tape
        assert side[0] == side[1]  # one graph loop, whatever K
        return

    # On JAX: the bytes XLA allocates for the compiled call's intermediates (its memory
    # analysis; the clip and the per-step targets are arguments, not counted), per frame.
    def temp_bytes(rule, num_frames):
        clip, labels = random_clip(pipeline, num_frames)
        targets, present = sw.engine.step_targets(pipeline, "bptt", clip, labels)

        def grads(c, t, p):
            return rule(pipeline, pipeline.zero_state(), c, t, p).grads

        return compile_fn(grads, pipeline).memory(clip, targets, present)["temp"]

    def per_frame(rule):
        small, large = (temp_bytes(rule, k) for k in lengths)
        return (large - small) / (lengths[1] - lengths[0])

    activation = 2 * 5 * 4  # one unit's a_i[t]: [B, dim] float32
    bptt, side = per_frame(engine.bptt_gradients), per_frame(engine.sideways_gradients)
    assert bptt >= pipeline.num_units * activation, bptt  # every unit's activation, every frame
    # Less than one activation per frame (measured: ~3.4 bytes, jax.lax.scan's step index).
    assert side < activation, side


def test_p5_chain_is_the_per_frame_network_delayed():
    num_units = 3
    pipeline = dense_pipeline("chain", num_units=num_units)
    clip, _ = random_clip(pipeline, 9)
    pipelined = np.asarray(pipeline(clip))  # [B, K, classes]
    per_frame = np.stack(
        [np.asarray(pipeline.frame_forward(clip[:, k])) for k in range(clip.shape[1])], axis=1
    )
    # Top output at step t is the per-frame network on frame t-(L-1): it never sees two frames.
    np.testing.assert_allclose(
        pipelined[:, num_units - 1 :], per_frame[:, : -(num_units - 1)], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("topology, sees_motion", [("chain", False), ("skip(2)", True)])
def test_p5_only_skips_see_motion(topology, sees_motion):
    """Change every frame but the one on the chain path: only a skip pipeline notices.

    Motion is a relation between frames; a top output that is a function of one
    frame (the chain's) cannot represent it.
    """
    num_units, num_frames = 4, 8
    pipeline = dense_pipeline(topology, num_units=num_units)
    clip, _ = random_clip(pipeline, num_frames, seed=0)
    other, _ = random_clip(pipeline, num_frames, seed=1)
    chain_frame = num_frames - num_units  # 0-based index of frame t-L+1 at t = K
    other[:, chain_frame] = clip[:, chain_frame]
    top = np.asarray(pipeline(clip))[:, -1]
    top_other = np.asarray(pipeline(other))[:, -1]
    assert (not np.allclose(top, top_other, atol=1e-6)) == sees_motion
