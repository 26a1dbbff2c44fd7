"""Future frames of real footage through the own-videos path, against copying the last frame.

    python benchmarks/own_video.py --video=../shared/data/bigbuckbunny.mp4 \
        --root=workdirs/own_video --steps=300 --modes sideways skip_sideways bptt

1. Splits the video in time: frames [0, split) for training, [split, end) held out (the
   model never sees a held-out frame), each written as its own small video (PyAV).
2. Converts both with `sideways-convert --dataset=folder` and trains each mode with
   `sideways-train --gin_file=experiments/folder_future_<mode>` (head "frame_delta",
   h = 1, 32x32, B = 16, K = 16 + 1); the only extra bindings are the record patterns,
   the schedule, and eval/clip_sampling.num_eval_clips (one clip at every offset of the
   short held-out part, so that it fills one batch).
3. Prints the table (held-out PSNR / SSIM of the model and of the copy-the-last-seen-
   frame baseline, over the same scored steps) and writes it as JSON, and draws a strip
   of held-out frames: target, prediction, copy-last, |prediction - last frame|.

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

HERE = os.path.dirname(os.path.abspath(__file__))


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
        out.options = {"crf": "18"}  # near-lossless: the source's own compression dominates
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


def convert(root: str, log) -> str:
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
            ],
            log,
        )
    return records


def train(root, records, mode: str, head: str, steps: int, eval_clips: int, log) -> dict:
    workdir = os.path.join(root, "runs", head, mode)
    params = [
        f"TRAIN_RECORDS='{records}/train-*-of-*.tfrecord'",
        f"EVAL_RECORDS='{records}/eval-*-of-*.tfrecord'",
        f"eval/clip_sampling.num_eval_clips={eval_clips}",
        f"train.num_steps={steps}",
        f"train.eval_every={max(steps // 3, 1)}",
        f"train.checkpoint_every={steps}",
        "train.fidelity_every=0",
        "train.progress=False",
        f"conv_pipeline.head='{head}'",
    ]
    argv = [
        sys.executable,
        "-c",
        "import sys; from sideways_tf.cli import train_main; train_main(sys.argv[1:])",
        f"--workdir={workdir}",
        f"--gin_file=experiments/folder_future_{mode}",
    ] + [f"--gin_param={p}" for p in params]
    seconds = run(argv, log)
    with open(os.path.join(workdir, "eval_metrics.json")) as f:
        history = json.load(f)["history"]
    return {
        "mode": mode,
        "head": head,
        "workdir": workdir,
        "wall_s": round(seconds),
        "history": history,
    }


def strip(result: dict, path: str, num_frames: int = 8) -> None:
    """Held-out frames of one run: target / prediction / copy-last / |prediction - last|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sideways_tf.runs import load_run

    loaded = load_run(result["workdir"])
    batch = next(iter(loaded.eval_data().batch(loaded.engine.batch_per_process)))
    out = loaded.engine.predict_steps(batch["frames"])
    steps = np.flatnonzero(out["weights"].numpy() > 0)[:num_frames]
    rows = {
        "target x[t-lag+1]": out["targets"].numpy()[0, steps],
        f"{result['mode']} prediction": out["outputs"].numpy()[0, steps],
        "copy last x[t-lag]": out["last_seen"].numpy()[0, steps],
    }
    change = np.abs(rows[f"{result['mode']} prediction"] - rows["copy last x[t-lag]"])
    fig, axes = plt.subplots(4, len(steps), figsize=(1.3 * len(steps), 5.6))
    for r, (name, frames) in enumerate(rows.items()):
        for c, frame in enumerate(frames):
            axes[r, c].imshow(np.clip((frame + 1) / 2, 0, 1))
        axes[r, 0].set_ylabel(name, fontsize=7)
    scale = max(float(change.max()), 1e-6)
    for c, frame in enumerate(change):
        axes[3, c].imshow(frame.mean(-1) / scale, cmap="magma", vmin=0, vmax=1)
    axes[3, 0].set_ylabel(f"|pred - last| (max {scale:.2f})", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"bigbuckbunny held-out frames, {result['mode']}, step {loaded.step}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[dict]) -> str:
    lines = [
        "| mode | head | steps | wall s | PSNR dB | SSIM | copy last PSNR dB | copy last SSIM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for e in r["history"]:
            lines.append(
                f"| {r['mode']} | {r['head']} | {e['step']} | {r['wall_s'] if e is r['history'][-1] else ''} "
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
        default=100,
        help="first held-out frame (--split_by=time), or percent of the width to train on (space)",
    )
    p.add_argument("--split_by", choices=["time", "space", "blocks"], default="time")
    p.add_argument("--jobs", type=int, default=1, help="modes trained at once")
    p.add_argument("--size", default="228x128", help="frames written for conversion, WxH")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--modes", nargs="+", default=["sideways", "skip_sideways", "bptt"])
    p.add_argument("--head", default="frame_delta", help="frame_delta (shipped) or frames")
    p.add_argument("--strip", help="PNG path (default: docs/own_video_<head>.png)")
    args = p.parse_args()
    os.makedirs(args.root, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    counts = split_video(args.video, args.root, args.split, width, height, args.split_by)
    # time: one clip at every offset of the short held-out part (K + h = 17 frames);
    # space: 16 clips spread over the whole video.
    # blocks: every offset of each held-out block.
    eval_clips = {"time": counts["eval"] - 17 + 1, "space": 16, "blocks": args.split - 17 + 1}[
        args.split_by
    ]
    print(f"frames: {counts} (held out from frame {args.split}); {eval_clips} eval clips")
    with open(os.path.join(args.root, "log.txt"), "a") as log:
        records = convert(args.root, log)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            results = list(
                pool.map(
                    lambda m: train(args.root, records, m, args.head, args.steps, eval_clips, log),
                    args.modes,
                )
            )
    print(table(results))
    with open(os.path.join(args.root, f"results_{args.head}.json"), "w") as f:
        json.dump(
            {
                "video": args.video,
                "split": args.split,
                "split_by": args.split_by,
                "counts": counts,
                "runs": results,
            },
            f,
        )
    best = max(results, key=lambda r: r["history"][-1]["psnr"] - r["history"][-1]["psnr_copy_last"])
    path = args.strip or os.path.join(HERE, "..", "docs", f"own_video_{args.head}.png")
    strip(best, path)
    print(f"strip ({best['mode']}): {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
