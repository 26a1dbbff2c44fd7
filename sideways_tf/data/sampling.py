"""Clip sampling and augmentation: a video of T frames -> clips of K frames, ready to train on.

One path for every reader (DMVR records, TFDS ucf101) and every mode of the engine:

  training    one clip at a random offset, frames t0, t0 + s, ..., t0 + (K-1)s
              (s = stride; a video shorter than (K-1)s + 1 frames loops), one random
              resized crop (or evaluation's square at a random position, train_crop =
              "eval_scale") and one horizontal flip shared by all K frames
  evaluation  C clips at evenly spaced offsets (C = 1: the middle clip), a centred crop
              (or `eval_crops` = 3 squares along the long side: start, centre, end)

With `temporal_task` ("arrow", "speed": data/temporal.py) the label is made here from
the frame indices picked: training draws a class per clip; evaluation gives every
window once per class (a clip and its reverse; the three speeds), with no random draw.

Evaluation protocols (`protocol_sampling`; the readers' `protocol=`): "multiview" is N =
`multiview_clips` clips x 3 crops per video; "streaming" is every video whole
(`video_streams`: every s-th frame, the centred crop; with a temporal task once per
class: forward and reversed, or at the three speeds), run once by the evaluation.

Only the sampled frames are decoded: `encoded` holds one JPEG/PNG string per frame and
sampling picks indices first; for JPEG only the crop window is decoded. Frames are
normalised per channel, (x / 255 - mean) / std: about zero mean, unit-ish range.

Every reader takes one `ClipSampling` (K, s, S, C and the augmentation), built by the gin
configurable `clip_sampling`: a data gin file binds `clip_sampling.*` once, scoped
`train/` or `eval/` where the two differ.

Shapes: T frames available, K = num_frames, C = num_eval_clips, S = image_size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import gin
import tensorflow as tf

from sideways_tf.data import temporal as temporal_lib

# ImageNet statistics, the usual choice for Kinetics / UCF101 / HMDB51 frames.
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)
PIXELS = ("imagenet", "symmetric")  # how frames are normalised (ClipSampling.pixels)
TRAIN_CROPS = ("random_resized", "eval_scale")  # ClipSampling.train_crop
EVAL_CROPS = (1, 3)  # ClipSampling.eval_crops: the centred square, or start / centre / end
PROTOCOLS = ("multiview", "streaming")  # evaluation protocols (protocol_sampling)


@dataclasses.dataclass(frozen=True)
class ClipSampling:
    """How clips are cut from a video and augmented: the one set of defaults for all readers."""

    num_frames: int = 16  # K, frames per clip
    stride: int = 1  # s, between the clip's frames (at the source's frame rate)
    image_size: int = 112  # S: output frames are S x S
    num_eval_clips: int = 1  # C, evenly spaced clips per video in evaluation (1: the middle)
    area_range: tuple[float, float] = (0.3, 1.0)  # training: random resized crop, frame fraction
    # training: "random_resized" (Inception style, area_range) or "eval_scale" (the
    # evaluation square, eval_crop_fraction x the short side, at a random position: frames
    # keep evaluation's scale and sharpness, and motion its size in pixels)
    train_crop: str = "random_resized"
    flip: bool = True  # training: one random horizontal flip per clip
    eval_crop_fraction: float = 1.0  # evaluation: centred square, fraction of the short side
    shuffle_buffer: int = 512  # training: clips (K encoded frames each) held for shuffling
    pixels: str = "imagenet"  # "imagenet": (x/255 - mean)/std per channel; "symmetric": [-1, 1]
    # None: the label the data holds; "arrow" or "speed": a label made from time (temporal.py)
    temporal_task: str | None = None
    eval_crops: int = 1  # evaluation: squares per clip, 1 (centred) or 3 (start, centre, end)
    multiview_clips: int = 10  # N of the multi-view protocol: N clips x 3 crops per video

    def __post_init__(self):
        object.__setattr__(self, "area_range", tuple(float(a) for a in self.area_range))
        check_clip_args(self.num_frames, self.stride, self.num_eval_clips)
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1 (output S x S), got {self.image_size}.")
        low, high = self.area_range if len(self.area_range) == 2 else (0.0, -1.0)
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(
                f"area_range must be (low, high) with 0 < low <= high <= 1, got {self.area_range}."
            )
        if not 0.0 < self.eval_crop_fraction <= 1.0:
            raise ValueError(
                f"eval_crop_fraction must be in (0, 1], got {self.eval_crop_fraction}."
            )
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}.")
        if self.train_crop not in TRAIN_CROPS:
            raise ValueError(
                f"clip_sampling.train_crop = {self.train_crop!r}; use 'random_resized' "
                "(Inception-style crops, area_range) or 'eval_scale' (evaluation's square at "
                "a random position: future frames, whose motion must keep its size)."
            )
        if self.pixels not in PIXELS:
            raise ValueError(
                f"clip_sampling.pixels = {self.pixels!r}; use 'imagenet' (classification, "
                "ImageNet statistics) or 'symmetric' (x / 127.5 - 1 in [-1, 1]: future frames, "
                "whose PSNR / SSIM take frames in [-1, 1])."
            )
        temporal_lib.get(self.temporal_task, "clip_sampling.temporal_task")
        if self.eval_crops not in EVAL_CROPS:
            raise ValueError(
                f"clip_sampling.eval_crops = {self.eval_crops!r}; use 1 (the centred square) or "
                "3 (squares at the start, centre and end of the long side: the multi-view crops)."
            )
        if self.multiview_clips < 1:
            raise ValueError(
                f"clip_sampling.multiview_clips = {self.multiview_clips}; give N >= 1, the "
                "temporal clips per video of the multi-view protocol (the field uses 10 or 4)."
            )

    @property
    def temporal(self) -> temporal_lib.TemporalTask | None:
        """The temporal task whose labels the clips carry, or None."""
        return temporal_lib.get(self.temporal_task)

    @property
    def span(self) -> int:
        """Frames one clip covers: (K - 1) * stride + 1, or its temporal task's window."""
        if self.temporal is not None:
            return self.temporal.window(self.num_frames, self.stride)
        return (self.num_frames - 1) * self.stride + 1


@gin.configurable(module="sideways_tf.data")
def clip_sampling(
    num_frames: int = ClipSampling.num_frames,
    stride: int = ClipSampling.stride,
    image_size: int = ClipSampling.image_size,
    num_eval_clips: int = ClipSampling.num_eval_clips,
    area_range: Sequence[float] = ClipSampling.area_range,
    train_crop: str = ClipSampling.train_crop,
    flip: bool = ClipSampling.flip,
    eval_crop_fraction: float = ClipSampling.eval_crop_fraction,
    shuffle_buffer: int = ClipSampling.shuffle_buffer,
    pixels: str = ClipSampling.pixels,
    temporal_task: str | None = ClipSampling.temporal_task,
    eval_crops: int = ClipSampling.eval_crops,
    multiview_clips: int = ClipSampling.multiview_clips,
) -> ClipSampling:
    """The ClipSampling that gin binds (`clip_sampling.num_frames = 32`, `eval/...`).

    Readers called without `sampling=` call this, inside their gin scope.
    """
    return ClipSampling(
        num_frames=num_frames,
        stride=stride,
        image_size=image_size,
        num_eval_clips=num_eval_clips,
        area_range=tuple(area_range),
        train_crop=train_crop,
        flip=flip,
        eval_crop_fraction=eval_crop_fraction,
        shuffle_buffer=shuffle_buffer,
        pixels=pixels,
        temporal_task=temporal_task,
        eval_crops=eval_crops,
        multiview_clips=multiview_clips,
    )


def protocol_sampling(sampling: ClipSampling, protocol: str | None, binding: str) -> ClipSampling:
    """The sampling of an evaluation protocol: None (the sampling as bound), "multiview"
    (N = multiview_clips clips x 3 crops per video) or "streaming" (each video whole:
    every stride-th frame, the centred crop; a temporal task's video once per class; see
    video_streams)."""
    if protocol is None:
        return sampling
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"{binding} = {protocol!r}; use None (the evaluation as bound), 'multiview' (N "
            "clips x 3 crops per video, N = clip_sampling.multiview_clips) or 'streaming' "
            "(each video run once, whole)."
        )
    if protocol == "streaming":
        return dataclasses.replace(sampling, eval_crops=1)
    return dataclasses.replace(sampling, num_eval_clips=sampling.multiview_clips, eval_crops=3)


def check_clip_args(num_frames: int, stride: int, num_clips: int = 1) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
    if stride < 1:
        raise ValueError(f"stride must be >= 1 (1 = consecutive frames), got {stride}.")
    if num_clips < 1:
        raise ValueError(f"num_eval_clips must be >= 1, got {num_clips}.")


def train_indices(num_available: tf.Tensor, num_frames: int, stride: int) -> tf.Tensor:
    """Frame indices of one clip at a uniformly random offset.

    Args:
      num_available: int scalar, T >= 1.
    Returns:
      int32 [K]: (t0 + k * stride) mod T, t0 ~ U{0, ..., max(T - (K-1)s - 1, 0)}.
    """
    check_clip_args(num_frames, stride)
    num_available = tf.cast(num_available, tf.int32)
    offset = _random_start(num_available, (num_frames - 1) * stride + 1)
    return (offset + tf.range(num_frames) * stride) % num_available


def eval_indices(
    num_available: tf.Tensor, num_frames: int, stride: int, num_clips: int
) -> tf.Tensor:
    """Frame indices of `num_clips` clips at evenly spaced offsets (one clip: the middle one).

    Returns:
      int32 [C, K]; clip c starts at round(c * max_offset / (C - 1)).
    """
    check_clip_args(num_frames, stride, num_clips)
    num_available = tf.cast(num_available, tf.int32)
    offsets = _even_starts(num_available, (num_frames - 1) * stride + 1, num_clips)  # [C]
    clip = tf.range(num_frames) * stride  # [K]
    return (offsets[:, None] + clip[None, :]) % num_available  # [C, K]


def _random_start(num_available: tf.Tensor, span: int) -> tf.Tensor:
    """A window of `span` frames at a uniformly random start in [0, max(T - span, 0)]."""
    max_offset = tf.maximum(num_available - span, 0)
    return tf.random.uniform([], 0, max_offset + 1, dtype=tf.int32)


def _even_starts(num_available: tf.Tensor, span: int, num_clips: int) -> tf.Tensor:
    """int32 [C]: windows of `span` frames at evenly spaced starts (C = 1: the middle)."""
    max_offset = tf.maximum(num_available - span, 0)
    if num_clips == 1:
        return tf.reshape(max_offset // 2, [1])
    offsets = tf.linspace(0.0, tf.cast(max_offset, tf.float32), num_clips)
    return tf.cast(tf.round(offsets), tf.int32)


def temporal_indices(
    num_available: tf.Tensor, *, training: bool, sampling: ClipSampling
) -> tuple[tf.Tensor, tf.Tensor]:
    """Frame indices and labels of a temporal task's clips (data/temporal.py).

    Training: one window at a random start and one class y ~ U{0..n-1}: ([1, K], [1]).
    Evaluation: C evenly spaced windows, each once per class, window-major:
    ([C * n, K], [C * n]) with labels 0..n-1 repeated C times. Indices wrap (mod T).
    """
    task = sampling.temporal
    k, s = sampling.num_frames, sampling.stride
    num_available = tf.cast(num_available, tf.int32)
    offsets = tf.constant(task.clip_offsets(k, s))  # [n, K]
    window = task.window(k, s)
    if training:
        label = tf.random.uniform([], 0, task.num_classes, dtype=tf.int32)
        start = _random_start(num_available, window)
        return ((start + offsets[label]) % num_available)[None], label[None]
    starts = _even_starts(num_available, window, sampling.num_eval_clips)  # [C]
    indices = (starts[:, None, None] + offsets[None]) % num_available  # [C, n, K]
    labels = tf.tile(tf.range(task.num_classes, dtype=tf.int32), [sampling.num_eval_clips])
    return tf.reshape(indices, [-1, k]), labels


def random_crop_box(
    height: tf.Tensor,
    width: tf.Tensor,
    area_range: Sequence[float] = (0.3, 1.0),
    aspect_ratio_range: Sequence[float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """A random resized crop (Inception style): float32 [4], (y0, x0, y1, x1) in [0, 1]."""
    _, _, box = tf.image.sample_distorted_bounding_box(
        tf.stack([height, width, 3]),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=20,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.reshape(box, [4])


def center_crop_box(height: tf.Tensor, width: tf.Tensor, fraction: float = 1.0) -> tf.Tensor:
    """The centred square of side `fraction` x the short side: float32 [4] (y0, x0, y1, x1).

    Cropping it and resizing to S equals resizing the short side to S / fraction and
    taking the centre S x S.
    """
    return _square_box(height, width, fraction, 0.5, 0.5)


def random_square_box(height: tf.Tensor, width: tf.Tensor, fraction: float = 1.0) -> tf.Tensor:
    """A square of side `fraction` x the short side at a uniformly random position:
    float32 [4] (y0, x0, y1, x1), the same size as `center_crop_box`'s."""
    return _square_box(
        height, width, fraction, tf.random.uniform([], 0.0, 1.0), tf.random.uniform([], 0.0, 1.0)
    )


def three_crop_boxes(height: tf.Tensor, width: tf.Tensor, fraction: float = 1.0) -> tf.Tensor:
    """The multi-view protocol's three squares (side `fraction` x the short side) at the
    start, centre and end of the long side (left / centre / right of a landscape frame):
    float32 [3, 4] (y0, x0, y1, x1). A square frame gives the centred square three times."""
    tall = height > width
    boxes = []
    for at in (0.0, 0.5, 1.0):
        at_y = tf.where(tall, at, 0.5)
        at_x = tf.where(tall, 0.5, at)
        boxes.append(_square_box(height, width, fraction, at_y, at_x))
    return tf.stack(boxes)


def _square_box(height, width, fraction: float, at_y, at_x) -> tf.Tensor:
    """The square of side `fraction` x the short side, its corner at (at_y, at_x) of the
    room left around it (0: top / left, 1: bottom / right)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}.")
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    side = fraction * tf.minimum(h, w)
    dy, dx = side / h, side / w
    y0, x0 = at_y * (1.0 - dy), at_x * (1.0 - dx)
    return tf.stack([y0, x0, y0 + dy, x0 + dx])


def crop_and_resize(frames: tf.Tensor, box: tf.Tensor, image_size: int) -> tf.Tensor:
    """The same box cropped from every frame and resized (bilinear).

    Args:
      frames: [K, H, W, 3], uint8 or float.
      box: float32 [4], normalised (y0, x0, y1, x1).
    Returns:
      float32 [K, S, S, 3] in the input's value range.
    """
    k = tf.shape(frames)[0]
    boxes = tf.tile(box[None, :], [k, 1])  # [K, 4]
    return tf.image.crop_and_resize(
        frames, boxes, tf.range(k), [image_size, image_size], method="bilinear"
    )


def random_flip(frames: tf.Tensor) -> tf.Tensor:
    """Flips all frames left-right together with probability 1/2. [K, H, W, C] -> same."""
    flip = tf.random.uniform([]) < 0.5
    return tf.cond(flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)


def normalize(
    frames: tf.Tensor,
    mean: Sequence[float] = MEAN_RGB,
    stddev: Sequence[float] = STDDEV_RGB,
) -> tf.Tensor:
    """[..., 3] in [0, 255] -> float32 (x / 255 - mean) / stddev, per channel."""
    frames = tf.cast(frames, tf.float32) / 255.0
    return (frames - tf.constant(mean, tf.float32)) / tf.constant(stddev, tf.float32)


def decode_frames(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG or PNG strings [N] -> uint8 [N, H, W, 3] (all frames of a video share H, W)."""
    return tf.map_fn(
        lambda x: tf.io.decode_image(x, channels=3, expand_animations=False),
        encoded,
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
        parallel_iterations=16,
    )


def select_frames(encoded: tf.Tensor, *, training: bool, sampling: ClipSampling) -> tf.Tensor:
    """The frames of the clips to use, still encoded (cheap: a gather of strings).

    Args:
      encoded: [T] encoded frames, or decoded [T, H, W, 3].
    Returns:
      [C*K] (or [C*K, H, W, 3]), clip-major; C = 1 when training (with a temporal task,
      C = num_eval_clips * its classes in evaluation: see select_clips).
    """
    return select_clips(encoded, training=training, sampling=sampling)[0]


def select_clips(
    encoded: tf.Tensor, *, training: bool, sampling: ClipSampling
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """`select_frames` and, with a temporal task, the label of each clip: int32 [C] (else None)."""
    num_available = tf.shape(encoded)[0]
    k, s = sampling.num_frames, sampling.stride
    labels = None
    if sampling.temporal is not None:
        indices, labels = temporal_indices(num_available, training=training, sampling=sampling)
    elif training:
        indices = train_indices(num_available, k, s)  # [K]
    else:
        indices = eval_indices(num_available, k, s, sampling.num_eval_clips)  # [C, K]
    return tf.gather(encoded, tf.reshape(indices, [-1])), labels


def _pixel_window(box: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Normalised (y0, x0, y1, x1) -> int32 [y, x, h, w] inside the frame, h, w >= 1."""
    size = tf.cast(tf.stack([height, width]), tf.float32)
    start = tf.cast(tf.round(box[:2] * size), tf.int32)
    extent = tf.cast(tf.round(box[2:] * size), tf.int32) - start
    limit = tf.cast(size, tf.int32)
    start = tf.clip_by_value(start, 0, limit - 1)
    extent = tf.clip_by_value(extent, 1, limit - start)
    return tf.concat([start, extent], 0)


def augment_clips(
    frames: tf.Tensor,
    *,
    training: bool,
    sampling: ClipSampling,
    jpeg: bool = False,
) -> tf.Tensor:
    """Decodes, crops, flips and normalises the output of `select_frames`.

    Training: one random crop (resized, or at evaluation's scale: `train_crop`) and one
    flip for all frames; evaluation: the centred square, or with `eval_crops` = 3 the three
    squares of `three_crop_boxes`. All clips of one video share the crop(s).
    Args:
      frames: [C*K] encoded strings, or uint8 [C*K, H, W, 3].
      jpeg: the strings are JPEGs: only the crop window is decoded (faster).
        Otherwise strings are decoded whole as JPEG, PNG, ...
    Returns:
      float32 [C * crops, K, S, S, 3]: clip-major, then crop (crops = 1 in training).
    """
    k, size = sampling.num_frames, sampling.image_size
    if not training and sampling.eval_crops > 1:
        if frames.dtype == tf.string:
            frames = decode_frames(frames)  # [C*K, H, W, 3]: every crop reads the whole frame
        height, width = tf.shape(frames)[1], tf.shape(frames)[2]
        boxes = three_crop_boxes(height, width, sampling.eval_crop_fraction)  # [3, 4]
        crops = tf.stack(
            [crop_and_resize(frames, boxes[i], size) for i in range(3)], axis=1
        )  # [C*K, 3, S, S, 3]
        crops = tf.reshape(crops, [-1, k, 3, size, size, 3])  # [C, K, 3, S, S, 3]
        crops = tf.transpose(crops, [0, 2, 1, 3, 4, 5])  # [C, 3, K, S, S, 3]
        return _normalize_pixels(tf.reshape(crops, [-1, k, size, size, 3]), sampling)
    frames = crop_frames(frames, training=training, sampling=sampling, jpeg=jpeg)
    return tf.reshape(frames, [-1, k, size, size, 3])


def crop_frames(
    frames: tf.Tensor, *, training: bool, sampling: ClipSampling, jpeg: bool = False
) -> tf.Tensor:
    """One crop for all frames (see augment_clips), resized, flipped and normalised:
    [N] encoded strings or uint8 [N, H, W, 3] -> float32 [N, S, S, 3]."""
    if frames.dtype == tf.string and jpeg:
        shape = tf.io.extract_jpeg_shape(frames[0])  # all frames of a video share it
        height, width = shape[0], shape[1]
    else:
        if frames.dtype == tf.string:
            frames = decode_frames(frames)  # [N, H, W, 3]
        height, width = tf.shape(frames)[1], tf.shape(frames)[2]
    if training and sampling.train_crop == "eval_scale":
        box = random_square_box(height, width, sampling.eval_crop_fraction)
    elif training:
        box = random_crop_box(height, width, sampling.area_range)
    else:
        box = center_crop_box(height, width, sampling.eval_crop_fraction)
    if frames.dtype == tf.string:
        window = _pixel_window(box, height, width)
        frames = tf.map_fn(  # [N, h, w, 3]
            lambda x: tf.io.decode_and_crop_jpeg(x, window, channels=3),
            frames,
            fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
            parallel_iterations=16,
        )
        box = tf.constant([0.0, 0.0, 1.0, 1.0])  # the window is the crop
    frames = crop_and_resize(frames, box, sampling.image_size)  # [N, S, S, 3]
    if training and sampling.flip:
        frames = random_flip(frames)
    return _normalize_pixels(frames, sampling)


def _normalize_pixels(frames: tf.Tensor, sampling: ClipSampling) -> tf.Tensor:
    if sampling.pixels == "symmetric":
        return normalize(frames, mean=(0.5, 0.5, 0.5), stddev=(0.5, 0.5, 0.5))  # [-1, 1]
    return normalize(frames)


def sample_clips(
    encoded: tf.Tensor, *, training: bool, sampling: ClipSampling, jpeg: bool = False
) -> tf.Tensor:
    """`select_frames` then `augment_clips` for one video: float32 [C, K, S, S, 3]."""
    frames = select_frames(encoded, training=training, sampling=sampling)
    return augment_clips(frames, training=training, sampling=sampling, jpeg=jpeg)


def video_clips(
    videos: tf.data.Dataset,
    *,
    training: bool,
    sampling: ClipSampling,
    jpeg: bool = False,
    decode_map: Callable | None = None,
) -> tf.data.Dataset:
    """Videos -> clips: the part of the input pipeline every reader shares.

    Args:
      videos: {"encoded": [T] strings (or uint8 [T, H, W, 3]), "label": int32 [],
        "video_index": int64 []}, one element per video (repeated by the caller).
      sampling: the clips and their augmentation; in training `sampling.shuffle_buffer`
        clips are shuffled while still encoded (K JPEGs each, a fraction of the video).
      jpeg: the strings are JPEGs (see `augment_clips`).
      decode_map: how the decoding step (`augment_clips`, the step that fails on damaged
        frames) is mapped: decode_map(ds, fn, num_parallel_calls=..., deterministic=...).
        Default: Dataset.map. The DMVR reader passes one that skips and counts failures.
    Returns:
      Unbatched {"frames": float32 [K, S, S, 3], "label": int32 [], "video_index":
      int64 []} (contract.clip_spec); in evaluation each video gives
      `num_eval_clips` (x the temporal task's classes) x `eval_crops` consecutive clips. With a
      temporal task the label is the clip's class (the video's own label is not read)
      and video_index = the video's x n + class (n classes): a video and its reverse
      are two videos to classify, each pooling its own clips.
    """
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    temporal = sampling.temporal
    crops = 1 if training else sampling.eval_crops

    def select(video):
        frames, labels = select_clips(video["encoded"], training=training, sampling=sampling)
        if labels is not None:
            video = {**video, "label": labels}  # [C]: the clip's class
        return {**video, "encoded": frames}

    def augment(video):
        clips = augment_clips(  # [C * crops, K, S, S, 3]
            video["encoded"], training=training, sampling=sampling, jpeg=jpeg
        )
        c = tf.shape(clips)[0]
        index = tf.cast(video["video_index"], tf.int64)
        if temporal is None:
            return {
                "frames": clips,
                "label": tf.fill([c], tf.cast(video["label"], tf.int32)),
                "video_index": tf.fill([c], index),
            }
        labels = tf.repeat(video["label"], crops)  # [C * crops]
        return {
            "frames": clips,
            "label": labels,
            "video_index": index * temporal.num_classes + tf.cast(labels, tf.int64),
        }

    ds = videos.filter(lambda video: tf.shape(video["encoded"])[0] > 0)
    ds = ds.map(select, **parallel)
    if training:
        ds = ds.shuffle(sampling.shuffle_buffer, reshuffle_each_iteration=True)
    ds = (decode_map or tf.data.Dataset.map)(ds, augment, **parallel).unbatch()
    # Augmentation draws from stateful RNGs, which an iterator checkpoint cannot save;
    # after a restore the draws simply continue afresh.
    options = tf.data.Options()
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return ds.with_options(options)


def video_streams(
    videos: tf.data.Dataset,
    *,
    sampling: ClipSampling,
    jpeg: bool = False,
    decode_map: Callable | None = None,
) -> tf.data.Dataset:
    """Videos -> whole videos, for the streaming protocol (evaluate.py runs each once).

    Every stride-th frame of each video, in order, the centred square (as evaluation's),
    normalised. Decodes whole videos: memory grows with their length. With a temporal
    task each video is streamed once per class y, whole: every v_y * stride-th frame,
    reversed where the class is (arrow: the video forward and backward; speed: at
    strides 1, 2, 4), labelled y, video_index = the video's x n + y (as video_clips').
    Args: as video_clips'.
    Returns:
      Unbatched {"frames": float32 [T', S, S, 3] (T' = ceil(T / stride), varying from
      video to video), "label": int32 [], "video_index": int64 []}, in a fixed order.
    """
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    temporal = sampling.temporal

    def select(video):
        every = tf.range(0, tf.shape(video["encoded"])[0], sampling.stride)
        return {**video, "encoded": tf.gather(video["encoded"], every)}

    def select_class(video, y):  # y: int64 [], the temporal class
        speeds = tf.constant(temporal.speeds, tf.int32) * sampling.stride
        every = tf.range(0, tf.shape(video["encoded"])[0], speeds[y])
        backwards = tf.gather(tf.constant(temporal.reversed), y)
        every = tf.cond(backwards, lambda: tf.reverse(every, [0]), lambda: every)
        return {
            "encoded": tf.gather(video["encoded"], every),
            "label": tf.cast(y, tf.int32),
            "video_index": tf.cast(video["video_index"], tf.int64) * temporal.num_classes + y,
        }

    def decode(video):
        return {
            "frames": crop_frames(video["encoded"], training=False, sampling=sampling, jpeg=jpeg),
            "label": tf.cast(video["label"], tf.int32),
            "video_index": tf.cast(video["video_index"], tf.int64),
        }

    ds = videos.filter(lambda video: tf.shape(video["encoded"])[0] > 0)
    if temporal is None:
        ds = ds.map(select, **parallel)
    else:
        classes = tf.data.Dataset.range(temporal.num_classes)
        ds = ds.flat_map(lambda video: classes.map(lambda y: select_class(video, y)))
    return (decode_map or tf.data.Dataset.map)(ds, decode, **parallel)
