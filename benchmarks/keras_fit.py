"""The Keras front door's cost: SidewaysModel.fit per clip over Engine.train_clip per clip.

    python benchmarks/keras_fit.py [--steps 10] [--repeats 5] [--batch 16] [--frames 16]

The quickstart network (small_conv_pipeline: 4 conv units 16/32/32/64, skip(2),
32x32x3 frames, Adam) in skip_sideways, on the same in-memory clips. Each repeat
times one `fit` epoch of --steps batches (Keras' loop, progress bar off, History,
metrics "accuracy", the per-unit health logs) and, back to back, --steps
`engine.train_clip` calls of a twin model; the ratio is taken within the repeat
and the median over repeats is reported (the order alternates between repeats), so the shared machine's drift falls on
both alike. Target: fit / train_clip <= 1.05.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sideways_tf as sw  # noqa: E402
from sideways_tf.models import convnet  # noqa: E402


def model(args):
    keras.utils.set_random_seed(0)
    pipeline = convnet.small_conv_pipeline(
        batch_size=args.batch, frame_shape=(32, 32, 3), num_classes=12, topology="skip(2)"
    )
    m = sw.SidewaysModel(pipeline=pipeline)
    m.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"], mode="skip_sideways")
    return m


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="batches per timing")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.steps * args.batch
    clips = rng.normal(size=(n, args.frames, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 12, n).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((clips, labels)).batch(args.batch).cache()
    batches = list(ds)
    fitted, engine = model(args), model(args).engine
    fitted.fit(ds, epochs=1, verbose=0)  # trace and warm up both
    for x, y in batches:
        engine.train_clip(x, y)
    fit_ms, clip_ms = [], []

    def time_fit():
        start = time.perf_counter()
        fitted.fit(ds, epochs=1, verbose=0)
        fit_ms.append(1000 * (time.perf_counter() - start) / args.steps)

    def time_clips():
        start = time.perf_counter()
        for x, y in batches:
            float(engine.train_clip(x, y)["loss"])
        clip_ms.append(1000 * (time.perf_counter() - start) / args.steps)

    for r in range(args.repeats):
        for timing in (time_fit, time_clips) if r % 2 == 0 else (time_clips, time_fit):
            timing()  # (the order alternates, so a drift in load falls on both alike)
        print(
            f"  repeat {r + 1}/{args.repeats}: fit {fit_ms[-1]:.0f} ms/clip, "
            f"train_clip {clip_ms[-1]:.0f} ms/clip",
            flush=True,
        )
    ratio = statistics.median(a / b for a, b in zip(fit_ms, clip_ms))
    print(
        f"quickstart model, B={args.batch}, K={args.frames}, {args.steps} clips x "
        f"{args.repeats} repeats: fit {statistics.median(fit_ms):.0f} ms/clip, train_clip "
        f"{statistics.median(clip_ms):.0f} ms/clip, fit / train_clip = {ratio:.3f} "
        f"(target <= 1.05: {'PASS' if ratio <= 1.05 else 'FAIL'})"
    )


if __name__ == "__main__":
    main()
