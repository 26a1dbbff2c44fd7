"""Moving shapes: a synthetic video task whose label needs motion.

Each clip shows one shape (square, circle, triangle, cross, diamond) gliding at a
constant speed over a textured, noisy background. The label is the pair
(shape, direction of motion):

    label = shape_index * num_directions + direction_index

so one frame tells the shape but never the direction, and a per-frame model is
capped at 1 / num_directions of the classes it can name (1/4 with the default 12
classes), however well it sees shapes. A model that compares frames can reach 1.

No single frame leaks the direction:
- the start position is uniform over the frame and motion is toroidal (a shape
  leaving one edge comes back on the other, drawn across the seam), so at every
  step the position is uniform whatever the direction;
- shapes keep one orientation (the triangle always points up), no blur, no trail;
- colours, background texture, pixel noise and distractors are drawn independently
  of the label.

Generation is on the fly and stateless: clip `i` of split `s` under `seed` is a
pure function of the key (i, 3 * seed + split_id), so parallel maps stay
deterministic and train, eval and test never share a key.

With `temporal_task` ("arrow", "speed": data/temporal.py) the label is made from time
instead: the clip forward or reversed, or its frames at stride 1, 2 or 4 (the shape 2,
4 or 8 pixels per frame at the default speed). Arrow of time is a control here, not a
task: constant motion on a torus is time-symmetric (a reversed clip is a forward clip
of the opposite direction, from another uniform start), so no model can beat 1/2.

Run `python -m sideways_tf.data.moving_shapes --png docs/moving_shapes.png` to draw
a few clips.
"""

from __future__ import annotations

import argparse
import dataclasses

import gin
import numpy as np
import tensorflow as tf

from sideways_tf.data import contract
from sideways_tf.data import temporal as temporal_lib

SHAPES = ("square", "circle", "triangle", "cross", "diamond")
DIRECTIONS = ("right", "left", "down", "up")
# (dy, dx) in pixels per frame per unit of speed; rows grow downwards.
_DIRECTION_STEPS = np.array([[0, 1], [0, -1], [1, 0], [-1, 0]], np.int32)
SPLITS = ("train", "eval", "test")
DEFAULT_EVAL_EXAMPLES = 512

_SUPERSAMPLE = 4  # sub-pixel samples per axis for anti-aliased shape edges
_TEXTURE_CELLS = 4  # texture grid cells per axis, bilinearly upsampled to the frame
_SHAPE_COLOUR_RANGE = (0.6, 1.0)  # per channel, in [0, 1] units: shapes are bright
_BACKGROUND_BASE_RANGE = (0.0, 0.15)  # per channel; texture adds up to `background_texture`


def num_classes(num_shapes: int = 3, num_directions: int = 4) -> int:
    """Number of (shape, direction) classes."""
    _check_counts(num_shapes, num_directions)
    return num_shapes * num_directions


def class_names(num_shapes: int = 3, num_directions: int = 4) -> list[str]:
    """Class names "shape/direction" in label order, e.g. ["square/right", ...]."""
    _check_counts(num_shapes, num_directions)
    return [f"{s}/{d}" for s in SHAPES[:num_shapes] for d in DIRECTIONS[:num_directions]]


def _check_counts(num_shapes: int, num_directions: int) -> None:
    if not 1 <= num_shapes <= len(SHAPES):
        raise ValueError(
            f"num_shapes={num_shapes} is out of range; pick 1 to {len(SHAPES)} (the shapes are "
            f"{', '.join(SHAPES)}, used in that order)."
        )
    if num_directions not in (2, 4):
        raise ValueError(
            f"num_directions={num_directions} is not supported; use 2 (right, left) or 4 "
            "(right, left, down, up)."
        )


@dataclasses.dataclass(frozen=True)
class MovingShapesOptions:
    """Generator options, validated on construction. See moving_shapes_dataset."""

    frame_size: int | tuple[int, int] = 32
    num_frames: int = 16
    num_shapes: int = 3
    num_directions: int = 4
    speed: int | tuple[int, int] = 2
    shape_size: int = 9
    noise_std: float = 0.05
    background_texture: float = 0.3
    num_distractors: int = 0
    distractor_size: int = 5

    def __post_init__(self):
        _check_counts(self.num_shapes, self.num_directions)
        h, w = self.height_width
        if h < 8 or w < 8:
            raise ValueError(f"frame_size={self.frame_size} is too small; use at least 8 pixels.")
        if self.num_frames < 1:
            raise ValueError(f"num_frames={self.num_frames} must be at least 1.")
        lo, hi = self.speed_range
        if not 1 <= lo <= hi < min(h, w) / 2:
            raise ValueError(
                f"speed={self.speed} is out of range; speeds must be whole pixels per frame in "
                f"[1, {(min(h, w) - 1) // 2}] so that right and left (or down and up) stay "
                "distinguishable on the wrapped-around frame, e.g. speed=2 or speed=(2, 3)."
            )
        for name in ("shape_size", "distractor_size"):
            size = getattr(self, name)
            if not 3 <= size <= min(h, w) - 2:
                raise ValueError(
                    f"{name}={size} is out of range for {h}x{w} frames; use 3 to {min(h, w) - 2}."
                )
        if self.num_distractors < 0:
            raise ValueError(f"num_distractors={self.num_distractors} must be >= 0.")
        if self.num_distractors and self.distractor_size >= self.shape_size:
            raise ValueError(
                f"distractor_size={self.distractor_size} must be smaller than "
                f"shape_size={self.shape_size}: size is what tells the labelled shape apart "
                "from the distractors."
            )
        if self.noise_std < 0 or self.background_texture < 0:
            raise ValueError("noise_std and background_texture must be >= 0.")

    @property
    def height_width(self) -> tuple[int, int]:
        if isinstance(self.frame_size, int):
            return self.frame_size, self.frame_size
        h, w = self.frame_size
        return int(h), int(w)

    @property
    def speed_range(self) -> tuple[int, int]:
        if isinstance(self.speed, int):
            return self.speed, self.speed
        lo, hi = self.speed
        return int(lo), int(hi)


@dataclasses.dataclass(frozen=True)
class MovingShapesInfo:
    """TFDS-style description of the task (cf. tfds.core.DatasetInfo)."""

    name: str
    num_classes: int
    class_names: list[str]
    frame_shape: tuple[int, int, int]  # [H, W, 3]
    clip_shape: tuple[int, int, int, int]  # [K, H, W, 3]
    splits: tuple[str, ...]
    element_spec: dict[str, tf.TensorSpec]
    options: MovingShapesOptions

    def int2str(self, label: int) -> str:
        return self.class_names[label]

    def str2int(self, name: str) -> int:
        return self.class_names.index(name)


def moving_shapes_info(**options) -> MovingShapesInfo:
    """Describes the task for the options of moving_shapes_dataset (same keywords)."""
    opts = MovingShapesOptions(**options)
    h, w = opts.height_width
    k = opts.num_frames
    return MovingShapesInfo(
        name="moving_shapes",
        num_classes=num_classes(opts.num_shapes, opts.num_directions),
        class_names=class_names(opts.num_shapes, opts.num_directions),
        frame_shape=(h, w, 3),
        clip_shape=(k, h, w, 3),
        splits=SPLITS,
        element_spec={
            "frames": tf.TensorSpec([k, h, w, 3], tf.float32),
            "label": tf.TensorSpec([], tf.int32),
            "video_index": tf.TensorSpec([], tf.int64),
        },
        options=opts,
    )


# ----------------------------------------------------------------------------- masks


def _shape_coverage(name: str, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Inside-test of a shape in unit coordinates (radius 1, y pointing down)."""
    ay, ax = np.abs(y), np.abs(x)
    if name == "square":
        return (ax <= 0.8) & (ay <= 0.8)
    if name == "circle":
        return x * x + y * y <= 1.0
    if name == "triangle":  # apex up at y = -1, base at y = 0.8; never turned
        return (y <= 0.8) & (ax <= (y + 1.0) / 1.8)
    if name == "cross":
        return ((ax <= 0.33) & (ay <= 1.0)) | ((ay <= 0.33) & (ax <= 1.0))
    if name == "diamond":
        return ax + ay <= 1.0
    raise ValueError(f"Unknown shape {name!r}; known shapes: {SHAPES}.")


def shape_masks(num_shapes: int, size: int, height: int, width: int) -> np.ndarray:
    """Anti-aliased shape masks centred on pixel (0, 0) of a wrapped-around frame.

    Rolling a mask by (y, x) centres the shape on pixel (y, x), wrapping across the
    edges. Returns float32 [num_shapes, H, W] with values in [0, 1].
    """
    radius = size / 2
    reach = int(np.ceil(radius))
    offsets = np.arange(-reach, reach + 1)  # [P] pixel offsets from the centre
    sub = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5  # [S] sub-pixel offsets
    coords = (offsets[:, None] + sub[None, :]).reshape(-1) / radius  # [P * S]
    y, x = np.meshgrid(coords, coords, indexing="ij")  # [P*S, P*S]
    masks = np.zeros([num_shapes, height, width], np.float32)
    rows = offsets % height
    cols = offsets % width
    p = len(offsets)
    for i, name in enumerate(SHAPES[:num_shapes]):
        inside = _shape_coverage(name, y, x).astype(np.float32)
        cover = inside.reshape(p, _SUPERSAMPLE, p, _SUPERSAMPLE).mean(axis=(1, 3))  # [P, P]
        masks[i][np.ix_(rows, cols)] = cover
    return masks


# ----------------------------------------------------------------------------- generator


class _Generator:
    """Renders videos from per-example keys; all randomness is stateless."""

    def __init__(self, opts: MovingShapesOptions):
        self.opts = opts
        self.h, self.w = opts.height_width
        self.target_masks = tf.constant(
            shape_masks(opts.num_shapes, opts.shape_size, self.h, self.w)
        )
        self.distractor_masks = tf.constant(
            shape_masks(opts.num_shapes, opts.distractor_size, self.h, self.w)
        )
        self.steps = tf.constant(_DIRECTION_STEPS[: opts.num_directions])  # [D, 2]

    def key(self, split_id: int, seed: int, index: tf.Tensor) -> tf.Tensor:
        """Unique per (seed, split, index): [index, 3 * seed + split_id], int64 [2]."""
        return tf.stack([tf.cast(index, tf.int64), tf.constant(3 * seed + split_id, tf.int64)])

    def params(self, key: tf.Tensor) -> dict[str, tf.Tensor]:
        """Latent parameters of one video; object 0 is the labelled shape.

        Returns shape, direction, speed: int32 [O]; start: int32 [O, 2] as (y, x);
        colour: float32 [O, 3]; with O = 1 + num_distractors.
        """
        o = self.opts
        n = 1 + o.num_distractors
        keys = tf.random.experimental.stateless_split(key, num=5)  # [5, 2]
        shape = tf.random.stateless_uniform([n], keys[0], 0, o.num_shapes, tf.int32)
        direction = tf.random.stateless_uniform([n], keys[1], 0, o.num_directions, tf.int32)
        lo, hi = o.speed_range
        speed = tf.random.stateless_uniform([n], keys[2], lo, hi + 1, tf.int32)
        flat = tf.random.stateless_uniform([n], keys[3], 0, self.h * self.w, tf.int32)
        start = tf.stack([flat // self.w, flat % self.w], axis=-1)  # [O, 2]
        colour = tf.random.stateless_uniform([n, 3], keys[4], *_SHAPE_COLOUR_RANGE)
        return {
            "shape": shape,
            "direction": direction,
            "speed": speed,
            "start": start,
            "colour": colour,
        }

    def positions(self, params: dict[str, tf.Tensor], num_frames: int) -> tf.Tensor:
        """Shape centres per object and frame, wrapped: int32 [O, T, 2] as (y, x)."""
        velocity = tf.gather(self.steps, params["direction"]) * params["speed"][:, None]  # [O, 2]
        t = tf.range(num_frames, dtype=tf.int32)[None, :, None]  # [1, T, 1]
        pos = params["start"][:, None, :] + t * velocity[:, None, :]  # [O, T, 2]
        return tf.math.floormod(pos, tf.constant([self.h, self.w], tf.int32))

    def render(self, key: tf.Tensor, num_frames: int) -> tuple[tf.Tensor, tf.Tensor]:
        """One video: frames float32 [T, H, W, 3] in [-1, 1], label int32 []."""
        o, h, w = self.opts, self.h, self.w
        bg_key, noise_key, params_key = tf.unstack(
            tf.random.experimental.stateless_split(key, num=3)
        )
        params = self.params(params_key)
        pos = self.positions(params, num_frames)  # [O, T, 2]

        masks = tf.concat(
            [
                tf.gather(self.target_masks, params["shape"][:1]),
                tf.gather(self.distractor_masks, params["shape"][1:]),
            ],
            axis=0,
        )  # [O, H, W]
        # Toroidal roll per object and frame: out[i, j] = mask[(i - y) % H, (j - x) % W].
        rows = tf.math.floormod(tf.range(h)[None, None, :] - pos[..., :1], h)  # [O, T, H]
        cols = tf.math.floormod(tf.range(w)[None, None, :] - pos[..., 1:], w)  # [O, T, W]
        rolled = tf.gather(masks, rows, axis=1, batch_dims=1)  # [O, T, H, W]
        rolled = tf.gather(rolled, cols, axis=3, batch_dims=2)  # [O, T, H, W]

        base_key, tex_key = tf.unstack(tf.random.experimental.stateless_split(bg_key, num=2))
        base = tf.random.stateless_uniform([3], base_key, *_BACKGROUND_BASE_RANGE)
        cells = tf.random.stateless_uniform([_TEXTURE_CELLS, _TEXTURE_CELLS, 3], tex_key)
        texture = tf.image.resize(cells, [h, w], method="bilinear")  # [H, W, 3]
        frames = tf.broadcast_to(base + o.background_texture * texture, [num_frames, h, w, 3])

        # Painter's order: distractors first, the labelled shape (object 0) on top.
        for i in reversed(range(1 + o.num_distractors)):
            alpha = rolled[i][..., None]  # [T, H, W, 1]
            frames += alpha * (params["colour"][i] - frames)  # [T, H, W, 3]
        if o.noise_std > 0:
            # Uniform noise of standard deviation noise_std (cheaper than Gaussian). Philox
            # fills in order, so a longer video starts with the same noise as a shorter one.
            a = o.noise_std * 3.0**0.5
            frames += tf.random.stateless_uniform([num_frames, h, w, 3], noise_key, -a, a)
        frames = 2.0 * tf.clip_by_value(frames, 0.0, 1.0) - 1.0  # [T, H, W, 3] in [-1, 1]
        label = params["shape"][0] * o.num_directions + params["direction"][0]
        return frames, label


def _indices(split: str, num_examples: int | None) -> tf.data.Dataset:
    if num_examples is not None and num_examples < 1:
        raise ValueError(f"num_examples={num_examples} must be >= 1, or None.")
    if split == "train" and num_examples is None:
        return tf.data.Dataset.counter()  # fresh indices forever
    return tf.data.Dataset.range(DEFAULT_EVAL_EXAMPLES if num_examples is None else num_examples)


@gin.configurable(module="sideways_tf.data")
def moving_shapes_dataset(
    split: str = "train",
    num_examples: int | None = None,
    seed: int = 0,
    clips_per_video: int = 1,
    temporal_task: str | None = None,
    **options,
) -> tf.data.Dataset:
    """Moving-shapes clips, unbatched: {"frames", "label", "video_index"}.

    Args:
      split: "train", "eval" or "test"; each split has its own stream of videos.
      num_examples: number of videos. None means infinite for "train" (fresh video
        indices forever) and 512 for "eval" / "test".
      seed: picks the universe of videos; same seed, split and index give the same
        clip bit for bit.
      clips_per_video: cut each video into this many consecutive clips of
        num_frames (one trajectory continued); they share label and video_index and
        come one after another.
      temporal_task: None (label = shape and direction), or "arrow" / "speed": the label
        is the clip's class of that temporal task (data/temporal.py), made from a video of
        the task's window of frames. "train" draws one class per video from its key;
        "eval" and "test" give every video once per class (a clip and its reverse, the
        three speeds), with video_index = index x classes + class.
      **options: fields of MovingShapesOptions (defaults sized so that a small
        convnet learns the task in minutes on 2 CPU cores):
        frame_size=32 (int or (H, W)); num_frames=16 (K); num_shapes=3 (square,
        circle, triangle, then cross, diamond); num_directions=4 (right, left, down,
        up; 2 keeps right, left); speed=2 pixels per frame (int, or (lo, hi) drawn
        per object), so a default clip crosses the frame exactly once;
        shape_size=9 pixels; noise_std=0.05 (standard deviation of uniform
        per-pixel noise, fresh every frame, in [0, 1] units); background_texture=0.3
        (amplitude of a static, smooth per-clip texture); num_distractors=0
        (smaller shapes moving in random directions behind the labelled one);
        distractor_size=5 (must be < shape_size: size tells the labelled shape).

    Returns:
      tf.data.Dataset of dicts: frames float32 [K, H, W, 3] in [-1, 1], label int32
      [] = shape * num_directions + direction, video_index int64 [].
    """
    if clips_per_video < 1:
        raise ValueError(f"clips_per_video={clips_per_video} must be >= 1.")
    opts = MovingShapesOptions(**options)
    gen = _Generator(opts)
    split_id = _split_id(split)
    k, c = opts.num_frames, clips_per_video
    h, w = gen.h, gen.w
    temporal = temporal_lib.get(temporal_task, "moving_shapes_dataset.temporal_task")
    if temporal is not None:
        if c != 1:
            raise ValueError(
                f"moving_shapes_dataset.clips_per_video = {c} with temporal_task = "
                f"{temporal_task!r}: a temporal task makes one clip per video and class; "
                "set clips_per_video = 1."
            )
        ds = _indices(split, num_examples).map(
            lambda index: _temporal_clips(gen, temporal, split_id, seed, index, split == "train"),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return contract.with_class_names(ds.unbatch(), temporal.class_names)

    def make(index):
        frames, label = gen.render(gen.key(split_id, seed, index), k * c)  # [C*K, H, W, 3]
        if c == 1:
            return {"frames": frames, "label": label, "video_index": index}
        return {
            "frames": tf.reshape(frames, [c, k, h, w, 3]),
            "label": tf.fill([c], label),
            "video_index": tf.fill([c], index),
        }

    ds = _indices(split, num_examples).map(
        make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    ds = ds if c == 1 else ds.unbatch()
    return contract.with_class_names(ds, class_names(opts.num_shapes, opts.num_directions))


def _temporal_clips(gen, temporal, split_id: int, seed: int, index, draw: bool) -> dict:
    """One video's clips of a temporal task: one drawn class (draw) or every class.

    Returns {"frames" [n, K, H, W, 3], "label" [n], "video_index" [n]} (n = 1 when draw).
    """
    k = gen.opts.num_frames
    key = gen.key(split_id, seed, index)
    video, _ = gen.render(key, temporal.window(k, 1))  # [W, H, W, 3]
    offsets = tf.constant(temporal.clip_offsets(k, 1))  # [n, K]
    if draw:  # stateless: the same class for the same video, run after run
        label_key = tf.random.experimental.stateless_fold_in(key, 1)
        labels = tf.random.stateless_uniform([1], label_key, 0, temporal.num_classes, tf.int32)
    else:
        labels = tf.range(temporal.num_classes, dtype=tf.int32)
    return {
        "frames": tf.gather(video, tf.gather(offsets, labels)),  # [n, K, H, W, 3]
        "label": labels,
        "video_index": tf.cast(index, tf.int64) * temporal.num_classes + tf.cast(labels, tf.int64),
    }


@gin.configurable(module="sideways_tf.data")
def moving_shapes_future_dataset(
    split: str = "train",
    num_examples: int | None = None,
    seed: int = 0,
    horizon: int = 8,
    **options,
) -> tf.data.Dataset:
    """Future-frame variant: unlabelled videos of num_frames + horizon frames.

    Same videos as moving_shapes_dataset for the same seed, split and index (its
    first num_frames frames are that clip). The future-frame task
    (sideways_tf.prediction, data/moving_shapes_future.gin) trains on the whole
    clip, every step predicting x[t - lag + h]: the horizon extra frames give
    the last steps their targets.

    Returns:
      tf.data.Dataset of {"frames": float32 [K + horizon, H, W, 3] in [-1, 1]}.
    """
    if horizon < 1:
        raise ValueError(f"horizon={horizon} must be >= 1 frame.")
    gen = _Generator(MovingShapesOptions(**options))
    split_id = _split_id(split)
    length = gen.opts.num_frames + horizon

    def make(index):
        return {"frames": gen.render(gen.key(split_id, seed, index), length)[0]}

    return _indices(split, num_examples).map(
        make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
    return SPLITS.index(split)


def video_params(split: str = "train", seed: int = 0, index: int = 0, **options) -> dict:
    """Latent parameters of one video (for tests and figures).

    Returns numpy arrays: shape, direction, speed [O]; start [O, 2]; colour [O, 3];
    label []; with object 0 the labelled shape.
    """
    gen = _Generator(MovingShapesOptions(**options))
    params = gen.params(
        tf.random.experimental.stateless_split(gen.key(_split_id(split), seed, index), num=3)[2]
    )
    out = {name: value.numpy() for name, value in params.items()}
    out["label"] = out["shape"][0] * gen.opts.num_directions + out["direction"][0]
    return out


# ----------------------------------------------------------------------------- figure


def save_png(path: str, num_clips: int = 4, frames_shown: int = 8, seed: int = 0, **options):
    """Draws num_clips eval clips, every other frame, one clip per row, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = moving_shapes_info(**options)
    stride = max(1, info.clip_shape[0] // frames_shown)
    clips = list(moving_shapes_dataset("eval", num_clips, seed, **options).as_numpy_iterator())
    fig, axes = plt.subplots(
        num_clips, frames_shown, figsize=(1.2 * frames_shown, 1.3 * num_clips), squeeze=False
    )
    for r, clip in enumerate(clips):
        for col in range(frames_shown):
            ax = axes[r][col]
            t = col * stride
            ax.imshow((clip["frames"][t] + 1.0) / 2.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={t}", fontsize=8)
        axes[r][0].set_ylabel(info.int2str(int(clip["label"])), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", required=True, help="where to write the figure")
    parser.add_argument("--num_clips", type=int, default=4)
    parser.add_argument("--frames_shown", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_distractors", type=int, default=0)
    args = parser.parse_args(argv)
    save_png(
        args.png,
        num_clips=args.num_clips,
        frames_shown=args.frames_shown,
        seed=args.seed,
        num_distractors=args.num_distractors,
    )


if __name__ == "__main__":
    main()
