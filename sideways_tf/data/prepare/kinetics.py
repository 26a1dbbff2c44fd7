"""Kinetics-600: the official train / validate / test annotations over downloaded clips.

Annotations (kinetics600.tar.gz from the DeepMind Kinetics page, extracted):

  <annotations_dir>/train.csv     label,youtube_id,time_start,time_end,split[,is_cc]
  <annotations_dir>/validate.csv  (same columns)
  <annotations_dir>/test.csv      youtube_id,time_start,time_end,split   (no label)

Clips, as the standard download tools name them, anywhere under videos_dir (flat, or
in label folders): <youtube_id>_<time_start:06d>_<time_end:06d>.mp4 (any video
extension). Many YouTube videos have gone; absent clips are counted and reported in
SplitListing.missing. Labels are the sorted class names of train.csv, 0..599.
Pipeline: list_split -> sideways-convert -> dmvr_dataset.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

import tensorflow as tf

from sideways_tf.data.prepare import listings
from sideways_tf.data.prepare.listings import UNLABELLED, SplitListing, VideoEntry

NUM_CLASSES = 600
SPLITS = ("train", "validate", "test")

DOWNLOAD_HELP = (
    "Download the annotations https://storage.googleapis.com/deepmind-media/Datasets/"
    "kinetics600.tar.gz and extract it (gives kinetics600/ with train.csv, validate.csv, "
    "test.csv: pass it as annotations_dir, --annotations); download the clips with a "
    "standard Kinetics downloader (e.g. github.com/cvdfoundation/kinetics-dataset), which "
    "names them <youtube_id>_<time_start:06d>_<time_end:06d>.mp4, flat or in label folders: "
    "pass their root as videos_dir, --videos_dir."
)


def clip_name(youtube_id: str, time_start: int, time_end: int) -> str:
    """The file stem the download tools give a clip."""
    return f"{youtube_id}_{time_start:06d}_{time_end:06d}"


def _read_csv(path: str) -> list[dict[str, str]]:
    listings.require_file(path, "Kinetics-600 annotations", DOWNLOAD_HELP)
    rows = list(csv.DictReader(io.StringIO(listings.read_text(path))))
    needed = {"youtube_id", "time_start", "time_end"}
    if not rows or not needed <= set(rows[0]):
        raise ValueError(
            f"{path!r}: expected a header with label,youtube_id,time_start,time_end,split. Fix: "
            "use the CSV files of kinetics600.tar.gz unchanged."
        )
    return rows


def read_labels(annotations_dir: str) -> list[str]:
    """The class names, sorted, from train.csv."""
    rows = _read_csv(os.path.join(annotations_dir, "train.csv"))
    return sorted({r["label"].strip() for r in rows if (r.get("label") or "").strip()})


def index_clips(videos_dir: str) -> dict[str, str]:
    """{file stem: path} of every video file under videos_dir (recursively)."""
    listings.require_dir(videos_dir, "Kinetics-600 clips folder", DOWNLOAD_HELP)
    clips = {}
    for root, _, files in tf.io.gfile.walk(videos_dir):
        for name in files:
            if listings.is_video_file(name):
                clips.setdefault(os.path.splitext(name)[0], os.path.join(root, name))
    return clips


def list_split(
    videos_dir: str,
    annotations_dir: str,
    split: str = "train",
    labels: Sequence[str] | None = None,
) -> SplitListing:
    """The clips of Kinetics-600 `split` ('train', 'validate' or 'test').

    Args:
      labels: class names in index order; default, the sorted labels of train.csv.
    A label not in `labels` is an error naming the CSV line. Clips named in the CSV but
    absent are returned in SplitListing.missing (as their expected file stems).
    """
    if split not in SPLITS:
        raise ValueError(f"Kinetics-600 split must be one of {SPLITS}, got {split!r}.")
    labels = list(labels) if labels is not None else read_labels(annotations_dir)
    index = {name: i for i, name in enumerate(labels)}
    csv_path = os.path.join(annotations_dir, f"{split}.csv")
    rows = _read_csv(csv_path)
    clips = index_clips(videos_dir)
    entries, missing, seen = [], [], set()
    for line, row in enumerate(rows, start=2):
        label = (row.get("label") or "").strip()
        if label and label not in index:
            raise ValueError(
                f"{csv_path!r} line {line}: unknown label {label!r} (not among the {len(labels)} "
                "classes of train.csv). Fix: use the train.csv and "
                f"{split}.csv of the same Kinetics release, or correct the label."
            )
        try:
            name = clip_name(
                row["youtube_id"].strip(),
                int(float(row["time_start"])),
                int(float(row["time_end"])),
            )
        except ValueError as e:
            raise ValueError(
                f"{csv_path!r} line {line}: time_start/time_end must be numbers, got "
                f"{row['time_start']!r}, {row['time_end']!r}. Fix: correct the line."
            ) from e
        if name in seen:
            continue  # the official CSVs list a few clips twice
        seen.add(name)
        if name not in clips:
            missing.append(name)
            continue
        entries.append(VideoEntry(clips[name], index[label] if label else UNLABELLED, label, name))
    if not entries:
        raise FileNotFoundError(
            f"None of the {len(missing)} clips of {csv_path!r} were found under {videos_dir!r} "
            f"(looked for e.g. {missing[0] if missing else '?'}.mp4). {DOWNLOAD_HELP}"
        )
    return SplitListing(entries, labels, missing)
