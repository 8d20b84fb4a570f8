"""Every numbered formula of the theory page (docs/theory.md) against the library.

Each test's docstring starts with ``Theory (N, ...)``: the numbers, written
``\\tag{N}`` on the page, of the formulas it evaluates. The last tests check that
every number on the page is cited here and that nothing cited is missing from the
page, so a formula added to the page without a test (or a test left for a formula
that was removed) fails the suite.

The oracles are independent of the library's algorithms: numpy's polynomial roots
and eigenvalues, scipy's brentq, direct simulation of the recurrences as the page
writes them, exact enumeration, and dense Hessians.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import brentq

import stability as st
from stability.curvature.lanczos import random_start_bounds, random_start_epsilon

THEORY = Path(__file__).resolve().parents[1] / "docs" / "theory.md"
RULES = ("heavy_ball", "nesterov", "shifted")
EPS = float(np.finfo(np.float64).eps)


# ------------------------------------------------------------ adaptive rules (16)


def _adam_page_polynomial(q, tau, b1, d):
    """(44) as the page writes it: z^tau (z - 1 + d)(z - b1) + (1 - b1) q z (numpy)."""
    a = np.polymul(np.polymul([1.0, d - 1.0], [1.0, -b1]), np.r_[1.0, np.zeros(tau)])
    b = np.polymul([(1 - b1) * q, 0.0], np.ones(1))
    return np.polyadd(a, b)


def _adam_simulated_rate(q, tau, b1, d, steps=4000):
    """Per-step growth of Adam's frozen-preconditioner recurrence along one eigenvalue,
    simulated as section 16 writes it (lr c = 1, a = q): m+ = b1 m + (1 - b1) a
    y_{t-tau}, y+ = (1 - d) y - m+."""
    y = [1.0] * (tau + 1)
    m = 0.0
    norms = []
    for _ in range(steps):
        m = b1 * m + (1 - b1) * q * y[-1 - tau]
        y.append((1 - d) * y[-1] - m)
        norms.append(max(abs(v) for v in y[-tau - 2 :]) + abs(m))
    return (norms[-1] / norms[steps // 2]) ** (1.0 / (steps - 1 - steps // 2))


@pytest.mark.parametrize("tau, b1, d", [(0, 0.9, 0.0), (3, 0.9, 0.0), (5, 0.5, 1e-2)])
def test_adam_polynomial(tau, b1, d):
    """Theory (44): the library's polynomial of the Adam rule is the page's, and the
    simulated recurrence grows at the rate of its largest root."""
    from stability.theory.rules.adam import Adam

    with jax.enable_x64(True):
        for q in (0.05, 0.3):
            page = _adam_page_polynomial(q, tau, b1, d)
            lib = np.asarray(
                st.characteristic_polynomial(tau, b1, momentum=Adam(decay=d)).coefficients(q)
            )
            np.testing.assert_allclose(lib, page, rtol=0, atol=1e-15)
            rho = np.max(np.abs(np.roots(page)))
            assert _adam_simulated_rate(q, tau, b1, d) == pytest.approx(rho, rel=2e-3)


@pytest.mark.parametrize("b1", [0.0, 0.9, 0.99])
def test_adam_threshold(b1):
    """Theory (45): the Adam limit is the heavy ball's q_max / (lr c (1 - b1)); at
    tau = 0 it is 2 (1 + b1) / (lr c (1 - b1)) (38 / lr at b1 = 0.9, c = 1); against
    brentq on the largest root of (44)."""
    from stability.theory.rules.adam import Adam

    lr, c = 0.01, 1.25
    with jax.enable_x64(True):
        for tau in (0, 1, 4, 16):
            limit = float(st.max_stable_sharpness(lr * c, tau, b1, momentum=Adam()))
            hb = float(st.stability_threshold(tau, b1, momentum="heavy_ball").q_max)
            assert limit == pytest.approx(hb / (lr * c * (1 - b1)), rel=1e-9)
            q = brentq(
                lambda q, tau=tau: (
                    np.max(np.abs(np.roots(_adam_page_polynomial(q, tau, b1, 0.0)))) - 1
                ),
                1e-6,
                2 * (1 + b1) / (1 - b1) + 1,  # above every delay's limit (section 5: one interval)
                xtol=1e-14,
            )
            assert limit * lr * c == pytest.approx(q, rel=1e-7)
        zero = float(st.max_stable_sharpness(lr * c, 0, b1, momentum=Adam()))
        assert zero == pytest.approx(2 * (1 + b1) / (lr * c * (1 - b1)), rel=1e-12)
        if b1 == 0.9:
            assert float(st.max_stable_sharpness(1.0, 0, b1, momentum=Adam())) == pytest.approx(38)


# ------------------------------------------------------------------ oracles


def page_polynomial(rule, tau, beta, q):
    """The page's characteristic polynomial (3)-(6), descending coefficients (numpy)."""
    zt = np.zeros(tau + 1)
    zt[0] = 1.0  # z^tau
    if rule == "gd":
        a, b = np.polymul(zt, [1.0, -1.0]), [1.0]
    elif rule == "shifted":
        zt1 = np.zeros(tau + 2)
        zt1[0], zt1[-1] = 1.0, -beta  # z^(tau+1) - beta
        a, b = np.polymul([1.0, -1.0], zt1), [1.0, 0.0]
    else:
        a = np.polymul(zt, np.polymul([1.0, -1.0], [1.0, -beta]))
        b = [1.0, 0.0] if rule == "heavy_ball" else [1.0 + beta, -beta]
    return np.polyadd(a, q * np.asarray(b, float))


def library_polynomial(rule, tau, beta, q):
    if isinstance(tau, st.DelayDistribution):
        poly = st.characteristic_polynomial(tau, beta, momentum=rule)
        return np.asarray(poly.a) + q * np.asarray(poly.b)
    a, b = _library_ab(rule, tau, beta)
    return a + q * b


@functools.cache
def _library_ab(rule, tau, beta):
    poly = st.characteristic_polynomial(tau, beta, momentum=rule)
    return np.asarray(poly.a), np.asarray(poly.b)


def roots_radius(coeffs):
    return float(np.max(np.abs(np.roots(coeffs))))


def run_rule(rule, tau, beta, lr, a, steps, rng):
    """The weights of the page's recurrence (3)-(6) from a random history (w, v at
    times -tau..0), with g_s = a w_s."""
    w = list(rng.standard_normal(tau + 1))  # w_{-tau}, ..., w_0
    v = list(rng.standard_normal(tau + 1) / lr)  # v_{-tau}, ..., v_0 (lr v: weight units)
    for _ in range(steps):
        g = a * w[-1 - tau]  # g_{t - tau}
        if rule == "gd":
            w.append(w[-1] - lr * g)
            continue
        if rule == "shifted":
            v_new = beta * v[-1 - tau] + g
            w_new = w[-1] - lr * v_new
        else:
            v_new = beta * v[-1] + g
            step = v_new if rule == "heavy_ball" else g + beta * v_new
            w_new = w[-1] - lr * step
        v.append(v_new)
        w.append(w_new)
    return np.asarray(w)


def locus_threshold(rule, tau, beta, grid=20000):
    """(14) by brute force: the smallest positive real value of -A/B on the circle,
    from sign changes of Im q(theta) on a fine grid refined by brentq, plus theta = pi."""
    poly = st.characteristic_polynomial(tau, beta, momentum=rule)
    a, b = np.asarray(poly.a), np.asarray(poly.b)

    def q_of(theta):
        z = np.exp(1j * np.asarray(theta))
        return -np.polyval(a, z) / np.polyval(b, z)

    theta = np.linspace(0.0, np.pi, grid + 1)[1:]
    im = q_of(theta).imag
    best = (np.inf, np.nan)
    end = q_of(np.pi).real
    if end > 0:
        best = (end, np.pi)
    for i in np.flatnonzero(np.sign(im[:-1]) * np.sign(im[1:]) < 0):
        t = brentq(lambda x: q_of(x).imag, theta[i], theta[i + 1], xtol=1e-15, rtol=4 * EPS)
        value = q_of(t).real
        if 0 < value < best[0]:
            best = (value, t)
    return best


# ------------------------------------------------------------- sections 2-4


def test_only_the_product_q_matters():
    """Theory (1, 2): along an eigenvector of the quadratic model the recurrence
    depends on lr and the eigenvalue only through q = lr * a."""
    for rule, tau, beta in [("heavy_ball", 3, 0.5), ("shifted", 2, 0.9), ("nesterov", 5, 0.3)]:
        q = 0.7 * st.max_stable_sharpness(1.0, tau, beta, momentum=rule)
        r1 = st.spectral_radius(q / 0.1, 0.1, tau, beta, momentum=rule)
        r2 = st.spectral_radius(q / 3.0, 3.0, tau, beta, momentum=rule)
        assert r1 == pytest.approx(r2, rel=1e-12)
        w1 = run_rule(rule, tau, beta, 0.1, q / 0.1, 40, np.random.default_rng(0))
        w2 = run_rule(rule, tau, beta, 3.0, q / 3.0, 40, np.random.default_rng(0))
        np.testing.assert_allclose(w1[tau + 2 :], w2[tau + 2 :], rtol=1e-9, atol=1e-12)
        # the thresholds are q_max / lr and q_max / sharpness
        q_max = st.stability_threshold(tau, beta, momentum=rule).q_max
        assert st.max_stable_sharpness(0.25, tau, beta, momentum=rule) * 0.25 == pytest.approx(
            q_max, rel=1e-14
        )
        assert st.max_stable_lr(8.0, tau, beta, momentum=rule) * 8.0 == pytest.approx(
            q_max, rel=1e-14
        )


@pytest.mark.parametrize("rule", ["gd", *RULES])
@pytest.mark.parametrize("tau", [0, 3])
@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_recurrences_have_the_characteristic_polynomials(rule, tau, beta):
    """Theory (3, 4, 5, 6): the weights of each rule's recurrence, run as the page
    writes it from a random history, satisfy the linear recurrence whose
    characteristic polynomial is the page's P; the library's polynomial is that P."""
    if rule == "gd" and beta:
        pytest.skip("gd has no momentum")
    lr, a = 0.5, 0.3
    q = lr * a
    page = page_polynomial(rule, tau, beta, q)
    library = library_polynomial("heavy_ball" if rule == "gd" else rule, tau, beta, q)
    if rule == "gd":  # the library builds gd as heavy_ball with beta = 0: z times (3)
        page = np.polymul(page, [1.0, 0.0])
    np.testing.assert_allclose(library, page, rtol=0, atol=1e-15)
    w = run_rule(rule, tau, 0.0 if rule == "gd" else beta, lr, a, 60, np.random.default_rng(1))
    p = page_polynomial(rule, tau, beta, q)
    m = len(p) - 1
    start = tau + 2  # every term generated by the recurrence itself
    for t in range(start, len(w) - m):
        window = w[t : t + m + 1][::-1]  # w_{t+m}, ..., w_t
        residual = float(p @ window)
        assert abs(residual) <= 1e-12 * float(np.abs(p) @ np.abs(window)), (t, residual)


@pytest.mark.parametrize("rule", RULES)
def test_affine_in_q_and_beta_zero_is_z_times_gd(rule):
    """Theory (7): P = A + q B with A monic; beta = 0 gives z times delayed SGD."""
    for tau in (0, 3):
        poly = st.characteristic_polynomial(tau, 0.6, momentum=rule)
        a, b = np.asarray(poly.a), np.asarray(poly.b)
        assert a[0] == 1.0
        for q in (0.0, 0.3, 1.7):
            np.testing.assert_allclose(a + q * b, page_polynomial(rule, tau, 0.6, q), atol=1e-15)
        zero = library_polynomial(rule, tau, 0.0, 0.4)
        np.testing.assert_allclose(
            zero, np.polymul(page_polynomial("gd", tau, 0.0, 0.4), [1.0, 0.0]), atol=1e-15
        )


def test_optax_sgd_is_heavy_ball_and_nesterov():
    """Theory (8): optax.sgd with momentum (and nesterov=True) under a delay has the
    heavy-ball (Nesterov) threshold."""
    lr, beta = 0.05, 0.8
    for tau in (3,):
        for nesterov, rule in ((False, "heavy_ball"), (True, "nesterov")):
            lin = st.linearize(optax.sgd(lr, momentum=beta, nesterov=nesterov), tau)
            assert lin.reliable
            expected = st.max_stable_sharpness(lr, tau, beta, momentum=rule)
            assert lin.max_stable_sharpness == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("rule", RULES)
def test_companion_matrix_moves_the_delay_coordinates(rule):
    """Theory (9, 10): C has first row -p_1..-p_m and ones below the diagonal,
    x_{t+1} = C x_t along a run of the recurrence, its eigenvalues are the roots of
    P, and the spectral radius is their largest modulus."""
    tau, beta, lr, a = 3, 0.6, 0.2, 0.9
    c = np.asarray(st.companion_matrix(a, lr, tau, beta, momentum=rule))
    p = library_polynomial(rule, tau, beta, lr * a)
    m = len(p) - 1
    assert c.shape == (m, m)
    np.testing.assert_array_equal(c[0], -p[1:])
    np.testing.assert_array_equal(c[1:], np.eye(m - 1, m))
    w = run_rule(rule, tau, beta, lr, a, 40, np.random.default_rng(2))
    for t in range(tau + 2 + m, len(w) - 1):
        x_t = w[t - m + 1 : t + 1][::-1]
        x_next = w[t - m + 2 : t + 2][::-1]
        np.testing.assert_allclose(c @ x_t, x_next, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        np.sort_complex(np.linalg.eigvals(c)), np.sort_complex(np.roots(p)), atol=1e-10
    )
    for q in (0.05, 0.5, 1.3):
        for t in (2, 9, 40):  # Python scalars, tau >= 2: no compilation
            expected = roots_radius(library_polynomial(rule, t, beta, q))
            got = st.spectral_radius(q / lr, lr, t, beta, momentum=rule)
            assert got == pytest.approx(expected, rel=1e-9)
    assert (st.spectral_radius(a, lr, tau, beta, momentum=rule) < 1) == (
        lr * a < st.stability_threshold(tau, beta, momentum=rule).q_max
    )


# ------------------------------------------------------------------- section 5


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_the_root_at_one_moves_inwards(rule, beta):
    """Theory (11): A'(1) = 1 - beta, B(1) = 1, and the root near 1 is
    1 - q / (1 - beta) + O(q^2)."""
    for tau in (0, 2, 7):
        poly = st.characteristic_polynomial(tau, beta, momentum=rule)
        a, b = np.asarray(poly.a), np.asarray(poly.b)
        assert np.polyval(np.polyder(a), 1.0) == pytest.approx(1 - beta, abs=1e-13)
        assert np.polyval(b, 1.0) == pytest.approx(1.0, abs=1e-13)
        for q in (1e-4, 1e-5):
            roots = np.roots(a + q * b)
            z1 = roots[np.argmin(np.abs(roots - 1))]
            slope = (z1.real - 1) / q
            assert abs(z1.imag) < 1e-12
            assert slope == pytest.approx(-1 / (1 - beta), rel=200 * q / (1 - beta) ** 2)


@pytest.mark.parametrize("rule", RULES)
def test_the_stable_set_is_an_interval(rule):
    """Theory (12): rho < 1 exactly on (0, q_max); above q_max the number of roots
    outside the unit circle never decreases (up to 20 q_max)."""
    for tau, beta in [(0, 0.5), (1, 0.9), (3, 0.0), (6, 0.6), (12, 0.95)]:
        q_max = st.stability_threshold(tau, beta, momentum=rule).q_max
        qs = np.concatenate(
            [q_max * np.linspace(1e-3, 1 - 1e-6, 40), q_max * np.linspace(1 + 1e-6, 20, 160)]
        )
        moduli = [np.abs(np.roots(library_polynomial(rule, tau, beta, q))) for q in qs]
        np.testing.assert_array_equal([m.max() < 1 for m in moduli], qs < q_max)
        outside = [int(np.sum(m > 1 + 1e-9)) for m in moduli]
        assert all(np.diff(outside) >= 0), (tau, beta, outside)
        assert outside[0] == 0 and outside[-1] >= 1
        if tau >= 2:  # the library's radius agrees (Python scalars: nothing compiled)
            for q in (0.999 * q_max, 1.001 * q_max):
                rho = st.spectral_radius(q, 1.0, tau, beta, momentum=rule)
                assert (rho < 1) == (q < q_max)


# ------------------------------------------------------------------- section 6


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("tau", [0, 2, 20])
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.95])
def test_boundary_locus_by_brute_force(rule, tau, beta):
    """Theory (13, 14): q_max is the smallest positive real value of -A/B on the unit
    circle, at the returned angle theta, where P(e^{i theta}) = 0."""
    expected_q, expected_theta = locus_threshold(rule, tau, beta)
    t = st.stability_threshold(tau, beta, momentum=rule)
    assert t.reliable
    assert t.q_max == pytest.approx(expected_q, rel=1e-10)
    assert t.theta == pytest.approx(expected_theta, rel=1e-8, abs=1e-8)
    p = library_polynomial(rule, tau, beta, t.q_max)
    assert abs(np.polyval(p, np.exp(1j * t.theta))) < 1e-9 * np.sum(np.abs(p))


@pytest.mark.parametrize("tau", [0, 1, 2, 7, 50])
@pytest.mark.parametrize("beta", [0.0, 0.3, 0.9])
def test_heavy_ball_phase_equation(tau, beta):
    """Theory (15, 16): theta* is the first root of (tau - 1/2) theta +
    atan2(sin theta, cos theta - beta) = pi / 2 and q_max = 2 sin(theta*/2)
    sqrt(1 - 2 beta cos theta* + beta^2)."""

    def phase(theta):
        return (
            (tau - 0.5) * theta + math.atan2(math.sin(theta), math.cos(theta) - beta) - math.pi / 2
        )

    grid = np.linspace(1e-9, math.pi, 4001)
    values = np.array([phase(x) for x in grid])
    if abs(values[-1]) < 1e-12:
        theta = math.pi  # tau = 0: the crossing is z = -1
    else:
        i = int(np.flatnonzero(values >= 0)[0])
        theta = brentq(phase, grid[i - 1], grid[i], xtol=1e-15, rtol=4 * EPS)
    q = 2 * math.sin(theta / 2) * math.sqrt(1 - 2 * beta * math.cos(theta) + beta**2)
    t = st.stability_threshold(tau, beta, momentum="heavy_ball")
    assert t.theta == pytest.approx(theta, rel=1e-10)
    assert t.q_max == pytest.approx(q, rel=1e-12)


# ------------------------------------------------------------------- section 7


def test_gd_closed_form():
    """Theory (17): 2 sin(pi / (2 (2 tau + 1))) = 2 cos(tau pi / (2 tau + 1)); 2, 1,
    0.618... at tau = 0, 1, 2 (Levin and May)."""
    taus = list(range(31)) + [100, 1000, 10**5]
    for tau in taus:
        closed = 2 * math.sin(math.pi / (2 * (2 * tau + 1)))
        assert closed == pytest.approx(2 * math.cos(tau * math.pi / (2 * tau + 1)), rel=1e-9)
        assert st.stability_threshold(tau, 0.0).q_max == pytest.approx(closed, rel=1e-13)
    first = [st.stability_threshold(t, 0.0).q_max for t in (0, 1, 2)]
    assert first == pytest.approx([2.0, 1.0, (math.sqrt(5) - 1) / 2], rel=1e-14)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_closed_forms_without_and_with_delay_one(beta):
    """Theory (18, 19): tau = 0: 2 (1 + beta) (heavy ball, shifted), (2 + 2 beta) /
    (1 + 2 beta) (Nesterov); tau = 1: 1 - beta (heavy ball), 1 - beta^2 (shifted)."""

    def q(tau, rule):
        return st.stability_threshold(tau, beta, momentum=rule).q_max

    assert q(0, "heavy_ball") == pytest.approx(2 * (1 + beta), rel=1e-14)
    assert q(0, "shifted") == pytest.approx(2 * (1 + beta), rel=1e-14)
    assert q(0, "nesterov") == pytest.approx((2 + 2 * beta) / (1 + 2 * beta), rel=1e-14)
    assert q(1, "heavy_ball") == pytest.approx(1 - beta, rel=1e-12)
    assert q(1, "shifted") == pytest.approx(1 - beta**2, rel=1e-12)
    for tau, rule in ((0, "heavy_ball"), (0, "shifted"), (0, "nesterov")):  # z = -1
        assert st.stability_threshold(tau, beta, momentum=rule).theta == pytest.approx(math.pi)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_cubic_unit_circle_condition_at_delay_one(rule, beta):
    """Theory (20): at q_max (tau = 1) the cubic P has 1 - a0^2 + a0 a2 - a1 = 0 and
    roots e^{+-i theta*} and -a0."""
    t = st.stability_threshold(1, beta, momentum=rule)
    p = library_polynomial(rule, 1, beta, t.q_max)
    assert len(p) == 4 and p[0] == 1.0
    a2, a1, a0 = p[1:]
    assert 1 - a0**2 + a0 * a2 - a1 == pytest.approx(0.0, abs=1e-13)
    expected = [np.exp(1j * t.theta), np.exp(-1j * t.theta), -a0]
    np.testing.assert_allclose(
        np.sort_complex(np.roots(p)), np.sort_complex(np.asarray(expected)), atol=1e-7
    )
    # and a cubic with that condition violated has no root on the circle
    off = p + np.array([0, 0, 1e-3, 0])
    assert 1 - off[3] ** 2 + off[3] * off[1] - off[2] != pytest.approx(0.0, abs=1e-6)
    assert np.min(np.abs(np.abs(np.roots(off)) - 1)) > 1e-5


@pytest.mark.parametrize("beta", [0.01, 0.3, 0.6, 0.9, 0.999])
def test_nesterov_delay_one_quadratic(beta):
    """Theory (21): Nesterov at tau = 1: the positive root of beta^2 q^2 +
    (1 - beta^2) q - (1 - beta) = 0."""
    roots = np.roots([beta**2, 1 - beta**2, -(1 - beta)])
    positive = float(np.max(roots.real))
    assert st.stability_threshold(1, beta, momentum="nesterov").q_max == pytest.approx(
        positive, rel=1e-10
    )
    assert locus_threshold("nesterov", 1, beta)[0] == pytest.approx(positive, rel=1e-9)


# ------------------------------------------------------------------- section 8


def test_large_delay_asymptotics():
    """Theory (22, 23, 24): q_max ~ pi / (2 tau + 1) (SGD, relative error x^2 / 6 with
    x = pi / (2 (2 tau + 1))), (1 - beta) pi / (2 tau) (heavy ball, Nesterov) and
    sqrt(1 - beta^2) arccos(beta) / (tau + 1) (shifted)."""
    for tau in (10, 100, 1000):
        x = math.pi / (2 * (2 * tau + 1))
        ratio = st.stability_threshold(tau, 0.0).q_max / (math.pi / (2 * tau + 1))
        assert abs(ratio - 1) <= 1.01 * x * x / 6
    for beta in (0.0, 0.5, 0.9):
        errors = []
        for tau in (1000, 100000):
            hb = (1 - beta) * math.pi / (2 * tau)
            shifted = math.sqrt(1 - beta**2) * math.acos(beta) / (tau + 1)
            got = {r: st.stability_threshold(tau, beta, momentum=r).q_max for r in RULES}
            errors.append(abs(got["heavy_ball"] / hb - 1))
            if tau == 100000:
                assert got["heavy_ball"] == pytest.approx(hb, rel=2e-4)
                assert got["nesterov"] == pytest.approx(hb, rel=2e-4)
                assert got["shifted"] == pytest.approx(shifted, rel=2e-5)
        if beta:
            assert errors[1] < errors[0] / 50  # the error falls like 1 / tau


def test_momentum_at_a_fixed_effective_learning_rate():
    """Theory (25): the limit at effective rate lr / (1 - beta) is q_max / (eff (1 -
    beta)); the heavy ball never beats no momentum for tau >= 1, Nesterov not from
    tau = 5, shifted always does at least as well, with the large-delay factor of (24)."""
    eff = 0.02
    rec = st.recommend_momentum(15, eff, momenta=("heavy_ball", "shifted"))
    for row in rec.table:
        q = st.stability_threshold(15, row.beta, momentum=row.momentum).q_max
        assert row.lr == pytest.approx(eff * (1 - row.beta), rel=1e-15)
        assert row.max_stable_sharpness == pytest.approx(q / (eff * (1 - row.beta)), rel=1e-12)
    assert rec.momentum == "shifted" and rec.beta == max(r.beta for r in rec.table)
    assert rec.max_stable_sharpness_no_momentum == pytest.approx(
        st.stability_threshold(15, 0.0).q_max / eff, rel=1e-14
    )
    best_heavy_ball = max(
        (r for r in rec.table if r.momentum == "heavy_ball"), key=lambda r: r.max_stable_sharpness
    )
    assert best_heavy_ball.beta == 0.0
    betas = np.linspace(0.0, 0.99, 12)

    def ratio(tau, rule):  # Python scalars: the programs compiled already
        q = [st.stability_threshold(tau, float(b), momentum=rule).q_max for b in betas]
        return np.asarray(q) / (1 - betas) / st.stability_threshold(tau, 0.0).q_max

    for tau in (1, 5, 50):
        assert np.all(ratio(tau, "heavy_ball") <= 1 + 1e-12)
        assert np.all(ratio(tau, "shifted") >= 1 - 1e-12)
    assert np.all(ratio(5, "nesterov") <= 1 + 1e-12)
    assert np.all(ratio(50, "nesterov") <= 1 + 1e-12)
    assert ratio(2, "nesterov").max() > 1.1  # helps at small delays
    assert ratio(10, "heavy_ball").min() < 0.75
    tau = 100000
    for beta in (0.5, 0.9, 0.99):
        factor = math.sqrt((1 + beta) / (1 - beta)) * math.acos(beta) / (math.pi / 2)
        gain = (
            st.stability_threshold(tau, beta, momentum="shifted").q_max
            / (1 - beta)
            / st.stability_threshold(tau, 0.0).q_max
        )
        assert gain == pytest.approx(factor, rel=2e-3)
        assert 1 < factor < 4 / math.pi


# ------------------------------------------------------------------- section 9


def test_learning_rate_for_a_new_delay():
    """Theory (26, 27): lr_tau = lr_tau0 q_max(tau) / q_max(tau0); for SGD from no
    delay lr_0 sin(pi / (4 tau + 2)) ~ (pi / 4) lr_0 / tau; it keeps the accessible set."""
    for tau in (1, 2, 8, 64, 1000):
        lr = st.lr_for_delay(0.3, tau)
        assert lr == pytest.approx(0.3 * math.sin(math.pi / (4 * tau + 2)), rel=1e-13)
        assert st.max_stable_sharpness(lr, tau) == pytest.approx(
            st.max_stable_sharpness(0.3, 0), rel=1e-12
        )
    assert st.lr_for_delay(0.3, 10**5) == pytest.approx(math.pi / 4 * 0.3 / 10**5, rel=1e-5)
    for rule in RULES:
        for tau0, tau in ((0, 7), (3, 12), (9, 2)):
            lr = st.lr_for_delay(0.05, tau, from_tau=tau0, beta=0.8, momentum=rule)
            ratio = (
                st.stability_threshold(tau, 0.8, momentum=rule).q_max
                / st.stability_threshold(tau0, 0.8, momentum=rule).q_max
            )
            assert lr == pytest.approx(0.05 * ratio, rel=1e-13)
            assert st.max_stable_sharpness(lr, tau, 0.8, momentum=rule) == pytest.approx(
                st.max_stable_sharpness(0.05, tau0, 0.8, momentum=rule), rel=1e-12
            )


# ------------------------------------------------------------------ section 10


def test_round_robin_delay():
    """Theory (28): N workers in a fixed cyclic order: delay N - 1, in the library's
    distribution and in the simulator (after the first round)."""
    for n in (1, 2, 5, 16):
        np.testing.assert_array_equal(
            st.round_robin(n).probabilities, st.fixed_delay(n - 1).probabilities
        )
        assert st.round_robin(n).mean == n - 1
    n = 4

    def loss(w):
        return 0.5 * jnp.sum(w * w)

    traj = st.simulate_async(loss, jnp.ones(2), lr=0.01, num_workers=n, steps=5 * n)
    np.testing.assert_array_equal(np.asarray(traj.delays)[n - 1 :], n - 1)


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_random_order_delay_law(n):
    """Theory (29): positions i, j uniform in two rounds give delay N - i + j - 1 with
    P(k) = (N - |N - 1 - k|) / N^2, k = 0..2N-2, mean N - 1 (exact enumeration)."""
    counts = np.zeros(2 * n - 1)
    for i, j in itertools.product(range(n), range(n)):
        counts[n - i + j - 1] += 1
    k = np.arange(2 * n - 1)
    law = (n - np.abs(n - 1 - k)) / n**2
    np.testing.assert_allclose(counts / n**2, law, rtol=0, atol=1e-15)
    dist = st.random_order(n)
    np.testing.assert_allclose(dist.probabilities, law, rtol=0, atol=1e-15)
    assert dist.mean == pytest.approx(n - 1, rel=1e-14, abs=1e-14)


def test_expected_iterate_follows_the_mean_recurrence():
    """Theory (30): with i.i.d. delays the expected iterate of delayed SGD obeys
    E w_{t+1} = E w_t - q sum_k p_k E w_{t-k} (exact enumeration of all delay paths)."""
    p = np.array([0.2, 0.5, 0.3])
    q, steps, w0 = 0.4, 7, 1.0
    mean = np.zeros(steps + 1)
    for path in itertools.product(range(3), repeat=steps):
        w = [w0]
        for t, d in enumerate(path):
            w.append(w[t] - q * w[max(t - d, 0)])  # history before 0 is w_0
        mean += np.prod(p[list(path)]) * np.asarray(w)
    recurrence = [w0]
    for t in range(steps):
        recurrence.append(
            recurrence[t] - q * sum(p[k] * recurrence[max(t - k, 0)] for k in range(3))
        )
    np.testing.assert_allclose(mean, recurrence, rtol=1e-13, atol=1e-15)
    # its characteristic polynomial, z^K (z - 1) + q D(z), is the library's
    dist = st.delay_distribution(p)
    page = np.polyadd(np.polymul([1.0, 0.0, 0.0], [1.0, -1.0]), q * p)
    lib = library_polynomial("heavy_ball", dist, 0.0, q)
    np.testing.assert_allclose(lib, np.polymul(page, [1.0, 0.0]), atol=1e-15)


@pytest.mark.parametrize("rule", RULES)
def test_random_delay_polynomials(rule):
    """Theory (31): the four rules with a delay distribution (D(z) = sum p_k z^(K-k));
    a fixed delay p = e_tau gives back section 3; the threshold sits where the page's
    polynomial's spectral radius crosses 1."""
    beta, q = 0.7, 0.3
    p = np.array([0.1, 0.0, 0.25, 0.4, 0.25])
    K = len(p) - 1
    zk = np.zeros(K + 1)
    zk[0] = 1.0
    zd = np.polymul([1.0, 0.0], p)  # z D(z)
    if rule == "shifted":
        inner = np.polysub(np.polymul(zk, [1.0, 0.0]), beta * p)  # z^(K+1) - beta D
        page = np.polyadd(np.polymul([1.0, -1.0], inner), q * zd)
    else:
        a = np.polymul(zk, np.polymul([1.0, -1.0], [1.0, -beta]))
        b = zd if rule == "heavy_ball" else np.polymul([1.0 + beta, -beta], p)
        page = np.polyadd(a, q * b)
    dist = st.delay_distribution(p)
    np.testing.assert_allclose(library_polynomial(rule, dist, beta, q), page, atol=1e-15)
    for tau in (0, 2, 5):
        fixed = library_polynomial(rule, st.fixed_delay(tau), beta, q)
        np.testing.assert_allclose(fixed, library_polynomial(rule, tau, beta, q), atol=1e-15)
    t = st.stability_threshold(dist, beta, momentum=rule)
    assert t.reliable

    def radius(qq):
        return roots_radius(library_polynomial(rule, dist, beta, qq))

    assert radius(0.999 * t.q_max) < 1 < radius(1.001 * t.q_max)


# ---------------------------------------------------------------- section 11-12

N_PARAMS = 40


def _quadratic(eigenvalues, seed=0):
    """loss(w) = w^T H w / 2 with H = Q diag(eigenvalues) Q^T, and H."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    h = (q * np.asarray(eigenvalues)) @ q.T
    h = jnp.asarray(0.5 * (h + h.T))

    def loss(w):
        return 0.5 * w @ (h @ w)

    return loss, np.asarray(h)


EIGENVALUES = np.concatenate([[5.0, 4.0, 3.2], np.linspace(-0.5, 2.5, N_PARAMS - 3)])
QUADRATIC, H_QUADRATIC = _quadratic(EIGENVALUES)


def test_full_data_hessian_product_and_residual():
    """Theory (32, 33, 34): the spectrum is that of the mean of the per-example
    Hessians (batches weighted by size); the returned pair (theta, y) has H y - theta y
    (H y by forward-over-reverse) of norm the reported residual, and an eigenvalue
    within it."""
    # least squares: per-example Hessian 2 x_i x_i^T, so (32) is 2 X^T X / N exactly
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 5)) * np.array([3.0, 1.0, 1.0, 0.5, 0.2])
    y = rng.standard_normal(16)
    sizes = (5, 11)
    batches = [(jnp.asarray(x[:5]), jnp.asarray(y[:5])), (jnp.asarray(x[5:]), jnp.asarray(y[5:]))]

    def loss(w, batch):
        xb, yb = batch
        return jnp.mean((xb @ w - yb) ** 2)

    full = 2 * x.T @ x / 16
    exact = np.linalg.eigvalsh(full)
    spec = st.hessian_spectrum(loss, jnp.zeros(5), batches, k=2, tol=1e-10, progress=False)
    np.testing.assert_allclose(spec.eigenvalues, exact[::-1][:2], rtol=1e-9)
    assert spec.smallest == pytest.approx(exact[0], rel=1e-8)
    # batches weighted equally instead would be another matrix
    equal = sum(x[a:b].T @ x[a:b] / (b - a) for a, b in ((0, 5), (5, 16)))
    assert abs(np.linalg.eigvalsh(equal)[-1] - exact[-1]) > 1e-2 * exact[-1]
    assert sum(sizes) == 16

    # (33), (34) on an unconverged run: the residual is the reported error bar
    run = st.hessian_spectrum(
        QUADRATIC, jnp.zeros(N_PARAMS), k=1, max_hvps=4, tol=1e-12, seed=1,
        return_vectors=True, progress=False,
    )  # fmt: skip
    vec = np.asarray(run.eigenvectors[0])
    theta = run.sharpness
    hv = np.asarray(jax.jvp(jax.grad(QUADRATIC), (jnp.zeros(N_PARAMS),), (jnp.asarray(vec),))[1])
    np.testing.assert_allclose(hv, H_QUADRATIC @ vec, rtol=1e-12, atol=1e-12)
    residual = float(np.linalg.norm(hv - theta * vec))
    assert not run.converged[0] and residual > 1e-3
    assert run.sharpness_error == pytest.approx(residual, rel=1e-6)
    assert np.min(np.abs(EIGENVALUES - theta)) <= run.sharpness_error
    assert run.sharpness <= EIGENVALUES.max() and run.smallest >= EIGENVALUES.min()


def test_error_floor_is_the_rounding_of_the_products():
    """Theory (35): error = max(residual, 10 eps max |theta|)."""
    spec = st.hessian_spectrum(
        QUADRATIC, jnp.zeros(N_PARAMS), k=3, max_hvps=N_PARAMS, tol=1e-14, progress=False
    )
    scale = max(np.max(np.abs(spec.eigenvalues)), abs(spec.smallest))
    assert spec.rounding_error == pytest.approx(10 * EPS * scale, rel=1e-14)
    assert np.all(spec.errors >= spec.rounding_error)
    assert spec.smallest_error >= spec.rounding_error
    assert np.any(spec.errors == spec.rounding_error)  # a full Krylov space: residual ~ 0
    np.testing.assert_allclose(spec.eigenvalues, [5.0, 4.0, 3.2], rtol=1e-12)


def test_random_start_epsilon():
    """Theory (36, 37): eps(n, k, p) = (ln(1.648 sqrt(n) / p) / (2k - 1))^2 solves
    1.648 sqrt(n) exp(-sqrt(eps) (2k - 1)) = p; n = 1e5, k = 30, p = 1e-3: eps ~ 0.05."""
    for n, k, p in [(10**5, 30, 1e-3), (10, 3, 0.1), (2410, 50, 1e-6), (10**8, 200, 1e-9)]:
        eps = random_start_epsilon(n, k, p)
        assert eps == pytest.approx((math.log(1.648 * math.sqrt(n) / p) / (2 * k - 1)) ** 2)
        assert 1.648 * math.sqrt(n) * math.exp(-math.sqrt(eps) * (2 * k - 1)) == pytest.approx(p)
    assert random_start_epsilon(10**5, 30, 1e-3) == pytest.approx(0.05, abs=1e-3)
    assert random_start_epsilon(10**5, 0, 1e-3) == math.inf


def test_random_start_bounds():
    """Theory (38): delta = eps (theta_max - theta_min) / (1 - 2 eps) with eps at p / 2,
    no bound for eps >= 1/2; HessianSpectrum.bounds adds the rounding floor and claims
    nothing after a warm start."""
    for n, k, p in [(1000, 40, 1e-6), (50, 10, 1e-3)]:
        eps = random_start_epsilon(n, k, p / 2)
        assert eps < 0.5
        delta = eps * (3.0 - (-1.0)) / (1 - 2 * eps)
        assert random_start_bounds(3.0, -1.0, n, k, p) == pytest.approx((3.0 + delta, -1.0 - delta))
    assert random_start_bounds(3.0, -1.0, 10**6, 3, 1e-6) == (math.inf, -math.inf)
    spec = st.hessian_spectrum(QUADRATIC, jnp.zeros(N_PARAMS), k=1, tol=1e-10, progress=False)
    upper, lower = spec.bounds(1e-4)
    bare = random_start_bounds(spec.sharpness, spec.smallest, N_PARAMS, spec.lanczos_steps, 1e-4)
    assert upper == pytest.approx(bare[0] + spec.rounding_error, rel=1e-15)
    assert lower == pytest.approx(bare[1] - spec.rounding_error, rel=1e-15)
    assert upper >= EIGENVALUES.max() and lower <= EIGENVALUES.min()
    warm = st.hessian_spectrum(
        QUADRATIC, jnp.zeros(N_PARAMS), k=1, tol=1e-10, progress=False,
        start=jnp.asarray(np.eye(N_PARAMS)[0]),
    )  # fmt: skip
    assert not warm.random_start and warm.bounds(1e-4) == (math.inf, -math.inf)


def test_ritz_gap_estimate_understates_the_error():
    """Theory (39): with the next Ritz value standing in for the gap, r^2 / delta can be
    far below the actual error while the residual bound r holds (an unresolved pair
    1, 0.98 above a cluster at 0; two products)."""
    lam = np.zeros(50)
    lam[:2] = (1.0, 0.98)
    h = jnp.asarray(np.diag(lam))

    def loss(w):
        return 0.5 * w @ (h @ w)

    spec = st.hessian_spectrum(loss, jnp.zeros(50), max_hvps=2, tol=1e-12, progress=False)
    theta, r = spec.sharpness, spec.sharpness_error
    kato_temple = r**2 / (theta - spec.smallest)
    actual = float(np.min(np.abs(lam - theta)))
    assert actual <= r
    assert kato_temple < actual / 50
    assert np.all(spec.errors >= r)  # the library reports r, not r^2 / gap


# ------------------------------------------------------------------ section 13


def _spectrum(top, err, converged, smallest, smallest_err, smallest_converged, *,
              steps=10, n=10**6, random_start=True):  # fmt: skip
    return st.HessianSpectrum(
        eigenvalues=np.array([top]), errors=np.array([err]), converged=np.array([converged]),
        smallest=smallest, smallest_error=smallest_err, smallest_converged=smallest_converged,
        num_hvps=steps, num_params=n, lanczos_steps=steps, rounding_error=0.0,
        random_start=random_start,
    )  # fmt: skip


def test_verdict_rule():
    """Theory (40): False if theta_1 >= L (ritz_value); True if U_p < L (random_start);
    True if converged and theta_1 + r_1 < L (residual); otherwise None."""
    lr, tau = 0.1, 4
    limit = st.max_stable_sharpness(lr, tau)

    def judge(spec, **kw):
        return st.verdict_from_spectrum(spec, tau, lr, **kw)

    r = judge(_spectrum(limit, 1e-9, True, 0.0, 1e-9, True))
    assert (r.verdict, r.certified_by) == (False, "ritz_value")
    r = judge(_spectrum(1.001 * limit, 5.0, False, 0.0, 1e-9, True, steps=2000))
    assert (r.verdict, r.certified_by) == (False, "ritz_value")
    assert r.fraction_of_limit == pytest.approx(1.001)
    # many steps on a small matrix: the random-start bound is below the limit
    spec = _spectrum(0.5 * limit, 1.0, False, 0.0, 1.0, False, steps=400, n=100)
    upper = spec.bounds(1e-6)[0]
    assert upper < limit
    r = judge(spec)
    assert (r.verdict, r.certified_by) == (True, "random_start")
    assert r.sharpness_upper_bound == pytest.approx(upper)
    # residual: converged and theta + r below the limit (no random-start bound)
    r = judge(_spectrum(0.9 * limit, 0.05 * limit, True, 0.0, 1e-9, True, random_start=False))
    assert (r.verdict, r.certified_by) == (True, "residual")
    assert r.fraction_of_limit == pytest.approx(0.9)
    # undecided: straddles the limit, or not converged
    r = judge(_spectrum(0.9 * limit, 0.2 * limit, True, 0.0, 1e-9, True, random_start=False))
    assert (r.verdict, r.certified_by) == (None, None)
    r = judge(_spectrum(0.5 * limit, 0.01 * limit, False, 0.0, 1e-9, True, random_start=False))
    assert r.verdict is None
    assert bool(r) is False


def test_is_minimum_rule():
    """Theory (41): False when theta_min < -1e-5 (|theta_1| + r_1); True when the lower
    bound or a converged theta_min - r_min is >= -1e-5 |theta_1|; else None; with
    require_minimum a proven non-minimum makes the verdict False."""
    lr, tau = 0.1, 0
    top = 5.0  # limit 20: the sharp side is stable by the residual

    def minimum(smallest, err, conv, require=False):
        spec = _spectrum(top, 1e-6, True, smallest, err, conv, random_start=False)
        return st.verdict_from_spectrum(spec, tau, lr, require_minimum=require)

    assert minimum(-2e-4, 1e-9, False).is_minimum is False
    assert minimum(-4.9e-5, 1e-9, False).is_minimum is None  # within the flat tolerance
    assert minimum(-4e-5, 1e-6, True).is_minimum is True  # -4e-5 - 1e-6 >= -5e-5
    assert minimum(-4e-5, 2e-5, True).is_minimum is None  # the error bar reaches below
    assert minimum(0.3, 0.01, True).is_minimum is True
    r = minimum(-2e-4, 1e-9, False)
    assert r.verdict is True and r.certified_by == "residual"
    r = minimum(-2e-4, 1e-9, False, require=True)
    assert (r.verdict, r.certified_by) == (False, "ritz_value")
    assert minimum(-4.9e-5, 1e-9, False, require=True).verdict is None
    # the random-start lower bound establishes a minimum too
    spec = _spectrum(top, 1e-6, True, 1.0, 0.5, False, steps=400, n=100)
    assert spec.bounds(1e-6)[1] >= -5e-5
    assert st.verdict_from_spectrum(spec, tau, lr).is_minimum is True


def test_growth_along_negative_curvature():
    """Theory (42): along a < 0 the distance grows by rho(lr a) ~ 1 + lr |a| / (1 - beta)
    per step (exactly 1 + lr |a| for SGD at tau = 0), reported as smallest_growth."""
    lr, a = 0.001, -0.001  # q = -1e-6
    assert st.spectral_radius(a, lr, 0) == pytest.approx(1 + lr * abs(a), rel=1e-15)
    for rule in RULES:
        for tau, beta in ((0, 0.5), (3, 0.9), (8, 0.0)):
            rho = st.spectral_radius(a, lr, tau, beta, momentum=rule)
            assert rho - 1 == pytest.approx(lr * abs(a) / (1 - beta), rel=1e-3)
    spec = _spectrum(5.0, 1e-6, True, -0.3, 1e-6, True, random_start=False)
    r = st.verdict_from_spectrum(spec, 4, 0.02, beta=0.5, momentum="shifted")
    assert r.smallest_growth == pytest.approx(
        st.spectral_radius(-0.3, 0.02, 4, 0.5, momentum="shifted"), rel=1e-14
    )
    assert r.smallest_growth > 1 and r.is_minimum is False


# ------------------------------------------------------------------ section 14


def test_simulated_growth_is_the_spectral_radius():
    """Theory (43): started off the minimum, the distance of a simulated delayed run
    grows (or decays) per step by the spectral radius at the top eigenvalue."""
    a, tau = 2.0, 4
    h = jnp.asarray([a, 0.5])

    def loss(w):
        return 0.5 * jnp.sum(h * w * w)

    limit_lr = st.max_stable_lr(a, tau)
    for factor in (0.9, 1.1):
        lr = factor * limit_lr
        rho = st.spectral_radius(a, lr, tau)
        steps = 1200
        traj = st.simulate_async(loss, jnp.asarray([1e-3, 1e-3]), lr=lr, tau=tau, steps=steps)
        amplitude = np.sqrt(np.asarray(traj.loss))
        measured = st.growth_rate(amplitude[steps // 3 :], window=100)
        assert measured == pytest.approx(rho, rel=1e-3)
        assert (measured > 1) == (factor > 1)


# ------------------------------------------------------------------ section 17


def _diloco_round_matrix(a, lr, beta, h, outer_lr, mu, keep, stale):
    """One round of local SGD as section 17 writes it, inner heavy ball (beta = 0:
    SGD), outer Nesterov (mu = 0: SGD), the outer gradient the pseudo-gradient
    ``stale`` rounds old; state [x, u, v, Delta_{k-1}, ..., Delta_{k-stale}]."""

    def round_(s):
        x, u, v, old = s[0], s[1], s[2], list(s[3:])
        xl, vl = x, (v if keep else 0.0)
        for _ in range(h):
            vl = beta * vl + a * xl
            xl = xl - lr * vl
        delta = x - xl
        g = old[stale - 1] if stale else delta
        u = mu * u + g
        x = x - outer_lr * (g + mu * u)
        return np.array([x, u, vl, *([delta] + old)[: len(old)]])

    n = 3 + stale
    return np.stack([round_(e) for e in np.eye(n)], axis=1)


def test_pseudo_gradient_factor():
    """Theory (46): H inner steps from (x, 0) end at (1 - kappa) x; inner SGD:
    kappa = 1 - (1 - lr a)^H."""
    from stability.theory.local_sgd import LocalSGD, pseudo_gradient_factor

    for h in (1, 2, 5, 30):
        for a in (0.5, 3.0, 25.0):
            assert pseudo_gradient_factor(LocalSGD(0.1, h), a) == pytest.approx(
                1 - (1 - 0.1 * a) ** h, rel=1e-13, abs=1e-13
            )
            x, v = 1.0, 0.0
            for _ in range(h):
                v = 0.9 * v + a * x
                x = x - 0.1 * v
            cfg = LocalSGD(0.1, h, "heavy_ball", 0.9)
            assert pseudo_gradient_factor(cfg, a) == pytest.approx(1 - x, abs=1e-12)


@pytest.mark.parametrize("keep", [False, True])
def test_outer_polynomials(keep):
    """Theory (47, 48): the roots of the page's polynomials, built with numpy from
    kappa / T^H, are the eigenvalues of the one-round matrix (nonzero ones, 1e-9),
    outer Nesterov, DiLoCo and streaming tau = 2, inner heavy ball reset / kept."""
    from stability.theory.local_sgd import LocalSGD, outer_polynomial

    a, lr, beta, mu, outer_lr = 3.0, 0.1, 0.9, 0.9, 0.7
    for h in (1, 5, 30):
        t = np.linalg.matrix_power(np.array([[1 - lr * a, -lr * beta], [a, beta]]), h)
        for stale in (0, 2):
            sched = {"schedule": "streaming", "overlap": stale} if stale else {}
            cfg = LocalSGD(lr, h, "heavy_ball", beta, not keep, "nesterov", **sched)
            a_out = np.polymul(np.r_[1.0, np.zeros(stale)], np.polymul([1, -1], [1, -mu]))
            b_out = np.r_[1 + mu, -mu]
            if keep:
                det = np.linalg.det(t)
                page = np.polyadd(
                    np.polymul([1.0, -t[1, 1]], a_out),
                    outer_lr * np.polymul([1 - t[0, 0], det - t[1, 1]], b_out),
                )
            else:
                page = np.polyadd(a_out, outer_lr * (1 - t[0, 0]) * b_out)
            lib = outer_polynomial(cfg, a, mu).coefficients(outer_lr)
            np.testing.assert_allclose(np.asarray(lib), page, rtol=0, atol=1e-12)
            dense = np.linalg.eigvals(
                _diloco_round_matrix(a, lr, beta, h, outer_lr, mu, keep, stale)
            )
            big = np.sort(np.abs(dense))[::-1][: len(page) - 1]
            roots = np.sort(np.abs(np.roots(page)))[::-1]
            np.testing.assert_allclose(roots[:3], big[:3], atol=1e-9)


def test_outer_learning_rate_threshold():
    """Theory (49): outer_lr_max = q_max(outer delay, mu) / kappa (the round matrix has
    radius 1 there, 1e-9); kappa < 0 leaves none; and the page's table."""
    from stability.theory.local_sgd import LocalSGD, max_stable_outer_lr

    for h, stale in ((1, 0), (5, 0), (30, 1)):
        kappa = 1 - (1 - 0.3) ** h
        q = st.stability_threshold(stale, 0.9, momentum="nesterov").q_max
        sched = {"schedule": "streaming", "overlap": stale} if stale else {}
        lr_max = max_stable_outer_lr(LocalSGD(0.1, h, **sched), 3.0, 0.9)
        assert lr_max == pytest.approx(q / kappa, rel=1e-12)
        m = _diloco_round_matrix(3.0, 0.1, 0.0, h, lr_max, 0.9, False, stale)
        assert np.max(np.abs(np.linalg.eigvals(m))) == pytest.approx(1.0, abs=1e-9)
    assert max_stable_outer_lr(LocalSGD(0.1, 2), 25.0, 0.9) == 0.0  # kappa = -1.25
    rows = {  # (inner, beta, reset, H): DiLoCo, eager M = 8, streaming tau = 1 (the page's)
        ("gd", 0.0, True, 1): (4.524, 1.068, 0.844),
        ("gd", 0.0, True, 30): (1.357, 0.320, 0.253),
        ("heavy_ball", 0.9, True, 5): (0.763, 0.180, 0.142),
        ("heavy_ball", 0.9, False, 5): (0.845, 0.173, 0.137),
        ("heavy_ball", 0.9, False, 1): (0.0099, 0.0078, 0.0075),
    }
    schedules = ({}, {"schedule": "eager", "workers": 8}, {"schedule": "streaming", "overlap": 1})
    for (inner, beta, reset, h), want in rows.items():
        for sched, value in zip(schedules, want, strict=True):
            cfg = LocalSGD(0.1, h, inner, beta, reset, "nesterov", **sched)
            digits = 3 if value >= 0.1 else 4  # as the page rounds them
            assert round(max_stable_outer_lr(cfg, 3.0, 0.9), digits) == value


# ------------------------------------------------------ a delay per block (18)


def _block_problem(seed=0, n=8, delays=(2, 0, 1)):
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    h = (q * rng.uniform(0.1, 1.0, n)) @ q.T
    labels = rng.permutation(np.arange(n) % len(delays))
    proj = [np.diag((labels == b) * 1.0) for b in range(len(delays))]
    return h, labels, proj


def _page_block_matrix(z, lr, beta, h, proj, delays):
    """(51) for the heavy ball as the page writes it: A(z) I + lr sum_b z^(T - tau_b + 1)
    P_b H, A = z^T (z - 1)(z - beta)."""
    t = max(delays)
    a = z**t * (z - 1) * (z - beta)
    return a * np.eye(h.shape[0]) + lr * sum(
        z ** (t - d + 1) * p @ h for p, d in zip(proj, delays, strict=True)
    )


def test_block_delay_matrix_polynomial():
    """Theory (50, 51, 52): the page's M(z) is the library's; the block companion's
    eigenvalues are roots of det M (M(z) singular there); plain delayed SGD (50),
    simulated, grows at the companion's radius."""
    from stability.theory.block_delays import block_companion_matrix, block_polynomial

    delays, beta, lr = (2, 0, 1), 0.6, 0.9
    h, labels, proj = _block_problem()
    k = np.stack([p @ h for p in proj])
    poly = block_polynomial(delays, beta)
    for z in (0.4 + 0.7j, -1.2, 2.0 - 0.5j):
        lib = np.tensordot(z ** np.arange(poly.degree, -1, -1), poly.coefficients(k, lr), 1)
        np.testing.assert_allclose(lib, _page_block_matrix(z, lr, beta, h, proj, delays))
    roots = np.linalg.eigvals(block_companion_matrix(k, delays, lr, beta))
    for z in roots[np.abs(roots) > 0.3]:
        m = _page_block_matrix(z, lr, beta, h, proj, delays)
        assert np.linalg.svd(m, compute_uv=False)[-1] < 1e-9 * np.linalg.norm(m)
    # (50): e_{t+1} = e_t - lr sum_b P_b H e_{t - tau_b} at an unstable lr
    lr_gd = 1.2
    rho = np.max(np.abs(np.linalg.eigvals(block_companion_matrix(k, delays, lr_gd, 0.0))))
    assert rho > 1
    hist = [np.random.default_rng(1).standard_normal(h.shape[0])] * 3
    logs, scale = [], 0.0
    for _ in range(3000):
        step = sum(p @ h @ hist[-1 - d] for p, d in zip(proj, delays, strict=True))
        hist = [*hist[1:], hist[-1] - lr_gd * step]
        norm = np.linalg.norm(hist[-1])
        scale += np.log(norm)
        hist = [x / norm for x in hist]  # renormalised: log growth accumulated in scale
        logs.append(scale)
    slope = np.polyfit(np.arange(1500), logs[1500:], 1)[0]
    assert np.exp(slope) == pytest.approx(rho, rel=1e-4)


def test_block_delay_threshold_locus_and_decoupling():
    """Theory (53, 54): at the threshold -A(e^{i theta}) / lr is an eigenvalue of
    K(e^{i theta}) and the dense radius crosses 1 there; H block diagonal in the
    blocks gives min_b q_max(tau_b) / lambda_max(H_bb), one delay q_max / lambda_max."""
    from stability.theory.block_delays import block_spectral_radius, block_threshold

    delays, beta = (2, 0, 1), 0.6
    h, labels, proj = _block_problem()
    k = np.stack([p @ h for p in proj])
    thr = block_threshold(k, delays, beta)
    z, t = thr.z, max(delays)
    kz = sum(z ** (t - d + 1) * kb for kb, d in zip(k, delays, strict=True))
    kappa = -(z**t) * (z - 1) * (z - beta) / thr.lr
    assert np.min(np.abs(np.linalg.eigvals(kz) - kappa)) < 1e-9 * abs(kappa)
    assert block_spectral_radius(k, delays, thr.lr * (1 - 1e-7), beta) < 1
    assert block_spectral_radius(k, delays, thr.lr * (1 + 1e-7), beta) > 1
    mask = labels[:, None] == labels[None, :]
    hd = h * mask  # P_b H = H P_b
    kd = np.stack([p @ hd for p in proj])
    want = min(
        st.stability_threshold(d, beta).q_max / np.linalg.eigvalsh(hd[np.ix_(sel, sel)])[-1]
        for d, sel in ((d, labels == b) for b, d in enumerate(delays))
    )
    got = block_threshold(kd, delays, beta, method="locus").lr
    assert got == pytest.approx(want, rel=1e-9)
    uniform = st.stability_threshold(1, beta).q_max / np.linalg.eigvalsh(h)[-1]
    assert block_threshold(k, (1, 1, 1), beta, method="locus").lr == pytest.approx(
        uniform, rel=1e-9
    )


def test_one_f_one_b_delay_profile():
    """Theory (55): asynchronous 1F1B, counted on the steady-state timeline (forward of
    micro-batch m at stage s at slot 2m + s, its backward there at 2m + 2P - 1 - s):
    tau_s = P - 1 - s; GPipe 0, PipeDream-2BW 1."""
    from stability.theory.pipeline import pipeline_delays

    for p in (1, 2, 4, 7):
        m = 5 * p
        counted = tuple(
            sum(1 for j in range(m) if 2 * m + s < 2 * j + 2 * p - 1 - s) for s in range(p)
        )
        assert pipeline_delays(p, "1f1b") == counted == tuple(p - 1 - s for s in range(p))
        assert pipeline_delays(p, "gpipe") == (0,) * p
        assert pipeline_delays(p, "pipedream_2bw") == (1,) * p


def test_ritz_reduction_of_the_block_polynomial():
    """Theory (56): for a rank-k H = V Lambda V^T, det M(z) = A^(n-k) det(A I_k + lr
    sum_b B_b Lambda^1/2 V^T P_b V Lambda^1/2), at random z."""
    rng = np.random.default_rng(4)
    n, rank, delays, beta, lr = 9, 3, (1, 3, 0), 0.5, 0.7
    v = np.linalg.qr(rng.standard_normal((n, rank)))[0]
    lam = rng.uniform(0.5, 2.0, rank)
    h = (v * lam) @ v.T
    proj = [np.diag((np.arange(n) % 3 == b) * 1.0) for b in range(3)]
    half = v * np.sqrt(lam)
    t = max(delays)
    for z in (0.3 + 0.9j, -0.8 - 0.1j, 1.3 + 0.2j):
        a = z**t * (z - 1) * (z - beta)
        full = _page_block_matrix(z, lr, beta, h, proj, delays)
        small = a * np.eye(rank) + lr * sum(
            z ** (t - d + 1) * half.T @ p @ half for p, d in zip(proj, delays, strict=True)
        )
        assert np.linalg.det(full) == pytest.approx(
            a ** (n - rank) * np.linalg.det(small), rel=1e-10
        )


# -------------------------------------------------------------- the page itself


def _page_tags() -> list[int]:
    return [int(t) for t in re.findall(r"\\tag\{(\d+)\}", THEORY.read_text(encoding="utf-8"))]


def _cited_tags() -> set[int]:
    cited = set()
    for name, fn in inspect.getmembers(sys.modules[__name__], inspect.isfunction):
        if not name.startswith("test_"):
            continue
        match = re.match(r"Theory \(([\d, ]+)\)", inspect.getdoc(fn) or "")
        if match:
            cited.update(int(x) for x in match.group(1).split(","))
    return cited


def test_every_formula_on_the_theory_page_has_a_test():
    """The page's formulas are numbered 1..N once each, and each number is cited by a
    test above (and no test cites a number the page lacks)."""
    tags = _page_tags()
    assert tags == list(range(1, len(tags) + 1)), tags
    cited = _cited_tags()
    assert set(tags) - cited == set(), f"formulas without a test: {sorted(set(tags) - cited)}"
    assert cited - set(tags) == set(), f"tests cite missing formulas: {sorted(cited - set(tags))}"
