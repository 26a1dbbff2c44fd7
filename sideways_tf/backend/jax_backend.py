"""The seam on JAX (see sideways_tf.backend): jax.vjp, jax.lax.scan, a select for a
conditional update, and one jax.jit of a stateless function per compiled call.

Keras variables are read and written through keras.StatelessScope: `function` maps
every variable the call may touch to a traced value, runs the shared Python code
(the rules, the optimizer's apply) inside that scope, and writes the new values back
after the compiled call returns. `vjp` differentiates a unit's forward w.r.t. its
variables by mapping them to the values jax.vjp traces, inside the enclosing scope.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import keras
from keras.src.backend.common.stateless_scope import StatelessScope, get_stateless_scope


def _current(variable, mapping: dict):
    """The value a variable holds now: the enclosing scope's, else its own (never autocast)."""
    value = mapping.get(id(variable))
    return variable._value if value is None else value


def vjp(f: Callable, inputs: Sequence, theta: Sequence, cotangent=None, wrt=None):
    """target, aux = f(inputs); returns (target, aux, [d/d inputs[k] for k in wrt], d/d theta).

    cotangent: the output gradient injected at target (None: target is a scalar loss).
    Variables f assigns besides theta (a Dropout's seed) reach the enclosing scope.
    """
    inputs = list(inputs)
    wrt = list(range(len(inputs))) if wrt is None else list(wrt)
    outer = get_stateless_scope()
    base = dict(outer.state_mapping) if outer is not None else {}
    theta_ids = {id(v) for v in theta}

    def forward(values, diff):
        full = list(inputs)
        for k, x in zip(wrt, diff):
            full[k] = x
        scope = StatelessScope()
        scope.state_mapping = {**base, **{id(v): x for v, x in zip(theta, values)}}
        with scope:
            target, aux = f(full)
        changed = {
            k: x
            for k, x in scope.state_mapping.items()
            if k not in theta_ids and base.get(k) is not x
        }
        return target, (aux, changed)

    values = [_current(v, base) for v in theta]
    target, pullback, (aux, changed) = jax.vjp(
        forward, values, [inputs[k] for k in wrt], has_aux=True
    )
    if cotangent is None:
        cotangent = jnp.ones_like(target)
    g_theta, g_inputs = pullback(jnp.asarray(cotangent, target.dtype))
    if outer is not None:
        outer.state_mapping.update(changed)
    return target, aux, list(g_inputs), list(g_theta)


def loop(step: Callable, carry, num_steps, *, output_spec=None):
    """carry, y_t = step(carry, k) for k = 0..K-1 in one jax.lax.scan; returns (carry, ys).

    K must be known when traced (as under jax.jit it always is); the carry keeps its
    dtypes from step to step; ys stacks the outputs [B, K, ...] (scalars [K]).
    """
    del output_spec  # (scan stacks whatever the step returns)
    carry = jax.tree.map(_fixed, carry)

    def body(carry, k):
        new, y = step(carry, k)
        new = jax.tree.map(lambda n, o: jnp.asarray(n, o.dtype), new, carry)
        return new, y

    carry, ys = jax.lax.scan(body, carry, jnp.arange(int(num_steps)))
    if ys is None:
        return carry, None
    return carry, jax.tree.map(_from_time_major, ys)


def _fixed(x):
    x = jnp.asarray(x)
    return jnp.asarray(x, x.dtype)  # an explicit dtype: not weakly typed


def _from_time_major(stacked):
    if stacked.ndim <= 1:
        return stacked
    return jnp.swapaxes(stacked, 0, 1)


def when(pred, fn: Callable):
    """fn's variable updates where pred holds, the old values elsewhere (a select, no branch)."""
    outer = get_stateless_scope()
    if outer is None:  # eager: a plain branch
        if bool(pred):
            fn()
        return jnp.asarray(bool(pred))
    inner = StatelessScope()
    inner.state_mapping = dict(outer.state_mapping)
    with inner:
        fn()
    for k, new in inner.state_mapping.items():
        old = outer.state_mapping.get(k)
        if old is None:
            raise ValueError(
                "A conditional update assigned a variable the compiled call was not given; "
                "create every variable before the first call (Engine builds the optimizer)."
            )
        if new is not old:
            outer.state_mapping[k] = jnp.where(pred, new, old)
    return jnp.asarray(pred)


def function(fn: Callable, variables: Callable, jit_compile: bool = True):
    """fn compiled as one jax.jit of a stateless function.

    variables() lists every keras.Variable fn may read or assign. Positional
    arguments are traced; keyword arguments are static (Python values: one compiled
    function per distinct set). After each call the variables hold their new values.
    jit_compile=False runs the same stateless function without jax.jit (for debugging).
    """
    cache = {}

    def lookup(*args, **static):
        owned = list(variables())
        key = (tuple(sorted(static.items())), tuple(id(v) for v in owned))
        if key not in cache:

            def pure(values, args):
                scope = StatelessScope(state_mapping=list(zip(owned, values)))
                with scope:
                    out = fn(*args, **static)
                known = {id(v) for v in owned}
                stray = [k for k in scope.state_mapping if k not in known]
                if stray:
                    raise ValueError(
                        f"{len(stray)} variable(s) were assigned inside a compiled call that "
                        "was not given them; create every variable before the first call."
                    )
                return out, [scope.get_current_value(v) for v in owned]

            cache[key] = jax.jit(pure) if jit_compile else pure
        return cache[key], owned

    def call(*args, **static):
        compiled, owned = lookup(*args, **static)
        out, new = compiled([v._value for v in owned], args)
        for v, x in zip(owned, new):
            v.assign(x)
        return out

    def memory(*args, **static) -> dict:
        """XLA's memory analysis of the compiled call for these arguments (nothing runs):
        bytes of arguments, outputs and temporaries, and their peak, as the device
        allocates them (benchmarks/accelerator.py)."""
        compiled, owned = lookup(*args, **static)
        lowered = compiled.lower([v._value for v in owned], args).compile()
        stats = lowered.memory_analysis()
        out = {
            k: int(getattr(stats, f"{k}_size_in_bytes", 0))
            for k in ("argument", "output", "temp", "alias", "generated_code")
        }
        out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
        return out

    call.memory = memory
    return call


class Strategy:
    """One replica: what the engine asks of a tf.distribute strategy, on JAX."""

    num_replicas_in_sync = 1

    def run(self, fn, args=(), kwargs=None):
        return fn(*args, **(kwargs or {}))

    def experimental_local_results(self, value):
        return (value,)


def replica_variable(value, dtype, name: str):
    return keras.Variable(value, dtype=dtype, trainable=False, name=name)


def device_scope(device: str | None):
    del device
    return contextlib.nullcontext()


def control_dependencies(values):
    del values
    return contextlib.nullcontext()


def is_tensor(x) -> bool:
    return isinstance(x, jax.Array)


def dynamic_length(clip):
    """K of a [B, K, ...] clip (static under jax.jit)."""
    return clip.shape[1]


def is_floating(dtype) -> bool:
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(dtype))


def read(variable):
    """The variable's value now (the enclosing StatelessScope's, if any)."""
    return variable.value if isinstance(variable, keras.Variable) else jnp.asarray(variable)
