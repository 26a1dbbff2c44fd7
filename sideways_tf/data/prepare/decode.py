"""Video files -> frames: PyAV decoding, resampled in time and resized (the converter's input).

PyAV is imported on first use, so `pip install 'sideways_tf[video]'` is needed only to
decode. A video is unreadable (UnreadableVideoError) when it cannot be opened, has no
video stream or no frames, or stops before 75% of the frames its container announces.
"""

from __future__ import annotations

import io
import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

_TRUNCATION_TOLERANCE = 0.75  # fewer than this fraction of the header's frame count: truncated


class UnreadableVideoError(Exception):
    """A video that cannot be decoded (corrupt, truncated, no video stream)."""


class FrameCounts(NamedTuple):
    """Source frames of one video: decoded, and announced by its container."""

    decoded: int
    expected: int  # stream.frames, else duration x rate; 0 when the container does not say
    exact: bool  # expected is the container's frame count (not estimated from the duration)
    repeats: int = 0  # output frames dropped as repeats of the frame before (drop_repeats)

    @property
    def partial(self) -> bool:
        """The video stops before the end its container announces."""
        slack = 0 if self.exact else 1  # duration x rate may be one frame off
        return self.decoded < self.expected - slack


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "Decoding videos needs PyAV. Fix: pip install 'sideways_tf[video]' (or pip install av)."
        ) from e
    return av


def _resized_shape(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    if short_side is None:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def decode_video(
    path: str,
    fps: float | None = None,
    short_side: int | None = None,
    drop_repeats: float | None = None,
) -> tuple[np.ndarray, float]:
    """Decodes a video to RGB frames, resampled in time and resized.

    Args:
      path: local or gs:// path.
      fps: output frame rate; output frame k shows the source frame nearest in time to
        k / fps (frames are dropped or repeated). None keeps every source frame.
      short_side: the frames' short side after resizing (aspect kept); None keeps the size.
      drop_repeats: drop an output frame whose PSNR against the frame kept before it
        exceeds this many dB (a repeat: pulldown from 24 to 25 fps, frozen frames, the
        resampler's own repeats), after resizing; None keeps every frame.
    Returns:
      (uint8 [T, H, W, 3], frame rate of the output).
    Raises:
      UnreadableVideoError: the file cannot be decoded, has no video stream or no frames,
        or stops well before the frame count its header announces (truncated).
    """
    frames, rate, _ = _decode(path, fps, short_side, lambda image: image, drop_repeats)
    return np.stack(frames), rate


def decode_video_to_jpegs(
    path: str, fps: float | None = None, short_side: int | None = None, quality: int = 90
) -> tuple[list[bytes], float]:
    """As `decode_video`, but each frame JPEG-encoded as it is decoded (bounded memory)."""
    jpegs, rate, _ = decode_to_jpegs(path, fps, short_side, quality)
    return jpegs, rate


def decode_to_jpegs(
    path, fps, short_side, quality, drop_repeats=None
) -> tuple[list[bytes], float, FrameCounts]:
    """As `decode_video_to_jpegs`, and the source frame counts (for the converter's report)."""
    return _decode(path, fps, short_side, lambda image: encode_jpeg(image, quality), drop_repeats)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """uint8 [H, W, 3] -> JPEG bytes."""
    return tf.io.encode_jpeg(image, quality=quality).numpy()


def _decode(path, fps, short_side, convert, drop_repeats=None):
    """Decodes like decode_video: (converted output frames, output frame rate, FrameCounts)."""
    av = _import_av()
    try:
        if "://" in path:  # gs://, s3://, ...: PyAV reads local files, so read it whole
            with tf.io.gfile.GFile(path, "rb") as f:
                source = io.BytesIO(f.read())
        else:
            source = path
        with av.open(source) as container:
            if not container.streams.video:
                raise UnreadableVideoError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            announced = stream.frames or 0
            exact = announced > 0
            if not announced and container.duration:
                announced = int(container.duration / 1e6 * rate)
            frames, decoded, repeats = _resample(
                container.decode(stream), rate, fps, short_side, convert, drop_repeats
            )
    except UnreadableVideoError:
        raise
    except Exception as e:  # PyAV raises FFmpegError subclasses, also OSError/ValueError
        raise UnreadableVideoError(f"{type(e).__name__}: {e}") from e
    if not frames:
        raise UnreadableVideoError("no frames decoded")
    if announced and decoded < _TRUNCATION_TOLERANCE * announced:
        raise UnreadableVideoError(
            f"truncated: decoded {decoded} of the {announced} frames its header announces"
        )
    return frames, float(fps or rate), FrameCounts(decoded, announced, exact, repeats)


def repeat_psnr(image: np.ndarray, kept: np.ndarray) -> float:
    """PSNR (dB, max 255) of uint8 frames [H, W, 3]; inf when identical."""
    mse = float(np.mean((image.astype(np.float32) - kept.astype(np.float32)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _resample(decoded_frames, rate, fps, short_side, convert, drop_repeats=None):
    """(converted frames resampled to fps and resized, number of source frames decoded,
    number of output frames dropped as repeats)."""
    out = []
    shape = None
    last = [None, None]  # the frame emitted last and its conversion: repeats reuse it
    kept = [None]  # with drop_repeats: the last image kept, [h, w, 3] uint8
    repeats = 0

    def emit(frame):
        nonlocal shape, repeats
        if frame is last[0]:
            if drop_repeats is not None:  # the resampler's own repeat
                repeats += 1
                return
        else:
            if shape is None:
                shape = _resized_shape(frame.height, frame.width, short_side)
            h, w = shape
            image = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
            if drop_repeats is not None:
                if kept[0] is not None and repeat_psnr(image, kept[0]) > drop_repeats:
                    repeats += 1
                    last[:] = [frame, None]
                    return
                kept[0] = image
            last[:] = [frame, convert(image)]  # [h, w, 3] uint8 -> whatever convert makes
        out.append(last[1])

    prev, prev_t, start = None, 0.0, None
    next_slot = 0  # output frame k is due at time k / fps
    count = 0
    for i, frame in enumerate(decoded_frames):
        count += 1
        if fps is None:
            emit(frame)
            continue
        t = frame.time if frame.time is not None else i / rate
        start = t if start is None else start
        t -= start
        if prev is not None:
            midpoint = (prev_t + t) / 2  # slots up to the midpoint are nearer to prev
            while next_slot / fps <= midpoint + 1e-9:
                emit(prev)
                next_slot += 1
        prev, prev_t = frame, t
    if fps is not None and prev is not None:
        while next_slot / fps <= prev_t + 1e-9:
            emit(prev)
            next_slot += 1
    return out, count, repeats
