"""Stability thresholds without eigenvalues: the boundary locus.

Every rule's characteristic polynomial is ``P(z) = A(z) + q B(z)`` (``q = lr *
sharpness``, ``stability.theory.rules``). A root is on the unit circle at ``z =
e^{i theta}`` exactly when ``q = -A(e^{i theta}) / B(e^{i theta})`` is real, so the
largest stable q is the smallest positive real value of that curve over
``theta in [0, pi]`` (docs/theory.md section 6). For small q > 0 all roots of the
named rules are inside the unit circle (q = 0: roots 0, beta and 1, and the root
at 1 moves inwards), so the stable set is ``0 < q < q_max`` (tested as a
property: it is an interval).

Named rules (fast path, O(1) per point, no eigenvalues). Factor
``-A/B = 2 sin(theta/2) (-i) G(theta)`` with, writing ``c, s = cos, sin(theta/2)``,
``G = e^{i alpha} (X + i Y)`` up to a positive factor:

- heavy_ball: X = (1-beta) c, Y = (1+beta) s, alpha = tau theta,
  |q| = 2s |e^{i theta} - beta|;
- nesterov: X = (1-beta) c^2 + (1+beta)(1+2beta) s^2, Y = 2 beta^2 c s,
  alpha = (tau + 1/2) theta, |q| = 2s |e^{i theta} - beta| / |(1+beta) e^{i theta} - beta|;
- shifted: X = (1-beta) cos(psi/2), Y = (1+beta) sin(psi/2), alpha = tau theta / 2,
  |q| = 2s |e^{i psi} - beta|, psi = (tau + 1) theta.

(beta = 0 gives gd: X + iY = e^{i theta/2}, so G = e^{i(tau+1/2)theta}.) q is real
and positive iff the unwrapped phase ``g = alpha + arg(X + iY)`` (g(0) = 0) equals
``pi/2 + 2 pi k``. Facts used (each checked by the tests against eigenvalues):

- g is increasing for all three rules (nesterov: for tau >= 1; at tau = 0 it
  stays below pi/2 until theta = pi): heavy_ball g' = tau - 1/2 + Re(e^{i theta} /
  (e^{i theta} - beta)) >= tau - 1/2 + 1/(1+beta); shifted g' >= (tau+1)/(1+beta)
  - 1/2 > 0; nesterov checked numerically on a fine (theta, beta) grid.
- The modulus at a crossing is increasing in theta, so the FIRST crossing (k =
  0) is the minimum. heavy_ball, nesterov: |q(theta)| itself is increasing. shifted
  (where |e^{i psi} - beta| oscillates): at a crossing ``arg(e^{i psi} - beta) =
  pi/2 + theta/2 (mod 2 pi)``, which fixes ``psi mod 2 pi`` as an increasing
  function u(theta) in (0, pi], so the modulus ``2 sin(theta/2) |e^{iu} - beta|``
  is increasing along crossings.
- Bracket: the crossing lies in ``(0, h]`` with h = 1.5 pi / (2 tau + 1) (heavy_ball,
  nesterov) or 2 pi / (2 tau + 1) (shifted), capped at pi, and on that bracket g
  stays below 3 pi / 2, so ``F = X cos(alpha) - Y sin(alpha) = |X+iY| cos g`` has
  exactly one sign change. F is solved by bracketed Newton from a quadratic
  initial guess (F is even in theta); 4 iterations reach full precision (on 1e6 random
  points with tau up to 1e6 and 1 - beta down to 1e-6). They are unrolled into one
  elementwise kernel, with sin and cos as vectorisable polynomials (``_sincos``), and
  a while loop afterwards only checks convergence (or finishes stragglers). Each
  point's result depends only on its own (tau, beta), so a batch may be sharded.
- tau = 0: the crossing is z = -1 (theta = pi) for every rule; tau = 1, nesterov
  (where g is nearly flat): the cubic's unit-circle condition ``1 - a0^2 + a0 a2 -
  a1 = 0`` gives ``beta^2 q^2 + (1 - beta^2) q - (1 - beta) = 0``.

Closed forms reproduced: gd ``2 sin(pi / (2(2 tau + 1)))`` (Levin and May 1976);
heavy_ball ``2(1+beta)`` (tau=0), ``1-beta`` (tau=1); shifted ``2(1+beta)``,
``1-beta^2``; nesterov ``(2+2beta)/(1+2beta)`` (tau=0).

Delay distributions (support 0..K, up to 10^4 and beyond): ``stability.theory.delay_locus``,
the same locus written with ``S(theta) = sum_k p_k e^{-i k theta}`` (one FFT for a
grid, direct sums elsewhere) and certified by branch and bound, O(K log K).

Dense polynomials (linearised optax optimisers, ``dense_threshold``):
``H = Im(-A conj(B))`` is sampled on ``theta_j = pi j / M`` with M >= 16 deg P
(resolving every sign change unless two crossings are closer than pi / M), plus
points on the scale 1 - |r| around the angle of every root r of A within 0.1 of
the unit circle (where the locus loops tightly around 0); the
(up to) 8 sign changes with smallest interpolated q are refined by bisection,
and the result carries a ``reliable`` flag.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.theory import delay_locus
from stability.theory.companion import companion_from_coefficients
from stability.theory.delays import DelayDistribution
from stability.theory.hyperparameters import check_hyperparameters
from stability.theory.precision import float_dtype, python_scalars_out
from stability.theory.rules import Rule, as_rule, rule_polynomial
from stability.theory.sincos import sincos
from stability.validation import is_concrete

_MAX_NEWTON = 60
_UNROLLED_NEWTON = 4
_DENSE_CANDIDATES = 8
_BISECTION_STEPS = 64
_ROOT_OFFSETS = (-8.0, -4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class Threshold(NamedTuple):
    """The largest stable ``q = lr * sharpness``.

    q_max: the threshold (stable iff 0 < q < q_max); inf if no root ever reaches
      the unit circle.
    theta: the angle of the unit-circle root at q = q_max (radians, in [0, pi]).
    reliable: False where the solver did not certify the result (Newton not
      converged; dense locus with unresolved candidates), or where the dtype cannot
      resolve it: the named rules' estimated relative error (`resolved`) exceeds
      ``RESOLUTION`` = 1e-3 (float32 for beta above about 0.9999).

    From :func:`stability_threshold` with Python-scalar arguments the fields are a
    Python float, float and bool, computed in float64 whatever ``jax_enable_x64``
    says; otherwise arrays in the arguments' dtype.
    """

    q_max: jnp.ndarray
    theta: jnp.ndarray
    reliable: jnp.ndarray


# ----------------------------------------------------------------------------
# What a dtype resolves

RESOLUTION = 1e-3


def resolved(tau, beta, dtype):
    """Whether ``dtype`` resolves ``q_max(tau, beta)`` to relative ``RESOLUTION``.

    The estimated relative error is ``u (8 + 1.25 beta / (1 - beta))`` (``u`` the
    dtype's unit roundoff; tau = 0: ``8 u``). Why: beta itself is stored rounded,
    by at most ``u beta``, and q_max is sensitive to it near 1 (heavy_ball at tau =
    1 is ``1 - beta``): ``(1 - beta) |d ln q_max / d beta| <= 1.2`` for every rule,
    measured on tau in 1..1e9 and 1 - beta in 1e-9..1; the solver adds at most
    ``5.3 u`` (float32 against float64 at the same inputs, tau up to 1e7); at tau =
    0 q_max is ``2 (1 + beta)``-like, insensitive. Float32 at beta = 0.999999
    (stored as 0.99999899) gives a q_max 1.3 % above the one for 0.999999, at
    0.9999999 19 %: flagged. Float64 loses the flag only for 1 - beta below about
    1e-13.
    """
    u = 0.5 * float(jnp.finfo(dtype).eps)
    beta = jnp.asarray(beta, dtype)
    amplification = jnp.where(jnp.asarray(tau) == 0, 0.0, 1.25 * beta / (1 - beta))
    return u * (8.0 + amplification) <= RESOLUTION


# ----------------------------------------------------------------------------
# Named rules: O(1) per point


# The fixed-delay solver evaluates sin and cos as polynomials (stability.theory.sincos).
_sincos = sincos


def _crossing_f(theta, tau, beta, rule):
    """F = X cos(alpha) - Y sin(alpha), dF/dtheta and (s, s_psi) (``Rule.crossing``).

    theta in [0, pi] with every angle below in [0, 3 pi / 4] on the bracket (module
    docstring), so the polynomial ``sincos`` applies.
    """
    x, y, dx, dy, alpha, d_alpha, s, sp = as_rule(rule).crossing(theta, tau, beta)
    sa, ca = sincos(alpha)
    f = x * ca - y * sa
    df = dx * ca - dy * sa - d_alpha * (x * sa + y * ca)
    return f, df, s, sp


def _quadratic_coefficient(tau, beta, rule):
    """K in F(theta) = (1 - beta) - K theta^2 + O(theta^4) (Taylor expansion of F)."""
    return as_rule(rule).quadratic_coefficient(tau, beta)


@partial(jax.jit, static_argnames=("momentum",))
def _named_threshold(tau, beta, momentum):
    rule = as_rule(momentum)  # a rule with the closed forms of the module docstring
    hi = jnp.minimum(jnp.pi, rule.locus_span * jnp.pi / (2 * tau + 1))
    lo = jnp.zeros_like(hi)
    # F(theta) = F0 - K theta^2 + O(theta^4) (F is even): start at the root of that.
    theta0 = jnp.sqrt((1 - beta) / rule.quadratic_coefficient(tau, beta))
    theta0 = jnp.where(jnp.isfinite(theta0), jnp.clip(theta0, lo, hi), 0.5 * hi)
    eps = 4 * jnp.finfo(hi.dtype).eps
    tol = 1e-2 * jnp.sqrt(eps)
    # tau = 0 (and nesterov tau = 1) are closed forms below: no iterations for them
    trivial = rule.trivial_delay(tau)

    # Bracketed Newton until every point's step is below tol (quadratic convergence:
    # the remaining error is then ~ tol^2).
    def step(state):
        it, theta, lo, hi, done = state
        val, slope, _, _ = _crossing_f(theta, tau, beta, rule)
        lo = jnp.where(val > 0, theta, lo)
        hi = jnp.where(val > 0, hi, theta)
        new = theta - val / slope
        # accept a Newton step that lands inside the bracket (up to rounding)
        slack = eps * hi
        inside = (new >= lo - slack) & (new <= hi + slack)
        new = jnp.where(inside, jnp.clip(new, lo, hi), 0.5 * (lo + hi))
        # a converged point keeps its value (the step is a no-op up to rounding)
        new = jnp.where(done, theta, new)
        now = (jnp.abs(new - theta) <= tol * theta) | (hi - lo <= eps * hi) | trivial
        return it + 1, new, lo, hi, done | now

    def cond(state):
        return (state[0] < _MAX_NEWTON) & ~jnp.all(state[4])

    # A fixed number of unrolled steps fuses into one elementwise kernel (no loop state
    # through memory); on 1e6 random (tau <= 1000, beta <= 0.99) points all have
    # converged after them, and the loop only checks that (or finishes stragglers).
    state = (jnp.int32(0), theta0, lo, hi, trivial)
    for _ in range(_UNROLLED_NEWTON):
        state = step(state)
    _, theta, _, _, done = jax.lax.while_loop(cond, step, state)
    theta = jnp.where(tau == 0, jnp.pi, theta)
    q = rule.modulus(theta, tau, beta)
    q, theta, done = rule.exact_threshold(q, theta, done, tau, beta)
    return Threshold(q, theta, (done | (tau == 0)) & resolved(tau, beta, beta.dtype))


@python_scalars_out
def stability_threshold(tau, beta=0.0, *, momentum="heavy_ball") -> Threshold:
    """The largest stable ``q = lr * sharpness`` of a rule (boundary locus).

    Args:
      tau: delay, integer or integer array (broadcasts with beta), or a
        ``DelayDistribution`` (first-moment model; ``stability.theory.delay_locus``:
        certified to relative 1e-10, O(K log K) for support 0..K).
      beta: momentum in [0, 1) (array allowed).
      momentum: "heavy_ball", "nesterov", "shifted" or "gd" (beta = 0: plain
        delayed SGD), or a `stability.theory.rules.Rule`.

    Returns:
      :class:`Threshold` ``(q_max, theta, reliable)``, broadcast over tau and beta
      (Python float, float, bool when tau and beta are Python scalars, computed in
      float64; arrays keep their dtype, and in float32 ``reliable`` is False where
      the rounding of beta moves q_max by more than ``RESOLUTION``, see `resolved`).
      A rule without the closed forms (`stability.theory.rules.Rule.provides`) gets
      `dense_threshold` of its polynomial, once per distinct concrete delay.
    """
    hp = check_hyperparameters(tau, beta=beta, momentum=momentum)
    return checked_threshold(hp.tau, hp.beta, hp.rule)


@python_scalars_out
def checked_threshold(tau, beta, rule: Rule) -> Threshold:
    """:func:`stability_threshold` of checked arguments (a `Rule` object; nothing is
    checked again)."""
    dtype = float_dtype(beta)
    if isinstance(tau, DelayDistribution):
        if not rule.provides("locus_g"):
            return _generic_threshold(tau, beta, rule, float_dtype(beta, tau.probabilities))
        return _distribution_threshold(tau, beta, rule)
    if not rule.provides("crossing"):
        return _generic_threshold(tau, beta, rule, dtype)
    # a concrete delay becomes a float on the host: jnp.asarray of an int64 array
    # without x64 wraps 2**31 to a negative delay
    tau_f = (
        jnp.asarray(np.asarray(tau, np.float64), dtype)
        if is_concrete(tau)
        else jnp.asarray(tau).astype(dtype)
    )
    beta = jnp.asarray(beta, dtype)
    tau_f, beta = jnp.broadcast_arrays(tau_f, beta)
    return _named_threshold(tau_f, beta, rule)


def _generic_threshold(tau, beta, rule: Rule, dtype) -> Threshold:
    """A rule known only by its polynomial: `dense_threshold` of ``A + q B``, once per
    distinct delay (tau must be concrete: it fixes the polynomial's degree). Concrete
    float64 arguments are solved in numpy on the host (no program compiled per degree)."""
    host = is_concrete(beta) and np.dtype(dtype) == np.float64
    xp = np if host else jnp

    def find(a, b):
        if not host:
            return dense_threshold(a, b)
        with np.errstate(divide="ignore", invalid="ignore"):  # inf / NaN as in JAX
            return _dense_threshold(a, b, 16, np)

    beta = xp.asarray(beta, dtype)
    if isinstance(tau, DelayDistribution):
        return Threshold(*map(jnp.asarray, find(*rule_polynomial(rule, tau, beta, xp))))
    if not is_concrete(tau):
        raise TypeError(
            f"tau must be a concrete integer for momentum={rule.name!r} (its threshold is "
            f"computed from the polynomial, whose degree tau fixes); got a traced value {tau!r}"
        )
    taus = np.asarray(tau)
    shape = np.broadcast_shapes(taus.shape, beta.shape)
    taus, beta = np.broadcast_to(taus, shape), xp.broadcast_to(beta, shape)
    out = Threshold(xp.zeros(shape, dtype), xp.zeros(shape, dtype), xp.zeros(shape, bool))
    for t in np.unique(taus):
        found = find(*rule_polynomial(rule, int(t), beta, xp))
        here = taus == t
        out = Threshold(*(xp.where(here, new, old) for new, old in zip(found, out, strict=True)))
    return Threshold(*map(jnp.asarray, out))


def _distribution_threshold(dist: DelayDistribution, beta, rule: Rule) -> Threshold:
    """A delay distribution's thresholds, one per beta (``stability.theory.delay_locus``, numpy
    on the host); a traced beta goes through ``jax.pure_callback`` (no derivatives)."""
    p = np.asarray(dist.probabilities, dtype=np.float64)
    dtype = np.dtype(float_dtype(beta, dist.probabilities))

    def host(b):
        q, theta, ok = delay_locus.thresholds(p, np.asarray(b, np.float64), rule)
        # beta reached the host rounded to dtype: the named rules' estimate of what
        # that costs (a delay distribution is a mixture of fixed delays)
        sensitive = np.where(b == 0, 0.0, 1.25 * b / (1 - b))
        ok = ok & (0.5 * float(np.finfo(dtype).eps) * (8.0 + sensitive) <= RESOLUTION)
        return q.astype(dtype), theta.astype(dtype), ok

    if is_concrete(beta):
        return Threshold(*(jnp.asarray(x) for x in host(beta)))
    beta = jnp.asarray(beta, dtype)
    shapes = (jax.ShapeDtypeStruct(beta.shape, dtype),) * 2
    shapes += (jax.ShapeDtypeStruct(beta.shape, np.bool_),)
    return Threshold(*jax.pure_callback(host, shapes, beta, vmap_method="broadcast_all"))


@python_scalars_out
def max_stable_sharpness(lr, tau, beta=0.0, *, momentum="heavy_ball"):
    """The largest Hessian eigenvalue a minimum may have and stay linearly stable.

    ``q_max(tau, beta) / lr``, from the boundary locus (no eigenvalues); see
    :func:`stability_threshold`. Broadcasts over lr, tau and beta (tau must be a
    concrete integer array or a ``DelayDistribution``). Where the solver could not
    certify the value the result is NaN (use ``stability_threshold`` for the flag).
    Units: the same as the loss Hessian's eigenvalues (1 / lr). A Python float
    when every argument is a Python scalar, else an array (also under ``jax.jit``).
    """
    hp = check_hyperparameters(tau, lr, beta, momentum)
    return checked_limit(hp.lr, hp.tau, hp.beta, hp.rule)


@python_scalars_out
def checked_limit(scale, tau, beta, rule: Rule):
    """``q_max(tau, beta) / scale`` of checked arguments, NaN where not certified:
    :func:`max_stable_sharpness` (scale = lr) and the full-batch
    `stability.max_stable_lr` (scale = sharpness)."""
    dtype = float_dtype(beta, scale)
    t = checked_threshold(tau, jnp.asarray(beta, dtype), rule)
    q = jnp.where(t.reliable, t.q_max, jnp.nan)
    return q / jnp.asarray(scale, dtype)


# ----------------------------------------------------------------------------
# Dense polynomials: sampled locus + bisection


def _on_circle(coeffs, theta, xp=jnp):
    """Polynomials (descending coefficients, (..., n+1)) at e^{i theta} (theta (..., J))."""
    n = coeffs.shape[-1] - 1
    powers = xp.arange(n, -1, -1, dtype=theta.dtype)
    phase = theta[..., None] * powers
    re = xp.sum(coeffs[..., None, :] * xp.cos(phase), axis=-1)
    im = xp.sum(coeffs[..., None, :] * xp.sin(phase), axis=-1)
    return re, im


def _locus(a, b, theta, xp=jnp):
    """(H, R, |B|^2) with -A conj(B) = R + i H at e^{i theta}."""
    ar, ai = _on_circle(a, theta, xp)
    br, bi = _on_circle(b, theta, xp)
    # -(ar + i ai)(br - i bi)
    r = -(ar * br + ai * bi)
    h = -(ai * br - ar * bi)
    return h, r, br * br + bi * bi


@partial(jax.jit, static_argnames=("grid_factor",))
def dense_threshold(a, b, *, grid_factor: int = 16) -> Threshold:
    """Boundary locus of ``A(z) + q B(z)`` for arbitrary real polynomials.

    ``a``, ``b``: descending coefficients, shape ``(..., n+1)``. Finds the smallest
    ``q > 0`` with a root on the unit circle. Crossings closer together than
    ``pi / (grid_factor * n)`` or touching (even multiplicity) can be missed; the
    ``reliable`` flag is False when more than 8 sign changes are within 1% of the
    best candidate or when none was found on the grid but an endpoint matters.
    """
    return _dense_threshold(a, b, grid_factor, jnp)


def _dense_threshold(a, b, grid_factor: int, xp) -> Threshold:
    """`dense_threshold` in numpy (host, float64: no compilation, for concrete
    arguments) or JAX (``xp``)."""
    a, b = xp.broadcast_arrays(xp.asarray(a), xp.asarray(b))
    batch = a.shape[:-1]
    dtype = a.dtype
    n = a.shape[-1] - 1
    m = max(64, grid_factor * n)
    uniform = xp.broadcast_to(xp.linspace(0.0, xp.pi, m + 1, dtype=dtype), batch + (m + 1,))
    # A root r of A close to the unit circle makes the locus loop tightly around 0
    # within |theta - arg r| ~ 1 - |r|: sample there on that scale too.
    roots = xp.linalg.eigvals(companion_from_coefficients(a / a[..., :1], xp))
    dist = xp.abs(1 - xp.abs(roots))
    ang = xp.abs(xp.angle(roots)).astype(dtype)
    offsets = xp.asarray(_ROOT_OFFSETS, dtype)
    extra = ang[..., None] + dist[..., None].astype(dtype) * offsets
    near = (dist < 0.1)[..., None] & (extra > 0) & (extra < xp.pi)
    extra = xp.where(near, extra, 0.0).reshape(batch + (-1,))
    grid = xp.sort(xp.concatenate([uniform, extra], axis=-1), axis=-1)
    h, r, b2 = _locus(a, b, grid, xp)
    q_grid = r / b2
    # sign changes of H on [theta_j, theta_{j+1}] with theta_j > 0 (H(0) = 0: q = 0 there)
    h0, h1 = h[..., :-1], h[..., 1:]
    change = (((h0 > 0) & (h1 <= 0)) | ((h0 < 0) & (h1 >= 0))) & (grid[..., :-1] > 0)
    w = h0 / xp.where(change, h0 - h1, 1.0)
    w = xp.where(change, w, 0.0)
    q_est = (1 - w) * q_grid[..., :-1] + w * q_grid[..., 1:]
    q_est = xp.where(change & (q_est > 0), q_est, xp.inf)
    k = min(_DENSE_CANDIDATES, q_est.shape[-1])
    if xp is np:
        idx = np.argsort(q_est, axis=-1, kind="stable")[..., :k]
        cand_q = np.take_along_axis(q_est, idx, axis=-1)
    else:
        neg_best, idx = jax.lax.top_k(-q_est, k)
        cand_q = -neg_best
    lo = xp.take_along_axis(grid, idx, axis=-1)
    hi = xp.take_along_axis(grid, idx + 1, axis=-1)
    h_lo = xp.take_along_axis(h0, idx, axis=-1)

    def bisect(_, state):
        lo, hi = state
        mid = 0.5 * (lo + hi)
        hm, _, _ = _locus(a, b, mid, xp)
        same = xp.sign(hm) == xp.sign(h_lo)
        return xp.where(same, mid, lo), xp.where(same, hi, mid)

    if xp is np:
        for i in range(_BISECTION_STEPS):
            lo, hi = bisect(i, (lo, hi))
    else:
        lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, bisect, (lo, hi))
    th = 0.5 * (lo + hi)
    _, rr, bb = _locus(a, b, th, xp)
    q_ref = rr / bb
    q_ref = xp.where(xp.isfinite(cand_q) & (q_ref > 0), q_ref, xp.inf)
    # endpoints: real roots crossing at z = -1 (theta = pi) or z = 1 (theta = 0)
    q_pi = q_grid[..., -1]
    scale = xp.sum(xp.abs(a), axis=-1)
    a_at_1 = xp.sum(a, axis=-1)
    q_0 = xp.where(xp.abs(a_at_1) > 1e-12 * scale, q_grid[..., 0], xp.inf)
    q_all = xp.concatenate(
        [
            q_ref,
            xp.where(q_pi > 0, q_pi, xp.inf)[..., None],
            xp.where(q_0 > 0, q_0, xp.inf)[..., None],
        ],
        axis=-1,
    )
    th_all = xp.concatenate(
        [th, xp.full(batch + (1,), xp.pi, dtype), xp.zeros(batch + (1,), dtype)], axis=-1
    )
    best = xp.argmin(q_all, axis=-1)
    q_max = xp.take_along_axis(q_all, best[..., None], axis=-1)[..., 0]
    theta = xp.take_along_axis(th_all, best[..., None], axis=-1)[..., 0]
    # unresolved: the k-th (unrefined) candidate could still beat the best refined one
    n_changes = xp.sum(xp.isfinite(q_est), axis=-1)
    margin_ok = (n_changes <= k) | (cand_q[..., -1] > 1.01 * q_max)
    return Threshold(q_max, theta, margin_ok)
