"""On a Cloud TPU VM only: `pytest -m tpu tests/test_tpu.py` (deselected elsewhere).

What these check cannot run here (TPUStrategy needs TPU kernels); the assignment math
and the placement plan are tested on CPU in tests/test_distribute.py.
"""

import keras
import numpy as np
import pytest
from toy import dense_pipeline, random_clip

import sideways_tf as sw
from sideways_tf import distribute

pytestmark = pytest.mark.tpu


@pytest.fixture(scope="module")
def runtime():
    return distribute.make_runtime(strategy="tpu", tpu="local", cores_per_replica=2)


def test_units_variables_live_on_their_logical_core(runtime):
    with runtime.scope():
        pipeline = dense_pipeline(
            "chain", num_units=3, batch=2, placement=runtime.placement([0, 1, 1])
        )
    assignment = runtime.strategy.extended.experimental_device_assignment
    for i, k in enumerate(pipeline.cores, start=1):
        for v in pipeline.unit_variables(i):
            devices = [p.device for p in runtime.strategy.experimental_local_results(v.value)]
            expected = [
                assignment.tpu_device(replica=r, logical_core=k) for r in range(len(devices))
            ]
            assert [d.split("device:")[-1] for d in devices] == [
                e.split("device:")[-1] for e in expected
            ]


def test_replicas_train_like_one_device_on_the_whole_batch(runtime):
    replicas = runtime.num_replicas
    one = dense_pipeline("skip(2)", num_units=3, batch=2 * replicas)
    reference = sw.Engine(one, "skip_sideways", keras.optimizers.SGD(0.1))
    with runtime.scope():
        many = dense_pipeline(
            "skip(2)", num_units=3, batch=2, placement=runtime.placement([0, 1, 1])
        )
        for v, w in zip(sw.engine.all_variables(many), sw.engine.all_variables(one)):
            v.assign(np.array(w))
        engine = sw.Engine(many, "skip_sideways", keras.optimizers.SGD(0.1))
    for seed in range(2):
        clip, labels = random_clip(one, 9, seed=seed)
        reference.train_clip(clip, labels)
        engine.train_clip(clip, labels)
    for v, w in zip(engine.variables, reference.variables):
        np.testing.assert_allclose(np.array(v.value.numpy()), np.array(w), rtol=1e-3, atol=1e-5)
