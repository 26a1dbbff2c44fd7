"""`sideways-convert`: videos -> sharded DMVR records (data/dmvr.py), in parallel and resumable.

  sideways-convert --videos_dir=videos/ --output_dir=records/ --split=train \\
      --fps=25 --short_side=256 --workers=8

Each video is decoded with PyAV (decode.py), resampled to `fps` (nearest frame in time; None keeps
the source rate) with its short side resized to `short_side`, JPEG-encoded frame by
frame and written as one SequenceExample. Videos are shuffled with a fixed seed (so
shards mix classes) and cut into shards.

Output, in --output_dir:
  <split>-00000-of-000NN.tfrecord   the shards
  <split>-report.json               counts, records per shard, labels, unreadable,
                                    partial, missing
  <split>-unreadable.txt            one line per skipped video: path<TAB>reason
  _shards_meta/<shard>.json         per-shard record of what went in (for resuming), and
                                    the frames stored per record (the reader's length check)

Resuming: a shard is written to `<shard>.incomplete` and renamed when complete, so a
re-run with the same flags keeps finished shards and redoes the rest. Ctrl-C stops
the run (exit status 130) and prints the command that resumes it.

Damaged videos are never fatal. Unreadable ones (corrupt, no video stream, or fewer
than 75% of the frames their container announces) are skipped and listed; partial ones
(at least 75%, but fewer than announced: typically a file cut short) are stored with the
frames that decode and reported with both frame counts under "partial".

Worker processes (--workers > 1) end with the converter, also when it is killed.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import ctypes
import itertools
import json
import logging
import math
import multiprocessing
import os
import random
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import tensorflow as tf
import tqdm

from sideways_tf.data import dmvr
from sideways_tf.data.prepare import hmdb51, kinetics, listings, ucf101
from sideways_tf.data.prepare.decode import FrameCounts, UnreadableVideoError, decode_to_jpegs
from sideways_tf.data.prepare.listings import SplitListing, VideoEntry

logger = logging.getLogger(__name__)

META_DIR = "_shards_meta"
_PARENT_POLL_SECONDS = 0.5  # how often a worker checks that the converter is still alive
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal for when the parent dies


class ConversionReport(NamedTuple):
    shards: list[str]  # all shard paths of the split
    num_records: int  # videos written, over all shards
    written_shards: int  # shards written by this run
    kept_shards: int  # shards found complete and kept
    unreadable: list[tuple[str, str]]  # (path, reason), over all shards
    missing: list[str]  # listed in the annotations, absent on disk
    partial: list[tuple[str, int, int]]  # (path, frames decoded, frames announced), stored
    report_path: str
    repeats_dropped: int = 0  # frames dropped as repeats (drop_repeats), over all shards


def video_record(
    entry: VideoEntry,
    fps: float | None,
    short_side: int | None,
    jpeg_quality: int = 90,
    drop_repeats: float | None = None,
) -> tuple[bytes, FrameCounts, int]:
    """One video as a serialized DMVR SequenceExample, its source frame counts, frames stored.

    Raises:
      UnreadableVideoError.
    """
    jpegs, rate, counts = decode_to_jpegs(entry.path, fps, short_side, jpeg_quality, drop_repeats)
    example = dmvr.make_sequence_example(
        jpegs,
        entry.label_index,
        entry.label_string,
        entry.video_id,
        frame_rate=rate,
        data_path=entry.path,
    )
    serialized = example.SerializeToString(deterministic=True)  # same bytes in any process
    return serialized, counts, len(jpegs)


def _record_or_error(task) -> tuple[bytes | None, FrameCounts | str, int]:
    """Worker: (serialized record, frame counts, frames stored) or (None, why unreadable, 0)."""
    entry, fps, short_side, quality, drop_repeats = task
    try:
        return video_record(entry, fps, short_side, quality, drop_repeats)
    except UnreadableVideoError as e:
        return None, str(e), 0


def _ordered_map(fn, items: Iterable, workers: int) -> Iterator:
    """map(fn, items) in order; with workers > 1 in spawned processes, a bounded window ahead.

    The worker processes end with this process (killed included), ignore Ctrl-C (the
    parent handles it), and are killed when the map stops early (an error, Ctrl-C, or the
    consumer closing the generator) instead of finishing the videos they hold.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("spawn")  # fork after TF starts threads can deadlock
    others = set(multiprocessing.active_children())
    items = iter(items)
    with _sigint_ignored():  # inherited by the workers, spawned by the first submits
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)
        )
        window = collections.deque(
            (item, pool.submit(fn, item)) for item in itertools.islice(items, 4 * workers)
        )
    try:
        while window:
            item, future = window.popleft()
            try:
                result = _result_interruptibly(future)
            except concurrent.futures.process.BrokenProcessPool as e:
                raise RuntimeError(
                    f"A converter worker process died while decoding {item[0].path!r}. Fix: "
                    "re-run the same command (completed shards are kept); if it happens "
                    "again, move that file out of the dataset."
                ) from e
            for nxt in itertools.islice(items, 1):
                window.append((nxt, pool.submit(fn, nxt)))
            yield result
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in set(multiprocessing.active_children()) - others:
            process.kill()
        raise
    finally:
        pool.shutdown(wait=True)  # at once after the kill above


def _result_interruptibly(future: concurrent.futures.Future):
    """future.result(), in short timed waits: Ctrl-C is handled within one of them.

    An untimed wait blocks the main thread in a lock that only a signal delivered to the
    main thread itself interrupts; with TensorFlow's threads in the process the kernel
    may deliver SIGINT to another thread, and the wait (and Ctrl-C) would hang.
    """
    while True:
        try:
            return future.result(timeout=_PARENT_POLL_SECONDS)
        except concurrent.futures.TimeoutError:
            continue


@contextlib.contextmanager
def _sigint_ignored():
    """Ignores SIGINT inside the block (main thread only; elsewhere, a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _init_worker(parent_pid: int) -> None:
    """Runs first in each worker process: no Ctrl-C, and no life after the converter's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        # The kernel kills this process when its parent dies, even by SIGKILL.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)
    # Elsewhere (and as a fallback), a thread notices the parent is gone: re-parenting
    # changes getppid().
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


def _write_json(path: str, obj) -> None:
    tmp = path + ".incomplete"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _read_json(path: str):
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def _assign_shards(
    entries: Sequence[VideoEntry], num_shards: int, seed: int
) -> list[list[VideoEntry]]:
    order = list(entries)
    random.Random(seed).shuffle(order)
    n = len(order)
    return [order[i * n // num_shards : (i + 1) * n // num_shards] for i in range(num_shards)]


def convert_videos(
    listing: SplitListing,
    output_dir: str,
    split: str,
    *,
    fps: float | None = 25.0,
    short_side: int | None = 256,
    num_shards: int | None = None,
    videos_per_shard: int = 100,
    workers: int = 1,
    jpeg_quality: int = 90,
    seed: int = 0,
    progress: bool = True,
    drop_repeats: float | None = None,
) -> ConversionReport:
    """Writes the videos of `listing` as DMVR shards `<output_dir>/<split>-*-of-*.tfrecord`.

    Args:
      num_shards: default ceil(#videos / videos_per_shard).
      workers: decoding processes (1: in this process).
      seed: shuffles videos across shards; keep it (and the other flags) when resuming.
      drop_repeats: drop a frame whose PSNR against the frame kept before it exceeds this
        many dB (decode.decode_video); None keeps every frame. The report counts them.
    Returns:
      A ConversionReport; the same facts are written to <split>-report.json and
      <split>-unreadable.txt.
    """
    entries = listing.entries
    if not entries:
        raise ValueError(
            f"No videos to convert for split {split!r}"
            + (f" ({len(listing.missing)} listed but missing on disk)" if listing.missing else "")
            + ". Fix: check --videos_dir and the annotations."
        )
    if num_shards is None:
        num_shards = math.ceil(len(entries) / videos_per_shard)
    if not 1 <= num_shards <= len(entries):
        raise ValueError(
            f"num_shards={num_shards} for {len(entries)} videos. Fix: choose 1..{len(entries)}."
        )
    settings = dict(fps=fps, short_side=short_side, jpeg_quality=jpeg_quality, seed=seed)
    if drop_repeats is not None:  # (absent otherwise: shards of earlier runs still resume)
        settings["drop_repeats"] = float(drop_repeats)
    tf.io.gfile.makedirs(os.path.join(output_dir, META_DIR))
    names = [dmvr.shard_name(split, i, num_shards) for i in range(num_shards)]
    _check_no_foreign_shards(output_dir, split, names)
    assignment = _assign_shards(entries, num_shards, seed)

    pending, metas = [], {}
    for name, shard in zip(names, assignment):
        meta_path = os.path.join(output_dir, META_DIR, name + ".json")
        if tf.io.gfile.exists(os.path.join(output_dir, name)) and tf.io.gfile.exists(meta_path):
            meta = _read_json(meta_path)
            if meta["settings"] != settings or meta["paths"] != [e.path for e in shard]:
                raise ValueError(
                    f"{os.path.join(output_dir, name)!r} was written with other settings or "
                    f"videos ({meta['settings']}) than this run ({settings}). Fix: re-run "
                    "with the flags of the first run, or use a new --output_dir."
                )
            metas[name] = meta
        else:
            pending.append((name, shard))

    total = sum(len(shard) for _, shard in pending)
    tasks = (
        (e, fps, short_side, jpeg_quality, drop_repeats) for _, shard in pending for e in shard
    )
    results = _ordered_map(_record_or_error, tasks, workers)
    failed = [0]  # unreadable videos so far, shown on the progress bar
    try:
        with tqdm.tqdm(total=total, unit="video", desc=f"{split}", disable=not progress) as bar:
            for name, shard in pending:
                metas[name] = _write_shard(output_dir, name, shard, results, settings, bar, failed)
    finally:
        results.close()  # after an error or Ctrl-C: stops the workers now

    unreadable = [(u["path"], u["reason"]) for n in names for u in metas[n]["unreadable"]]
    partial = [p for n in names for p in metas[n].get("partial", [])]  # older runs: no key
    report_path = os.path.join(output_dir, f"{split}-report.json")
    _write_json(
        report_path,
        {
            "split": split,
            "num_listed": len(entries) + len(listing.missing),
            "num_records": sum(metas[n]["records"] for n in names),
            "num_unreadable": len(unreadable),
            "num_partial": len(partial),
            "num_missing": len(listing.missing),
            "repeats_dropped": sum(metas[n].get("repeats_dropped", 0) for n in names),
            "settings": settings,
            "labels": list(listing.labels),
            "shards": [{"name": n, "records": metas[n]["records"]} for n in names],
            "unreadable": [{"path": p, "reason": r} for p, r in unreadable],
            "partial": partial,  # stored with the frames that decode
            "missing": list(listing.missing),
        },
    )
    with tf.io.gfile.GFile(os.path.join(output_dir, f"{split}-unreadable.txt"), "w") as f:
        for path, reason in unreadable:
            f.write(f"{path}\t{reason}\n")
        for path in listing.missing:
            f.write(f"{path}\tmissing: listed in the annotations, not found on disk\n")
    if unreadable:
        logger.warning(
            "%d of %d videos were unreadable and skipped; listed in %s",
            len(unreadable),
            len(entries),
            os.path.join(output_dir, f"{split}-unreadable.txt"),
        )
    if partial:
        logger.warning(
            "%d of %d videos decoded fewer frames than their container announces (e.g. %s: "
            "%d of %d) and were stored with the frames that decode; listed under 'partial' "
            "in %s. Fix: re-download or re-encode them, if the missing frames matter.",
            len(partial),
            len(entries),
            partial[0]["path"],
            partial[0]["decoded_frames"],
            partial[0]["expected_frames"],
            report_path,
        )
    return ConversionReport(
        shards=[os.path.join(output_dir, n) for n in names],
        num_records=sum(metas[n]["records"] for n in names),
        written_shards=len(pending),
        kept_shards=num_shards - len(pending),
        unreadable=unreadable,
        missing=list(listing.missing),
        partial=[(p["path"], p["decoded_frames"], p["expected_frames"]) for p in partial],
        report_path=report_path,
        repeats_dropped=sum(metas[n].get("repeats_dropped", 0) for n in names),
    )


def _check_no_foreign_shards(output_dir: str, split: str, names: Sequence[str]) -> None:
    pattern = os.path.join(output_dir, f"{split}-*-of-*{dmvr.SHARD_SUFFIX}")
    foreign = sorted(
        os.path.basename(p) for p in tf.io.gfile.glob(pattern) if os.path.basename(p) not in names
    )
    if foreign:
        raise ValueError(
            f"{output_dir!r} already holds {split} shards of another sharding ({foreign[0]}, "
            f"...; this run writes {names[0]}). Fix: re-run with the first run's "
            "--num_shards/--videos_per_shard, or delete those shards, or use a new --output_dir."
        )


def _write_shard(output_dir, name, shard, results, settings, bar, failed) -> dict:
    """Writes one shard from the next len(shard) results; temp file, then rename."""
    final = os.path.join(output_dir, name)
    tmp = final + ".incomplete"
    unreadable, partial, records, frames, repeats = [], [], 0, [], 0
    with tf.io.TFRecordWriter(tmp) as writer:
        for entry in shard:
            record, counts, stored = next(results)  # counts: FrameCounts, or why unreadable
            if record is None:
                unreadable.append({"path": entry.path, "reason": counts})
                failed[0] += 1
                bar.set_postfix(unreadable=failed[0], refresh=False)
            else:
                writer.write(record)
                records += 1
                frames.append(stored)
                repeats += counts.repeats
                if counts.partial:
                    partial.append(
                        {
                            "path": entry.path,
                            "video_id": entry.video_id,
                            "decoded_frames": counts.decoded,
                            "expected_frames": counts.expected,
                        }
                    )
            bar.update(1)
    meta = {
        "settings": settings,
        "records": records,
        "paths": [e.path for e in shard],
        "unreadable": unreadable,
        "partial": partial,
        "frames": frames,  # frames stored per record, in record order (readers check clips)
        "repeats_dropped": repeats,
    }
    _write_json(os.path.join(output_dir, META_DIR, name + ".json"), meta)
    tf.io.gfile.rename(tmp, final, overwrite=True)
    return meta


# --- command line -------------------------------------------------------------------------

_DATASETS = ("folder", "csv", "ucf101", "hmdb51", "kinetics600")


def listing_from_flags(args: argparse.Namespace) -> SplitListing:
    """The SplitListing that the command-line flags describe."""
    dataset = args.dataset or ("csv" if args.csv else "folder")
    if dataset in ("ucf101", "hmdb51", "kinetics600") and not (
        args.videos_dir and args.annotations
    ):
        raise SystemExit(f"--dataset={dataset} needs --videos_dir and --annotations.")
    if dataset == "csv":
        if not args.csv:
            raise SystemExit("--dataset=csv needs --csv=<file with header path,label>.")
        labels = listings.read_labels_file(args.labels) if args.labels else None
        return listings.list_csv(args.csv, args.videos_dir, labels)
    if dataset == "folder":
        if not args.videos_dir:
            raise SystemExit("Give --videos_dir (class folders), --csv, or --dataset.")
        labels = listings.read_labels_file(args.labels) if args.labels else None
        return listings.list_class_folders(args.videos_dir, labels)
    if dataset == "ucf101":
        return ucf101.list_split(args.videos_dir, args.annotations, args.split, args.fold)
    if dataset == "hmdb51":
        return hmdb51.list_split(args.videos_dir, args.annotations, args.split, args.fold)
    return kinetics.list_split(args.videos_dir, args.annotations, args.split)


def _optional_number(kind):
    return lambda s: None if s.lower() in ("none", "native", "") else kind(s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sideways-convert",
        description="Convert videos to sharded DMVR TFRecords (resumable; unreadable videos "
        "are skipped and listed in <split>-unreadable.txt).",
    )
    p.add_argument("--output_dir", required=True, help="where the shards go (local or gs://)")
    p.add_argument(
        "--split", required=True, help="split name: the shard prefix, and for --dataset the split"
    )
    p.add_argument(
        "--dataset",
        choices=_DATASETS,
        help="layout of the sources (default: csv with --csv, else folder)",
    )
    p.add_argument("--videos_dir", help="class folders; or where CSV / dataset paths start")
    p.add_argument("--csv", help="CSV with header path,label[,video_id]")
    p.add_argument(
        "--annotations",
        help="ucf101: ucfTrainTestlist/; hmdb51: testTrainMulti_7030_splits/; "
        "kinetics600: folder with train.csv, validate.csv, test.csv",
    )
    p.add_argument("--fold", type=int, default=1, help="ucf101/hmdb51 official split 1, 2 or 3")
    p.add_argument("--labels", help="class names one a line, in index order (folder, csv)")
    p.add_argument(
        "--fps", type=_optional_number(float), default=25.0, help="output frame rate, or none"
    )
    p.add_argument(
        "--short_side", type=_optional_number(int), default=256, help="resize short side, or none"
    )
    p.add_argument(
        "--drop_repeats",
        type=_optional_number(float),
        default=None,
        help="drop a frame that repeats the frame kept before it: PSNR above this many dB, "
        "e.g. 55 (pulldown from 24 to 25 fps, frozen frames: a future frame without motion "
        "that copying the last frame predicts exactly); none (default) keeps every frame",
    )
    p.add_argument("--num_shards", type=int, help="default: ceil(#videos / videos_per_shard)")
    p.add_argument("--videos_per_shard", type=int, default=100)
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="decoding processes (each imports TensorFlow; default min(8, CPUs))",
    )
    p.add_argument("--jpeg_quality", type=int, default=90)
    p.add_argument("--seed", type=int, default=0, help="shuffles videos across shards")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # also quiets the worker processes
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        report = _convert_from_flags(args)
    except (FileNotFoundError, ValueError) as e:  # bad paths, layouts, labels: no traceback
        raise SystemExit(f"sideways-convert: {e}") from e
    except KeyboardInterrupt:
        print(
            "\nsideways-convert: interrupted. Completed shards are kept; to resume, run the "
            f"same command again:\n  {shlex.join(['sideways-convert', *argv])}",
            file=sys.stderr,
        )
        return 130  # 128 + SIGINT, as a shell reports Ctrl-C
    print(
        f"{report.num_records} videos in {len(report.shards)} shards "
        f"({report.written_shards} written, {report.kept_shards} kept); "
        + (f"{report.repeats_dropped} repeated frames dropped; " if report.repeats_dropped else "")
        + f"{len(report.unreadable)} unreadable, {len(report.partial)} partial (stored with "
        f"fewer frames than announced), {len(report.missing)} missing. "
        f"Report: {report.report_path}",
        file=sys.stderr,
    )
    return 0


def _convert_from_flags(args: argparse.Namespace) -> ConversionReport:
    listing = listing_from_flags(args)
    if listing.missing:
        logger.warning(
            "%d videos listed in the annotations are missing on disk (listed in the report).",
            len(listing.missing),
        )
    return convert_videos(
        listing,
        args.output_dir,
        args.split,
        fps=args.fps,
        short_side=args.short_side,
        num_shards=args.num_shards,
        videos_per_shard=args.videos_per_shard,
        workers=args.workers,
        jpeg_quality=args.jpeg_quality,
        seed=args.seed,
        progress=not args.no_progress,
        drop_repeats=args.drop_repeats,
    )


if __name__ == "__main__":
    sys.exit(main())
