"""keras.applications cut into units, trained in every mode on a learnable toy task.

    python benchmarks/applications.py [--models resnet50 mobilenetv2] [--steps 30]

Each model (weights=None, 32x32 frames, the smallest input keras.applications
accepts) has its BatchNormalization replaced (sw.replace_batch_norm) and is cut
into 4 units (sw.units_from_model(num_units=4): FLOP-balanced cuts, found once
per model and reused by name for every mode, each mode on a fresh copy). The task:
two classes, bright vs dark clips (uniform noise around +0.5 or -0.5). Per mode
it prints the mean loss of the first and last 5 steps, whether every trainable
variable changed, and the time of the first step (trace) and of the others.
tests/test_applications.py runs the same in CI for MobileNetV2 (all modes) and
ResNet50 (one mode); ResNet50's four traces take minutes, so its four-mode run
lives here.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import sideways_tf as sw  # noqa: E402

MODES = {"frame_bp": "skip(2)", "bptt": "skip(2)", "sideways": "chain", "skip_sideways": "skip(2)"}
FRAME = (32, 32, 3)


def base_model(name: str) -> keras.Model:
    if name == "mobilenetv2":
        return keras.applications.MobileNetV2(
            weights=None, include_top=False, input_shape=FRAME, alpha=0.35
        )
    if name == "resnet50":
        return keras.applications.ResNet50(weights=None, include_top=False, input_shape=FRAME)
    raise ValueError(f"unknown model {name!r}; choose mobilenetv2 or resnet50")


def bright_dark(batch: int, frames: int, seed: int):
    """Clips [B, K, 32, 32, 3] around +0.5 (label 1) or -0.5 (label 0), labels [B]."""
    rng = np.random.default_rng(seed)
    labels = np.arange(batch, dtype=np.int32) % 2
    level = np.where(labels == 1, 0.5, -0.5)[:, None, None, None, None]
    clips = level + rng.uniform(-0.5, 0.5, size=(batch, frames, *FRAME))
    return clips.astype("float32"), labels


def run(model: str, mode: str, cuts, steps: int, batch: int, frames: int, lr: float):
    keras.utils.set_random_seed(0)
    base = sw.replace_batch_norm(base_model(model))
    units = sw.units_from_model(base, cut_after=cuts)
    task = sw.tasks.Classification(num_classes=2)  # its head pools the map, then Dense(2)
    pipeline = sw.Pipeline(
        units, MODES[mode], head=task.head(FRAME), task=task, batch_size=batch, frame_shape=FRAME
    )
    engine = sw.Engine(pipeline, mode, keras.optimizers.Adam(lr))
    before = [v.numpy() for v in pipeline.trainable_variables]
    losses, times = [], []
    for s in range(steps):
        clips, labels = bright_dark(batch, frames, seed=s)
        start = time.perf_counter()
        losses.append(float(engine.train_clip(clips, labels)["loss"]))
        times.append(time.perf_counter() - start)
    changed = [
        not np.array_equal(b, v.numpy()) for b, v in zip(before, pipeline.trainable_variables)
    ]
    return losses, times, all(changed), len(changed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenetv2", "resnet50"])
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    for model in args.models:
        start = time.perf_counter()
        cut = sw.units_from_model(sw.replace_batch_norm(base_model(model)), num_units=4)
        cuts = [u.module.layers[-1].name for u in cut[:-1]]
        print(f"{model}: cuts after {cuts} ({time.perf_counter() - start:.1f} s to find)")
        for mode in args.modes:
            losses, times, every, n = run(
                model, mode, cuts, args.steps, args.batch, args.frames, args.lr
            )
            print(
                f"  {mode:13s} loss first 5 {np.mean(losses[:5]):.4f} -> last 5 "
                f"{np.mean(losses[-5:]):.4f}  finite {np.all(np.isfinite(losses))}  "
                f"every variable ({n}) changed {every}  first step {times[0]:.1f} s, "
                f"then {np.mean(times[1:]):.2f} s/step",
                flush=True,
            )


if __name__ == "__main__":
    main()
