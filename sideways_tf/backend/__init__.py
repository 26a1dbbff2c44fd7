"""The seam between Keras backends: what differs between TensorFlow and JAX, and nothing else.

The rules, the pipeline's skeleton, the units and the engine are written once, in
keras.ops; the few things a backend does its own way live here, behind one small
interface (`tf_backend.py` and `jax_backend.py` implement it):

    vjp(f, inputs, theta, cotangent)   forward f(inputs) -> (target, aux), then the
                                       vector-Jacobian product with an injected
                                       cotangent (None: the target is a scalar loss)
                                       w.r.t. the inputs and the variables theta
    loop(step, carry, K, output_spec=)  the frame loop as one graph loop (tf.while_loop,
                                       jax.lax.scan; steps.unroll decides when, and
                                       unrolls in Python otherwise)
    when(pred, fn)                     run fn's variable updates only where pred holds
                                       (tf.cond; on JAX, a select of new and old values)
    function(fn, variables)            one compiled call (tf.function; on JAX, one
                                       jax.jit of a stateless function: the variables'
                                       values go in, their new values come out)
    Strategy()                         the replicas a step runs on (tf.distribute's
                                       strategy on TF; one replica on JAX)
    replica_variable(value, dtype, name)   a scalar counter each replica keeps
    device_scope(device)               where the ops of a unit run
    control_dependencies(values)       order reads after updates (a no-op on JAX)
    read(variable)                     a variable's value now, as a tensor
    dynamic_length(clip), is_floating(dtype), is_tensor(x)

`tf` is TensorFlow, imported on first use: modules below the jobs layer name it
only on the TensorFlow path, so that with KERAS_BACKEND=jax `import sideways_tf`
and training import no TensorFlow, and a TensorFlow-only feature (tf.data, the
SavedModel export, tf.distribute) reached without TensorFlow installed is refused
with a message that names it.
"""

from __future__ import annotations

import importlib

import keras

NAME = keras.backend.backend()
if NAME == "tensorflow":
    from sideways_tf.backend import tf_backend as _impl
elif NAME == "jax":
    from sideways_tf.backend import jax_backend as _impl
else:
    raise ImportError(
        f"sideways_tf runs on the TensorFlow and JAX backends of Keras; KERAS_BACKEND is "
        f"{NAME!r}. Set KERAS_BACKEND=tensorflow (the default) or KERAS_BACKEND=jax before "
        "Keras is imported."
    )

vjp = _impl.vjp
loop = _impl.loop
when = _impl.when
function = _impl.function
Strategy = _impl.Strategy
replica_variable = _impl.replica_variable
device_scope = _impl.device_scope
control_dependencies = _impl.control_dependencies
is_tensor = _impl.is_tensor
dynamic_length = _impl.dynamic_length
is_floating = _impl.is_floating
read = _impl.read


def is_tensorflow() -> bool:
    return NAME == "tensorflow"


def is_jax() -> bool:
    return NAME == "jax"


class _LazyTensorFlow:
    """`tensorflow`, imported on first attribute access (see the module docstring)."""

    def __getattr__(self, name):
        try:
            module = importlib.import_module("tensorflow")
        except ImportError as e:
            raise ImportError(
                f"tf.{name} is needed here, and TensorFlow is not installed. Under "
                "KERAS_BACKEND=jax the engine, the modes, SidewaysModel and "
                "benchmarks/accelerator.py run without it; tf.data readers, the gin run "
                "path (sideways-train), checkpoints and the SavedModel export need it: "
                "pip install tensorflow."
            ) from e
        return getattr(module, name)


tf = _LazyTensorFlow()

__all__ = [
    "NAME",
    "Strategy",
    "control_dependencies",
    "device_scope",
    "dynamic_length",
    "function",
    "is_floating",
    "is_jax",
    "is_tensor",
    "is_tensorflow",
    "loop",
    "read",
    "replica_variable",
    "tf",
    "vjp",
    "when",
]
