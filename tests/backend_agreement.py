"""One backend's numbers for tests/test_backends.py: run once per KERAS_BACKEND.

    KERAS_BACKEND=tensorflow python tests/backend_agreement.py --out tf.npz --save_weights w.npz
    KERAS_BACKEND=jax        python tests/backend_agreement.py --out jax.npz --weights w.npz

For every mode on the topologies it trains (chain with sum; skip(2) with sum and with
concat), from the same weights and clips: each step's gradients g_theta_i[t] of a
Sideways mode (sideways_step from a zero state, one step at a time), the clip's
gradients of each mode's rule, and the parameters after three Adam updates through
Engine.train_clip (the backend's compiled update). Weights written by one backend
are loaded by the other (the same construction gives the same variable order; the
shapes are checked), so any difference is the backend's arithmetic.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import sideways_tf as sw  # noqa: E402
from sideways_tf import (
    backend,  # noqa: E402
    rules,  # noqa: E402
)
from sideways_tf import engine as engine_lib  # noqa: E402
from sideways_tf.models import convnet  # noqa: E402

NUM_FRAMES = 6
CONFIGS = [("chain", "sum"), ("skip(2)", "concat")]


def pipeline_for(topology: str, fusion: str):
    keras.utils.set_random_seed(0)
    return convnet.tiny_conv_pipeline(
        batch_size=2,
        frame_shape=(8, 8, 2),
        task=sw.tasks.Classification(num_classes=4),
        topology=topology,
        fusion=fusion,
    )


def clips(seed: int):
    rng = np.random.default_rng(seed)
    clip = rng.normal(size=(2, NUM_FRAMES, 8, 8, 2)).astype("float32")
    return clip, np.array([1, 3], "int32")


def modes_for(pipeline) -> list[str]:
    out = []
    for name in ("frame_bp", "bptt", "sideways", "skip_sideways"):
        try:
            engine_lib.check_mode(name, pipeline)
        except ValueError:
            continue
        out.append(name)
    return out


def compiled(fn, pipeline):
    """fn as one compiled call of the backend (tf.function; one jax.jit)."""
    return backend.function(fn, lambda: pipeline.variables, jit_compile=backend.is_jax())


def flat(grads) -> list:
    return [np.asarray(g) for unit in grads for g in unit]


def run(weights: dict | None, save_weights: str | None) -> dict:
    results, saved = {}, {}
    for topology, fusion in CONFIGS:
        for mode_name in modes_for(pipeline_for(topology, fusion)):
            key = f"{topology}/{fusion}/{mode_name}"
            pipeline = pipeline_for(topology, fusion)
            if weights is None:
                saved[key] = pipeline.get_weights()
            else:
                given = weights[key]
                have = [w.shape for w in pipeline.get_weights()]
                if [w.shape for w in given] != have:
                    raise ValueError(f"{key}: weight shapes {have} differ from the saved ones")
                pipeline.set_weights(given)
            mode = sw.modes.get(mode_name)
            clip, labels = clips(0)
            targets, present = engine_lib.step_targets(pipeline, mode, clip, labels)
            if mode.approximate:  # every step's g_theta_i[t]

                def steps(clip, targets, present, pipeline=pipeline):
                    state, per_step = pipeline.zero_state(), []
                    for t in range(NUM_FRAMES):
                        state, out = rules.sideways_step(
                            pipeline, state, clip[:, t], targets[:, t], present[t]
                        )
                        per_step.append(out.grads)
                    return per_step

                per_step = compiled(steps, pipeline)(clip, targets, present)
                for t, grads in enumerate(per_step):
                    for k, g in enumerate(flat(grads)):
                        results[f"{key}/step{t}/g{k}"] = g

            def clip_rule(clip, targets, present, pipeline=pipeline, mode=mode):
                out = mode.rule(pipeline, pipeline.zero_state(), clip, targets, present)
                return out.grads, out.loss

            grads, loss = compiled(clip_rule, pipeline)(clip, targets, present)
            for k, g in enumerate(flat(grads)):
                results[f"{key}/clip/g{k}"] = g
            results[f"{key}/clip/loss"] = np.asarray(loss)
            for k, v in enumerate(rules.all_variables(pipeline)):
                results[f"{key}/init/theta{k}"] = np.asarray(v)
            engine = sw.Engine(pipeline, mode, keras.optimizers.Adam(1e-2))
            for seed in range(3):
                metrics = engine.train_clip(*clips(seed))
                results[f"{key}/adam/loss{seed}"] = np.asarray(metrics["loss"])
            for k, v in enumerate(rules.all_variables(pipeline)):
                results[f"{key}/adam/theta{k}"] = np.asarray(v)
    if save_weights:
        np.savez(
            save_weights, **{f"{k}|{i}": w for k, ws in saved.items() for i, w in enumerate(ws)}
        )
    return results


def load_weights(path: str) -> dict:
    data = np.load(path)
    out = {}
    for name in sorted(data.files, key=lambda n: (n.split("|")[0], int(n.split("|")[1]))):
        out.setdefault(name.split("|")[0], []).append(data[name])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--weights", help="load these (written by --save_weights)")
    parser.add_argument("--save_weights", help="write the initial weights here")
    args = parser.parse_args()
    weights = load_weights(args.weights) if args.weights else None
    results = run(weights, args.save_weights)
    results["backend"] = np.asarray(keras.backend.backend())
    np.savez(args.out, **results)


if __name__ == "__main__":
    main()
