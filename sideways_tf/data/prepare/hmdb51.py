"""HMDB51: the three official 70/30 splits, over manually downloaded files.

Layout (after extracting hmdb51_org.rar and the 51 class .rar files inside it, and
test_train_splits.rar):

  <videos_dir>/<class>/<video>.avi
  <splits_dir>/<class>_test_split<N>.txt     lines "<video>.avi <0|1|2>"
                                            1 = train, 2 = test, 0 = not used in split N

Labels are the 51 class names in sorted order (as DMVR's HMDB reader), 0..50.
Pipeline: list_split -> sideways-convert -> dmvr_dataset.
"""

from __future__ import annotations

import os

import tensorflow as tf

from sideways_tf.data.prepare import listings
from sideways_tf.data.prepare.listings import SplitListing, VideoEntry

NUM_CLASSES = 51
SPLITS = {"train": "1", "test": "2"}
FOLDS = (1, 2, 3)

DOWNLOAD_HELP = (
    "Download http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar and "
    "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar "
    "(from https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/); "
    "`unrar x hmdb51_org.rar`, then `unrar x` each of the 51 <class>.rar inside it (gives "
    "<class>/<video>.avi: pass their parent folder as videos_dir, --videos_dir), and "
    "`unrar x test_train_splits.rar` (gives testTrainMulti_7030_splits/: pass it as "
    "splits_dir, --annotations)."
)

_SUFFIX = "_test_split{fold}.txt"


def read_split_files(splits_dir: str, fold: int) -> dict[str, list[tuple[str, str]]]:
    """{class name: [(video file name, '0'|'1'|'2'), ...]} of official split `fold`."""
    if fold not in FOLDS:
        raise ValueError(f"HMDB51 fold (official split) must be 1, 2 or 3, got {fold!r}.")
    listings.require_dir(splits_dir, "HMDB51 split files folder", DOWNLOAD_HELP)
    suffix = _SUFFIX.format(fold=fold)
    files = sorted(f for f in tf.io.gfile.listdir(splits_dir) if f.endswith(suffix))
    if not files:
        raise FileNotFoundError(
            f"No HMDB51 split files '*{suffix}' in {splits_dir!r}. {DOWNLOAD_HELP}"
        )
    out = {}
    for name in files:
        path = os.path.join(splits_dir, name)
        rows = []
        for n, line in enumerate(listings.read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(
                    f"{path!r} line {n}: expected '<video>.avi <0|1|2>', got {line!r}. Fix: "
                    "restore the file from test_train_splits.rar."
                )
            rows.append((parts[0], parts[1]))
        out[name[: -len(suffix)]] = rows
    return out


def list_split(
    videos_dir: str, splits_dir: str, split: str = "train", fold: int = 1
) -> SplitListing:
    """The videos of HMDB51 `split` ('train' or 'test') of official split `fold` (1..3).

    Videos named in the split files but absent are returned in SplitListing.missing; none
    found at all is an error that says what to download.
    """
    if split not in SPLITS:
        raise ValueError(f"HMDB51 split must be one of {tuple(SPLITS)}, got {split!r}.")
    classes = read_split_files(splits_dir, fold)
    listings.require_dir(videos_dir, "HMDB51 videos folder", DOWNLOAD_HELP)
    labels = sorted(classes)
    entries, missing = [], []
    for label_index, label in enumerate(labels):
        for video, subset in classes[label]:
            if subset != SPLITS[split]:
                continue
            path = os.path.join(videos_dir, label, video)
            if not tf.io.gfile.exists(path):
                missing.append(path)
                continue
            entries.append(VideoEntry(path, label_index, label, os.path.splitext(video)[0]))
    if not entries:
        raise FileNotFoundError(
            f"None of the {len(missing)} {split} videos of split {fold} listed in "
            f"{splits_dir!r} exist under {videos_dir!r} (e.g. {missing[0] if missing else '?'}). "
            f"{DOWNLOAD_HELP}"
        )
    return SplitListing(entries, labels, missing)
