"""Delay distributions at scale: thresholds and spectral radii in O(K log K).

For delay probabilities ``p_k`` (k = 0..K) every momentum rule's characteristic
polynomial (``stability.theory.rules``) is ``P(z) = z^K V(z)`` with

    V(z) = U(z) + (w1 z + w0) S(z),      S(z) = sum_k p_k z^-k,

- heavy_ball: U = (z - 1)(z - beta), w1 = q,              w0 = 0
- nesterov:   U = (z - 1)(z - beta), w1 = q (1 + beta),   w0 = -q beta
- shifted:    U = z (z - 1),         w1 = q - beta,       w0 = beta

(q = lr * sharpness; a fixed delay tau is S = z^-tau, ``stability.theory.dominant_root``'s
sparse form). Everything below evaluates S, never the dense coefficients of P: on a
uniform grid of M angles by one real FFT of the (scaled) p_k, O(M log M), and at
any other point by a blocked direct sum, O(K) (``_PowerSums``). No eigenvalues.

Threshold (boundary locus). On ``z = e^{i theta}`` a root is on the unit circle at
``q = -(U + W0 S) / (W1 S)``; with ``q = 2 sin(theta/2) Q(theta)``,

    Q = -i e^{i theta/2} G,  G = (1 - beta/z) / S  (heavy_ball),
        G = (z - beta) / (((1 + beta) z - beta) S)  (nesterov),
        G = 1/S - beta/z  (shifted),

q is real and positive iff Q is (theta in (0, pi]; Q(0) = -i (1 - beta) is off the
positive axis, so the root z = 1 of q = 0 needs no special case). q_max, the
smallest positive real value, is found and certified by branch and bound over
angle intervals: on an interval of half-width r around c, S lies in the disc of
radius ``r |S'(c)| + r^2 sum_k k^2 p_k / 2`` (Taylor) around S(c), and disc
arithmetic carries that to a disc containing Q on the interval, plus a lower bound
on |Q| (|S| <= 1). An interval is discarded when that disc misses the segment
``[0, q_best (1 - TOLERANCE) / (2 sin(theta_lo / 2))]`` (no positive crossing with
q below the best crossing found), or when |Q| is provably larger than its end.
Intervals left are halved (S at the new centres by direct sums); sign changes of
Im Q between neighbouring samples with Re Q > 0 are refined by safeguarded Newton
to full precision and lower q_best. When no interval is left, ``q_max`` lies in
``[q_best (1 - TOLERANCE), q_best]`` (q_best is itself a crossing): certified.
Rounding of every evaluation (FFT and direct sums) is added to the discs. Running
out of the evaluation budget (a locus that touches the axis without crossing it,
nearly coincident crossings, |S| at rounding level at the crossing) leaves
``reliable = False``; nothing is reported as reliable without that certificate.

Spectral radius. N(R), the number of roots of P in |z| < R, is K plus the change
of arg V over the upper half circle |z| = R divided by pi (P has real
coefficients). V and dV/dtheta on the grid come from two FFTs of the weights
``p_k R^-k`` (scaled against overflow); an arc is certified when the disc
``|V - V(t)| <= h |V_theta(t)| + h^2 C2 / 2 + rounding`` around one of its end
points excludes 0 (then arg V moves by less than pi/2 along it), and arcs that are
not are halved with direct sums, as in ``stability.theory.dominant_root`` a count is
trusted only when it is certified. The dominant root is found by Newton's method
on V (direct sums, O(K) per step) from z = 1 and from one Newton projection per
grid point near each count circle; bisection on R with certified counts keeps a
bracket ``N(R_lo) < K + 2 = N(R_hi)`` and supplies new starting circles. The result
rho_hat (the modulus of a Newton root) is certified like the fixed-delay radius:
``N(rho_hat (1 + TOLERANCE)) = K + 2`` and ``N(rho_hat (1 - TOLERANCE)) < K + 2``.

Costs (K = largest delay with p_K > 0; trailing zeros of p change nothing and are
dropped): threshold O(K log K) for the grid plus O(K) per direct sum (a few hundred
of them near the crossing, ~30 halvings to reach TOLERANCE); spectral radius
O(K log K) per count (a handful of counts) plus O(K) per Newton step. Numpy on the
host: the inputs are concrete probabilities, the work is FFTs and small BLAS
products that XLA would not do faster on CPU, and data-dependent refinement loops
are natural here and awkward under jit. The public functions call these through
``jax.pure_callback`` when their arguments are traced.

Reference: P. Henrici, *Applied and Computational Complex Analysis*, vol. 1 (1974),
sections 4.10 (argument principle) and 6.10 (Newton); disc (circular) arithmetic:
Alefeld and Herzberger, *Introduction to Interval Computations* (1983), ch. 5.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import NamedTuple

import numpy as np

from stability.theory.delays import DelayDistribution
from stability.theory.discs import disc_product as _dmul
from stability.theory.rules import Rule, as_rule, rule_polynomial

TOLERANCE = 1e-10  # relative certificate of thresholds and spectral radii
_EPS = float(np.finfo(np.float64).eps)
_MAX_LEVELS = 120  # interval halvings in one threshold / count
_MAX_WORK = 4e7  # terms summed directly in one threshold / count (~0.1 s)
_MIN_POINTS = 4000  # direct evaluations allowed whatever K
_CANDIDATES = 8  # grid sign changes refined at once
_SPLIT = 8  # children per interval and level of the branch and bound
_NEWTON_STARTS = 8
_NEWTON_STEPS = 40
_TAYLOR_TERMS = 12  # terms of the angle Taylor series in root counts


@functools.cache
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a dependency; absent only in a broken install
        return None
    return ThreadpoolController()


def _single_threaded():
    """BLAS on one thread: the products here are small (< 1e7 flops), and a thread
    pool only adds wake-up latency (measured 16 ms instead of 0.1 ms for a 948 x 128 x 8
    product on the loaded 2-core machine)."""
    controller = _blas_controller()
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def trimmed(probabilities) -> np.ndarray:
    """The probabilities as float64 without trailing zeros (they do not change S on
    the circle nor the nonzero roots of P)."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    nz = np.flatnonzero(p)
    if nz.size == 0:
        raise ValueError("probabilities must not be all zero")
    return p[: nz[-1] + 1]


def _grid_size(k: int, factor: int) -> int:
    """The smallest M = 2^a 3^b 5^c >= factor (k + 2), at least 64: the grid theta_j =
    pi j / M (FFT length 2M; pocketfft is fast for these lengths)."""
    target = max(64, factor * (k + 2))
    best = None
    p5 = 1
    while p5 < 2 * target:
        p3 = p5
        while p3 < 2 * target:
            p2 = p3
            while p2 < target:
                p2 *= 2
            best = p2 if best is None else min(best, p2)
            p3 *= 3
        p5 *= 5
    return best


def _fft_error(x: np.ndarray, length: int) -> float:
    """A bound on each entry's rounding error of ``rfft(x, length)``.

    Higham, *Accuracy and Stability of Numerical Algorithms* (2002), thm. 24.2:
    ``||fl(F x) - F x||_2 <= log2(n) eta / (1 - log2(n) eta) ||F x||_2`` with
    ``eta <= 5 eps`` for accurate twiddle factors; ``||F x||_2 = sqrt(n) ||x||_2``,
    and one entry's error is at most the whole error's 2-norm (a safe, loose bound).
    """
    lg = math.log2(length)
    eta = 6 * _EPS
    return lg * eta / (1 - lg * eta) * math.sqrt(length) * float(np.linalg.norm(x)) + _EPS


class _PowerSums:
    """``sum_k c_k exp(-k lam)`` for a few real coefficient vectors c at many complex lam.

    Blocked (k = B m + j): ``exp(-k lam) = exp(-B m lam) exp(-j lam)`` takes K/B + B
    exponentials per point and one real matrix product, not K exponentials. Every
    term's exponent is one rounded product (B m lam, j lam), so each term is exact
    to about ``eps (k |lam| + 3)`` relative, and the two sums add ``(B + K/B) eps``
    of the absolute sum (:meth:`error`).
    """

    def __init__(self, coefficients):
        c = np.atleast_2d(np.asarray(coefficients, dtype=np.float64))
        nc, n1 = c.shape
        b = 8
        while b * b < n1:
            b *= 2
        nb = -(-n1 // b)
        padded = np.zeros((nc, nb * b))
        padded[:, :n1] = c
        self.block = padded.reshape(nc * nb, b)
        self.nc, self.nb, self.b = nc, nb, b
        k = np.arange(n1, dtype=np.float64)
        self.abs_sum = np.abs(c).sum(axis=1)  # (nc,)
        self.moment = np.abs(c) @ k  # sum_k k |c_k|, (nc,)

    def __call__(self, lam, shift=None):
        """(nc, n) complex sums at the points ``lam`` (n,), each times exp(-shift)."""
        lam = np.asarray(lam, dtype=np.complex128).reshape(-1)
        inner_pow = np.exp(-np.outer(lam, np.arange(self.b, dtype=np.float64)))
        outer_arg = -np.outer(lam, self.b * np.arange(self.nb, dtype=np.float64))
        if shift is not None:
            outer_arg = outer_arg - np.asarray(shift, dtype=np.float64).reshape(-1, 1)
        outer_pow = np.exp(outer_arg)  # (n, nb)
        re = self.block @ np.ascontiguousarray(inner_pow.real.T)
        im = self.block @ np.ascontiguousarray(inner_pow.imag.T)
        inner = (re + 1j * im).reshape(self.nc, self.nb, -1)
        return np.einsum("cmi,im->ci", inner, outer_pow)

    def error(self, lam, scale=1.0):
        """Rounding bound of :meth:`__call__` on |lam| = |theta| (the unit circle), (nc, n)."""
        lam = np.abs(np.asarray(lam, dtype=np.complex128).reshape(-1))
        per = (
            2 * _EPS * (np.outer(self.moment, lam) + (self.b + self.nb + 6) * self.abs_sum[:, None])
        )
        return per * scale


# ----------------------------------------------------------------------------
# Threshold


class DistributionThreshold(NamedTuple):
    q_max: float
    theta: float
    reliable: bool


def _q_and_derivative(theta, s, ds, beta, rule: Rule):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        g, dg = rule.locus_g(theta, s, ds, beta)  # G (Q = -i e^{i theta/2} G) and dG/dtheta
    e = -1j * np.exp(0.5j * theta)
    with np.errstate(invalid="ignore", over="ignore"):
        return e * g, e * (0.5j * g + dg)


def _q_at_pi(p: np.ndarray, beta: float, rule: Rule) -> float:
    """Q(pi) = G(pi), real: S(pi) = sum_k (-1)^k p_k summed exactly in real arithmetic."""
    s = float(p[0::2].sum() - p[1::2].sum())
    if s == 0:
        return math.inf
    return rule.q_at_pi(s, beta)


class _Samples(NamedTuple):
    """S and its first two angle derivatives at angles theta, with rounding bounds."""

    theta: np.ndarray
    s: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    e0: np.ndarray
    e1: np.ndarray
    e2: np.ndarray


class _Locus:
    """The locus Q(theta) of one distribution and rule, with certified enclosures."""

    def __init__(self, p: np.ndarray, beta: float, rule: Rule):
        self.p, self.beta, self.rule = p, float(beta), rule
        k = np.arange(p.size, dtype=np.float64)
        self.coefs = np.stack([p, k * p, k * k * p])
        self.mu2 = float((k * k) @ p)
        self.mu3 = float((k * k * k) @ p)
        self.psum = float(p.sum())
        self.sums = _PowerSums(self.coefs)

    def grid(self, m: int) -> _Samples:
        """Samples at theta_j = pi j / M (three FFTs)."""
        theta = np.pi * (np.arange(m + 1) / m)
        f = np.fft.rfft(self.coefs, 2 * m, axis=1)
        f[:, -1] = f[:, -1].real  # theta = pi: real sums
        err = np.array([_fft_error(c, 2 * m) for c in self.coefs])[:, None]
        err = err + self.sums.error(1j * theta)
        return _Samples(theta, f[0], -1j * f[1], -f[2], *err)

    def direct(self, theta) -> _Samples:
        """Samples at any angles (direct sums)."""
        theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        v = self.sums(1j * theta)
        err = self.sums.error(1j * theta)
        return _Samples(theta, v[0], -1j * v[1], -v[2], *err)

    def values(self, x: _Samples):
        return _q_and_derivative(x.theta, x.s, x.s1, self.beta, self.rule)

    def enclosure(self, x: _Samples, r):
        """Discs holding Q and Q' over [theta - r, theta + r], and a lower bound of |Q|.

        Returns (q_c, q_r, lower, dq_c, dq_r); radii are inf where |S| is not bounded
        away from 0 on the interval. Inputs: S, S' and S'' at the centre; the Taylor
        remainders use sum_k k^2 p_k >= |S''| and sum_k k^3 p_k >= |S^(3)|.
        """
        beta, theta = self.beta, x.theta
        rs = r * (np.abs(x.s1) + x.e1) + 0.5 * r * r * self.mu2 + x.e0
        r1 = r * (np.abs(x.s2) + x.e2) + 0.5 * r * r * self.mu3 + x.e1
        abs_s = np.abs(x.s)
        den = abs_s * abs_s - rs * rs
        finite = (abs_s > rs) & (den > 0)
        den = np.where(finite, den, 1.0)
        inv_c = np.conj(x.s) / den  # 1 / D(s, rs) = D(conj(s) / den, rs / den)
        inv_r = rs / den
        inv2_c, inv2_r = _dmul(inv_c, inv_r, inv_c, inv_r)
        s1inv2 = _dmul(x.s1, r1, inv2_c, inv2_r)
        z = np.exp(1j * theta)
        s_max = np.minimum(self.psum, abs_s + rs)
        g_c, g_r, dg_c, dg_r, lower = self.rule.locus_g_disc(
            z, r, beta, (inv_c, inv_r), s1inv2, s_max
        )
        e_c = -1j * np.exp(0.5j * theta)  # Q = e G with |de/dtheta| = 1/2
        q_c, q_r = _dmul(e_c, 0.5 * r, g_c, g_r)
        dq_c, dq_r = _dmul(e_c, 0.5 * r, 0.5j * g_c + dg_c, 0.5 * g_r + dg_r)  # Q' = e (iG/2 + G')
        q_r = np.where(finite, q_r + 16 * _EPS * np.abs(q_c), np.inf)
        dq_r = np.where(finite, dq_r + 16 * _EPS * np.abs(dq_c), np.inf)
        lower = np.maximum(lower, np.where(finite, np.abs(q_c) - q_r, 0.0))
        return q_c, q_r, lower, dq_c, dq_r


def _segment_distance(q, end):
    """Distance from q to the segment [0, end] (end may be inf)."""
    x, y = q.real, q.imag
    beyond = np.where(np.isfinite(end), x > end, False)
    return np.where(
        x < 0, np.abs(q), np.where(beyond, np.hypot(x - np.where(beyond, end, 0.0), y), np.abs(y))
    )


def _live(theta, r, q_c, q_r, lower, q_best):
    """Intervals that may hold a positive crossing below q_best (1 - TOLERANCE)."""
    lo = theta - r
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        end = q_best * (1 - TOLERANCE) / (2 * np.sin(0.5 * np.maximum(lo, 0)))
        end = np.where(lo > 0, end, np.inf)
    end = np.where(np.isnan(end), np.inf, end)
    far = _segment_distance(q_c, end) > q_r
    big = lower > end
    return ~(far | big)


def _refine(locus: _Locus, lo, hi, h_lo):
    """Safeguarded Newton on Im Q in brackets [lo, hi] (Im Q(lo) has sign h_lo)."""
    x = 0.5 * (lo + hi)
    done = np.zeros(x.shape, dtype=bool)
    for _ in range(80):
        q, dq = locus.values(locus.direct(x))
        h, dh = q.imag, dq.imag
        same = np.sign(h) == np.sign(h_lo)
        lo = np.where(done, lo, np.where(same, x, lo))
        hi = np.where(done, hi, np.where(same, hi, x))
        with np.errstate(divide="ignore", invalid="ignore"):
            new = x - h / dh
        inside = np.isfinite(new) & (new > lo) & (new < hi)
        new = np.where(inside, new, 0.5 * (lo + hi))
        now = (h == 0) | (np.abs(new - x) <= 2 * _EPS * x) | (hi - lo <= 4 * _EPS * hi)
        x = np.where(done | (h == 0), x, new)
        done = done | now
        if done.all():
            break
    q, _ = locus.values(locus.direct(x))
    qq = 2 * np.sin(0.5 * x) * q.real
    ok = done & (q.real > 0) & (np.abs(q.imag) <= 1e-8 * np.abs(q)) & np.isfinite(qq)
    return x, np.where(ok, qq, np.inf)


def _crossing_candidates(theta_a, q_a, theta_b, q_b, q_best):
    """Sign changes of Im Q between (theta_a, q_a) and (theta_b, q_b) whose linear
    estimate of the crossing has Re Q > 0 and q below q_best (1 - TOLERANCE)."""
    ha, hb = q_a.imag, q_b.imag
    change = ((ha > 0) & (hb <= 0)) | ((ha < 0) & (hb >= 0))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        w = np.where(change, ha / (ha - hb), 0.0)
        th = theta_a + w * (theta_b - theta_a)
        re = q_a.real + w * (q_b.real - q_a.real)
        est = 2 * np.sin(0.5 * th) * re
    ok = change & (re > 0) & np.isfinite(est) & (est < q_best * (1 - TOLERANCE))
    ok = ok & np.isfinite(q_a) & np.isfinite(q_b)
    return np.flatnonzero(ok), np.where(ok, est, np.inf)


def distribution_threshold(probabilities, beta: float, momentum) -> DistributionThreshold:
    """q_max of a rule under a delay distribution: the smallest q > 0 with a root of
    P on the unit circle, certified to relative ``TOLERANCE`` (module docstring).
    ``momentum``: a rule with the distribution closed forms, or its name."""
    with _single_threaded():
        return _threshold(probabilities, beta, as_rule(momentum))


def _threshold(probabilities, beta, rule: Rule):
    p = trimmed(probabilities)
    beta = float(beta)
    locus = _Locus(p, beta, rule)
    m = _grid_size(p.size - 1, 4)
    live = locus.grid(m)
    q, _ = locus.values(live)

    q_best, th_best = math.inf, math.nan
    q_pi = _q_at_pi(p, beta, rule)
    if 0 < q_pi < math.inf:
        q_best, th_best = 2 * q_pi, math.pi

    def consider(ta, qa, tb, qb, limit=_CANDIDATES):
        """Refine the sign changes of Im Q between samples a and b (best estimates first)."""
        nonlocal q_best, th_best
        idx, est = _crossing_candidates(ta, qa, tb, qb, q_best)
        if idx.size == 0:
            return
        idx = idx[np.argsort(est[idx])[:limit]]
        x, qq = _refine(locus, ta[idx], tb[idx], np.sign(qa[idx].imag))
        j = int(np.argmin(qq))
        if qq[j] < q_best:
            q_best, th_best = float(qq[j]), float(x[j])

    consider(live.theta[:-1], q[:-1], live.theta[1:], q[1:])
    rad = np.full(m + 1, 0.5 * np.pi / m)
    used = 0
    reliable = False
    offsets = (2 * np.arange(_SPLIT) + 1 - _SPLIT) / _SPLIT  # children's centres, in radii
    for _ in range(_MAX_LEVELS):
        q_c, q_r, lower, dq_c, dq_r = locus.enclosure(live, rad)
        keep = _live(live.theta, rad, q_c, q_r, lower, q_best)
        # Where Im Q' keeps one sign, Im Q has at most one zero on the interval: it is
        # found (one sample at the end it lies towards, then Newton), and the interval
        # is done. The others are split into _SPLIT children.
        slope = np.abs(dq_c.imag) - dq_r
        mono = keep & (slope > 0)
        idx = np.flatnonzero(mono)
        if idx.size:
            h = q_c.imag[idx]
            reach = np.abs(h) <= slope[idx] * rad[idx]
            idx, h = idx[reach], h[reach]
            if idx.size:
                cen = live.theta[idx]
                ends = cen - np.sign(h) * np.sign(dq_c.imag[idx]) * rad[idx]
                q_e, _ = locus.values(locus.direct(ends))
                used += idx.size
                left = ends < cen
                lo, hi = np.where(left, ends, cen), np.where(left, cen, ends)
                q_lo = np.where(left, q_e, q_c[idx])
                q_hi = np.where(left, q_c[idx], q_e)
                ok = (lo >= 0) & (hi <= np.pi)
                consider(lo[ok], q_lo[ok], hi[ok], q_hi[ok], limit=None)
        rest = keep & ~mono
        if not rest.any():
            reliable = True
            break
        cen, r = live.theta[rest], rad[rest]
        if used + _SPLIT * cen.size > max(_MIN_POINTS, _MAX_WORK / (3 * p.size)):
            break
        kids = (cen[:, None] + r[:, None] * offsets).reshape(-1)
        kid_r = np.repeat(r / _SPLIT, _SPLIT)
        # children outside [0, pi] repeat (mirrored) parts of [0, pi]: dropped
        inside = (kids + kid_r > 0) & (kids - kid_r < np.pi)
        kids, rad = kids[inside], kid_r[inside]
        live = locus.direct(kids)
        used += kids.size
        q_k, _ = locus.values(live)
        # new crossings between neighbouring samples
        if kids.size > 1:
            near = np.abs(np.diff(kids)) <= 2.0001 * rad[:-1]
            near &= (kids[:-1] >= 0) & (kids[1:] <= np.pi)
            j = np.flatnonzero(near)
            if j.size:
                consider(kids[j], q_k[j], kids[j + 1], q_k[j + 1])
    return DistributionThreshold(q_best, th_best, reliable and math.isfinite(q_best))


# ----------------------------------------------------------------------------
# Spectral radius


class DistributionRadius(NamedTuple):
    rho: float
    certified: bool
    root: complex


class _Polynomial:
    """P(z) = z^K (U(z) + W(z) S(z)) of one distribution, rule, q and beta."""

    def __init__(self, p: np.ndarray, q: float, beta: float, rule: Rule):
        self.p = p
        self.k = np.arange(p.size, dtype=np.float64)
        self.K = p.size - 1
        self.degree = self.K + 2
        # U = (z - a1)(z - a2), W = w1 z + w0 (module docstring)
        self.a1, self.a2, self.w1, self.w0 = rule.distribution_parts(q, beta)
        with np.errstate(divide="ignore"):
            self.logp = np.log(p)
        self.sums = _PowerSums(np.stack([p, self.k * p]))
        self.m = _grid_size(self.K, 4)

    def cauchy_radius(self) -> float:
        """All roots lie in |z| < this (|U| > |W S| beyond it, S summing to <= 1)."""
        ps = float(self.p.sum())
        a = abs(self.a1 + self.a2) + abs(self.w1) * ps
        b = abs(self.a1 * self.a2) + abs(self.w0) * ps
        return max(1.0, 0.5 * (a + math.sqrt(a * a + 4 * b))) * (1 + 1e-9) + 1e-300

    # -- Newton on V in z, with direct sums
    def newton(self, z):
        """Newton's method on V from the points z (vectorised); ok where it converged
        (last step below 1e-12 |z|, or |V| at its rounding level)."""
        z = np.asarray(z, dtype=np.complex128).reshape(-1)
        done = np.zeros(z.shape, dtype=bool)
        for _ in range(_NEWTON_STEPS):
            v, dv, _, _ = self.value_and_derivative(z)
            with np.errstate(divide="ignore", invalid="ignore"):
                dz = v / dv
            bad = ~np.isfinite(dz)
            dz = np.where(bad, 0.0, dz)
            # steps longer than |z| / 4 are cut back: keeps far starts from flying off
            cap = np.minimum(1.0, 0.25 * np.abs(z) / np.maximum(np.abs(dz), 1e-300))
            z = np.where(done | bad, z, z - cap * dz)
            done = done | bad | (np.abs(dz) <= 1e-15 * np.abs(z))
            if done.all():
                break
        v, dv, _, err = self.value_and_derivative(z)
        with np.errstate(divide="ignore", invalid="ignore"):
            last = np.abs(v / dv)
        small = (last <= 1e-12 * np.abs(z)) | (np.abs(v) <= 4 * err)
        ok = np.isfinite(last) & (np.abs(z) > 0) & small
        return z, ok

    def value_and_derivative(self, z):
        """V(z) e^-s, V'(z) e^-s, the scale s (one per point, against overflow) and a
        bound on the rounding of the first (direct sums, see ``_PowerSums``)."""
        with np.errstate(divide="ignore"):
            lz = np.log(z)
        terms = self.logp[None, :] - np.outer(lz.real, self.k)
        shift = np.maximum(np.max(terms, axis=1), 0.0)
        mags = np.exp(terms - shift[:, None])  # p_k |z|^-k e^-s
        big = np.abs(lz.real) * self.sums.b > 600
        v = np.empty((2, z.size), dtype=np.complex128)
        if (~big).any():
            v[:, ~big] = self.sums(lz[~big], shift[~big])
        if big.any():  # far from the unit circle: unblocked sums
            e = np.exp(-np.outer(lz[big], self.k) - shift[big, None])
            v[:, big] = np.stack([e @ self.p, e @ (self.k * self.p)])
        s, t = v  # S e^-s, (sum_k k p_k z^-k) e^-s
        sigma = np.exp(-shift)
        u = sigma * (z - self.a1) * (z - self.a2)
        du = sigma * (2 * z - self.a1 - self.a2)
        w = self.w1 * z + self.w0
        value = u + w * s
        derivative = du + self.w1 * s - w * t / z
        a0, a1 = mags.sum(axis=1), mags @ self.k
        blocks = self.sums.b + self.sums.nb + 8
        err = 4 * _EPS * (np.abs(lz) * a1 + blocks * a0) * np.abs(w)
        err = err + 16 * _EPS * sigma * (np.abs(z) + abs(self.a1)) * (np.abs(z) + abs(self.a2))
        return value, derivative, shift, err

    # -- root counts
    def _grid_terms(self, radius: float, terms: int):
        """Scaled weights w_k = p_k R^-k e^-shift and the Taylor sums' coefficients
        w_k (k h)^j / j! (j < terms), with sigma = e^-shift."""
        h = np.pi / self.m
        with np.errstate(invalid="ignore"):
            lw = self.logp - self.k * math.log(radius)
        shift = max(float(np.max(lw)), 0.0)
        w = np.exp(lw - shift)
        kh = self.k * h
        coefs = np.empty((terms, w.size))
        coefs[0] = w
        for j in range(1, terms):
            coefs[j] = coefs[j - 1] * kh / j
        return w, coefs, math.exp(-shift)

    def projections(self, radius: float):
        """Newton projections from the grid on |z| = radius (two FFTs, no certificate):
        the local minima of the step length, largest projected modulus first."""
        _, coefs, sigma = self._grid_terms(radius, 2)
        grid = np.fft.rfft(coefs, 2 * self.m, axis=1)
        theta = np.pi * (np.arange(self.m + 1) / self.m)
        z = radius * np.exp(1j * theta)
        wz = self.w1 * z + self.w0
        v = sigma * (z - self.a1) * (z - self.a2) + wz * grid[0]
        vt = sigma * 1j * z * (2 * z - self.a1 - self.a2)
        vt = vt + wz * (-1j * grid[1] * self.m / np.pi) + 1j * self.w1 * z * grid[0]
        return _projections(z, v, vt)

    def count(self, radius: float):
        """(N(radius) or None if not certified, candidate starting points).

        S on the circle as a J-term Taylor series in the angle around each sample
        (coefficients from J FFTs, or direct sums at refined samples): termwise bounds
        on S'' alone are useless where S cancels heavily (off the unit circle, where
        the weights p_k R^-k are large, and wherever |S| is small).
        """
        m, big_j = self.m, _TAYLOR_TERMS
        h = np.pi / m
        w, coefs, sigma = self._grid_terms(radius, big_j)
        kh = self.k * h
        sums = _PowerSums(coefs)
        theta = np.pi * (np.arange(m + 1) / m)
        grid = np.fft.rfft(coefs, 2 * m, axis=1)  # |s_j| = |raw_j| (phases (-i)^j)
        grid[0, -1] = grid[0, -1].real
        # rounding of the grid sums: the FFT's bound (direct sums carry their own)
        grid_err = np.array([_fft_error(c, 2 * m) for c in coefs])[:, None] + sums.error(1j * theta)
        fact_j = math.factorial(big_j)
        rem_s = float(w @ kh**big_j) / fact_j  # |S(t + h x) - sum_j s_j x^j| <= rem_s |x|^J
        ab = abs(self.a1 + self.a2)
        u2 = sigma * radius * (4 * radius + ab)  # |d^2 U / d theta^2| on the circle
        w1r = abs(self.w1) * radius
        powers = np.arange(1, big_j)

        def assemble(t, raw, raw_err):
            """V(t), its rounding bound, and what :func:`bound` needs: |V_theta(t)| (plus
            its rounding), |W(t)|, |S(t)|, |s_1| and |s_j| + rounding (j >= 2)."""
            # z = +-R exactly at theta = 0, pi, where V is real (its phase sets the count)
            z = np.where(t == np.pi, -radius, radius * np.exp(1j * t))
            raw = np.where(t == np.pi, raw.real, raw)
            s0 = raw[0]
            wz = self.w1 * z + self.w0
            u = sigma * (z - self.a1) * (z - self.a2)
            du = sigma * 1j * z * (2 * z - self.a1 - self.a2)
            v = u + wz * s0
            s_t = -1j * raw[1] / h  # dS/dtheta
            vt = du + wz * s_t + 1j * self.w1 * z * s0
            awz, as0, as1 = np.abs(wz), np.abs(s0), np.abs(raw[1])
            err = 8 * _EPS * (np.abs(u) + awz * as0) + awz * raw_err[0]
            err_t = 8 * _EPS * (np.abs(du) + awz * as1 / h + w1r * as0)
            err_t = err_t + awz * raw_err[1] / h + w1r * raw_err[0]
            higher = np.abs(raw[2:]) + raw_err[2:]
            return v, err, err_t, awz, as0, as1 + raw_err[1], higher, vt

        def clear(state, nu, side):
            """Does V stay off 0 on [t, t + side dt] (dt = nu h)? True proves the change of
            arg V along it is below pi.

            V(t + delta) = V(t) + V_theta(t) delta + E, with E = [U part] + W E_S
            + w1 z S (e^{i delta} - 1 - i delta) + w1 z (e^{i delta} - 1)(S_theta delta + E_S)
            and E_S = S's Taylor terms of order >= 2 plus the series remainder: V lies in
            the segment V(t) + V_theta [0, side dt] widened by |E|, a convex set; it
            excludes 0 when the segment's distance to 0 exceeds the bound on |E|. (The
            first-order term is kept whole: a V turning fast but not shrinking is fine.)
            """
            v, err, err_t, awz, as0, as1, higher, vt = state
            e_s = (nu ** powers[1:]) @ higher + rem_s * nu**big_j
            dt = nu * h
            tail = 0.5 * u2 * dt * dt + awz * e_s + err + err_t * dt
            tail = tail + w1r * (0.5 * as0 * dt * dt + dt * (as1 * nu + e_s))
            d = side * dt * vt
            dd = (d * d.conj()).real
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.clip(-(v * d.conj()).real / dd, 0.0, 1.0)
            s = np.where(dd > 0, s, 0.0)
            return np.abs(v + s * d) > tail

        def take(state, idx):
            return tuple(x[..., idx] for x in state)

        def join(x, y):
            return tuple(np.concatenate([a, b], axis=-1) for a, b in zip(x, y, strict=True))

        def turn(x, y):
            d = np.angle(y) - np.angle(x)
            return (d + np.pi) % (2 * np.pi) - np.pi

        g_state = assemble(theta, grid, grid_err)
        v = g_state[0]
        ok = clear(take(g_state, slice(0, -1)), 1.0, 1.0)
        ok |= clear(take(g_state, slice(1, None)), 1.0, -1.0)
        bad = np.flatnonzero(~ok)
        ta, tb = theta[bad], theta[bad + 1]
        # the failing arcs' ends again by direct sums: their rounding bound is far
        # smaller than the FFT's worst case (which matters when V is small there)
        ends = np.unique(np.concatenate([bad, bad + 1]))
        e_state = assemble(theta[ends], sums(1j * theta[ends]), sums.error(1j * theta[ends]))
        a_state = take(e_state, np.searchsorted(ends, bad))
        b_state = take(e_state, np.searchsorted(ends, bad + 1))
        v = v.copy()
        v[ends] = e_state[0]  # one value per sample, used by every arc it ends
        # change of arg V along [0, pi]: wrapped steps between samples; a halved arc's
        # step is replaced by its two halves' (telescoping), so no sorting is needed
        total = float(turn(v[:-1], v[1:]).sum())
        nu = 1.0
        used = 0
        budget = max(_MIN_POINTS, _MAX_WORK / (big_j * w.size))
        certified = False
        for _ in range(_MAX_LEVELS):
            if ta.size == 0:
                certified = True
                break
            n_arcs = ta.size
            # few arcs: split them 8-fold (fewer levels); many (roots crowding the
            # circle): halve them (fewer sums per level)
            split = _SPLIT if n_arcs <= 32 else 2
            frac = np.arange(1, split) / split
            if used + (split - 1) * n_arcs > budget or nu * h < 1e-2 * TOLERANCE:
                break  # a root on the circle (to rounding), or too many near it
            # each failing arc into `split` sub-arcs; node i of arc j is nodes[i n + j]
            inner = (ta[None, :] + frac[:, None] * (tb - ta)[None, :]).reshape(-1)
            m_state = assemble(inner, sums(1j * inner), sums.error(1j * inner))
            used += inner.size
            nodes = join(join(a_state, m_state), b_state)
            t_nodes = np.concatenate([ta, inner, tb])
            vn = nodes[0].reshape(split + 1, n_arcs)
            total += float((turn(vn[:-1], vn[1:]).sum(axis=0) - turn(vn[0], vn[-1])).sum())
            nu /= split
            fwd = clear(nodes, nu, 1.0).reshape(split + 1, n_arcs)
            bwd = clear(nodes, nu, -1.0).reshape(split + 1, n_arcs)
            fail = ~(fwd[:-1] | bwd[1:])  # (split, n_arcs)
            i, j = np.nonzero(fail)
            left, right = i * n_arcs + j, (i + 1) * n_arcs + j
            ta, tb = t_nodes[left], t_nodes[right]
            a_state, b_state = take(nodes, left), take(nodes, right)
            if ((np.abs(a_state[0]) <= a_state[1]) & (np.abs(b_state[0]) <= b_state[1])).any():
                break  # V at rounding level at both ends of an arc: a root on the circle
        proj = _projections(radius * np.exp(1j * theta), v, g_state[-1])
        if not certified:
            return None, proj
        n = self.K + total / np.pi
        nearest = round(n)
        if abs(n - nearest) > 1e-6:
            return None, proj
        return int(nearest), proj

    def isolated_root(self, z: complex, eps: float) -> bool:
        """Rouche: exactly one root of V within eps of z (so rho >= |z| - eps).

        On |zeta - z| = eps, |V(zeta) - V'(z)(zeta - z)| <= |V(z)| + eps^2 max|V''| / 2
        < |V'(z)| eps proves it; max|V''| over the disc is bounded termwise.
        """
        r_min = abs(z) - eps
        if r_min <= 0:
            return False
        v, dv, shift, err = self.value_and_derivative(np.array([z], dtype=np.complex128))
        v, dv, shift, err = abs(v[0]), abs(dv[0]), float(shift[0]), float(err[0])
        k = self.k
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            a0 = np.exp(self.logp - k * math.log(r_min) - shift)  # p_k r_min^-k e^-s
        s1 = float((k * a0).sum()) / r_min  # |S'| on the disc
        s2 = float((k * (k + 1) * a0).sum()) / (r_min * r_min)  # |S''|
        wmax = abs(self.w1) * (abs(z) + eps) + abs(self.w0)
        c2 = 2 * math.exp(-shift) + 2 * abs(self.w1) * s1 + wmax * s2
        return v + err + 0.5 * eps * eps * c2 < dv * eps


def _projections(z, v, vt):
    """Newton projections z - V / V'(z) from samples on a circle (V' = V_theta / (i z)):
    the local minima of the step length (about one per nearby root), largest
    projected modulus first."""
    with np.errstate(divide="ignore", invalid="ignore"):
        step = v / (vt / (1j * z))
    dist = np.abs(step)
    dist = np.where(np.isfinite(dist), dist, np.inf)
    interior = np.ones(dist.shape, dtype=bool)
    interior[1:] &= dist[1:] <= dist[:-1]
    interior[:-1] &= dist[:-1] <= dist[1:]
    proj = (z - step)[interior & (dist < 0.5 * np.abs(z))]
    return proj[np.argsort(-np.abs(proj))][:_NEWTON_STARTS]


def distribution_spectral_radius(probabilities, q: float, beta: float, momentum):
    """Largest root modulus of the rule's polynomial at q, certified to relative
    ``TOLERANCE`` when ``certified`` (module docstring). ``momentum``: a rule with
    ``distribution_parts``, or its name."""
    with _single_threaded():
        return _spectral_radius(probabilities, q, beta, as_rule(momentum))


def _spectral_radius(probabilities, q, beta, rule: Rule):
    p = trimmed(probabilities)
    poly = _Polynomial(p, float(q), float(beta), rule)
    n = poly.degree
    r_lo, r_hi = 0.0, poly.cauchy_radius()  # N(r_lo) < n = N(r_hi)
    best = None  # the Newton root of largest modulus so far
    tried = None

    def take(z):
        nonlocal best
        if z.size == 0:
            return
        real = np.abs(z.imag) <= 1e-9 * np.abs(z)
        # a real start stays real: add one turned slightly off the axis (complex pairs)
        z = np.concatenate([z, z[real] * np.exp(1e-4j)])
        z, ok = poly.newton(z)
        z = z[ok]
        if z.size:
            j = int(np.argmax(np.abs(z)))
            if best is None or abs(z[j]) > abs(best):
                best = complex(z[j])

    def count(radius, nudges):
        for f in nudges:
            c, cand = poly.count(radius * f)
            if c is not None:
                return radius * f, c, cand
        return radius, None, np.zeros(0, dtype=np.complex128)

    # Starting points from the unit circle (two FFTs, no certificate): near it are the
    # dominant roots that matter (a rate just below or above 1); Newton projections
    # from a circle near rho land on the dominant root itself.
    take(poly.projections(1.0))
    for _ in range(100):
        c = None
        if best is not None and best != tried:
            tried = best  # is the best root the dominant one? N(|best| (1 + tol)) = n?
            rho = abs(best)
            if rho * (1 + TOLERANCE) < r_hi:
                nudges = (1 + TOLERANCE, 1 + 3 * TOLERANCE, 1 + 8 * TOLERANCE)
                radius, c, cand = count(rho, nudges)
                if c == n:
                    r_hi = radius
                elif c is not None:
                    r_lo = max(r_lo, radius)
            if r_hi <= rho * (1 + 8 * TOLERANCE):
                # upper bound: the count at r_hi; lower: one root within tol of best
                lower = any(poly.isolated_root(best, f * TOLERANCE * rho) for f in (1, 3, 8))
                if not lower:
                    _, c2, _ = count(rho, (1 - TOLERANCE, 1 - 3 * TOLERANCE, 1 - 8 * TOLERANCE))
                    lower = c2 is not None and c2 < n
                return DistributionRadius(rho, bool(lower), best)
        if c is None:  # bisection on log R, nudged when a count cannot be certified
            mid = math.sqrt(r_lo * r_hi) if r_lo > 0 else 0.5 * r_hi
            span = math.log(r_hi / r_lo) if r_lo > 0 else 1.0
            nudges = tuple(math.exp(g * span) for g in (0.0, 0.13, -0.17, 0.29, -0.31))
            radius, c, cand = count(mid, nudges)
            if c is None:
                break
            if c == n:
                r_hi = min(r_hi, radius)
            else:
                r_lo = max(r_lo, radius)
        take(cand)
        if best is not None:
            r_lo = max(r_lo, abs(best))  # a root: N(|best|) < n
        if r_hi <= r_lo * (1 + 2 * TOLERANCE):
            rho = math.sqrt(r_lo * r_hi)
            return DistributionRadius(rho, True, best if best is not None else complex(rho))
    rho = abs(best) if best is not None else math.sqrt(max(r_lo, 1e-300) * r_hi)
    return DistributionRadius(rho, False, best if best is not None else complex(rho))


# ----------------------------------------------------------------------------
# Arrays of parameters (the public functions' host side)

SMALL_SUPPORT = 30  # K <= this: companion eigenvalues (numpy) are exact and faster
EIGENVALUE_FALLBACK = 1000  # K <= this: an uncertified radius is recomputed by eigenvalues


def dense_coefficients(p: np.ndarray, q, beta, rule: Rule) -> np.ndarray:
    """P = A + q B in descending powers, shape broadcast(q, beta) + (K + 3,): the
    rule's polynomial (`stability.theory.rules.rule_polynomial`) in numpy (for small
    supports and the eigenvalue fallback)."""
    q, beta = np.broadcast_arrays(np.asarray(q, np.float64), np.asarray(beta, np.float64))
    a, b = rule_polynomial(rule, DelayDistribution(p), beta, np)
    return a + q[..., None] * b


def eigenvalue_radius(p: np.ndarray, q, beta, rule: Rule) -> np.ndarray:
    """Spectral radii from numpy's companion eigenvalues (LAPACK), O(K^3) each."""
    c = dense_coefficients(p, q, beta, as_rule(rule))
    m = c.shape[-1] - 1
    comp = np.zeros(c.shape[:-1] + (m, m))
    comp[..., 0, :] = -c[..., 1:]
    comp[..., np.arange(1, m), np.arange(m - 1)] = 1.0
    with _single_threaded():
        return np.abs(np.linalg.eigvals(comp)).max(axis=-1)


@functools.lru_cache(maxsize=256)
def _cached_threshold(key: bytes, beta: float, rule: Rule) -> DistributionThreshold:
    return distribution_threshold(np.frombuffer(key, dtype=np.float64), beta, rule)


def thresholds(probabilities, beta, momentum):
    """(q_max, theta, reliable) arrays of beta's shape; one certified threshold per beta
    (cached: a tracker or a verdict asks for the same one again and again)."""
    key = trimmed(probabilities).tobytes()
    beta = np.asarray(beta, dtype=np.float64)
    rule = as_rule(momentum)
    out = [_cached_threshold(key, float(b), rule) for b in beta.reshape(-1)]
    q = np.array([t.q_max for t in out], dtype=np.float64).reshape(beta.shape)
    theta = np.array([t.theta for t in out], dtype=np.float64).reshape(beta.shape)
    ok = np.array([t.reliable for t in out], dtype=bool).reshape(beta.shape)
    return q, theta, ok


def spectral_radii(probabilities, q, beta, momentum) -> np.ndarray:
    """Spectral radii over broadcast(q, beta): eigenvalues for supports up to
    SMALL_SUPPORT, else the certified radius; an uncertified one is recomputed by
    eigenvalues up to EIGENVALUE_FALLBACK and NaN beyond (never an unproven number)."""
    p = trimmed(probabilities)
    rule = as_rule(momentum)
    q, beta = np.broadcast_arrays(np.asarray(q, np.float64), np.asarray(beta, np.float64))
    if p.size - 1 <= SMALL_SUPPORT:
        return eigenvalue_radius(p, q, beta, rule)
    out = np.empty(q.shape)
    flat_q, flat_b, flat_out = q.reshape(-1), beta.reshape(-1), out.reshape(-1)
    for i, (qi, bi) in enumerate(zip(flat_q.tolist(), flat_b.tolist(), strict=True)):
        r = distribution_spectral_radius(p, qi, bi, rule)
        if r.certified:
            flat_out[i] = r.rho
        elif p.size - 1 <= EIGENVALUE_FALLBACK:
            flat_out[i] = float(eigenvalue_radius(p, qi, bi, rule))
        else:
            flat_out[i] = np.nan
    return out
