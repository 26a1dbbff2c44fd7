"""TensorFlow and JAX give the same numbers: one engine, one set of rules, two backends.

tests/backend_agreement.py runs once per backend, each in its own process
(KERAS_BACKEND is fixed per process), from the same weights and clips: every step's
gradients of the Sideways modes, every mode's clip gradients, and the parameters
after three Adam updates through each backend's compiled update (tf.function; one
jax.jit per clip). Float32 on CPU; they must agree to 1e-5.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "backend_agreement.py")
TOLERANCE = 1e-5


def _run(backend: str, tmp_path, *args) -> dict:
    out = tmp_path / f"{backend}.npz"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, SCRIPT, "--out", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = np.load(out)
    assert str(data["backend"]) == backend
    return {k: data[k] for k in data.files if k != "backend"}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backends")
    weights = tmp / "weights.npz"
    tf_run = _run("tensorflow", tmp, "--save_weights", str(weights))
    jax_run = _run("jax", tmp, "--weights", str(weights))
    return tf_run, jax_run


def _groups(keys) -> set:
    """'skip(2)/concat/skip_sideways/step3/g5' -> ('skip(2)/concat/skip_sideways', 'step')."""
    out = set()
    for k in keys:
        parts = k.split("/")
        out.add(("/".join(parts[:3]), parts[3].rstrip("0123456789")))
    return out


def test_every_mode_and_topology_is_compared(both):
    tf_run, jax_run = both
    assert set(tf_run) == set(jax_run)
    groups = _groups(tf_run)
    for case in ("chain/sum/frame_bp", "chain/sum/bptt", "chain/sum/sideways"):
        assert {(case, "clip"), (case, "adam")} <= groups
    for case in ("skip(2)/concat/bptt", "skip(2)/concat/skip_sideways"):
        assert {(case, "clip"), (case, "adam")} <= groups
    assert ("chain/sum/sideways", "step") in groups
    assert ("skip(2)/concat/skip_sideways", "step") in groups


def test_gradients_and_adam_steps_agree(both):
    tf_run, jax_run = both
    worst = {}
    for key, a in tf_run.items():
        b = jax_run[key]
        assert a.shape == b.shape, key
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        group = "/".join(key.split("/")[:4]).rstrip("0123456789")
        worst[group] = max(worst.get(group, 0.0), diff)
    bad = {k: v for k, v in worst.items() if v > TOLERANCE}
    assert not bad, f"TF and JAX differ by more than {TOLERANCE}: {bad}"


def test_training_moved_the_parameters(both):
    """The comparison is not of two untouched copies: Adam moved every parameter, and
    every parameter's Sideways gradient is non-zero at some step."""
    tf_run, _ = both
    after = [k for k in tf_run if "/adam/theta" in k]
    assert after
    for k in after:
        assert np.any(tf_run[k] != tf_run[k.replace("/adam/", "/init/")]), k
    # Every parameter of every unit gets a non-zero gradient at some step of the clip
    # (messages reach the bottom unit T_fill - 1 steps after the first scored step).
    per_param = {}
    for k in tf_run:
        if "/step" in k:
            case, _, param = k.rpartition("/")
            case = case.rsplit("/", 1)[0]
            per_param.setdefault((case, param), []).append(bool(np.any(tf_run[k] != 0)))
    assert per_param
    silent = [key for key, nonzero in per_param.items() if not any(nonzero)]
    assert not silent, f"parameters with a zero gradient at every step: {silent}"
