"""sideways-convert: real tiny videos -> DMVR shards -> read back."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import tensorflow as tf
from video_files import GOOD_VIDEOS, HEIGHT, WIDTH, frame_colour, write_video

from sideways_tf.data import dmvr
from sideways_tf.data.prepare import convert, decode, listings
from sideways_tf.data.sampling import ClipSampling


def read_back(shards):
    """{video_id: (label, label_string, frames uint8 [T, H, W, 3])} of every record."""
    out = {}
    for serialized in tf.data.TFRecordDataset(shards):
        parsed = dmvr.parse_record(serialized)
        example = tf.train.SequenceExample.FromString(serialized.numpy())
        label_string = example.context.feature[dmvr.LABEL_STRING_KEY].bytes_list.value[0]
        frames = np.stack([tf.io.decode_jpeg(x).numpy() for x in parsed["encoded"]])
        out[parsed["video_id"].numpy().decode()] = (
            int(parsed["label"]),
            label_string.decode(),
            frames,
        )
    return out


def test_convert_round_trip_frames_labels_ids_and_unreadable_report(video_tree, tmp_path):
    videos_dir, good, unreadable = video_tree
    out = str(tmp_path / "records")
    listing = listings.list_class_folders(videos_dir)
    report = convert.convert_videos(
        listing, out, "train", fps=None, short_side=None, num_shards=3, progress=False
    )

    assert listing.labels == ["jump", "run"]
    assert [os.path.basename(s) for s in report.shards] == [
        f"train-0000{i}-of-00003.tfrecord" for i in range(3)
    ]
    assert report.num_records == len(GOOD_VIDEOS)
    assert sorted(p for p, _ in report.unreadable) == unreadable
    records = read_back(report.shards)
    assert set(records) == set(good)
    for video_id, (label, v, num_frames) in good.items():
        label_index, label_string, frames = records[video_id]
        assert (label_index, label_string) == (listing.labels.index(label), label)
        assert frames.shape == (num_frames, HEIGHT, WIDTH, 3)
        # Each frame is one flat colour: R carries the frame index, G the video.
        means = frames.reshape(num_frames, -1, 3).mean(axis=1)
        expected = np.array([frame_colour(t, v) for t in range(num_frames)], np.float32)
        np.testing.assert_allclose(means, expected, atol=8)

    # The unreadable videos are reported next to the shards, in JSON and text.
    lines = open(os.path.join(out, "train-unreadable.txt")).read().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == unreadable
    summary = json.load(open(report.report_path))
    assert summary["num_records"] == len(GOOD_VIDEOS)
    assert summary["num_unreadable"] == 2
    assert sum(s["records"] for s in summary["shards"]) == len(GOOD_VIDEOS)
    assert summary["labels"] == ["jump", "run"]


def test_decode_video_resamples_fps_and_resizes_short_side(tmp_path):
    path = write_video(tmp_path / "v.mp4", "libx264", 8, fps=10)

    def frame_indices(frames):  # R = 16 + 24 t  ->  t
        return [round((f[..., 0].mean() - 16) / 24) for f in frames]

    frames, rate = decode.decode_video(path, fps=5, short_side=16)
    assert rate == 5 and frames.shape == (4, 16, 24, 3)
    assert frame_indices(frames) == [0, 2, 4, 6]
    frames, _ = decode.decode_video(path, fps=20, short_side=None)
    assert frame_indices(frames) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7]
    frames, rate = decode.decode_video(path, fps=None, short_side=64)
    assert rate == 10 and frames.shape == (8, 64, 96, 3)
    assert frame_indices(frames) == list(range(8))


def test_drop_repeats_drops_pulldown_repeats_and_keeps_every_change(tmp_path):
    # Frames 0..9 with frame 3 and frame 7 shown twice (a pulldown): 12 frames, 2 repeats.
    shown = [0, 1, 2, 3, 3, 4, 5, 6, 7, 7, 8, 9]
    path = str(tmp_path / "pulldown.mp4")
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "0"}
        for t in shown:
            image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
            image[...] = frame_colour(t, 0)
            image[: HEIGHT // 2, : WIDTH // 2] = 255 - image[0, 0]  # some structure
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    def frame_indices(frames):  # R = 16 + 24 t, read off the unmarked corner
        return [round((f[-1, -1, 0] - 16) / 24) for f in frames]

    kept, _ = decode.decode_video(path, drop_repeats=50.0)
    assert frame_indices(kept) == list(range(10))
    every, _ = decode.decode_video(path)
    assert frame_indices(every) == shown
    # The resampler's own repeats (24 fps from a 12 fps video) go too.
    assert frame_indices(decode.decode_video(path, fps=24, drop_repeats=50.0)[0]) == list(range(10))
    os.makedirs(tmp_path / "videos" / "all")
    os.replace(path, tmp_path / "videos" / "all" / "pulldown.mp4")
    listing = listings.list_class_folders(str(tmp_path / "videos"))
    out = str(tmp_path / "records")
    kwargs = dict(fps=None, short_side=None, progress=False)
    report = convert.convert_videos(listing, out, "train", drop_repeats=50.0, **kwargs)
    assert report.repeats_dropped == 2
    with open(report.report_path) as f:
        written = json.load(f)
    assert written["repeats_dropped"] == 2 and written["settings"]["drop_repeats"] == 50.0
    ((_, _, frames),) = read_back(report.shards).values()
    assert frame_indices(frames) == list(range(10))
    with pytest.raises(ValueError, match="other settings"):  # resuming without the flag
        convert.convert_videos(listing, out, "train", **kwargs)


def test_truncated_video_with_readable_start_is_reported(tmp_path):
    path = write_video(tmp_path / "v.mkv", "libx264", 10)
    data = open(path, "rb").read()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(decode.UnreadableVideoError, match="truncated|no frames"):
        decode.decode_video(str(cut))


def test_resume_keeps_finished_shards_and_rewrites_the_rest(video_tree, tmp_path):
    videos_dir, _, _ = video_tree
    out = str(tmp_path / "records")
    listing = listings.list_class_folders(videos_dir)
    kwargs = dict(fps=None, short_side=16, num_shards=3, progress=False)
    first = convert.convert_videos(listing, out, "train", **kwargs)
    before = {s: open(s, "rb").read() for s in first.shards}
    stamps = {s: os.stat(s).st_mtime_ns for s in first.shards}
    os.remove(first.shards[1])  # as if the run died while writing shard 1
    with open(first.shards[1] + ".incomplete", "wb") as f:
        f.write(b"half a shard")

    second = convert.convert_videos(listing, out, "train", **kwargs)

    assert (second.written_shards, second.kept_shards) == (1, 2)
    assert {s: open(s, "rb").read() for s in second.shards} == before
    assert os.stat(first.shards[0]).st_mtime_ns == stamps[first.shards[0]]
    assert not os.path.exists(first.shards[1] + ".incomplete")
    assert len(second.unreadable) == 2  # kept shards' failures are still reported

    with pytest.raises(ValueError, match="other settings.*re-run with the flags of the first"):
        convert.convert_videos(listing, out, "train", **{**kwargs, "short_side": 20})
    with pytest.raises(ValueError, match="another sharding.*--num_shards"):
        convert.convert_videos(listing, out, "train", **{**kwargs, "num_shards": 2})


def test_cli_with_worker_processes_matches_in_process_conversion(video_tree, tmp_path):
    videos_dir, _, _ = video_tree
    flags = [f"--videos_dir={videos_dir}", "--split=val", "--fps=10", "--short_side=16"]
    flags += ["--num_shards=2", "--no_progress"]
    assert convert.main([*flags, f"--output_dir={tmp_path / 'a'}", "--workers=2"]) == 0
    assert convert.main([*flags, f"--output_dir={tmp_path / 'b'}", "--workers=1"]) == 0
    for i in range(2):
        name = f"val-0000{i}-of-00002.tfrecord"
        a = open(tmp_path / "a" / name, "rb").read()
        assert len(a) > 1000 and a == open(tmp_path / "b" / name, "rb").read()
    lines = open(tmp_path / "a" / "val-unreadable.txt").read().splitlines()
    assert len(lines) == 2


def test_csv_source_with_labels_file_and_missing_videos(video_tree, tmp_path):
    videos_dir, good, _ = video_tree
    labels = tmp_path / "labels.txt"
    labels.write_text("run\njump\nswim\n")
    table = tmp_path / "list.csv"
    table.write_text(
        "path,label,video_id\n"
        "jump/v0.mp4,jump,clip_a\n"
        f"{videos_dir}/run/v3.avi,run,clip_b\n"
        "jump/gone.mp4,jump,clip_c\n"
    )
    listing = listings.list_csv(str(table), videos_dir, listings.read_labels_file(str(labels)))
    assert [(e.video_id, e.label_index, e.label_string) for e in listing.entries] == [
        ("clip_a", 1, "jump"),
        ("clip_b", 0, "run"),
    ]
    assert listing.missing == [os.path.join(videos_dir, "jump/gone.mp4")]
    report = convert.convert_videos(
        listing, str(tmp_path / "out"), "train", num_shards=1, progress=False
    )
    assert sorted(read_back(report.shards)) == ["clip_a", "clip_b"]
    text = open(tmp_path / "out" / "train-unreadable.txt").read()
    assert "gone.mp4\tmissing" in text


def test_clear_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(SystemExit, match=r"sideways-convert: Videos folder.*nowhere.*--videos_dir"):
        convert.main([f"--videos_dir={tmp_path / 'nowhere'}", "--output_dir=x", "--split=t"])
    with pytest.raises(
        SystemExit,
        match=r"HMDB51 split files folder not found.*test_train_splits.rar.*--annotations",
    ):
        convert.main(
            [
                "--dataset=hmdb51",
                f"--videos_dir={tmp_path}",
                f"--annotations={tmp_path / 'no_splits'}",
                "--output_dir=x",
                "--split=train",
            ]
        )
    table = tmp_path / "list.csv"
    table.write_text("path,label\na.mp4,jump\nb.mp4,jumpp\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("jump\n")
    with pytest.raises(ValueError, match=r"list.csv' line 3: unknown label 'jumpp'.*Fix"):
        listings.list_csv(str(table), labels=listings.read_labels_file(str(labels)))
    with pytest.raises(FileNotFoundError, match=r"missing.csv.*--csv"):
        listings.list_csv(str(tmp_path / "missing.csv"))


def test_non_local_filesystems_through_gfile(tmp_path):
    # TF's in-memory filesystem stands in for gs://: the same tf.io.gfile code paths.
    root = f"ram://{tmp_path.name}"
    local = write_video(tmp_path / "v.avi", "mjpeg", 5, v=2, pix_fmt="yuvj420p")
    tf.io.gfile.makedirs(f"{root}/videos/wave")
    tf.io.gfile.copy(local, f"{root}/videos/wave/v.avi")
    listing = listings.list_class_folders(f"{root}/videos")
    report = convert.convert_videos(listing, f"{root}/out", "train", num_shards=1, progress=False)
    assert report.num_records == 1 and report.shards[0].startswith("ram://")
    ds = dmvr.dmvr_dataset(
        f"{root}/out/train-*-of-*.tfrecord",
        False,
        sampling=ClipSampling(num_frames=5, image_size=8),
    )
    (element,) = list(ds.as_numpy_iterator())
    assert int(element["label"]) == 0 and element["frames"].shape == (5, 8, 8, 3)


# --- reliability: partial videos, nested folders and shared names, worker lifetime -------


def test_partial_video_is_stored_and_reported_with_its_frame_counts(video_tree, tmp_path):
    videos_dir, good, _ = video_tree
    whole = write_video(tmp_path / "whole.mkv", "libx264", 60)
    data = open(whole, "rb").read()
    cut = os.path.join(videos_dir, "run", "cut.mkv")
    open(cut, "wb").write(data[: len(data) * 9 // 10])  # the container still says 60 frames

    listing = listings.list_class_folders(videos_dir)
    report = convert.convert_videos(
        listing, str(tmp_path / "out"), "train", fps=None, short_side=None, progress=False
    )

    ((path, decoded, expected),) = report.partial  # the intact videos are not partial
    assert path == cut and expected == 60 and 45 <= decoded < 60
    assert read_back(report.shards)["cut"][2].shape[0] == decoded  # stored as decoded
    summary = json.load(open(report.report_path))
    assert summary["num_partial"] == 1
    assert summary["partial"] == [
        {"path": cut, "video_id": "cut", "decoded_frames": decoded, "expected_frames": 60}
    ]
    assert summary["num_records"] == len(good) + 1


def test_nested_folders_are_included_and_shared_names_get_their_path_as_id(tmp_path, caplog):
    root = tmp_path / "videos"
    layout = ["jump/a.mp4", "run/a.mp4", "jump/day1/b.avi", "jump/c.avi", "jump/c.mkv", "d.mp4"]
    for v, relative in enumerate(layout):
        os.makedirs((root / relative).parent, exist_ok=True)
        write_video(root / relative, "mjpeg", 2, v=v % 6, pix_fmt="yuvj420p")

    with caplog.at_level(logging.WARNING, logger="sideways_tf.data.prepare.listings"):
        listing = listings.list_class_folders(str(root))
    ids = {e.video_id: (e.label_string, os.path.relpath(e.path, root)) for e in listing.entries}
    assert ids == {
        "jump/a.mp4": ("jump", "jump/a.mp4"),
        "run/a.mp4": ("run", "run/a.mp4"),
        "day1/b": ("jump", "jump/day1/b.avi"),
        "jump/c.avi": ("jump", "jump/c.avi"),
        "jump/c.mkv": ("jump", "jump/c.mkv"),
    }
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "4 videos share an id" in warned and "1 video files directly in" in warned
    report = convert.convert_videos(listing, str(tmp_path / "out"), "t", progress=False)
    assert sorted(read_back(report.shards)) == sorted(ids)


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_pids(pid):
    """Live processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, ...
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def alive(pid):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has ended


def wait_until(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} after {seconds} s"
        time.sleep(0.1)


def _sigint_as_at_a_terminal():
    """In the child: SIGINT unblocked and at its default, as a shell gives a command.

    A test runner's worker may run with SIGINT ignored or blocked (pytest-xdist's
    workers leave Ctrl-C to the controller), and a child inherits both through exec:
    Python then installs no KeyboardInterrupt handler and the converter never sees
    the Ctrl-C this test sends.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def converter_blocked_on_a_pipe(tmp_path):
    """A `sideways-convert --workers=2` process, one of its workers stuck reading a video.

    The video is a named pipe: a worker opening it blocks until the test writes, so the
    conversion is reliably in progress. Yields (process, worker pids, stderr file); cleans
    up. Output goes to files: orphaned workers would hold pipes open.
    """
    videos = tmp_path / "videos" / "jump"
    os.makedirs(videos)
    write_video(videos / "a.avi", "mjpeg", 2, pix_fmt="yuvj420p")
    os.mkfifo(videos / "stuck.mp4")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable,
        "-m",
        "sideways_tf.data.prepare.convert",
        "--workers=2",
        "--no_progress",
    ]
    command += [f"--videos_dir={videos.parent}", f"--output_dir={tmp_path / 'out'}", "--split=t"]
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "wb") as err:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=err,
            stderr=err,
            start_new_session=True,
            preexec_fn=_sigint_as_at_a_terminal,
        )
    pipe, workers = [], []

    def a_worker_reads_the_pipe():
        try:
            pipe.append(os.open(videos / "stuck.mp4", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: no reader yet
            assert process.poll() is None, stderr.read_text()[-2000:]
            return False
        return True

    try:
        wait_until(a_worker_reads_the_pipe, 180, "no worker opened the video")
        workers += child_pids(process.pid)
        assert len(workers) >= 2  # the decoding processes (and multiprocessing's tracker)
        yield process, workers, stderr
    finally:
        for pid in [process.pid, *workers]:
            if alive(pid):  # a failed test leaves them
                os.kill(pid, signal.SIGKILL)
        process.wait()
        for fd in pipe:
            os.close(fd)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_converter_ends_its_worker_processes(converter_blocked_on_a_pipe):
    process, workers, _ = converter_blocked_on_a_pipe
    process.send_signal(signal.SIGKILL)
    process.wait()
    wait_until(lambda: not any(alive(p) for p in workers), 5, "workers still alive")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_exits_130_with_the_resume_command_and_no_traceback(converter_blocked_on_a_pipe):
    process, workers, stderr = converter_blocked_on_a_pipe
    os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C does: the whole process group
    process.wait(timeout=60)
    stderr = stderr.read_text()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert "interrupted. Completed shards are kept; to resume, run the same command" in stderr
    assert "sideways-convert --workers=2 --no_progress --videos_dir=" in stderr
    wait_until(lambda: not any(alive(p) for p in workers), 5, "workers still alive")
