"""Probe: do the features Skip-Sideways learns for classification carry motion?

Trains moving_shapes classifiers (sideways on a chain, skip_sideways on skip(2):
the shipped experiments) for each seed, freezes them, and trains the same frame
decoder (tasks.FrameDecoder, decoder "whole", width 32) on each one's top features
(the top unit's map, which the classification head pools, as the pipelined network
computes it at step t) to predict x[t - lag + h], the frame h steps after the
newest frame those features have seen. Every decoder gets the same budget and the
same clips. Held-out PSNR / SSIM against copying the last seen frame, scored by
the future-frame task's Metrics (what the evaluation loop, sideways_tf.evaluate,
accumulates), mean ± std over seeds.

    python benchmarks/future_probe.py --root workdirs/future_probe \
        --classifier_steps 1000 --decoder_steps 400 --jobs 2

Writes probe.json and probe.md under --root. If the skip network's features carry
motion that the chain's do not, its decoder predicts the next frame better.
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
from future_study import quiet_budget, train_cli  # (this directory)

from sideways_tf import workdir as workdir_lib

MODES = {"sideways": "chain", "skip_sideways": "skip(2)"}


def train_classifier(root: str, mode: str, seed: int, steps: int, extra=()) -> str:
    """A moving_shapes classifier (the shipped experiment), in its own workdir."""
    workdir = os.path.join(root, f"classifier_{mode}_seed{seed}")
    if os.path.exists(workdir_lib.checkpoint_index(workdir_lib.Workdir(workdir).checkpoint(steps))):
        return workdir
    params = [f"train.seed = {seed}", f"train/moving_shapes_dataset.seed = {seed}"]
    train_cli(
        workdir,
        f"experiments/moving_shapes_{mode}",
        params + quiet_budget(steps) + list(extra),
        workdir + ".log",
    )
    return workdir


def probe(workdir: str, horizon: int, steps: int, batch_size: int, eval_clips: int, seed: int):
    """Trains a frame decoder on the frozen classifier's top maps; returns its metrics."""
    import keras
    import tensorflow as tf

    from sideways_tf import modes, tasks
    from sideways_tf.data.moving_shapes import moving_shapes_future_dataset
    from sideways_tf.runs import load_run
    from sideways_tf.tasks.future_frames import frame_targets, last_seen_frames

    run = load_run(workdir, batch_size=batch_size)
    pipeline, mode = run.pipeline, modes.get(run.settings.mode)
    lag, first = mode.input_lag(pipeline), mode.first_step(pipeline)
    num_frames = run.num_frames
    if len(pipeline.output_shapes[-1]) != 4:
        raise ValueError(
            f"{workdir}: the top unit's output {pipeline.output_shapes[-1]} is not a map."
        )

    @tf.function
    def features(clip):  # [B, K + h, H, W, C] -> [B, K, h', w', c] (pipelined, frozen)
        state, maps = pipeline.zero_state(), []
        for k in range(num_frames):
            state, _ = pipeline.forward_step(state, clip[:, k], training=False)
            maps.append(state.outputs[-1])  # a_L[t], the map the class head pools
        return tf.stack(maps, axis=1)

    keras.utils.set_random_seed(seed)
    decoder = tasks.FrameDecoder(run.frame_shape, width=32, name="probe")
    optimizer = keras.optimizers.Adam(2e-3)
    scored = np.arange(num_frames) >= first - 1  # full pipeline from step T_fill

    def pairs(clip):
        maps = features(clip)
        targets, present = frame_targets(clip, lag, horizon)
        weights = tf.cast(scored, tf.float32) * present[:num_frames]
        return maps, targets[:, :num_frames], weights

    @tf.function
    def train_step(clip):
        maps, targets, weights = pairs(clip)
        flat = tf.reshape(maps, (-1, *maps.shape[2:]))
        with tf.GradientTape() as tape:
            pred = tf.reshape(decoder(flat), tf.shape(targets))
            per_step = tf.reduce_mean(tf.square(pred - targets), axis=[2, 3, 4])
            loss = tf.reduce_sum(per_step * weights) / tf.reduce_sum(weights * batch_size)
        grads = tape.gradient(loss, decoder.trainable_variables)
        optimizer.apply_gradients(zip(grads, decoder.trainable_variables))
        return loss

    options = dict(num_frames=num_frames, horizon=horizon)
    train = moving_shapes_future_dataset("train", seed=100 + seed, **options)
    for clips in train.batch(batch_size, drop_remainder=True).take(steps):
        train_step(clips["frames"])
    # Scored as the evaluation loop scores future frames: the task's Metrics, one
    # EvalBatch per batch (the probe is no pipeline's head, so not evaluate() itself).
    metrics = tasks.FutureFrames(horizon=horizon).metrics()
    held_out = moving_shapes_future_dataset("eval", num_examples=eval_clips, **options)
    for b, clips in enumerate(held_out.batch(batch_size, drop_remainder=True)):
        clip = clips["frames"]
        videos = tf.range(b * batch_size, (b + 1) * batch_size, dtype=tf.int64)  # a clip each
        maps, targets, weights = pairs(clip)
        flat = tf.reshape(maps, (-1, *maps.shape[2:]))
        pred = tf.reshape(decoder(flat), tf.shape(targets))
        last = last_seen_frames(clip, lag)[:, :num_frames]
        metrics.update(tasks.EvalBatch(pred, targets, weights, {"last_seen": last}, None, videos))
    result = metrics.result()
    out = {k: float(result[k]) for k in ("psnr", "ssim", "psnr_copy_last", "ssim_copy_last")}
    out.update(classifier_step=run.step, lag=lag, first_step=first)
    return out


def _probe_process(args) -> dict:
    """probe() in a fresh process (one TF runtime per probe, in parallel)."""
    workdir, horizon, steps, batch, clips, seed = args
    here = os.path.dirname(os.path.abspath(__file__))
    call = f"future_probe.probe({workdir!r}, {horizon}, {steps}, {batch}, {clips}, {seed})"
    code = (
        f"import json, sys; sys.path.insert(0, {here!r}); import future_probe; "
        f"print('PROBE', json.dumps({call}))"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"probe of {workdir} failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
    return json.loads(out.stdout.split("PROBE ")[-1].splitlines()[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="workdirs/future_probe")
    parser.add_argument("--classifier_steps", type=int, default=1000)
    parser.add_argument("--decoder_steps", type=int, default=400)
    parser.add_argument("--horizon", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--eval_clips", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gin_param", action="append", default=[], help="for the classifiers")
    args = parser.parse_args(argv)
    os.makedirs(args.root, exist_ok=True)
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    jobs = [(m, s) for m in MODES for s in args.seeds]
    start, results = time.time(), {}
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        workdirs = dict(
            zip(
                jobs,
                pool.map(
                    lambda j: train_classifier(
                        args.root, *j, args.classifier_steps, args.gin_param
                    ),
                    jobs,
                ),
            )
        )
        print(f"classifiers trained ({(time.time() - start) / 60:.1f} min)", flush=True)
        probes = [
            (workdirs[j], args.horizon, args.decoder_steps, args.batch_size, args.eval_clips, j[1])
            for j in jobs
        ]
        for j, r in zip(jobs, pool.map(_probe_process, probes)):
            results[j] = r
            print(f"{j[0]} seed {j[1]}: {r}", flush=True)
    rows = []
    for mode in MODES:
        runs = [results[(mode, s)] for s in args.seeds]
        row = {"mode": mode, "topology": MODES[mode]}
        for key in ("psnr", "ssim", "psnr_copy_last", "ssim_copy_last"):
            values = np.array([r[key] for r in runs])
            row[key], row[key + "_std"] = float(values.mean()), float(values.std(ddof=1))
        rows.append(row)
    lines = [
        "| classifier | topology | probe PSNR dB | probe SSIM | copy last PSNR / SSIM |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['topology']} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | "
            f"{r['ssim']:.3f} ± {r['ssim_std']:.3f} | {r['psnr_copy_last']:.2f} / "
            f"{r['ssim_copy_last']:.3f} |"
        )
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(args.root, "probe.json"), "w") as f:
        json.dump(
            {"args": vars(args), "rows": rows, "runs": {str(k): v for k, v in results.items()}},
            f,
            indent=1,
        )
    with open(os.path.join(args.root, "probe.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
