"""Synthetic camera motion over a photograph: videos with known, real motion.

A virtual camera looks at a photograph I [H0, W0, 3] through a square window of
S x S output pixels. At frame t its pose is a centre c[t] (image pixels, (y, x)), a
scale z[t] (image pixels per output pixel) and a roll angle theta[t]; output pixel
u (centred coordinates, (y, x)) shows

    frame[t](u) = I(c[t] + z[t] R(theta[t]) u)          (bilinear, edges repeat)

The pose moves as a camera does: a pan whose velocity v (output px per frame) drifts
slowly and may start or stop inside the video, a zoom (z[t + 1] = z[t] e^{zeta}),
a slow roll (theta[t + 1] = theta[t] + omega), handheld shake; optionally a second
picture (an "object", a disc cut from another photograph) moves across the view with
its own velocity. Each frame is rendered at `supersample` x the resolution and box
filtered (no aliasing), averaged over `blur_samples` poses spread over half a frame
(motion blur), then gets a slow gain drift and sensor noise, and is rounded to uint8.

Shapes: photograph [H0, W0, C] uint8 (C = 1 or 3), video [T, S, S, 3] uint8.
Deterministic per seed: camera_video(photo, T, seed) is the same array on every call.
Numpy only, so that benchmarks and tests make videos without another dependency.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class CameraMotion:
    """The ranges a video's camera path is drawn from (output pixels, S = size)."""

    size: int = 128  # S: output frames are S x S
    view: tuple[float, float] = (0.35, 0.75)  # the window's side, fraction of the short side
    still: float = 0.2  # probability that the camera does not pan (shake, zoom may remain)
    speed: tuple[float, float] = (0.5, 6.0)  # pan speed, px per frame (log-uniform)
    drift: float = 0.08  # per-frame random change of the pan velocity, fraction of the speed
    start_stop: float = 0.3  # probability that the pan starts or stops inside the video
    zoom: float = 0.008  # |zeta| <= zoom per frame (log scale), with probability 1/2
    roll: float = 0.004  # |omega| <= roll radians per frame, with probability 1/2
    shake: float = 0.6  # handheld jitter amplitude in px, with probability shake_p
    shake_p: float = 0.3
    object_p: float = 0.5  # probability of a moving object (when objects are given)
    object_speed: tuple[float, float] = (0.5, 4.0)  # its own velocity, px per frame
    noise: tuple[float, float] = (1.0, 2.5)  # sensor noise sigma, uint8 levels
    gain: float = 0.03  # slow brightness drift, +- fraction over the video
    supersample: int = 2  # render at this factor and box filter
    blur_samples: int = 3  # poses averaged per frame over half a frame's motion

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"CameraMotion.size = {self.size}; frames need at least 8 px.")
        if not 0.0 < self.view[0] <= self.view[1] <= 1.0:
            raise ValueError(
                f"CameraMotion.view = {self.view}: a range (low, high) of fractions of the "
                "photograph's short side, 0 < low <= high <= 1."
            )
        if self.supersample < 1 or self.blur_samples < 1:
            raise ValueError("CameraMotion.supersample and .blur_samples must be >= 1.")


@dataclasses.dataclass(frozen=True)
class CameraPath:
    """A camera's poses per frame (and sub-frame, for motion blur).

    centre [T, B, 2] (y, x image px), scale [T, B] (image px per output px),
    angle [T, B] (radians), B = blur_samples; gain [T]; object [T, 2] (its centre in
    output px from the view's centre) or None.
    """

    centre: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    gain: np.ndarray
    noise: float
    object: np.ndarray | None = None
    object_radius: float = 0.0


def camera_path(
    image_shape, num_frames: int, rng: np.random.Generator, motion: CameraMotion, has_object: bool
) -> CameraPath:
    """Draws a path that keeps the rotated, scaled window inside the photograph."""
    height, width = image_shape[:2]
    s = motion.size
    z0 = rng.uniform(*motion.view) * min(height, width) / s
    # Per-frame rates (output px / frame, log-scale / frame, radians / frame).
    if rng.uniform() < motion.still:
        speed = 0.0
    else:
        speed = float(np.exp(rng.uniform(*np.log(motion.speed))))
    heading = rng.uniform(0, 2 * np.pi)
    velocity = speed * np.array([np.sin(heading), np.cos(heading)])
    zeta = rng.uniform(-motion.zoom, motion.zoom) if rng.uniform() < 0.5 else 0.0
    omega = rng.uniform(-motion.roll, motion.roll) if rng.uniform() < 0.5 else 0.0
    shake = motion.shake if rng.uniform() < motion.shake_p else 0.0
    # A pan that starts or stops: the velocity ramps between 0 and v over a few frames.
    ramp = np.ones(num_frames)
    if speed and rng.uniform() < motion.start_stop:
        at, length = rng.integers(num_frames // 4, 3 * num_frames // 4), rng.integers(3, 8)
        up = np.clip((np.arange(num_frames) - at) / length, 0.0, 1.0)
        ramp = up if rng.uniform() < 0.5 else 1.0 - up
    steps = motion.blur_samples
    offsets = (np.arange(steps) - (steps - 1) / 2) / (2 * steps) if steps > 1 else np.zeros(1)
    times = np.arange(num_frames)[:, None] + offsets[None, :]  # [T, B] in frames
    # Integrate the pose at frame times, then interpolate the sub-frame poses.
    log_z = np.log(z0) + zeta * np.arange(num_frames)
    theta = rng.uniform(-0.05, 0.05) + omega * np.arange(num_frames)
    centre = np.zeros((num_frames, 2))
    v = velocity.copy()
    c = np.array([height / 2, width / 2]) + rng.uniform(-0.25, 0.25, 2) * [height, width]
    for t in range(num_frames):
        spread = s / 2 * (abs(np.cos(theta[t])) + abs(np.sin(theta[t])))  # half-extent / z
        widest = (min(height, width) / 2 - 2.5) / spread  # the largest scale that fits
        z = np.exp(log_z[t])
        if t and z > widest:  # a zoom out stops where the photograph ends
            z = widest
            log_z[t] = np.log(z)
        reach = z * spread + 2
        low, high = np.array([reach, reach]), np.array([height - reach, width - reach])
        if np.any(low > high):
            raise ValueError(
                f"The view of {s} px at scale {z:.2f}, rolled by {theta[t]:.3f} rad, does not fit "
                f"the {height}x{width} photograph: use a smaller CameraMotion.view (the "
                "window's side as a fraction of the short side, room left to roll and pan)."
            )
        c = np.clip(c, low, high)
        centre[t] = c
        # Content moves by -v output px per frame: the window moves by z R v image px.
        step = z * rotation(theta[t]) @ (v * ramp[t])
        bounce = (c + step < low) | (c + step > high)
        v = np.where(bounce, -v, v)  # the camera turns back at the photograph's edge
        c = c + np.where(bounce, -step, step)
        if speed:  # the velocity drifts, up to 1.25 x the fastest pan
            v = v + rng.normal(0, motion.drift * speed, 2)
            v = v * min(1.0, 1.25 * motion.speed[1] / max(np.linalg.norm(v), 1e-9))
    jitter = shake * smooth_noise(rng, num_frames, 2) if shake else np.zeros((num_frames, 2))
    centre = centre + jitter * np.exp(log_z)[:, None]
    frame = np.arange(num_frames)
    sub = np.clip(times, 0, num_frames - 1)
    path_centre = np.stack([np.interp(sub, frame, centre[:, k]) for k in range(2)], axis=-1)
    path_scale = np.exp(np.interp(sub, frame, log_z))
    path_angle = np.interp(sub, frame, theta)
    gain = 1.0 + rng.uniform(-motion.gain, motion.gain) * np.linspace(-1, 1, num_frames)
    noise = float(rng.uniform(*motion.noise))
    obj, radius = None, 0.0
    if has_object and rng.uniform() < motion.object_p:
        radius = rng.uniform(0.12, 0.25) * s
        start = rng.uniform(-0.3, 0.3, 2) * s
        obj_speed = float(np.exp(rng.uniform(*np.log(motion.object_speed))))
        angle = rng.uniform(0, 2 * np.pi)
        velocity = obj_speed * np.array([np.sin(angle), np.cos(angle)])
        obj = start[None, :] + velocity[None, :] * frame[:, None]
    return CameraPath(path_centre, path_scale, path_angle, gain, noise, obj, radius)


def rotation(theta: float) -> np.ndarray:
    """R(theta) [2, 2] acting on (y, x)."""
    cos, sin = np.cos(theta), np.sin(theta)
    return np.array([[cos, -sin], [sin, cos]])


def smooth_noise(rng: np.random.Generator, num_frames: int, dims: int) -> np.ndarray:
    """Handheld jitter [T, dims]: white noise smoothed over ~3 frames, unit std."""
    raw = rng.normal(0, 1, (num_frames + 4, dims))
    kernel = np.array([1, 2, 3, 2, 1], float) / 9
    out = np.stack([np.convolve(raw[:, k], kernel, mode="valid") for k in range(dims)], -1)
    return out / max(out.std(), 1e-6)


def sample(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear samples of image [H0, W0, C] float at (y, x) [...]: [..., C] (edges repeat)."""
    height, width = image.shape[:2]
    y = np.clip(y, 0, height - 1)
    x = np.clip(x, 0, width - 1)
    y0 = np.minimum(np.floor(y).astype(np.int64), height - 2)
    x0 = np.minimum(np.floor(x).astype(np.int64), width - 2)
    fy, fx = (y - y0)[..., None], (x - x0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def grid(size: int, supersample: int) -> np.ndarray:
    """Output sample positions u, centred: [S * ss, S * ss, 2] (y, x) in output px."""
    n = size * supersample
    axis = (np.arange(n) + 0.5) / supersample - size / 2
    return np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1)


def render(
    image: np.ndarray,
    path: CameraPath,
    motion: CameraMotion,
    rng: np.random.Generator,
    picture: np.ndarray | None = None,
) -> np.ndarray:
    """The video a path sees: image [H0, W0, C] uint8 -> [T, S, S, 3] uint8.

    picture: the object's photograph (a disc of radius path.object_radius cut from its
    centre, soft edged), drawn where path.object says; None: no object.
    """
    image = as_rgb(image).astype(np.float32)
    s, ss = motion.size, motion.supersample
    u = grid(s, ss)  # [n, n, 2]
    disc = None
    if path.object is not None and picture is not None:
        picture = as_rgb(picture).astype(np.float32)
        r = path.object_radius
        scale = 0.45 * min(picture.shape[:2]) / r  # the disc shows 90% of the short side
        centre = np.array(picture.shape[:2], float) / 2
        disc = (picture, scale, centre)
    frames = []
    for t in range(path.centre.shape[0]):
        acc = np.zeros((s * ss, s * ss, 3), np.float32)
        for b in range(path.centre.shape[1]):
            z, theta = path.scale[t, b], path.angle[t, b]
            src = path.centre[t, b] + z * np.einsum("ij,hwj->hwi", rotation(theta), u)
            view = sample(image, src[..., 0], src[..., 1])
            if disc is not None:
                picture, scale, centre = disc
                rel = u - path.object[t]
                dist = np.sqrt((rel**2).sum(-1))
                alpha = np.clip(path.object_radius - dist + 0.5, 0.0, 1.0)[..., None]
                pic = sample(picture, *(centre[:, None, None] + scale * np.moveaxis(rel, -1, 0)))
                view = view * (1 - alpha) + pic * alpha
            acc += view
        acc /= path.centre.shape[1]
        frame = acc.reshape(s, ss, s, ss, 3).mean(axis=(1, 3))  # box filter
        frame = frame * path.gain[t] + rng.normal(0, path.noise, frame.shape)
        frames.append(np.clip(np.round(frame), 0, 255).astype(np.uint8))
    return np.stack(frames)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (alpha dropped) -> [H, W, 3]; bool -> 0/255."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"A photograph is [H, W] or [H, W, 1 | 3 | 4], got {image.shape}.")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image[..., :3]


def camera_video(
    image: np.ndarray,
    num_frames: int,
    seed: int,
    motion: CameraMotion = CameraMotion(),
    objects=(),
) -> np.ndarray:
    """A video of a camera moving over `image`: [T, S, S, 3] uint8, the same for a seed.

    objects: photographs one of which may cross the view as a moving disc (drawn with
    probability motion.object_p when given).
    """
    if num_frames < 2:
        raise ValueError(f"camera_video(num_frames={num_frames}): a video needs >= 2 frames.")
    rng = np.random.default_rng(seed)
    path = camera_path(np.shape(image), num_frames, rng, motion, has_object=bool(len(objects)))
    picture = objects[rng.integers(len(objects))] if len(objects) else None
    return render(image, path, motion, rng, picture)
