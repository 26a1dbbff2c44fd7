"""The compiled (XLA) update against the uncompiled one, per mode, in one run.

    python benchmarks/compiled.py [--repeats 5] [--frames 16] [--batch 16]

The quickstart network (small_conv_pipeline: 4 conv units 16/32/32/64, 32x32x3
frames, 12 classes, Adam), B=16 clips of K=16 frames. Per mode, ms per clip of
`Engine.train_clip` with jit_compile=False and True, and the ratio compiled /
uncompiled; next to them Keras' own `train_on_batch` of the same per-frame
network (a keras.Model over the same units) on the clip's B*K frames, without
and with XLA. Every timed call of a repeat runs back to back (interleaved), the
ratios are taken within a repeat and the medians over repeats are printed: the
machine is shared, only ratios within one run mean anything.

What was found (TF 2.21, CPU, XLA_FLAGS=--xla_dump_to=...): with the Sideways
frame loop as a tf.while_loop, XLA keeps the backward convolutions of the loop
body (Conv2DBackpropFilter, Conv2DBackpropInput: dim_labels f01b_i01o->01bf and
b01f_01oi->b01f) in their raw form and emits them as naive elemental loops
(`*_elemental_kernel_module.ll` in the dump: 4 filter and 3 input gradients,
run K times per clip), where outside a loop body every convolution is rewritten
to the canonical b01f_01io->b01f form that runs on Eigen's convolution. That
alone made sideways 12x slower compiled (6035 vs 500 ms per clip, one probe).
The dynamic trip count, clip[:, k] (a dynamic-slice fusion), the accumulators,
the non-finite guard's tf.cond and host round trips were not where the time
went. The fix: a compiled engine asks the rules for the frame loop unrolled
over the static K (`unrolled=True`); every convolution is then canonical (176
in the sideways update at K=16, none elemental). XLA/no for sideways and
skip_sideways went from 12.8 and 9.6 (20.0 and 17.6 under load) to 0.83 and
0.89 (1.27 and 1.30 in a more loaded run; Keras' own train_on_batch 1.32-1.40):
README "The compiled step".
The price is compile time, which grows with K (52 s instead of 20 s at K=16
on 2 shared cores), and a graph of size O(K); memory stays O(1) in K.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sideways_tf as sw  # noqa: E402
from sideways_tf.models import convnet  # noqa: E402

MODES = {"frame_bp": "skip(2)", "bptt": "skip(2)", "sideways": "chain", "skip_sideways": "skip(2)"}


def pipeline_for(topology, batch):
    keras.utils.set_random_seed(0)
    return convnet.small_conv_pipeline(
        batch_size=batch,
        frame_shape=(32, 32, 3),
        task=sw.tasks.Classification(num_classes=12),
        topology=topology,
        fusion="sum",  # (the README's numbers were measured with sum)
    )


class FrameNetwork(keras.Model):
    """The pipeline's per-frame network (its units, no delays) as a plain keras.Model."""

    def __init__(self, pipeline):
        super().__init__()
        self.pipeline = pipeline

    def call(self, frames, training=False):
        return self.pipeline.frame_forward(frames, training=training)


def engine_runner(mode, batch, jit, clip, labels):
    engine = sw.Engine(
        pipeline_for(MODES[mode], batch), mode, keras.optimizers.Adam(1e-3), jit_compile=jit
    )
    return lambda: float(engine.train_clip(clip, labels)["loss"])


def keras_runner(batch, jit, clip, labels):
    model = FrameNetwork(pipeline_for("chain", batch))
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    frames = tf.reshape(clip, (-1, *clip.shape[2:]))  # [B*K, 32, 32, 3]
    frame_labels = tf.repeat(labels, clip.shape[1])  # [B*K]
    return lambda: float(model.train_on_batch(frames, frame_labels))


def ms(run) -> float:
    start = time.perf_counter()
    run()
    return 1000 * (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    clip = tf.constant(rng.normal(size=(args.batch, args.frames, 32, 32, 3)), tf.float32)
    labels = tf.constant(rng.integers(0, 12, args.batch), tf.int32)
    runners, compile_s = {}, {}
    rows = [*args.modes, "keras train_on_batch"]
    for row in rows:
        for jit in (False, True):
            if row in MODES:
                run = engine_runner(row, args.batch, jit, clip, labels)
            else:
                run = keras_runner(args.batch, jit, clip, labels)
            compile_s[row, jit] = ms(run) / 1000  # trace (and compile)
            run()  # warm-up
            runners[row, jit] = run
    times = {key: [] for key in runners}
    ratios = {row: [] for row in rows}
    for _ in range(args.repeats):
        for row in rows:
            plain, xla = ms(runners[row, False]), ms(runners[row, True])
            times[row, False].append(plain)
            times[row, True].append(xla)
            ratios[row].append(xla / plain)

    print(
        f"ms per clip (B={args.batch}, K={args.frames}, 32x32x3, 4 conv units, Adam); "
        f"medians of {args.repeats}"
    )
    print(f"{'':22}{'no XLA':>9}{'XLA':>9}{'XLA/no':>8}{'first XLA call (s)':>20}")
    for row in rows:
        plain, xla = np.median(times[row, False]), np.median(times[row, True])
        print(
            f"{row:22}{plain:9.0f}{xla:9.0f}{np.median(ratios[row]):8.2f}"
            f"{compile_s[row, True]:20.1f}"
        )


if __name__ == "__main__":
    main()
