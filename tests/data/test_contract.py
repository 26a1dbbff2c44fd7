"""The clip contract: one spec, one check, errors that name the key and the binding."""

import pytest
import tensorflow as tf

from sideways_tf.data import contract
from sideways_tf.data.moving_shapes import moving_shapes_dataset, moving_shapes_future_dataset


def spec(**changes):
    base = contract.clip_spec(4, 8, 8, 3)
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_every_built_in_dataset_meets_the_contract():
    ds = moving_shapes_dataset("eval", 4, num_frames=6)
    assert ds.element_spec == contract.clip_spec(6, 32, 32)
    assert contract.check_clip_dataset(ds, "train.train_data") == (6, (32, 32, 3))
    future = moving_shapes_future_dataset("eval", 4)
    k, _ = contract.check_clip_dataset(future, labelled=False)
    with pytest.raises(ValueError, match="train.train_data yields keys.*needs 'label'.*labelled"):
        contract.check_clip_dataset(future, "train.train_data")
    assert k == future.element_spec["frames"].shape[0]


@pytest.mark.parametrize(
    "element_spec, message",
    [
        (spec(frames=None), r"eval.eval_data yields keys \['label', 'video_index'\].*'frames'"),
        (
            spec(frames=tf.TensorSpec([None, 8, 8, 3], tf.float32)),
            r"eval.eval_data yields 'frames' float32 \[\?, 8, 8, 3\].*static",
        ),
        (
            spec(frames=tf.TensorSpec([2, 4, 8, 8, 3], tf.float32)),
            r"'frames' float32 \[2, 4, 8, 8, 3\].*\[K, H, W, C\].*unbatched",
        ),
        (spec(frames=tf.TensorSpec([4, 8, 8, 3], tf.uint8)), r"'frames' uint8 \[4, 8, 8, 3\]"),
        (
            spec(label=tf.TensorSpec([], tf.int64)),
            r"'label' int64 \[\]; the clip contract needs int32 \[\]",
        ),
        (
            spec(video_index=tf.TensorSpec([3], tf.int64)),
            r"'video_index' int64 \[3\]; the clip contract needs int64 \[\]",
        ),
        (spec(video_index=None), r"needs 'video_index' int64 \[\]"),
    ],
)
def test_violations_name_the_binding_the_key_and_the_shape(element_spec, message):
    with pytest.raises(ValueError, match=message):
        contract.check_clip_dataset(element_spec, "eval.eval_data")


def test_extra_keys_are_allowed_and_a_dataset_without_binding_is_named_generically():
    extra = {**contract.clip_spec(2, 4, 4, 1), "video_id": tf.TensorSpec([], tf.string)}
    assert contract.check_clip_dataset(extra) == (2, (4, 4, 1))
    ds = tf.data.Dataset.from_tensors({"frames": tf.zeros([2, 4, 4, 1])})
    with pytest.raises(ValueError, match="^The dataset yields keys"):
        contract.check_clip_dataset(ds)
