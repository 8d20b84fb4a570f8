"""Mean-square stability of mini-batch SGD with delay and momentum.

With mini-batches the curvature a step sees is random, and a minimum that is
stable for the full-batch (mean) recursion can still be left: the SECOND moment
of the distance to the minimum grows. Wu, Ma and E ("How SGD selects the global
minima in over-parameterized learning", NeurIPS 2018) give the condition for
SGD (tau = 0); this module derives it for every delayed rule of
`stability.theory.rules` and computes the thresholds.

Model. Per-example quadratics ``f_i(w) = w^T H_i w / 2``, ``i = 1..n``, around the
minimum ``w* = 0`` (every example's gradient vanishes there: an interpolating
minimum; per-example gradients that do not vanish add a forcing term that changes
the level of the second moment, not its stability). ``H = mean_i H_i`` and the
non-uniformity matrix ``Sigma = mean_i H_i^2 - H^2 = mean_i (H_i - H)^2``. A
mini-batch ``S`` of ``B`` examples gives the gradient ``H_S w``, ``H_S = (1/B)
sum_{i in S} H_i``, ``E[H_S] = H``, with a fresh batch at every step.

Sampling. With ``D_i = H_i - H`` (``sum_i D_i = 0``),
``E[(H_S - H) M (H_S - H)] = gamma mean_i D_i M D_i`` for every matrix M, where
the variance factor ``gamma`` (:func:`variance_factor`) is

- ``1 / B`` with replacement (B independent uniform draws);
- ``(n - B) / (B (n - 1))`` without replacement (B distinct examples, uniformly:
  what `stability.simulate_async` draws). The pair terms of distinct examples have
  ``E[D_i (x) D_j] = -mean_i D_i (x) D_i / (n - 1)``, which gives the
  finite-population correction ``(1 - (B - 1) / (n - 1)) / B``.

The full batch ``B = n`` without replacement has ``gamma = 0`` (no noise: the
deterministic threshold of `stability.max_stable_sharpness`); with replacement it
has ``gamma = 1 / n`` and a strictly lower threshold.

Scalar reduction (Wu, Ma and E's one-dimensional analysis). When the ``H_i``
commute (share eigenvectors), along a common eigenvector ``u`` the coordinate
``x_t = u^T w_t`` follows the scalar rule with the random curvature
``h_t = u^T H_{S_t} u``: ``E h_t = a`` (the eigenvalue of H) and
``Var h_t = gamma s^2`` with ``s^2 = u^T Sigma u = mean_i (u^T H_i u)^2 - a^2``,
independent across steps. Second moments of different directions do not feed
into each other, so each direction is judged on its own ``(a, s)``. Units: ``a``
and ``s`` are Hessian eigenvalues (loss per squared parameter unit); ``q = lr a``
and the relative noise ``r = gamma s^2 / a^2`` are dimensionless.

tau = 0 (Wu, Ma and E). ``x_{t+1} = (1 - lr h_t) x_t``, so
``E x_{t+1}^2 = [(1 - lr a)^2 + lr^2 gamma s^2] E x_t^2``: stable in mean square
iff ``(1 - lr a)^2 + lr^2 gamma s^2 < 1``, i.e. ``lr < 2 a / (a^2 + gamma s^2)``
(``q < 2 / (1 + r)``). In matrix form their condition reads
``lambda_max((I - lr H)^2 + lr^2 gamma Sigma) <= 1`` (sufficient for any ``H_i``,
exact when they commute); it implies ``a <= 2 / lr`` and
``sqrt(lambda_max(Sigma)) <= 1 / (lr sqrt(gamma))``.

Delayed rules, with and without momentum. Every rule is a linear system from the
sequence of scaled gradients ``lr g_t`` to the weights. The gradient reads a stale
coordinate ``y_t`` (``x_{t - tau}``; for ``shifted`` the weights the gradient was
computed at) and ``lr g_t = q y_t + u_t`` with ``q = lr a`` and the mini-batch noise
``u_t = lr (h_t - a) y_t``. Without noise the loop has the characteristic
polynomial ``P = A + q B`` of `stability.theory.rules`; the noise enters exactly where
``q y`` does, so (``z``-transform, initial conditions aside)
``Y(z) = -B(z) / P(z) U(z)``:

    y_t = f_t - sum_{k >= 1} t_k u_{t-k},

with ``t_k`` the impulse response of ``B / P`` (``t_0 = 0``: a gradient affects
later weights only) and ``f_t`` the noise-free response (it decays iff P is Schur
stable, ``q < q_max(tau, beta)``). Given the past, ``u_t`` has mean 0 and
``E[u_t^2 | past] = sigma^2 y_t^2`` with ``sigma^2 = lr^2 gamma s^2``; the ``u_t``
are martingale differences, so every cross term vanishes and the second moment
``m_t = E y_t^2`` obeys the renewal equation

    m_t = f_t^2 + sigma^2 sum_{k >= 1} t_k^2 m_{t-k}.

Hence (the mean-square small-gain theorem for a loop with multiplicative white
noise) the delayed rule is stable in mean square iff

    q < q_max(tau, beta)   and   sigma^2 N(q) < 1,   N(q) = sum_k t_k^2 = ||B / P||_2^2,

``N`` the squared H2 norm of the loop from gradient noise to the stale coordinate
(:func:`noise_gain`); in relative terms ``q^2 r N(q) < 1``. The per-step factor of
the second moment is the root ``mu`` of ``sigma^2 sum_k t_k^2 mu^(-k) = 1`` above
``rho(P)^2`` (:func:`second_moment_growth`): the Perron root of the lifted
(Kronecker) recursion ``M+ = K M K^T + sigma^2 (c^T M c) b b^T`` of the delayed
state's second-moment matrix M (K the noise-free transition, b the noise input, c
the stale read). The tests check N and mu against the eigenvalues of that lifted
matrix, built from the update rules themselves and averaged over every mini-batch.
tau = 0, plain SGD: ``B / P = 1 / (z - 1 + q)``, ``t_k = (1 - q)^(k-1)``,
``N = 1 / (q (2 - q))``, and ``sigma^2 N < 1`` is Wu, Ma and E's condition.

Threshold. ``q^2 N(q)`` increases from 0 (``q -> 0``: ``N ~ 1 / q``) to infinity
(``q -> q_max``: a root reaches the unit circle), checked on grids of rules, delays
and momenta by the tests, so the stable set is ``0 < q < q_ms(r)`` with ``q_ms``
the root of ``q^2 r N(q) = 1`` (:func:`mean_square_threshold`, bisection). The
noise always binds first: ``q_ms(r) < q_max`` for every ``r > 0``; ``r = 0`` gives
``q_max``. The largest stable learning rate is ``q_ms(r) / a``
(:func:`max_stable_lr_minibatch`).

Computing N. Astrom's recursion (Astrom, "Introduction to Stochastic Control
Theory", 1970, ch. 5: the Schur-Cohn-Jury reduction): with descending coefficients
``a = P`` (``a_0 = 1``), ``b = B`` of length ``d + 1`` and, for ``k = d, ..., 1``,
``alpha_k = a_k / a_0``, ``beta_k = b_k / a_0``, then ``a_i <- a_i - alpha_k a_{k-i}``
and ``b_i <- b_i - beta_k a_{k-i}`` (``i < k``),
``N = sum_k beta_k b_k + b_0^2 / a_0`` (the values at each step). P is Schur stable
iff every reduced ``a_0`` stays positive (Jury), so the same pass says whether N is
finite. ``O(d^2)`` per point, ``d = tau + 2``; no eigenvalues. It runs in numpy for
concrete inputs and in jax (jit and vmap friendly) for traced ones.

Scope: a constant delay (not a delay distribution: a random delay adds its own
second-moment terms, not modelled here). For a network the ``H_i`` do not commute:
the verdict (`stability.is_accessible` with ``batch_size``) applies the scalar
condition along candidate directions ``v`` with ``a = v^T H v`` and ``s^2 = v^T
Sigma v`` (`stability.curvature.nonuniformity`): the top eigenvector of H, the top eigenvector
of Sigma and the top eigenvector of Wu, Ma and E's matrix. Along a common
eigenvector it is exact; at tau = 0 the scalar condition along v is the ``(v, v)``
entry of Wu, Ma and E's matrix being below 1.

Mean square is not almost sure: near the threshold the second moment grows through
rare runs while most runs still contract (at 1.25x the threshold with delay 1 and
heavy ball 0.5, about 4 runs in 5 of the end-to-end example of
tests/test_accessibility_minibatch.py contract; at tau = 0 every run grows), so a
simulation confirms a mean-square verdict through the mean over runs.
"""

from __future__ import annotations

import functools
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.theory.boundary_locus import checked_threshold
from stability.theory.delays import DelayDistribution
from stability.theory.hyperparameters import check_hyperparameters
from stability.theory.precision import float_dtype, python_scalars_out
from stability.theory.rules import Rule, rule_polynomial
from stability.validation import (
    check_finite,
    check_int,
    check_lr,
    check_number,
    check_positive,
    check_tau,
    is_concrete,
)

__all__ = [
    "MeanSquareThreshold",
    "MeanSquareStability",
    "variance_factor",
    "noise_gain",
    "mean_square_threshold",
    "second_moment_growth",
    "mean_square_stability",
    "max_stable_lr_minibatch",
    "lr_for_delay_minibatch",
]

_BISECTION_STEPS = 80  # halvings of (0, q_max): absolute error q_max 2^-80
_LOG_MU_FLOOR = -80.0  # second-moment factors below e^-80 are reported as e^-80


class MeanSquareThreshold(NamedTuple):
    """The largest ``q = lr * a`` at which the second moment is stable.

    q_max: the mean-square threshold ``q_ms(r)``: stable iff ``0 < q < q_max``.
    q_max_mean: the deterministic (first-moment) threshold ``q_max(tau, beta)`` of
      `stability.stability_threshold`; ``q_max <= q_max_mean``, equal iff r = 0.
    reliable: False where the deterministic threshold was not certified (then
      both are NaN).
    """

    q_max: jnp.ndarray
    q_max_mean: jnp.ndarray
    reliable: jnp.ndarray


class MeanSquareStability(NamedTuple):
    """The mean-square condition for one ``(lr, a, s)`` (:func:`mean_square_stability`).

    stable: True iff the second moment decays (``mean_stable`` and ``gain < 1``).
    mean_stable: the deterministic condition ``lr a < q_max(tau, beta)``.
    gain: ``lr^2 gamma s^2 N(lr a)``, the loop gain of the noise (inf when the mean
      is unstable); the noise condition is ``gain < 1``.
    growth: per-step factor ``mu`` of the second moment (< 1 iff stable).
    variance_factor: ``gamma``.
    max_stable_lr: the largest stable learning rate, mean-square (``q_ms(r) / a``).
    max_stable_lr_mean: the deterministic one (``q_max / a``).
    """

    stable: jnp.ndarray
    mean_stable: jnp.ndarray
    gain: jnp.ndarray
    growth: jnp.ndarray
    variance_factor: jnp.ndarray
    max_stable_lr: jnp.ndarray
    max_stable_lr_mean: jnp.ndarray


# ----------------------------------------------------------------------------- checks


def _check_delay(tau, name: str = "tau") -> int:
    if isinstance(tau, DelayDistribution):
        raise ValueError(
            f"{name} must be a constant delay (an integer) for the mean-square condition; got a "
            "DelayDistribution (random delays add second-moment terms that are not modelled)"
        )
    check_tau(tau, name)
    if not is_concrete(tau) or np.ndim(tau) != 0:
        raise ValueError(f"{name} must be a concrete scalar integer here; got {tau!r}")
    return int(tau)


def _check_sampling(batch_size, num_examples, replacement, name="batch_size") -> tuple[int, int]:
    n = check_int("num_examples", num_examples, 1)
    b = check_int(name, batch_size, 1)
    if not isinstance(replacement, (bool, np.bool_)):
        raise TypeError(f"replacement must be True or False; got {replacement!r}")
    if not replacement and b > n:
        raise ValueError(
            f"{name} must be <= num_examples ({n}) when sampling without replacement; got {b}"
        )
    return b, n


def check_batch_arguments(tau, batch_size, num_examples, replacement, needed=None, *,
                          from_tau=0, from_batch_size=None, given=None) -> None:  # fmt: skip
    """The checks of the ``batch_size`` path of `stability.max_stable_lr` and
    `stability.lr_for_delay` (their default path never calls this).

    ``needed``: ``{name: value}`` of the arguments the mini-batch formula needs
    (sharpness, nonuniformity); ``given``: ``{name: value}`` of the mini-batch
    arguments, which must not appear without ``batch_size``. Raises ValueError naming
    the argument and its value (a missing or non-integer size, ``batch_size < 1``,
    ``batch_size > num_examples`` without replacement), NotImplementedError for a
    ``DelayDistribution`` (this model covers fixed delays only).
    """
    if batch_size is None:
        for name, value in (given or {}).items():
            if value is not None and value is not False:
                raise ValueError(
                    f"{name}={value!r} is a mini-batch argument and needs batch_size (the "
                    "batch size B); got batch_size=None"
                )
        return
    for name, value in (("tau", tau), ("from_tau", from_tau)):
        if isinstance(value, DelayDistribution):
            raise NotImplementedError(
                f"{name} is a DelayDistribution, but the mean-square (batch_size) model covers "
                f"fixed delays only (a random delay adds second-moment terms it does not model): "
                f"pass an integer {name}, or batch_size=None for the first-moment threshold"
            )
    if num_examples is None:
        raise ValueError(
            f"num_examples (n, the examples the batches are drawn from) is required with "
            f"batch_size={batch_size!r}; got num_examples=None"
        )
    for name, value in (needed or {}).items():
        if value is None:
            raise ValueError(
                f"{name} is required with batch_size={batch_size!r} (the mean-square condition "
                f"depends on it); got {name}=None"
            )
    sizes = (("batch_size", batch_size), ("from_batch_size", from_batch_size),
             ("num_examples", num_examples))  # fmt: skip
    for name, value in sizes:
        if value is None:
            continue
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            if not np.isfinite(float(value)) or not float(value).is_integer():
                raise ValueError(f"{name} must be an integer; got {value!r}")
        check_int(name, value, 1)  # TypeError for non-numbers; ValueError below 1
    _check_sampling(batch_size, num_examples, replacement)
    if from_batch_size is not None:
        _check_sampling(from_batch_size, num_examples, replacement, name="from_batch_size")


def _check_nonnegative(name, x) -> None:
    if not is_concrete(x):
        return
    check_finite(name, x)
    if np.any(np.asarray(x) < 0):
        raise ValueError(f"{name} must be >= 0; got {np.asarray(x).tolist()!r}")


def _check_rule(tau, beta, momentum) -> tuple[int, Rule]:
    """The delay (a concrete scalar integer) and the rule object, checked."""
    rule = check_hyperparameters(beta=beta, momentum=momentum).rule
    return _check_delay(tau), rule


def variance_factor(batch_size, num_examples, *, replacement: bool = False) -> float:
    """``gamma``: the variance of a mini-batch mean relative to one example's.

    ``(n - B) / (B (n - 1))`` without replacement (B distinct examples; 0 for the
    full batch), ``1 / B`` with replacement (module docstring). ``n = 1`` without
    replacement gives 0. A Python float.
    """
    b, n = _check_sampling(batch_size, num_examples, replacement)
    if replacement:
        return 1.0 / b
    if n == 1:
        return 0.0
    return (n - b) / (b * (n - 1))


# One implementation, two array namespaces (``xp``, as in stability.curvature.lanczos):
# numpy on the host for concrete inputs (no program compiled per delay or shape: a
# verdict or a sweep costs milliseconds), and jax.numpy for traced inputs (under jit,
# vmap, grad), compiled once per polynomial length bucket. The loops are `_loop`:
# Python on the host, ``lax.fori_loop`` when traced.


def _loop(n: int, body, init, xp):
    """``body(i, carry)`` for i in 0..n-1: a Python loop (numpy) or ``lax.fori_loop``."""
    if xp is np:
        carry = init
        for i in range(n):
            carry = body(i, carry)
        return carry
    return jax.lax.fori_loop(0, n, body, init)


def _polynomials(tau: int, beta, rule: Rule, xp):
    """``(A, B)`` of the rule (`stability.theory.rules.rule_polynomial`), shape
    ``beta.shape + (length,)``. Traced (jax.numpy), both are multiplied by ``z^k`` so
    that their length is a power of two (at least 8): ``B / P`` is unchanged (k extra
    roots at 0, and the recursion's first k steps are exact no-ops), and the programs
    below compile once per length, not once per delay."""
    a, b = rule_polynomial(rule, tau, beta, xp)
    if xp is np:
        return a, b
    length = a.shape[-1]
    pad = [(0, 0)] * (a.ndim - 1) + [(0, max(8, 1 << (length - 1).bit_length()) - length)]
    return jnp.pad(a, pad), jnp.pad(b, pad)


def _h2(p, b, xp):
    """``sum_k t_k^2`` for the impulse response t of ``B / P`` over the leading axes
    (descending coefficient vectors of equal length, ``p[..., 0] = 1``, ``deg B <
    deg P``) by Astrom's recursion (module docstring); inf where P is not Schur stable
    (some reduced ``a_0^(k)`` <= 0), where the sum diverges."""
    p, b = xp.broadcast_arrays(p, b)
    m = p.shape[-1]
    idx = xp.arange(m)
    if xp is np:  # updated in place below (k is a Python int there)
        p, b = np.array(p, copy=True), np.array(b, copy=True)

    def reduce(a, b, alpha, beta, k):
        """a_i -= alpha a_(k-i), b_i -= beta a_(k-i) for i < k (z^k A(1/z) subtracted)."""
        if xp is np:  # slices of the first k coefficients: half the work of the masks
            rev = a[..., k:0:-1].copy()
            a[..., :k] -= alpha[..., None] * rev
            b[..., :k] -= beta[..., None] * rev
            return a, b
        rev = xp.where(idx <= k, xp.take(a, xp.clip(k - idx, 0, m - 1), axis=-1), 0.0)
        keep = idx < k
        return xp.where(keep, a - alpha[..., None] * rev, 0.0), xp.where(
            keep, b - beta[..., None] * rev, 0.0
        )

    def body(i, carry):
        a, b, total, stable = carry
        k = m - 1 - i
        alpha = a[..., k] / a[..., 0]
        beta = b[..., k] / a[..., 0]
        total = total + beta * b[..., k]
        a, b = reduce(a, b, alpha, beta, k)
        return a, b, total, stable & (a[..., 0] > 0)

    init = (p, b, xp.zeros(p.shape[:-1], p.dtype), p[..., 0] > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a, b, total, stable = _loop(m - 1, body, init, xp)
        total = total + b[..., 0] * b[..., 0] / a[..., 0]
    return xp.where(stable, total, xp.inf)


def _gain(q, a, b, xp):
    """N(q) for q broadcast with the leading axes of a, b (inf where not stable)."""
    return _h2(a + q[..., None] * b, b, xp)


def _deterministic(tau, beta, rule: Rule, xp):
    """``q_max(tau, beta)`` per entry of beta, NaN where not certified. On the host one
    scalar threshold per distinct beta (one compiled program for every shape)."""
    if xp is np:
        out = np.empty(beta.shape, beta.dtype)
        for value in np.unique(beta):
            t = _scalar_threshold(tau, float(value), rule)
            out[beta == value] = t.q_max if t.reliable else np.nan
        return out
    t = checked_threshold(tau, beta, rule)
    return jnp.where(t.reliable, t.q_max, jnp.nan)


@python_scalars_out
def _scalar_threshold(tau, beta, rule):
    return checked_threshold(tau, beta, rule)


def _threshold(r, a, b, q_mean, xp):
    """Bisection for ``q^2 r N(q) = 1`` on (0, q_mean)."""

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        with np.errstate(invalid="ignore", over="ignore"):
            up = mid * mid * r * _gain(mid, a, b, xp) < 1
        return xp.where(up, mid, lo), xp.where(up, hi, mid)

    lo, hi = _loop(_BISECTION_STEPS, body, (xp.zeros_like(q_mean), q_mean), xp)
    q = xp.where(r > 0, 0.5 * (lo + hi), q_mean)
    return xp.where(xp.isinf(r), 0.0, q)


def _growth(q, sigma2, a, b, xp):
    """The root mu of ``sigma2 sum_k t_k^2 mu^-k = 1`` above ``rho(P)^2`` (``rho(P)^2``
    for sigma2 = 0), by bisection on log mu: ``sum_k t_k^2 mu^-k`` is the gain of the
    polynomials scaled by ``sqrt(mu)``, inf where the scaled P is not stable
    (``mu <= rho(P)^2``), and decreases in mu."""
    p = a + q[..., None] * b
    b = xp.broadcast_to(b, p.shape)
    powers = xp.arange(p.shape[-1], dtype=p.dtype)

    def below(log_mu):  # True where mu is at or below the root
        s = xp.exp(0.5 * log_mu)[..., None]
        n = _h2(p * s**-powers, b * s**-powers, xp)
        with np.errstate(invalid="ignore"):
            return ~xp.isfinite(n) | ((sigma2 > 0) & (sigma2 * n >= 1))

    def grow(_, hi):
        return xp.where(below(hi), 2.0 * hi, hi)

    hi = _loop(10, grow, xp.ones_like(q), xp)  # mu <= e^1024

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        up = below(mid)
        return xp.where(up, mid, lo), xp.where(up, hi, mid)

    lo = xp.full_like(q, _LOG_MU_FLOOR)
    lo, hi = _loop(_BISECTION_STEPS, body, (lo, hi), xp)
    return xp.exp(0.5 * (lo + hi))


# The traced namespace's programs, compiled once per shape (the numpy ones run eagerly).
_gain_jit = jax.jit(functools.partial(_gain, xp=jnp))
_threshold_jit = jax.jit(functools.partial(_threshold, xp=jnp))
_growth_jit = jax.jit(functools.partial(_growth, xp=jnp))


def _kernels(host: bool):
    """``(xp, gain, threshold, growth)`` of the host (numpy) or traced (jax) path."""
    if host:
        return (
            np,
            functools.partial(_gain, xp=np),
            functools.partial(_threshold, xp=np),
            functools.partial(_growth, xp=np),
        )
    return jnp, _gain_jit, _threshold_jit, _growth_jit


# ---------------------------------------------------------------------------- public


def _arrays(dtype, *xs):
    """Broadcast concrete inputs as numpy arrays (host path) or traced ones as jax
    arrays; returns ``(host, arrays)``."""
    if all(is_concrete(x) for x in xs):
        return True, np.broadcast_arrays(*(np.asarray(x, dtype) for x in xs))
    return False, jnp.broadcast_arrays(*(jnp.asarray(x, dtype) for x in xs))


@python_scalars_out
def noise_gain(q, tau, beta=0.0, *, momentum: str = "heavy_ball"):
    """``N(q) = ||B / P_q||_2^2 = sum_k t_k^2``: the squared H2 norm of the loop
    from gradient noise to the stale coordinate (module docstring).

    The mean-square condition is ``lr^2 gamma s^2 N(lr a) < 1``. Finite on
    ``0 < q < q_max(tau, beta)``; inf outside (the mean itself is not stable there).
    Plain SGD at tau = 0: ``1 / (q (2 - q))``. Broadcasts over q and beta; tau a
    concrete integer. Dimensionless.
    """
    tau, rule = _check_rule(tau, beta, momentum)
    check_finite("q", q)
    dtype = float_dtype(q, beta)
    host, (q, beta) = _arrays(dtype, q, beta)
    xp, gain, _, _ = _kernels(host)
    return jnp.asarray(gain(q, *_polynomials(tau, beta, rule, xp)))


@python_scalars_out
def mean_square_threshold(
    relative_noise, tau, beta=0.0, *, momentum: str = "heavy_ball"
) -> MeanSquareThreshold:
    """The largest ``q = lr * a`` with a stable second moment, given the relative noise.

    Args:
      relative_noise: ``r = gamma s^2 / a^2 >= 0`` (``gamma`` from
        :func:`variance_factor`, ``s^2`` the non-uniformity along the direction,
        ``a`` its curvature); inf for ``a = 0`` with noise (threshold 0).
      tau: constant delay (concrete integer).
      beta, momentum: momentum coefficient in [0, 1) and rule.

    Returns:
      :class:`MeanSquareThreshold`: ``q_max`` solves ``q^2 r N(q) = 1`` (bisection,
      to ``q_max_mean * 2^-80``); ``r = 0`` gives the deterministic ``q_max_mean``.
      Plain SGD at tau = 0: ``2 / (1 + r)``. Broadcasts over r and beta.
    """
    tau, rule = _check_rule(tau, beta, momentum)
    if is_concrete(relative_noise):
        check_number("relative_noise", relative_noise)
        arr = np.asarray(relative_noise, dtype=np.float64)
        if np.any(np.isnan(arr)) or np.any(arr < 0):
            raise ValueError(f"relative_noise must be >= 0 (inf allowed); got {arr.tolist()!r}")
    dtype = float_dtype(relative_noise, beta)
    host, (r, beta) = _arrays(dtype, relative_noise, beta)
    xp, _, threshold, _ = _kernels(host)
    q_mean = _deterministic(tau, beta, rule, xp)
    q = threshold(r, *_polynomials(tau, beta, rule, xp), q_mean)
    q, q_mean = jnp.asarray(q), jnp.asarray(q_mean)
    return MeanSquareThreshold(q, q_mean, jnp.isfinite(q_mean))


@python_scalars_out
def second_moment_growth(q, noise, tau, beta=0.0, *, momentum: str = "heavy_ball"):
    """Per-step factor ``mu`` of the second moment ``E y_t^2`` (``m_t ~ mu^t``).

    Args:
      q: ``lr * a``, in ``(0, q_max(tau, beta))`` (the mean must be stable; NaN
        outside, where the mean itself grows by ``rho(P)`` per step).
      noise: ``sigma^2 = lr^2 gamma s^2 >= 0``, the variance of the noisy part of
        ``q`` per step (``q^2 r``).
      tau, beta, momentum: the rule.

    Returns:
      ``mu``, the root above ``rho(P)^2`` of ``sigma^2 sum_k t_k^2 mu^-k = 1`` (module
      docstring; ``rho(P)^2`` when ``noise = 0``), to ``2^-80`` in ``log mu``, floored
      at ``e^-80``; ``mu < 1`` iff stable in mean square. Plain SGD at tau = 0:
      ``(1 - q)^2 + sigma^2``.
    """
    tau, rule = _check_rule(tau, beta, momentum)
    check_finite("q", q)
    _check_nonnegative("noise", noise)
    dtype = float_dtype(q, noise, beta)
    host, (q, noise, beta) = _arrays(dtype, q, noise, beta)
    xp, gain, _, growth = _kernels(host)
    a, b = _polynomials(tau, beta, rule, xp)
    stable = xp.isfinite(gain(q, a, b))
    mu = growth(xp.where(stable, q, 0.0), noise, a, b)
    return jnp.asarray(xp.where(stable, mu, xp.nan))


def _relative_noise(sharpness, nonuniformity, gamma, dtype):
    a = jnp.asarray(sharpness, dtype)
    noisy = gamma * jnp.square(jnp.asarray(nonuniformity, dtype))
    safe = jnp.where(a > 0, a, 1.0)
    return jnp.where(a > 0, noisy / (safe * safe), jnp.where(noisy > 0, jnp.inf, 0.0))


@python_scalars_out
def max_stable_lr_minibatch(
    sharpness,
    nonuniformity,
    tau,
    beta=0.0,
    *,
    momentum: str = "heavy_ball",
    batch_size: int,
    num_examples: int,
    replacement: bool = False,
):
    """The largest learning rate at which a direction of curvature ``a`` and
    non-uniformity ``s`` is stable in mean square with batch size ``B`` of ``n``.

    ``q_ms(r) / a`` with ``r = gamma s^2 / a^2`` (:func:`mean_square_threshold`,
    ``gamma`` from :func:`variance_factor`); the batch-size-aware
    `stability.max_stable_lr` (``s = 0`` or the full batch without replacement give
    exactly ``q_max / a``). Plain SGD at tau = 0: ``2 a / (a^2 + gamma s^2)`` (Wu, Ma
    and E). Units: 1 / (Hessian eigenvalue units), like ``max_stable_lr``. NaN where
    the deterministic threshold is not certified. Broadcasts over sharpness,
    nonuniformity and beta.
    """
    check_positive("sharpness", sharpness)
    _check_nonnegative("nonuniformity", nonuniformity)
    gamma = variance_factor(batch_size, num_examples, replacement=replacement)
    dtype = float_dtype(sharpness, nonuniformity, beta)
    r = _relative_noise(sharpness, nonuniformity, gamma, dtype)
    t = mean_square_threshold(r, tau, jnp.asarray(beta, dtype), momentum=momentum)
    return t.q_max / jnp.asarray(sharpness, dtype)


@python_scalars_out
def lr_for_delay_minibatch(
    lr,
    tau,
    *,
    from_tau=0,
    beta=0.0,
    momentum: str = "heavy_ball",
    sharpness,
    nonuniformity,
    batch_size: int,
    num_examples: int,
    from_batch_size: int | None = None,
    replacement: bool = False,
):
    """The learning rate that keeps a minimum at the same fraction of its mean-square
    limit when the delay goes ``from_tau -> tau`` (and the batch size
    ``from_batch_size -> batch_size``; default unchanged).

    ``lr * q_ms(tau, r_B) / q_ms(from_tau, r_B0)`` with ``r = gamma s^2 / a^2`` at each
    batch size. The mean-square stable set is two-dimensional (``a`` and ``s``), so
    no single learning rate keeps all of it; this keeps the given minimum's
    ``lr / max_stable_lr``. With ``s = 0`` it is `stability.lr_for_delay`. NaN where
    a deterministic threshold is not certified.
    """
    check_lr(lr)
    check_positive("sharpness", sharpness)
    _check_nonnegative("nonuniformity", nonuniformity)
    from_batch_size = batch_size if from_batch_size is None else from_batch_size
    dtype = float_dtype(lr, sharpness, nonuniformity, beta)
    beta = jnp.asarray(beta, dtype)
    g_new = variance_factor(batch_size, num_examples, replacement=replacement)
    g_old = variance_factor(from_batch_size, num_examples, replacement=replacement)
    new = mean_square_threshold(
        _relative_noise(sharpness, nonuniformity, g_new, dtype), tau, beta, momentum=momentum
    )
    old = mean_square_threshold(
        _relative_noise(sharpness, nonuniformity, g_old, dtype), from_tau, beta,
        momentum=momentum,
    )  # fmt: skip
    return jnp.asarray(lr, dtype) * new.q_max / old.q_max


@python_scalars_out
def mean_square_stability(
    lr,
    sharpness,
    nonuniformity,
    tau,
    beta=0.0,
    *,
    momentum: str = "heavy_ball",
    batch_size: int,
    num_examples: int,
    replacement: bool = False,
) -> MeanSquareStability:
    """The mean-square condition along one direction (curvature ``a = sharpness``,
    non-uniformity ``s``) for mini-batches of ``B`` out of ``n`` (module docstring).

    Stable iff ``lr a < q_max(tau, beta)`` and ``lr^2 gamma s^2 N(lr a) < 1``.
    Returns :class:`MeanSquareStability`; broadcasts over lr, sharpness,
    nonuniformity and beta (Python scalars in, Python scalars out).
    """
    check_lr(lr)
    check_positive("sharpness", sharpness)
    _check_nonnegative("nonuniformity", nonuniformity)
    tau, _ = _check_rule(tau, beta, momentum)
    gamma = variance_factor(batch_size, num_examples, replacement=replacement)
    dtype = float_dtype(lr, sharpness, nonuniformity, beta)
    lr, a, s, beta = jnp.broadcast_arrays(
        *(jnp.asarray(x, dtype) for x in (lr, sharpness, nonuniformity, beta))
    )
    q = lr * a
    sigma2 = lr * lr * gamma * s * s
    thr = mean_square_threshold(_relative_noise(a, s, gamma, dtype), tau, beta, momentum=momentum)
    mean_stable = q < thr.q_max_mean
    gain = sigma2 * noise_gain(q, tau, beta, momentum=momentum)
    gain = jnp.where(mean_stable, jnp.where(sigma2 > 0, gain, 0.0), jnp.inf)
    return MeanSquareStability(
        stable=mean_stable & (gain < 1),
        mean_stable=mean_stable,
        gain=gain,
        growth=second_moment_growth(q, sigma2, tau, beta, momentum=momentum),
        variance_factor=jnp.asarray(gamma, dtype),
        max_stable_lr=thr.q_max / a,
        max_stable_lr_mean=thr.q_max_mean / a,
    )
