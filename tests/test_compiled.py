"""The XLA-compiled update: the same training as the uncompiled one, traced once, loop unrolled.

Why the loop form matters (benchmarks/compiled.py): XLA on CPU emits the backward
convolutions inside a graph loop's body as naive loops, 12x slower per clip.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from toy import conv_pipeline, dense_pipeline, random_clip

import sideways_tf as sw

# Dense units keep the compiles short; one conv pipeline has the convolutions XLA rewrites.
CASES = [
    ("frame_bp", "skip(2)", dense_pipeline),
    ("bptt", "skip(2)", dense_pipeline),
    ("sideways", "chain", dense_pipeline),
    ("skip_sideways", "skip(2)", dense_pipeline),
    ("skip_sideways", "dense(2)", dense_pipeline),
    pytest.param("skip_sideways", "skip(2)", conv_pipeline, marks=pytest.mark.slow),
]


def trained(mode, topology, jit_compile, clips, make=dense_pipeline, **kwargs):
    pipeline = make(topology=topology, fusion="concat")
    eng = sw.Engine(pipeline, mode, keras.optimizers.Adam(1e-2), jit_compile=jit_compile, **kwargs)
    for clip, labels in clips:
        metrics = eng.train_clip(clip, labels)
        assert bool(metrics["applied"])
    return eng


@pytest.mark.parametrize("mode, topology, make", CASES)
def test_compiled_and_uncompiled_updates_train_alike(mode, topology, make):
    pipeline = make(topology=topology)
    num_frames = 2 * pipeline.fill_steps + 1
    clips = [random_clip(pipeline, num_frames, seed=s) for s in range(3)]
    # carry_state: the buffers written by one compiled update feed the next.
    plain = trained(mode, topology, False, clips, make, carry_state=True)
    xla = trained(mode, topology, True, clips, make, carry_state=True)
    for a, b in zip(plain.variables, xla.variables):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-5, err_msg=a.path)
    for a, b in zip(plain.pipeline.state_variables(), xla.pipeline.state_variables()):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-5, err_msg=a.path)


def test_compiled_chunked_updates_train_alike():
    pipeline = dense_pipeline(topology="skip(2)")
    clips = [random_clip(pipeline, 8, seed=s) for s in range(2)]
    plain = trained("skip_sideways", "skip(2)", False, clips, update_every=4)
    xla = trained("skip_sideways", "skip(2)", True, clips, update_every=4)
    for a, b in zip(plain.variables, xla.variables):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-5, err_msg=a.path)


def _loop_ops(concrete) -> list:
    return [op.type for op in concrete.graph.get_operations() if "While" in op.type]


@pytest.mark.parametrize("mode", ["sideways", "skip_sideways"])
def test_compiled_update_traces_once_and_unrolls_the_frame_loop(mode):
    topology = "chain" if mode == "sideways" else "skip(2)"
    pipeline = dense_pipeline(topology=topology)
    num_frames = 2 * pipeline.fill_steps + 1
    clips = [random_clip(pipeline, num_frames, seed=s) for s in range(5)]
    xla = trained(mode, topology, True, clips)
    plain = trained(mode, topology, False, clips[:1])
    assert xla._update.experimental_get_tracing_count() == 1

    def concrete(eng):
        clip, labels = (tf.constant(x) for x in clips[0])
        return eng._update.get_concrete_function(
            clip, labels, tf.constant(0), num_frames, fresh=True
        )

    assert _loop_ops(concrete(xla)) == []  # what XLA compiles well on CPU
    assert _loop_ops(concrete(plain)) != []  # uncompiled: one graph loop, flat in K (P4)
    assert xla._update.experimental_get_tracing_count() == 1
