"""Future frames of real footage through the own-videos path, against copying the last frame.

    python benchmarks/own_video.py --root=workdirs/own_video --jobs=2

1. Splits ../shared/data/bigbuckbunny.mp4 (132 frames) into blocks of 26 frames that
   alternate: blocks 0, 2, 4 train, blocks 1 and 3 are held out (the model never sees a
   held-out frame), each block written as its own small lossless video (PyAV). Or in
   time (--split_by=time: frames [0, split) train) or by columns (--split_by=space).
2. Converts both with `sideways-convert --dataset=folder --drop_repeats=55` (the video's
   pulldown repeats go) and trains each mode with `sideways-train
   --gin_file=experiments/folder_future_<mode>` (FutureFrames.decoder "motion", h = 1, 32x32,
   B = 16, K = 16 + 1, 300 steps); the only extra bindings are the record patterns, the
   schedule, and eval/clip_sampling.num_eval_clips (one clip at every offset of each
   held-out block, so that the two fill a batch).
3. Prints the table (held-out PSNR / SSIM of the model and of the copy-the-last-seen-
   frame baseline, over the same scored steps), the same PSNR split into frames that
   repeat the last one seen and the others (scored by the library's one evaluation
   loop, sideways_tf.evaluate.score_batch), writes it all as JSON, and draws a strip of
   held-out frames: target, prediction, copy-last, |prediction - last frame|, |target -
   last frame| (one scale).

Nothing is tuned against the held-out part: it is scored once per evaluation.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

import numpy as np

from sideways_tf import workdir as workdir_lib

HERE = os.path.dirname(os.path.abspath(__file__))
# FutureFrames.decoder of the older head names (conv_pipeline.head), still accepted.
OLD_HEADS = {"frame_motion": "motion", "frame_delta": "delta", "frames": "whole"}
DECODERS = ("motion", "delta", "whole")


def decoder_name(value: str) -> str:
    """A FutureFrames.decoder from a decoder name or an older head name."""
    decoder = OLD_HEADS.get(value, value)
    if decoder not in DECODERS:
        raise argparse.ArgumentTypeError(
            f"{value!r}: choose a decoder, {', '.join(DECODERS)} (or an older head name, "
            f"{', '.join(OLD_HEADS)})"
        )
    return decoder


def split_video(
    video: str, out_dir: str, split: int, width: int, height: int, by: str = "time"
) -> dict:
    """Writes the training part to train/all/train.mp4 and the held-out part to
    eval/all/heldout.mp4.

    by="time": frames [0, split) for training, [split, end) held out.
    by="space": every frame, split by columns: the left `split` percent of the width for
    training, the rest held out (the same time span, pixels never trained on).
    by="blocks": consecutive blocks of `split` frames, alternating: even blocks train,
    odd blocks are held out (each block its own video, so no clip crosses a boundary):
    the held-out frames are never seen, and their motion is the shot's, not its end's.
    """
    import av

    with av.open(video) as source:
        stream = source.streams.video[0]
        rate = stream.average_rate or 25
        frames = [
            f.reformat(width=width, height=height, format="rgb24").to_ndarray()
            for f in source.decode(stream)
        ]
    if by == "blocks":
        blocks = [frames[i : i + split] for i in range(0, len(frames) - split + 1, split)]
        parts = {"train": blocks[0::2], "eval": blocks[1::2]}
        for name, part in parts.items():
            for k, block in enumerate(part):
                _write(os.path.join(out_dir, "videos", name, "all", f"{name}{k}.mp4"), block, rate)
        return {name: sum(len(b) for b in part) for name, part in parts.items()}
    if by == "space":
        if not 0 < split < 100:
            raise SystemExit(f"--split={split}: with --split_by=space, a percent of the width.")
        column = int(width * split / 100) // 2 * 2  # (even widths for yuv420p)
        parts = {"train": [f[:, :column] for f in frames], "eval": [f[:, column:] for f in frames]}
    else:
        if not 0 < split < len(frames):
            raise SystemExit(f"--split={split} must be inside the video's {len(frames)} frames.")
        parts = {"train": frames[:split], "eval": frames[split:]}
    for name, part in parts.items():
        video_name = "train.mp4" if name == "train" else "heldout.mp4"
        _write(os.path.join(out_dir, "videos", name, "all", video_name), part, rate)
    return {name: len(part) for name, part in parts.items()}


def _write(path: str, frames: list, rate) -> None:
    """Frames [H, W, 3] uint8 as a near-lossless H.264 video at `path`."""
    import av

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w") as container:
        out = container.add_stream("libx264", rate=rate)
        out.height, out.width = frames[0].shape[:2]
        out.pix_fmt = "yuv420p"
        out.options = {"crf": "0"}  # lossless: the parts hold the source's frames as decoded
        for image in frames:
            for packet in out.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in out.encode():
            container.mux(packet)


def run(argv: list[str], log) -> None:
    start = time.time()
    done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({done.returncode}); see the log.")
    return time.time() - start


def convert(root: str, log, drop_repeats: float | None = None) -> str:
    records = os.path.join(root, "records")
    for split in ("train", "eval"):
        if os.path.exists(os.path.join(records, f"{split}-report.json")):
            continue
        run(
            [
                sys.executable,
                "-m",
                "sideways_tf.data.prepare.convert",
                "--dataset=folder",
                f"--videos_dir={os.path.join(root, 'videos', split)}",
                f"--split={split}",
                f"--output_dir={records}",
                "--fps=none",
                "--short_side=64",
                "--workers=1",
                "--no_progress",
                f"--drop_repeats={'none' if drop_repeats is None else drop_repeats}",
            ],
            log,
        )
    return records


def stored_frames(records: str, split: str) -> list[int]:
    """Frames stored per video of a converted split (the converter's shard metadata)."""
    frames = []
    for name in sorted(os.listdir(os.path.join(records, "_shards_meta"))):
        if name.startswith(split + "-"):
            with open(os.path.join(records, "_shards_meta", name)) as f:
                frames += json.load(f)["frames"]
    return frames


def train(
    root, records, mode: str, decoder: str, steps: int, eval_clips: int, log, extra=()
) -> dict:
    workdir = os.path.join(root, "runs", decoder, mode)
    params = [
        f"TRAIN_RECORDS='{records}/train-*-of-*.tfrecord'",
        f"EVAL_RECORDS='{records}/eval-*-of-*.tfrecord'",
        f"eval/clip_sampling.num_eval_clips={eval_clips}",
        f"train.num_steps={steps}",
        f"train.eval_every={max(steps // 3, 1)}",
        f"train.checkpoint_every={steps}",
        "train.fidelity_every=0",
        "train.progress=False",
        f"FutureFrames.decoder='{decoder}'",
        *extra,
    ]
    argv = [
        sys.executable,
        "-c",
        "import sys; from sideways_tf.cli import train_main; train_main(sys.argv[1:])",
        f"--workdir={workdir}",
        f"--gin_file=experiments/folder_future_{mode}",
    ] + [f"--gin_param={p}" for p in params]
    seconds = run(argv, log)
    return {
        "mode": mode,
        "decoder": decoder,
        "workdir": workdir,
        "wall_s": round(seconds),
        "history": workdir_lib.training_evaluations(workdir),
    }


def finished(root: str, mode: str, decoder: str) -> dict:
    """A run trained before (--report_only): its evaluations, as `train` returns them.
    (A run from before the decoder names is found under its older head name.)"""
    workdir = os.path.join(root, "runs", decoder, mode)
    old = {v: k for k, v in OLD_HEADS.items()}[decoder]
    if not os.path.exists(workdir_lib.Workdir(workdir).config):
        workdir = os.path.join(root, "runs", old, mode)
    history = workdir_lib.training_evaluations(workdir, set_aside=False)
    if not history:
        raise SystemExit(f"--report_only: no evaluation of {mode} in {workdir}; train it first.")
    return {"mode": mode, "decoder": decoder, "workdir": workdir, "wall_s": "", "history": history}


def per_frame(result: dict, repeat_db: float = 45.0) -> dict:
    """Held-out PSNR of the model and of copy-last, split by whether the target nearly
    repeats the last frame seen (copy-last above `repeat_db` dB at 32x32: a repeated or
    still frame, where a model that moves pixels can only lose).

    The clips are scored by the one evaluation loop, batch by batch
    (sideways_tf.evaluate.score_batch): "evaluation" is its result, the same figures
    as sideways-eval; the split reads the scored frames of each batch.
    """
    from sideways_tf import evaluate as evaluation
    from sideways_tf.runs import load_run

    loaded = load_run(result["workdir"])
    engine = loaded.engine
    metrics = engine.task.metrics()
    model, copy, next_video = [], [], 0
    for batch in loaded.eval_data().batch(engine.batch_per_process):
        scored, next_video = evaluation.score_batch(
            engine, metrics, batch["frames"], None, batch.get("video_index"), next_video
        )
        steps = np.asarray(scored.weights) > 0  # [K]
        targets = np.asarray(scored.targets)[:, steps]  # [n, scored steps, H, W, C]
        for values, into in (
            (scored.outputs, model),
            (scored.references["last_seen"], copy),
        ):
            mse = np.mean((np.asarray(values)[:, steps] - targets) ** 2, axis=(2, 3, 4))
            into.append(np.minimum(10 * np.log10(4.0 / np.maximum(mse, 1e-12)), 100.0).ravel())
    model, copy = np.concatenate(model), np.concatenate(copy)
    figures = metrics.result()
    figures.pop("images", None)
    repeat = copy > repeat_db
    split = {"repeats": repeat, "others": ~repeat}
    return {
        "frames": {k: int(v.sum()) for k, v in split.items()},
        "psnr": {k: float(model[v].mean()) if v.any() else None for k, v in split.items()},
        "psnr_copy_last": {k: float(copy[v].mean()) if v.any() else None for k, v in split.items()},
        "model_better_share": float(np.mean(model[~repeat] > copy[~repeat])),
        "evaluation": {k: float(v) for k, v in figures.items()},
    }


def strip(result: dict, path: str, num_frames: int = 8) -> None:
    """Held-out frames of one run: target / prediction / copy-last / |prediction - last|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sideways_tf import evaluate as evaluation
    from sideways_tf.runs import load_run

    loaded = load_run(result["workdir"])
    engine = loaded.engine
    batch = next(iter(loaded.eval_data().batch(engine.batch_per_process)))
    scored, _ = evaluation.score_batch(engine, engine.task.metrics(), batch["frames"])
    steps = np.flatnonzero(np.asarray(scored.weights) > 0)[:num_frames]
    rows = {
        "target x[t-lag+1]": np.asarray(scored.targets)[0, steps],
        f"{result['mode']} prediction": np.asarray(scored.outputs)[0, steps],
        "copy last x[t-lag]": np.asarray(scored.references["last_seen"])[0, steps],
    }
    change = np.abs(rows[f"{result['mode']} prediction"] - rows["copy last x[t-lag]"])
    truth = np.abs(rows["target x[t-lag+1]"] - rows["copy last x[t-lag]"])
    fig, axes = plt.subplots(5, len(steps), figsize=(1.3 * len(steps), 7.0))
    for r, (name, frames) in enumerate(rows.items()):
        for c, frame in enumerate(frames):
            axes[r, c].imshow(np.clip((frame + 1) / 2, 0, 1))
        axes[r, 0].set_ylabel(name, fontsize=7)
    scale = max(float(change.max()), float(truth.max()), 1e-6)
    for c in range(len(steps)):
        axes[3, c].imshow(change[c].mean(-1) / scale, cmap="magma", vmin=0, vmax=1)
        axes[4, c].imshow(truth[c].mean(-1) / scale, cmap="magma", vmin=0, vmax=1)
    axes[3, 0].set_ylabel(f"|pred - last| (max {scale:.2f})", fontsize=7)
    axes[4, 0].set_ylabel("|target - last|", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"bigbuckbunny held-out frames, {result['mode']}, step {loaded.step}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[dict]) -> str:
    lines = [
        "| mode | decoder | steps | wall s | PSNR dB | SSIM | copy last PSNR dB | copy last SSIM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for e in r["history"]:
            lines.append(
                f"| {r['mode']} | {r['decoder']} | {e['step']} | {r['wall_s'] if e is r['history'][-1] else ''} "
                f"| {e['psnr']:.2f} | {e['ssim']:.3f} | {e['psnr_copy_last']:.2f} "
                f"| {e['ssim_copy_last']:.3f} |"
            )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--video", default=os.path.join(HERE, "..", "..", "shared/data/bigbuckbunny.mp4")
    )
    p.add_argument("--root", default="workdirs/own_video")
    p.add_argument(
        "--split",
        type=int,
        default=26,
        help="frames per block (--split_by=blocks), first held-out frame (time), or percent "
        "of the width to train on (space)",
    )
    p.add_argument("--split_by", choices=["time", "space", "blocks"], default="blocks")
    p.add_argument("--jobs", type=int, default=1, help="modes trained at once")
    p.add_argument("--size", default="228x128", help="frames written for conversion, WxH")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--modes", nargs="+", default=["skip_sideways", "sideways"])
    p.add_argument(
        "--report_only", action="store_true", help="table, split and strip of finished runs"
    )
    p.add_argument(
        "--decoder",
        "--head",
        type=decoder_name,
        default="motion",
        help="FutureFrames.decoder: motion (shipped), delta or whole (the older head names "
        "frame_motion, frame_delta, frames are taken too)",
    )
    p.add_argument("--strip", help="PNG path (default: docs/own_video_<decoder>.png)")
    p.add_argument("--gin_param", action="append", default=[], help="added to every run")
    p.add_argument(
        "--drop_repeats",
        type=float,
        default=55.0,
        help="sideways-convert --drop_repeats (dB): drops the video's pulldown repeats (one "
        "frame in 25 repeats the one before it, a 24 fps film at 25 fps); 0: keep them",
    )
    args = p.parse_args()
    os.makedirs(args.root, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    counts = split_video(args.video, args.root, args.split, width, height, args.split_by)
    with open(os.path.join(args.root, "log.txt"), "a") as log:
        records = convert(args.root, log, args.drop_repeats or None)
        # time: one clip at every offset of the short held-out part (K + h = 17 frames);
        # space: 16 clips spread over the whole video.
        # blocks: every offset of each held-out block (the shortest, after dropping repeats).
        shortest = min(stored_frames(records, "eval"))
        eval_clips = {"time": shortest - 17 + 1, "space": 16, "blocks": shortest - 17 + 1}[
            args.split_by
        ]
        print(
            f"frames: {counts} written, {sum(stored_frames(records, 'train'))} / "
            f"{sum(stored_frames(records, 'eval'))} stored (repeats dropped); split "
            f"{args.split_by} {args.split}; {eval_clips} eval clips per held-out video",
            flush=True,
        )
        if args.report_only:
            results = [finished(args.root, m, args.decoder) for m in args.modes]
        else:
            with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
                results = list(
                    pool.map(
                        lambda m: train(
                            args.root,
                            records,
                            m,
                            args.decoder,
                            args.steps,
                            eval_clips,
                            log,
                            args.gin_param,
                        ),
                        args.modes,
                    )
                )
    print(table(results))
    for r in results:
        r["per_frame"] = per_frame(r)
        f = r["per_frame"]
        print(
            f"{r['mode']}: {f['frames']['repeats']} scored frames nearly repeat the last one "
            f"seen (copy-last > 45 dB): model {f['psnr']['repeats'] or float('nan'):.2f}, copy-last "
            f"{f['psnr_copy_last']['repeats'] or float('nan'):.2f} dB; the other "
            f"{f['frames']['others']}: model {f['psnr']['others']:.2f}, copy-last "
            f"{f['psnr_copy_last']['others']:.2f} dB (model ahead on "
            f"{100 * f['model_better_share']:.0f}% of them)"
        )
    with open(os.path.join(args.root, f"results_{args.decoder}.json"), "w") as f:
        json.dump(
            {
                "video": args.video,
                "split": args.split,
                "split_by": args.split_by,
                "drop_repeats": args.drop_repeats,
                "counts": counts,
                "runs": results,
            },
            f,
        )
    best = max(results, key=lambda r: r["history"][-1]["psnr"] - r["history"][-1]["psnr_copy_last"])
    path = args.strip or os.path.join(HERE, "..", "docs", f"own_video_{args.decoder}.png")
    strip(best, path)
    print(f"strip ({best['mode']}): {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
