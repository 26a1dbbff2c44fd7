"""Step time and state bytes per precision, measured in one run (ratios to float32).

    python benchmarks/precision.py [--batch 8] [--frames 16] [--mode skip_sideways]

For each Keras dtype policy (float32, mixed_bfloat16, mixed_float16 with loss
scaling) the 4-unit convnet on 32x32x3 frames trains K-frame clips; printed:
  state bytes   the buffers the engine carries (outputs, messages, delay lines),
                stored in the compute dtype;
  param bytes   parameters (float32 in every policy);
  frames/s      training throughput after a warm-up clip, and its ratio to float32.
On a CPU reduced precision saves memory but rarely time: bfloat16 and float16
kernels there are emulated or fall back to slower paths. Accelerators (TPU, recent
GPUs) are where mixed precision is fast.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sideways_tf as sw  # noqa: E402
from sideways_tf import precision  # noqa: E402
from sideways_tf.models import convnet  # noqa: E402

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
TOPOLOGY = {"frame_bp": "skip(2)", "bptt": "skip(2)", "sideways": "chain"}


def make_engine(policy, mode, batch):
    keras.utils.set_random_seed(0)
    with precision.policy_scope(policy):
        pipeline = convnet.small_conv_pipeline(
            batch_size=batch,
            frame_shape=(32, 32, 3),
            task=sw.tasks.Classification(num_classes=12),
            topology=TOPOLOGY.get(mode, "skip(2)"),
            fusion="sum",  # (the README's numbers were measured with sum)
        )
    optimizer = keras.optimizers.Adam(1e-3)
    if policy == "mixed_float16":
        optimizer = precision.loss_scaling(optimizer)
    return sw.Engine(pipeline, mode, optimizer)


def nbytes(variables) -> int:
    return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables)


def frames_per_second(engine, x, y, repeats) -> tuple[float, float]:
    engine.train_clip(x, y)  # trace and warm up
    start = time.perf_counter()
    for _ in range(repeats):
        out = engine.train_clip(x, y)
    loss = float(out["loss"])
    return repeats * x.shape[0] * x.shape[1] / (time.perf_counter() - start), loss


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--mode", default="skip_sideways", choices=sw.MODES)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(args.batch, args.frames, 32, 32, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 12, args.batch), tf.int32)
    print(
        f"{args.mode}, batch {args.batch}, K={args.frames}, 32x32x3 frames, 4-unit convnet, "
        f"{args.repeats} clips after a warm-up ({tf.config.list_physical_devices()[0].device_type})"
    )
    print(
        "policy".ljust(16)
        + "state KiB".rjust(11)
        + "param KiB".rjust(11)
        + "frames/s".rjust(10)
        + "vs fp32".rjust(9)
        + "loss".rjust(9)
    )
    reference = None
    for policy in POLICIES:
        engine = make_engine(policy, args.mode, args.batch)
        state = nbytes(engine.pipeline.state_variables()) / 1024
        params = nbytes(engine.variables) / 1024
        fps, loss = frames_per_second(engine, x, y, args.repeats)
        reference = reference or fps
        print(
            policy.ljust(16)
            + f"{state:11.1f}{params:11.1f}{fps:10.0f}   x{fps / reference:.2f}{loss:9.3f}"
        )


if __name__ == "__main__":
    main()
