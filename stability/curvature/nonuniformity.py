"""Non-uniformity of the per-example Hessians of a trained network.

Wu, Ma and E (NeurIPS 2018) measure how unevenly the examples curve the loss at a
minimum by ``Sigma = mean_i H_i^2 - H^2 = mean_i (H_i - H)^2``, with ``H_i`` the
Hessian of example i's loss and ``H = mean_i H_i`` the Hessian of the mean loss.
Mini-batch SGD is stable in mean square only if the minimum is flat enough in
both H and Sigma (`stability.theory.mean_square`). Two quantities are computed here from
per-example Hessian-vector products (forward-over-reverse, Pearlmutter 1994), never
forming a Hessian:

- along a unit direction ``v`` (:func:`directional_nonuniformity`): the curvature
  ``a = v^T H v`` and the non-uniformity ``s^2 = v^T Sigma v = mean_i ||H_i v - H
  v||^2``: the quantity the mean-square condition needs along the sharp direction
  (``v`` the top Hessian eigenvector). One pass over the data, one product per
  example. Also ``mean_i (v^T H_i v - a)^2``, the part of ``s^2`` that stays in the
  direction (equal to ``s^2`` when the ``H_i`` share the eigenvector ``v``), and the
  eigen-residual ``||H v - a v||``.
- the largest eigenvalue of Sigma (:func:`nonuniformity_spectrum`), Wu, Ma and E's
  non-uniformity ``sqrt(lambda_max(Sigma))``: Lanczos (`stability.curvature.lanczos`) on
  ``u -> mean_i H_i (H_i u) - H (H u)``, two passes per product (two products per
  example, then the mean-loss product of `stability.curvature.hvp`);
- the largest eigenvalue of Wu, Ma and E's matrix ``(I - lr H)^2 + lr^2 gamma Sigma``
  (:func:`wu_ma_e_spectrum`, the same products) and its eigenvector, the direction
  where their condition fails first.

Per-example products. ``loss(params, batch)`` returns the MEAN loss over its batch
(the convention of `stability.hessian_spectrum`), so example i's loss is the loss
of the one-example batch ``batch[i:i+1]``; the products of the examples of a chunk
run in one jit-compiled program (``jax.vmap`` over the examples), with parameters,
data and the direction as arguments (the loss function and which leaves are
differentiated static: keep the same loss object to reuse the compiled code). Each
chunk's mean and sum of squared deviations are combined by Chan, Golub and
LeVeque's pairwise update, so ``s^2`` is not the difference of two large numbers.

Data handling is `stability.hessian_spectrum`'s (`stability.curvature.inputs`):
``data`` is one batch, a list of batches, a re-iterable or a callable returning a
fresh iterator; each chunk is split over the devices' mesh by `stability.curvature.hvp.place_batch`
(examples sharded, parameters replicated; a remainder that is not a multiple of the
device count runs replicated, no example dropped or padded). One process only.
A model evaluated in training mode with batch statistics (batch norm) has no
per-example loss; use eval mode (the default of `stability.loss_from_model`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.curvature import hvp as _hvp
from stability.curvature.hessian_spectrum import HessianSpectrum
from stability.curvature.host_loop import host_lanczos
from stability.curvature.inputs import check_loss_shape, check_params, classify_data
from stability.progress import SilentBar
from stability.validation import check_int, check_positive

__all__ = [
    "DirectionalNonuniformity",
    "NonuniformitySpectrum",
    "WuMaESpectrum",
    "directional_nonuniformity",
    "nonuniformity_spectrum",
    "wu_ma_e_spectrum",
]

DEFAULT_CHUNK = 128  # examples per compiled program (memory: chunk x parameters numbers)


class DirectionalNonuniformity(NamedTuple):
    """The per-example curvature statistics along one unit direction ``v``.

    curvature: ``a = v^T H v`` (the eigenvalue when v is an eigenvector of H).
    nonuniformity: ``s = sqrt(v^T Sigma v)``, same units as the curvature (loss per
      squared parameter unit).
    variance: ``s^2 = mean_i ||H_i v - H v||^2``.
    in_direction: ``mean_i (v^T H_i v - a)^2 <= s^2``: the part that stays along v
      (all of it when the H_i share the eigenvector v).
    residual: ``||H v - a v||``: zero iff v is an eigenvector of H.
    num_examples: the examples averaged over.
    """

    curvature: float
    nonuniformity: float
    variance: float
    in_direction: float
    residual: float
    num_examples: int


class NonuniformitySpectrum(NamedTuple):
    """The largest eigenvalue of ``Sigma`` by Lanczos.

    eigenvalue: the largest Ritz value (a lower bound on ``lambda_max(Sigma)``).
    error: its residual bound (some eigenvalue of Sigma lies within it).
    converged: ``error <= tol * eigenvalue``.
    nonuniformity: ``sqrt(eigenvalue)``, Wu, Ma and E's ``s``.
    num_products: Sigma-vector products used (each: two passes over the data).
    eigenvector: pytree like params (unit norm), or None.
    """

    eigenvalue: float
    error: float
    converged: bool
    nonuniformity: float
    num_products: int
    eigenvector: Any = None


# ------------------------------------------------------------------- per-example


def _example_grad(loss, fp, example):
    """``w -> grad of example's loss`` (flat), the example given without its axis."""
    one = jax.tree_util.tree_map(lambda x: x[None], example)
    return jax.grad(lambda flat: loss(fp.unravel(flat), one))


@partial(jax.jit, static_argnames=("loss", "mask"))
def _direction_stats(loss, mask, params, chunk, v):
    """For one chunk of examples: ``(count, mean_i H_i v, sum_i ||H_i v - mean||^2,
    mean_i v^T H_i v, sum_i (v^T H_i v - mean)^2)``."""
    fp = _hvp.flatten_params(params, mask)
    v = v.astype(fp.flat.dtype)

    def product(example):
        return jax.jvp(_example_grad(loss, fp, example), (fp.flat,), (v,))[1]

    hvs = jax.vmap(product)(chunk)
    mean = jnp.mean(hvs, axis=0)
    proj = hvs @ v
    pmean = jnp.mean(proj)
    return mean, jnp.sum(jnp.square(hvs - mean)), pmean, jnp.sum(jnp.square(proj - pmean))


@partial(jax.jit, static_argnames=("loss", "mask"))
def _square_sum(loss, mask, params, chunk, u):
    """For one chunk: ``(sum_i H_i (H_i u), sum_i H_i u)``."""
    fp = _hvp.flatten_params(params, mask)
    u = u.astype(fp.flat.dtype)

    def products(example):
        g = _example_grad(loss, fp, example)
        hu = jax.jvp(g, (fp.flat,), (u,))[1]
        return jax.jvp(g, (fp.flat,), (hu,))[1], hu

    h2u, hu = jax.vmap(products)(chunk)
    return jnp.sum(h2u, axis=0), jnp.sum(hu, axis=0)


def _chunks(data, chunk_size):
    """Every example of ``data`` once, as batches of at most ``chunk_size``."""
    kind, payload = classify_data(data)
    if kind == "none":
        raise ValueError("data must hold the examples (per-example Hessians need them); got None")
    batches = [payload] if kind == "single" else payload()
    for batch in batches:
        n = _hvp.batch_size(batch)
        for start in range(0, n, chunk_size):
            yield jax.tree_util.tree_map(lambda x, s=start: x[s : s + chunk_size], batch)


def _placed(data, chunk_size, mesh):
    """Each chunk on the devices: ``(main, rem)``, the part sharded over the mesh and
    the replicated rest (either may be None; `stability.curvature.hvp.place_batch`)."""
    for chunk in _chunks(data, chunk_size):
        main, rem, _ = _hvp.place_batch(chunk, mesh)
        yield main, rem


class _Setup(NamedTuple):
    loss: Callable
    mask: tuple
    params: Any
    mesh: Any
    n: int
    dtype: Any


def _setup(loss, params, data, trainable, devices) -> _Setup:
    if not callable(loss):
        raise TypeError(f"loss must be callable; got {type(loss).__name__}")
    if jax.process_count() > 1:
        raise NotImplementedError("the non-uniformity is computed on one process only")
    if getattr(loss, "couples_examples", False):
        raise ValueError(
            "loss couples the examples of a batch (training-mode batch statistics), so an "
            "example has no loss of its own; evaluate the model in eval mode (train=False)"
        )
    mask = _hvp.trainable_mask(params, trainable)
    n = check_params(params, mask)
    kind, payload = classify_data(data)
    if kind == "single":
        if _hvp.batch_size(payload) == 0:
            raise ValueError("data must not be empty; got a batch of 0 examples")
        check_loss_shape(loss, params, payload)
    mesh = _hvp.make_mesh(devices)
    dtype = np.dtype(_hvp.flat_dtype(params, mask))
    return _Setup(loss, mask, _hvp.replicate(params, mesh), mesh, n, dtype)


def _flat_direction(direction, params, mask, n, dtype) -> np.ndarray:
    """A unit flat vector from a params-like pytree, a flat vector, or the top
    eigenvector of a HessianSpectrum."""
    if isinstance(direction, HessianSpectrum):
        if direction.eigenvectors is None:
            raise ValueError(
                "direction must hold eigenvectors: pass hessian_spectrum(..., return_vectors="
                "True); got a HessianSpectrum without them"
            )
        direction = jax.tree_util.tree_map(lambda x: x[0], direction.eigenvectors)
    leaves = jax.tree_util.tree_leaves(direction)
    if len(leaves) == 1 and np.ndim(leaves[0]) == 1 and np.size(leaves[0]) == n:
        flat = np.asarray(leaves[0], np.float64)
    else:
        if len(leaves) != len(mask):
            raise ValueError(
                f"direction must be a flat vector of {n} numbers or a pytree like params "
                f"({len(mask)} leaves); got {len(leaves)} leaves"
            )
        sel = [np.asarray(x, np.float64).ravel() for x, m in zip(leaves, mask, strict=True) if m]
        flat = np.concatenate(sel)
        if flat.size != n:
            raise ValueError(f"direction must hold {n} differentiated numbers; got {flat.size}")
    norm = float(np.linalg.norm(flat))
    if not (np.all(np.isfinite(flat)) and norm > 0):
        raise ValueError("direction must be finite and nonzero")
    return (flat / norm).astype(dtype)


def directional_nonuniformity(
    loss: Callable,
    params,
    data,
    direction,
    *,
    trainable=None,
    devices=None,
    chunk_size: int = DEFAULT_CHUNK,
) -> DirectionalNonuniformity:
    """Curvature and non-uniformity of the per-example Hessians along ``direction``.

    Args:
      loss: ``loss(params, batch)``, the MEAN loss over the batch.
      params: the point (any pytree; the floating leaves, or those selected by
        ``trainable``, are differentiated).
      data: the examples (one batch, a list / re-iterable of batches, or a callable
        returning a fresh iterator).
      direction: a pytree like params, a flat vector, or a `HessianSpectrum` with
        eigenvectors (its top one); normalised to unit length.
      trainable, devices: as for `stability.hessian_spectrum`.
      chunk_size: examples per compiled program (memory ``chunk_size x n``).

    Returns:
      :class:`DirectionalNonuniformity` (module docstring), Python numbers.
    """
    chunk_size = check_int("chunk_size", chunk_size, 1)
    s = _setup(loss, params, data, trainable, devices)
    v = _flat_direction(direction, params, s.mask, s.n, s.dtype)
    v_dev = _hvp.replicate(jnp.asarray(v), s.mesh)
    count, mean, m2, pmean, pm2 = 0, np.zeros(s.n, np.float64), 0.0, 0.0, 0.0
    for parts in _placed(data, chunk_size, s.mesh):
        for part in (p for p in parts if p is not None):
            c = _hvp.batch_size(part)
            cm, cm2, cp, cpm2 = jax.device_get(
                _direction_stats(s.loss, s.mask, s.params, part, v_dev)
            )
            # Chan, Golub and LeVeque: merge (count, mean, sum of squared deviations).
            total = count + c
            delta = np.asarray(cm, np.float64) - mean
            m2 += float(cm2) + float(delta @ delta) * count * c / total
            mean += delta * (c / total)
            pdelta = float(cp) - pmean
            pm2 += float(cpm2) + pdelta * pdelta * count * c / total
            pmean += pdelta * c / total
            count = total
    if count == 0:
        raise ValueError("data must hold at least one example; got none")
    curvature = float(mean @ v.astype(np.float64))
    variance = m2 / count
    if not (math.isfinite(curvature) and math.isfinite(variance)):
        raise ValueError("the per-example Hessian-vector products are not finite at params")
    residual = float(np.linalg.norm(mean - curvature * v.astype(np.float64)))
    return DirectionalNonuniformity(
        curvature=curvature,
        nonuniformity=math.sqrt(variance),
        variance=variance,
        in_direction=pm2 / count,
        residual=residual,
        num_examples=int(count),
    )


class _Top(NamedTuple):
    value: float
    error: float
    scale: float  # max |Ritz value|: the spectral-norm estimate
    steps: int
    vector: Any


def _lanczos_top(loss, params, data, coeffs, tol, max_products, seed, return_vector,
                 trainable, devices, chunk_size) -> _Top:  # fmt: skip
    """The top eigenvalue of ``c_sq mean_i H_i^2 + c_hh H^2 + c_h H`` (``coeffs``) by
    Lanczos with full reorthogonalisation: two passes per product (per-example
    products, two per example; then the mean-loss product of ``H u``). Stops when the
    top Ritz residual is at most ``tol`` times the spectral-norm estimate."""
    check_positive("tol", tol)
    max_products = check_int("max_products", max_products, 1)
    chunk_size = check_int("chunk_size", chunk_size, 1)
    s = _setup(loss, params, data, trainable, devices)
    max_products = min(max_products, s.n)
    placed = list(_placed(data, chunk_size, s.mesh))
    count = sum(_hvp.batch_size(p) for parts in placed for p in parts if p is not None)
    if count == 0:
        raise ValueError("data must hold at least one example; got none")
    c_sq, c_hh, c_h = (float(c) for c in coeffs)

    def product(u):
        u_dev = _hvp.replicate(jnp.asarray(u), s.mesh)
        h2u, hu = 0.0, 0.0
        for parts in placed:
            for part in (p for p in parts if p is not None):
                a, b = _square_sum(s.loss, s.mask, s.params, part, u_dev)
                h2u, hu = h2u + np.asarray(a, np.float64), hu + np.asarray(b, np.float64)
        hu = hu / count
        hu_dev = _hvp.replicate(jnp.asarray(hu.astype(s.dtype)), s.mesh)
        hhu = 0.0
        for main, rem in placed:
            out, _ = _hvp.hvp_sum(s.loss, s.mask, s.params, main, rem, hu_dev, None)
            hhu = hhu + np.asarray(out, np.float64)
        return (c_sq * h2u / count + c_hh * hhu / count + c_h * hu).astype(s.dtype)

    def hv(u):  # the engine's host loop multiplies by scale * hv(u)
        w = product(np.asarray(u))
        if not np.all(np.isfinite(w)):
            raise ValueError("the per-example Hessian-vector products are not finite at params")
        return w, s.dtype.type(1.0)

    v0 = np.random.default_rng(seed).standard_normal(s.n).astype(s.dtype)
    basis, ext, steps = host_lanczos(
        hv, v0, None, k=1, tol=tol, max_hvps=max_products, reorthogonalize=True,
        want_smallest=False, bar=SilentBar(),
    )  # fmt: skip
    scale = max(abs(float(ext.top[0])), abs(float(ext.smallest)))
    vector = None
    if return_vector:
        y = np.asarray(ext.coeffs[0] @ np.asarray(basis)[:steps])
        y = y / np.linalg.norm(y)
        vector = _hvp.flatten_params(params, s.mask).unravel(jnp.asarray(y))
    return _Top(float(ext.top[0]), float(ext.top_error[0]), scale, steps, vector)


def nonuniformity_spectrum(
    loss: Callable,
    params,
    data,
    *,
    tol: float = 1e-3,
    max_products: int = 40,
    seed: int = 0,
    return_vector: bool = False,
    trainable=None,
    devices=None,
    chunk_size: int = DEFAULT_CHUNK,
) -> NonuniformitySpectrum:
    """The largest eigenvalue of ``Sigma = mean_i H_i^2 - H^2`` (Wu, Ma and E's
    non-uniformity is its square root), by Lanczos with full reorthogonalisation.

    Each product ``Sigma u = mean_i H_i (H_i u) - H (H u)`` is two passes over the
    data: per-example products (two per example) and then the mean-loss product of
    ``H u`` (`stability.curvature.hvp.hvp_sum`). Stops when the top Ritz residual is at most
    ``tol`` times the top Ritz value, or after ``max_products``. The difference of the
    two means loses about ``eps ||H||^2 / lambda_max(Sigma)`` in relative accuracy.

    Returns:
      :class:`NonuniformitySpectrum` (Python numbers; the eigenvector as a pytree
      like params when ``return_vector``).
    """
    top = _lanczos_top(loss, params, data, (1.0, -1.0, 0.0), tol, max_products, seed,
                       return_vector, trainable, devices, chunk_size)  # fmt: skip
    return NonuniformitySpectrum(
        eigenvalue=top.value,
        error=top.error,
        converged=bool(top.error <= tol * abs(top.value)),
        nonuniformity=math.sqrt(max(top.value, 0.0)),
        num_products=top.steps,
        eigenvector=top.vector,
    )


class WuMaESpectrum(NamedTuple):
    """The top of Wu, Ma and E's matrix ``(I - lr H)^2 + lr^2 gamma Sigma``.

    excess: the largest Ritz value of ``lr (gamma mean_i H_i^2 + (1 - gamma) H^2) -
      2 H``, so that ``lambda_max = 1 + lr * excess``; a positive Ritz value proves
      ``lambda_max > 1`` (their sufficient condition for mean-square stability at tau
      = 0 fails). Flat directions (``H_i u = 0`` for all i) give exactly 0.
    error: its residual bound; converged: ``error <= tol * spectral-norm estimate``.
    lambda_max: ``1 + lr * excess``.
    num_products: products used (each two passes over the data).
    eigenvector: the Ritz vector (pytree like params) or None: the direction where
      the second moment grows fastest in one step (the worst direction at tau = 0).
    """

    excess: float
    error: float
    converged: bool
    lambda_max: float
    num_products: int
    eigenvector: Any = None


def wu_ma_e_spectrum(
    loss: Callable,
    params,
    data,
    *,
    lr,
    variance_factor,
    tol: float = 1e-3,
    max_products: int = 40,
    seed: int = 0,
    return_vector: bool = False,
    trainable=None,
    devices=None,
    chunk_size: int = DEFAULT_CHUNK,
) -> WuMaESpectrum:
    """The largest eigenvalue of ``(I - lr H)^2 + lr^2 gamma Sigma`` (Wu, Ma and E's
    mean-square condition for SGD: ``<= 1``), as ``1 + lr * excess``.

    ``excess`` is the top eigenvalue of ``lr (gamma mean_i H_i^2 + (1 - gamma) H^2) -
    2 H`` (the same matrix minus I, over lr, with ``Sigma = mean_i H_i^2 - H^2``),
    found by Lanczos on the products of :func:`nonuniformity_spectrum`; ``gamma`` is
    `stability.theory.mean_square.variance_factor` of the batch size. Its Ritz vector is
    the direction where the condition fails first; `stability.is_accessible` judges
    the (delayed) scalar condition along it.

    Returns:
      :class:`WuMaESpectrum` (Python numbers; the eigenvector when ``return_vector``).
    """
    check_positive("lr", lr)
    if not (isinstance(variance_factor, (int, float)) and 0 <= variance_factor <= 1):
        raise ValueError(f"variance_factor must be a number in [0, 1]; got {variance_factor!r}")
    lr, g = float(lr), float(variance_factor)
    top = _lanczos_top(loss, params, data, (lr * g, lr * (1 - g), -2.0), tol, max_products,
                       seed, return_vector, trainable, devices, chunk_size)  # fmt: skip
    return WuMaESpectrum(
        excess=top.value,
        error=top.error,
        converged=bool(top.error <= tol * top.scale),
        lambda_max=1.0 + lr * top.value,
        num_products=top.steps,
        eigenvector=top.vector,
    )
