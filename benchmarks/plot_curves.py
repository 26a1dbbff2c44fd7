"""Training curves of the four modes on moving_shapes, from their workdirs, as one PNG.

    python benchmarks/plot_curves.py --root workdirs/moving_shapes --out docs/moving_shapes_curves.png

Left: training loss (TensorBoard scalars); right: the training run's evaluations,
video accuracy (workdir.training_evaluations; a workdir written before the key was
renamed holds it as "accuracy").
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import tensorflow as tf  # noqa: E402

from sideways_tf import workdir as workdir_lib  # noqa: E402

MODES = ("frame_bp", "bptt", "sideways", "skip_sideways")


def scalars(directory: str, tag: str) -> tuple[list, list]:
    steps, values = [], []
    for name in sorted(tf.io.gfile.listdir(directory)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for v in event.summary.value:
                if v.tag == tag:
                    steps.append(event.step)
                    values.append(float(tf.make_ndarray(v.tensor)))
    return steps, values


def video_accuracy(evaluation: dict) -> float:
    """The per-video accuracy of an evaluation ("accuracy" in workdirs written before
    it was named video_accuracy)."""
    return evaluation.get("video_accuracy", evaluation.get("accuracy"))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="workdirs/moving_shapes")
    parser.add_argument("--out", default="docs/moving_shapes_curves.png")
    args = parser.parse_args()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in MODES:
        workdir = os.path.join(args.root, mode)
        if not os.path.isdir(workdir):
            print(f"skipping {mode}: no {workdir}")
            continue
        wd = workdir_lib.Workdir(workdir)
        ax_loss.plot(*scalars(wd.summaries("train"), "loss"), label=mode)
        history = workdir_lib.training_evaluations(wd, set_aside=False)
        ax_acc.plot(
            [h["step"] for h in history], [video_accuracy(h) for h in history], "o-", label=mode
        )
    ax_acc.axhline(0.25, color="gray", ls="--", lw=1, label="per-frame ceiling")
    ax_loss.set(xlabel="step", ylabel="training loss", title="moving_shapes: training loss")
    ax_acc.set(
        xlabel="step",
        ylabel="eval video accuracy (512 videos)",
        title="eval video accuracy",
        ylim=(0, 1),
    )
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
