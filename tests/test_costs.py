"""unit_costs: the FLOPs of each unit's steps.unit_step, split into forward and VJP."""

import pytest
import tensorflow as tf
from toy import conv_pipeline, dense_pipeline

from sideways_tf import costs


@pytest.mark.parametrize("build", [conv_pipeline, dense_pipeline], ids=["conv", "dense"])
def test_forward_flops_are_the_networks_and_the_vjp_about_twice_them(build):
    pipeline = build()
    unit_costs = costs.unit_costs(pipeline)
    frame = tf.TensorSpec((pipeline.batch_size, *pipeline.frame_shape), tf.float32)
    network = tf.function(lambda x: pipeline.frame_forward(x, training=True))
    expected = costs.graph_flops(network.get_concrete_function(frame).graph)
    # The units' forwards are the per-frame network's ops, plus the top's l = sum(y).
    extra = sum(c.forward_flops for c in unit_costs) - expected
    assert 0 <= extra <= pipeline.batch_size * pipeline.top_output_shape[-1]
    for c in unit_costs:
        # A dense or conv VJP is two products of the forward's size (inputs and weights).
        assert 1.5 < c.backward_flops / c.forward_flops < 2.5
