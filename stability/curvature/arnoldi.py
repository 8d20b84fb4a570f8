"""Eigenvalues of largest modulus of a real non-symmetric operator: Krylov-Schur.

The operator is a function ``matvec(x) -> A x`` of a flat real vector (numpy or
JAX); nothing else about ``A`` is known (matfree style). The method is Stewart's
Krylov-Schur restart of the Arnoldi process (G. W. Stewart, "A Krylov-Schur
algorithm for large eigenproblems", SIAM J. Matrix Anal. Appl. 23, 2001), in
real arithmetic, the loop driven from the host (numpy float64):

1. an Arnoldi decomposition ``A V_m = V_m S + v_{m+1} b^T`` (``V`` orthonormal,
   classical Gram-Schmidt twice per step) is grown to ``m = krylov_dim`` vectors;
2. the real Schur form ``S = Q T Q^T`` is ordered so that the ``p`` Ritz values of
   largest modulus come first (a complex-conjugate pair is never split);
3. the decomposition is truncated to ``A (V Q_p) = (V Q_p) T_p + v_{m+1} (b^T
   Q_p)`` (a Krylov-Schur decomposition of order p) and grown again from there.

Converged Schur vectors stay in the kept basis, so a converged value is never
lost (implicit locking). After every product the Ritz pairs ``(z, y)`` of the
current decomposition are extracted: ``x = V y`` has the residual
``||A x - z x|| / ||x|| = |b^T y| / ||y||`` (``V`` orthonormal), computed without a
product. A value is converged when that residual is ``<= tol * |z_1|`` (``z_1``
the Ritz value of largest modulus). For a non-normal ``A`` the residual is a
backward error (``(z, x)`` is an exact eigenpair of ``A - r x^T / ||x||^2``), not a
bound on the distance to an eigenvalue, which can be larger by the condition
number of the eigenvalue.

Cost: one product per step, ``O(m n)`` for the orthogonalisation and an
``O(m^3)`` dense eigenproblem (``m <= krylov_dim``, small); memory ``(m + 1) x n``
numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.linalg

from stability.validation import check_int, check_positive, check_scalar

__all__ = ["ArnoldiResult", "arnoldi"]


class ArnoldiResult(NamedTuple):
    """Ritz values of largest modulus with their residuals.

    eigenvalues: (k,) complex Ritz values, by decreasing modulus (a real operator's
    complex values come in conjugate pairs, the one with positive imaginary part
    first). residuals: (k,) ``||A x - z x|| / ||x||`` of each Ritz pair (a backward
    error). converged: (k,) bool, ``residual <= tol * |eigenvalues[0]|``.
    products: operator applications used. restarts: Krylov-Schur restarts.
    vectors: (k, n) complex unit Ritz vectors, or None (``return_vectors=False``).
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    products: int
    restarts: int
    vectors: np.ndarray | None = None

    @property
    def radius(self) -> float:
        """``|eigenvalues[0]|``, the spectral radius estimate."""
        return float(np.abs(self.eigenvalues[0]))


def _order(values):
    """Indices by decreasing modulus, a conjugate pair positive imaginary part first."""
    mods = np.abs(values)
    top = mods.max() if mods.size and mods.max() > 0 else 1.0
    return np.lexsort((-values.imag, -np.round(mods / top, 12)))


def _ritz(s, b, k, tol, want_vectors):
    """The ``k`` Ritz pairs of largest modulus of ``S`` (``j x j``) with residuals
    ``|b . y| / ||y||``: ``(values, residuals, converged, y or None)``."""
    values, y = np.linalg.eig(s)
    idx = _order(values)[:k]
    values, y = values[idx], y[:, idx]
    y = y / np.linalg.norm(y, axis=0, keepdims=True)
    res = np.abs(b @ y)
    scale = np.abs(values[0]) if values.size else 0.0
    return values, res, res <= tol * scale, (y if want_vectors else None)


def _orthogonalise(basis, w):
    """``w`` minus its projection on the rows of ``basis`` (classical Gram-Schmidt
    twice: orthogonal to working precision), and the coefficients."""
    h = basis @ w
    w = w - h @ basis
    h2 = basis @ w
    return w - h2 @ basis, h + h2


def _schur_truncation(s, keep):
    """Real Schur form of ``s`` ordered with the Ritz values of largest modulus first:
    ``(T, Q, p)``, ``p >= 1`` the leading order kept (about ``keep``; never splitting a
    2x2 block of a conjugate pair, and less than ``s``'s order)."""
    m = s.shape[0]
    mods = np.sort(np.abs(np.linalg.eigvals(s)))[::-1]
    thresh = mods[min(keep, m) - 1] * (1 - 1e-10)

    def select(re, im):
        return np.hypot(re, im) >= thresh

    t, q, sdim = scipy.linalg.schur(s, output="real", sort=select)
    p = int(min(max(sdim, 1), m - 1))
    if 0 < p < m and t[p, p - 1] != 0:  # p would split a 2x2 block
        p = p + 1 if p + 1 < m else p - 1
    return t, q, max(p, 1)


def arnoldi(
    matvec: Callable,
    v0,
    *,
    k: int = 1,
    tol: float = 1e-10,
    max_products: int = 1000,
    krylov_dim: int | None = None,
    return_vectors: bool = False,
    stop_when: Callable | None = None,
    seed: int = 0,
) -> ArnoldiResult:
    """The ``k`` eigenvalues of largest modulus of a real linear operator (module
    docstring: Krylov-Schur).

    Args:
      matvec: ``x -> A x`` for a real flat vector ``x`` of ``v0``'s length (numpy or
        JAX in, anything ``np.asarray`` reads out); called once per product.
      v0: the start vector (n,), nonzero (a random one is usual).
      k: how many eigenvalues (1 <= k < n; a conjugate pair counts as two).
      tol: converged when every wanted residual is ``<= tol * |z_1|``.
      max_products: most operator applications (the run stops there, unconverged
        values flagged).
      krylov_dim: the largest basis ``m`` (default ``max(2 k + 2, 20)``, capped at n).
        Each restart keeps about ``(m + k) / 2`` Schur vectors.
      return_vectors: also return the unit Ritz vectors (k, n), complex.
      stop_when: ``stop_when(estimate: ArnoldiResult) -> bool`` called after every
        product (no vectors); True ends the run.
      seed: seed of the random vector that continues the basis after an exactly
        invariant subspace is found.

    Returns:
      :class:`ArnoldiResult`.
    """
    if not callable(matvec):
        raise TypeError(f"matvec must be callable; got {type(matvec).__name__}")
    x0 = np.asarray(v0, dtype=np.float64)
    if x0.ndim != 1:
        raise ValueError(f"v0 must be a flat vector; got shape {x0.shape}")
    n = x0.shape[0]
    if n < 2:
        raise ValueError(f"v0 must have at least 2 entries; got {n}")
    norm0 = np.linalg.norm(x0)
    if not (np.isfinite(norm0) and norm0 > 0):
        raise ValueError("v0 must be finite and nonzero")
    k = check_int("k", k, 1, n - 1)
    check_scalar("tol", tol)
    check_positive("tol", tol)
    max_products = check_int("max_products", max_products, 1)
    m = max(2 * k + 2, 20) if krylov_dim is None else check_int("krylov_dim", krylov_dim, k + 2)
    m = min(m, n)
    if m < k + 1:
        raise ValueError(f"krylov_dim must be > k={k} (and <= n={n}); got {krylov_dim!r}")
    if stop_when is not None and not callable(stop_when):
        raise TypeError(f"stop_when must be callable or None; got {type(stop_when).__name__}")
    rng = np.random.default_rng(seed)
    keep = min(m - 1, max(k + 1, (m + k) // 2))

    basis = np.zeros((m + 1, n))
    r = np.zeros((m + 1, m))  # A V_j = V_{j+1} R[:j+1, :j]
    basis[0] = x0 / norm0
    p, products, restarts = 0, 0, 0
    scale = 0.0  # a running |A| estimate for the breakdown test
    while True:
        j = p
        result = None
        while j < m:
            w = np.asarray(matvec(basis[j]), dtype=np.float64).reshape(-1)
            if w.shape != (n,):
                raise ValueError(f"matvec must return a vector of {n} entries; got {w.shape}")
            if not np.all(np.isfinite(w)):
                raise ValueError("matvec returned NaN or inf")
            products += 1
            w, h = _orthogonalise(basis[: j + 1], w)
            beta = np.linalg.norm(w)
            scale = max(scale, np.linalg.norm(h), beta)
            r[: j + 1, j] = h
            if beta <= 1e-13 * scale:  # an invariant subspace: continue at random
                r[j + 1, j] = 0.0
                basis[j + 1] = 0.0
                if j + 1 < n:  # (else the basis spans the space: the values are exact)
                    w, _ = _orthogonalise(basis[: j + 1], rng.standard_normal(n))
                    w, _ = _orthogonalise(basis[: j + 1], w)
                    basis[j + 1] = w / np.linalg.norm(w)
            else:
                r[j + 1, j] = beta
                basis[j + 1] = w / beta
            j += 1
            if j >= min(k, m - 1) or j == m:
                vals, res, conv, _ = _ritz(r[:j, :j], r[j, :j], min(k, j), tol, False)
                result = ArnoldiResult(vals, res, conv, products, restarts)
                done = (len(vals) == k and bool(np.all(conv))) or products >= max_products
                if stop_when is not None and stop_when(result):
                    done = True
                if done:
                    return _finish(r, basis, j, k, tol, products, restarts, return_vectors)
        # Krylov-Schur restart: keep the ``p`` Schur vectors of largest modulus.
        t, q, p = _schur_truncation(r[:m, :m], keep)
        b = r[m, :m] @ q[:, :p]
        basis[:p] = q[:, :p].T @ basis[:m]
        basis[p] = basis[m]
        r[:] = 0.0
        r[:p, :p] = t[:p, :p]
        r[p, :p] = b
        restarts += 1


def _finish(r, basis, j, k, tol, products, restarts, return_vectors):
    kk = min(k, j)
    vals, res, conv, y = _ritz(r[:j, :j], r[j, :j], kk, tol, return_vectors)
    vecs = None
    if return_vectors:
        vecs = (basis[:j].T @ y).T
        vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return ArnoldiResult(vals, res, conv, products, restarts, vecs)
