"""Tiny real videos for tests: written with PyAV (H.264), converted by sideways-convert."""

import os

import av
import numpy as np

from sideways_tf.data.prepare import convert


def write_video(
    path, num_frames: int, seed: int, height: int = 32, width: int = 48, direction=None
):
    """A textured background with a bright square moving 2 px/frame right (+1) or left
    (-1): `direction`, or left for an odd seed; landscape by default, so that the
    multi-view crops differ."""
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 120, (height // 4, width // 4, 3)).astype(np.uint8)
    background = np.kron(background, np.ones((4, 4, 1), np.uint8))  # blocks survive H.264
    if direction is None:
        direction = -1 if seed % 2 else 1
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(num_frames):
            image = background.copy()
            x = (8 + direction * 2 * t + seed) % (width - 8)
            image[height // 2 - 4 : height // 2 + 4, x : x + 8] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_records(root, splits: dict) -> str:
    """splits: {split: {class name: [frames of each video]}} -> root/records (the CLI's
    shards, one video per class folder entry, short side 16). Returns the records dir."""
    seed = 0
    for split, classes in splits.items():
        for name, lengths in classes.items():
            os.makedirs(os.path.join(root, "videos", split, name))
            for v, length in enumerate(lengths):
                write_video(os.path.join(root, "videos", split, name, f"v{v}.mp4"), length, seed)
                seed += 1
        status = convert.main(
            [
                "--dataset=folder",
                f"--videos_dir={os.path.join(root, 'videos', split)}",
                f"--split={split}",
                f"--output_dir={os.path.join(root, 'records')}",
                "--fps=none",
                "--short_side=16",
                "--workers=1",
                "--no_progress",
            ]
        )
        assert status == 0
    return os.path.join(root, "records")
