"""Arrow of time (or playback speed) on real footage: 4 modes x seeds, held-out temporal blocks.

    python benchmarks/temporal_study.py --root=workdirs/temporal_study --steps=150 --jobs=3

(the README's study: 2204 s on 2 shared CPU cores, every mode and seed at 0.500.)

1. Cuts ../shared/data/bigbuckbunny.mp4 (132 frames, one shot) into blocks of --block
   frames that alternate: even blocks train, odd blocks are held out (each block its own
   small lossless video, benchmarks/own_video.py's writer), and converts both splits with
   `sideways-convert --dataset=folder --short_side=64 --fps=none`.
2. Trains every (mode, seed) through the shipped `experiments/folder_<task>_<mode>` (32x32,
   K = 16, B = 16); the only extra bindings, the same for every mode: the record
   patterns, the schedule (--steps, one evaluation at the end) and train.seed. The
   seed also seeds TF's global generator before the input pipeline is built (the
   folder reader has no seed binding of its own): the data seed. Nothing is chosen on
   the held-out blocks: they are scored once, after training.
3. Evaluates each run's final checkpoint on the held-out blocks and on the training
   blocks (the train/eval gap) with `sideways-eval --protocols=multiview,streaming`
   (evaluate.evaluate_workdir): the evaluation's clips (clip_accuracy), multi-view
   (multiview_accuracy: N clips x 3 crops, logits averaged per video and class) and
   streaming (each video played once per class, frame by frame with carried state).
4. Writes docs/temporal_study.json, draws docs/temporal_study.png (held-out accuracy per
   mode, seeds as points, the per-frame ceiling as a line) and prints the table (mean
   +- std over seeds, std with ddof = 1).

--report_only: step 4 from the runs evaluated so far (evaluations cached in the root).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import own_video  # noqa: E402  (the block writer and the converter call)

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("frame_bp", "bptt", "sideways", "skip_sideways")
CEILING = {"arrow": 1 / 2, "speed": 1 / 3}
FIGURES = ("clip_accuracy", "multiview_accuracy", "streaming_accuracy", "multiview_loss")


def run_dir(root: str, task: str, mode: str, seed: int) -> str:
    return os.path.join(root, "runs", task, f"{mode}_seed{seed}")


def train(root: str, records: str, task: str, mode: str, seed: int, steps: int, log) -> float:
    """One sideways-train run; returns its wall time (s). A finished run is kept."""
    workdir = run_dir(root, task, mode, seed)
    done = os.path.join(workdir, "study_train.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)["wall_s"]
    params = [
        f"TRAIN_RECORDS='{records}/train-*-of-*.tfrecord'",
        f"EVAL_RECORDS='{records}/eval-*-of-*.tfrecord'",
        f"train.num_steps={steps}",
        f"train.eval_every={steps}",
        f"train.checkpoint_every={steps}",
        f"train.seed={seed}",
        "train.fidelity_every=0",
        "train.progress=False",
    ]
    code = (
        "import sys, tensorflow as tf; tf.random.set_seed(int(sys.argv[1])); "
        "from sideways_tf.cli import train_main; train_main(sys.argv[2:])"
    )
    argv = [
        sys.executable,
        "-c",
        code,
        str(seed),  # the data seed (TF's global seed, set before the reader is built)
        f"--workdir={workdir}",
        f"--gin_file=experiments/folder_{task}_{mode}",
    ] + [f"--gin_param={p}" for p in params]
    seconds = own_video.run(argv, log)
    with open(done, "w") as f:
        json.dump({"wall_s": round(seconds)}, f)
    return round(seconds)


def evaluate(root: str, records: str, task: str, mode: str, seed: int, log) -> dict:
    """sideways-eval --protocols=multiview,streaming of a finished run on the held-out
    ("eval") and the training records, in one process (cached in the workdir as
    study_eval.json): {"eval": figures, "train": figures}."""
    workdir = run_dir(root, task, mode, seed)
    out = os.path.join(workdir, "study_eval.json")
    if not os.path.exists(out):
        code = (
            "import json, sys; from sideways_tf.evaluate import evaluate_workdir\n"
            "out = {}\n"
            "for split in ('eval', 'train'):\n"
            "    pattern = f\"eval/dmvr_dataset.pattern='{sys.argv[2]}/{split}-*-of-*.tfrecord'\"\n"
            "    r = evaluate_workdir(sys.argv[1], [pattern], progress=False,"
            " protocols=['multiview', 'streaming'])\n"
            "    r['eval'].pop('images', None)\n"
            "    out[split] = {k: float(v) for k, v in r['eval'].items()}\n"
            "json.dump(out, open(sys.argv[3], 'w'))\n"
        )
        own_video.run([sys.executable, "-c", code, workdir, records, out], log)
    with open(out) as f:
        return json.load(f)


def one_run(root, records, task, mode, seed, steps, log) -> dict:
    wall = train(root, records, task, mode, seed, steps, log)
    result = {"task": task, "mode": mode, "seed": seed, "steps": steps, "wall_s": wall}
    result.update(evaluate(root, records, task, mode, seed, log))
    print(
        f"{task} {mode} seed {seed}: held-out multiview {result['eval']['multiview_accuracy']:.3f}"
        f" streaming {result['eval']['streaming_accuracy']:.3f}, train multiview "
        f"{result['train']['multiview_accuracy']:.3f} ({wall} s)",
        flush=True,
    )
    return result


def summary(runs: list[dict], task: str) -> dict:
    """Per mode: mean and std (ddof 1) over seeds of each figure, held-out and train."""
    out = {}
    for mode in MODES:
        rows = [r for r in runs if r["mode"] == mode and r["task"] == task]
        if not rows:
            continue
        entry = {"seeds": [r["seed"] for r in rows]}
        for split in ("eval", "train"):
            for figure in FIGURES:
                values = np.array([r[split][figure] for r in rows])
                entry[f"{split}_{figure}"] = {
                    "mean": float(values.mean()),
                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "values": values.tolist(),
                }
        gap = np.array(
            [r["train"]["multiview_accuracy"] - r["eval"]["multiview_accuracy"] for r in rows]
        )
        entry["gap_multiview"] = {
            "mean": float(gap.mean()),
            "std": float(gap.std(ddof=1)) if len(gap) > 1 else 0.0,
        }
        entry["wall_s"] = [r["wall_s"] for r in rows]
        out[mode] = entry
    return out


def table(stats: dict, task: str, counts: dict) -> str:
    def ms(e):
        return f"{e['mean']:.3f} +- {e['std']:.3f}"

    lines = [
        f"{task}: held-out accuracy, mean +- std over seeds (per-frame ceiling "
        f"{CEILING[task]:.3f}); held-out units: {counts}",
        "| mode | seeds | multi-view | streaming | clips | multi-view loss (ln 2 = 0.693) | "
        "train multi-view | gap (train - held-out, multi-view) | wall s per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, e in stats.items():
        lines.append(
            f"| {mode} | {len(e['seeds'])} | {ms(e['eval_multiview_accuracy'])} | "
            f"{ms(e['eval_streaming_accuracy'])} | {ms(e['eval_clip_accuracy'])} | "
            f"{ms(e['eval_multiview_loss'])} | "
            f"{ms(e['train_multiview_accuracy'])} | {ms(e['gap_multiview'])} | "
            f"{round(np.mean(e['wall_s']))} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict], task: str, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("eval", "multiview_accuracy", "held-out multi-view"),
        ("eval", "streaming_accuracy", "held-out streaming"),
        ("train", "multiview_accuracy", "train blocks, multi-view"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.4), sharey=True)
    for ax, (split, figure, name) in zip(axes, panels):
        for i, mode in enumerate(MODES):
            values = [r[split][figure] for r in runs if r["mode"] == mode and r["task"] == task]
            if not values:
                continue
            jitter = np.linspace(-0.12, 0.12, len(values))
            ax.scatter(i + jitter, values, s=22, zorder=3)
            ax.errorbar(
                i + 0.25,
                np.mean(values),
                yerr=np.std(values, ddof=1) if len(values) > 1 else 0,
                fmt="_",
                color="k",
                capsize=3,
            )
        ax.axhline(CEILING[task], color="r", ls="--", lw=1, label="per-frame ceiling")
        ax.set_xticks(range(len(MODES)))
        ax.set_xticklabels(MODES, rotation=20, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy (points: seeds; bar: mean +- std)")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--video", default=os.path.join(HERE, "..", "..", "shared/data/bigbuckbunny.mp4")
    )
    p.add_argument("--root", default="workdirs/temporal_study")
    p.add_argument("--task", choices=sorted(CEILING), default="arrow")
    p.add_argument("--block", type=int, default=18, help="frames per block (even: train)")
    p.add_argument("--size", default="228x128", help="frames written for conversion, WxH")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", default=list(MODES))
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    p.add_argument("--report_only", action="store_true", help="tables and plot of finished runs")
    p.add_argument("--json", default=os.path.join(HERE, "..", "docs", "temporal_study.json"))
    p.add_argument("--png", default=os.path.join(HERE, "..", "docs", "temporal_study.png"))
    args = p.parse_args()
    start = time.time()
    os.makedirs(args.root, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    counts = own_video.split_video(args.video, args.root, args.block, width, height, "blocks")
    jobs = [(m, s) for s in args.seeds for m in args.modes]  # seed-major: whole seeds first
    if args.report_only:  # the runs evaluated so far (a study cut short reports what it has)
        jobs = [
            (m, s)
            for m, s in jobs
            if os.path.exists(os.path.join(run_dir(args.root, args.task, m, s), "study_eval.json"))
        ]
    with open(os.path.join(args.root, "log.txt"), "a") as log:
        records = own_video.convert(args.root, log, None)  # repeats kept: time-symmetric
        stored = {s: own_video.stored_frames(records, s) for s in ("train", "eval")}
        print(f"frames per video stored: {stored}", flush=True)
        with concurrent.futures.ThreadPoolExecutor(1 if args.report_only else args.jobs) as pool:
            runs = list(
                pool.map(
                    lambda job: one_run(
                        args.root, records, args.task, job[0], job[1], args.steps, log
                    ),
                    jobs,
                )
            )
    stats = summary(runs, args.task)
    classes = round(1 / CEILING[args.task])
    units = {
        "held-out videos x classes": len(stored["eval"]) * classes,
        "multiview views per unit": None,
    }
    first = runs[0]["eval"]
    units["multiview views per unit"] = round(first["multiview_views"] / first["multiview_videos"])
    print(table(stats, args.task, units))
    wall = round(time.time() - start)
    command = " ".join(["python", "benchmarks/temporal_study.py", *sys.argv[1:]])
    if args.report_only and os.path.exists(args.json):  # the study's, not this report's
        with open(args.json) as f:
            before = json.load(f)
        wall = before.get("wall_s", before.get("wall_s_this_invocation", wall))
        command = before.get("study_command", command)
    with open(args.json, "w") as f:
        json.dump(
            {
                "video": os.path.basename(args.video),
                "task": args.task,
                "per_frame_ceiling": CEILING[args.task],
                "block": args.block,
                "frames_written": counts,
                "frames_stored": stored,
                "steps": args.steps,
                "seeds": args.seeds,
                "study_command": command,
                "wall_s": wall,  # the whole study: cut, convert, train and evaluate every run
                "summary": stats,
                "runs": runs,
            },
            f,
            indent=1,
        )
    plot(
        runs,
        args.task,
        args.png,
        f"{args.task} of time on held-out bigbuckbunny blocks ({len(args.seeds)} seeds, "
        f"{args.steps} steps)"
        if args.task == "arrow"
        else f"playback speed on held-out bigbuckbunny blocks ({len(args.seeds)} seeds)",
    )
    print(f"wall time {wall} s; {os.path.normpath(args.json)}, {os.path.normpath(args.png)}")


if __name__ == "__main__":
    main()
