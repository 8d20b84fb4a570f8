"""Characteristic polynomials against numpy polynomials written from docs/theory.md."""

import numpy as np
import pytest
from stability_oracles import dist_poly, poly

import stability as st
from stability.theory.rules import characteristic_polynomial

RULES = ("heavy_ball", "nesterov", "shifted")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("tau", [0, 1, 2, 5])
def test_fixed_delay_polynomials(rule, tau):
    for beta in (0.0, 0.4, 0.99):
        p = characteristic_polynomial(tau, beta, momentum=rule)
        assert p.degree == tau + 2
        q = 0.37
        want = poly(tau, beta, q, rule)
        got = np.asarray(p.coefficients(q))
        np.testing.assert_allclose(np.trim_zeros(got, "f"), want, atol=1e-15)


@pytest.mark.parametrize("rule", RULES)
def test_beta_zero_is_z_times_gd(rule):
    p = characteristic_polynomial(4, 0.0, momentum=rule)
    np.testing.assert_allclose(p.coefficients(0.2), np.polymul(poly(4, 0, 0.2, "gd"), [1, 0]))


@pytest.mark.parametrize("rule", RULES)
def test_distribution_polynomials(rule):
    probs = np.array([0.1, 0.0, 0.5, 0.4])
    for beta in (0.0, 0.7):
        p = characteristic_polynomial(st.delay_distribution(probs), beta, momentum=rule)
        want = dist_poly(probs, beta, 0.3, rule)
        np.testing.assert_allclose(np.trim_zeros(np.asarray(p.coefficients(0.3)), "f"), want)
    # a fixed delay as a distribution gives the fixed-delay polynomial
    fixed = characteristic_polynomial(st.fixed_delay(3), 0.5, momentum=rule)
    np.testing.assert_allclose(fixed.a, characteristic_polynomial(3, 0.5, momentum=rule).a)
    np.testing.assert_allclose(fixed.b, characteristic_polynomial(3, 0.5, momentum=rule).b)


def test_batched_beta():
    beta = np.array([[0.0, 0.5], [0.9, 0.2]])
    p = characteristic_polynomial(3, beta, momentum="nesterov")
    assert p.a.shape == (2, 2, 6) and p.b.shape == (2, 2, 6)
    np.testing.assert_allclose(p.coefficients(np.ones((2, 2)))[1, 0], poly(3, 0.9, 1.0, "nesterov"))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(tau=-1), "tau"),
        (dict(tau=1.5), "tau"),
        (dict(tau=2, beta=1.0), "beta"),
        (dict(tau=2, momentum="rmsprop"), "momentum"),
    ],
)
def test_bad_input(kw, match):
    tau = kw.pop("tau")
    with pytest.raises(ValueError, match=match):
        characteristic_polynomial(tau, **kw)
