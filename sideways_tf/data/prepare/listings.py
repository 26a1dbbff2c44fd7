"""What a split holds: the videos (path, label, id) that the converter turns into records.

A `SplitListing` is what every dataset module (ucf101, hmdb51, kinetics) and the two
generic layouts here produce, and what `convert.convert_videos` consumes:

  class folders   <videos_dir>/<label>/[<sub>/...]<video>.<ext>   `list_class_folders`
  a CSV file      path,label[,video_id] (header row)        `list_csv`

Paths may be local or gs:// (everything goes through tf.io.gfile).
"""

from __future__ import annotations

import collections
import csv
import io
import logging
import os
from collections.abc import Sequence
from typing import NamedTuple

import tensorflow as tf

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".flv")

UNLABELLED = -1  # label_index of a video without a label (e.g. the Kinetics test split)

logger = logging.getLogger(__name__)


class VideoEntry(NamedTuple):
    """One source video of a split."""

    path: str  # local or gs:// path of the video file
    label_index: int  # index into SplitListing.labels, or UNLABELLED
    label_string: str  # class name, "" when unlabelled
    video_id: str  # unique within the split (file stem, or Kinetics clip name)


class SplitListing(NamedTuple):
    """The videos of one split, the class names, and what the annotations list but is absent."""

    entries: list[VideoEntry]
    labels: list[str]  # class names; labels[i] is the name of label_index i
    missing: list[str]  # annotated videos not found on disk (counted and reported, not fatal)


def is_video_file(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def require_dir(path: str, what: str, fix: str) -> None:
    """Raises FileNotFoundError naming `path` and the fix when it is not a directory."""
    if not tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path!r} is not a directory. {fix}")


def require_file(path: str, what: str, fix: str) -> None:
    """Raises FileNotFoundError naming `path` and the fix when it does not exist."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{what} not found: {path!r} does not exist. {fix}")


def read_text(path: str) -> str:
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def list_class_folders(videos_dir: str, labels: Sequence[str] | None = None) -> SplitListing:
    """Lists <videos_dir>/<label>/<video>.<ext>; labels are the sorted folder names.

    Videos in nested folders of a class folder belong to that class. A video's id is its
    path in the class folder without the extension: "clip" for <label>/clip.mp4,
    "day1/clip" for <label>/day1/clip.mp4. Where that id would be shared (the same name
    in two class folders, or clip.mp4 next to clip.avi), each of those videos gets its
    path under videos_dir instead, extension included ("jump/clip.mp4", "run/clip.mp4"),
    and a warning says so. Video files directly in videos_dir have no class: they are
    left out, with a warning.

    Args:
      videos_dir: a folder with one sub-folder of videos per class.
      labels: the class names in index order; default, the sorted sub-folder names. A
        sub-folder not in `labels` is an error (it would otherwise be silently dropped).
    """
    require_dir(
        videos_dir,
        "Videos folder",
        "Pass --videos_dir=<folder with one sub-folder of videos per class>.",
    )
    folders = sorted(
        d.rstrip("/")
        for d in tf.io.gfile.listdir(videos_dir)
        if tf.io.gfile.isdir(os.path.join(videos_dir, d))
    )
    if labels is None:
        labels = folders
    labels = list(labels)
    index = {name: i for i, name in enumerate(labels)}
    unknown = [d for d in folders if d not in index]
    if unknown:
        raise ValueError(
            f"{videos_dir!r}: class folders {unknown[:5]} are not in the label list. "
            "Fix: add them to the labels file, or remove the folders."
        )
    entries = []
    for label in folders:
        folder = os.path.join(videos_dir, label)
        for relative in _video_files_under(folder):
            path = os.path.join(folder, relative)
            video_id = os.path.splitext(relative)[0]
            entries.append(VideoEntry(path, index[label], label, video_id))
    entries = _unique_folder_ids(entries, videos_dir)
    loose = [n for n in tf.io.gfile.listdir(videos_dir) if is_video_file(n.rstrip("/"))]
    if loose:
        logger.warning(
            "%d video files directly in %s (e.g. %s) are in no class folder and are left "
            "out. Fix: move them into <videos_dir>/<class>/.",
            len(loose),
            videos_dir,
            loose[0],
        )
    if not entries:
        raise FileNotFoundError(
            f"No videos ({', '.join(VIDEO_EXTENSIONS)}) found under {videos_dir!r}. Fix: point "
            "--videos_dir at a folder laid out as <videos_dir>/<class>/<video>.mp4."
        )
    return SplitListing(entries, labels, [])


def _video_files_under(folder: str) -> list[str]:
    """Paths of the video files under `folder`, at any depth, relative to it ('/'), sorted."""
    found = []
    for directory, _, files in tf.io.gfile.walk(folder):
        prefix = directory[len(folder) :].strip("/")
        found += [f"{prefix}/{f}" if prefix else f for f in files if is_video_file(f)]
    return sorted(found)


def _unique_folder_ids(entries: list[VideoEntry], videos_dir: str) -> list[VideoEntry]:
    """Videos whose id is shared get their path under videos_dir as id (see list_class_folders)."""
    counts = collections.Counter(e.video_id for e in entries)
    shared = [e for e in entries if counts[e.video_id] > 1]
    if not shared:
        return entries
    logger.warning(
        "%d videos share an id (a file name without extension) with another, e.g. %s; "
        "their ids are their paths under %s instead (e.g. %r).",
        len(shared),
        shared[0].path,
        videos_dir,
        _path_under(shared[0].path, videos_dir),
    )
    entries = [
        e._replace(video_id=_path_under(e.path, videos_dir)) if counts[e.video_id] > 1 else e
        for e in entries
    ]
    check_unique_ids(entries, videos_dir)  # e.g. 'run/a.mp4' against jump/run/a.mp4.avi
    return entries


def _path_under(path: str, root: str) -> str:
    return path[len(root) :].strip("/")


def read_labels_file(path: str) -> list[str]:
    """Reads class names, one a line, in index order (blank lines ignored)."""
    require_file(path, "Labels file", "Pass --labels=<text file with one class name a line>.")
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def list_csv(
    csv_path: str, videos_dir: str | None = None, labels: Sequence[str] | None = None
) -> SplitListing:
    """Lists the videos of a CSV with header `path,label[,video_id]`.

    Args:
      csv_path: the CSV. `path` is absolute, or relative to `videos_dir` (default: the
        CSV's folder). An empty `label` means unlabelled.
      videos_dir: where relative paths start.
      labels: the class names in index order; default, the sorted labels of the CSV. A
        label not in `labels` is an error naming the line.
    Missing files are listed in SplitListing.missing.
    """
    require_file(csv_path, "CSV file", "Pass --csv=<file with header path,label[,video_id]>.")
    rows = list(csv.DictReader(io.StringIO(read_text(csv_path))))
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise ValueError(
            f"{csv_path!r}: expected a header row with columns path,label[,video_id]. "
            "Fix: add the header line `path,label` at the top of the file."
        )
    root = videos_dir if videos_dir is not None else os.path.dirname(csv_path)
    if labels is None:
        labels = sorted({r["label"].strip() for r in rows if (r["label"] or "").strip()})
    labels = list(labels)
    index = {name: i for i, name in enumerate(labels)}
    entries, missing = [], []
    for line, row in enumerate(rows, start=2):
        label = (row["label"] or "").strip()
        if label and label not in index:
            raise ValueError(
                f"{csv_path!r} line {line}: unknown label {label!r} (not in the {len(labels)} "
                "labels given). Fix: correct the label, or add it to the labels file."
            )
        path = row["path"].strip()
        if "://" not in path and not os.path.isabs(path):
            path = os.path.join(root, path)
        video_id = (row.get("video_id") or "").strip() or os.path.splitext(os.path.basename(path))[
            0
        ]
        if not tf.io.gfile.exists(path):
            missing.append(path)
            continue
        entries.append(VideoEntry(path, index[label] if label else UNLABELLED, label, video_id))
    check_unique_ids(entries, csv_path)
    return SplitListing(entries, labels, missing)


def check_unique_ids(entries: Sequence[VideoEntry], source: str) -> None:
    seen: dict[str, str] = {}
    for e in entries:
        if e.video_id in seen:
            raise ValueError(
                f"{source!r}: video id {e.video_id!r} is used by both {seen[e.video_id]!r} and "
                f"{e.path!r}. Fix: give each video a unique video_id."
            )
        seen[e.video_id] = e.path
