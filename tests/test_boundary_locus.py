"""Thresholds from the boundary locus against eigenvalue oracles and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from profiles import examples
from stability_oracles import bisect_threshold, poly, rho, simulate

import stability as st
from stability.boundary_locus import dense_threshold
from stability.rules import characteristic_polynomial

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
    with pytest.raises(ValueError, match=match):
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
    from stability.boundary_locus import _sincos

    small = np.concatenate([np.geomspace(1e-300, 1e-3, 500), np.linspace(0, np.pi / 4, 5001)])
    s, c = (np.asarray(v) for v in jax.jit(_sincos)(jnp.asarray(small)))
    np.testing.assert_allclose(s, np.sin(small), rtol=3e-16, atol=0)
    np.testing.assert_allclose(c, np.cos(small), rtol=3e-16, atol=0)
    big = np.linspace(0, 0.75 * np.pi, 20001)
    s, c = (np.asarray(v) for v in jax.jit(_sincos)(jnp.asarray(big)))
    assert np.max(np.abs(s - np.sin(big))) < 4e-16
    assert np.max(np.abs(c - np.cos(big))) < 4e-16


def _bisection_f(tau, beta, rule):
    """Root of F (module docstring) in the bracket by numpy bisection with libm sin/cos."""
    hi = np.minimum(np.pi, (2.0 if rule == "shifted" else 1.5) * np.pi / (2 * tau + 1))
    lo = np.zeros_like(hi)

    def f(th):
        c, s = np.cos(th / 2), np.sin(th / 2)
        if rule == "heavy_ball":
            x, y, al = (1 - beta) * c, (1 + beta) * s, tau * th
        elif rule == "nesterov":
            x = (1 - beta) * c * c + (1 + beta) * (1 + 2 * beta) * s * s
            y, al = 2 * beta * beta * c * s, (tau + 0.5) * th
        else:
            hp = 0.5 * (tau + 1) * th
            x, y, al = (1 - beta) * np.cos(hp), (1 + beta) * np.sin(hp), 0.5 * tau * th
        return x * np.cos(al) - y * np.sin(al)

    for _ in range(80):
        mid = 0.5 * (lo + hi)
        pos = f(mid) > 0
        lo, hi = np.where(pos, mid, lo), np.where(pos, hi, mid)
    th = 0.5 * (lo + hi)
    s = np.sin(th / 2)
    if rule == "shifted":
        sp = np.sin(0.5 * (tau + 1) * th)
        return 2 * s * np.sqrt((1 - beta) ** 2 + 4 * beta * sp * sp)
    q = 2 * s * np.sqrt((1 - beta) ** 2 + 4 * beta * s * s)
    return q if rule == "heavy_ball" else q / np.sqrt(1 + 4 * beta * (1 + beta) * s * s)


@pytest.mark.parametrize("rule", RULES)
def test_unrolled_newton_converges_to_full_precision(rule):
    # tau up to 1e6 and 1 - beta down to 1e-6: the 4 unrolled steps (plus the loop for
    # stragglers) reach the crossing to ~1e-15, against bisection with libm sin/cos.
    rng = np.random.default_rng(3)
    n = 3000
    tau = np.concatenate([rng.integers(2, 1001, n), rng.integers(2, 10**6, n)])
    beta = np.concatenate([rng.uniform(0, 0.99, n), 1 - 10 ** rng.uniform(-6, 0, n)])
    t = st.stability_threshold(tau, beta, momentum=rule)
    assert bool(np.all(t.reliable))
    want = _bisection_f(tau.astype(float), beta, rule)
    np.testing.assert_allclose(np.asarray(t.q_max), want, rtol=1e-14)


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
