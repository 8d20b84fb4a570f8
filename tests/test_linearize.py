"""linearize(optax optimiser) against the named rules and eigenvalues."""

import numpy as np
import optax
import pytest
from stability_oracles import dist_poly, rho

import stability as st
from stability.linearize import linearize


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


def test_delay_distribution():
    dist = st.random_order(3)
    lin = linearize(optax.sgd(0.1, momentum=0.5), dist)
    ref = float(st.max_stable_sharpness(0.1, dist, 0.5))
    assert lin.max_stable_sharpness == pytest.approx(ref, rel=1e-9)
    c = dist_poly(dist.probabilities, 0.5, 0.1 * lin.max_stable_sharpness * 1.001, "heavy_ball")
    assert rho(c) > 1


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
