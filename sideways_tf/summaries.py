"""TensorBoard summaries and the run's JSON metrics files."""

from __future__ import annotations

import json

import gin
import numpy as np
import tensorflow as tf


def write_scalars(writer, step: int, scalars: dict):
    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(name, float(value))


def write_per_unit(writer, step: int, prefix: str, values):
    """One scalar per unit, `prefix/unit_i`: TensorBoard overlays them in one card."""
    with writer.as_default(step=step):
        for i, v in enumerate(np.asarray(values), start=1):
            tf.summary.scalar(f"{prefix}/unit_{i}", float(v))


def clip_strip(clip, max_frames: int = 16) -> np.ndarray:
    """[K, H, W, C] frames (any range) -> one [H, K*W, 3] image in [0, 1] for TensorBoard."""
    clip = np.asarray(clip)[:max_frames]
    lo, hi = clip.min(), clip.max()
    clip = (clip - lo) / max(hi - lo, 1e-6)
    if clip.shape[-1] == 1:
        clip = np.repeat(clip, 3, axis=-1)
    return np.concatenate(list(clip), axis=1)


def write_clips(writer, step: int, name: str, clips, max_clips: int = 4):
    """Sample input clips as images, one frame strip per clip."""
    strips = np.stack([clip_strip(c) for c in np.asarray(clips)[:max_clips]])
    with writer.as_default(step=step):
        tf.summary.image(name, strips, max_outputs=max_clips)


def write_images(writer, step: int, name: str, images, max_images: int = 4):
    """Images [N, H, W, 3] in [0, 1] (e.g. prediction.prediction_strips)."""
    with writer.as_default(step=step):
        tf.summary.image(name, np.asarray(images, np.float32), max_outputs=max_images)


def write_config(writer, path: str, end: str = "", config: str | None = None):
    """Saves the operative gin config to `path` (the workdir's config.gin) and to TensorBoard.

    end: a last line (workdir.CONFIG_END) by which a reader tells a whole file from a
    truncated one. config: the text to save (default: gin.operative_config_str()).
    """
    config = gin.operative_config_str() if config is None else config
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(config.rstrip("\n") + "\n" + (end + "\n" if end else ""))
    tf.io.gfile.rename(tmp, path, overwrite=True)
    with writer.as_default(step=0):
        tf.summary.text("gin/operative_config", gin.markdown(config))


def write_json(path: str, data: dict):
    """Writes data as JSON atomically (temp file, then rename)."""
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    tf.io.gfile.rename(tmp, path, overwrite=True)
