"""Certified spectral radius of the fixed-delay rules, without eigenvalues.

For an integer delay ``tau >= 2`` the characteristic polynomial of every rule
(``stability.theory.rules``) is sparse:

    P(z) = z^m U(z) + V(z),   U(z) = (z - a1)(z - a2),   V(z) = v1 z + v0,

with real a1, a2, v1, v0 and degree n = m + 2:

- heavy_ball (its root z = 0 divided out): m = tau - 1, U = (z - 1)(z - beta), V = q
- nesterov: m = tau, U = (z - 1)(z - beta), V = q (1 + beta) z - q beta
- shifted:  m = tau, U = z (z - 1),        V = (q - beta) z + beta

(q = lr * sharpness). The spectral radius rho is the largest root modulus. It is
found in O(log tau) operations per point, and *certified*, in three steps:

1. Candidates. Newton's method on P from z = 1 and from ``NUM_STARTS`` points in
   the first sector ``0 < arg z < pi (NUM_STARTS) / (m + 1)``, at the radius where
   ``|z^m U| = |V|``. The dominant root of these rules lies in that sector
   (|arg z| < 2 pi / n in 9,000 random cases, tau up to 200); the certificate
   below does not rely on it. rho_hat = the largest modulus among converged
   candidates.
2. Root counts by the argument principle. The number N(R) of roots in |z| < R
   is the winding number of P along |z| = R, i.e. (change of arg P over the upper
   half circle) / pi, P being real on the real axis. That change is computed in
   closed form: |z^m U|^2 - |V|^2 on the circle is a quadratic in
   s = sin^2(theta / 2), so the half circle splits into at most three arcs on
   which one part dominates. On an arc where |z^m U| > |V|,
   ``arg P = m theta + arg(z - a1) + arg(z - a2) + arg(1 + V / (z^m U))``: the
   first three terms change by an exact amount (arg(R e^{i theta} - a) lies in
   [0, pi] on the upper half circle), and the last stays in (-pi/2, pi/2), so its
   change is the difference of its end values. Symmetrically where |V| dominates.
3. Certificate: N(rho_hat (1 + delta)) = n and N(rho_hat (1 - delta)) < n, which
   proves ``|rho - rho_hat| <= delta * rho_hat`` (delta = ``RELATIVE_TOLERANCE``).
   The counts are robust to rounding unless a root lies within about
   ``m * eps * rho`` of a test circle, far inside delta.

Points where a step fails (Newton not converged on the dominant root, near-
multiple dominant roots, a zero or pole of the parts on a test circle) come back
with ``certified = False``; ``stability.theory.companion.spectral_radius`` computes those
from the companion-matrix eigenvalues instead.

`log_spectral_radius` is the same certificate in log coordinates (w = log z, the
radius as ``ell = log R``), in float64 numpy on the host, for any delay up to 2**53
and for float32 arguments: near the unit circle ``z - 1`` and ``|z - a|^2`` keep
their relative precision there (``expm1``), z^m is ``exp(m w)`` (m need not be
static: nothing is compiled per delay), and the counts are of the roots *outside*
a circle, so the ``m pi`` of a full count never cancels against ``m + 2``. The
float64 ``root_count`` above expands ``|U|^2`` and loses 1 - R below about 1e-8:
at tau = 1e9 it certified 1 of 6 test points, the log form all of them.

Reference: the argument principle and Newton's method, e.g. P. Henrici, *Applied
and Computational Complex Analysis*, vol. 1 (1974), sections 4.10 and 6.10; the
sparse form of P is docs/theory.md section 3.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from stability.theory.rules import Rule, as_rule

NUM_STARTS = 3
NEWTON_STEPS = 30
RELATIVE_TOLERANCE = 1e-10


class SparseCharacteristic:
    """``P(z) = z^m (z - a1)(z - a2) + v1 z + v0`` (arrays broadcast together)."""

    def __init__(self, m: int, a1, a2, v1, v0):
        self.m = m
        self.a1, self.a2, self.v1, self.v0 = jnp.broadcast_arrays(a1, a2, v1, v0)

    @property
    def degree(self) -> int:
        return self.m + 2

    @property
    def u1(self):
        return -(self.a1 + self.a2)

    @property
    def u0(self):
        return self.a1 * self.a2


def sparse_characteristic(q, beta, tau: int, momentum) -> SparseCharacteristic:
    """The sparse form of a rule's characteristic polynomial (module docstring;
    ``Rule.sparse_form``); ``momentum`` a rule or its name."""
    m, a1, a2, v1, v0 = as_rule(momentum).sparse_form(q, beta, tau, jnp)
    return SparseCharacteristic(m, a1, a2, v1, v0)


def _cplx(re, im):
    return lax.complex(re, im)


def _c(x):
    """A real array as complex (explicit: strict dtype promotion allows no mixing)."""
    return lax.complex(x, jnp.zeros_like(x))


def _power(z, m: int):
    """z^m by repeated squaring (m static)."""
    out = jnp.ones_like(z)
    base = z
    while m:
        if m & 1:
            out = out * base
        m >>= 1
        if m:
            base = base * base
    return out


def _value_and_derivative(p: SparseCharacteristic, z):
    """P(z) and P'(z) = z^(m-1) (m U + z U') + v1."""
    m = p.m
    u1, u0, v1, v0 = (_c(x[..., None]) for x in (p.u1, p.u0, p.v1, p.v0))
    w = _power(z, m - 1)
    u = (z + u1) * z + u0
    value = w * z * u + v1 * z + v0
    derivative = w * (((m + 2) * z + (m + 1) * u1) * z + m * u0) + v1
    return value, derivative


def _starts(p: SparseCharacteristic):
    """z = 1 and NUM_STARTS points in the first sector, on the curve |z^m U| = |V|."""
    m = p.m
    dtype = p.a1.dtype
    theta = jnp.pi * (jnp.arange(NUM_STARTS, dtype=dtype) + 0.5) / (m + 1)
    unit = _cplx(jnp.cos(theta), jnp.sin(theta))
    u1, u0, v1, v0 = (_c(x[..., None]) for x in (p.u1, p.u0, p.v1, p.v0))
    r = jnp.ones(p.a1.shape + (NUM_STARTS,), dtype)
    for _ in range(3):  # fixed point of r = (|V| / |U|)^(1/m) at this angle
        z = _c(r) * unit
        log_ratio = jnp.log(jnp.abs(v1 * z + v0)) - jnp.log(jnp.abs((z + u1) * z + u0))
        r = jnp.where(jnp.isfinite(log_ratio), jnp.exp(log_ratio / m), 1.0)
    one = jnp.ones(p.a1.shape + (1,), dtype)
    return jnp.concatenate([_c(one), _c(r) * unit], axis=-1)


def _newton(p: SparseCharacteristic, z):
    def step(_, z):
        value, derivative = _value_and_derivative(p, z)
        dz = value / derivative
        # Steps longer than |z| / 4 are cut back: keeps far starts from flying off.
        scale = jnp.minimum(1.0, 0.25 * jnp.abs(z) / jnp.maximum(jnp.abs(dz), 1e-300))
        return z - _c(scale) * dz

    return lax.fori_loop(0, NEWTON_STEPS, step, z)


def _arg_linear(radius, theta, a):
    """arg(R e^{i theta} - a) in [0, pi], for theta in [0, pi] and real a."""
    return jnp.arctan2(radius * jnp.sin(theta), radius * jnp.cos(theta) - a)


def root_count(p: SparseCharacteristic, radius):
    """N(R): the number of roots of P in |z| < R, by the argument principle.

    Returned as a float (an integer up to rounding; far from one when a root lies
    on the circle or the computation broke down). O(log m) operations per point.
    """
    m = p.m
    u1, u0, v1, v0 = p.u1, p.u0, p.v1, p.v0
    r2 = radius * radius
    log_r = jnp.log(radius)
    # |z^m U|^2 - |V|^2 = t Uq(c) - Vq(c), c = cos(theta), t = R^(2m) (clipped in
    # the log domain: only its sign against |V| matters far from balance)
    t = jnp.exp(jnp.clip(2 * m * log_r, -700.0, 700.0))
    qa = t * 4 * u0 * r2
    qb = t * 2 * u1 * radius * (r2 + u0) - 2 * v1 * v0 * radius
    qc = t * (r2 * r2 + u1 * u1 * r2 + u0 * u0 - 2 * u0 * r2) - v1 * v1 * r2 - v0 * v0
    # in s = sin^2(theta/2) = (1 - c)/2 (accurate near theta = 0, where the dominant root is)
    c2, c1, c0 = 4 * qa, -(4 * qa + 2 * qb), qa + qb + qc
    disc = c1 * c1 - 4 * c2 * c0
    sq = jnp.sqrt(jnp.maximum(disc, 0.0))
    half = -0.5 * (c1 + jnp.where(c1 >= 0, sq, -sq))
    quadratic = c2 != 0
    linear_root = -c0 / jnp.where(c1 != 0, c1, 1.0)
    s1 = jnp.where(quadratic, half / jnp.where(quadratic, c2, 1.0), linear_root)
    s2 = jnp.where(quadratic & (half != 0), c0 / jnp.where(half != 0, half, 1.0), jnp.nan)

    def angle(s):
        ok = (disc >= 0) & (s > 0) & (s < 1)
        return jnp.where(ok, 2 * jnp.arcsin(jnp.sqrt(jnp.where(ok, s, 0.0))), jnp.pi)

    th1, th2 = angle(s1), angle(s2)
    ends = [jnp.zeros_like(radius), jnp.minimum(th1, th2), jnp.maximum(th1, th2)]
    ends.append(jnp.full_like(radius, jnp.pi))
    v_zero = -v0 / jnp.where(v1 != 0, v1, 1.0)

    def parts(theta):
        """log|z^m U / V| and arg(z^m U / V) at R e^{i theta}."""
        z = _cplx(radius * jnp.cos(theta), radius * jnp.sin(theta))
        u = (z + _c(u1)) * z + _c(u0)
        v = _c(v1) * z + _c(v0)
        log_ratio = m * log_r + jnp.log(jnp.abs(u)) - jnp.log(jnp.abs(v))
        phase = m * theta + jnp.angle(u) - jnp.angle(v)
        return log_ratio, phase

    def arg_one_plus(log_w, phase):
        """arg(1 + w), w = exp(log_w + i phase), |w| <= 1 (in (-pi/2, pi/2))."""
        w = jnp.exp(log_w)
        return jnp.arctan2(w * jnp.sin(phase), 1 + w * jnp.cos(phase))

    total = jnp.zeros_like(radius)
    for lo, hi in zip(ends[:-1], ends[1:], strict=True):
        lr_lo, ph_lo = parts(lo)
        lr_hi, ph_hi = parts(hi)
        lr_mid, _ = parts(0.5 * (lo + hi))
        u_dominant = (
            m * (hi - lo)
            + _arg_linear(radius, hi, p.a1)
            - _arg_linear(radius, lo, p.a1)
            + _arg_linear(radius, hi, p.a2)
            - _arg_linear(radius, lo, p.a2)
            + arg_one_plus(-lr_hi, -ph_hi)
            - arg_one_plus(-lr_lo, -ph_lo)
        )
        v_arg = jnp.where(
            v1 != 0, _arg_linear(radius, hi, v_zero) - _arg_linear(radius, lo, v_zero), 0.0
        )
        v_dominant = v_arg + arg_one_plus(lr_hi, ph_hi) - arg_one_plus(lr_lo, ph_lo)
        total = total + jnp.where(lr_mid > 0, u_dominant, v_dominant)
    return total / jnp.pi


@partial(jax.jit, static_argnames=("tau", "momentum"))
def certified_spectral_radius(q, beta, tau: int, momentum: str):
    """Spectral radius of the rule's recurrence at ``q = lr * sharpness``, certified.

    Args:
      q: lr * sharpness, float64 array.
      beta: momentum, float64 array broadcasting with q.
      tau: integer delay >= 2 (static).
      momentum: a rule with a sparse form, or its name (static).

    Returns:
      ``(rho, certified)``: where ``certified`` is True, ``rho`` is within relative
      ``RELATIVE_TOLERANCE`` of the true spectral radius (and, being the modulus of
      a Newton-converged root, usually exact to rounding); elsewhere ``rho`` is
      meaningless and must be computed another way.
    """
    q, beta = jnp.broadcast_arrays(q, beta)
    p = sparse_characteristic(q, beta, tau, momentum)
    z = _newton(p, _starts(p))
    value, derivative = _value_and_derivative(p, z)
    modulus = jnp.abs(z)
    converged = jnp.isfinite(modulus) & (jnp.abs(value / derivative) <= 1e-8 * modulus)
    rho = jnp.max(jnp.where(converged, modulus, -1.0), axis=-1)
    n = p.degree
    above = root_count(p, rho * (1 + RELATIVE_TOLERANCE))
    below = root_count(p, rho * (1 - RELATIVE_TOLERANCE))
    certified = (rho > 0) & (jnp.abs(above - n) < 0.25) & (below < n - 0.75)
    return rho, certified


# ----------------------------------------------------------------------------
# Any delay, on the host: the same certificate in log coordinates (numpy, float64)
#
# Near the unit circle z = 1 + (tiny) loses the tiny part: in float32 a radius 1 -
# 1e-9 is 1.0, and in float64 the expanded |U|^2 of `root_count` cancels to noise
# once 1 - R is below 1e-8 (its counts fail from tau ~ 1e6 on). Written in w = log z
# (z = e^w, w = ell + i theta) every quantity keeps its relative precision: z - a =
# (expm1(ell) + (1 - a)) - 2 e^ell sin^2(theta / 2) + i e^ell sin(theta), z^m =
# exp(m w) (no repeated squaring, m any size, no program per delay), |z - a|^2 =
# (R - a)^2 + 4 R a s with s = sin^2(theta / 2). Newton runs on w; the counts use
# the radius' logarithm ell, and count the roots OUTSIDE the circle, so the m pi
# of a full count never has to cancel against m + 2.

LOG_NEWTON_STEPS = 40


class _Sparse(NamedTuple):
    """The sparse form (module docstring) with what log coordinates need exactly:
    ``1 - a2``, ``V(z)`` written without cancellation at z = 1, V's zero ``v_zero``
    and ``1 - v_zero``; m a float, its parity an integer."""

    m: float
    parity: int
    a2: np.ndarray
    one_minus_a2: np.ndarray
    q: np.ndarray
    beta: np.ndarray
    rule: Rule


def _sparse_host(q, beta, tau: int, momentum) -> _Sparse:
    rule = as_rule(momentum)
    m, _, a2, _, _ = rule.sparse_form(q, beta, tau, np)  # a1 = 1 (the log form needs it)
    return _Sparse(float(m), m % 2, a2, 1.0 - a2, q, beta, rule)


def _z_minus(ell, theta, a, one_minus_a):
    """e^(ell + i theta) - a, accurate when the point is near a (complex128)."""
    r = np.exp(ell)
    half = np.sin(0.5 * theta)
    re = (np.expm1(ell) + one_minus_a) - 2.0 * r * half * half
    return re + 1j * (r * np.sin(theta))


def _v_and_zero(p: _Sparse, ell, theta):
    """V at e^(ell + i theta) (no cancellation at z = 1), V's slope v1, its zero and
    1 - zero (where v1 != 0; NaN elsewhere)."""
    d1 = _z_minus(ell, theta, 1.0, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return p.rule.log_v(p.q, p.beta, d1)


def _log_newton(p: _Sparse, w):
    """Newton's method on P in w = log z: dw = -P / (z P').

    A candidate leaves the iteration after two steps below 4e-16 |w| (converged to
    rounding; w = 0 too) or a step that is not finite; only the others are iterated
    (most of a large batch converges in a few steps: 20,000 points at tau = 1e9 in
    1.1 s instead of 2.5 s).
    """
    m = p.m
    shape = w.shape
    w = np.array(np.broadcast_to(w, shape), dtype=np.complex128).reshape(-1)
    a2, one_minus_a2, q, beta = (
        np.broadcast_to(x, shape).reshape(-1) for x in (p.a2, p.one_minus_a2, p.q, p.beta)
    )
    last = np.full(w.shape, np.inf)
    was_tiny = np.zeros(w.shape, bool)
    active = np.arange(w.size)
    for _ in range(LOG_NEWTON_STEPS):
        if active.size == 0:
            break
        wa = w[active]
        sub = p._replace(a2=a2[active], one_minus_a2=one_minus_a2[active], q=q[active],
                         beta=beta[active])  # fmt: skip
        ell, theta = wa.real, wa.imag
        d1 = _z_minus(ell, theta, 1.0, 0.0)
        d2 = _z_minus(ell, theta, sub.a2, sub.one_minus_a2)
        z = np.exp(wa)
        e = np.exp(m * wa)
        v, v1, _, _ = _v_and_zero(sub, ell, theta)
        u = d1 * d2
        value = e * u + v
        slope = e * (m * u + z * (d1 + d2)) + v1 * z  # z P'(z)
        dw = -value / slope
        # steps are cut back to |dw| <= 1/4 and, outwards, to Re dw <= 2 / m (z^m grows
        # by at most e^2 a step: a longer step lands where z^m U swamps everything and
        # Newton crawls back by 1/m a step)
        size = np.maximum(np.abs(dw) / 0.25, dw.real * m / 2.0)
        w[active] = wa + np.where(size > 1, 1.0 / np.where(size > 1, size, 1.0), 1.0) * dw
        step = np.abs(dw)
        last[active] = step
        tiny = step <= 4e-16 * np.abs(w[active])
        keep = np.isfinite(step) & ~(tiny & was_tiny[active])
        was_tiny[active] = tiny
        active = active[keep]
    return w.reshape(shape), last.reshape(shape)


def _log_starts(p: _Sparse):
    """w = 0 (z = 1), w = 1 / (m + 1), and on |z^m U| = |V| NUM_STARTS points in the
    first sector, as many in the last and z = -1 (a dominant root of negative q can
    lie on or near the real axis, on either side)."""
    m = p.m
    first = np.pi * (np.arange(NUM_STARTS) + 0.5) / (m + 1)
    theta = np.concatenate([first, np.pi - first, [np.pi]])
    shape = p.q.shape + theta.shape
    theta = np.broadcast_to(theta, shape)
    sub = p._replace(**{k: getattr(p, k)[..., None] for k in ("a2", "one_minus_a2", "q", "beta")})
    ell = np.zeros(shape)
    for _ in range(3):  # fixed point of ell = (log|V| - log|U|) / m at this angle
        u = np.abs(_z_minus(ell, theta, 1.0, 0.0) * _z_minus(ell, theta, sub.a2, sub.one_minus_a2))
        v = np.abs(_v_and_zero(sub, ell, theta)[0])
        step = (np.log(v) - np.log(u)) / m
        ell = np.where(np.isfinite(step), step, 0.0)
    # on the real axis: z = 1 and z = e^(1 / (m + 1)), from where Newton walks out to
    # a real root above 1 (negative q) in steps of at most 2 / m
    real = np.broadcast_to(np.array([0.0, 1.0 / (m + 1)]), p.q.shape + (2,))
    starts = np.concatenate([real, ell], axis=-1) + 1j * np.concatenate(
        [np.zeros_like(real), theta], axis=-1
    )
    return sub, starts


def outside_count(p: _Sparse, ell):
    """The number of roots of P with modulus above e^ell (argument principle).

    ``pi * (n - N) = sum over arcs`` of, where ``|z^m U| > |V|``: ``sum_a [(hi - lo)
    - change of arg(z - a)] - change of arg(1 + V / (z^m U))``; where ``|V|``
    dominates: ``(m + 2)(hi - lo) - change of arg V - change of arg(1 + z^m U / V)``.
    The arcs are the sign changes of ``R^(2m) |U|^2 - |V|^2``, a quadratic in s.
    A float, an integer up to rounding (far from one when a root is on the circle).
    """
    m = p.m
    big = 700.0
    r = np.exp(ell)
    rm1 = np.expm1(ell)
    t = np.exp(np.clip(2 * m * ell, -big, big))
    one_minus = (np.zeros_like(p.a2), p.one_minus_a2)
    coef_a = [(rm1 + om) ** 2 for om in one_minus]  # (R - a)^2
    coef_b = [4.0 * r, 4.0 * r * p.a2]  # 4 R a
    v_r, v1, v_zero, v_one_minus = _v_and_zero(p, ell, np.zeros_like(ell))
    v_r = v_r.real
    v0v1 = v1 * (v_r - v1 * r)  # v1 v0 (V(R) = v1 R + v0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        c2 = t * coef_b[0] * coef_b[1]
        c1 = t * (coef_a[0] * coef_b[1] + coef_a[1] * coef_b[0]) + 4.0 * v0v1 * r
        c0 = t * coef_a[0] * coef_a[1] - v_r * v_r
        disc = c1 * c1 - 4 * c2 * c0
        sq = np.sqrt(np.maximum(disc, 0.0))
        half = -0.5 * (c1 + np.where(c1 >= 0, sq, -sq))
        quadratic = c2 != 0
        s1 = np.where(
            quadratic, half / np.where(quadratic, c2, 1.0), -c0 / np.where(c1 != 0, c1, 1.0)
        )
        s2 = np.where(quadratic & (half != 0), c0 / np.where(half != 0, half, 1.0), np.nan)

    def angle(s):
        ok = (disc >= 0) & (s > 0) & (s < 1)
        return np.where(ok, 2 * np.arcsin(np.sqrt(np.where(ok, s, 0.0))), np.pi)

    th1, th2 = angle(s1), angle(s2)
    ends = [
        np.zeros_like(ell),
        np.minimum(th1, th2),
        np.maximum(th1, th2),
        np.full_like(ell, np.pi),
    ]
    # m theta at an interior arc end carries the rounding m theta eps: beyond 0.1 rad
    # (tau ~ 1e14 and more) the count is not trusted (NaN: no certificate)
    interior = np.where(ends[2] < np.pi, ends[2], np.where(ends[1] < np.pi, ends[1], 0.0))
    trusted = m * interior * np.finfo(np.float64).eps <= 0.1

    def parts(theta):
        """log|z^m U / V|, arg(z^m U / V), the args of z - 1, z - a2 and V's factor."""
        d1 = _z_minus(ell, theta, 1.0, 0.0)
        d2 = _z_minus(ell, theta, p.a2, p.one_minus_a2)
        v = _v_and_zero(p, ell, theta)[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratio = m * ell + np.log(np.abs(d1)) + np.log(np.abs(d2)) - np.log(np.abs(v))
        # m theta exactly at theta = pi (z real): the parity of m
        m_theta = np.where(theta == np.pi, np.pi * p.parity, m * theta)
        phase = m_theta + np.angle(d1) + np.angle(d2) - np.angle(v)
        dv = _z_minus(ell, theta, v_zero, v_one_minus)
        return log_ratio, phase, np.angle(d1), np.angle(d2), np.angle(dv)

    def arg_one_plus(log_w, phase):
        """arg(1 + w), w = exp(log_w + i phase)."""
        with np.errstate(over="ignore", invalid="ignore"):
            w = np.exp(log_w)
            return np.arctan2(w * np.sin(phase), 1 + w * np.cos(phase))

    total = np.zeros_like(ell)
    for lo, hi in zip(ends[:-1], ends[1:], strict=True):
        lr_lo, ph_lo, a1_lo, a2_lo, v_lo = parts(lo)
        lr_hi, ph_hi, a1_hi, a2_hi, v_hi = parts(hi)
        lr_mid = parts(0.5 * (lo + hi))[0]
        width = hi - lo
        u_side = (
            (width - (a1_hi - a1_lo))
            + (width - (a2_hi - a2_lo))
            - (arg_one_plus(-lr_hi, -ph_hi) - arg_one_plus(-lr_lo, -ph_lo))
        )
        v_arg = np.where(v1 != 0, v_hi - v_lo, 0.0)
        v_side = (m + 2) * width - v_arg - (arg_one_plus(lr_hi, ph_hi) - arg_one_plus(lr_lo, ph_lo))
        total = total + np.where(width > 0, np.where(lr_mid > 0, u_side, v_side), 0.0)
    return np.where(trusted, total / np.pi, np.nan)


def log_spectral_radius(q, beta, tau: int, momentum: str):
    """``log rho`` of the rule's recurrence for any delay ``tau >= 2``, certified.

    numpy float64 on the host, O(1) per point whatever tau (up to ``MAX_DELAY``):
    Newton in w = log z from the same starts as `certified_spectral_radius`, then
    three counts of the roots outside a circle: none outside ``ell_hat + delta``, at
    least one outside ``ell_hat - delta`` (``delta = RELATIVE_TOLERANCE``), which
    proves ``|log rho - ell_hat| <= delta``; and at ``ell_hat / 2``, which proves
    the side of 1 (``rho < 1`` or ``> 1``) even when ``|ell_hat|`` is below delta
    (1 - rho = 1e-11 at tau = 1e9: float32 rounds rho to 1.0, log rho keeps it).

    Returns:
      ``(ell, certified, side)``: ell the log radius; certified as above; side +1 or
      -1 where the side of 1 is proven, 0 where not (or rho = 1 exactly).
    """
    q, beta = np.broadcast_arrays(np.asarray(q, np.float64), np.asarray(beta, np.float64))
    p = _sparse_host(q, beta, int(tau), momentum)
    with np.errstate(all="ignore"):
        sub, starts = _log_starts(p)
        w, last = _log_newton(sub, starts)
        converged = np.isfinite(w.real) & np.isfinite(w.imag) & (last <= 1e-3 * RELATIVE_TOLERANCE)
        ell = np.max(np.where(converged, w.real, -np.inf), axis=-1)
        found = np.isfinite(ell)
        ell = np.where(found, ell, 0.0)
        above = outside_count(p, ell + RELATIVE_TOLERANCE)
        below = outside_count(p, ell - RELATIVE_TOLERANCE)
        certified = found & (np.abs(above) < 0.25) & (below > 0.75)
        middle = outside_count(p, 0.5 * ell)
    side = np.where(
        certified & (ell < 0) & (np.abs(middle) < 0.25),
        -1,
        np.where(certified & (ell > 0) & (middle > 0.75), 1, 0),
    )
    return ell, certified, side
