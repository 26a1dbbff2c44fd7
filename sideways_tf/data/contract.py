"""The data contract: what every clip dataset yields, defined once and checked once.

An unbatched clip dataset (moving_shapes_dataset, dmvr_dataset, ucf101_tfds_dataset) yields

  {"frames": float32 [K, H, W, C], "label": int32 [], "video_index": int64 []}

with K, H, W, C static. The frames-only datasets (future-frame prediction) yield
{"frames"} alone (labelled=False). Keys beyond these are allowed and ignored.
"""

from __future__ import annotations

import weakref

import tensorflow as tf

LABEL_SPEC = tf.TensorSpec([], tf.int32)
VIDEO_INDEX_SPEC = tf.TensorSpec([], tf.int64)


def clip_spec(
    num_frames: int, height: int, width: int, channels: int = 3, *, labelled: bool = True
) -> dict[str, tf.TensorSpec]:
    """The element spec of a clip dataset of K x H x W x C frames."""
    spec = {"frames": tf.TensorSpec([num_frames, height, width, channels], tf.float32)}
    if labelled:
        spec.update(label=LABEL_SPEC, video_index=VIDEO_INDEX_SPEC)
    return spec


def check_clip_dataset(
    ds: tf.data.Dataset | dict, binding: str | None = None, *, labelled: bool = True
) -> tuple[int, tuple[int, int, int]]:
    """Checks an unbatched clip dataset (or its element_spec) against the contract.

    Args:
      ds: the dataset, or its element_spec.
      binding: the gin binding that made it (e.g. "train.train_data"), named in errors.
      labelled: "label" and "video_index" are required too.
    Returns:
      (K, (H, W, C)): the clip length and frame shape, all static.
    Raises:
      ValueError: naming the offending key, what it is and what the contract wants.
    """
    spec = ds.element_spec if isinstance(ds, tf.data.Dataset) else ds
    source = f"{binding} yields" if binding else "The dataset yields"
    if not isinstance(spec, dict):
        raise ValueError(
            f"{source} {spec}, not a dict. A clip dataset yields "
            f"{_describe(clip_spec(None, None, None, None, labelled=labelled))}."
        )
    frames = spec.get("frames")
    if frames is None:
        raise ValueError(f"{source} keys {sorted(spec)}; the clip contract needs 'frames'.")
    if frames.shape.rank != 4 or frames.dtype != tf.float32 or not frames.shape.is_fully_defined():
        raise ValueError(
            f"{source} 'frames' {frames.dtype.name} {_shape(frames)}; the clip contract needs "
            "float32 [K, H, W, C] with K, H, W, C static (unbatched, fixed clip length and "
            "frame size)."
        )
    num_frames, *frame_shape = frames.shape.as_list()
    wanted = clip_spec(num_frames, *frame_shape, labelled=labelled)
    for key, want in wanted.items():
        got = spec.get(key)
        if got is None:
            fix = (
                " Bind a labelled dataset (the frames-only variants have no labels)."
                if key == "label"
                else ""
            )
            raise ValueError(
                f"{source} keys {sorted(spec)}; the clip contract needs {key!r} "
                f"{want.dtype.name} {_shape(want)}.{fix}"
            )
        if got.dtype != want.dtype or got.shape != want.shape:
            raise ValueError(
                f"{source} {key!r} {got.dtype.name} {_shape(got)}; the clip contract needs "
                f"{want.dtype.name} {_shape(want)}."
            )
    return num_frames, tuple(frame_shape)


def _shape(spec: tf.TensorSpec) -> str:
    if spec.shape.rank is None:
        return "[unknown rank]"
    return "[" + ", ".join("?" if d is None else str(d) for d in spec.shape) + "]"


def _describe(spec: dict[str, tf.TensorSpec]) -> str:
    return "{" + ", ".join(f"{k!r}: {v.dtype.name} {_shape(v)}" for k, v in spec.items()) + "}"


# Class names a reader attached to the datasets it returned (label i is names[i]).
_CLASS_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def with_class_names(ds: tf.data.Dataset, names) -> tf.data.Dataset:
    """Records the names of the labels `ds` yields (a reader calls this on what it returns)."""
    _CLASS_NAMES[ds] = [str(n) for n in names]
    return ds


def class_names(ds) -> list[str] | None:
    """The class names a reader recorded for this dataset object, or None."""
    try:
        return _CLASS_NAMES.get(ds)
    except TypeError:  # (not weakly referenceable: an element_spec)
        return None
