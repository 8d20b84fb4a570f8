"""Argument checks shared by the public functions.

Every check raises ``ValueError`` (bad value) or ``TypeError`` (bad type) with a
message that names the argument and the offending value. Checks run only on
concrete values: under ``jax.jit`` the arguments are tracers and cannot be
inspected, so the caller is trusted (the same contract as optax and lineax).
"""

from __future__ import annotations

import math
import numbers

import jax
import numpy as np

MOMENTUM_RULES = ("heavy_ball", "nesterov", "shifted")


def is_concrete(x) -> bool:
    """True when ``x`` holds no tracer, so its value can be inspected."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def _summary(x) -> str:
    arr = np.asarray(x)
    if arr.ndim == 0:
        return repr(arr.item())
    return f"array of shape {arr.shape} (first bad entries shown)"


def _fail(name: str, x, condition: str, bad=None) -> None:
    if bad is not None and np.ndim(x) > 0:
        shown = np.asarray(x)[bad][:5]
        raise ValueError(f"{name} must be {condition}; got {shown.tolist()} (in {_summary(x)})")
    raise ValueError(f"{name} must be {condition}; got {_summary(x)}")


def check_number(name: str, x) -> None:
    """Reject non-numbers (a string such as ``"0.3"``, None, booleans) with a TypeError."""
    if not is_concrete(x):
        return
    kind = None
    if isinstance(x, int) and not isinstance(x, bool):
        kind = "i"  # a Python int of any size (numpy holds those above 2**63 as objects)
    elif not isinstance(x, (str, bytes, bool, np.bool_)) and x is not None:
        try:
            kind = np.asarray(x).dtype.kind
        except (TypeError, ValueError):
            kind = None
    if kind is None or kind not in "iuf":
        shown = f"{x!r} (a {type(x).__name__})"
        if isinstance(x, str):
            shown += f"; pass the number itself, e.g. {name}=float({x!r})"
        raise TypeError(f"{name} must be a real number; got {shown}")


def check_finite(name: str, x) -> None:
    """Reject NaN and inf (and non-numbers, see `check_number`)."""
    if not is_concrete(x):
        return
    check_number(name, x)
    if isinstance(x, int) and not isinstance(x, bool):
        try:
            x = float(x)
        except OverflowError:
            raise ValueError(
                f"{name} must be finite; got an integer of {len(str(x))} digits"
            ) from None
    arr = np.asarray(x)
    bad = ~np.isfinite(arr)
    if np.any(bad):
        _fail(name, x, "finite", bad)


def check_positive(name: str, x) -> None:
    """Require finite values > 0 (learning rates, sharpness thresholds)."""
    if not is_concrete(x):
        return
    check_finite(name, x)
    arr = np.asarray(x)
    bad = ~(arr > 0)
    if np.any(bad):
        _fail(name, x, "> 0", bad)


def check_lr(x, name: str = "lr") -> None:
    """A learning rate: a real number (not a string), finite and > 0."""
    check_positive(name, x)


def check_beta(x, name: str = "beta") -> None:
    """A momentum coefficient in [0, 1)."""
    if not is_concrete(x):
        return
    check_finite(name, x)
    arr = np.asarray(x)
    bad = ~((arr >= 0) & (arr < 1))
    if np.any(bad):
        _fail(name, x, "in [0, 1)", bad)


# The largest delay: float64 holds every integer up to 2**53, and the thresholds
# and radii compute with the delay as a float (a delay of 9e15 steps is far beyond
# any training run; a larger one would silently round).
MAX_DELAY = 2**53


def check_tau(x, name: str = "tau") -> None:
    """A delay: an integer (or integer-valued array) in ``[0, MAX_DELAY]``.

    Python ints of any size are checked as numbers (never converted to a fixed-width
    integer first, which wraps 2**31 to a negative delay or overflows without a name).
    """
    if not is_concrete(x):
        return
    if isinstance(x, bool):
        raise TypeError(f"{name} must be a non-negative integer; got {x!r}")
    if isinstance(x, numbers.Integral) and not isinstance(x, np.generic):
        if not 0 <= x <= MAX_DELAY:
            what = "a non-negative integer" if x < 0 else "at most 2**53 (about 9.0e15)"
            raise ValueError(f"{name} must be {what}; got {x!r}")
        return
    arr = np.asarray(x)
    if arr.dtype == object and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in arr.reshape(-1)
    ):
        for v in arr.reshape(-1):  # Python ints too large for int64
            check_tau(v, name)
        return
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a non-negative integer; got {x!r}")
    bad = ~(np.isfinite(arr) & (arr >= 0) & (np.round(arr) == arr))
    if np.any(bad):
        _fail(name, x, "a non-negative integer", bad)
    bad = arr > MAX_DELAY
    if np.any(bad):
        _fail(name, x, "at most 2**53 (about 9.0e15)", bad)


def check_int(name: str, x, minimum: int = 0, maximum: int | None = None) -> int:
    """A Python-level integer option (a static argument), returned as ``int``; at most
    ``maximum`` when given (counts that size an allocation or a loop)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        if (
            isinstance(x, numbers.Real)
            and not isinstance(x, bool)
            and math.isfinite(x)
            and float(x).is_integer()
        ):
            x = int(x)
        else:
            raise TypeError(f"{name} must be an integer; got {x!r}")
    if x < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {x!r}")
    if maximum is not None and x > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum:,}; got {x!r}")
    return int(x)


def check_scalar(name: str, x) -> None:
    """Require a single number (not an array): options such as ``tol`` or ``lr`` of a
    run, whose arrays would be meaningless or broadcast silently."""
    if is_concrete(x) and np.ndim(x) != 0:
        raise ValueError(f"{name} must be a single number; got an array of shape {np.shape(x)}")


def check_momentum(x, name: str = "momentum") -> str:
    """One of the momentum rule names in ``MOMENTUM_RULES``."""
    if not isinstance(x, str):
        raise TypeError(f"{name} must be one of {MOMENTUM_RULES}; got {x!r}")
    if x not in MOMENTUM_RULES:
        raise ValueError(f"{name} must be one of {MOMENTUM_RULES}; got {x!r}")
    return x


def check_probabilities(x, name: str = "probabilities", atol: float = 1e-9) -> np.ndarray:
    """A probability vector: 1-D, non-negative, finite, summing to 1."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a vector of real numbers (p_0, ..., p_K); got {x!r} ({err})"
        ) from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector; got shape {arr.shape}")
    check_finite(name, arr)
    if np.any(arr < 0):
        _fail(name, arr, "non-negative", arr < 0)
    total = float(arr.sum())
    if abs(total - 1.0) > atol:
        raise ValueError(f"{name} must sum to 1; got sum {total!r} for {arr.tolist()[:8]}")
    return arr


def check_option(name: str, x, options) -> str:
    """One of a fixed set of string options (a static argument)."""
    if not isinstance(x, str) or x not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}; got {x!r}")
    return x


def leading_size(name: str, data) -> int:
    """The common leading (example) axis length of a pytree of arrays."""
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError(f"{name} must contain at least one array; got {data!r}")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) > 0 else None for leaf in leaves}
    if None in sizes:
        raise ValueError(f"{name} arrays must have a leading example axis; found a scalar leaf")
    if len(sizes) != 1:
        raise ValueError(
            f"{name} arrays must share the leading example axis; got sizes {sorted(sizes)}"
        )
    (n,) = sizes
    if n < 1:
        raise ValueError(f"{name} must hold at least one example; got leading size {n}")
    return int(n)
