"""Input-pipeline throughput: decoded frames per second of the DMVR reader vs training's need.

  python benchmarks/input_pipeline.py                       # synthetic records, this machine
  python benchmarks/input_pipeline.py --pattern='/data/ucf101/records/train-*-of-*.tfrecord'
  python benchmarks/input_pipeline.py --consumed_frames_per_sec=3000

Without --pattern it writes synthetic DMVR shards shaped like converted UCF101
(--short_side=128 frames of 128 x 170, 150 frames a video, JPEG quality 90, textured so
they compress like video), then times `dmvr_dataset` in training mode (random clip, JPEG
decode of the K sampled frames, random resized crop, flip, normalise) and reports

  decoded frames/s = clips/s x K

against what training consumes, measured in the same run: frames/s of the engine
training the 4-unit convnet (gin/models/conv_small.gin) on clips of that shape in
--mode (or --consumed_frames_per_sec to give a figure). Below 1.0 the input
pipeline is the bottleneck.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import sideways_tf as sw
from sideways_tf.data import dmvr
from sideways_tf.data.sampling import ClipSampling
from sideways_tf.models import convnet

# The topology each mode's workload runs on (as benchmarks/depth_parallel.py).
TOPOLOGY = {"frame_bp": "chain", "bptt": "skip(2)", "sideways": "chain", "skip_sideways": "skip(2)"}


def training_frames_per_sec(batch, clip, mode: str, steps: int = 3) -> float:
    """Frames/s the engine consumes training the small convnet on `clip`'s shape."""
    topology = TOPOLOGY[mode]
    pipeline = convnet.small_conv_pipeline(
        batch_size=batch,
        frame_shape=tuple(clip.shape[2:]),
        task=sw.tasks.Classification(num_classes=10),
        topology=topology,
        fusion="sum",  # (the README's numbers were measured with sum)
    )
    engine = sw.Engine(pipeline, mode, keras.optimizers.Adam(1e-3))
    labels = tf.zeros([batch], tf.int32)
    engine.train_clip(clip, labels)  # trace
    start = time.perf_counter()
    for _ in range(steps):
        loss = engine.train_clip(clip, labels)["loss"]
    float(loss)
    return steps * batch * clip.shape[1] / (time.perf_counter() - start)


def textured_frames(num_frames: int, height: int, width: int, seed: int = 0) -> list[bytes]:
    """JPEGs of a moving, noisy, textured scene: compresses like real video frames."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 160 + 40
    blobs = [(rng.uniform(0, height), rng.uniform(0, width), rng.uniform(8, 30)) for _ in range(6)]
    out = []
    for t in range(num_frames):
        image = base.copy()
        for i, (cy, cx, r) in enumerate(blobs):
            mask = ((y - cy - 0.7 * t) ** 2 + (x - cx - (i - 3) * 0.5 * t) ** 2) < r**2
            image[mask] = image[mask] * 0.4 + 120 + 20 * i
        image += rng.normal(0, 6, image.shape)
        out.append(tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90).numpy())
    return out


def write_synthetic_shards(directory, num_videos, num_shards, frames_per_video, height, width):
    frames = textured_frames(frames_per_video, height, width)
    writers = [
        tf.io.TFRecordWriter(os.path.join(directory, dmvr.shard_name("bench", i, num_shards)))
        for i in range(num_shards)
    ]
    for v in range(num_videos):
        example = dmvr.make_sequence_example(frames, v % 10, f"class{v % 10}", f"video{v}")
        writers[v % num_shards].write(example.SerializeToString(deterministic=True))
    for w in writers:
        w.close()
    return os.path.join(directory, "bench-*-of-*.tfrecord"), sum(map(len, frames)) / len(frames)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pattern", help="real DMVR shards to read (default: synthetic)")
    p.add_argument("--num_frames", type=int, default=32, help="K, frames per clip")
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--image_size", type=int, default=112)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0, help="timed window")
    p.add_argument("--warmup_batches", type=int, default=10)
    p.add_argument(
        "--consumed_frames_per_sec",
        type=float,
        default=None,
        help="frames/s the trainer consumes (default: measured here with --mode)",
    )
    p.add_argument("--mode", default="skip_sideways", help="engine mode for the measurement")
    p.add_argument("--num_videos", type=int, default=64, help="synthetic: videos")
    p.add_argument("--short_side", type=int, default=128, help="synthetic: frame short side")
    p.add_argument("--frames_per_video", type=int, default=150, help="synthetic: frames a video")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        pattern, note = args.pattern, "records: " + str(args.pattern)
        if pattern is None:
            height, width = args.short_side, round(args.short_side * 4 / 3)
            pattern, jpeg_bytes = write_synthetic_shards(
                tmp, args.num_videos, 8, args.frames_per_video, height, width
            )
            note = (
                f"synthetic records: {args.num_videos} videos x {args.frames_per_video} frames "
                f"of {height}x{width}, {jpeg_bytes / 1024:.1f} KiB/frame, 8 shards"
            )
        ds = dmvr.dmvr_dataset(
            pattern,
            True,
            sampling=ClipSampling(
                num_frames=args.num_frames, stride=args.stride, image_size=args.image_size
            ),
            repeat=True,
        )
        batches = iter(ds.batch(args.batch_size, drop_remainder=True).prefetch(2))
        for _ in range(args.warmup_batches):
            next(batches)
        clips, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            clips += int(next(batches)["frames"].shape[0])
        elapsed = time.perf_counter() - start
        sample = next(batches)["frames"]
        del batches  # stop the reader before its records are deleted

    consumed = args.consumed_frames_per_sec
    if consumed is None:
        consumed = training_frames_per_sec(args.batch_size, sample, args.mode)
    frames_per_sec = clips * args.num_frames / elapsed
    ratio = frames_per_sec / consumed
    print(note)
    print(
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"clips of {args.num_frames} frames (stride {args.stride}) at "
        f"{args.image_size}x{args.image_size}, batch {args.batch_size}"
    )
    print(f"input pipeline: {clips / elapsed:.1f} clips/s = {frames_per_sec:.0f} decoded frames/s")
    print(
        f"training ({args.mode}, 4-unit convnet) consumes: {consumed:.0f} frames/s -> "
        f"supply/demand = {ratio:.2f} "
        + ("(input keeps up)" if ratio >= 1 else "(INPUT-BOUND: add CPU cores or lower K/size)")
    )
    return frames_per_sec


if __name__ == "__main__":
    main()
