"""Test-session setup: 4 logical CPU devices stand in for accelerators.

Logical devices can be configured only once, before TensorFlow initialises its
runtime, so this happens here, at import time of the test session. Under
KERAS_BACKEND=jax (tests/test_keras_jax.py) TensorFlow is not imported here: the
session checks that the JAX path runs without it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import keras  # noqa: E402  (its backend: KERAS_BACKEND, else ~/.keras/keras.json)
import pytest  # noqa: E402

NUM_LOGICAL_CPUS = 4

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
    )


@pytest.fixture
def fresh_gin_config():
    """An empty gin config around a test (the CLI parses and finalizes, i.e. locks, it).

    Modules whose tests parse configs use it for every test:
    pytestmark = [..., pytest.mark.usefixtures("fresh_gin_config")].
    """
    gin.clear_config()
    yield
    gin.clear_config()
