"""Thresholds from the boundary locus against eigenvalue oracles and closed forms."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from profiles import examples
from stability_oracles import (
    bisect_threshold,
    dist_poly,
    mp_bisect_threshold,
    mp_locus_threshold,
    mp_poly,
    np_locus_threshold,
    poly,
    rho,
    schur_stable,
    simulate,
    transition_matrix,
)

import stability as st
from stability.theory.boundary_locus import dense_threshold
from stability.theory.rules import characteristic_polynomial

RULES = ("heavy_ball", "nesterov", "shifted")
BETAS = (0.0, 0.3, 0.9, 0.99)


def q_max(tau, beta, rule):
    return float(st.max_stable_sharpness(1.0, tau, beta, momentum=rule))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("tau", [0, 1, 2, 3, 5, 12])
def test_matches_eigenvalue_bisection(rule, tau):
    for beta in BETAS:
        want = bisect_threshold(lambda q: poly(tau, beta, q, rule))  # noqa: B023
        got = q_max(tau, beta, rule)
        assert got == pytest.approx(want, rel=1e-9), (rule, tau, beta)


@pytest.mark.parametrize(
    "rule,tau,beta",
    [
        ("heavy_ball", 64, 0.99),
        ("nesterov", 64, 0.5),
        ("shifted", 64, 0.99),
        ("shifted", 250, 0.9),
        ("nesterov", 300, 0.0),
        ("heavy_ball", 1000, 0.9),
        ("shifted", 1000, 0.99),
    ],
)
def test_large_tau_brackets_eigenvalue_crossing(rule, tau, beta):
    # The oracle bisection's last bracket: stable at q (1 - 1e-9), unstable at q (1 + 1e-9).
    q = q_max(tau, beta, rule)
    assert rho(poly(tau, beta, q * (1 - 1e-9), rule)) < 1.0
    assert rho(poly(tau, beta, q * (1 + 1e-9), rule)) > 1.0


def test_closed_forms():
    taus = np.array([0, 1, 2, 3, 10, 100, 1000, 10**5, 10**6])
    levin_may = 2 * np.sin(np.pi / (2 * (2 * taus + 1)))
    np.testing.assert_allclose(levin_may[:3], [2.0, 1.0, 0.6180339887498949], rtol=1e-15)
    for rule in RULES:  # beta = 0: plain delayed SGD
        got = np.asarray(st.max_stable_sharpness(1.0, taus, 0.0, momentum=rule))
        np.testing.assert_allclose(got, levin_may, rtol=1e-13)
        # the cosine form loses digits to cancellation at large tau
        cos_form = 2 * np.cos(taus * np.pi / (2 * taus + 1))
        assert np.all(np.abs(got / cos_form - 1) < 1e-15 * np.maximum(1, taus) ** 2)
    beta = np.linspace(0.0, 0.99, 23)
    msa = st.max_stable_sharpness
    np.testing.assert_allclose(msa(1.0, 0, beta, momentum="heavy_ball"), 2 * (1 + beta), 1e-14)
    np.testing.assert_allclose(msa(1.0, 1, beta, momentum="heavy_ball"), 1 - beta, rtol=1e-12)
    np.testing.assert_allclose(msa(1.0, 0, beta, momentum="shifted"), 2 * (1 + beta), 1e-14)
    np.testing.assert_allclose(msa(1.0, 1, beta, momentum="shifted"), 1 - beta**2, rtol=1e-12)
    np.testing.assert_allclose(
        msa(1.0, 0, beta, momentum="nesterov"), (2 + 2 * beta) / (1 + 2 * beta), rtol=1e-14
    )


def test_large_tau_asymptotics():
    # heavy_ball: q_max ~ (1 - beta) pi / (2 tau); gd: ~ pi / (2 tau + 1).
    for beta in (0.0, 0.5, 0.9):
        for tau in (10**4, 10**5):
            got = q_max(tau, beta, "heavy_ball")
            assert got == pytest.approx((1 - beta) * np.pi / (2 * tau), rel=20 / tau / (1 - beta))
    # shifted beats plain SGD at the same effective rate lr / (1 - beta), more so as beta grows
    tau = 32
    ratios = [q_max(tau, b, "shifted") / (1 - b) / q_max(tau, 0.0, "shifted") for b in (0.5, 0.9)]
    assert 1 < ratios[0] < ratios[1]
    # heavy_ball at a fixed effective rate never beats plain SGD
    for b in (0.3, 0.6, 0.9, 0.99):
        assert q_max(tau, b, "heavy_ball") / (1 - b) <= q_max(tau, 0.0, "heavy_ball") * (1 + 1e-12)


@pytest.mark.parametrize("rule", ("gd", *RULES))
def test_simulation_decays_below_and_grows_above(rule):
    momentum = "heavy_ball" if rule == "gd" else rule
    for tau, beta in [(0, 0.5), (1, 0.0), (3, 0.7), (8, 0.9)]:
        b = 0.0 if rule == "gd" else beta
        qm = q_max(tau, b, momentum)
        for factor in (0.95, 1.05):
            q = factor * qm
            r = rho(poly(tau, b, q, rule))
            steps = int(min(60000, 40 / abs(np.log(r))))
            w = simulate(rule, tau, b, q, steps)
            win = max(20, steps // 10)
            rate = np.log(w[-win:].max() / w[-2 * win : -win].max()) / win
            if factor < 1:
                assert w[-win:].max() < 1e-6 * w[: 5 * (tau + 2)].max()
            else:
                assert w[-win:].max() > 1e6 * w[: 5 * (tau + 2)].max()
            # measured growth per step matches the eigenvalue spectral radius
            assert rate == pytest.approx(np.log(r), rel=0.05, abs=1e-5), (tau, b, factor)


@given(
    rule=hst.sampled_from(RULES),
    tau=hst.integers(0, 12),
    beta=hst.floats(0.0, 0.99),
    frac=hst.floats(0.02, 1.98),
)
@settings(max_examples=examples(60))
def test_stable_set_is_an_interval(rule, tau, beta, frac):
    qm = q_max(tau, beta, rule)
    if abs(frac - 1) < 1e-6:
        return
    stable = rho(poly(tau, beta, frac * qm, rule)) < 1
    assert stable == (frac < 1)


@given(rule=hst.sampled_from(RULES), tau=hst.integers(0, 2000), beta=hst.floats(0.0, 0.99))
@settings(max_examples=examples(200))
def test_threshold_decreases_with_tau(rule, tau, beta):
    q = np.asarray(st.max_stable_sharpness(1.0, np.array([tau, tau + 1]), beta, momentum=rule))
    assert q[1] < q[0]


def test_broadcasting_jit_vmap():
    tau = np.array([[0], [3], [40]])
    beta = np.array([0.0, 0.5, 0.95])
    lr = np.array([0.1, 1.0, 2.0])
    got = st.max_stable_sharpness(lr, tau, beta, momentum="shifted")
    assert got.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            assert got[i, j] == pytest.approx(q_max(int(tau[i, 0]), beta[j], "shifted") / lr[j])
    jitted = jax.jit(lambda lr, tau, beta: st.max_stable_sharpness(lr, tau, beta))
    np.testing.assert_allclose(jitted(lr, tau, beta), st.max_stable_sharpness(lr, tau, beta))
    vm = jax.vmap(lambda b: st.max_stable_lr(2.0, 7, b, momentum="nesterov"))(jnp.asarray(beta))
    np.testing.assert_allclose(vm, [q_max(7, b, "nesterov") / 2.0 for b in beta], rtol=1e-14)
    assert st.stability_threshold(tau, beta).reliable.all()


@pytest.mark.parametrize("rule", RULES)
def test_dense_locus_agrees_with_named_rules(rule):
    for tau in (0, 1, 2, 7, 30):
        for beta in BETAS:
            p = characteristic_polynomial(tau, beta, momentum=rule)
            d = dense_threshold(p.a, p.b)
            assert bool(d.reliable)
            assert float(d.q_max) == pytest.approx(q_max(tau, beta, rule), rel=1e-11)


def _heavy_ball_dense(p, beta):
    """A(z) = z^K (z-1)(z-beta), B(z) = z D(z), D = sum_k p_k z^(K-k) (numpy, descending)."""
    k = len(p) - 1
    a = np.polymul(np.polymul([1.0, -1.0], [1.0, -beta]), np.eye(1, k + 1)[0])
    b = np.concatenate([[0.0], np.polymul([1.0, 0.0], p)])
    return a, b


def test_dense_locus_batched():
    # dense_threshold over a batch of polynomials (first-moment heavy ball, three betas)
    # gives each row's own threshold: bracketed by the eigenvalues to 1e-9, with a
    # unit-circle root at the returned angle.
    p = np.array([0.1, 0.2, 0.3, 0.2, 0.2])
    betas = (0.0, 0.5, 0.9)
    a, b = (np.stack(x) for x in zip(*(_heavy_ball_dense(p, be) for be in betas), strict=True))
    t = dense_threshold(jnp.asarray(a), jnp.asarray(b))
    assert t.q_max.shape == (3,) and bool(np.all(t.reliable))
    for i, be in enumerate(betas):
        q, theta = float(t.q_max[i]), float(t.theta[i])
        assert rho(dist_poly(p, be, q * (1 - 1e-9), "heavy_ball")) < 1
        assert rho(dist_poly(p, be, q * (1 + 1e-9), "heavy_ball")) > 1
        c = dist_poly(p, be, q, "heavy_ball")
        z = np.exp(1j * theta)
        assert abs(np.polyval(c, z) / np.polyval(np.polyder(c), z)) < 1e-9, be


@pytest.mark.parametrize("rule", RULES)
def test_delay_distribution_thresholds_concrete_and_traced(rule):
    # A delay distribution's threshold for each rule, with beta concrete and traced
    # (jit: the pure_callback path): bracketed by the eigenvalues of the rule's own
    # first-moment polynomial (dist_poly) to 1e-9 with a unit-circle root at theta;
    # the traced call gives the same numbers, float64 values and a boolean flag.
    # (Kills mutants that drop momentum or the callback's result dtypes, tests/MUTATION.md.)
    p = np.array([0.2, 0.5, 0.3])
    betas = np.array([0.0, 0.5, 0.9])
    dist = st.delay_distribution(p)
    t = st.stability_threshold(dist, betas, momentum=rule)
    jt = jax.jit(lambda b: st.stability_threshold(dist, b, momentum=rule))(jnp.asarray(betas))
    for got in (t, jt):
        assert got.q_max.dtype == np.float64 and got.theta.dtype == np.float64
        assert got.reliable.dtype == np.bool_ and bool(np.all(got.reliable))
    np.testing.assert_array_equal(np.asarray(jt.q_max), np.asarray(t.q_max))
    np.testing.assert_array_equal(np.asarray(jt.theta), np.asarray(t.theta))
    for i, be in enumerate(betas):
        q, theta = float(t.q_max[i]), float(t.theta[i])
        assert rho(dist_poly(p, be, q * (1 - 1e-9), rule)) < 1, be
        assert rho(dist_poly(p, be, q * (1 + 1e-9), rule)) > 1, be
        c = dist_poly(p, be, q, rule)
        z = np.exp(1j * theta)
        assert abs(np.polyval(c, z) / np.polyval(np.polyder(c), z)) < 1e-9, be


def test_float32_arguments_give_float32_thresholds():
    # the dtype follows beta (and lr): float32 in, float32 out, equal to float64 to ~eps32
    tau = np.array([3, 40])
    t = st.stability_threshold(tau, np.float32(0.9), momentum="shifted")
    assert t.q_max.dtype == np.float32 and t.theta.dtype == np.float32
    want = st.stability_threshold(tau, 0.9, momentum="shifted")
    np.testing.assert_allclose(t.q_max, np.asarray(want.q_max), rtol=1e-5)
    got = st.max_stable_sharpness(np.float32(0.1), tau, np.float32(0.9), momentum="shifted")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(want.q_max) / 0.1, rtol=1e-5)
    # the dense locus too
    a, b = _heavy_ball_dense(np.array([0.1, 0.2, 0.3, 0.2, 0.2]), 0.5)
    d32 = dense_threshold(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    d64 = dense_threshold(jnp.asarray(a), jnp.asarray(b))
    assert d32.q_max.dtype == np.float32 and bool(d32.reliable)
    assert float(d32.q_max) == pytest.approx(float(d64.q_max), rel=1e-5)


def test_max_stable_lr_inverts_sharpness():
    lr = st.max_stable_lr(3.0, 5, 0.6, momentum="nesterov")
    assert float(st.max_stable_sharpness(lr, 5, 0.6, momentum="nesterov")) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: st.max_stable_sharpness(1.0, -1), "tau"),
        (lambda: st.max_stable_sharpness(1.0, 2.5), "tau"),
        (lambda: st.max_stable_sharpness(0.0, 2), "lr"),
        (lambda: st.max_stable_sharpness(-1.0, 2), "lr"),
        (lambda: st.max_stable_sharpness(np.inf, 2), "lr"),
        (lambda: st.max_stable_sharpness(np.nan, 2), "lr"),
        (lambda: st.max_stable_sharpness(1.0, 2, 1.0), "beta"),
        (lambda: st.max_stable_sharpness(1.0, 2, -0.1), "beta"),
        (lambda: st.max_stable_sharpness(1.0, 2, 0.5, momentum="adam"), "momentum"),
        (lambda: st.max_stable_lr(0.0, 2), "sharpness"),
        (lambda: st.max_stable_lr(1.0, np.array([1, -2])), "tau"),
    ],
)
def test_bad_input(call, match):
    # the message starts with the argument's own name (not merely contains it)
    with pytest.raises(ValueError, match=f"^{match} must"):
        call()


@given(rule=hst.sampled_from(RULES), tau=hst.integers(0, 200), beta=hst.floats(0.0, 0.99))
@settings(max_examples=examples(40))
def test_random_points_bracket_eigenvalue_crossing(rule, tau, beta):
    # relative error <= 1e-9 against the exact (eigenvalue) crossing
    q = q_max(tau, beta, rule)
    assert rho(poly(tau, beta, q * (1 - 1e-9), rule)) < 1.0
    assert rho(poly(tau, beta, q * (1 + 1e-9), rule)) > 1.0


def test_polynomial_sincos_matches_libm():
    # relative accuracy on [0, pi/4] (small angles), absolute above, up to 3 pi / 4
    from stability.theory.boundary_locus import _sincos

    small = np.concatenate([np.geomspace(1e-300, 1e-3, 500), np.linspace(0, np.pi / 4, 5001)])
    s, c = (np.asarray(v) for v in jax.jit(_sincos)(jnp.asarray(small)))
    np.testing.assert_allclose(s, np.sin(small), rtol=3e-16, atol=0)
    np.testing.assert_allclose(c, np.cos(small), rtol=3e-16, atol=0)
    big = np.linspace(0, 0.75 * np.pi, 20001)
    s, c = (np.asarray(v) for v in jax.jit(_sincos)(jnp.asarray(big)))
    assert np.max(np.abs(s - np.sin(big))) < 4e-16
    assert np.max(np.abs(c - np.cos(big))) < 4e-16


@pytest.mark.parametrize("rule", RULES)
def test_unrolled_newton_converges_to_full_precision(rule):
    # tau up to 1e6 and 1 - beta down to 1e-6: the 4 unrolled steps (plus the loop for
    # stragglers) reach the crossing to ~1e-15. The reference is the test's own
    # formulation (the phase equation of -A/B, then -A/B itself from its factors), not
    # the library's F; the mpmath tests below check that reference point by point.
    rng = np.random.default_rng(3)
    n = 3000
    tau = np.concatenate([rng.integers(2, 1001, n), rng.integers(2, 10**6, n)])
    beta = np.concatenate([rng.uniform(0, 0.99, n), 1 - 10 ** rng.uniform(-6, 0, n)])
    t = st.stability_threshold(tau, beta, momentum=rule)
    assert bool(np.all(t.reliable))
    want, theta, imag = np_locus_threshold(tau, beta, rule)
    assert np.max(np.abs(imag)) < 1e-14  # -A/B is real there: the phase equation is right
    np.testing.assert_allclose(np.asarray(t.q_max), want, rtol=2e-14)
    np.testing.assert_allclose(np.asarray(t.theta), theta, rtol=2e-14)


GAPS = (1e-2, 1e-4, 1e-6)  # 1 - beta


@pytest.mark.parametrize("rule", ("gd", *RULES))
def test_oracle_polynomials_are_the_update_rules(rule):
    # The mpmath oracles' polynomials, checked against the update rules themselves: the
    # state-space matrix steps like the simulator, its eigenvalues are the roots of P
    # (plus zeros), and P annihilates every trajectory.
    for tau in (0, 1, 4):
        beta, q = (0.0 if rule == "gd" else 0.7), 0.3
        m = transition_matrix(rule, tau, beta, q)
        x = np.zeros(m.shape[0])
        x[: tau + 1] = 1.0  # the simulator's start: w = 1 before t = 0, buffers zero
        w = [x[0]]
        for _ in range(40):
            x = m @ x
            w.append(x[0])
        w = np.array(w)
        np.testing.assert_allclose(np.abs(w), simulate(rule, tau, beta, q, 40), rtol=1e-13)
        c = np.array([float(v) for v in mp_poly(tau, beta, q, rule)])
        np.testing.assert_allclose(c, poly(tau, beta, q, rule), rtol=1e-15)
        start = 2 * tau + 2  # after the nilpotent part of the state (shifted) has died
        residual = np.convolve(w, c, mode="valid")[start:]  # sum_j c_j w_{t+n-j}
        assert np.max(np.abs(residual)) < 1e-13 * np.max(np.abs(w))
        # (zero eigenvalues of a nilpotent block come out as ~1e-4: cut at 1e-2; the
        # roots of P here are all zero or of modulus > 0.5)
        eig = np.linalg.eigvals(m)
        nonzero = np.sort_complex(eig[np.abs(eig) > 1e-2])
        want = np.sort_complex(np.roots(c)[np.abs(np.roots(c)) > 1e-2])
        np.testing.assert_allclose(nonzero, want, atol=1e-9)


def test_schur_cohn_oracle_agrees_with_mpmath_roots():
    # The stability oracle against mpmath.polyroots (moduli at 50 digits), at extreme
    # beta where numpy's eigenvalues cannot separate the roots near 1.
    cases = [("heavy_ball", 3, 1 - 1e-6), ("nesterov", 6, 1 - 1e-4), ("shifted", 5, 1 - 1e-6)]
    for rule, tau, beta in cases:
        q0 = mp_locus_threshold(tau, beta, rule)[0] if tau >= 2 else None
        for f in ("0.3", "0.999999", "1.000001", "1.7"):
            with mpmath.workdps(50):
                c = mp_poly(tau, beta, q0 * mpmath.mpf(f), rule)
                rho_mp = max(abs(r) for r in mpmath.polyroots(c, maxsteps=400, extraprec=300))
                assert schur_stable(c) == (rho_mp < 1) == (f < "1"), (rule, tau, f)


@pytest.mark.parametrize("rule", RULES)
def test_extreme_beta_against_schur_cohn_bisection(rule):
    # 1 - beta down to 1e-6 at moderate delays: the threshold is the largest q at which
    # every root of P is inside the unit circle, decided exactly (Schur-Cohn on integers)
    # and bisected to 1e-13; numpy eigenvalues cannot resolve the roots near 1 and beta.
    for tau in (2, 9, 40):
        for gap in GAPS:
            beta = 1 - gap
            want = mp_bisect_threshold(tau, beta, rule)
            t = st.stability_threshold(tau, beta, momentum=rule)
            assert t.reliable
            assert t.q_max == pytest.approx(float(want), rel=1e-12), (tau, gap)
            # the locus oracle used alone for large tau finds the same crossing, and
            # Threshold.theta is its angle
            q, theta, _ = mp_locus_threshold(tau, beta, rule)
            assert float(q) == pytest.approx(float(want), rel=1e-12)
            assert t.theta == pytest.approx(float(theta), rel=1e-13)
            # the stable set below it is an interval (as the bisection assumes)
            for f in ("0.01", "0.3", "0.9"):
                assert schur_stable(mp_poly(tau, beta, want * mpmath.mpf(f), rule))


@pytest.mark.parametrize("rule", RULES)
def test_extreme_beta_at_a_few_hundred_steps_of_delay(rule):
    # tau = 300 (degree 302): the library's q_max brackets the exact crossing to 1e-12,
    # decided by Schur-Cohn at 256 bits (and again at 512: the precision suffices).
    tau = 300
    for gap in GAPS:
        beta = 1 - gap
        t = st.stability_threshold(tau, beta, momentum=rule)
        with mpmath.workdps(60):
            q = mpmath.mpf(t.q_max)
            below = mp_poly(tau, beta, q * (1 - mpmath.mpf(1e-12)), rule)
            above = mp_poly(tau, beta, q * (1 + mpmath.mpf(1e-12)), rule)
            assert schur_stable(below) and not schur_stable(above), gap
            if gap == GAPS[-1]:
                assert schur_stable(below, bits=512) and not schur_stable(above, bits=512)
        want, theta, _ = mp_locus_threshold(tau, beta, rule)
        assert t.q_max == pytest.approx(float(want), rel=1e-13)
        assert t.theta == pytest.approx(float(theta), rel=1e-13)


@pytest.mark.parametrize("rule", RULES)
def test_large_delay_against_high_precision_locus(rule):
    # tau 1e4..1e6, 1 - beta down to 1e-6: the smallest positive real value of -A/B on
    # the unit circle, over every crossing, at 40 digits (mpmath; the test's own
    # derivation, checked against eigenvalues above), against the library to 1e-13.
    for tau in (10**4, 10**5, 10**6):
        for beta in (0.5, *(1 - g for g in GAPS)):
            q, theta, k = mp_locus_threshold(tau, beta, rule)
            assert k == 0  # the first crossing is the smallest (the library's premise)
            t = st.stability_threshold(tau, beta, momentum=rule)
            assert t.reliable
            assert t.q_max == pytest.approx(float(q), rel=1e-13), (tau, beta)
            assert t.theta == pytest.approx(float(theta), rel=1e-13), (tau, beta)
    # plain delayed SGD: the oracle gives back Levin and May's closed form
    for tau in (2, 10**6):
        q, theta, _ = mp_locus_threshold(tau, 0.0, "gd")
        with mpmath.workdps(40):
            assert abs(q / (2 * mpmath.sin(mpmath.pi / (2 * (2 * tau + 1)))) - 1) < 1e-30


def test_heavy_ball_locus_oracle_matches_the_theory_note():
    # docs/theory.md's heavy_ball crossing: (tau - 1/2) theta + atan2(sin theta, cos theta - beta)
    # = pi/2, q = 2 sin(theta/2) sqrt(1 - 2 beta cos theta + beta^2), solved at 50 digits.
    for tau, beta in ((2, 0.9), (300, 1 - 1e-6), (10**6, 1 - 1e-4)):
        q, theta, _ = mp_locus_threshold(tau, beta, "heavy_ball", dps=50)
        with mpmath.workdps(50):
            b = mpmath.mpf(beta)

            def g(th, b=b, tau=tau):
                return (tau - 0.5) * th + mpmath.atan2(mpmath.sin(th), mpmath.cos(th) - b)

            lo, hi = mpmath.mpf(0), mpmath.pi / (tau - 0.5)
            for _ in range(200):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if g(mid) < mpmath.pi / 2 else (lo, mid)
            th = (lo + hi) / 2
            want = 2 * mpmath.sin(th / 2) * mpmath.sqrt(1 - 2 * b * mpmath.cos(th) + b * b)
            assert abs(q / want - 1) < 1e-30 and abs(theta / th - 1) < 1e-30


@pytest.mark.parametrize("rule", RULES)
def test_theta_is_the_angle_of_the_unit_circle_root(rule):
    # Threshold.theta: P(z; q_max) has a root at z = e^{i theta}. Newton's step from there
    # (|P / P'|, the distance to the nearest root to first order) is at rounding level;
    # tau = 0 (theta = pi) and nesterov tau = 1 (closed form) included.
    for tau in (0, 1, 2, 5):
        for beta in (0.0, 0.5, 0.99):
            t = st.stability_threshold(tau, beta, momentum=rule)
            with mpmath.workdps(40):
                c = mp_poly(tau, beta, t.q_max, rule)
                z = mpmath.expj(t.theta)
                dc = [ci * (len(c) - 1 - i) for i, ci in enumerate(c[:-1])]
                step = abs(mpmath.polyval(c, z) / mpmath.polyval(dc, z))
                assert step < 1e-13, (tau, beta, step)
            if tau == 0:
                assert t.theta == np.pi


def test_sharded_batch_gives_the_same_results():
    # each point depends only on its own (tau, beta): sharding the batch changes nothing
    devices = jax.devices()
    assert len(devices) > 1
    mesh = jax.sharding.Mesh(np.array(devices), ("points",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("points"))
    rng = np.random.default_rng(4)
    n = 64 * len(devices)
    tau = jnp.asarray(rng.integers(0, 2000, n))
    beta = jnp.asarray(rng.uniform(0, 0.99, n))
    f = jax.jit(lambda t, b: st.max_stable_sharpness(1.0, t, b, momentum="shifted"))
    one = f(tau, beta)
    many = f(jax.device_put(tau, split), jax.device_put(beta, split))
    np.testing.assert_array_equal(np.asarray(many), np.asarray(one))
