"""Does a hand-written LayerNorm + Dropout network stall in Sideways? (issue 26, item 6)

    python benchmarks/stall.py [--steps 40] [--dropout 0.5] [--frames 16]

A user reported skip_sideways at chance for 320 steps on a hand-written network of
LayerNormalization + Dropout units on which bptt reached 100% in 40 steps. This
trains such networks with SidewaysModel.fit, the way a Keras user would (Adam 1e-3,
B=8, K frames of 32x32x3, fidelity every 10 steps), on a task a per-frame model
solves (2 classes: noise clips around +0.5 or -0.5), in bptt (the check), sideways
(chain) and skip_sideways (skip(2)):

  conv  4 units Conv2D(16/32/32/32, 3, strides 1/2/1/2) -> LayerNorm -> ReLU -> Dropout,
        head GlobalAveragePooling2D -> Dense(2)
  mlp   4 units [Flatten] -> Dense(64) -> LayerNorm -> ReLU -> Dropout, head Dense(2)

and prints, per network and mode, the training accuracy and loss of each quarter of
the run and the per-unit gradient fidelity (cosine with bptt's gradient) of the
last quarter. The stall diagnostic (sideways_tf.diagnostics) is on, as in any fit:
a stalled run also prints its RuntimeWarning.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import sideways_tf as sw  # noqa: E402

BATCH = 8


def clips(num_clips: int, num_frames: int, seed: int) -> tf.data.Dataset:
    """(clips [N, K, 32, 32, 3], labels [N]): uniform noise in [-1, 1] around +-0.5."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, num_clips).astype("int32")
    level = np.where(labels == 1, 0.5, -0.5)[:, None, None, None, None]
    x = (level + rng.uniform(-1, 1, size=(num_clips, num_frames, 32, 32, 3))).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, labels)).batch(BATCH, drop_remainder=True)


def block(kind: str, width: int, stride: int, first: bool, dropout: float):
    layers = []
    if kind == "conv":
        layers.append(keras.layers.Conv2D(width, 3, strides=stride, padding="same"))
    else:
        layers += [keras.layers.Flatten()] * first + [keras.layers.Dense(width)]
    layers += [keras.layers.LayerNormalization(), keras.layers.ReLU()]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    return keras.Sequential(layers)


def network(kind: str, mode: str, dropout: float, frames: int):
    keras.utils.set_random_seed(0)
    shapes = [(16, 1), (32, 2), (32, 1), (32, 2)] if kind == "conv" else [(64, 1)] * 4
    units = [
        sw.Unit(block(kind, w, s, i == 0, dropout), name=f"unit{i + 1}")
        for i, (w, s) in enumerate(shapes)
    ]
    head = (
        keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
        if kind == "conv"
        else keras.layers.Dense(2)
    )
    model = sw.SidewaysModel(
        units,
        topology="chain" if mode == "sideways" else "skip(2)",
        batch_size=BATCH,
        frame_shape=(32, 32, 3),
        head=head,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        metrics=["accuracy"],
        mode=mode,
        fidelity_every=10,
    )
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps (4 epochs)")
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--frames", type=int, default=16, help="K")
    args = parser.parse_args()
    quarter = max(args.steps // 4, 1)
    print(f"steps {args.steps}, dropout {args.dropout}, K {args.frames}, B {BATCH}")
    print("| network | mode | accuracy per quarter | loss per quarter | fidelity u1..u4 (last) |")
    print("|---|---|---|---|---|")
    for kind in ("conv", "mlp"):
        for mode in ("bptt", "sideways", "skip_sideways"):
            model = network(kind, mode, args.dropout, args.frames)
            data = clips(quarter * BATCH, args.frames, seed=0).repeat()
            history = model.fit(data, epochs=4, steps_per_epoch=quarter, verbose=0).history
            acc = " ".join(f"{a:.2f}" for a in history["accuracy"])
            loss = " ".join(f"{v:.3f}" for v in history["loss"])
            fid = " ".join(f"{history[f'fidelity/unit_{i}'][-1]:.2f}" for i in range(1, 5))
            print(f"| {kind} | {mode} | {acc} | {loss} | {fid} |", flush=True)


if __name__ == "__main__":
    main()
