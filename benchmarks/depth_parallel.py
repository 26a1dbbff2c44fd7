"""Depth parallelism: how much each mode gains from running its units' work concurrently.

    python benchmarks/depth_parallel.py [--channels 96] [--units 4] [--frame_size 32]
        [--batch 16] [--frames 16] [--repeats 5] [--clips 1] [--json PATH]

Within a Sideways step every unit reads only the previous step's buffers, so the
L forward+VJP pairs of step t are independent (algorithm.md s.3) and may run at
once. This measures ms per training clip [B, K, H, W, C] of every mode (frame_bp,
bptt, sideways, skip_sideways; optimizer step included), and of the bare units:
the same units' forward and VJP at each of K steps, each on a fixed input and a
fixed message, with no buffers, state or optimizer (the work the engine schedules).
Each is timed with op concurrency off (inter-op 1) and on (inter-op 2), intra-op 1:

    ratio       = ms/clip at inter-op 1 / ms/clip at inter-op 2   (concurrency gain)
    engine cost = sideways ms/clip / bare units ms/clip, both at inter-op 1
Both are medians over repeats of the ratio within a repeat (pairs timed back to back).

Two worker processes: TensorFlow's thread pools are per process and fixed once it
initialises, so each setting needs its own process. Each worker builds and traces
everything once, then times on request; the parent asks worker 1 then worker 2 for
each workload in turn, every repeat, and takes medians, so the shared machine's
drift falls on both settings alike and cancels in the ratios.

Acceptance: sideways' ratio >= 0.9 x the bare units' ratio (the engine keeps the
units' concurrency), and engine cost <= 1.10 (it adds little to their own work).
Balanced pipeline: every unit conv3x3(channels, stride 1); topology "chain" for
sideways and frame_bp, "skip(2)" for skip_sideways and bptt.
Smoke run: --channels 8 --batch 2 --frames 6 --repeats 1.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# Each bare workload right after its engine, so the pairs in engine cost are timed together.
WORKLOADS = ("frame_bp", "bptt", "sideways", "bare", "skip_sideways", "bare_skip")
TOPOLOGY = {"frame_bp": "chain", "bptt": "skip(2)", "sideways": "chain", "skip_sideways": "skip(2)"}
BARE_OF = {"bare": "sideways", "bare_skip": "skip_sideways"}  # whose pipeline's units
INTER_OP = (1, 2)  # serial, concurrent
NUM_CLASSES = 10
MIN_RATIO_SHARE, MAX_ENGINE_COST = 0.9, 1.10


# -- Worker (one per threading setting) --------------------------------------------


def bare_units(pipeline, num_frames: int, seed: int = 0):
    """The units' own work over K steps, as sideways_step does it but without the engine.

    Per step t, every unit i independently runs its `steps.unit_step` (the engine's):
    a_i = H_i(C_i(u_i)) on a fixed u_i, then the VJP applied to a fixed message m_i
    [B, *out_i] (the top: d l / d a_L through the head and the task's loss), w.r.t.
    theta_i and the inputs that come from units (not the frame). Replies and gradients
    accumulate over the K steps of `steps.unroll` (a tf.while_loop, as the engine's);
    every one is summed into the result so none is pruned. Returns a tf.function () -> [].
    """
    import numpy as np
    import tensorflow as tf

    from sideways_tf.rules import masked_loss
    from sideways_tf.steps import unit_step, unroll

    rng = np.random.default_rng(seed)
    units, num_units = pipeline.units, pipeline.num_units

    def normal(shape):
        return tf.constant(rng.normal(size=shape).astype("float32"))

    inputs = [[normal(s) for s in u.source_shapes] for u in units]  # u_i: [B, *in] per source
    messages = [normal(u.output_shape_) for u in units[:-1]]  # m_i: [B, *out_i]
    labels = tf.constant(rng.integers(0, NUM_CLASSES, pipeline.batch_size), tf.int32)
    senders = [pipeline.topology.senders(i) for i in range(1, num_units + 1)]

    def unit_vjp(i) -> list:
        """The replies r_{i->j}, then g_theta_i, of one unit_step of unit i."""
        unit, x, theta = units[i - 1], inputs[i - 1], pipeline.unit_variables(i)
        if i == num_units:
            out = unit_step(
                unit,
                x,
                theta,
                senders[i - 1],
                head=lambda a: pipeline.apply_head(a, training=True),
                loss=lambda y: masked_loss(pipeline, labels, y, 1.0),
            )
        else:
            out = unit_step(unit, x, theta, senders[i - 1], message=messages[i - 1])
        return out.replies + out.grads

    def step(accum, k):
        new = []
        for i in range(1, num_units + 1):
            with pipeline.unit_scope(i):
                new.append([acc + g for acc, g in zip(accum[i - 1], unit_vjp(i))])
        return new, None

    @tf.function
    def run():
        init = []
        for i in range(1, num_units + 1):
            with pipeline.unit_scope(i):
                shapes = [inputs[i - 1][k].shape for k in senders[i - 1]]
                shapes += [v.shape for v in pipeline.unit_variables(i)]
                init.append([tf.zeros(s) for s in shapes])
        accum, _ = unroll(step, init, num_frames)
        return tf.add_n([tf.reduce_sum(g) for gu in accum for g in gu])

    return run


def build_workloads(args) -> dict:
    """{workload: a callable that trains (or works) on one clip and blocks until done}."""
    import keras
    import numpy as np
    import tensorflow as tf

    import sideways_tf as sw
    from sideways_tf.models import convnet

    rng = np.random.default_rng(0)
    frame = (args.frame_size, args.frame_size, 3)
    clip = tf.constant(rng.normal(size=(args.batch, args.frames, *frame)).astype("float32"))
    labels = tf.constant(rng.integers(0, NUM_CLASSES, args.batch), tf.int32)
    engines, runs = {}, {}
    for mode, topology in TOPOLOGY.items():
        keras.utils.set_random_seed(0)
        pipeline = convnet.conv_pipeline(
            batch_size=args.batch,
            frame_shape=frame,
            task=sw.tasks.Classification(num_classes=NUM_CLASSES),
            widths=(args.channels,) * args.units,
            strides=(1,) * args.units,
            topology=topology,
            fusion="sum",  # (the README's numbers were measured with sum)
        )
        engines[mode] = engine = sw.Engine(pipeline, mode, keras.optimizers.Adam(1e-3))
        runs[mode] = lambda engine=engine: float(engine.train_clip(clip, labels)["loss"])
    for name, mode in BARE_OF.items():
        fn = bare_units(engines[mode].pipeline, args.frames)
        runs[name] = lambda fn=fn: float(fn())
    return runs


def worker(args):
    """Sets the thread pools, builds and warms every workload, then serves JSON lines.

    Request {"workload": name, "clips": n} -> reply {"ms": ms per clip}; EOF ends it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Replies go on the real stdout; anything else printed goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    runs = build_workloads(args)
    for run in runs.values():
        run()  # trace
        run()  # warm up
    threads = (
        tf.config.threading.get_inter_op_parallelism_threads(),
        tf.config.threading.get_intra_op_parallelism_threads(),
    )
    replies.write(json.dumps({"ready": True, "threads": threads}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        run, n = runs[request["workload"]], request["clips"]
        start = time.perf_counter()
        for _ in range(n):
            run()
        ms = 1000 * (time.perf_counter() - start) / n
        replies.write(json.dumps({"ms": ms}) + "\n")


# -- Parent (no TensorFlow here) -----------------------------------------------------


class Worker:
    """A worker process at one inter-op setting, spoken to in JSON lines."""

    def __init__(self, args, inter_op: int):
        self.inter_op = inter_op
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"--inter_op={inter_op}"]
        cmd += [f"--{k}={getattr(args, k)}" for k in SETTINGS]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise SystemExit(
                f"Worker with inter-op {self.inter_op} exited (code {code}) without replying; "
                "its traceback is above on stderr."
            )
        return json.loads(line)

    def time(self, workload: str, clips: int) -> float:
        self.proc.stdin.write(json.dumps({"workload": workload, "clips": clips}) + "\n")
        self.proc.stdin.flush()
        return self.read()["ms"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


SETTINGS = ("channels", "units", "frame_size", "batch", "frames")


def measure(args) -> dict:
    """Starts both workers, interleaves their timings, returns the results as a dict."""
    workers = [Worker(args, n) for n in INTER_OP]
    try:
        for w in workers:
            ready = w.read()
            if ready["threads"] != [w.inter_op, 1]:
                raise SystemExit(
                    f"Worker asked for inter-op {w.inter_op}, intra-op 1 but runs with "
                    f"{ready['threads']}; the threading must be set before any TF op runs."
                )
        ms = {name: [[] for _ in workers] for name in WORKLOADS}
        for r in range(args.repeats):
            for name in WORKLOADS:
                for k, w in enumerate(workers):
                    ms[name][k].append(w.time(name, args.clips))
            print(f"  repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    finally:
        for w in workers:
            w.close()
    return {
        name: {
            "serial_ms": statistics.median(serial),
            "concurrent_ms": statistics.median(concurrent),
            "ratio": paired_median(serial, concurrent),
            "serial_all": serial,
            "concurrent_all": concurrent,
        }
        for name, (serial, concurrent) in ms.items()
    }


def paired_median(numerators, denominators) -> float:
    """Median over repeats of numerator / denominator, each pair timed back to back."""
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def report(args, results) -> dict:
    """Prints the table and the acceptance checks; returns everything as a dict."""
    print(
        f"Depth parallelism: {args.units} units x conv3x3({args.channels}), stride 1, "
        f"{args.frame_size}x{args.frame_size} frames, batch {args.batch}, K={args.frames}; "
        f"median of {args.repeats} x {args.clips} clip(s)"
    )
    print(f"{'workload':15}{'inter-op 1':>12}{'inter-op 2':>12}{'ratio':>8}   (ms/clip, medians)")
    for name, r in results.items():
        print(f"{name:15}{r['serial_ms']:12.1f}{r['concurrent_ms']:12.1f}{r['ratio']:8.2f}")
    cost = {
        mode: paired_median(results[mode]["serial_all"], results[bare]["serial_all"])
        for bare, mode in BARE_OF.items()
    }
    print("\nEngine cost (inter-op 1, ms/clip over the bare units'):")
    for bare, mode in BARE_OF.items():
        print(f"  {mode} / {bare}: {cost[mode]:.2f}x")
    share = results["sideways"]["ratio"] / results["bare"]["ratio"]
    checks = {
        "ratio_share": {"value": share, "limit": MIN_RATIO_SHARE, "pass": share >= MIN_RATIO_SHARE},
        "engine_cost": {
            "value": cost["sideways"],
            "limit": MAX_ENGINE_COST,
            "pass": cost["sideways"] <= MAX_ENGINE_COST,
        },
    }
    print("\nAcceptance:")
    verdict = {True: "PASS", False: "FAIL"}
    print(
        f"  sideways ratio / bare ratio = {share:.2f} (>= {MIN_RATIO_SHARE}): "
        f"{verdict[checks['ratio_share']['pass']]}"
    )
    print(
        f"  engine cost = {cost['sideways']:.2f}x (<= {MAX_ENGINE_COST:.2f}x): "
        f"{verdict[checks['engine_cost']['pass']]}"
    )
    return {
        "settings": {k: getattr(args, k) for k in (*SETTINGS, "repeats", "clips")},
        "inter_op": list(INTER_OP),
        "workloads": results,
        "engine_cost": cost,
        "checks": checks,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", type=int, default=96, help="width of every unit")
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--frame_size", type=int, default=32, help="H = W of the frames")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=16, help="clip length K")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--clips", type=int, default=1, help="clips per timing")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inter_op", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.units < 2:
        raise SystemExit(f"--units {args.units}: give at least 2 units, or nothing is parallel.")
    out = report(args, measure(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
