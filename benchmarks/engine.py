"""Engine speed and memory per mode, measured in one run (ratios, not absolute claims).

    python benchmarks/engine.py [--batch 16] [--frames 16 32 64 128]

Memory: peak bytes TensorFlow's CPU allocator holds during one training step on a
clip of K frames (after a warm-up step), per mode. algorithm.md P4: Sideways'
step memory is flat in K, bptt's grows with K. Speed: training frames per
second of each mode on K=16 clips, as a ratio to frame_bp.
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

MODES = {"frame_bp": "skip(2)", "bptt": "skip(2)", "skip_sideways": "skip(2)"}


def make_engine(mode, batch):
    keras.utils.set_random_seed(0)
    pipeline = convnet.small_conv_pipeline(
        batch_size=batch,
        frame_shape=(32, 32, 3),
        task=sw.tasks.Classification(num_classes=12),
        topology=MODES[mode],
        fusion="sum",  # (the README's numbers were measured with sum)
    )
    return sw.Engine(pipeline, mode, keras.optimizers.Adam(1e-3))


def clip(batch, frames):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, frames, 32, 32, 3)).astype("float32")
    return tf.constant(x), tf.constant(rng.integers(0, 12, batch), tf.int32)


def peak_step_bytes(engine, x, y) -> int:
    engine.train_clip(x, y)  # trace and warm up
    tf.config.experimental.reset_memory_stats("CPU:0")
    base = tf.config.experimental.get_memory_info("CPU:0")["current"]
    float(engine.train_clip(x, y)["loss"])
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - base


def frames_per_second(engine, x, y, repeats=10) -> float:
    engine.train_clip(x, y)
    start = time.perf_counter()
    for _ in range(repeats):
        out = engine.train_clip(x, y)
    float(out["loss"])
    return repeats * x.shape[0] * x.shape[1] / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128])
    args = parser.parse_args()

    print(f"Peak step memory (MiB), batch {args.batch}, 32x32x3 frames, 4-unit convnet")
    print("mode".ljust(15) + "".join(f"K={k}".rjust(10) for k in args.frames) + "   growth")
    for mode in MODES:
        engine = make_engine(mode, args.batch)
        peaks = [peak_step_bytes(engine, *clip(args.batch, k)) / 2**20 for k in args.frames]
        growth = peaks[-1] / peaks[0] if peaks[0] else float("nan")  # (0: below what TF counts)
        print(mode.ljust(15) + "".join(f"{p:10.1f}" for p in peaks) + f"   x{growth:.2f}")

    print("\nTraining speed, K=16 (frames/s; ratio to frame_bp)")
    x, y = clip(args.batch, 16)
    speeds = {mode: frames_per_second(make_engine(mode, args.batch), x, y) for mode in MODES}
    for mode, fps in speeds.items():
        print(f"{mode.ljust(15)}{fps:10.0f}   x{fps / speeds['frame_bp']:.2f}")


if __name__ == "__main__":
    main()
