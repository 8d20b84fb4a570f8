"""The Adam rule (frozen preconditioner, docs/theory.md section 16) against an
independent derivation: the eigenvalues of its one-step transfer matrix, built from
the update equations (first moment, weights, tau stale copies), not from the
polynomial, for tau 0..64; its thresholds against the heavy ball's closed forms
scaled by 1 / (1 - b1)."""

import numpy as np
import pytest

from stability import spectral_radius, stability_threshold
from stability.theory.rules import characteristic_polynomial
from stability.theory.rules.adam import Adam


def transfer_matrix(a, tau, b1, c=1.0, d=0.0, lr=1.0):
    """State (y_t, y_{t-1}, ..., y_{t-tau}, m_t); one step of Adam's update equations
    with the preconditioner frozen, along an eigenvalue a of P^-1/2 H P^-1/2:
    m+ = b1 m + (1 - b1) a y_{t-tau},  y+ = (1 - d) y_t - lr c m+."""
    n = tau + 2
    M = np.zeros((n, n))
    # m+ row (index n - 1)
    M[n - 1, tau] += (1 - b1) * a
    M[n - 1, n - 1] += b1
    # y+ row (index 0) = (1 - d) y_t - lr c (b1 m + (1 - b1) a y_{t-tau})
    M[0, 0] += 1 - d
    M[0, tau] += -lr * c * (1 - b1) * a
    M[0, n - 1] += -lr * c * b1
    for i in range(1, tau + 1):  # shift the history
        M[i, i - 1] = 1.0
    return M


@pytest.mark.parametrize("b1", [0.0, 0.9, 0.99])
def test_polynomial_is_the_transfer_matrix_characteristic_polynomial(b1):
    rng = np.random.default_rng(0)
    for tau in range(65):
        for c, d in [(1.0, 0.0), (1.7, 0.0), (1.0, 0.01), (1.2, 3e-4)]:
            rule = Adam(decay=d)
            lr, a = 0.01, float(rng.uniform(1.0, 200.0))
            q = lr * c * a  # the rule's q: the bias-corrected lr times a
            poly = characteristic_polynomial(tau, b1, momentum=rule)
            coeffs = np.asarray(poly.coefficients(q))
            M = transfer_matrix(a, tau, b1, c, d, lr)
            assert coeffs.shape[-1] == M.shape[0] + 1
            # det(zI - M) = P(z) at points off the unit circle (relative 1e-9)
            for z in rng.normal(size=4) + 1j * rng.normal(size=4):
                det = np.linalg.det(z * np.eye(M.shape[0]) - M)
                val = np.polyval(coeffs, z)
                assert abs(det - val) <= 1e-9 * max(1.0, abs(det)), (tau, c, d, z)
            radius = float(spectral_radius(a, lr * c, tau, b1, momentum=rule))
            truth = np.max(np.abs(np.linalg.eigvals(M)))
            assert abs(radius - truth) <= 1e-9 * max(truth, 1.0), (tau, b1, c, d)


@pytest.mark.parametrize("b1", [0.0, 0.9, 0.99])
def test_threshold_is_the_heavy_balls_scaled_by_one_minus_b1(b1):
    """Without decay the Adam rule (generic boundary locus of its polynomial, no closed
    forms) has the heavy ball's threshold (closed forms) over 1 - b1, tau 0..64, and the
    transfer matrix's radius is 1 there."""
    rule = Adam()
    for tau in range(65):
        q = stability_threshold(tau, b1, momentum=rule)
        hb = stability_threshold(tau, b1, momentum="heavy_ball")
        assert q.reliable
        assert q.q_max == pytest.approx(hb.q_max / (1 - b1), rel=1e-9), tau
        M = transfer_matrix(q.q_max, tau, b1)  # lr c = 1: a = q
        assert np.max(np.abs(np.linalg.eigvals(M))) == pytest.approx(1.0, abs=1e-9), tau
