"""The README's future-frame table and picture, from the four runs' workdirs.

    bash benchmarks/future_frames.sh workdirs/moving_shapes_future 1000
    python benchmarks/plot_future.py --root workdirs/moving_shapes_future --out docs/future_frames.png

Table: the last training evaluation of each mode (workdir.training_evaluations:
PSNR, SSIM, the copy-the-last-seen-frame baseline on the same steps) and its wall
time (wall_times.txt). Picture: each mode's last "predictions" image from TensorBoard
(first eval clip: target row above prediction row, scored steps only).
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import tensorflow as tf  # noqa: E402

from sideways_tf import workdir as workdir_lib  # noqa: E402

MODES = ("frame_bp", "bptt", "sideways", "skip_sideways")


def last_image(directory: str, tag: str = "predictions"):
    """The newest image summary `tag` in an event directory, as [H, W, 3] uint8."""
    found = None
    for name in sorted(tf.io.gfile.listdir(directory)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for v in event.summary.value:
                if v.tag == tag:
                    found = (event.step, tf.make_ndarray(v.tensor))
    if found is None:
        return None
    _, tensor = found  # [width, height, png_1, ...] strings
    return tf.io.decode_png(tensor[2]).numpy()


def wall_times(root: str) -> dict:
    path = os.path.join(root, "wall_times.txt")
    if not os.path.exists(path):
        return {}
    times = {}
    with open(path) as f:
        for line in f:
            mode, rest = line.split(":", 1)
            times[mode.strip()] = int(rest.split()[0])
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="workdirs/moving_shapes_future")
    parser.add_argument("--out", default="docs/future_frames.png")
    args = parser.parse_args()
    times = wall_times(args.root)
    rows, images = [], []
    print("| mode | PSNR (dB) | SSIM | copy last frame: PSNR / SSIM | steps | wall time |")
    print("|---|---|---|---|---|---|")
    for mode in MODES:
        workdir = workdir_lib.Workdir(os.path.join(args.root, mode))
        evaluations = workdir_lib.training_evaluations(workdir, set_aside=False)
        if not evaluations:
            print(f"| {mode} | (no run in {workdir}) |||||")
            continue
        m = evaluations[-1]
        wall = f"{times[mode] / 60:.1f} min" if mode in times else "?"
        print(
            f"| {mode} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['psnr_copy_last']:.2f} / "
            f"{m['ssim_copy_last']:.3f} | {m['step']} | {wall} |"
        )
        rows.append(mode)
        images.append(last_image(workdir.summaries("eval")))
    shown = [(mode, image) for mode, image in zip(rows, images) if image is not None]
    if not shown:
        return
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 2.2 * len(shown)), squeeze=False)
    for ax, (mode, image) in zip(axes[:, 0], shown):
        ax.imshow(image, interpolation="nearest")
        ax.set_ylabel(f"{mode}\ntarget / pred", rotation=0, ha="right", va="center", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Next-frame prediction on moving_shapes (eval clip 1, scored steps)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
