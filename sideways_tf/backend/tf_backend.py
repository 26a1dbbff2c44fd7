"""The seam on TensorFlow (see sideways_tf.backend): GradientTape, tf.while_loop, tf.cond,
tf.function, tf.distribute and tf.device."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import tensorflow as tf


def vjp(f: Callable, inputs: Sequence, theta: Sequence, cotangent=None, wrt=None):
    """target, aux = f(inputs); returns (target, aux, [d/d inputs[k] for k in wrt], d/d theta).

    cotangent: the output gradient injected at target (None: target is a scalar loss).
    wrt: indices of the inputs to differentiate (default all). Unconnected: zeros.
    """
    inputs = list(inputs)
    wrt = range(len(inputs)) if wrt is None else wrt
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        target, aux = f(inputs)
    grads = tape.gradient(
        target,
        [inputs[k] for k in wrt] + list(theta),
        output_gradients=cotangent,
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
    n = len(grads) - len(theta)
    return target, aux, grads[:n], grads[n:]


def loop(step: Callable, carry, num_steps, *, output_spec=None):
    """carry, y_t = step(carry, k) for k = 0..K-1 in one tf.while_loop; returns (carry, ys).

    K may be a tensor. A step that returns outputs needs `output_spec` (their
    tf.TensorSpec structure); ys stacks them [B, K, ...] (scalars [K]). See steps.unroll.
    """
    specs = tf.nest.flatten(output_spec) if output_spec is not None else []
    arrays = [tf.TensorArray(s.dtype, size=num_steps, element_shape=s.shape) for s in specs]

    def body(k, carry, arrays):
        carry, y = step(carry, k)
        if output_spec is None:
            if y is not None:
                raise ValueError("unroll(static=False): give output_spec to stack outputs.")
            return k + 1, carry, arrays
        arrays = [a.write(k, v) for a, v in zip(arrays, tf.nest.flatten(y))]
        return k + 1, carry, arrays

    _, carry, arrays = tf.while_loop(
        lambda k, *_: k < num_steps, body, (tf.constant(0), carry, arrays), parallel_iterations=1
    )
    if output_spec is None:
        return carry, None
    stacked = [_from_time_major(a.stack()) for a in arrays]
    return carry, tf.nest.pack_sequence_as(output_spec, stacked)


def _from_time_major(stacked):
    """[K, B, ...] (a TensorArray's stack) -> [B, K, ...]; [K] stays [K]."""
    if stacked.shape.rank is None or stacked.shape.rank <= 1:
        return stacked
    perm = [1, 0] + list(range(2, stacked.shape.rank))
    return tf.transpose(stacked, perm)


def when(pred, fn: Callable):
    """Runs fn (its variable updates) only if pred; returns a bool tensor: whether it ran."""

    def run():
        fn()
        return tf.constant(True)

    return tf.cond(pred, run, lambda: tf.constant(False))


def function(fn: Callable, variables: Callable | None = None, jit_compile: bool = False):
    """tf.function(fn): variables are read and assigned in place (`variables` is for JAX)."""
    del variables
    return tf.function(fn, jit_compile=jit_compile)


def Strategy():  # noqa: N802 (the strategy object, named as on JAX)
    """The current tf.distribute strategy (the default one outside any scope)."""
    return tf.distribute.get_strategy()


def replica_variable(value, dtype, name: str):
    """A scalar each replica keeps for itself (ON_READ; a read outside gives the first's)."""
    return tf.Variable(
        value,
        dtype=dtype,
        trainable=False,
        name=name,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


def device_scope(device: str | None):
    """tf.device(device), or a no-op for None."""
    return tf.device(device) if device else contextlib.nullcontext()


def control_dependencies(values):
    return tf.control_dependencies(values)


def is_tensor(x) -> bool:
    return tf.is_tensor(x)


def dynamic_length(clip):
    """K of a [B, K, ...] clip: a tensor (a tf.function may leave K unknown)."""
    return tf.shape(clip)[1]


def is_floating(dtype) -> bool:
    return tf.as_dtype(dtype).is_floating


def read(variable):
    """The variable's value now, as a tensor (a snapshot, not the variable)."""
    return tf.convert_to_tensor(variable)
