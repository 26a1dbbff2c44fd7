"""Per-frame latency: the exported streaming step vs a clip model's sliding window.

    python benchmarks/export_latency.py --workdir=/tmp/run --window=16

Online, a clip model must rerun on the last K frames for every new frame; the
exported Sideways step runs the per-frame network once and carries its state.
Both are timed in this one run on the same parameters (batch 1): the exported
SavedModel's `step`, and the pipeline's frame_forward over a window of K frames.
Prints the two latencies and their ratio (window / step).
"""

import argparse
import tempfile
import time

import numpy as np
import tensorflow as tf

from sideways_tf import export


def per_call_ms(fn, repeats: int) -> float:
    fn()  # trace / warm up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="A sideways-train workdir.")
    parser.add_argument("--window", type=int, default=16, help="K frames a clip model reruns.")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as output:
        export.export(args.workdir, output, batch_size=1)
        model = tf.saved_model.load(output)
        step = model.signatures["step"]
        state = model.signatures["init_state"]()
        pipeline, meta = export.load_pipeline(args.workdir, batch_size=1)
        frame = tf.random.uniform([1, *meta["frame_shape"]])
        window = tf.random.uniform([args.window, *meta["frame_shape"]])  # [K, H, W, C]
        clip_model = tf.function(lambda w: pipeline.frame_forward(w, training=False))

        def one_step():
            step(frame=frame, **state)["outputs"].numpy()

        def one_window():
            clip_model(window).numpy()

        step_ms = per_call_ms(one_step, args.repeats)
        window_ms = per_call_ms(one_window, args.repeats)
    print(f"exported step:            {step_ms:.3f} ms/frame")
    print(f"per-frame net on K={args.window}:  {window_ms:.3f} ms/frame")
    print(f"ratio (window / step):    {window_ms / step_ms:.2f}")
    np.testing.assert_array_less(0, [step_ms, window_ms])


if __name__ == "__main__":
    main()
