"""TensorBoard summaries of a run: scalars, per-unit figures, clips, images, its config."""

from __future__ import annotations

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


def write_config_text(writer, config: str):
    """The operative gin config as TensorBoard text (gin/operative_config, step 0).

    The workdir's copy, config.gin, is sideways_tf.workdir.write_config's.
    """
    with writer.as_default(step=0):
        tf.summary.text("gin/operative_config", gin.markdown(config))
