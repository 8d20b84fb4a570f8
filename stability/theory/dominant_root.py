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

Reference: the argument principle and Newton's method, e.g. P. Henrici, *Applied
and Computational Complex Analysis*, vol. 1 (1974), sections 4.10 and 6.10; the
sparse form of P is docs/theory.md section 3.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

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


def sparse_characteristic(q, beta, tau: int, momentum: str) -> SparseCharacteristic:
    """The sparse form of a rule's characteristic polynomial (module docstring)."""
    one = jnp.ones_like(q)
    zero = jnp.zeros_like(q)
    if momentum == "heavy_ball":
        return SparseCharacteristic(tau - 1, one, beta, zero, q)
    if momentum == "nesterov":
        return SparseCharacteristic(tau, one, beta, q * (1.0 + beta), -q * beta)
    if momentum == "shifted":
        return SparseCharacteristic(tau, one, zero, q - beta, beta)
    raise ValueError(f"momentum must be 'heavy_ball', 'nesterov' or 'shifted'; got {momentum!r}")


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
      momentum: "heavy_ball", "nesterov" or "shifted" (static).

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
