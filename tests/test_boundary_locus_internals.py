"""The named-rule solver's internal contracts (module docstring of boundary_locus).

The thresholds themselves are checked against independent oracles in
test_boundary_locus.py; a wrong derivative or a wrong initial guess would still
converge there (bracketed Newton, 60 iterations), only slower. These tests pin the
contracts the docstring states: dF/dtheta is the derivative of F, F(theta) =
(1 - beta) - K theta^2 + O(theta^4) with K from _quadratic_coefficient, and the 4
unrolled Newton steps from that initial guess already converge.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stability_oracles import np_locus_threshold

from stability.theory import boundary_locus as bl

RULES = ("heavy_ball", "nesterov", "shifted")


def _points(rule, n=40, seed=5):
    rng = np.random.default_rng(seed)
    tau = np.concatenate([[0.0, 1.0, 2.0], rng.integers(3, 10**5, n).astype(float)])
    beta = np.concatenate([[0.0, 0.5, 0.9], 1 - 10 ** rng.uniform(-6, 0, n)])
    span = 2.0 if rule == "shifted" else 1.5
    hi = np.minimum(np.pi, span * np.pi / (2 * tau + 1))
    return tau, beta, hi, rng


def _f(theta, tau, beta, rule):
    out = bl._crossing_f(jnp.asarray(theta), jnp.asarray(tau), jnp.asarray(beta), rule)
    return tuple(np.asarray(x) for x in out)


@pytest.mark.parametrize("rule", RULES)
def test_crossing_f_derivative_and_half_angle_sines(rule):
    tau, beta, hi, rng = _points(rule)
    theta = rng.uniform(0.05, 0.95, tau.size) * hi
    f, df, s, sp = _f(theta, tau, beta, rule)
    np.testing.assert_allclose(s, np.sin(theta / 2), rtol=1e-15)
    want_sp = np.sin((tau + 1) * theta / 2) if rule == "shifted" else np.sin(theta / 2)
    np.testing.assert_allclose(sp, want_sp, rtol=1e-14, atol=1e-16)
    # F itself: X cos(alpha) - Y sin(alpha) with the docstring's X, Y, alpha
    c, sn = np.cos(theta / 2), np.sin(theta / 2)
    if rule == "heavy_ball":
        x, y, alpha = (1 - beta) * c, (1 + beta) * sn, tau * theta
    elif rule == "nesterov":
        x = (1 - beta) * c**2 + (1 + beta) * (1 + 2 * beta) * sn**2
        y, alpha = 2 * beta**2 * c * sn, (tau + 0.5) * theta
    else:
        psi = (tau + 1) * theta
        x, y, alpha = (1 - beta) * np.cos(psi / 2), (1 + beta) * np.sin(psi / 2), tau * theta / 2
    np.testing.assert_allclose(f, x * np.cos(alpha) - y * np.sin(alpha), rtol=1e-10, atol=1e-14)
    # dF/dtheta against central differences of F
    h = 1e-6 * theta
    fd = (_f(theta + h, tau, beta, rule)[0] - _f(theta - h, tau, beta, rule)[0]) / (2 * h)
    scale = np.abs(fd) + np.abs(f) / theta
    assert np.all(np.abs(df - fd) <= 1e-6 * scale)


@pytest.mark.parametrize("rule", RULES)
def test_quadratic_coefficient_is_the_taylor_coefficient_of_f(rule):
    tau, beta, _, _ = _points(rule)
    f0 = _f(np.zeros_like(tau), tau, beta, rule)[0]
    np.testing.assert_allclose(f0, 1 - beta, rtol=1e-15)
    theta = 1e-4 / (tau + 1)
    k_est = (f0 - _f(theta, tau, beta, rule)[0]) / theta**2
    k = np.asarray(bl._quadratic_coefficient(jnp.asarray(tau), jnp.asarray(beta), rule))
    np.testing.assert_allclose(k, k_est, rtol=1e-5)


@pytest.mark.parametrize("rule", RULES)
def test_four_unrolled_newton_steps_suffice(rule, monkeypatch):
    # The docstring's claim: from the quadratic initial guess, the 4 unrolled steps reach
    # full precision (tau up to 1e6, 1 - beta down to 1e-6); the while loop after them
    # only confirms it. With the loop cut to those 4 steps every point must already be
    # converged (reliable) and exact; a worse initial guess or derivative fails this
    # while the full loop would still hide it.
    monkeypatch.setattr(bl, "_MAX_NEWTON", bl._UNROLLED_NEWTON)
    # a new function object: jit's trace cache is keyed on it, so this traces afresh
    # (with the patched constant) instead of reusing another test's trace
    solve = jax.jit(lambda t, b: bl._named_threshold.__wrapped__(t, b, rule))
    rng = np.random.default_rng(3)
    n = 1000
    tau = np.concatenate([rng.integers(2, 1001, n), rng.integers(2, 10**6, n)])
    beta = np.concatenate([rng.uniform(0, 0.99, n), 1 - 10 ** rng.uniform(-6, 0, n)])
    t = solve(jnp.asarray(tau, jnp.float64), jnp.asarray(beta))
    assert bool(np.all(np.asarray(t.reliable)))
    want, _, _ = np_locus_threshold(tau, beta, rule)
    np.testing.assert_allclose(np.asarray(t.q_max), want, rtol=2e-14)
