"""With KERAS_BACKEND=jax and no TensorFlow at all, the library imports and trains.

The child process makes `import tensorflow` fail as if it were not installed
(sys.modules["tensorflow"] = None), then imports sideways_tf, builds networks from
sideways_tf.models, trains every mode through the Engine (one jax.jit per clip),
predicts, measures gradient fidelity and runs `benchmarks/accelerator.py`'s clips;
a TensorFlow-only feature reached anyway is refused naming what needs TensorFlow.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent(
    """
    import sys
    sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {benchmarks!r})
    import keras
    import numpy as np
    import sideways_tf as sw
    from sideways_tf import backend
    from sideways_tf.models import convnet
    import accelerator

    assert keras.backend.backend() == "jax"
    clip, labels = accelerator.moving_squares(2, 8, 8)
    losses = {{}}
    for mode in ("frame_bp", "bptt", "sideways", "skip_sideways"):
        keras.utils.set_random_seed(0)
        pipeline = convnet.tiny_conv_pipeline(
            batch_size=2, frame_shape=(8, 8, 3), task=sw.tasks.Classification(num_classes=4),
            topology="skip(2)" if mode == "skip_sideways" else "chain",
        )
        engine = sw.Engine(pipeline, mode, keras.optimizers.Adam(1e-2))
        before = [np.asarray(v) for v in pipeline.trainable_variables]
        out = [engine.train_clip(clip, labels) for _ in range(3)]
        after = [np.asarray(v) for v in pipeline.trainable_variables]
        assert all(bool(o["applied"]) for o in out), mode
        assert all(np.any(a != b) for a, b in zip(after, before)), mode
        assert engine.predict_clip(clip).shape == (2, 4), mode
        losses[mode] = [float(o["loss"]) for o in out]
    fid = engine.gradient_fidelity(clip, labels)
    assert abs(float(fid["cosine"][-1]) - 1.0) < 1e-5  # the top unit's gradient is exact
    try:
        backend.tf.data
    except ImportError as e:
        assert "TensorFlow is not installed" in str(e) and "pip install tensorflow" in str(e)
    else:
        raise AssertionError("backend.tf reached a TensorFlow that is not there")
    print("LOSSES", losses)
    """
)


def test_trains_every_mode_without_tensorflow():
    code = CHILD.format(root=ROOT, benchmarks=os.path.join(ROOT, "benchmarks"))
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "LOSSES" in done.stdout
