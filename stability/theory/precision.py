"""Dtypes and Python-scalar precision of the theory functions.

`float_dtype` picks the floating dtype of mixed arguments explicitly (the library
runs under ``jax_numpy_dtype_promotion="strict"``); `python_scalars_out` makes a
function called with Python numbers compute in float64 on the host and return
Python numbers (`host_float64`).
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

from stability.theory.delays import DelayDistribution
from stability.validation import is_concrete


def float_dtype(*xs):
    """The common floating dtype of the inexact arguments (default float otherwise).

    Explicit, so that the library works under ``jax_numpy_dtype_promotion="strict"``.
    """
    dtypes = []
    for x in xs:
        if isinstance(x, (bool, int, float)) or x is None:
            continue  # Python scalars are weak: they take the other arguments' dtype
        dt = jnp.asarray(x).dtype
        if jnp.issubdtype(dt, jnp.inexact):
            dtypes.append(jnp.dtype(dt))
    if not dtypes:
        return jnp.asarray(0.0).dtype
    out = dtypes[0]
    for dt in dtypes[1:]:
        out = jnp.promote_types(out, dt)
    if jnp.issubdtype(out, jnp.complexfloating):
        raise TypeError(f"expected real arguments, got dtype {out}")
    return out


def _scalar_or_option(x) -> bool:
    """A Python int/float (not a numpy scalar); strings, None, delay distributions and
    rule objects are options, not numbers, and do not count against it."""
    if x is None or isinstance(x, (str, DelayDistribution)):
        return True
    if getattr(type(x), "is_rule", False) is True:  # a stability.theory.rules.Rule
        return True
    return isinstance(x, (int, float)) and not isinstance(x, np.generic)


def _to_python(x):
    """A concrete 0-d array as a Python float/bool/int, a larger one as numpy;
    anything else unchanged."""
    if is_concrete(x) and hasattr(x, "dtype"):
        return np.asarray(x).item() if np.ndim(x) == 0 else np.asarray(x)
    return x


@contextlib.contextmanager
def host_float64():
    """Compute in float64 on the host CPU, whatever ``jax_enable_x64`` says.

    Python numbers carry no precision of their own: a threshold of ``beta = 0.9``
    asked for with Python floats should be the float64 answer (3.8, not float32's
    3.7999999523), and a scalar costs microseconds either way. Inside, x64 is on,
    operations run eagerly even while an enclosing function is traced (their
    arguments are Python constants there) and arrays live on the CPU. Results made
    inside must leave as Python numbers or numpy arrays (`python_scalars_out` does
    that), never as float64 JAX arrays into a float32 program.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(jax.enable_x64(True))
        stack.enter_context(jax.ensure_compile_time_eval())
        # This process's own CPU device: with several processes (jax.distributed),
        # jax.devices("cpu")[0] belongs to process 0.
        stack.enter_context(jax.default_device(jax.local_devices(backend="cpu")[0]))
        yield


def python_scalars_out(fn):
    """Decorator: Python scalars in, Python scalars out, computed in float64.

    When every numeric argument of ``fn`` is a Python ``int``/``float`` (options
    such as ``momentum`` strings or rule objects and ``DelayDistribution`` delays do
    not count), ``fn`` runs in float64 on the host (`host_float64`, whatever
    ``jax_enable_x64`` says) and each 0-d array in the result (a leaf of a NamedTuple
    too) comes back as a Python ``float`` (``bool`` for flags; any larger array as a
    numpy array). Array arguments give arrays in their own dtype as before, and under
    ``jax.jit``/``vmap``/``grad`` traced arguments give tracers, never converted.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if all(_scalar_or_option(x) for x in (*args, *kwargs.values())):
            with host_float64():
                out = fn(*args, **kwargs)
                return jax.tree_util.tree_map(_to_python, out)
        return fn(*args, **kwargs)

    return wrapper
