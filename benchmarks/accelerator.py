"""Sideways on whatever device JAX finds: ms per clip, compile time, peak memory, CPU agreement.

    KERAS_BACKEND=jax python benchmarks/accelerator.py [--quick] [--compare_tf] [--json OUT]

Runs with jax, keras, gin-config and numpy alone (no TensorFlow: the clips are moving
squares drawn with numpy, labelled by their direction, so a model must see motion).
On the device JAX picks (a GPU when there is one), in one run:

  speed     ms per training update (B clips of K frames) for each mode on the
            quickstart network (small_conv_pipeline, B=16, K=16, 32x32x3; concat,
            skip(2) for skip_sideways) and on a paper-scale one (resnet18 units,
            112x112, B=8, K=16), next to Keras' own `fit` (plain backprop) of the
            same per-frame network on the clip's B*K frames; compile time (first
            call minus a steady one).
  memory    XLA's peak (arguments + outputs + temporaries) of one compiled update,
            for K = 16, 64, 256 on the quickstart network: sideways and
            skip_sideways against bptt, and bptt with each step rematerialized
            (keras.remat = jax.checkpoint: the fair baseline for "memory flat in K").
            Taken from the compiled executable's memory analysis, so nothing of
            that size has to run.
  agreement the parameters after 20 skip_sideways updates from one seed, on this
            device and on the CPU (max |difference|; both float32).
  --compare_tf  the TensorFlow engine's best (tf.function, and XLA) on the quickstart
            network in skip_sideways, measured in a subprocess with
            KERAS_BACKEND=tensorflow, and the ratio to JAX's compiled clip.

--quick: 3 timed repeats, the paper-scale network at 1/4 width, 64x64, B=2, and
K = 16 and 64 only in the memory table (--lengths sets them): a CPU check. Timings are medians
of --repeats calls after one warm-up call; every timed call waits for its result.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import sideways_tf as sw  # noqa: E402
from sideways_tf import backend, rules  # noqa: E402
from sideways_tf.models import convnet, resnet  # noqa: E402

MODES = ("frame_bp", "bptt", "sideways", "skip_sideways")
# bptt whose steps are rematerialized: not a registered mode, a baseline for memory.
BPTT_REMAT = sw.modes.Mode(
    "bptt_remat",
    functools.partial(rules.bptt_gradients, remat=True),
    description="bptt, each step's activations recomputed in the backward pass",
)
NUM_DIRECTIONS = 4


def moving_squares(batch: int, frames: int, size: int, seed: int = 0):
    """Clips [B, K, size, size, 3] of a bright square moving in one of 4 directions (the
    label), 1-2 pixels a frame, on noise; numpy only."""
    rng = np.random.default_rng(seed)
    clips = rng.normal(0.0, 0.1, size=(batch, frames, size, size, 3)).astype("float32")
    labels = rng.integers(0, NUM_DIRECTIONS, size=batch).astype("int32")
    step = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}
    side = max(size // 6, 2)
    for b in range(batch):
        speed = int(rng.integers(1, 3))
        dy, dx = (speed * d for d in step[int(labels[b])])
        y, x = rng.integers(0, size - side, size=2)
        color = rng.uniform(0.5, 1.0, size=3)
        for k in range(frames):
            yy, xx = (y + dy * k) % (size - side), (x + dx * k) % (size - side)
            clips[b, k, yy : yy + side, xx : xx + side] = color
    return clips, labels


def network(name: str, mode: str, quick: bool):
    """(pipeline, batch, frames, size) of the quickstart or the paper-scale network."""
    topology = "skip(2)" if mode == "skip_sideways" else "chain"
    keras.utils.set_random_seed(0)
    task = sw.tasks.Classification(num_classes=NUM_DIRECTIONS)
    if name == "quickstart":
        b, k, size = 16, 16, 32
        pipeline = convnet.small_conv_pipeline(
            batch_size=b, frame_shape=(size, size, 3), task=task, topology=topology
        )
    else:
        b, k, size = (2, 16, 64) if quick else (8, 16, 112)
        pipeline = resnet.resnet18(
            batch_size=b,
            frame_shape=(size, size, 3),
            task=task,
            topology=topology,
            width_multiplier=0.25 if quick else 1.0,
        )
    return pipeline, b, k, size


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call s, median of `repeats` later calls s); fn must wait for its result."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def engine_speed(name: str, mode: str, args, **engine_args) -> dict:
    pipeline, b, k, size = network(name, mode, args.quick)
    engine = sw.Engine(pipeline, mode, keras.optimizers.Adam(1e-3), **engine_args)
    clip, labels = moving_squares(b, k, size)
    first, steady = timed(lambda: float(engine.train_clip(clip, labels)["loss"]), args.repeats)
    return {"ms": 1e3 * steady, "compile_s": max(first - steady, 0.0), "B": b, "K": k}


class PerFrame(keras.Model):
    """The pipeline's per-frame network (every unit on the same frame), for Keras' fit."""

    def __init__(self, pipeline, **kwargs):
        super().__init__(**kwargs)
        self.pipeline = pipeline

    def call(self, frames, training=None):
        return self.pipeline.frame_forward(frames, training=training)


class EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times = [*getattr(self, "times", []), time.perf_counter() - self.start]


def keras_fit_speed(name: str, args) -> dict:
    """Keras' fit of the same per-frame network on B*K frames per batch (plain backprop)."""
    pipeline, b, k, size = network(name, "frame_bp", args.quick)
    model = PerFrame(pipeline)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    clip, labels = moving_squares(b, k, size)
    frames = clip.reshape(b * k, size, size, 3)
    frame_labels = np.repeat(labels, k)
    steps = max(args.repeats, 2)
    x = np.concatenate([frames] * steps)
    y = np.concatenate([frame_labels] * steps)
    timer = EpochTimes()
    model.fit(x, y, batch_size=b * k, epochs=2, verbose=0, shuffle=False, callbacks=[timer])
    steady = timer.times[1] / steps
    return {"ms": 1e3 * steady, "compile_s": max(timer.times[0] - timer.times[1], 0.0)}


def peak_memory(mode, num_frames: int) -> dict:
    """XLA's memory analysis of one compiled update of the quickstart network at K frames.

    The Sideways modes' frame loop is one jax.lax.scan here (unroll=False): the same
    memory as unrolled, XLA reusing each step's buffers, at a compile time flat in K.
    """
    pipeline, b, _, size = network("quickstart", getattr(mode, "name", mode), quick=False)
    engine = sw.Engine(pipeline, mode, keras.optimizers.Adam(1e-3), unroll=False)
    clip, labels = moving_squares(b, num_frames, size)
    start = time.perf_counter()
    out = engine._update.memory(
        clip, labels, keras.ops.convert_to_tensor(0, "int32"), chunk=num_frames, fresh=True
    )
    out["compile_s"] = time.perf_counter() - start
    return out


def params_after(steps: int, device=None) -> list:
    import jax

    with jax.default_device(device) if device is not None else _nothing():
        pipeline, b, k, size = network("quickstart", "skip_sideways", quick=False)
        engine = sw.Engine(pipeline, "skip_sideways", keras.optimizers.Adam(1e-3))
        for s in range(steps):
            engine.train_clip(*moving_squares(b, k, size, seed=s))
        return [np.asarray(v) for v in rules.all_variables(pipeline)]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def tf_probe(args) -> dict:
    """The TensorFlow engine's skip_sideways update on the quickstart network."""
    return {
        "tf_function": engine_speed("quickstart", "skip_sideways", args)["ms"],
        "tf_xla": engine_speed("quickstart", "skip_sideways", args, jit_compile=True)["ms"],
    }


def compare_tf(args) -> dict | None:
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"accelerator_tf_{os.getpid()}.json")
    command = [sys.executable, os.path.abspath(__file__), "--tf_probe", "--json", out]
    command += ["--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        print(f"  (TensorFlow run failed: {done.stderr.strip().splitlines()[-1:]})")
        return None
    with open(out) as f:
        return json.load(f)


def device_line() -> str:
    if backend.is_jax():
        import jax

        d = jax.devices()[0]
        return f"jax {jax.__version__}, {d.platform}: {getattr(d, 'device_kind', d)} x{len(jax.devices())}"
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short CPU check")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per figure")
    parser.add_argument("--compare_tf", action="store_true", help="time the TF engine too")
    parser.add_argument(
        "--lengths",
        help="clip lengths K of the memory table, e.g. 16,64,256 (default: "
        "16,64 with --quick, else 16,64,256)",
    )
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--tf_probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 10)
    if args.tf_probe:
        result = tf_probe(args)
        with open(args.json, "w") as f:
            json.dump(result, f)
        return
    if not backend.is_jax():
        sys.exit("Run with KERAS_BACKEND=jax (this script sets it unless you set another).")
    import jax

    results = {"device": device_line(), "speed": {}, "memory": {}}
    print(f"device: {results['device']}")
    print("\nms per update (B clips x K frames; compile s in brackets)")
    for name in ("quickstart", "paper"):
        row = {mode: engine_speed(name, mode, args) for mode in MODES}
        row["keras_fit"] = keras_fit_speed(name, args)
        results["speed"][name] = row
        first = row["frame_bp"]
        label = f"{name} (B={first['B']}, K={first['K']})"
        cells = "  ".join(f"{m} {r['ms']:.1f} [{r['compile_s']:.1f}]" for m, r in row.items())
        print(f"  {label:28s} {cells}")
    scan = engine_speed("quickstart", "skip_sideways", args, unroll=False)
    results["speed"]["quickstart"]["skip_sideways_scan"] = scan
    print(
        f"  quickstart skip_sideways with the frame loop in one jax.lax.scan (unroll=False): "
        f"{scan['ms']:.1f} [{scan['compile_s']:.1f}]"
    )

    print("\npeak memory of one compiled update, MiB (quickstart network, B=16)")
    lengths = (16, 64) if args.quick else (16, 64, 256)
    if args.lengths:
        lengths = tuple(int(k) for k in args.lengths.split(","))
    for mode in ("sideways", "skip_sideways", "bptt", BPTT_REMAT):
        name = getattr(mode, "name", mode)
        row = {}
        for k in lengths:
            row[k] = peak_memory(mode, k)
        results["memory"][name] = row
        cells = "  ".join(
            f"K={k}: {r['peak'] / 2**20:.1f} (temp {r['temp'] / 2**20:.1f}, {r['compile_s']:.0f} s)"
            for k, r in row.items()
        )
        print(f"  {name:14s} {cells}")

    print("\nparameters after 20 skip_sideways updates, this device vs the CPU")
    cpu = jax.devices("cpu")[0]
    here = params_after(20)
    there = params_after(20, cpu) if jax.devices()[0].platform != "cpu" else here
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(here, there))
    scale = max(float(np.max(np.abs(a))) for a in here)
    same = " (no accelerator: the same device)" if here is there else ""
    results["agreement"] = {"max_abs_diff": diff, "max_abs_param": scale}
    print(f"  max |difference| {diff:.2e} (largest |parameter| {scale:.2f}){same}")

    if args.compare_tf:
        tf_ms = compare_tf(args)
        if tf_ms:
            jax_ms = results["speed"]["quickstart"]["skip_sideways"]["ms"]
            best = min(tf_ms.values())
            results["tensorflow"] = tf_ms
            print(
                f"\nskip_sideways, quickstart network: TF tf.function {tf_ms['tf_function']:.1f} ms, "
                f"TF XLA {tf_ms['tf_xla']:.1f} ms; JAX {jax_ms:.1f} ms: TF best / JAX = "
                f"{best / jax_ms:.2f}"
            )
    print(
        "\ndepth parallelism on JAX (units on separate devices): not built yet, so no "
        "second-device gain is measured here."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
