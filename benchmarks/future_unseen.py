"""Future frames of footage the model never saw: train on synthetic camera motion over
photographs, evaluate on real footage (bigbuckbunny.mp4), against copying the last frame.

    pip install -e .[unseen]          # scikit-image: its sample photographs
    python benchmarks/future_unseen.py --root=workdirs/future_unseen --jobs=2 --no_bunny
    python benchmarks/future_unseen.py --root=workdirs/future_unseen --jobs=2

1. Videos (sideways_tf.data.camera_motion, 40 frames of 128x128): a virtual camera pans
   (0.5-6 px per frame, drifting, starting or stopping), zooms, rolls and shakes over
   scikit-image's sample photographs, with another photograph's disc crossing the view in
   about half of them, motion blur, sensor noise and a slow gain drift. TRAIN_PHOTOS make
   the training videos (6 per photograph); HELD_OUT_PHOTOS (other photographs, other
   seeds) the held-out synthetic videos (3 per photograph) and a shifted held-out set
   (SHIFTED: other motion ranges), on which the design is chosen. bigbuckbunny.mp4 (132
   frames, written at 228x128) is never trained on: it is written whole, and as the
   held-out blocks 1 and 3 of benchmarks/own_video.py (the within-shot benchmark's
   evaluation frames).
2. `sideways-convert --dataset=folder --fps=none --short_side=64 --drop_repeats=55` for
   every split (records/{train,heldout,heldout_shift,bunny,bunny_blocks}-*.tfrecord).
3. Per decoder, `sideways-train --gin_file=experiments/folder_future_skip_sideways` with
   the records macros (TRAIN_RECORDS: the synthetic training videos, EVAL_RECORDS: the
   held-out synthetic ones), FutureFrames.decoder (for "checked", the experiment's own
   value) and the schedule (train.num_steps; 600 by default).
4. The choice: `sideways-eval` of each run on the shifted set, and per scored frame of
   both synthetic sets the model's PSNR against copy-last's (share behind by more than
   0.05 dB, share ahead, the worst frame); printed as the first table.
5. Unless --no_bunny: `sideways-eval` of each run on bigbuckbunny, once per split:
   EVAL_RECORDS=bunny (the whole video, eval/clip_sampling.num_eval_clips=16) and
   EVAL_RECORDS=bunny_blocks (one clip at every offset of each held-out block); printed
   as the second table with the per-frame comparison on the whole video; all of it also
   in <root>/results.json.

Every step is done once: videos, records, runs and evaluations found under --root are
reused, so the second command only adds the bigbuckbunny evaluations. The commands run
as `python -c` calls of the console scripts' entry points (the same functions).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from sideways_tf import workdir as workdir_lib
from sideways_tf.data import camera_motion

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import own_video  # noqa: E402 (the within-shot benchmark: its blocks and its writer)

# scikit-image's sample photographs (shipped in its wheel), split once, before any run.
TRAIN_PHOTOS = (
    "astronaut",
    "camera",
    "rocket",
    "stereo_motorcycle",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "moon",
    "page",
    "text",
    "grass",
    "brick",
    "clock",
    "cell",
)
HELD_OUT_PHOTOS = ("chelsea", "coffee", "gravel", "coins")
# A shifted held-out set (the same held-out photographs): camera motion from other ranges
# than training's (faster pans, more stills and starts / stops, stronger zoom, roll and
# shake, faster objects), to choose a design that holds when the motion is not the one
# it trained on, without looking at real footage.
TRAINING = camera_motion.CameraMotion()  # training and held-out videos
SHIFTED = camera_motion.CameraMotion(
    speed=(0.25, 12.0),
    still=0.4,
    start_stop=0.6,
    zoom=0.02,
    roll=0.01,
    shake=1.5,
    shake_p=0.6,
    object_speed=(0.5, 8.0),
    noise=(1.0, 4.0),
)
EXPERIMENT = "experiments/folder_future_skip_sideways"
CLIP_FRAMES = 17  # K = 16 + HORIZON = 1 (data/folder_future.gin)


def photographs(names) -> list[np.ndarray]:
    """The named scikit-image photographs, RGB uint8, short side at most 512 (box filtered)."""
    import skimage.data

    out = []
    for name in names:
        image = getattr(skimage.data, name)()
        image = camera_motion.as_rgb(image[0] if isinstance(image, tuple) else image)
        factor = int(np.ceil(min(image.shape[:2]) / 512))
        if factor > 1:
            h, w = (s // factor * factor for s in image.shape[:2])
            image = image[:h, :w].reshape(h // factor, factor, w // factor, factor, 3)
            image = image.mean(axis=(1, 3)).round().astype(np.uint8)
        out.append(image)
    return out


def make_videos(root, split, names, per_photo, num_frames, seed, motion) -> int:
    """Writes per_photo camera videos of each photograph to <root>/videos/<split>/all/; a
    moving disc comes from another photograph of the same split. Returns the videos."""
    folder = os.path.join(root, "videos", split, "all")
    images = photographs(names)
    count = 0
    for p, (name, image) in enumerate(zip(names, images)):
        others = [im for q, im in enumerate(images) if q != p]
        for v in range(per_photo):
            path = os.path.join(folder, f"{name}_{v}.mp4")
            count += 1
            if os.path.exists(path):
                continue
            frames = camera_motion.camera_video(
                image, num_frames, seed + 100 * p + v, motion, objects=others
            )
            own_video._write(path, list(frames), 25)
    return count


def bunny_videos(root, video) -> None:
    """bigbuckbunny whole (videos/bunny/all/) and its held-out blocks 1 and 3
    (videos/bunny_blocks/all/), 228x128 like benchmarks/own_video.py."""
    whole = os.path.join(root, "videos", "bunny", "all", "bigbuckbunny.mp4")
    if not os.path.exists(whole):
        import av

        with av.open(video) as source:
            stream = source.streams.video[0]
            frames = [
                f.reformat(width=228, height=128, format="rgb24").to_ndarray()
                for f in source.decode(stream)
            ]
        own_video._write(whole, frames, 25)
    blocks = os.path.join(root, "videos", "bunny_blocks")
    if not os.path.exists(blocks):
        scratch = os.path.join(root, "blocks_scratch")
        own_video.split_video(video, scratch, 26, 228, 128, "blocks")
        shutil.move(os.path.join(scratch, "videos", "eval"), blocks)
        shutil.rmtree(scratch)


def tool(name: str) -> list[str]:
    """The command line of the console script `name` (sideways-convert, -train, -eval),
    run as this Python calling its entry point (the same function the script calls)."""
    module, function = {
        "sideways-convert": ("sideways_tf.data.prepare.convert", "main"),
        "sideways-train": ("sideways_tf.cli", "train_main"),
        "sideways-eval": ("sideways_tf.cli", "eval_main"),
    }[name]
    call = f"import sys; from {module} import {function}; sys.exit({function}(sys.argv[1:]))"
    return [sys.executable, "-c", call]


def run(argv, log) -> float:
    start = time.time()
    log.write("$ " + " ".join(argv) + "\n")
    log.flush()
    done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed ({done.returncode}); see the log.")
    return time.time() - start


def convert(root, split, log) -> dict:
    records = os.path.join(root, "records")
    report = os.path.join(records, f"{split}-report.json")
    if not os.path.exists(report):
        run(
            tool("sideways-convert")
            + [
                "--dataset=folder",
                f"--videos_dir={os.path.join(root, 'videos', split)}",
                f"--split={split}",
                f"--output_dir={records}",
                "--fps=none",
                "--short_side=64",
                "--drop_repeats=55",
                "--workers=1",
                "--no_progress",
            ],
            log,
        )
    with open(report) as f:
        return json.load(f)


def pattern(root, split) -> str:
    return os.path.join(root, "records", f"{split}-*-of-*.tfrecord")


def train(root, decoder, args, log) -> dict:
    """sideways-train of the shipped experiment on the synthetic videos (once: a finished
    run is reused, with the wall time it recorded)."""
    workdir = os.path.join(root, "runs", decoder)
    params = [
        f"TRAIN_RECORDS='{pattern(root, 'train')}'",
        f"EVAL_RECORDS='{pattern(root, 'heldout')}'",
        f"FutureFrames.decoder='{decoder}'",  # ("checked": the experiment's own)
        f"train.num_steps={args.steps}",
        f"train.eval_every={max(args.steps // 3, 1)}",
        f"train.checkpoint_every={args.steps}",
        "train.fidelity_every=0",
        "train.progress=False",
        *args.gin_param,
    ]
    timing = os.path.join(workdir, "wall_s.json")
    history = workdir_lib.training_evaluations(workdir, set_aside=False)
    if not history or history[-1]["step"] < args.steps:
        argv = tool("sideways-train") + [f"--workdir={workdir}", f"--gin_file={EXPERIMENT}"]
        seconds = round(run(argv + [f"--gin_param={p}" for p in params], log))
        with open(timing, "w") as f:
            json.dump({"wall_s": seconds}, f)
        history = workdir_lib.training_evaluations(workdir, set_aside=False)
    seconds = json.load(open(timing))["wall_s"] if os.path.exists(timing) else None
    return {"decoder": decoder, "workdir": workdir, "wall_s": seconds, "history": history}


def evaluation(result, root, split, clips, log) -> dict:
    """sideways-eval of a run on a split (once: a recorded one is reused)."""
    params = [
        f"EVAL_RECORDS='{pattern(root, split)}'",
        f"eval/clip_sampling.num_eval_clips={clips}",
    ]
    for entry in workdir_lib.read_evaluations(result["workdir"], set_aside=False).get(
        "history", []
    ):
        if entry.get("source") == "sideways-eval" and entry.get("gin_params") == params:
            return entry
    argv = tool("sideways-eval") + [f"--workdir={result['workdir']}"]
    run(argv + [f"--gin_param={p}" for p in params], log)
    return evaluation(result, root, split, clips, log)


def losses_to_copy_last(result, root, split, clips) -> dict:
    """Per scored frame of a split: the model's PSNR minus copy-last's. Returns the share
    of frames the model loses by more than 0.05 dB, wins by more, and the worst deficit."""
    from sideways_tf import evaluate as evaluation
    from sideways_tf.runs import load_run

    params = (
        f"EVAL_RECORDS='{pattern(root, split)}'",
        f"eval/clip_sampling.num_eval_clips={clips}",
    )
    loaded = load_run(result["workdir"], gin_params=params)
    engine = loaded.engine
    metrics, gaps = engine.task.metrics(), []
    for batch in loaded.eval_data().batch(engine.batch_per_process):
        scored, _ = evaluation.score_batch(engine, metrics, batch["frames"])
        steps = np.asarray(scored.weights) > 0
        targets = np.asarray(scored.targets)[:, steps]
        psnr = []
        for values in (scored.outputs, scored.references["last_seen"]):
            mse = np.mean((np.asarray(values)[:, steps] - targets) ** 2, axis=(2, 3, 4))
            psnr.append(np.minimum(10 * np.log10(4.0 / np.maximum(mse, 1e-12)), 100.0))
        gaps.append((psnr[0] - psnr[1]).ravel())
    gaps = np.concatenate(gaps)
    return {
        "frames": int(gaps.size),
        "behind_share": float(np.mean(gaps < -0.05)),
        "worst_db": float(gaps.min()),
        "ahead_share": float(np.mean(gaps > 0.05)),
    }


def cells(e: dict) -> str:
    """PSNR / SSIM of the model and of copy-last: two table cells."""
    return (
        f"{e['psnr']:.2f} / {e['ssim']:.3f} | {e['psnr_copy_last']:.2f} / {e['ssim_copy_last']:.3f}"
    )


def behind(f: dict) -> str:
    """The per-frame comparison with copy-last: one table cell."""
    return (
        f"{100 * f['behind_share']:.0f}% / {100 * f['ahead_share']:.0f}% of {f['frames']}, "
        f"{f['worst_db']:.2f} dB"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="workdirs/future_unseen")
    p.add_argument(
        "--video", default=os.path.join(HERE, "..", "..", "shared/data/bigbuckbunny.mp4")
    )
    p.add_argument(
        "--decoders", nargs="+", default=["checked", "gated", "motion"], help="FutureFrames.decoder"
    )
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    p.add_argument("--train_per_photo", type=int, default=6)
    p.add_argument("--heldout_per_photo", type=int, default=3)
    p.add_argument("--frames", type=int, default=40, help="frames per synthetic video")
    p.add_argument(
        "--no_bunny", action="store_true", help="train and score the synthetic held-out sets only"
    )
    p.add_argument("--gin_param", action="append", default=[], help="added to every run")
    args = p.parse_args()
    start = time.time()
    os.makedirs(args.root, exist_ok=True)
    n, frames = args.heldout_per_photo, args.frames
    made = {
        "train": make_videos(
            args.root, "train", TRAIN_PHOTOS, args.train_per_photo, frames, 0, TRAINING
        ),
        "heldout": make_videos(args.root, "heldout", HELD_OUT_PHOTOS, n, frames, 50_000, TRAINING),
        "heldout_shift": make_videos(
            args.root, "heldout_shift", HELD_OUT_PHOTOS, n, frames, 70_000, SHIFTED
        ),
    }
    bunny_videos(args.root, args.video)
    with open(os.path.join(args.root, "log.txt"), "a") as log:
        splits = ("train", "heldout", "heldout_shift", "bunny", "bunny_blocks")
        reports = {s: convert(args.root, s, log) for s in splits}
        stored = {
            s: own_video.stored_frames(os.path.join(args.root, "records"), s) for s in reports
        }
        print(
            f"videos ({frames} frames each): "
            + ", ".join(f"{s} {k}" for s, k in made.items())
            + "; frames stored: "
            + ", ".join(f"{s} {sum(v)} in {len(v)}" for s, v in stored.items())
            + "; repeats dropped: "
            + ", ".join(f"{s} {r.get('repeats_dropped', 0)}" for s, r in reports.items()),
            flush=True,
        )
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda d: train(args.root, d, args, log), args.decoders))
        # Choosing the design: the synthetic held-out sets only.
        lines = [
            "| decoder | held-out synthetic: PSNR / SSIM | copy-last | frames behind / ahead "
            "of copy-last (> 0.05 dB), worst | shifted motion: PSNR / SSIM | copy-last | "
            "behind / ahead, worst | train wall s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            r["heldout"] = r["history"][-1]
            r["heldout_frames"] = losses_to_copy_last(r, args.root, "heldout", 4)
            r["heldout_shift"] = evaluation(r, args.root, "heldout_shift", 4, log)
            r["heldout_shift_frames"] = losses_to_copy_last(r, args.root, "heldout_shift", 4)
            lines.append(
                f"| {r['decoder']} | {cells(r['heldout'])} | {behind(r['heldout_frames'])} | "
                f"{cells(r['heldout_shift'])} | {behind(r['heldout_shift_frames'])} | "
                f"{r['wall_s'] or ''} |"
            )
        print("\n".join(lines), flush=True)
        if not args.no_bunny:  # once per design, after the choice
            block_clips = min(stored["bunny_blocks"]) - CLIP_FRAMES + 1
            lines = [
                "| decoder | bigbuckbunny whole (16 clips): PSNR / SSIM | copy-last | frames "
                "behind / ahead of copy-last, worst | held-out blocks 1, 3 "
                f"({2 * block_clips} clips) | copy-last |",
                "|---|---|---|---|---|---|",
            ]
            for r in results:
                r["bunny"] = evaluation(r, args.root, "bunny", 16, log)
                r["bunny_frames"] = losses_to_copy_last(r, args.root, "bunny", 16)
                r["bunny_blocks"] = evaluation(r, args.root, "bunny_blocks", block_clips, log)
                lines.append(
                    f"| {r['decoder']} | {cells(r['bunny'])} | {behind(r['bunny_frames'])} | "
                    f"{cells(r['bunny_blocks'])} |"
                )
            print("\n".join(lines))
    with open(os.path.join(args.root, "results.json"), "w") as f:
        json.dump({"made": made, "stored": stored, "runs": results}, f, default=str)
    print(f"wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
