"""linearize(optax optimiser) against the named rules and eigenvalues."""

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import optax
import pytest
from stability_oracles import dist_poly, mp_locus_threshold, poly, rho

import stability as st
from stability.theory.linearize import linearize


@pytest.mark.parametrize("tau", [0, 1, 4, 33])
def test_sgd_momentum_matches_named_rules(tau):
    for beta in (0.0, 0.5, 0.9, 0.99):
        for lr in (0.05, 1.3):
            hb = linearize(optax.sgd(lr, momentum=beta or None), tau)
            nest = linearize(optax.sgd(lr, momentum=beta, nesterov=True), tau)
            assert hb.reliable and nest.reliable
            ref = float(st.max_stable_sharpness(lr, tau, beta, momentum="heavy_ball"))
            ref_n = float(st.max_stable_sharpness(lr, tau, beta, momentum="nesterov"))
            assert hb.max_stable_sharpness == pytest.approx(ref, rel=1e-10)
            assert nest.max_stable_sharpness == pytest.approx(ref_n, rel=1e-10)


def test_scale_is_gradient_descent():
    for tau in (0, 2, 9):
        lin = linearize(optax.chain(optax.scale(-0.25)), tau)
        q = 2 * np.sin(np.pi / (2 * (2 * tau + 1)))
        assert lin.max_stable_sharpness == pytest.approx(q / 0.25, rel=1e-12)
        # polynomial z^tau (z - 1) + 0.25 a
        want_a = np.concatenate([[1.0, -1.0], np.zeros(tau)])
        np.testing.assert_allclose(lin.a, want_a, atol=1e-15)
        np.testing.assert_allclose(np.trim_zeros(lin.b, "f"), [0.25], atol=1e-15)


def test_chain_with_weight_decay_against_eigenvalues():
    opt = optax.chain(optax.add_decayed_weights(0.05), optax.sgd(0.2, momentum=0.7))
    lin = linearize(opt, 3)
    assert lin.reliable
    s = lin.max_stable_sharpness
    # the optimiser's own recurrence, simulated: w+ = w - lr v+, v+ = m v + (a w_{t-3} + wd w_t)
    for factor, grows in ((0.97, False), (1.03, True)):
        a = factor * s
        ws, v = [1.0] * 4, 0.0
        for _ in range(6000):
            v = 0.7 * v + a * ws[0] + 0.05 * ws[-1]
            ws = ws[1:] + [ws[-1] - 0.2 * v]
        assert (abs(ws[-1]) > 1e3) == grows
    r = np.asarray(lin.spectral_radius(np.array([0.97 * s, s, 1.03 * s])))
    assert r[0] < 1 and r[2] > 1 and r[1] == pytest.approx(1, abs=1e-9)


def _simulate_optax(optimizer, probs, steps):
    """The optimiser itself on L(w) = a w^2 / 2 with a delayed gradient, |w_t| for t <= steps.

    The gradient at step t is ``a sum_k p_k w_{t-k}`` (a fixed delay tau: p = e_tau; a
    distribution: its mean, the first-moment model, exact for the expected iterate as
    every step is linear). Weights before t = 0 are 1. Compiled once per optimiser;
    the sharpness ``a`` is an argument.
    """
    probs = jnp.asarray(probs, jnp.float64)[::-1]  # against the history w_{t-K}, ..., w_t

    @jax.jit
    def run(a):
        with jax.numpy_dtype_promotion("standard"):  # optax's own code assumes it
            hist = jnp.ones(probs.shape[0])
            state = optimizer.init(hist[-1])

            def step(carry, _):
                hist, state = carry
                g = a * jnp.dot(probs, hist)
                u, state = optimizer.update(g, state, hist[-1])
                w = hist[-1] + u
                return (jnp.concatenate([hist[1:], w[None]]), state), jnp.abs(w)

            _, ws = jax.lax.scan(step, (hist, state), None, length=steps)
        return ws

    return run


def _decays_below_and_grows_above(run, sharpness, rates):
    """Simulated decay at 0.98x and growth at 1.02x the threshold, at the oracle's rates."""
    for factor, rate in zip((0.98, 1.02), rates, strict=True):
        w = np.asarray(run(factor * sharpness))
        win = w.size // 8
        if factor < 1:
            assert w[-win:].max() < 1e-6
        else:
            assert w[-win:].max() > 1e6
        measured = np.log(w[-win:].max() / w[-2 * win : -win].max()) / win
        assert measured == pytest.approx(np.log(rate), rel=0.05), factor


@pytest.mark.parametrize("nesterov", [False, True])
def test_threshold_is_two_sided_against_optax_and_the_recurrence(nesterov):
    # An overestimate or an underestimate of the threshold fails: the exact recurrence
    # (the rule's polynomial, numpy eigenvalues) is stable 1e-9 below it and unstable
    # 1e-9 above, and optax's own update, run with a delayed gradient, decays at 0.98x
    # and grows at 1.02x at the predicted rates.
    lr, beta, tau = 0.1, 0.8, 4
    opt = optax.sgd(lr, momentum=beta, nesterov=nesterov)
    rule = "nesterov" if nesterov else "heavy_ball"
    lin = linearize(opt, tau)
    assert lin.reliable
    s = lin.max_stable_sharpness
    assert rho(poly(tau, beta, lr * s * (1 - 1e-9), rule)) < 1
    assert rho(poly(tau, beta, lr * s * (1 + 1e-9), rule)) > 1
    rates = [rho(poly(tau, beta, lr * s * f, rule)) for f in (0.98, 1.02)]
    steps = 8 * int(14 / min(abs(np.log(r)) for r in rates))
    probs = np.zeros(tau + 1)
    probs[tau] = 1.0
    _decays_below_and_grows_above(_simulate_optax(opt, probs, steps), s, rates)


def test_delay_distribution():
    dist = st.random_order(3)
    opt = optax.sgd(0.1, momentum=0.5)
    lin = linearize(opt, dist)
    ref = float(st.max_stable_sharpness(0.1, dist, 0.5))
    assert lin.max_stable_sharpness == pytest.approx(ref, rel=1e-9)
    # two-sided against the first-moment polynomial (the test's own) ...
    s = lin.max_stable_sharpness
    p = dist.probabilities
    assert rho(dist_poly(p, 0.5, 0.1 * s * (1 - 1e-9), "heavy_ball")) < 1
    assert rho(dist_poly(p, 0.5, 0.1 * s * (1 + 1e-9), "heavy_ball")) > 1
    # ... and against optax's update driven by the expected delayed gradient
    rates = [rho(dist_poly(p, 0.5, 0.1 * s * f, "heavy_ball")) for f in (0.98, 1.02)]
    steps = 8 * int(14 / min(abs(np.log(r)) for r in rates))
    _decays_below_and_grows_above(_simulate_optax(opt, p, steps), s, rates)


def test_theta_is_the_angle_of_the_unit_circle_root():
    # LinearizedOptimizer.theta: A + s_max B has a root at e^{i theta} (Newton's step from
    # there, the distance to the nearest root to first order, is at rounding level), and
    # for sgd momentum it is the named rule's angle from the mpmath locus oracle.
    # (delays and chains as in the tests above: the same polynomial sizes, no new compiles)
    cases = [
        (optax.sgd(0.2, momentum=0.7), 1),
        (optax.sgd(0.05, momentum=0.9, nesterov=True), 33),
        (optax.chain(optax.add_decayed_weights(0.05), optax.sgd(0.2, momentum=0.7)), 3),
        (optax.chain(optax.scale(-0.25)), 0),
        (optax.sgd(0.1, momentum=0.5), st.random_order(3)),
    ]
    for opt, tau in cases:
        lin = linearize(opt, tau)
        with mpmath.workdps(40):
            c = [
                mpmath.mpf(x) + mpmath.mpf(lin.max_stable_sharpness) * mpmath.mpf(y)
                for x, y in zip(lin.a, lin.b, strict=True)
            ]
            dc = [ci * (len(c) - 1 - i) for i, ci in enumerate(c[:-1])]
            z = mpmath.expj(lin.theta)
            assert abs(mpmath.polyval(c, z) / mpmath.polyval(dc, z)) < 1e-12, tau
    assert linearize(optax.chain(optax.scale(-0.25)), 0).theta == pytest.approx(np.pi, rel=1e-15)
    for nesterov, rule in ((False, "heavy_ball"), (True, "nesterov")):
        lin = linearize(optax.sgd(0.2, momentum=0.7, nesterov=nesterov), 4)
        q, theta, _ = mp_locus_threshold(4, 0.7, rule)
        assert lin.theta == pytest.approx(float(theta), rel=1e-12)
        assert 0.2 * lin.max_stable_sharpness == pytest.approx(float(q), rel=1e-12)


@pytest.mark.parametrize(
    "opt",
    [optax.adam(0.1), optax.rmsprop(0.1), optax.adagrad(0.1), optax.sign_sgd(0.1)]
    if hasattr(optax, "sign_sgd")
    else [optax.adam(0.1), optax.rmsprop(0.1), optax.adagrad(0.1)],
)
def test_nonlinear_optimizers_are_refused(opt):
    with pytest.raises(ValueError, match="linear"):
        linearize(opt, 2)


def test_bad_input():
    with pytest.raises(ValueError, match="tau"):
        linearize(optax.sgd(0.1), -1)
    with pytest.raises(TypeError, match="optimizer"):
        linearize("sgd", 1)
