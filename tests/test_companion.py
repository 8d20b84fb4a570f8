"""Companion matrices and spectral radii against numpy eigenvalues and simulation."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stability_oracles import poly, rho, simulate

import stability as st

RULES = ("heavy_ball", "nesterov", "shifted")


@pytest.mark.parametrize("rule", RULES)
def test_companion_is_the_update_in_delay_coordinates(rule):
    # x_{t+1} = C x_t with x_t = (w_t, ..., w_{t-m+1}) reproduces the simulated weights.
    tau, beta, q = 3, 0.6, 0.2
    c = np.asarray(st.companion_matrix(q, 1.0, tau, beta, momentum=rule))
    assert c.shape == (tau + 2, tau + 2)
    w = simulate(rule, tau, beta, q, 60)  # |w|; the start is positive and these q decay smoothly
    signed = simulate_signed(rule, tau, beta, q, 60)
    np.testing.assert_allclose(np.abs(signed), w)
    m = tau + 2
    x = signed[m - 1 :: -1][:m]  # (w_{m-1}, ..., w_0)
    for t in range(m - 1, 59):
        x = c @ x
        assert x[0] == pytest.approx(signed[t + 1], abs=1e-12)


def simulate_signed(rule, tau, beta, q, steps):
    hist_w, hist_v, v, out = [1.0] * (tau + 1), [0.0] * (tau + 1), 0.0, [1.0]
    for _ in range(steps):
        g = q * hist_w[0]
        if rule == "heavy_ball":
            v = beta * v + g
            new = hist_w[-1] - v
        elif rule == "nesterov":
            v = beta * v + g
            new = hist_w[-1] - (g + beta * v)
        else:
            vn = beta * hist_v[0] + g
            hist_v = hist_v[1:] + [vn]
            new = hist_w[-1] - vn
        hist_w = hist_w[1:] + [new]
        out.append(new)
    return np.array(out)


@pytest.mark.parametrize("rule", RULES)
def test_spectral_radius_matches_numpy_eigenvalues(rule):
    rng = np.random.default_rng(0)
    for tau in (0, 1, 4, 17):
        sharp = rng.uniform(0.01, 3.0, 12)
        lr = rng.uniform(0.05, 1.0, 12)
        beta = rng.uniform(0.0, 0.99, 12)
        got = np.asarray(st.spectral_radius(sharp, lr, tau, beta, momentum=rule))
        want = [rho(poly(tau, b, s * l, rule)) for s, l, b in zip(sharp, lr, beta, strict=True)]
        np.testing.assert_allclose(got, want, rtol=1e-9)


def test_spectral_radius_at_threshold_is_one():
    for rule in RULES:
        for tau, beta in [(0, 0.5), (2, 0.9), (9, 0.3)]:
            s = st.max_stable_sharpness(0.5, tau, beta, momentum=rule)
            r = float(st.spectral_radius(s, 0.5, tau, beta, momentum=rule))
            assert r == pytest.approx(1.0, abs=1e-9)


def hand_companion(c):
    """Companion matrix of the polynomial c (descending): first row -c[1:] / c[0],
    ones on the subdiagonal, built entry by entry."""
    m = len(c) - 1
    out = np.zeros((m, m))
    for j in range(m):
        out[0, j] = -c[j + 1] / c[0]
    for i in range(1, m):
        out[i, i - 1] = 1.0
    return out


def test_broadcast_jit_vmap_against_numpy_eigenvalues():
    tau, lr = 4, 0.3
    sharp = np.linspace(0.1, 2.0, 5)[:, None]
    beta = np.array([0.0, 0.5, 0.9])
    want = {
        rule: np.array([[rho(poly(tau, b, lr * s, rule)) for b in beta] for s in sharp[:, 0]])
        for rule in ("shifted", "heavy_ball")
    }
    r = st.spectral_radius(sharp, lr, tau, beta, momentum="shifted")
    assert r.shape == (5, 3)
    np.testing.assert_allclose(np.asarray(r), want["shifted"], rtol=1e-10)
    f = jax.jit(st.spectral_radius, static_argnames=("tau", "momentum"))
    jitted = f(sharp, lr, tau=tau, beta=beta, momentum="shifted")
    np.testing.assert_allclose(np.asarray(jitted), want["shifted"], rtol=1e-10)
    v = jax.vmap(lambda s: st.spectral_radius(s, lr, tau, 0.5))(jnp.asarray(sharp[:, 0]))
    np.testing.assert_allclose(np.asarray(v), want["heavy_ball"][:, 1], rtol=1e-10)
    c = np.asarray(st.companion_matrix(sharp, lr, tau, beta))
    assert c.shape == (5, 3, tau + 2, tau + 2)
    for i, s in enumerate(sharp[:, 0]):
        for j, b in enumerate(beta):
            hand = hand_companion(poly(tau, b, lr * s, "heavy_ball"))
            np.testing.assert_allclose(c[i, j], hand, rtol=1e-14, atol=1e-15)
            radius = np.max(np.abs(np.linalg.eigvals(c[i, j])))
            assert radius == pytest.approx(want["heavy_ball"][i, j], rel=1e-9)


def test_traced_tau_is_refused_with_a_clear_error():
    with pytest.raises(TypeError, match="tau"):
        jax.jit(lambda t: st.spectral_radius(1.0, 0.1, t))(3)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: st.spectral_radius(1.0, 0.1, -2), "tau"),
        (lambda: st.spectral_radius(1.0, 0.1, 1.5), "tau"),
        (lambda: st.spectral_radius(1.0, 0.0, 2), "lr"),
        (lambda: st.spectral_radius(1.0, np.nan, 2), "lr"),
        (lambda: st.spectral_radius(1.0, 0.1, 2, 1.2), "beta"),
        (lambda: st.companion_matrix(1.0, 0.1, 2, momentum="sgd"), "momentum"),
        (lambda: st.spectral_radius(np.inf, 0.1, 2), "sharpness"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("rule", RULES)
def test_python_scalars_take_the_host_path_and_agree_with_the_oracle(rule, caplog):
    # Python scalars with 2 <= tau <= HOST_DELAY: numpy companion eigenvalues, no
    # program compiled per delay (the eager scalar ops compile once, at the first
    # delay); beyond it the certified compiled path. Both equal the independent
    # oracle (numpy roots of the rule's polynomial from the table).
    from stability.theory.companion import HOST_DELAY

    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        jax.jit(lambda a: a * 3.0)(jnp.ones(2))  # a new program: the log must show it
        assert any("Compiling" in r.getMessage() for r in caplog.records)
        for tau in (2, 9, 64, HOST_DELAY):
            if tau == 9:
                caplog.clear()
            for sharpness, beta in ((0.7, 0.5), (-0.3, 0.9), (2.0, 0.0), (0.0, 0.3)):
                got = st.spectral_radius(sharpness, 0.1, tau, beta, momentum=rule)
                assert type(got) is float
                want = rho(poly(tau, beta, 0.1 * sharpness, rule))
                assert got == pytest.approx(want, rel=1e-10, abs=1e-12), (tau, sharpness, beta)
    compiled = [r.getMessage()[:60] for r in caplog.records if "Compiling" in r.getMessage()]
    assert compiled == []  # nothing compiled for delays 9, 64 and HOST_DELAY
    tau = HOST_DELAY + 1
    got = st.spectral_radius(0.7, 0.1, tau, 0.5, momentum=rule)
    assert got == pytest.approx(rho(poly(tau, 0.5, 0.07, rule)), rel=1e-10)
