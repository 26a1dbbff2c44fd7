"""Fixtures of the data tests: a tree of tiny real videos (see video_files.py)."""

import os

import pytest
from video_files import GOOD_VIDEOS, write_video


@pytest.fixture
def video_tree(tmp_path):
    """<tmp>/videos/<class>/<video>: the GOOD_VIDEOS, a truncated mp4 and a junk .avi.

    Returns (videos_dir, {video_id: (class, v, frames)}, [unreadable paths]).
    """
    root = tmp_path / "videos"
    good = {}
    for v, (label, name, codec, pix_fmt, frames) in enumerate(GOOD_VIDEOS):
        os.makedirs(root / label, exist_ok=True)
        write_video(root / label / name, codec, frames, v=v, pix_fmt=pix_fmt)
        good[os.path.splitext(name)[0]] = (label, v, frames)
    whole = write_video(tmp_path / "whole.mp4", "libx264", 8)
    data = open(whole, "rb").read()
    truncated = root / "jump" / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    junk = root / "run" / "junk.avi"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00AVI not really a video" * 20)
    return str(root), good, sorted([str(truncated), str(junk)])
