"""Turn a Flax model into a ``loss(params, batch)`` function.

Conventions:

- ``batch`` is ``(inputs, labels)``; the loss is the mean over the batch of
  ``loss(outputs, labels)`` (default: softmax cross-entropy on integer
  labels).
- Eval mode by default: batch norm uses its running statistics and dropout is
  off. For a linen module, ``model.apply`` receives ``train=train``,
  ``training=train``, ``deterministic=not train`` or
  ``use_running_average=not train`` when ``__call__`` accepts that keyword
  (the first that matches, in that order). For an nnx module, ``model.eval()``
  (``train=False``) or ``model.train()`` is applied to a copy; the user's
  module is never modified.
- Only trainable parameters are differentiated. Linen: the returned
  ``params`` is the full variables dict ``{"params": ..., "batch_stats": ...}``
  and every collection other than ``"params"`` passes through
  ``jax.lax.stop_gradient``, so its gradient (and Hessian block) is exactly
  zero and any gradient method leaves it fixed; all of it stays an argument
  of the loss, never a compiled-in constant. nnx: the returned ``params`` is
  the ``nnx.State`` of ``nnx.Param`` variables; the remaining state (batch
  statistics, rng counters; small) is held fixed by the loss.
- ``train=True`` evaluates in training mode: batch statistics of the batch
  (their running-average updates are discarded) and dropout with a fixed key
  (``jax.random.key(0)``), so the loss is still a deterministic function.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

try:  # flax is optional for plain callables
    from flax import linen as nn
    from flax import nnx
except ImportError:  # pragma: no cover
    nn = None
    nnx = None

_EVAL_KEYWORDS = (
    ("train", lambda train: train),
    ("training", lambda train: train),
    ("deterministic", lambda train: not train),
    ("use_running_average", lambda train: not train),
)


def cross_entropy(outputs, labels):
    """Mean softmax cross-entropy of logits ``outputs`` on integer ``labels``."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, labels))


def mean_squared_error(outputs, targets):
    """Mean over all entries of ``(outputs - targets)^2``.

    Integer ``targets`` with one dimension fewer than ``outputs`` are class
    labels and are one-hot encoded over the last axis of ``outputs`` first,
    so ``(inputs, labels)`` batches work with either loss. For outputs of
    shape (B, C) this is ``(1 / (B C)) sum_i ||f(x_i) - y_i||^2``.
    """
    outputs = jnp.asarray(outputs)
    targets = jnp.asarray(targets)
    if jnp.issubdtype(targets.dtype, jnp.integer) and targets.ndim == outputs.ndim - 1:
        targets = jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
    if targets.shape != outputs.shape:
        raise ValueError(
            f"mean_squared_error: targets shape {targets.shape} does not match "
            f"outputs shape {outputs.shape}"
        )
    return jnp.mean(jnp.square(outputs - targets.astype(outputs.dtype)))


def loss_from_model(
    model,
    params=None,
    *,
    loss: Callable | None = None,
    train: bool = False,
    data=None,
) -> tuple[Callable, Any]:
    """``(loss_fn, params)`` with ``loss_fn(params, batch) -> scalar``.

    Args:
      model: a Flax linen ``Module``, a Flax nnx ``Module``, or a plain
        callable, which is taken to be the loss already and returned as is.
      params: linen: the variables dict (``{"params": ..., ...}``, as returned
        by ``model.init``); nnx: None (taken from the module) or an
        ``nnx.State`` of its ``nnx.Param`` variables; plain callable: anything.
      loss: ``loss(outputs, labels) -> scalar``, the batch mean (default:
        softmax cross-entropy on integer labels; e.g. `mean_squared_error`).
      train: evaluate in training mode (see the module docstring); default
        eval mode.
      data: optional batch ``(inputs, labels)``: the loss is evaluated once,
        abstractly, on its first two examples, so that params that do not fit
        the model or a non-scalar loss fail here with a clear message.

    Returns:
      ``(loss_fn, params)``, ``params`` being what ``loss_fn`` differentiates.
    """
    if not isinstance(train, bool):
        raise TypeError(f"train must be a bool; got {train!r}")
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be a callable loss(outputs, labels); got {loss!r}")
    out_loss = cross_entropy if loss is None else loss
    if nn is not None and isinstance(model, nn.Module):
        loss_fn, params = _linen_loss(model, params, out_loss, train, data)
    elif nnx is not None and isinstance(model, nnx.Module):
        loss_fn, params = _nnx_loss(model, params, out_loss, train)
    elif callable(model):
        if loss is not None:
            raise ValueError(
                "loss= applies to Flax modules; a plain callable model is used as the loss "
                "itself, loss(params, batch)"
            )
        return model, params
    else:
        raise TypeError(
            f"model must be a Flax linen/nnx Module or a callable loss; got {type(model).__name__}"
        )
    if data is not None:
        _check_on_data(loss_fn, params, data)
    return loss_fn, params


def _scalar(value, where: str):
    if jnp.shape(value) != ():
        raise ValueError(
            f"loss must return a scalar (the batch mean); {where} returned shape {jnp.shape(value)}"
        )
    return value


def _split_batch(batch):
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError(
            f"a batch for a model must be a pair (inputs, labels); got {type(batch).__name__}"
        )
    return batch


def _call_keywords(fn, train: bool) -> dict:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    for name, value in _EVAL_KEYWORDS:
        if name in sig.parameters:
            return {name: value(train)}
    return {}


def _linen_loss(model, variables, out_loss, train, data):
    if variables is None:
        raise ValueError("params is required for a linen Module: pass model.init(...) variables")
    if not (hasattr(variables, "keys") and "params" in variables):
        raise ValueError(
            "params for a linen Module must be its variables dict with a 'params' collection "
            f"(as returned by model.init); got {type(variables).__name__}"
            + (f" with keys {sorted(variables.keys())}" if hasattr(variables, "keys") else "")
        )
    kwargs = _call_keywords(type(model).__call__, train)
    others = tuple(c for c in variables.keys() if c != "params")
    if data is not None:
        _check_linen_structure(model, variables, data, kwargs)
    try:
        # The same function object for the same module and loss: jitted
        # consumers (hessian_spectrum, simulate_async) key their compiled code
        # on it, so a second is_accessible call does not compile again.
        return _cached_linen_loss(model, out_loss, train, others), variables
    except TypeError:  # an unhashable module or loss: build a fresh function
        return _linen_loss_fn(model, out_loss, train, others), variables


def _linen_loss_fn(model, out_loss, train, others):
    kwargs = _call_keywords(type(model).__call__, train)

    def loss_fn(variables, batch):
        inputs, labels = _split_batch(batch)
        fixed = {c: jax.lax.stop_gradient(variables[c]) for c in variables if c != "params"}
        full = {"params": variables["params"], **fixed}
        with _model_promotion():
            outputs = _apply_linen(model, full, inputs, train, list(others), kwargs)
        return _scalar(out_loss(outputs, labels), "loss(outputs, labels)")

    return loss_fn


_cached_linen_loss = functools.lru_cache(maxsize=64)(_linen_loss_fn)


def _model_promotion():
    """JAX's default dtype promotion while a user's module runs.

    Flax layers (e.g. BatchNorm's float32 running statistics) mix float32 and
    float64 under ``jax_enable_x64``, which ``jax_numpy_dtype_promotion =
    "strict"`` rejects; the module's own dtype handling is its business.
    """
    return jax.numpy_dtype_promotion("standard")


def _apply_linen(model, full, inputs, train, others, kwargs):
    if not train:
        return model.apply(full, inputs, **kwargs)
    outputs, _ = model.apply(
        full, inputs, mutable=others, rngs={"dropout": jax.random.key(0)}, **kwargs
    )
    return outputs


def _nnx_loss(model, params, out_loss, train):
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)  # a copy that shares arrays: mode set on it only
    copy.train() if train else copy.eval()
    graphdef, own_params, rest = nnx.split(copy, nnx.Param, ...)
    if params is None:
        params = own_params
    else:
        _compare_trees("params", params, own_params)

    if not jax.tree_util.tree_leaves(rest):
        # No other state (no batch statistics, no rng counters): the function
        # depends only on the graph, so reuse it and its compiled code.
        try:
            return _cached_nnx_loss(graphdef, out_loss), params
        except TypeError:  # an unhashable loss
            pass
    return _nnx_loss_fn(graphdef, out_loss, rest), params


def _nnx_loss_fn(graphdef, out_loss, rest=None):
    def loss_fn(p, batch):
        inputs, labels = _split_batch(batch)
        m = nnx.merge(graphdef, p) if rest is None else nnx.merge(graphdef, p, rest)
        with _model_promotion():
            outputs = m(inputs)
        return _scalar(out_loss(outputs, labels), "loss(outputs, labels)")

    return loss_fn


_cached_nnx_loss = functools.lru_cache(maxsize=64)(_nnx_loss_fn)


def _path(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _compare_trees(name, given, expected) -> None:
    """Raise naming every leaf whose presence or shape differs."""
    g = {_path(p): jnp.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(given)}
    e = {_path(p): jnp.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(expected)}
    problems = []
    for k in sorted(set(e) - set(g)):
        problems.append(f"missing {k} (expected shape {e[k]})")
    for k in sorted(set(g) - set(e)):
        problems.append(f"unexpected {k} (shape {g[k]})")
    for k in sorted(set(g) & set(e)):
        if g[k] != e[k]:
            problems.append(f"{k} has shape {g[k]}, the model expects {e[k]}")
    if problems:
        shown = "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
        raise ValueError(f"{name} do not match the model: {shown}")


def _check_linen_structure(model, variables, data, kwargs) -> None:
    inputs, _ = _split_batch(data)
    sample = jax.tree_util.tree_map(lambda x: x[:1], inputs)
    try:
        with _model_promotion():
            expected = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **kwargs), sample)
    except Exception:  # noqa: BLE001 - init may need rngs we cannot guess; apply still checks
        return
    _compare_trees("params", {"params": variables["params"]}, {"params": expected["params"]})


def _check_on_data(loss_fn, params, data) -> None:
    sample = jax.tree_util.tree_map(lambda x: x[:2], _split_batch(data))
    try:
        jax.eval_shape(loss_fn, params, sample)
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(
            f"the model could not be applied to params on a slice of data: {type(err).__name__}: "
            f"{err}"
        ) from err
