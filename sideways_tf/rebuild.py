"""A built pipeline copied for another batch size, with its parameters (no TensorFlow).

    rebuild_pipeline(pipeline, batch_size)   SidewaysModel.with_batch_size, the export
    parameters(pipeline)                     every weight but the state buffers

The state buffers [B, ...] are state, not parameters: the copy is rebuilt from the
pipeline's Keras config for the new B, its buffers start at zero, and every other
weight is copied. Keras only, so it runs on either backend (sideways_tf.export, which
writes a SavedModel, imports it from here).
"""

from __future__ import annotations

from sideways_tf import placement
from sideways_tf.pipeline import Pipeline


def rebuild_pipeline(
    pipeline: Pipeline,
    batch_size: int,
    pinned: bool = True,
    what: str = "rebuild_pipeline",
    otherwise: str = "build the pipeline for that batch size in your own code",
) -> Pipeline:
    """A copy of a built pipeline whose buffers hold `batch_size` clips, with its parameters.

    The copy is rebuilt from the pipeline's Keras config (Pipeline.from_config: units and
    head unbuilt), so its buffers take the new B ([B, *out_i], delay lines [d, B, *in]) and
    start at zero; every other weight, trainable or not, is copied. pinned: placed as the
    pipeline is (its plan and cores); False: no device pins, every unit on the default
    device. The pipeline given is left as it was. what, otherwise: who asks, and the
    alternative to name, in the messages of a layer whose get_config does not rebuild it.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    config = pipeline.get_config()
    config.update(batch_size=None, frame_shape=None)  # built below, once placed
    if not pinned:
        config["units"] = [
            {**u, "config": {**u["config"], "device": None}} for u in config["units"]
        ]
    try:
        copy = Pipeline.from_config(config)
    except Exception as e:
        raise ValueError(
            f"{what} could not rebuild the pipeline from its Keras config for batch_size="
            f"{batch_size} ({type(e).__name__}: {e}). Register your own layers with "
            "@keras.saving.register_keras_serializable() and give them get_config, or "
            f"{otherwise}."
        ) from e
    if pinned:
        copy.plan, copy.cores = pipeline.plan, list(pipeline.cores)
    else:
        unpin(copy)
    copy.build((batch_size, *pipeline.frame_shape))
    ours, theirs = parameters(copy), parameters(pipeline)
    if len(ours) != len(theirs):
        raise ValueError(
            f"{what} rebuilt the pipeline from its Keras config with {len(ours)} parameters, "
            f"but it has {len(theirs)}: some layer's get_config does not rebuild it as it is. "
            f"Fix that get_config, or {otherwise}."
        )
    for new, old in zip(ours, theirs):
        if new.name != old.name or tuple(new.shape) != tuple(old.shape):
            raise ValueError(
                f"{what} rebuilt the pipeline, but its parameter {new.path} "
                f"{tuple(new.shape)} does not match {old.path} {tuple(old.shape)}: the "
                f"layers' get_config does not rebuild them as they are. Fix their "
                f"get_config, or {otherwise}."
            )
        new.assign(old.numpy())
    return copy


def parameters(pipeline: Pipeline) -> list:
    """Every weight of the units and the head, trainable or not, but the state buffers:
    the pipeline's parameters, in build order."""
    buffers = {id(b) for b in pipeline.state_variables()}
    weights = [w for u in pipeline.units for w in u.weights if id(w) not in buffers]
    return weights + (list(pipeline.head.weights) if pipeline.head is not None else [])


def unpin(pipeline: Pipeline):
    """Traces on the default device: drops the units' own devices from the plan."""
    for unit in pipeline.units:
        unit.device = None
    pipeline.plan = placement.DevicePlan.single([None])
    pipeline.cores = [0] * pipeline.num_units


__all__ = ["parameters", "rebuild_pipeline", "unpin"]
