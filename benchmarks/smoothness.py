"""The smoothness claim, measured: Sideways' gradient fidelity against motion.

    python benchmarks/smoothness.py --out docs/smoothness.png   (~14 min on 2 CPU cores)

The Sideways paper argues that its approximation holds because consecutive frames
are alike: unit i combines an activation and a gradient message 2(L-i) frames
apart (algorithm.md P3), which matters only if those frames differ. This measures
it on moving_shapes, where the only things that change from frame to frame are the
shape's position (the speed, in pixels per frame) and the pixel noise.

For sideways (chain) and skip_sideways (skip(2)) it trains the moving_shapes model
briefly with `sideways_tf.train.train` (or takes finished runs: --sideways_workdir,
--skip_sideways_workdir), then evaluates `Engine.gradient_fidelity` (per-unit
cosine and norm ratio of the sideways gradient vs bptt on the same clip, same
parameters) on held-out "test" clips:
  - speed sweep: the same videos (same shape, colours, start, noise) at 1, 2, 4, 8
    px/frame; "0" holds the scene still with fresh per-frame noise (moving_shapes
    validates speed >= 1, so the benchmark builds it); "frozen" repeats one frame
    (identical frames, where P2 says the approximation is exact up to the drain);
  - stride sweep: every s-th frame of a (K-1)s+1-frame video at the base speed.
Parameters: the trained ones (the interesting case: the gradients training
follows), and the same run's initial ones (seed re-used), side by side. Training
draws speeds from --train_speed (default 1..8), so every speed evaluated is one
the model was trained on. Each number is the mean over --batches batches of B
clips (one fidelity per batch gradient), with the standard deviation over
batches. Writes a PNG plot, a JSON of every number, and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tqdm  # noqa: E402

from sideways_tf import config_files, modes  # noqa: E402
from sideways_tf import train as train_lib  # noqa: E402
from sideways_tf import workdir as workdir_lib  # noqa: E402
from sideways_tf.data.moving_shapes import moving_shapes_dataset  # noqa: E402
from sideways_tf.engine import Engine  # noqa: E402
from sideways_tf.runs import load_run  # noqa: E402
from sideways_tf.workdir import Workdir  # noqa: E402

EXPERIMENTS = {
    "sideways": "experiments/moving_shapes_sideways",
    "skip_sideways": "experiments/moving_shapes_skip_sideways",
}
FROZEN = "frozen"  # speed sweep entry: one frame repeated K times (identical frames)
PARAMS = ("trained", "init")

# ----------------------------------------------------------------------------- clips


def subsample(frames: np.ndarray, stride: int, num_frames: int) -> np.ndarray:
    """Every stride-th frame of longer clips: [N, T, ...] -> [N, num_frames, ...].

    Frame k of the result is frame k * stride of the input, so T must be at least
    (num_frames - 1) * stride + 1.
    """
    if stride < 1:
        raise ValueError(f"stride={stride} must be a positive number of frames.")
    needed = (num_frames - 1) * stride + 1
    if frames.shape[1] < needed:
        raise ValueError(
            f"Clips of {frames.shape[1]} frames are too short for {num_frames} frames at "
            f"stride {stride}; generate at least {needed} frames."
        )
    return frames[:, :needed:stride]


def static_scene(first: np.ndarray, num_frames: int, noise_std: float, seed: int) -> np.ndarray:
    """Speed 0: noise-free frames [N, H, W, C] in [-1, 1] held still for num_frames steps.

    Each frame gets fresh pixel noise the way moving_shapes draws it (uniform, of
    standard deviation noise_std in [0, 1] units, then clipped), so only the
    motion differs from a moving clip. Returns [N, num_frames, H, W, C] float32.
    """
    a = noise_std * 3.0**0.5
    scene = (first[:, None] + 1.0) / 2.0  # [N, 1, H, W, C] in [0, 1]
    shape = (first.shape[0], num_frames, *first.shape[1:])
    noise = np.random.default_rng(seed).uniform(-a, a, size=shape)
    return (2.0 * np.clip(scene + noise, 0.0, 1.0) - 1.0).astype(np.float32)


def _load(ds: tf.data.Dataset, n: int) -> tuple[np.ndarray, np.ndarray]:
    batch = next(iter(ds.batch(n)))
    return batch["frames"].numpy(), batch["label"].numpy()


def condition_clips(sweep: str, value, args) -> tuple[np.ndarray, np.ndarray]:
    """The test clips of one condition: frames [N, K, H, W, 3], labels [N].

    Every condition renders the same videos (same split, seed and indices: same
    shape, colours, start and noise); only the motion differs. The labels of speed
    0 and frozen clips keep the video's label, whose direction the clip no longer
    shows.
    """
    n, k = args.batches * args.batch_size, args.num_frames
    opts = dict(frame_size=args.frame_size, noise_std=args.noise_std)

    if sweep == "stride":
        ds = moving_shapes_dataset(
            "test", n, args.seed, num_frames=(k - 1) * value + 1, speed=args.base_speed, **opts
        )
        frames, labels = _load(ds, n)
        return subsample(frames, value, k), labels
    if value == FROZEN:
        frames, labels = _load(moving_shapes_dataset("test", n, args.seed, num_frames=1, **opts), n)
        return np.repeat(frames, k, axis=1), labels
    if value == 0:
        clean = dict(opts, noise_std=0.0)
        frames, labels = _load(
            moving_shapes_dataset("test", n, args.seed, num_frames=1, **clean), n
        )
        return static_scene(frames[:, 0], k, args.noise_std, args.seed), labels
    ds = moving_shapes_dataset("test", n, args.seed, num_frames=k, speed=value, **opts)
    return _load(ds, n)


def displacement(sweep: str, value, base_speed: int) -> float:
    """Pixels the shape moves between consecutive frames of the clip (frozen: 0)."""
    if sweep == "stride":
        return float(value * base_speed)
    return 0.0 if value == FROZEN else float(value)


def wrapped_distance(pixels: float, size: int) -> float:
    """Distance on a wrapped-around axis of `size` pixels after moving `pixels` along it."""
    d = pixels % size
    return float(min(d, size - d))


def chain_lag_distances(px_per_frame: float, num_units: int, size: int) -> list[float]:
    """Per unit of a chain: how far the shape moved between the two frames it combines.

    Unit i applies a message built from frame t - 2(L-i) to its activation of frame t
    (algorithm.md P3), and moving_shapes wraps around, so the distance that matters
    is wrapped_distance(2 (L-i) * speed, frame size); the top unit's is 0.
    """
    return [
        wrapped_distance(2 * (num_units - i) * px_per_frame, size) for i in range(1, num_units + 1)
    ]


def lag_distances(mode: str, sweep: str, value, args, num_units: int) -> list | None:
    """chain_lag_distances of a condition for a chain mode (sideways); None for skip topologies."""
    if modes.get(mode).topology != "chain":
        return None
    px = displacement(sweep, value, args.base_speed)
    return chain_lag_distances(px, num_units, args.frame_size)


def lag_table(rows: list[dict]) -> str:
    """Chain, trained: per unit, the wrapped lag distance and the cosine, per speed."""
    rows = [r for r in rows if r["lag_distance"] and r["params"] == "trained"]
    rows = [r for r in rows if r["sweep"] == "speed"]
    num_units = len(rows[0]["cosine"]["mean"])
    head = ["unit", "lag (frames)"] + [f"speed {r['value']}" for r in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for u in range(num_units - 1):
        cells = [str(u + 1), str(2 * (num_units - u - 1))]
        cells += [f"{r['lag_distance'][u]:g} px: {r['cosine']['mean'][u]:.3f}" for r in rows]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def falls_table(rows: list[dict], params: str = "trained") -> str:
    """Paired check: in how many batches the cosine falls from one speed to the next.

    Every speed renders the same videos, so batch b of one speed and batch b of the
    next differ only in motion; a count near n says the fall is not batch noise,
    whatever the spread over batches.
    """
    rows = [r for r in rows if r["params"] == params and r["sweep"] == "speed"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    lines = ["| mode | speeds | unit 1 | unit 2 | unit 3 |", "|---|---|---|---|---|"]
    for mode in modes:
        sel = [r for r in rows if r["mode"] == mode and r["value"] != FROZEN]
        for a, b in zip(sel, sel[1:]):
            before = np.asarray(a["per_batch"]["cosine"])
            after = np.asarray(b["per_batch"]["cosine"])
            falls = (after < before).sum(axis=0)
            cells = [f"{int(f)}/{len(before)}" for f in falls[:3]]
            lines.append(f"| {mode} | {a['value']} -> {b['value']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- runs


def train_run(mode: str, workdir: str, args) -> None:
    """Trains the moving_shapes experiment of `mode` briefly into workdir."""
    gin.clear_config()
    params = [
        f"train.num_steps = {args.train_steps}",
        f"train.eval_every = {args.train_steps}",
        f"train.checkpoint_every = {args.train_steps}",
        "train.fidelity_every = 0",
        "train.images_every = 0",
        f"moving_shapes_dataset.speed = {args.train_speed}",
    ]
    config = config_files.resolve(EXPERIMENTS[mode])
    gin.parse_config_files_and_bindings([config], params, skip_unknown=False)
    train_lib.train(workdir)


def has_checkpoint(workdir: str) -> bool:
    directory = Workdir(workdir).checkpoints
    return tf.io.gfile.isdir(directory) and tf.train.latest_checkpoint(directory) is not None


def load_engines(mode: str, workdir: str, batch_size: int) -> tuple[dict, dict]:
    """{"trained", "init"} engines on the run's model, and a summary of the run.

    Both by runs.load_run: trained, the newest checkpoint; init, the same model
    built under the run's seed, as training starts from (restore=False).
    """
    trained = load_run(workdir, batch_size=batch_size)
    if trained.settings.mode != mode:
        raise ValueError(f"{workdir} is a {trained.settings.mode!r} run, not {mode!r}.")
    init = load_run(workdir, batch_size=batch_size, restore=False)
    gin.clear_config()  # the clips below pass every option explicitly
    engines = {"trained": trained.engine, "init": init.engine}  # no optimizer
    evaluation = workdir_lib.read_evaluations(workdir, set_aside=False)
    saved = workdir_lib.bindings(workdir_lib.read_config(trained.workdir))
    run = dict(
        workdir=workdir,
        topology=trained.pipeline.topology.describe(),
        checkpoint_step=trained.step,
        train_speed=next(
            (v for k, v in saved.items() if k.endswith("moving_shapes_dataset.speed")), "2"
        ),
        # (workdirs written before the key was renamed hold it as "accuracy")
        eval_video_accuracy=evaluation.get("video_accuracy", evaluation.get("accuracy")),
    )
    return engines, run


# ----------------------------------------------------------------------------- numbers


def summarize(per_batch) -> dict:
    """Per-unit mean and sample std over batches: [n_batches, L] -> {"mean", "std", "n"}."""
    values = np.asarray(per_batch, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 1:
        raise ValueError(f"Expected per-batch values [n_batches, L], got shape {values.shape}.")
    n = values.shape[0]
    std = values.std(axis=0, ddof=1) if n > 1 else np.zeros(values.shape[1])
    return {"mean": values.mean(axis=0).tolist(), "std": std.tolist(), "n": int(n)}


def measure(engine: Engine, frames: np.ndarray, labels: np.ndarray, batch_size: int, bar):
    """Per-batch fidelity: {"cosine": [n_batches, L], "norm_ratio": [n_batches, L]}."""
    out = {"cosine": [], "norm_ratio": []}
    for start in range(0, len(frames), batch_size):
        fid = engine.gradient_fidelity(
            tf.constant(frames[start : start + batch_size]),
            tf.constant(labels[start : start + batch_size].astype(np.int32)),
        )
        for key in out:
            out[key].append(fid[key].numpy().tolist())
        bar.update(1)
    return out


def _cell(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def markdown_table(rows: list[dict], params: str) -> str:
    """One markdown table of the rows measured at `params` ("trained" or "init")."""
    rows = [r for r in rows if r["params"] == params]
    num_units = len(rows[0]["cosine"]["mean"])
    units = [f"u{i + 1}" for i in range(num_units)]
    head = (
        ["mode", "clips", "px/frame"]
        + [f"cos {u}" for u in units]
        + [f"norm ratio {u}" for u in units]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        label = f"stride {r['value']}" if r["sweep"] == "stride" else f"speed {r['value']}"
        cells = [r["mode"], label, f"{r['displacement']:g}"]
        for key in ("cosine", "norm_ratio"):
            cells += [_cell(m, s) for m, s in zip(r[key]["mean"], r[key]["std"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], modes: list[str], path: str) -> None:
    """Cosine and norm ratio per unit against px/frame, one column per mode; the last
    column against the distance the shape moved between the frames a chain unit combines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speeds = [r["value"] for r in rows if r["sweep"] == "speed" and r["params"] == "trained"]
    speeds = list(dict.fromkeys(speeds))
    labels = [str(v) for v in speeds]
    position = {
        displacement("speed", v, 0): i for i, v in enumerate(speeds) if v != FROZEN
    }  # px/frame -> x
    frozen_x = speeds.index(FROZEN) if FROZEN in speeds else None
    num_units = len(rows[0]["cosine"]["mean"])
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, num_units))
    ncols = len(modes) + 1
    fig, axes = plt.subplots(2, ncols, figsize=(5.2 * ncols, 7.4), squeeze=False)
    for col, mode in enumerate(modes):
        for row, key in enumerate(("cosine", "norm_ratio")):
            ax = axes[row][col]
            for params, alpha, width in (("init", 0.3, 1.0), ("trained", 1.0, 1.8)):
                for sweep, style, marker in (("speed", "-", "o"), ("stride", "--", "s")):
                    sel = [
                        r
                        for r in rows
                        if (r["mode"], r["params"], r["sweep"]) == (mode, params, sweep)
                    ]
                    xs = [
                        frozen_x if r["value"] == FROZEN else position.get(r["displacement"])
                        for r in sel
                    ]
                    keep = [i for i, x in enumerate(xs) if x is not None]
                    for u in range(num_units):
                        ax.errorbar(
                            [xs[i] + (0.06 if sweep == "stride" else 0.0) for i in keep],
                            [sel[i][key]["mean"][u] for i in keep],
                            yerr=[sel[i][key]["std"][u] for i in keep],
                            color=colours[u],
                            linestyle=style,
                            marker=marker,
                            markersize=4 if sweep == "speed" else 5,
                            markerfacecolor=colours[u] if sweep == "speed" else "none",
                            alpha=alpha,
                            linewidth=width,
                            capsize=2,
                            label=(
                                f"unit {u + 1}" if (params, sweep) == ("trained", "speed") else None
                            ),
                        )
            ax.set_xticks(range(len(speeds)), labels)
            ax.set_xlabel("shape motion between consecutive frames (px/frame)")
            ax.set_ylabel("cosine vs bptt" if key == "cosine" else "norm ratio (sideways / bptt)")
            ax.set_title(f"{mode}: {'cosine' if key == 'cosine' else 'norm ratio'}")
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=8, loc="lower left")
    for row, key in enumerate(("cosine", "norm_ratio")):
        ax = axes[row][-1]
        for params, alpha in (("init", 0.3), ("trained", 1.0)):
            for sweep, marker in (("speed", "o"), ("stride", "s")):
                sel = [
                    r
                    for r in rows
                    if r.get("lag_distance") and (r["params"], r["sweep"]) == (params, sweep)
                ]
                for u in range(num_units - 1):  # the top unit combines one frame: always exact
                    ax.scatter(
                        [r["lag_distance"][u] for r in sel],
                        [r[key]["mean"][u] for r in sel],
                        color=colours[u],
                        marker=marker,
                        facecolors=colours[u] if sweep == "speed" else "none",
                        alpha=alpha,
                        s=22,
                    )
        ax.set_xlabel("px the shape moved over unit i's lag of 2(L-i) frames (wrapped)")
        ax.set_ylabel("cosine vs bptt" if key == "cosine" else "norm ratio (sideways / bptt)")
        ax.set_title(
            f"sideways (chain): {'cosine' if key == 'cosine' else 'norm ratio'} vs lag motion"
        )
        ax.grid(alpha=0.3)
    fig.text(
        0.5,
        0.005,
        "solid, filled: speed sweep; dashed, hollow: stride sweep (every s-th frame at the "
        "base speed); bold: trained parameters, faint: the same run at initialisation; "
        "bars: std over batches",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/smoothness.png", help="The plot (PNG).")
    parser.add_argument("--json", default=None, help="Numbers (default: --out with .json).")
    parser.add_argument("--root", default="/tmp/sideways_smoothness", help="Training workdirs.")
    for mode in EXPERIMENTS:
        parser.add_argument(
            f"--{mode}_workdir",
            default=None,
            help=f"A {mode} run on moving_shapes to take (default: ROOT/{mode}; trained "
            "there first if it has no checkpoint).",
        )
    parser.add_argument("--train_steps", type=int, default=600)
    parser.add_argument(
        "--train_speed", default="(1, 8)", help="gin value of moving_shapes_dataset.speed."
    )
    parser.add_argument("--speeds", default="frozen,0,1,2,4,8", help="px/frame, comma-separated.")
    parser.add_argument("--strides", default="1,2,4", help="Temporal strides, comma-separated.")
    parser.add_argument("--base_speed", type=int, default=2, help="px/frame of the stride sweep.")
    parser.add_argument("--batches", type=int, default=16, help="Eval batches per condition.")
    parser.add_argument("--batch_size", type=int, default=16, help="Clips per batch (B).")
    parser.add_argument("--num_frames", type=int, default=16, help="K, as in training.")
    parser.add_argument("--frame_size", type=int, default=32)
    parser.add_argument("--noise_std", type=float, default=0.05, help="moving_shapes' default.")
    parser.add_argument("--seed", type=int, default=0, help="Test videos (and speed-0 noise).")
    args = parser.parse_args(argv)
    args.speed_values = [v if v == FROZEN else int(v) for v in args.speeds.split(",")]
    args.stride_values = [int(s) for s in args.strides.split(",")]
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    runs, engines = {}, {}
    for mode in EXPERIMENTS:
        workdir = getattr(args, f"{mode}_workdir") or os.path.join(args.root, mode)
        if not has_checkpoint(workdir):
            print(f"Training {mode} for {args.train_steps} steps in {workdir}", flush=True)
            train_run(mode, workdir, args)
        engines[mode], runs[mode] = load_engines(mode, workdir, args.batch_size)
    train_seconds = time.perf_counter() - start

    conditions = [("speed", v) for v in args.speed_values]
    conditions += [("stride", s) for s in args.stride_values]
    rows = []
    total = len(conditions) * len(EXPERIMENTS) * len(PARAMS) * args.batches
    with tqdm.tqdm(total=total, desc="fidelity", unit="batch") as bar:
        for sweep, value in conditions:
            frames, labels = condition_clips(sweep, value, args)
            for mode in EXPERIMENTS:
                for params in PARAMS:
                    per_batch = measure(engines[mode][params], frames, labels, args.batch_size, bar)
                    rows.append(
                        dict(
                            mode=mode,
                            params=params,
                            sweep=sweep,
                            value=value,
                            displacement=displacement(sweep, value, args.base_speed),
                            lag_distance=lag_distances(
                                mode,
                                sweep,
                                value,
                                args,
                                engines[mode]["trained"].pipeline.num_units,
                            ),
                            cosine=summarize(per_batch["cosine"]),
                            norm_ratio=summarize(per_batch["norm_ratio"]),
                            per_batch=per_batch,
                        )
                    )
    seconds = time.perf_counter() - start

    for params in PARAMS:
        print(
            f"\nGradient fidelity vs bptt at the {params} parameters "
            f"(mean ± std over {args.batches} batches of {args.batch_size} clips):\n"
        )
        print(markdown_table(rows, params))
    print(
        "\nsideways (chain), trained: the distance the shape moved (wrapped around the "
        "frame) between the two frames each unit combines, and the unit's cosine:\n"
    )
    print(lag_table(rows))
    print("\nBatches (same videos) in which the trained cosine falls from one speed to the next:\n")
    print(falls_table(rows))
    for mode, run in runs.items():
        print(
            f"{mode}: {run['topology'].splitlines()[0]}, checkpoint step {run['checkpoint_step']}, trained on "
            f"speed {run['train_speed']}, eval video accuracy {run['eval_video_accuracy']}"
        )
    print(f"Wall time: {seconds:.0f} s ({train_seconds:.0f} s training and loading).")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot(rows, list(EXPERIMENTS), args.out)
    json_path = args.json or os.path.splitext(args.out)[0] + ".json"
    settings = {k: v for k, v in vars(args).items() if k not in ("speed_values", "stride_values")}
    with open(json_path, "w") as f:
        json.dump(
            dict(
                command=" ".join(["python", *sys.argv]),
                settings=settings,
                params_note="trained: the run's latest checkpoint; init: the same model "
                "rebuilt under the run's seed (its step-0 parameters)",
                runs=runs,
                wall_time_s=round(seconds, 1),
                rows=rows,
            ),
            f,
            indent=1,
        )
    print(f"Wrote {args.out} and {json_path}")


if __name__ == "__main__":
    main()
