"""Tiny real video files for the data tests, written with PyAV (imported by the tests).

Frame t of video v is one flat colour, so it survives codecs and JPEG nearly intact:
R = 16 + 24 (t mod 10) (the frame index), G = 30 + 40 v (the video, v <= 5), B = 128.
"""

import av
import numpy as np

HEIGHT, WIDTH = 32, 48


def frame_colour(t: int, v: int) -> tuple[int, int, int]:
    return 16 + 24 * (t % 10), 30 + 40 * v, 128


def write_video(path, codec, num_frames, v=0, fps=10, pix_fmt="yuv420p", size=(HEIGHT, WIDTH)):
    """Writes `num_frames` flat-colour frames (see frame_colour) to `path` with `codec`."""
    h, w = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for t in range(num_frames):
            image = np.empty((h, w, 3), np.uint8)
            image[...] = frame_colour(t, v)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


# (class, file name, codec, pix_fmt, frames): several containers and codecs.
GOOD_VIDEOS = [
    ("jump", "v0.mp4", "libx264", "yuv420p", 6),
    ("jump", "v1.avi", "mpeg4", "yuv420p", 7),
    ("jump", "v2.mkv", "libx264", "yuv420p", 8),
    ("run", "v3.avi", "mjpeg", "yuvj420p", 5),
    ("run", "v4.mp4", "mpeg4", "yuv420p", 9),
    ("run", "v5.webm", "libvpx-vp9", "yuv420p", 6),
]
