"""UCF101 clips from TFDS' `ucf101` (prepared with `tfds build ucf101`).

TFDS downloads from the UCF site itself. Labels 0..100 match the local-files route
(data/prepare/ucf101.py -> sideways-convert -> dmvr_dataset).
"""

from __future__ import annotations

import gin
import tensorflow as tf
import tensorflow_datasets as tfds

from sideways_tf.data import sampling as sampling_lib
from sideways_tf.data.sampling import ClipSampling

NUM_CLASSES = 101
FOLDS = (1, 2, 3)


def tfds_name(fold: int = 1, size_256: bool = True) -> str:
    """TFDS config of an official split: ucf101_1_256 (frames 256x256) only exists for fold 1."""
    if fold not in FOLDS:
        raise ValueError(f"UCF101 fold (official split) must be 1, 2 or 3, got {fold!r}.")
    return f"ucf101/ucf101_{fold}_256" if (fold == 1 and size_256) else f"ucf101/ucf101_{fold}"


@gin.configurable(module="sideways_tf.data")
def ucf101_tfds_dataset(
    split_is_training: bool,
    sampling: ClipSampling | None = None,  # None: the gin-bound clip_sampling()
    fold: int = 1,
    data_dir: str | None = None,  # TFDS data dir; None = TFDS' default (~/tensorflow_datasets)
    repeat: bool = False,
    download: bool = False,  # True lets TFDS fetch the 6.5 GB from the UCF site
) -> tf.data.Dataset:
    """UCF101 clips from TFDS' `ucf101`, with the same contract and sampling as `dmvr_dataset`.

    Returns:
      {"frames": float32 [K, S, S, 3], "label": int32 [], "video_index": int64 []},
      unbatched; video_index is the example's position in the (unshuffled) split.
    """
    sampling = sampling_lib.clip_sampling() if sampling is None else sampling
    name = tfds_name(fold)
    split = "train" if split_is_training else "test"
    try:
        ds = tfds.load(
            name,
            split=split,
            data_dir=data_dir,
            download=download,
            shuffle_files=False,
            decoders={"video": tfds.decode.SkipDecoding()},  # decode only sampled frames
        )
    except AssertionError as e:  # TFDS' way of saying "not prepared"
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in data_dir={data_dir!r}. Fix: run "
            f"`tfds build {name.replace('/', ' --config=')}` (needs internet, 6.5 GB), or "
            "pass download=True, or use the local-files route (sideways-convert --dataset=ucf101, "
            "then dmvr_dataset; see gin/data/ucf101.gin)."
        ) from e
    ds = ds.enumerate()
    if split_is_training and repeat:
        ds = ds.repeat()
    videos = ds.map(
        lambda i, example: {
            "encoded": example["video"],  # [T] JPEG strings
            "label": tf.cast(example["label"], tf.int32),
            "video_index": i,
        }
    )
    clips = sampling_lib.video_clips(videos, training=bool(split_is_training), sampling=sampling)
    return clips.prefetch(tf.data.AUTOTUNE)
