"""DMVR-compatible video records: the format, and the tf.data reader that feeds training.

One video is one `tf.train.SequenceExample` (the MediaPipe media_sequence keys that
DMVR reads, so existing Kinetics shards work too):

  context        clip/label/index   int64 [1]   (absent: unlabelled, read as -1)
                 clip/label/string  bytes [1]   (also written as clip/label/text, DMVR's key)
                 clip/media_id      bytes [1]   video id
                 clip/data_path     bytes [1]   source file
                 image/frame_rate   float [1]
  feature_lists  image/encoded      one JPEG (bytes [1]) per frame

Shards are uncompressed TFRecord files `<split>-<i:05d>-of-<n:05d>.tfrecord`, local or
gs:// (tf.io.gfile). The reader interleaves shards in parallel, decodes only the
sampled frames (sampling.py: one ClipSampling) and yields, unbatched, the clip contract
(contract.py):

  {"frames": float32 [K, S, S, 3], "label": int32 [], "video_index": int64 []}

video_index = shard_index * 2**32 + record_index: unique per video within the split,
stable across runs (shards are read in sorted order), not dense. With num_eval_clips
C > 1 an evaluation video yields C consecutive elements sharing it.

Damaged data does not stop training; at either level a warning names the shard:
  - a shard damaged below the record checksums (truncated, flipped bits: TFRecord CRCs
    catch them, and the reader compares the bytes it read with the file size) is read up
    to the damage and the rest of that shard is skipped;
  - a record with valid checksums whose SequenceExample does not parse, that holds no
    frames, or one of whose sampled frames is not a readable JPEG is skipped and counted:
    `skipped_records()` is the running count, for the trainer to log.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import threading
from collections.abc import Callable, Sequence

import gin
import tensorflow as tf

from sideways_tf.data import contract
from sideways_tf.data import sampling as sampling_lib
from sideways_tf.data.sampling import ClipSampling

IMAGE_KEY = "image/encoded"
LABEL_INDEX_KEY = "clip/label/index"
LABEL_STRING_KEY = "clip/label/string"
LABEL_TEXT_KEY = "clip/label/text"  # DMVR's name for the label string
VIDEO_ID_KEY = "clip/media_id"
DATA_PATH_KEY = "clip/data_path"
FRAME_RATE_KEY = "image/frame_rate"

SHARD_SUFFIX = ".tfrecord"
_NOT_SHARDS = (".incomplete", ".json", ".txt")  # converter side files that a glob may match
_RECORD_OVERHEAD = 16  # bytes per TFRecord: uint64 length, two uint32 CRCs
_SHARD_STRIDE = 2**32  # video_index = shard_index * _SHARD_STRIDE + record_index

logger = logging.getLogger(__name__)

_skipped = [0]  # records skipped by every DMVR dataset of this process
_skipped_lock = threading.Lock()  # tf.data reports from several threads


def skipped_records() -> int:
    """How many records the DMVR reader has skipped in this process because they do not decode.

    A record (with valid checksums) is skipped when its SequenceExample does not parse,
    holds no frames, or a frame sampled from it is not a readable JPEG; each skip is also
    logged as a warning naming the shard and the record's index in it. The count runs over
    every DMVR dataset of the process since it started. A record counts each time it is
    read: once per epoch, and in training only when a damaged frame is among those sampled.
    Shards damaged below the record checksums are warned about, not counted here.

    The trainer reads it on the host at its summary interval, e.g.
      tf.summary.scalar("data/skipped_records", dmvr.skipped_records(), step=step)
    It runs ahead of the step by what tf.data has prefetched. In multi-worker training
    each process counts the records of its own input pipelines.
    """
    with _skipped_lock:
        return _skipped[0]


def _report_skipped(files: Sequence[str], what: str, video_index) -> bool:
    """Counts and logs one skipped record (a py_function of the reader); returns False."""
    shard, record = divmod(int(video_index), _SHARD_STRIDE)
    with _skipped_lock:
        _skipped[0] += 1
        count = _skipped[0]
    logger.warning(
        "Skipped record %d (0-based) of shard %s: %s (%d records skipped so far). Fix: "
        "re-create the shard (delete it and re-run sideways-convert with the same flags), "
        "or re-encode the source video.",
        record,
        files[shard],
        what,
        count,
    )
    return False


def _zeros(spec: tf.TensorSpec) -> tf.Tensor:
    return tf.zeros([0 if d is None else d for d in spec.shape], spec.dtype)


def _map_skipping_failures(what: str, files: Sequence[str]) -> Callable:
    """A map for `element -> fn(element)` that drops, counts and logs elements fn fails on.

    tf.data has no try/except: each element is mapped inside a one-element dataset that
    ignores errors, and an empty result marks the failure. Elements carry "video_index",
    which names the shard and record in the warning.
    Returns:
      map_fn(ds, fn, **map_kwargs) -> dataset of the fn(element) that succeeded.
    """

    def map_fn(ds: tf.data.Dataset, fn: Callable, **map_kwargs) -> tf.data.Dataset:
        def attempt(element):
            one = tf.data.Dataset.from_tensors(element).map(fn)
            placeholder = tf.nest.map_structure(_zeros, one.element_spec)
            done = one.ignore_errors().map(lambda out: (out, True))
            failed = tf.data.Dataset.from_tensors((placeholder, False))
            out, ok = done.concatenate(failed).take(1).get_single_element()
            return out, ok, element["video_index"]

        report = functools.partial(_report_skipped, files, what)

        def keep(out, ok, video_index):
            return tf.cond(
                ok,
                lambda: tf.constant(True),
                lambda: tf.py_function(report, [video_index], tf.bool),
            )

        ds = ds.map(attempt, **map_kwargs).filter(keep)
        return ds.map(lambda out, ok, video_index: out)

    return map_fn


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def make_sequence_example(
    jpeg_frames: Sequence[bytes],
    label_index: int,
    label_string: str,
    video_id: str,
    *,
    frame_rate: float | None = None,
    data_path: str | None = None,
) -> tf.train.SequenceExample:
    """One video as a SequenceExample; label_index < 0 writes no label (unlabelled)."""
    ex = tf.train.SequenceExample()
    ctx = ex.context.feature
    if label_index >= 0:
        ctx[LABEL_INDEX_KEY].int64_list.value.append(label_index)
        ctx[LABEL_STRING_KEY].bytes_list.value.append(label_string.encode())
        ctx[LABEL_TEXT_KEY].bytes_list.value.append(label_string.encode())
    ctx[VIDEO_ID_KEY].bytes_list.value.append(video_id.encode())
    if data_path is not None:
        ctx[DATA_PATH_KEY].bytes_list.value.append(data_path.encode())
    if frame_rate is not None:
        ctx[FRAME_RATE_KEY].float_list.value.append(frame_rate)
    frames = ex.feature_lists.feature_list[IMAGE_KEY]
    for jpeg in jpeg_frames:
        frames.feature.add().bytes_list.value.append(jpeg)
    return ex


def parse_record(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """A serialized SequenceExample -> its frames, label and id.

    Returns:
      {"encoded": string [T] (one JPEG per frame), "label": int32 [] (-1 when the record
      has no clip/label/index), "video_id": string []}.
    """
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={
            LABEL_INDEX_KEY: tf.io.VarLenFeature(tf.int64),
            VIDEO_ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        },
        sequence_features={IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string)},
    )
    labels = tf.concat([context[LABEL_INDEX_KEY].values, tf.constant([-1], tf.int64)], 0)
    return {
        "encoded": sequence[IMAGE_KEY],
        "label": tf.cast(labels[0], tf.int32),
        "video_id": context[VIDEO_ID_KEY],
    }


def list_shards(pattern: str | Sequence[str]) -> list[str]:
    """Sorted shard paths matching one or more glob patterns (local or gs://).

    Converter side files (*.incomplete, *.json, *.txt) are left out.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    files = sorted(
        {f for p in patterns for f in tf.io.gfile.glob(p) if not f.endswith(_NOT_SHARDS)}
    )
    if not files:
        raise FileNotFoundError(
            f"No record shards match {patterns}. Fix: convert the videos first "
            "(sideways-convert --output_dir=DIR --split=train ...; shards are named "
            "DIR/train-00000-of-000NN.tfrecord) and set the pattern to "
            "'DIR/train-*-of-*.tfrecord', or correct the path."
        )
    return files


def _file_sizes(files: Sequence[str]) -> list[int]:
    with concurrent.futures.ThreadPoolExecutor(min(32, len(files))) as pool:
        return list(pool.map(lambda f: tf.io.gfile.stat(f).length, files))


def _report_shard_end(path, bytes_read, size, records) -> bool:
    """Called at the end of each shard; warns (every epoch) when it was not read to the end."""
    bytes_read, size, records = int(bytes_read), int(size), int(records)
    if bytes_read != size:
        logger.warning(
            "Corrupt record shard %s: read %d records (%d of %d bytes), then a damaged, "
            "truncated or unreadable record; the rest of this shard is skipped. Fix: re-create "
            "the shard (delete it and re-run sideways-convert with the same flags; completed "
            "shards are kept), or check that the file is still readable.",
            path.numpy().decode(),
            records,
            bytes_read,
            size,
        )
    return False


def _shard_records(path: tf.Tensor, size: tf.Tensor, shard_index: tf.Tensor) -> tf.data.Dataset:
    """(serialized, video_index) of one shard, stopping quietly-but-reported at corruption."""
    # After a DataLossError TFRecordDataset moves on to its next file (none here), so
    # ignore_errors() ends this shard at the first damaged record.
    records = tf.data.TFRecordDataset(path, buffer_size=8 << 20).ignore_errors()
    body = records.map(lambda r: (r, False))
    end = tf.data.Dataset.from_tensors((tf.constant(b""), True))

    def count(state, element):
        nbytes, n = state
        record, is_end = element
        length = tf.cast(tf.strings.length(record), tf.int64) + _RECORD_OVERHEAD
        new = (
            tf.where(is_end, nbytes, nbytes + length),
            tf.where(is_end, n, n + 1),
        )
        return new, (record, is_end, new[0], n)

    def keep(record, is_end, nbytes, n):
        return tf.cond(
            is_end,
            lambda: tf.py_function(_report_shard_end, [path, nbytes, size, n], tf.bool),
            lambda: tf.constant(True),
        )

    stream = body.concatenate(end).scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), count)
    stream = stream.filter(keep)
    return stream.map(lambda record, is_end, nbytes, n: (record, shard_index * _SHARD_STRIDE + n))


def read_records(
    pattern: str | Sequence[str],
    *,
    training: bool,
    cycle_length: int = 16,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Serialized records of all matching shards: (string [], video_index int64 []).

    Shards are read `cycle_length` at a time in parallel; in training the shard order is
    reshuffled every epoch and the interleave is non-deterministic (faster).
    With `input_context`, each input pipeline reads its own subset of the shards.
    """
    return _read_shards(list_shards(pattern), training, cycle_length, input_context)


def _read_shards(files, training, cycle_length, input_context) -> tf.data.Dataset:
    """`read_records` of a list of shard paths."""
    sizes = _file_sizes(files)
    ds = tf.data.Dataset.from_tensor_slices(
        (files, tf.constant(sizes, tf.int64), tf.range(len(files), dtype=tf.int64))
    )
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) < input_context.num_input_pipelines:
            raise ValueError(
                f"{len(files)} shards (e.g. {files[0]!r}) but there are "
                f"{input_context.num_input_pipelines} input pipelines. Fix: re-convert with "
                "more shards (--num_shards)."
            )
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        ds = ds.shuffle(len(files), reshuffle_each_iteration=True)
    return ds.interleave(
        _shard_records,
        cycle_length=max(1, min(cycle_length, len(files))),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not training,
    )


def _parse_video(element: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """{"serialized", "video_index"} -> {"encoded": [T] JPEGs, "label", "video_index"}.

    Fails (and the reader skips the record) when the proto does not parse or T = 0.
    """
    features = parse_record(element["serialized"])
    has_frames = tf.debugging.assert_positive(
        tf.size(features["encoded"]), message="the record holds no frames"
    )
    with tf.control_dependencies([has_frames]):
        encoded = tf.identity(features["encoded"])
    return {"encoded": encoded, "label": features["label"], "video_index": element["video_index"]}


def _short_video_message(pattern, sampling: ClipSampling, steps: int) -> str:
    """Why a video is too short for one clip, naming the bindings and the fixes."""
    need = sampling.span
    extra = sampling.num_frames - steps
    horizon = (
        f" + dmvr_dataset.extra_frames = {extra} (the future-frame targets, FutureFrames.horizon)"
        if extra
        else ""
    )
    speed = (
        f" * {max(sampling.temporal.speeds)}"
        if sampling.temporal is not None and max(sampling.temporal.speeds) > 1
        else ""
    )
    fastest = (
        f" (the fastest class of clip_sampling.temporal_task = {sampling.temporal_task!r})"
        if speed
        else ""
    )
    return (
        f"A video in {pattern} is shorter than one clip: a clip spans (K - 1) * stride{speed} "
        f"+ 1 = {need} frames{fastest}, K = clip_sampling.num_frames = {steps}{horizon}, stride = "
        f"clip_sampling.stride = {sampling.stride}. Fix: lower clip_sampling.num_frames (or "
        "the horizon, or the stride), convert the videos at a higher --fps, or leave out the "
        f"videos shorter than {need} frames"
    )


def check_video_lengths(files, pattern, sampling: ClipSampling, steps: int) -> bool:
    """Raises if a converted video is shorter than one clip; False if the shards do not say.

    Reads the converter's per-shard record (_shards_meta/<shard>.json: frames stored per
    record), so nothing is decoded. Shards without it (other converters, older runs)
    are checked while reading instead (_check_video_length).
    """
    need = sampling.span
    short, total = [], 0
    for f in files:
        meta = f"{f.rsplit('/', 1)[0]}/_shards_meta/{f.rsplit('/', 1)[-1]}.json"
        if not tf.io.gfile.exists(meta):
            return False
        with tf.io.gfile.GFile(meta) as fh:
            frames = json.load(fh).get("frames")
        if frames is None:
            return False
        total += len(frames)
        short += [(f, r, n) for r, n in enumerate(frames) if n < need]
    if short:
        f, r, n = min(short, key=lambda x: x[2])
        raise ValueError(
            f"{_short_video_message(pattern, sampling, steps)}: {len(short)} of {total} "
            f"videos are (the shortest: record {r} of {f}, {n} frames)."
        )
    return True


def _check_video_length(video, *, pattern, sampling: ClipSampling, steps: int, files):
    """Passes a video on if one clip fits in it; else stops reading, naming the bindings."""
    need = sampling.span
    message = (
        _short_video_message(pattern, sampling, steps)
        + " (the shard, record and frame count follow)."
    )
    shard = tf.math.floordiv(video["video_index"], _SHARD_STRIDE)
    record = tf.math.floormod(video["video_index"], _SHARD_STRIDE)
    ok = tf.debugging.assert_greater_equal(
        tf.size(video["encoded"]),
        need,
        message=message,
        data=[tf.gather(tf.constant(files), shard), record, tf.size(video["encoded"])],
        summarize=3,
    )
    with tf.control_dependencies([ok]):
        return {**video, "encoded": tf.identity(video["encoded"])}


@gin.configurable(module="sideways_tf.data")
def dmvr_dataset(
    pattern: str | Sequence[str],
    split_is_training: bool,
    sampling: ClipSampling | None = None,  # None: the gin-bound clip_sampling()
    cycle_length: int = 16,  # shards read in parallel
    repeat: bool = False,  # training only: repeat the records forever
    frames_only: bool = False,  # {"frames"} only (future-frame prediction): labels not needed
    extra_frames: int = 0,  # frames past K in each clip: the future-frame targets (horizon h)
    short_videos: str = "loop",  # a video shorter than a clip: "loop" it, or stop with an "error"
    input_context: tf.distribute.InputContext | None = None,
    protocol: str | None = None,  # evaluation: None, "multiview" or "streaming" (see below)
) -> tf.data.Dataset:
    """Clips of DMVR records, unbatched, for training or evaluation.

    Args:
      pattern: glob(s) of the split's shards, e.g. 'DIR/train-*-of-*.tfrecord' (gs:// ok).
      split_is_training: random clip, crop and flip, shuffled (True); or evenly spaced
        clips and a centred crop, in a fixed order (False).
      sampling: K, stride, S, clips per evaluation video and the augmentation; None calls
        `sampling.clip_sampling()`, so gin's `clip_sampling.*` (in this reader's scope)
        apply.
      frames_only: yield {"frames"} only, for future-frame prediction; unlabelled splits
        (the Kinetics test split) work too.
      extra_frames: clips hold K + extra_frames frames (K = clip_sampling.num_frames): the
        frames a future-frame model's last steps predict (FutureFrames.horizon).
      short_videos: what a video shorter than one clip, (K + extra_frames - 1) * stride + 1
        frames, does: "loop" (frames wrap around: harmless for classification) or "error"
        (reading stops with a message naming the bindings: future frames must not wrap).
      input_context: from tf.distribute; each input pipeline reads its share of shards.
      protocol: an evaluation protocol (sampling.protocol_sampling; evaluate.py scores
        them): "multiview", N = clip_sampling.multiview_clips clips x 3 crops per video;
        "streaming", each video whole, {"frames": [T', S, S, 3]} with T' varying.
    Returns:
      tf.data.Dataset of {"frames": float32 [K, S, S, 3] (normalised), "label": int32 [],
      "video_index": int64 []} (contract.clip_spec). In evaluation each video yields
      `sampling.num_eval_clips` consecutive clips with the same video_index. With
      clip_sampling.temporal_task the labels are the task's (records need none), and
      the dataset names its classes (contract.class_names).
    """
    sampling = sampling_lib.clip_sampling() if sampling is None else sampling
    if isinstance(extra_frames, bool) or not isinstance(extra_frames, int) or extra_frames < 0:
        raise ValueError(
            f"dmvr_dataset.extra_frames = {extra_frames!r}; give an integer >= 0 (the future "
            "frames past K in each clip, e.g. %HORIZON)."
        )
    if short_videos not in ("loop", "error"):
        raise ValueError(f"dmvr_dataset.short_videos = {short_videos!r}; use 'loop' or 'error'.")
    steps = sampling.num_frames
    sampling = dataclasses.replace(sampling, num_frames=steps + extra_frames)
    training = bool(split_is_training)
    if protocol is not None and training:
        raise ValueError(
            f"dmvr_dataset.protocol = {protocol!r} is an evaluation protocol, but this reader "
            "reads a training split (split_is_training = True). Bind it on the evaluation "
            "reader only, or leave it None."
        )
    sampling = sampling_lib.protocol_sampling(sampling, protocol, "dmvr_dataset.protocol")
    files = list_shards(pattern)
    ds = _read_shards(files, training, cycle_length, input_context)
    ds = ds.map(lambda record, video_index: {"serialized": record, "video_index": video_index})
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    parse_or_skip = _map_skipping_failures("not a SequenceExample with frames", files)
    ds = parse_or_skip(ds, _parse_video, **parallel)
    streaming = protocol == "streaming"  # whole videos: no clip has to fit
    if (
        short_videos == "error"
        and not streaming
        and not check_video_lengths(files, pattern, sampling, steps)
    ):
        check = functools.partial(
            _check_video_length, pattern=pattern, sampling=sampling, steps=steps, files=files
        )
        ds = ds.map(check, **parallel)
    if training and repeat:
        ds = ds.repeat()  # after parsing: an epoch without one parsable record ends the data
    # Records whose sampled frames do not decode are skipped and counted (skipped_records).
    decode_or_skip = _map_skipping_failures("a sampled frame is not a readable JPEG", files)
    read = sampling_lib.video_streams if streaming else sampling_lib.video_clips
    kwargs = {} if streaming else {"training": training}
    ds = read(ds, sampling=sampling, jpeg=True, decode_map=decode_or_skip, **kwargs)
    if frames_only:
        ds = ds.map(lambda clip: {"frames": clip["frames"]})
    ds = ds.prefetch(tf.data.AUTOTUNE)
    if sampling.temporal is not None:
        ds = contract.with_class_names(ds, sampling.temporal.class_names)
    return ds
