"""UCF101 from local files: the three official train/test splits, as a video listing.

  <videos_dir>/<Class>/v_<Class>_gXX_cYY.avi          from UCF101.rar
  <splits_dir>/classInd.txt                           "1 ApplyEyeMakeup"   (1-based)
  <splits_dir>/trainlist0N.txt                        "ApplyEyeMakeup/v_..._g08_c01.avi 1"
  <splits_dir>/testlist0N.txt                         "ApplyEyeMakeup/v_..._g01_c01.avi"

Labels are classInd - 1 (0..100), the same as TFDS'. Pipeline: list_split ->
sideways-convert -> dmvr_dataset. TFDS' own `ucf101` is read by data/ucf101.py.
"""

from __future__ import annotations

import os

import tensorflow as tf

from sideways_tf.data.prepare import listings
from sideways_tf.data.prepare.listings import SplitListing, VideoEntry

NUM_CLASSES = 101
SPLITS = ("train", "test")
FOLDS = (1, 2, 3)

DOWNLOAD_HELP = (
    "Download https://www.crcv.ucf.edu/data/UCF101/UCF101.rar (6.5 GB) and "
    "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip, "
    "then `unrar x UCF101.rar` (gives UCF-101/<Class>/v_*.avi: pass it as videos_dir, "
    "--videos_dir) and unzip the splits (gives ucfTrainTestlist/ with classInd.txt, "
    "trainlist01.txt, ...: pass it as splits_dir, --annotations)."
)


def _check_split(split: str, fold: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"UCF101 split must be one of {SPLITS}, got {split!r}.")
    if fold not in FOLDS:
        raise ValueError(f"UCF101 fold (official split) must be 1, 2 or 3, got {fold!r}.")


def read_class_index(splits_dir: str) -> list[str]:
    """Class names in label order, from classInd.txt."""
    path = os.path.join(splits_dir, "classInd.txt")
    listings.require_file(path, "UCF101 class index", DOWNLOAD_HELP)
    names = {}
    for n, line in enumerate(listings.read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(
                f"{path!r} line {n}: expected '<index> <ClassName>', got {line!r}. Fix: restore "
                "the file from UCF101TrainTestSplits-RecognitionTask.zip."
            )
        names[int(parts[0]) - 1] = parts[1]
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path!r}: class indices are not 1..{len(names)} without gaps.")
    return [names[i] for i in range(len(names))]


def list_split(
    videos_dir: str, splits_dir: str, split: str = "train", fold: int = 1
) -> SplitListing:
    """The videos of UCF101 `split` ('train' or 'test') of official split `fold` (1..3).

    Videos named in the split file but absent are returned in SplitListing.missing; none
    found at all is an error that says what to download.
    """
    _check_split(split, fold)
    listings.require_dir(videos_dir, "UCF101 videos folder (UCF-101/)", DOWNLOAD_HELP)
    labels = read_class_index(splits_dir)
    index = {name.lower(): i for i, name in enumerate(labels)}
    list_path = os.path.join(splits_dir, f"{split}list{fold:02d}.txt")
    listings.require_file(list_path, f"UCF101 {split} list of split {fold}", DOWNLOAD_HELP)
    entries, missing = [], []
    for n, line in enumerate(listings.read_text(list_path).splitlines(), start=1):
        if not line.strip():
            continue
        relative = line.split()[0]
        folder = relative.split("/")[0]
        if folder.lower() not in index:
            raise ValueError(
                f"{list_path!r} line {n}: class folder {folder!r} is not in classInd.txt. Fix: "
                "use the classInd.txt that came with this split file."
            )
        label = index[folder.lower()]
        path = os.path.join(videos_dir, relative)
        if not tf.io.gfile.exists(path):
            missing.append(path)
            continue
        stem = os.path.splitext(os.path.basename(relative))[0]
        entries.append(VideoEntry(path, label, labels[label], stem))
    if not entries:
        raise FileNotFoundError(
            f"None of the {len(missing)} videos listed in {list_path!r} exist under "
            f"{videos_dir!r} (e.g. {missing[0] if missing else '?'}). {DOWNLOAD_HELP}"
        )
    return SplitListing(entries, labels, missing)
