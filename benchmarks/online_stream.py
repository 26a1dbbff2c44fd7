"""Learning on one stream of real footage: in-stream adaptation, out-of-stream figures.

    python benchmarks/online_stream.py                  # every run; writes the JSON and the plot
    python benchmarks/online_stream.py --report_only    # the table and the plot from the JSON

The protocol is sideways_tf.online (after arXiv 2312.00598): one video in order, B = 1,
no shuffling, the state carried, an update every N = 8 frames; each chunk is scored
with the parameters from before its update (in-stream), and held-out footage with the
final ones (out-of-stream).

1. Footage: ../shared/data/bigbuckbunny.mp4 decoded with PyAV (sideways_tf.data.prepare.
   decode: short side 64, the film's pulldown repeats dropped at 55 dB as
   `sideways-convert --drop_repeats=55` does: 127 frames), the centred square resized to
   32x32, in [-1, 1]. Frames 0-95 are the stream (12 chunks), frames 96-126 are held out:
   never streamed, scored once at the end, frame by frame from a fresh state.
2. Model: conv_small (4 units, widths 16-64, concat fusion) with the future-frame task
   (h = 1, decoder "motion": a fresh model is exactly copy-last), on the chain for
   sideways and its bptt reference, on skip(2) for skip_sideways and its bptt reference;
   bptt's gradient is truncated to the chunk (the state is carried, the tape is not).
3. Optimizers: SGD (lr 3), SGD with momentum 0.9 (lr 0.3: the same step at steady state)
   and Adam (lr 3e-3), the rates from a pilot on the stream (OPTIMIZERS; the held-out
   block plays no part in the choice), 3 seeds (initial parameters) each.
4. Writes docs/online_stream.json (every run, every chunk) and docs/online_stream.png (the
   in-stream PSNR over copy-last along the stream, per mode, one panel per optimizer),
   and prints the README table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = (  # (mode, topology): each Sideways mode next to its bptt reference
    ("sideways", "chain"),
    ("bptt", "chain"),
    ("skip_sideways", "skip(2)"),
    ("bptt", "skip(2)"),
)
# name: (keras.optimizers class name, its kwargs, learning rates). One rate each, from a
# pilot on the stream alone (seed 0; SGD over 0.3, 1, 3 and Adam over 3e-4, 1e-3, 3e-3:
# the lowest in-stream loss); momentum's is SGD's / 10, the same step at steady state. With
# several rates, the table takes the one with the lowest in-stream loss.
OPTIMIZERS = {
    "sgd": ("SGD", {}, (3.0,)),
    "sgd_momentum": ("SGD", {"momentum": 0.9}, (0.3,)),
    "adam": ("Adam", {}, (3e-3,)),
}


def footage(video: str, size: int, drop_repeats: float) -> np.ndarray:
    """The video as float32 frames [T, size, size, 3] in [-1, 1]: short side 64, repeats
    dropped, the centred square resized."""
    import tensorflow as tf

    from sideways_tf.data.prepare.decode import decode_video

    frames, _ = decode_video(video, short_side=64, drop_repeats=drop_repeats)  # [T, 64, W, 3]
    side = min(frames.shape[1:3])
    square = tf.image.resize_with_crop_or_pad(frames, side, side)
    resized = tf.image.resize(square, (size, size), antialias=True)
    return (resized.numpy() / 127.5 - 1.0).astype(np.float32)


def copy_last_losses(stream: np.ndarray, lag: int, horizon: int, task) -> np.ndarray:
    """[T] l_t of the copy-last prediction x[t - lag] against x[t - lag + h] (B = 1)."""
    from sideways_tf.tasks.future_frames import frame_targets, last_seen_frames

    targets, _ = frame_targets(stream, lag, horizon)
    last = last_seen_frames(stream, lag)
    return task.loss(targets[0], last[0]).numpy()


def unit_change(pipeline, before: list) -> list:
    """Per unit i, |theta_i - theta_i(start)| / |theta_i(start)| (the top unit holds the head)."""
    out = []
    for i, old in enumerate(before, start=1):
        new = [v.numpy() for v in pipeline.unit_variables(i)]
        moved = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(new, old)))
        out.append(float(moved / np.sqrt(sum(np.sum(b**2) for b in old))))
    return out


def restart(engine, weights: list, learning_rate: float) -> None:
    """The engine as new: these parameters, the optimizer's slots and step at zero."""
    engine.pipeline.set_weights(weights)
    for v in engine.optimizer.variables:
        v.assign(np.zeros(v.shape, v.dtype))
    engine.optimizer.learning_rate.assign(learning_rate)


def run_all(args) -> dict:
    import keras

    import sideways_tf as sw
    from sideways_tf import online
    from sideways_tf.models import convnet

    frames = footage(args.video, args.size, args.drop_repeats)
    stream, held = frames[None, : args.stream_frames], frames[None, args.stream_frames :]
    task = sw.FutureFrames(horizon=1, decoder="motion")
    runs, start = [], time.time()
    for mode, topology in CONFIGS:

        def build(seed, topology=topology):
            keras.utils.set_random_seed(seed)
            return convnet.small_conv_pipeline(
                batch_size=1, frame_shape=frames.shape[1:], task=task, topology=topology
            )

        initial = {seed: build(seed).get_weights() for seed in range(args.seeds)}
        for name, (cls, kwargs, rates) in OPTIMIZERS.items():
            pipeline = build(0)
            optimizer = getattr(keras.optimizers, cls)(learning_rate=rates[0], **kwargs)
            engine = sw.Engine(pipeline, mode, optimizer, carry_state=True)
            lag, units = engine.mode.input_lag(pipeline), range(1, pipeline.num_units + 1)
            copy = copy_last_losses(stream, lag, task.horizon, task)
            for rate in rates:
                for seed in range(args.seeds):
                    restart(engine, initial[seed], rate)
                    before = [[v.numpy() for v in pipeline.unit_variables(i)] for i in units]
                    began = time.time()
                    result = online.online_stream(engine, stream, chunk=args.chunk)
                    out = online.held_out(engine, held)
                    wall = time.time() - began
                    scored = np.concatenate([np.isfinite(r.step_losses) for r in result.chunks])
                    in_stream = dict(result.in_stream, loss_copy_last=float(copy[scored].mean()))
                    runs.append(
                        {
                            "mode": mode,
                            "topology": topology,
                            "optimizer": name,
                            "learning_rate": rate,
                            "seed": seed,
                            "wall_s": round(wall, 1),
                            "in_stream": in_stream,
                            "held_out": out,
                            "unit_change": unit_change(pipeline, before),
                            "chunks": [
                                {
                                    "first_frame": r.first_frame,
                                    "scored": r.scored,
                                    "trained_steps": r.trained_steps,
                                    "loss": r.loss,
                                    "loss_copy_last": float(
                                        np.mean(
                                            copy[r.first_frame : r.first_frame + r.frames][
                                                np.isfinite(r.step_losses)
                                            ]
                                        )
                                    )
                                    if r.scored
                                    else None,
                                    "psnr": r.figures.get("psnr"),
                                    "psnr_copy_last": r.figures.get("psnr_copy_last"),
                                }
                                for r in result.chunks
                            ],
                        }
                    )
                    print(
                        f"{mode:13s} {topology:7s} {name:12s} lr {rate:<6g} seed {seed}: "
                        f"in-stream {in_stream['psnr']:.2f} dB (copy-last "
                        f"{in_stream['psnr_copy_last']:.2f}), loss {in_stream['loss']:.3e}; "
                        f"held-out {out['psnr']:.2f} dB (copy-last {out['psnr_copy_last']:.2f}); "
                        f"{wall:.1f} s",
                        flush=True,
                    )
    return {
        "video": os.path.relpath(args.video, ROOT),
        "frames": int(frames.shape[0]),
        "frame_size": args.size,
        "stream_frames": args.stream_frames,
        "held_out_frames": int(held.shape[1]),
        "chunk": args.chunk,
        "seeds": args.seeds,
        "model": "conv_small (widths 16, 32, 32, 64; strides 1, 2, 1, 2; concat fusion)",
        "task": "FutureFrames(horizon=1, decoder='motion')",
        "optimizers": {
            k: {"class": c, **kw, "rates": list(r)} for k, (c, kw, r) in OPTIMIZERS.items()
        },
        "machine": f"{os.cpu_count()} CPU cores (shared), {platform.processor() or platform.machine()}",
        "wall_s": round(time.time() - start),
        "runs": runs,
    }


def summary(report: dict) -> list[dict]:
    """Per (mode, topology, optimizer): the learning rate with the lowest mean in-stream
    loss over seeds, and its figures as mean and std over the seeds."""
    groups = {}
    for r in report["runs"]:
        key = (r["mode"], r["topology"], r["optimizer"], r["learning_rate"])
        groups.setdefault(key, []).append(r)
    best = {}
    for (mode, topology, name, rate), runs in groups.items():
        loss = np.mean([r["in_stream"]["loss"] for r in runs])
        if (mode, topology, name) not in best or loss < best[mode, topology, name][0]:
            best[mode, topology, name] = (loss, rate, runs)
    rows = []
    for (mode, topology, name), (_, rate, runs) in best.items():

        def stat(part, key, runs=runs):
            values = [r[part][key] for r in runs]
            return float(np.mean(values)), float(np.std(values))

        rows.append(
            {
                "mode": mode,
                "topology": topology,
                "optimizer": name,
                "learning_rate": rate,
                "in_stream_loss": stat("in_stream", "loss"),
                "in_stream_loss_copy_last": runs[0]["in_stream"]["loss_copy_last"],
                "in_stream_psnr": stat("in_stream", "psnr"),
                "in_stream_psnr_copy_last": runs[0]["in_stream"]["psnr_copy_last"],
                "held_out_psnr": stat("held_out", "psnr"),
                "held_out_psnr_copy_last": runs[0]["held_out"]["psnr_copy_last"],
                "unit_change": np.mean([r["unit_change"] for r in runs], axis=0).tolist(),
                "wall_s": float(np.mean([r["wall_s"] for r in runs])),
                "runs": runs,
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| mode | topology | optimizer | lr | in-stream MSE x 1e3 (copy-last) "
        "| in-stream PSNR dB (copy-last) | out-of-stream PSNR dB (copy-last) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        loss, psnr, held = r["in_stream_loss"], r["in_stream_psnr"], r["held_out_psnr"]
        lines.append(
            f"| {r['mode']} | {r['topology']} | {r['optimizer']} | {r['learning_rate']:g} "
            f"| {1e3 * loss[0]:.3f} +- {1e3 * loss[1]:.3f} ({1e3 * r['in_stream_loss_copy_last']:.3f}) "
            f"| {psnr[0]:.2f} +- {psnr[1]:.2f} ({r['in_stream_psnr_copy_last']:.2f}) "
            f"| {held[0]:.2f} +- {held[1]:.2f} ({r['held_out_psnr_copy_last']:.2f}) |"
        )
    return "\n".join(lines)


def plot(report: dict, rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(OPTIMIZERS)
    fig, axes = plt.subplots(len(names) + 1, 1, figsize=(8, 2.4 * (len(names) + 1)), sharex=True)
    first = [c["first_frame"] for c in report["runs"][0]["chunks"]]
    x = np.array(first) + report["chunk"] / 2
    for topology, style in (("chain", "--"), ("skip(2)", "-")):
        run = next(r for r in report["runs"] if r["topology"] == topology)
        copy = [
            np.nan if c["psnr_copy_last"] is None else c["psnr_copy_last"] for c in run["chunks"]
        ]
        axes[0].plot(x, copy, style, color="black", label=f"copy-last, lag of {topology}")
    axes[0].set_ylabel("copy-last\nPSNR (dB)")
    axes[0].set_title(
        f"bigbuckbunny {report['frame_size']}x{report['frame_size']}, in-stream (before each "
        f"chunk's update, N = {report['chunk']}); {report['seeds']} seeds: mean, min-max",
        fontsize=9,
    )
    axes[0].legend(fontsize=7, loc="lower right")
    colours = {"sideways": "tab:blue", "skip_sideways": "tab:red"}
    for ax, name in zip(axes[1:], names):
        for r in (r for r in rows if r["optimizer"] == name):
            gains = np.array(
                [
                    [
                        np.nan if c["psnr"] is None else c["psnr"] - c["psnr_copy_last"]
                        for c in run["chunks"]
                    ]
                    for run in r["runs"]
                ]
            )
            label = f"{r['mode']} ({r['topology']}, lr {r['learning_rate']:g})"
            if r["mode"] == "bptt":  # the reference, drawn over its Sideways mode
                style = ":" if r["topology"] == "skip(2)" else (0, (1, 3))
                ax.plot(x, gains.mean(0), linestyle=style, color="black", lw=1.2, label=label)
                continue
            style = "-" if r["topology"] == "skip(2)" else "--"
            ax.plot(x, gains.mean(0), style, color=colours[r["mode"]], lw=2, label=label)
            ax.fill_between(x, gains.min(0), gains.max(0), color=colours[r["mode"]], alpha=0.12)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_ylabel(f"{name}\nPSNR - copy-last (dB)")
        ax.legend(fontsize=7, loc="lower left")
    axes[-1].set_xlabel("frame of the stream (chunk centre)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--video", default=os.path.join(ROOT, "..", "shared", "data", "bigbuckbunny.mp4")
    )
    p.add_argument("--size", type=int, default=32, help="frames are size x size")
    p.add_argument(
        "--stream_frames", type=int, default=96, help="frames streamed; the rest held out"
    )
    p.add_argument("--chunk", type=int, default=8, help="N: frames per update")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--drop_repeats", type=float, default=55.0)
    p.add_argument("--json", default=os.path.join(ROOT, "docs", "online_stream.json"))
    p.add_argument("--png", default=os.path.join(ROOT, "docs", "online_stream.png"))
    p.add_argument("--report_only", action="store_true", help="read the JSON, run nothing")
    args = p.parse_args()
    if args.report_only:
        with open(args.json) as f:
            report = json.load(f)
    else:
        report = run_all(args)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json} ({report['wall_s']} s)")
    rows = summary(report)
    print(table(rows))
    plot(report, rows, args.png)


if __name__ == "__main__":
    main()
