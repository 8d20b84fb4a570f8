"""The inputs of the curvature estimators: params, data and loss, checked and classified.

Shared by `stability.hessian_spectrum` (`stability.curvature.hessian_spectrum`) and the
per-example estimators of `stability.curvature.nonuniformity`, so both accept the same
params and data and refuse bad ones with the same messages:

- params: a pytree of real floating arrays (or numbers), finite, with at least one
  number to differentiate (:func:`check_leaves`, :func:`check_params`);
- data: None, one batch, a list of batches, a re-iterable or a callable returning a
  fresh iterator (:func:`classify_data`; a one-shot iterator is refused, since every
  product is a full pass);
- loss: callable as ``loss(params)`` or ``loss(params, batch)``, returning a real
  scalar (:func:`check_loss_shape`, traced only), finite at params
  (:func:`check_loss_value`).
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_leaves",
    "check_loss_shape",
    "check_loss_value",
    "check_params",
    "classify_data",
]


@jax.jit
def _all_finite(xs):
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])


def _host_view(x):
    """``x`` as a numpy array without a copy or a compiled program when it already
    lives in host memory (numpy, Python scalars, single-device CPU jax arrays),
    else None."""
    if not isinstance(x, jax.Array):
        return np.asarray(x)
    devs = x.devices()
    if len(devs) == 1 and next(iter(devs)).platform == "cpu":
        try:
            return np.from_dlpack(x)
        except (RuntimeError, TypeError, BufferError):  # dtypes DLPack lacks (bfloat16)
            return np.asarray(x)
    return None


def _leaves_finite(xs):
    """Per leaf: all entries finite. Checked with numpy where the leaf is in host
    memory (no compile; on CPU that is every leaf), by one jitted reduction over the
    others (accelerator or sharded leaves: no transfer to the host)."""
    views = [_host_view(x) for x in xs]
    flags = np.array([v is None or bool(np.isfinite(v).all()) for v in views])
    rest = [i for i, v in enumerate(views) if v is None]
    if rest:
        flags[rest] = np.asarray(_all_finite([xs[i] for i in rest]))
    return flags


def check_leaves(params) -> None:
    """Every leaf of ``params`` an array or a number (a string or None names itself)."""
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not (hasattr(x, "dtype") or isinstance(x, (int, float))) or isinstance(x, bool):
            raise TypeError(
                f"params must be a pytree of arrays; got a {type(x).__name__} leaf at "
                f"{jax.tree_util.keystr(path) or '<root>'}: {x!r:.60}"
            )


def check_params(params, mask) -> int:
    """The number of differentiated entries of ``params`` (the leaves where ``mask`` is
    True); TypeError for a complex leaf, ValueError when there is nothing to
    differentiate or a differentiated leaf holds NaN or inf."""
    leaves = jax.tree_util.tree_leaves(params)
    for x in leaves:
        if jnp.issubdtype(jnp.result_type(x), jnp.complexfloating):
            raise TypeError("params must have real floating leaves; got a complex leaf")
    sel = [x for x, m in zip(leaves, mask, strict=True) if m]
    if not sel:
        raise ValueError("params must contain at least one floating-point leaf; got none")
    bad = np.flatnonzero(~_leaves_finite(sel))
    if bad.size:
        paths = [
            jax.tree_util.keystr(p)
            for (p, x), m in zip(jax.tree_util.tree_flatten_with_path(params)[0], mask, strict=True)
            if m
        ]
        raise ValueError(
            f"params must be finite; got NaN or inf in leaves {[paths[i] for i in bad[:5]]}"
        )
    n = sum(int(np.prod(np.shape(x))) for x in sel)
    if n == 0:
        raise ValueError("params must hold at least one number to differentiate; got 0 (empty "
                         "arrays)")  # fmt: skip
    return n


def _is_batch_leaf(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def classify_data(data):
    """``(kind, payload)``: ``('none', None)``, ``('single', batch)`` or ``('many',
    factory)``, ``factory()`` a fresh iterator over the batches (one pass)."""
    if data is None:
        return "none", None
    if isinstance(data, list):
        if not data:
            raise ValueError("data must not be empty; got an empty list of batches")
        if len(data) == 1:
            return "single", data[0]
        return "many", lambda: iter(data)
    if isinstance(data, (tuple, dict)) or _is_batch_leaf(data):
        return "single", data
    if not isinstance(data, Iterable):  # a custom pytree batch (iterators are not pytrees)
        leaves = jax.tree_util.tree_leaves(data)
        if leaves and all(_is_batch_leaf(x) for x in leaves):
            return "single", data
    if callable(data):
        return "many", data
    if isinstance(data, Iterable):
        if iter(data) is data:
            raise ValueError(
                "data is a one-shot iterator, but every Hessian-vector product needs a full "
                "pass; pass a list of batches, a re-iterable loader, or a callable returning a "
                f"fresh iterator; got {type(data).__name__}"
            )
        return "many", lambda: iter(data)
    raise TypeError(
        f"data must be None, a batch (pytree of arrays), a list/iterable of batches or a "
        f"callable returning an iterator; got {type(data).__name__}"
    )


def check_loss_shape(loss, params, batch) -> None:
    """``loss(params)`` (``batch`` None) or ``loss(params, batch)`` traced (nothing
    runs): callable so, and a real floating scalar."""
    args = (params,) if batch is None else (params, batch)
    call = "loss(params)" if batch is None else "loss(params, batch)"
    try:
        out = jax.eval_shape(loss, *args)
    except TypeError as e:
        raise TypeError(f"loss could not be called as {call}: {e}") from e
    except ValueError as e:  # e.g. params of other shapes than the loss expects
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"loss could not be evaluated as {call} at these params: {first}") from e
    if not hasattr(out, "shape") or out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            "loss must return a real scalar (the mean loss over the batch); got "
            f"{getattr(out, 'dtype', type(out))}{getattr(out, 'shape', '')}"
        )


def check_loss_value(value) -> None:
    """ValueError unless the loss ``value`` at params is finite."""
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"loss must be finite at params; got {v!r}")
