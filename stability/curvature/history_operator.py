"""The linearised block-delay dynamics as one linear operator on a history state.

Near a minimum with Hessian ``H``, a momentum rule whose block ``b`` of parameters
(whole leaves, `stability.curvature.blocks`) gets the gradient of step ``t - tau_b``
moves the error ``e_t = w_t - w*`` by

    g_t = H e_t,   (e_{t+1}, v_{t+1}) = update(e_t, v_t, sum_b P_b g_{t - tau_b}),

``update`` the rule's step (``rule.update(w, v, g, lr, beta)``, linear in ``(w, v,
g)`` for gd, heavy ball and Nesterov) and ``P_b`` the projection on block ``b``. On the
flat state ``x_t = (e_t, v_t, g_{t-1}, ..., g_{t-T})`` (``T = max tau_b``; ``n (T + 2)``
numbers, ``n`` the differentiated parameters) this is ``x_{t+1} = A x_t`` with ONE
Hessian-vector product per application (:func:`history_step` after ``g_t = H e_t``):

    stale = pick_by_delay(blocks, [g_{t-d} for d in delays])   (g_t itself for d = 0)
    (e+, v+) = update(e, v, stale, lr, beta);   history (g_t, ..., g_{t-T+1}).

``A`` is the block companion matrix of the matrix polynomial ``M(z) = A(z) I + lr
sum_b B_b(z) P_b H`` (``A``, ``B_b`` the rule's polynomials for the delay ``tau_b``,
docs/theory.md section 18): its nonzero eigenvalues are the roots of ``det M(z)``,
the others 0 (history slots a block never reads, and gd's unused buffer). The
weights are stable to first order iff every eigenvalue lies in the closed unit disc
(and those on the circle are semisimple).

The product is the library's: forward-over-reverse of the mean loss over all the
data (`stability.curvature.hvp`: ``hvp_sum``, parameters and batches arguments of a
jitted function keyed on the loss), data-parallel over ``devices``. The history step
is a second jitted function of the state, the product, ``lr`` and ``beta``, static in
the rule and the block layout (:class:`HistoryLayout`).

:func:`history_power_iteration` iterates the dynamics and estimates the spectral
radius by the growth of the state (the baseline of ``benchmarks/block_radius.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.curvature import hvp as _hvp
from stability.curvature.blocks import BlockDelays, block_delays
from stability.curvature.inputs import (
    check_leaves,
    check_loss_shape,
    check_loss_value,
    check_params,
    classify_data,
)
from stability.theory.rules.base import Rule, as_rule
from stability.validation import check_int, check_lr, check_positive, check_scalar

__all__ = [
    "HessianProduct",
    "HistoryLayout",
    "HistoryOperator",
    "PowerEstimate",
    "check_linear_rule",
    "hessian_product",
    "history_layout",
    "history_operator",
    "history_power_iteration",
    "history_step",
]


# ------------------------------------------------------------------ the product


class HessianProduct(NamedTuple):
    """``matvec(v) -> H v`` of the mean loss over all the data, for a flat ``v`` (n,).

    n: the differentiated parameters. mask: which leaves are differentiated (a
    hashable tuple, `stability.curvature.hvp.trainable_mask`). dtype: the flat
    vector's (the widest differentiated leaf's). flatten: ``pytree like params ->
    flat (n,)`` of the differentiated leaves. The loss value at params (a by-product
    of the first product) is checked finite then.
    """

    matvec: Callable
    n: int
    mask: tuple
    dtype: np.dtype
    flatten: Callable


def hessian_product(loss, params, data=None, *, trainable=None, devices=None) -> HessianProduct:
    """The full-data Hessian-vector product of ``loss`` at ``params`` (module docstring).

    ``loss``, ``params``, ``data``, ``trainable`` and ``devices`` as in
    `stability.hessian_spectrum` (``data``: None, one batch, a list or re-iterable of
    batches, or a callable returning a fresh iterator). Checks them (TypeError /
    ValueError naming the argument); the first product checks the loss (finite at
    params). Building it computes nothing.
    """
    if not callable(loss):
        raise TypeError(f"loss must be callable; got {type(loss).__name__}")
    check_leaves(params)
    mask = _hvp.trainable_mask(params, trainable)
    n = check_params(params, mask)
    dtype = np.dtype(_hvp.flat_dtype(params, mask))
    kind, payload = classify_data(data)
    mesh = _hvp.make_mesh(devices) if kind != "none" else None
    params_d = _hvp.replicate(params, mesh)
    whole = bool(getattr(loss, "couples_examples", False))
    if kind == "none":
        check_loss_shape(loss, params, None)
        placed = [(None, None, 1)]
    elif kind == "single":
        if _hvp.batch_size(payload) == 0:
            raise ValueError("data must not be empty; got a batch of 0 examples")
        check_loss_shape(loss, params, payload)
        placed = [_hvp.place_batch(payload, mesh, whole=whole)]
    else:
        placed = None  # a pass over the batches per product

    def batches():
        if placed is not None:
            yield from placed
            return
        first = True
        for batch in payload():
            if first:
                check_loss_shape(loss, params, batch)
                first = False
            yield _hvp.place_batch(batch, mesh, whole=whole)

    def hv_sum(v):
        acc, total, value = None, 0, 0.0
        for main, rem, nb in batches():
            if nb == 0:
                continue
            acc, val = _hvp.hvp_sum(loss, mask, params_d, main, rem, v, acc)
            total += nb
            value += float(val)
        if total == 0:
            raise ValueError("data must not be empty; a pass over it yielded no examples")
        return acc, total, value

    seen = {}  # the example count and loss of the first pass (checked once)

    def matvec(v):
        acc, count, value = hv_sum(_hvp.replicate(jnp.asarray(v, dtype), mesh))
        if not seen:
            check_loss_value(value / count)
            seen["count"] = count
        elif count != seen["count"]:
            raise ValueError(
                f"data must yield the same examples on every pass; got {count} after "
                f"{seen['count']}"
            )
        return acc / count

    def flatten(tree):
        return _hvp.flatten_params(tree, mask).flat

    return HessianProduct(matvec, n, mask, dtype, flatten)


# ------------------------------------------------------------------- the layout


class HistoryLayout(NamedTuple):
    """The static description of a history state (hashable: a ``jax.jit`` static).

    n: differentiated parameters. max_delay: T. runs: ``(start, stop, delay)`` of the
    flat parameter vector, maximal runs of consecutive entries with one delay (whole
    leaves, in ``tree_leaves`` order).
    """

    n: int
    max_delay: int
    runs: tuple[tuple[int, int, int], ...]

    @property
    def size(self) -> int:
        """``n (T + 2)``: the state ``(e, v, g_{t-1}, ..., g_{t-T})``."""
        return self.n * (self.max_delay + 2)


def history_layout(blocks: BlockDelays, mask, sizes) -> HistoryLayout:
    """The :class:`HistoryLayout` of ``blocks`` over the differentiated leaves
    (``mask[i]``: leaf i differentiated; ``sizes[i]``: its entry count)."""
    delays = jax.tree_util.tree_leaves(blocks.leaf_delays)
    runs: list[list[int]] = []
    start = 0
    for d, m, size in zip(delays, mask, sizes, strict=True):
        if not m or size == 0:
            continue
        if runs and runs[-1][2] == d and runs[-1][1] == start:
            runs[-1][1] = start + size
        else:
            runs.append([start, start + size, int(d)])
        start += size
    used = max(r[2] for r in runs)
    return HistoryLayout(start, int(used), tuple(tuple(r) for r in runs))


def history_step(rule: Rule, layout: HistoryLayout, state, hv, lr, beta):
    """One step of the linearised block-delay dynamics (module docstring), given
    ``hv = H e_t`` for the state's ``e_t``: the next flat state. Pure ``jax.numpy``
    (traceable; ``lr`` and ``beta`` 0-d arrays)."""
    n, t = layout.n, layout.max_delay
    e, v = state[:n], state[n : 2 * n]
    hist = jnp.concatenate([hv[None], state[2 * n :].reshape(t, n)])  # row d: g_{t-d}
    stale = jnp.concatenate([hist[d, a:b] for a, b, d in layout.runs])
    e1, v1 = rule.update(e, v, stale, lr, beta)
    return jnp.concatenate([e1, v1, hist[:t].reshape(-1)])


@partial(jax.jit, static_argnames=("rule", "layout"))
def _step(rule, layout, state, hv, lr, beta):
    return history_step(rule, layout, state, hv, lr, beta)


def check_linear_rule(momentum, name: str = "momentum") -> Rule:
    """The rule object of ``momentum`` when its step is one linear map of ``(w, v, g)``
    with one shared buffer (gd, heavy ball, Nesterov, Adam with a frozen second
    moment); ValueError naming ``name`` otherwise (a per-worker buffer: shifted; no
    polynomial: an optax rule)."""
    rule = as_rule(momentum, name)
    if rule.per_worker_buffer:
        raise ValueError(
            f"{name}={rule.name!r} keeps one buffer per worker; the block-delay dynamics "
            "need one shared buffer (gd, heavy_ball, nesterov)"
        )
    try:
        rule.polynomial(np.ones(1), np.zeros(()), np)
    except NotImplementedError:
        raise ValueError(
            f"{name}={rule!r} has no characteristic polynomial (not a linear rule); use "
            "gd, heavy_ball or nesterov"
        ) from None
    return rule


class HistoryOperator(NamedTuple):
    """``x -> A x`` on the flat history state (module docstring): ``apply(x)`` costs
    one Hessian-vector product. size: ``n (T + 2)``. Also the pieces: the layout, the
    resolved blocks, the product, the rule, lr and beta."""

    apply: Callable
    size: int
    layout: HistoryLayout
    blocks: BlockDelays
    product: HessianProduct
    rule: Rule
    lr: float
    beta: float


def _leaf_sizes(params):
    return [int(np.size(x)) for x in jax.tree_util.tree_leaves(params)]


def history_operator(
    loss,
    params,
    data=None,
    *,
    delays,
    lr,
    beta=0.0,
    momentum="heavy_ball",
    trainable=None,
    devices=None,
    product: HessianProduct | None = None,
) -> HistoryOperator:
    """The :class:`HistoryOperator` of the block-delay dynamics at ``params``.

    Args:
      loss, params, data, trainable, devices: as in `stability.hessian_spectrum`.
      delays: anything `stability.block_delays` accepts (``Stages``, a dict of path
        prefixes, a callable of the leaf path, a pytree of ints, ``BlockDelays``).
      lr: the learning rate (> 0). beta: the momentum coefficient.
      momentum: ``"gd"``, ``"heavy_ball"``, ``"nesterov"`` or a linear `Rule`.
      product: a :class:`HessianProduct` of the same loss, params and data already
        built (reused, not checked again).
    """
    rule = check_linear_rule(momentum)
    check_scalar("lr", lr)
    check_lr(lr)
    check_scalar("beta", beta)
    rule.check_beta(beta)
    blocks = block_delays(params, delays)
    if product is None:
        product = hessian_product(loss, params, data, trainable=trainable, devices=devices)
    layout = history_layout(blocks, product.mask, _leaf_sizes(params))
    dtype = product.dtype
    lr_a, beta_a = jnp.asarray(lr, dtype), jnp.asarray(beta, dtype)
    n = layout.n

    def apply(x):
        x = jnp.asarray(x, dtype)
        hv = product.matvec(x[:n])
        return _step(rule, layout, x, jnp.asarray(hv, dtype), lr_a, beta_a)

    return HistoryOperator(apply, layout.size, layout, blocks, product, rule, float(lr),
                           float(beta))  # fmt: skip


# ------------------------------------------------------- power iteration baseline


class PowerEstimate(NamedTuple):
    """The spectral radius from the growth of the iterated dynamics.

    radius: the last estimate ``exp(mean log growth)`` over the second half of the
    run. estimates: (products,) the estimate after each product. products: the
    applications. converged: the last ``patience`` estimates agree to ``tol``.
    """

    radius: float
    estimates: np.ndarray
    products: int
    converged: bool


def history_power_iteration(
    apply: Callable,
    size: int,
    *,
    tol: float = 1e-6,
    max_products: int = 10_000,
    patience: int = 20,
    seed: int = 0,
) -> PowerEstimate:
    """Iterate ``x <- A x / ||A x||`` from a random start and estimate the spectral
    radius by the growth of the state: after ``t`` products, ``rho_t = exp(mean of
    log ||A x_s|| over s in [t/2, t))`` (the first half discarded as transient; the
    mean over a window also averages the oscillation of a dominant complex pair).
    Stops when ``patience`` successive estimates agree within ``tol`` (relative) or
    at ``max_products``. ``apply``: e.g. :attr:`HistoryOperator.apply`; ``size`` its
    vector length."""
    size = check_int("size", size, 1)
    check_scalar("tol", tol)
    check_positive("tol", tol)
    max_products = check_int("max_products", max_products, 1)
    patience = check_int("patience", patience, 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(size)
    x /= np.linalg.norm(x)
    logs = np.zeros(max_products)
    est = np.zeros(max_products)
    converged = False
    t = 0
    while t < max_products:
        y = np.asarray(apply(x), np.float64)
        nrm = np.linalg.norm(y)
        if not np.isfinite(nrm):
            raise ValueError("the iterated dynamics overflowed (NaN or inf)")
        if nrm == 0:  # nilpotent: the radius is 0
            est[t] = 0.0
            t += 1
            converged = True
            break
        logs[t] = np.log(nrm)
        x = y / nrm
        t += 1
        est[t - 1] = np.exp(np.mean(logs[t // 2 : t]))
        if t > patience:
            recent = est[t - patience : t]
            if np.ptp(recent) <= tol * recent[-1]:
                converged = True
                break
    return PowerEstimate(float(est[t - 1]), est[:t].copy(), t, converged)
