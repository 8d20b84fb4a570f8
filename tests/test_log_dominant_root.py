"""The log-coordinate certificate (dominant_root.log_spectral_radius) against numpy
roots of docs/theory.md's polynomials and, at delays no eigenvalue solver reaches,
against the boundary locus (stable exactly below q_max)."""

import numpy as np
import pytest
from stability_oracles import poly, roots

import stability as st
from stability.theory import dominant_root as dr

RULES = ("heavy_ball", "nesterov", "shifted")


def _moduli(tau, beta, q, rule):
    mods = np.sort(np.abs(roots(poly(tau, beta, q, rule))))
    return mods[1:] if rule == "heavy_ball" else mods  # the divided-out root z = 0


@pytest.mark.parametrize("rule", RULES)
def test_certified_log_radius_matches_numpy_roots(rule):
    rng = np.random.default_rng(3)
    for tau in (2, 9, 130, 600):
        n = 40 if tau < 600 else 6
        q = 10.0 ** rng.uniform(-12, 1, n) * rng.choice([-1.0, 1.0], n)
        q[:2] = [0.0, 1e-300]
        beta = rng.uniform(0.0, 0.999, n)
        ell, certified, side = dr.log_spectral_radius(q, beta, tau, rule)
        want = np.array([_moduli(tau, b, x, rule)[-1] for x, b in zip(q, beta, strict=True)])
        err = np.abs(np.exp(ell) / want - 1)
        assert np.all(err[certified] <= dr.RELATIVE_TOLERANCE), tau
        assert certified.mean() >= (0.75 if tau == 2 else 0.95), tau
        # a proven side of 1 is the true one where the roots resolve it (not at q =
        # 1e-300: rho = 1 - 1e-300 / (1 - beta), proven below 1 here); rho = 1 at q = 0
        log_want = np.log(want)
        clear = (side != 0) & (np.abs(log_want) > 1e-12)
        assert np.all(np.sign(log_want[clear]) == side[clear])
        assert side[0] == 0 and abs(ell[0]) <= 1e-300
        assert side[1] == -1 and ell[1] == pytest.approx(-1e-300 / (1 - beta[1]), rel=1e-9)


@pytest.mark.parametrize("rule", RULES)
def test_outside_count_matches_numpy(rule):
    rng = np.random.default_rng(4)
    tau = 40
    q, beta = 10.0 ** rng.uniform(-6, 1, 12), rng.uniform(0.0, 0.99, 12)
    for x, b in zip(q, beta, strict=True):
        mods = _moduli(tau, b, x, rule)
        gaps = np.flatnonzero(np.diff(mods) > 1e-6 * mods[1:])
        radii = np.concatenate([(mods[gaps] + mods[gaps + 1]) / 2, [2 * mods[-1]]])
        p = dr._sparse_host(np.full(radii.size, x), np.full(radii.size, b), tau, rule)
        got = dr.outside_count(p, np.log(radii))
        want = [np.sum(mods > r) for r in radii]
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("tau", [10**6, 10**9, 10**12])
@pytest.mark.parametrize("rule", RULES)
def test_the_side_of_one_agrees_with_the_boundary_locus_at_any_delay(rule, tau):
    rng = np.random.default_rng(tau % 1000)
    beta = rng.uniform(0.0, 0.999, 30)
    q_max = np.asarray(st.stability_threshold(np.full(30, tau), beta, momentum=rule).q_max)
    factor = 1 + rng.choice([-1.0, 1.0], 30) * 10.0 ** rng.uniform(-6, 0, 30)
    ell, certified, side = dr.log_spectral_radius(q_max * factor, beta, tau, rule)
    assert certified.all()
    np.testing.assert_array_equal(side, np.sign(factor - 1))
    # and at q_max itself the radius is 1 to the certificate's tolerance
    ell, certified, _ = dr.log_spectral_radius(q_max, beta, tau, rule)
    assert certified.all() and np.abs(ell).max() <= 1e-8
