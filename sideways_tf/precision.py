"""Mixed precision: Keras dtype policies for a pipeline, and loss scaling for float16.

    with precision.policy_scope("mixed_bfloat16"):   # gin: train.precision
        pipeline = model_fn(batch_size=B, frame_shape=..., num_classes=C)
    engine = Engine(pipeline, mode, optimizer)        # optimizer may be a LossScaleOptimizer

Keras layers take the global dtype policy when they are created and keep it, so
the policy only has to be set while the pipeline is built (policy_scope restores
the previous one afterwards). Under a mixed policy:
  parameters, optimizer slots, gradient accumulators   float32;
  unit outputs, gradient messages, delay lines         the compute dtype (Unit buffers);
  frames fed in                                        float32, cast by each unit (Keras autocast);
  head outputs and losses                              float32 (Pipeline.apply_head casts).

float16 needs loss scaling (its smallest normal number is 6e-5, where gradient
messages live): the engine passes the LossScaleOptimizer's dynamic scale S to
the gradient rules (their `loss_scale` argument), which multiply every loss
they differentiate by it, so messages m_i carry S * dl/da_i, and the
optimizer divides the gradients by S before applying them. A step whose
gradients overflow halves S and is skipped (engine metrics["overflow"]); it is
not counted as a non-finite step (see Engine).
"""

from __future__ import annotations

import contextlib

import gin
import keras

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def check_precision(precision, binding: str = "train.precision") -> str:
    """Returns `precision` if it is a supported policy name; raises naming the binding."""
    if precision not in POLICIES:
        raise ValueError(
            f"{binding} = {precision!r} is not a precision this library trains in; choose "
            f"one of {list(POLICIES)} ('mixed_bfloat16' on TPUs and recent GPUs, "
            "'mixed_float16' on older GPUs, with loss scaling)."
        )
    return precision


@contextlib.contextmanager
def policy_scope(precision: str):
    """Sets Keras' global dtype policy to `precision` inside, and restores the previous one.

    Build the pipeline inside; its layers keep the policy after the scope ends.
    """
    check_precision(precision, "precision")
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


@gin.configurable(module="sideways_tf")
def loss_scaling(
    optimizer: keras.optimizers.Optimizer,
    initial_scale: float = 2.0**15,  # first loss scale S (lowered by half on each overflow)
    dynamic_growth_steps: int = 2000,  # S doubles after this many updates without overflow
) -> keras.optimizers.LossScaleOptimizer:
    """Wraps an optimizer in Keras' LossScaleOptimizer (what train.precision='mixed_float16' uses)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(
        optimizer, initial_scale=initial_scale, dynamic_growth_steps=dynamic_growth_steps
    )


def is_loss_scaled(optimizer) -> bool:
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


__all__ = [
    "POLICIES",
    "check_precision",
    "policy_scope",
    "loss_scaling",
    "is_loss_scaled",
]
