"""Tiny pipelines shared by the tests."""

import os

import gin
import keras
import numpy as np

import sideways_tf as sw
from sideways_tf import backend, config_files


def dense_pipeline(
    topology="chain",
    num_units=3,
    dim=5,
    batch=2,
    classes=3,
    fusion="sum",
    devices=None,
    seed=0,
    placement=None,
):
    """Units Dense(dim, tanh) on vector frames [B, dim]; head Dense(classes).

    placement: e.g. runtime.placement(cores), built inside runtime.scope(); None:
    each unit on devices[i] (TensorFlow only; default: wherever the backend puts it).
    """
    keras.utils.set_random_seed(seed)
    devices = devices or [None] * num_units
    units = [
        sw.Unit(
            keras.layers.Dense(dim, activation="tanh", name="dense"),
            fusion=fusion,
            device=devices[i],
            name=f"unit{i + 1}",
        )
        for i in range(num_units)
    ]
    return sw.Pipeline(
        units,
        topology=topology,
        head=keras.layers.Dense(classes, name="head"),
        batch_size=batch,
        frame_shape=(dim,),
        placement=placement,
    )


def conv_pipeline(
    topology="skip(2)", batch=2, fusion="sum", classes=4, devices=None, seed=0, placement=None
):
    """Three conv units with a strided middle one: skips need projections (placement: as above)."""
    from sideways_tf.models import convnet

    keras.utils.set_random_seed(seed)
    return convnet.tiny_conv_pipeline(
        batch_size=batch,
        frame_shape=(8, 8, 2),
        task=sw.tasks.Classification(num_classes=classes),
        topology=topology,
        fusion=fusion,
        devices=devices,
        placement=placement,
    )


def random_clip(pipeline, num_frames, seed=0):
    rng = np.random.default_rng(seed)
    clip = rng.normal(size=(pipeline.batch_size, num_frames, *pipeline.frame_shape))
    labels = rng.integers(0, 3, size=(pipeline.batch_size,))
    return clip.astype("float32"), labels.astype("int32")


def targets(pipeline, clip, labels, mode="bptt"):
    """The rules' per-step (targets [B, K, ...], present [K]) for a clip and its labels."""
    return sw.engine.step_targets(pipeline, mode, clip, labels)


def rule_grads(rule, pipeline, clip, labels, mode="bptt"):
    """A gradient rule's per-unit gradients on a clip from a fresh state."""
    return rule(pipeline, pipeline.zero_state(), clip, *targets(pipeline, clip, labels, mode)).grads


def compile_fn(fn, pipeline):
    """fn compiled as the engine compiles its calls: tf.function on TensorFlow, one jax.jit
    of a stateless function over the pipeline's variables on JAX (backend.function)."""
    return backend.function(fn, lambda: pipeline.variables, jit_compile=backend.is_jax())


def flat(grads):
    """Per-unit gradient lists -> one flat float64 vector per unit."""
    return [np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in gu]) for gu in grads]


def train_config(workdir, *params, config="tiny", **kwargs):
    """train() under a shipped gin config (default: tiny) and bindings; gin cleared after."""
    from sideways_tf import train  # (the gin run path: TensorFlow)

    gin.clear_config()
    gin.parse_config_files_and_bindings([config_files.resolve(config)], list(params))
    try:
        return train.train(str(workdir), **kwargs)
    finally:
        gin.clear_config()


def event_tags(directory):
    """Every summary tag in a TensorBoard event directory."""
    import tensorflow as tf

    tags = set()
    for name in tf.io.gfile.listdir(directory):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            tags.update(v.tag for v in event.summary.value)
    return tags
