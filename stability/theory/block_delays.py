"""A delay per block of parameters (pipelines): the matrix polynomial and its threshold.

Block b of the parameters (a diagonal 0/1 projector ``P_b``, the blocks a partition)
receives the gradient of the weights of step ``t - tau_b``. Linearised at a minimum
with Hessian ``H``, plain delayed SGD is ``e_{t+1} = e_t - lr sum_b P_b H e_{t - tau_b}``;
a rule of ``stability.theory.rules`` whose scalar polynomial is ``A(z) + q B(z)`` for
the delay polynomial ``D(z)`` gives the matrix polynomial (docs/theory.md section 18)

    M(z) = A(z) I + lr sum_b B_b(z) K_b,      B_b = B for D_b(z) = z^(T - tau_b),

``T = max_b tau_b`` and ``K_b = P_b H`` (``block_curvatures``) or any square
"per-block curvature" matrices, e.g. the reduced ``Lambda^1/2 V^T P_b V Lambda^1/2`` of
top-k Ritz pairs ``(V, Lambda)`` (exact for a rank-k H: docs/theory.md (56)). The
iteration is stable iff every root of ``det M(z)`` lies inside the unit circle.
``P_b`` and ``H`` do not commute in general, so M does not split along H's
eigenvectors and there is no scalar ``q`` per eigenvalue: the functions here work
with the matrices.

This needs ``A`` to be the same polynomial for every block (true for ``gd``,
``heavy_ball``, ``nesterov`` and ``preconditioned_adam``: their A is ``z^T`` times a
delay-free factor) and ``B`` linear in ``D`` (the stale gradient enters once). A
rule whose ``A`` depends on ``D`` (``shifted``: per-worker buffers, unless beta = 0 or
every delay is the same) is refused with a ValueError naming it; the check is
generic (A computed for each block's D and compared), so a new rule needs no flag.
A rule without a polynomial (``OptaxRule``) is refused too.

Everything is numpy float64 on the host (small dense matrices: ``n`` the parameter
count of a toy problem or ``k`` Ritz vectors); the functions are pure.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
from scipy.optimize import brentq, linear_sum_assignment

from stability.theory.rules.base import Rule, as_rule
from stability.validation import check_finite, check_int, check_lr, check_option, check_scalar

__all__ = [
    "BlockPolynomial",
    "BlockThreshold",
    "block_companion_matrix",
    "block_curvatures",
    "block_max_stable_lr",
    "block_polynomial",
    "block_spectral_radius",
    "block_threshold",
]

# The largest delay accepted: it sets the degree T + 2 of M, the order n (T + 2) of
# the dense companion and the number of angles of the locus grid (about 64 T).
MAX_BLOCK_DELAY = 1000
METHODS = ("auto", "locus")

# Relative size below which an eigenvalue of sum_b K_b counts as zero (its roots stay
# at z = 1 for every lr) and below which two blocks count as decoupled.
_ZERO = 1e-11

# Angles per unit of delay in the locus grid, 32 (T + 4) in all (the locus turns
# about T + 1 times; 8 per unit passed the randomised checks too).
_GRID_PER_DELAY = 32


class BlockPolynomial(NamedTuple):
    """``M(z) = a(z) I + lr sum_b b[b](z) K_b``; coefficients in descending powers.

    a: shape ``(N + 1,)``, monic (``a[0] == 1``), the same for every block.
    b: shape ``(num_blocks, N + 1)``, ``b[:, 0] == 0`` (so M's leading coefficient is I).
    """

    a: np.ndarray
    b: np.ndarray

    @property
    def degree(self) -> int:
        """N, the degree of M (``det M`` has ``n N`` roots)."""
        return self.a.shape[-1] - 1

    @property
    def num_blocks(self) -> int:
        """The number of blocks (rows of ``b``)."""
        return self.b.shape[0]

    def coefficients(self, curvatures, lr) -> np.ndarray:
        """M's matrix coefficients ``C_j = a_j I + lr sum_b b_bj K_b``, shape ``(N + 1,
        n, n)`` (descending powers; ``C_0 = I``), for checked ``(num_blocks, n, n)``
        curvatures and a float lr."""
        k = np.asarray(curvatures, np.float64)
        eye = np.eye(k.shape[-1])
        return self.a[:, None, None] * eye + lr * np.einsum("bj,bkl->jkl", self.b, k)


class BlockThreshold(NamedTuple):
    """The first loss of stability as lr grows (Python numbers).

    lr: the threshold: every root of ``det M`` is inside the unit circle for every
      lr' in (0, lr) and one lies on it at lr (inf if none ever reaches it; 0.0 if a
      root leaves z = 1 outwards at once: sum_b K_b with an eigenvalue of negative
      real part).
    theta: the angle in [0, pi] of the root on the circle at ``lr`` (nan if inf).
    z: that root, ``exp(i theta)`` (its conjugate is one too).
    """

    lr: float
    theta: float
    z: complex


# ---------------------------------------------------------------------------- checks


def _check_delays(delays) -> tuple[int, ...]:
    if not isinstance(delays, (list, tuple, str, bytes)) and hasattr(delays, "dtype"):
        arr = np.asarray(delays)  # a numpy or JAX array of integers
        if arr.ndim == 1 and arr.dtype.kind in "iu":
            delays = arr.tolist()
    if isinstance(delays, (str, bytes)) or np.ndim(delays) != 1:
        raise ValueError(
            f"delays must be a 1-D sequence of integers >= 0 (one per block); got {delays!r}"
        )
    if len(delays) == 0:
        raise ValueError("delays must name at least one block; got an empty sequence")
    out = []
    for i, d in enumerate(delays):
        if isinstance(d, np.integer):
            d = int(d)
        out.append(check_int(f"delays[{i}]", d, 0, MAX_BLOCK_DELAY))
    return tuple(out)


def _check_beta(rule: Rule, beta) -> float:
    check_scalar("beta", beta)
    rule.check_beta(beta, "beta")
    return float(beta)


def _check_curvatures(curvatures, num_blocks: int) -> np.ndarray:
    try:
        k = np.asarray(curvatures)
    except (TypeError, ValueError) as err:
        raise TypeError(f"curvatures must be an array (num_blocks, n, n); got {err}") from None
    if k.dtype.kind not in "iuf" or k.dtype == np.bool_:
        raise TypeError(f"curvatures must be a real array (num_blocks, n, n); got dtype {k.dtype}")
    if k.ndim != 3 or k.shape[1] != k.shape[2] or k.shape[1] == 0:
        raise ValueError(
            f"curvatures must have shape (num_blocks, n, n) with n >= 1; got {k.shape}"
        )
    if k.shape[0] != num_blocks:
        raise ValueError(
            f"curvatures must hold one matrix per delay: {num_blocks} delays, got "
            f"{k.shape[0]} matrices (shape {k.shape})"
        )
    k = k.astype(np.float64)
    check_finite("curvatures", k)
    return k


def _rule_name(rule: Rule) -> str:
    return rule.name or str(rule)


def _polynomial(rule: Rule, delays: tuple[int, ...], beta: float) -> BlockPolynomial:
    """A and the B_b of checked arguments; refuses rules whose A depends on D."""
    t = max(delays)
    beta_arr = np.asarray(beta, np.float64)
    found = {}
    for tau in sorted(set(delays)):
        d = np.zeros(t + 1)
        d[tau] = 1.0  # D_b(z) = z^(T - tau_b), descending powers
        try:
            a, b = rule.polynomial(d, beta_arr, np)
        except NotImplementedError as err:
            raise ValueError(
                f"momentum={_rule_name(rule)!r} has no characteristic polynomial, so it "
                f"has no block-delay threshold ({err})"
            ) from None
        a = np.asarray(a, np.float64).reshape(-1)
        b = np.asarray(b, np.float64).reshape(-1)
        found[tau] = (a, np.pad(b, (a.size - b.size, 0)))
    a0 = found[delays[0]][0]
    for a, _ in found.values():
        if a.shape != a0.shape or not np.array_equal(a, a0):
            raise ValueError(
                f"momentum={_rule_name(rule)!r} is not supported with a delay per block: "
                "its A(z) depends on the delay polynomial (A is not the same for every "
                "block, so M(z) is not A(z) I + lr sum_b B_b(z) K_b); use gd, heavy_ball, "
                "nesterov or preconditioned_adam, or one delay for every block"
            )
    b = np.stack([found[tau][1] for tau in delays])
    if a0[0] != 1.0 or np.any(b[:, 0] != 0.0):
        raise ValueError(
            f"momentum={_rule_name(rule)!r}: A must be monic and of higher degree than B "
            "(M's leading coefficient must be I)"
        )
    return BlockPolynomial(a0, b)


# ------------------------------------------------------------------------ polynomial


def block_polynomial(delays, beta=0.0, *, momentum="heavy_ball") -> BlockPolynomial:
    """The coefficients of ``M(z) = A(z) I + lr sum_b B_b(z) K_b`` (docs/theory.md (51)).

    ``A`` and ``B_b`` are the rule's polynomial (`stability.characteristic_polynomial`)
    for the delay polynomial ``D_b(z) = z^(T - tau_b)``, ``T = max(delays)``: for the
    heavy ball ``A = z^T (z - 1)(z - beta)`` and ``B_b = z^(T - tau_b + 1)``.

    Args:
      delays: one integer ``tau_b`` in [0, 1000] per block (repeats allowed).
      beta: the rule's momentum coefficient, a single number.
      momentum: a rule name or a `stability.theory.rules.Rule` whose A does not depend
        on the delay (see the module docstring; ``shifted`` only with one delay for
        every block or beta = 0).

    Returns:
      `BlockPolynomial` ``(a, b)``: ``a`` of shape ``(N + 1,)``, ``b`` of shape
      ``(len(delays), N + 1)``, float64, descending powers (N = T + 2 for the
      momentum rules and gd).
    """
    delays = _check_delays(delays)
    rule = as_rule(momentum, "momentum")
    return _polynomial(rule, delays, _check_beta(rule, beta))


def block_curvatures(hessian, blocks) -> np.ndarray:
    """``K_b = P_b H``: the rows of block b of a dense Hessian, zeros elsewhere.

    Args:
      hessian: a real ``(n, n)`` matrix (need not be symmetric).
      blocks: the block of each coordinate, integers ``0 .. num_blocks - 1`` of shape
        ``(n,)``; ``num_blocks = max(blocks) + 1`` (a block may be empty).

    Returns:
      float64 array ``(num_blocks, n, n)`` with ``sum_b K_b = H``.
    """
    h = np.asarray(hessian)
    if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] == 0:
        raise ValueError(f"hessian must be a square (n, n) matrix; got shape {h.shape}")
    if h.dtype.kind not in "iuf" or h.dtype == np.bool_:
        raise TypeError(f"hessian must be a real matrix; got dtype {h.dtype}")
    h = h.astype(np.float64)
    check_finite("hessian", h)
    labels = np.asarray(blocks)
    if labels.shape != (h.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"blocks must be integers of shape ({h.shape[0]},) (one per coordinate); got "
            f"{labels.dtype} array of shape {labels.shape}"
        )
    if np.any(labels < 0):
        raise ValueError(f"blocks must be >= 0; got {labels[labels < 0][:5].tolist()}")
    masks = labels[None, :] == np.arange(int(labels.max()) + 1)[:, None]
    return masks[:, :, None] * h[None, :, :]


# ------------------------------------------------------------------ dense oracle


def _companion(poly: BlockPolynomial, k: np.ndarray, lr: float) -> np.ndarray:
    c = poly.coefficients(k, lr)
    big_n, n = poly.degree, k.shape[-1]
    out = np.zeros((big_n * n, big_n * n))
    out[:n, :] = -np.concatenate(list(c[1:]), axis=1)
    out[n:, :-n] = np.eye((big_n - 1) * n)
    return out


def block_companion_matrix(curvatures, delays, lr, beta=0.0, *, momentum="heavy_ball"):
    """The ``(n N, n N)`` block companion matrix of M (docs/theory.md (52)).

    First block row ``-C_1, ..., -C_N`` (``M(z) = sum_j C_j z^(N - j)``, ``C_0 = I``),
    identities below the diagonal: its eigenvalues are the roots of ``det M(z)``,
    with multiplicity, and it is the one-step map of ``(y_t, ..., y_{t-N+1})`` under
    ``sum_j C_j y_{t+1-j} = 0``.

    Args:
      curvatures: ``(num_blocks, n, n)`` real, ``K_b`` (e.g. `block_curvatures`).
      delays: one integer per block (see `block_polynomial`).
      lr: the learning rate, > 0.
      beta: the rule's momentum coefficient.
      momentum: a rule name or `stability.theory.rules.Rule` (see `block_polynomial`).

    Returns:
      float64 numpy array of shape ``(n N, n N)``.
    """
    delays = _check_delays(delays)
    k = _check_curvatures(curvatures, len(delays))
    check_scalar("lr", lr)
    check_lr(lr)
    rule = as_rule(momentum, "momentum")
    poly = _polynomial(rule, delays, _check_beta(rule, beta))
    return _companion(poly, k, float(lr))


def block_spectral_radius(curvatures, delays, lr, beta=0.0, *, momentum="heavy_ball") -> float:
    """The largest root modulus of ``det M(z)``: the per-step growth factor.

    The dense oracle for small ``n``: every eigenvalue of `block_companion_matrix`
    (O((n N)^3) work, n N = n (max delay + 2)). Same arguments as
    `block_companion_matrix`; returns a Python float (stable iff < 1).
    """
    c = block_companion_matrix(curvatures, delays, lr, beta, momentum=momentum)
    return float(np.max(np.abs(np.linalg.eigvals(c))))


# ------------------------------------------------------------------ thresholds


def _unit_circle(poly: BlockPolynomial, k: np.ndarray, theta: np.ndarray):
    """``A(z)`` and ``K(z) = sum_b B_b(z) K_b`` at ``z = exp(i theta)``."""
    z = np.exp(1j * theta)
    powers = z[:, None] ** np.arange(poly.degree, -1, -1)
    a = powers @ poly.a
    kz = np.einsum("mj,bj,bkl->mkl", powers, poly.b, k)
    return a, kz


def _track(values: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Order each row's eigenvalues along continuous branches: row k + 1 is matched
    to the linear extrapolation of rows k - 1, k (nearest, or the optimal assignment
    when the nearest is not a permutation)."""
    out = np.empty_like(values)
    out[0] = values[0]
    n = values.shape[1]
    for k in range(1, values.shape[0]):
        pred = out[k - 1]
        if k >= 2:
            step = (theta[k] - theta[k - 1]) / (theta[k - 1] - theta[k - 2])
            pred = pred + step * (out[k - 1] - out[k - 2])
        dist = np.abs(pred[:, None] - values[k][None, :])
        idx = np.argmin(dist, axis=1)
        if np.unique(idx).size < n:
            idx = linear_sum_assignment(dist)[1]
        out[k] = values[k][idx]
    return out


def _grid(t: int, conservative: bool) -> np.ndarray:
    m = _GRID_PER_DELAY * (t + 4)
    uniform = np.linspace(0.0, np.pi, m + 1)
    if not conservative:
        return uniform
    # near z = 1 the locus is -A'(1) i theta / kappa: a geometric start resolves it
    head = np.geomspace(np.pi * 1e-10, uniform[1], 48, endpoint=False)
    return np.concatenate([head, uniform[1:]])


def _from_scalar(rule: Rule, tau: int, beta: float, scale: float) -> BlockThreshold | None:
    from stability.theory.boundary_locus import stability_threshold  # jax: only here

    thr = stability_threshold(tau, beta, momentum=rule)
    if not bool(thr.reliable) or not math.isfinite(float(thr.q_max)):
        return None
    theta = float(thr.theta)
    return BlockThreshold(float(thr.q_max) / scale, theta, complex(np.exp(1j * theta)))


def _decoupled(rule, delays, beta, k, eig_sum) -> BlockThreshold | None:
    """The closed form when the blocks decouple: one delay for all, or mutually
    annihilating K_b (``K_b K_c = 0``, as ``P_b H`` when ``P_b H = H P_b``); each block's
    real nonzero eigenvalues then see the scalar threshold of its own delay."""
    if len(set(delays)) == 1:
        groups = [(delays[0], eig_sum)]
    else:
        norms = np.linalg.norm(k, axis=(1, 2))
        for b in range(len(delays)):
            for c in range(len(delays)):
                if b != c and np.linalg.norm(k[b] @ k[c]) > _ZERO * norms[b] * norms[c]:
                    return None
        groups = [(tau, np.linalg.eigvals(kb)) for tau, kb in zip(delays, k, strict=True)]
    best = None
    top = max(float(np.max(np.abs(e))) for _, e in groups)
    for tau, e in groups:
        e = e[np.abs(e) > _ZERO * top]
        if e.size == 0:
            continue
        if np.any(np.abs(e.imag) > _ZERO * top) or np.any(e.real < 0):
            return None  # complex or negative curvatures: the locus decides
        found = _from_scalar(rule, tau, beta, float(np.max(e.real)))
        if found is None:
            return None
        if best is None or found.lr < best.lr:
            best = found
    return best


def _locus(poly: BlockPolynomial, k: np.ndarray, rtol: float) -> BlockThreshold:
    """The smallest real positive ``l_j(theta) = -A(e^{i theta}) / kappa_j(theta)``,
    ``kappa_j`` the eigenvalues of ``K(e^{i theta})`` (docs/theory.md (53))."""
    a_at_1 = float(np.sum(poly.a))
    scale = float(np.max(np.abs(poly.a)))
    conservative = abs(a_at_1) <= 1e-13 * scale
    k1 = np.einsum("j,bj,bkl->kl", np.ones(poly.degree + 1), poly.b, k)  # K(1)
    kappa1 = np.linalg.eigvals(k1)
    top = float(np.max(np.abs(kappa1)))
    if top == 0.0 and not np.any(k):
        return BlockThreshold(math.inf, math.nan, complex(math.nan, math.nan))
    if conservative:
        da1 = float(np.polyval(np.polyder(poly.a), 1.0))
        moving = kappa1[np.abs(kappa1) > _ZERO * top] / da1  # z ~ 1 - lr kappa / A'(1)
        if np.any(moving.real < -_ZERO * np.abs(moving)):
            return BlockThreshold(0.0, 0.0, 1.0 + 0.0j)
        if np.any(moving.real <= _ZERO * np.abs(moving)):
            raise ValueError(
                "sum_b K_b has an eigenvalue on the imaginary axis: the root at z = 1 "
                "does not move inwards to first order in lr; got eigenvalues "
                f"{(moving * da1)[moving.real <= _ZERO * np.abs(moving)][:5].tolist()}"
            )
    theta = _grid(max(poly.degree - 2, 0), conservative)
    a_z, k_z = _unit_circle(poly, k, theta)
    kappa = _track(np.linalg.eigvals(k_z), theta)
    cap = max(top, float(np.max(np.abs(kappa))))
    with np.errstate(divide="ignore", invalid="ignore"):
        locus = -a_z[:, None] / kappa
    alive = np.abs(kappa) > _ZERO * cap  # kappa = 0: a null direction, l = inf
    candidates = []  # (estimate, theta_lo, theta_hi, branch) or exact endpoint values
    exact = []
    for end in (0, -1):
        if end == 0 and conservative:
            continue
        th = float(theta[end])
        z = np.cos(th)  # +1 or -1: real matrices, real eigenvalues exactly real
        a_real = float(np.polyval(poly.a, z))
        kr = np.einsum("j,bj,bkl->kl", z ** np.arange(poly.degree, -1, -1), poly.b, k)
        ev = np.linalg.eigvals(kr)
        ev = ev[(ev.imag == 0) & (np.abs(ev) > _ZERO * cap)].real
        for value in -a_real / ev:
            if value > 0:
                exact.append((float(value), th))
    im = locus.imag
    change = alive[:-1] & alive[1:] & (np.sign(im[:-1]) * np.sign(im[1:]) <= 0)
    change &= ~((im[:-1] == 0) & (im[1:] == 0))
    for i, j in zip(*np.nonzero(change), strict=True):
        lo, hi = locus[i, j], locus[i + 1, j]
        w = lo.imag / (lo.imag - hi.imag) if lo.imag != hi.imag else 0.0
        estimate = (lo + w * (hi - lo)).real
        if estimate > 0:
            candidates.append((estimate, i, j))
    candidates.sort()
    best = min(exact, default=(math.inf, math.nan))
    for estimate, i, j in candidates:
        if estimate > 1.1 * best[0]:
            break
        found = _refine(poly, k, theta[i], theta[i + 1], kappa[i, j], kappa[i + 1, j], rtol)
        if found is not None and found[0] < best[0]:
            best = found
    lr, th = best
    if not math.isfinite(lr):
        return BlockThreshold(math.inf, math.nan, complex(math.nan, math.nan))
    return BlockThreshold(float(lr), float(th), complex(np.exp(1j * th)))


def _refine(poly, k, lo, hi, kappa_lo, kappa_hi, rtol):
    """Brent on ``Im l(theta)`` along one branch (the eigenvalue nearest the branch's
    linear interpolation); None if the root is a pole (kappa through 0) or l < 0."""

    def value(th):
        a_z, k_z = _unit_circle(poly, k, np.array([th]))
        ev = np.linalg.eigvals(k_z[0])
        w = (th - lo) / (hi - lo)
        guess = kappa_lo + w * (kappa_hi - kappa_lo)
        kap = ev[np.argmin(np.abs(ev - guess))]
        return -a_z[0] / kap

    f_lo, f_hi = value(lo).imag, value(hi).imag
    if f_lo == 0.0:
        th = lo
    elif f_hi == 0.0:
        th = hi
    elif f_lo * f_hi > 0:
        return None
    else:
        th = brentq(lambda x: value(x).imag, lo, hi, xtol=1e-300, rtol=rtol, maxiter=200)
    # every branch real and positive at th crosses there (all of them at once when
    # the blocks decouple): the smallest, not only the one followed
    a_z, k_z = _unit_circle(poly, k, np.array([th]))
    with np.errstate(divide="ignore", invalid="ignore"):
        ells = -a_z[0] / np.linalg.eigvals(k_z[0])
    real = (ells.real > 0) & (np.abs(ells.imag) <= 1e-8 * np.abs(ells))
    if not np.any(real):
        return None
    return float(np.min(ells.real[real])), float(th)


def block_threshold(
    curvatures, delays, beta=0.0, *, momentum="heavy_ball", rtol=1e-12, method="auto"
) -> BlockThreshold:
    """The first learning rate at which a root of ``det M(z)`` reaches the unit circle.

    Boundary locus (docs/theory.md (53)): a root lies at ``z = e^{i theta}`` exactly when
    ``lr`` is a real positive value of ``l_j(theta) = -A(z) / kappa_j(z)``, ``kappa_j``
    the eigenvalues of ``K(z) = sum_b B_b(z) K_b``. Those eigenvalues are computed on a
    grid of ``32 (T + 4)`` angles in [0, pi] (geometric near 0, where the locus
    starts at 0), followed along continuous branches, and every sign change of ``Im
    l_j`` whose estimate could be the smallest is refined by Brent's method on the
    angle; the real eigenvalues at ``z = -1`` (and ``z = 1`` for a rule with ``A(1) !=
    0``, Adam with decay) are crossings too. Returns the smallest crossing: below it
    every root is inside the circle. The stable set in lr need not be an interval
    (a root may come back in at a larger lr); the first crossing is what is returned.
    A branch that crosses the real axis twice within one grid cell (pi / (32 (T + 4))
    wide) is missed: the tests check the result against the dense radius.

    With ``method="auto"`` the blocks are first tested for decoupling: one delay for
    every block gives ``q_max(tau, beta) / lambda_max(sum_b K_b)``
    (`stability.stability_threshold`), and mutually annihilating ``K_b`` (``K_b K_c =
    0``, e.g. ``P_b H = H P_b``) the smallest ``q_max(tau_b, beta) / lambda_max(K_b)``,
    when those eigenvalues are real; ``method="locus"`` always runs the locus.

    Requirements on ``S = sum_b K_b`` (``K(1) = B(1) S``, so ``z = 1`` is a root of det M
    at every lr exactly when S is singular, for a rule with ``A(1) = 0``):

    - a zero eigenvalue of S (to relative 1e-11; a Hessian's null space) keeps a
      root at z = 1 for every lr: those roots are excluded, the threshold is that of
      the others (in `block_spectral_radius` they still count, giving radius 1);
    - an eigenvalue with negative real part moves a root outwards from z = 1 at
      once: the threshold is 0.0 (no stable lr);
    - a nonzero eigenvalue on the imaginary axis raises ValueError (undecided to
      first order).

    Args:
      curvatures: ``(num_blocks, n, n)`` real, ``K_b`` (e.g. `block_curvatures`, or
        reduced ``k x k`` matrices from Ritz pairs).
      delays: one integer per block (see `block_polynomial`).
      beta: the rule's momentum coefficient.
      momentum: a rule name or `stability.theory.rules.Rule` (see `block_polynomial`).
      rtol: Brent's relative tolerance on the crossing angle, in [4.5e-16, 1e-3]
        (the lr's relative error is about ``(T + 1) rtol`` plus the eigenvalue
        solver's rounding; measured below 1e-12 with the default).
      method: ``"auto"`` (closed forms when the blocks decouple) or ``"locus"``.

    Returns:
      `BlockThreshold` ``(lr, theta, z)`` of Python numbers.
    """
    delays = _check_delays(delays)
    k = _check_curvatures(curvatures, len(delays))
    rule = as_rule(momentum, "momentum")
    beta = _check_beta(rule, beta)
    check_option("method", method, METHODS)
    if (
        isinstance(rtol, bool)
        or not isinstance(rtol, numbers.Real)
        or not (4.5e-16 <= rtol <= 1e-3)
    ):
        raise ValueError(f"rtol must be a number in [4.5e-16, 1e-3]; got {rtol!r}")
    poly = _polynomial(rule, delays, beta)
    roots = np.roots(poly.a)
    others = np.delete(roots, np.argmin(np.abs(roots - 1.0)))
    if np.any(np.abs(others) >= 1.0):
        raise ValueError(
            f"momentum={_rule_name(rule)!r} with beta={beta!r}: A(z) has roots on or outside "
            f"the unit circle besides z = 1 ({others[np.abs(others) >= 1.0].tolist()}): no "
            "lr is stable"
        )
    if method == "auto" and abs(float(np.sum(poly.a))) <= 1e-13:
        found = _decoupled(rule, delays, beta, k, np.linalg.eigvals(k.sum(axis=0)))
        if found is not None:
            return found
    return _locus(poly, k, float(rtol))


def block_max_stable_lr(
    curvatures, delays, beta=0.0, *, momentum="heavy_ball", rtol=1e-12, method="auto"
) -> float:
    """The largest lr such that for every lr' in (0, lr) all roots of ``det M(z)`` lie
    inside the unit circle: ``block_threshold(...).lr`` (see `block_threshold` for the
    method, the arguments and what a singular ``sum_b K_b`` gives). Units: 1 / the
    curvatures' units. For one delay tau for every block and ``K_b = P_b H`` this is
    `stability.max_stable_lr` ``(lambda_max(H), tau, beta)``."""
    return block_threshold(curvatures, delays, beta, momentum=momentum, rtol=rtol, method=method).lr
