"""The future-frame study: does Skip-Sideways predict future frames better than Sideways?

The papers' second claim: skip connections across depth become connections across
time, so Skip-Sideways sees motion and predicts future frames better than Sideways.
One entry command runs the grid (in parallel where the cores allow), then writes
JSON, a Markdown table and a plot:

    python benchmarks/future_study.py --root workdirs/future_study --steps 600 --jobs 2
    python benchmarks/future_study.py --root workdirs/future_study --report_only

Grid, one factor at a time around a base (skip(2), horizon h = 1, 2 px/frame), every
cell over --seeds seeds (3): the base for sideways and skip_sideways, with bptt and
frame_bp of the same network as references; then h = 3; speed 1 and 3 px/frame
(both modes); and for skip_sideways the skip patterns skip(3), dense(3) and a skip
delayed by one more step, skip(2, 1) (plain Sideways has no skips: its base is its
reference). Every run is the shipped experiment
`experiments/moving_shapes_future_<mode>` (32x32, B = 16, K = 16) with a different
seed (the initial parameters and the videos), --steps steps, evaluated on 256
held-out clips against copying the last seen frame, and with FutureFrames.decoder
"delta": its change is read off the top unit's features and the last frame, so what
it predicts of motion is what the network's features carry (the shipped decoder,
"motion", also reads the last change seen, x[t - lag] - x[t - lag - 1], and sees
motion in any mode).

Each cell reports PSNR and SSIM as mean ± standard deviation over the seeds, and the
PSNR gain over copy-last on the same steps. Skip-Sideways "wins" a setting when its
mean beats Sideways' by more than the two spreads combined (sqrt(s1^2 + s2^2)).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import subprocess
import sys
import time

from sideways_tf import workdir as workdir_lib

BASE = {"topology": "skip(2)", "horizon": 1, "speed": 2}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One setting of the grid: a mode and the factors that differ from BASE."""

    setting: str  # "base", "h=3", "speed=1", ...
    mode: str
    topology: str = BASE["topology"]
    horizon: int = BASE["horizon"]
    speed: int = BASE["speed"]

    def name(self, seed: int) -> str:
        return (
            f"{self.setting.replace('=', '')}_{self.mode}_seed{seed}".replace("(", "")
            .replace(")", "")
            .replace(", ", "-")
            .replace(",", "-")
        )

    def gin_params(self, seed: int, steps: int) -> list[str]:
        params = [
            f"train.seed = {seed}",
            f"train/moving_shapes_future_dataset.seed = {seed}",
            f"HORIZON = {self.horizon}",
            f"moving_shapes_future_dataset.speed = {self.speed}",
            # The change from the features alone: "motion" (the shipped decoder) also
            # reads the last change seen, so it would see motion in any mode.
            "FutureFrames.decoder = 'delta'",
            *quiet_budget(steps),
        ]
        if self.mode in ("skip_sideways", "bptt", "frame_bp"):  # the same skip network
            params.append(f"conv_pipeline.topology = {self.topology!r}")
        return params


def grid(include_references: bool = True) -> list[Cell]:
    cells = [Cell("base", m) for m in ("sideways", "skip_sideways")]
    if include_references:
        cells += [Cell("base", m) for m in ("bptt", "frame_bp")]
    for mode in ("sideways", "skip_sideways"):  # both modes of a setting next to each other
        cells.append(Cell("h=3", mode, horizon=3))
    for v in (1, 3):
        cells += [Cell(f"speed={v}", mode, speed=v) for mode in ("sideways", "skip_sideways")]
    cells += [
        Cell("skip(3)", "skip_sideways", topology="skip(3)"),
        # dense(w): every unit reads the w below it. dense(2) is skip(2), the base, edge for
        # edge; dense(3) adds edges spanning three units (i - 3 -> i) to skip(2)'s.
        Cell("dense(3)", "skip_sideways", topology="dense(3)"),
        Cell("skip(2,1)", "skip_sideways", topology="skip(2, 1)"),
    ]
    return cells


def run_one(root: str, cell: Cell, seed: int, steps: int, extra: list[str]) -> dict:
    """Trains one cell with one seed in its own workdir; returns its final evaluation."""
    workdir = os.path.join(root, cell.name(seed))
    done = _final(workdir, steps)
    if done is not None:  # finished before: the grid resumes
        return done
    start = time.time()
    train_cli(
        workdir,
        f"experiments/moving_shapes_future_{cell.mode}",
        cell.gin_params(seed, steps) + list(extra),
        os.path.join(root, cell.name(seed) + ".log"),
    )
    result = _final(workdir, steps)
    result["wall_seconds"] = time.time() - start
    return result


def train_cli(workdir: str, gin_file: str, params: list, log_path: str) -> None:
    """sideways-train in a subprocess, its output in log_path; raises naming the log."""
    args = [
        sys.executable,
        "-c",
        "import sys; from sideways_tf import cli; cli.train_main(sys.argv[1:])",
        f"--gin_file={gin_file}",
        f"--workdir={workdir}",
    ] + [f"--gin_param={p}" for p in params]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "w") as log:
        code = subprocess.call(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise RuntimeError(f"{workdir} failed (exit {code}); see {log_path}")


def quiet_budget(steps: int) -> list[str]:
    """Bindings of a study run: `steps` steps, one evaluation and checkpoint at the end,
    no progress bar, fidelity or images."""
    return [
        f"train.num_steps = {steps}",
        f"train.eval_every = {steps}",
        f"train.checkpoint_every = {steps}",
        "train.progress = False",
        "train.fidelity_every = 0",
        "train.images_every = 0",
    ]


def _final(workdir: str, steps: int) -> dict | None:
    """The training run's evaluation at step `steps`; None before it (or no run)."""
    done = [h for h in workdir_lib.training_evaluations(workdir) if h["step"] == steps]
    return done[-1] if done else None


def summarise(cells: list[Cell], seeds: list[int], results: dict) -> list[dict]:
    """Mean and spread over seeds per cell."""
    rows = []
    for cell in cells:
        runs = [results[(cell, s)] for s in seeds if (cell, s) in results]
        if not runs:
            continue
        row = {"setting": cell.setting, "mode": cell.mode, "seeds": len(runs)}
        for key in ("psnr", "ssim", "psnr_copy_last", "ssim_copy_last"):
            values = [float(r[key]) for r in runs]
            row[key] = _mean(values)
            row[key + "_std"] = _std(values)
        gains = [float(r["psnr"]) - float(r["psnr_copy_last"]) for r in runs]
        row["psnr_gain"], row["psnr_gain_std"] = _mean(gains), _std(gains)
        rows.append(row)
    return rows


def _mean(values):
    return sum(values) / len(values)


def _std(values):
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def verdicts(rows: list[dict]) -> list[dict]:
    """skip_sideways - sideways PSNR per setting, against the combined spread."""
    by = {(r["setting"], r["mode"]): r for r in rows}
    out = []
    for (setting, mode), skip in by.items():
        if mode != "skip_sideways":
            continue
        side = by.get((setting, "sideways")) or by.get(("base", "sideways"))
        if side is None:
            continue
        diff = skip["psnr"] - side["psnr"]
        spread = math.hypot(skip["psnr_std"], side["psnr_std"])
        out.append(
            {
                "setting": setting,
                "skip_minus_sideways_psnr": diff,
                "spread": spread,
                "reading": "skip_sideways better"
                if diff > spread
                else "sideways better"
                if diff < -spread
                else "within the spread",
            }
        )
    return out


def table(rows: list[dict], verdict: list[dict]) -> str:
    lines = [
        "| setting | mode | PSNR dB | SSIM | copy last PSNR / SSIM | gain over copy last dB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['mode']} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | "
            f"{r['ssim']:.3f} ± {r['ssim_std']:.3f} | {r['psnr_copy_last']:.2f} / "
            f"{r['ssim_copy_last']:.3f} | {r['psnr_gain']:+.2f} ± {r['psnr_gain_std']:.2f} |"
        )
    lines += [
        "",
        "| setting | skip_sideways - sideways PSNR dB | spread | reading |",
        "|---|---|---|---|",
    ]
    for v in verdict:
        lines.append(
            f"| {v['setting']} | {v['skip_minus_sideways_psnr']:+.2f} | {v['spread']:.2f} | "
            f"{v['reading']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    modes = ["sideways", "skip_sideways", "bptt", "frame_bp"]
    colors = {"sideways": "C0", "skip_sideways": "C1", "bptt": "C2", "frame_bp": "C3"}
    by = {(r["setting"], r["mode"]): r for r in rows}
    width = 0.2
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(settings)), 3.6))
    for k, mode in enumerate(modes):
        xs, ys, es = [], [], []
        for i, s in enumerate(settings):
            if (s, mode) in by:
                xs.append(i + (k - 1.5) * width)
                ys.append(by[(s, mode)]["psnr_gain"])
                es.append(by[(s, mode)]["psnr_gain_std"])
        if xs:
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=mode, color=colors[mode])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(settings)), settings)
    ax.set_ylabel("PSNR over copy-last (dB)")
    ax.set_title("Future frames on moving_shapes: mean ± std over seeds")
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="workdirs/future_study")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", nargs="*", help="settings to run (default: the whole grid)")
    parser.add_argument("--no_references", action="store_true", help="skip bptt / frame_bp")
    parser.add_argument("--gin_param", action="append", default=[], help="added to every run")
    parser.add_argument("--report_only", action="store_true", help="tables from finished runs")
    parser.add_argument("--plot", default="docs/future_study.png")
    args = parser.parse_args(argv)
    os.makedirs(args.root, exist_ok=True)
    cells = [c for c in grid(not args.no_references) if not args.only or c.setting in args.only]
    # A setting's cells are adjacent (grid()), so a grid stopped early has whole
    # comparisons (both modes, every seed) for the settings it reached.
    jobs = [(c, s) for c in cells for s in args.seeds]
    results = {}
    if args.report_only:
        for c, s in jobs:
            done = _final(os.path.join(args.root, c.name(s)), args.steps)
            if done is not None:
                results[(c, s)] = done
    else:
        # One thread per run, --jobs runs at a time: the runs are small and do not scale
        # past a core each, so a grid over the cores beats one run with every core.
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
        start = time.time()
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {
                pool.submit(run_one, args.root, c, s, args.steps, args.gin_param): (c, s)
                for c, s in jobs
            }
            for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
                c, s = futures[future]
                results[(c, s)] = future.result()
                r = results[(c, s)]
                elapsed = time.time() - start
                eta = elapsed / n * (len(jobs) - n)
                print(
                    f"[{n}/{len(jobs)}, {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min] "
                    f"{c.name(s)}: PSNR {r['psnr']:.2f} (copy last {r['psnr_copy_last']:.2f}), "
                    f"SSIM {r['ssim']:.3f}",
                    flush=True,
                )
    rows = summarise(cells, args.seeds, results)
    verdict = verdicts(rows)
    text = table(rows, verdict)
    print(text)
    with open(os.path.join(args.root, "study.json"), "w") as f:
        json.dump(
            {"steps": args.steps, "seeds": args.seeds, "rows": rows, "verdicts": verdict},
            f,
            indent=1,
        )
    with open(os.path.join(args.root, "study.md"), "w") as f:
        f.write(text + "\n")
    if rows and args.plot:
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        plot(rows, args.plot)
        print(f"Plot: {args.plot}")


if __name__ == "__main__":
    main()
