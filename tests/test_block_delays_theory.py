"""A delay per block of parameters (stability.theory.block_delays).

Oracles: the one-step transition matrix built here directly from the update
equations (weights e_t .. e_{t-T} and the rule's buffer; gradient sum_b P_b H
e_{t - tau_b}), its dense eigenvalues, numpy determinants, and the scalar library's
thresholds (an independent algorithm: bracketed Newton on the scalar locus).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import stability as st
from stability.theory.block_delays import (
    block_companion_matrix,
    block_curvatures,
    block_max_stable_lr,
    block_polynomial,
    block_spectral_radius,
    block_threshold,
)
from stability.theory.rules.adam import Adam
from stability.theory.rules.optax_rule import OptaxRule


def _spd(rng, n, low=0.1, high=1.0, rank=None):
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    ev = rng.uniform(low, high, n)
    if rank is not None:
        ev[rank:] = 0.0
    return (q * ev) @ q.T


def _labels(rng, n, num_blocks):
    labels = np.arange(n) % num_blocks  # every block non-empty
    return rng.permutation(labels)


def _transition(h, labels, delays, lr, beta, rule, decay=0.0):
    """The one-step map of (e_t, ..., e_{t-T}, v_t), written from the updates:
    g = sum_b P_b H e_{t - tau_b};
    gd: e+ = e - lr g;  heavy_ball: v+ = beta v + g, e+ = e - lr v+;
    nesterov: v+ = beta v + g, e+ = e - lr (g + beta v+);
    adam: v+ = beta v + (1 - beta) g, e+ = (1 - decay) e - lr v+."""
    n, t = h.shape[0], max(delays)
    proj = [np.diag((labels == b).astype(float)) for b in range(len(delays))]
    size = n * (t + 2)
    out = np.zeros((size, size))
    for col in range(size):
        x = np.zeros(size)
        x[col] = 1.0
        es = [x[i * n : (i + 1) * n] for i in range(t + 1)]
        v = x[(t + 1) * n :]
        g = sum(p @ h @ es[d] for p, d in zip(proj, delays, strict=True))
        if rule == "gd":
            v_new, e_new = np.zeros(n), es[0] - lr * g
        elif rule == "heavy_ball":
            v_new = beta * v + g
            e_new = es[0] - lr * v_new
        elif rule == "nesterov":
            v_new = beta * v + g
            e_new = es[0] - lr * (g + beta * v_new)
        else:
            v_new = beta * v + (1 - beta) * g
            e_new = (1 - decay) * es[0] - lr * v_new
        out[:, col] = np.concatenate([e_new, *es[:-1], v_new])
    return out


def _radius(m):
    return float(np.max(np.abs(np.linalg.eigvals(m))))


def _momentum(rule, decay):
    return Adam(decay=decay) if rule == "adam" else rule


CASES = [  # (rule, beta, decay, n, delays): repeated delays, a block with delay 0
    ("gd", 0.0, 0.0, 9, (0, 2, 2)),
    ("heavy_ball", 0.9, 0.0, 8, (3, 0, 1)),
    ("nesterov", 0.6, 0.0, 10, (4, 1, 0, 4)),
    ("adam", 0.9, 0.02, 7, (0, 3)),
    ("adam", 0.5, 0.0, 6, (2, 0, 1)),
]


@pytest.mark.parametrize("rule, beta, decay, n, delays", CASES)
def test_companion_roots_are_the_transition_eigenvalues(rule, beta, decay, n, delays):
    """The block companion's eigenvalues are the transition matrix's (the nonzero ones,
    matched one to one; radius to 1e-10), at a stable and an unstable lr."""
    rng = np.random.default_rng(len(delays) * 10 + n)
    h = _spd(rng, n)
    labels = _labels(rng, n, len(delays))
    k = block_curvatures(h, labels)
    for lr in (0.2, 1.5):
        c = block_companion_matrix(k, delays, lr, beta, momentum=_momentum(rule, decay))
        ours = np.linalg.eigvals(c)
        ref = np.linalg.eigvals(_transition(h, labels, delays, lr, beta, rule, decay))
        assert abs(np.max(np.abs(ours)) - np.max(np.abs(ref))) < 1e-10
        assert block_spectral_radius(
            k, delays, lr, beta, momentum=_momentum(rule, decay)
        ) == pytest.approx(np.max(np.abs(ref)), abs=1e-10)
        big_ours, big_ref = ours[np.abs(ours) > 0.3], ref[np.abs(ref) > 0.3]
        assert big_ours.size == big_ref.size
        rows, cols = linear_sum_assignment(np.abs(big_ours[:, None] - big_ref[None, :]))
        assert np.max(np.abs(big_ours[rows] - big_ref[cols])) < 1e-7


@pytest.mark.parametrize("rule, beta, decay, n, delays", CASES)
def test_threshold_is_where_the_transition_matrix_loses_stability(rule, beta, decay, n, delays):
    """At lr (1 - 1e-7) the transition matrix's radius is below 1, at lr (1 + 1e-7)
    above, and it is below 1 on a grid of (0, lr): the first crossing."""
    rng = np.random.default_rng(n + 100 * len(delays))
    h = _spd(rng, n)
    labels = _labels(rng, n, len(delays))
    k = block_curvatures(h, labels)
    thr = block_threshold(k, delays, beta, momentum=_momentum(rule, decay))
    lr = thr.lr
    assert block_max_stable_lr(k, delays, beta, momentum=_momentum(rule, decay)) == lr
    assert _radius(_transition(h, labels, delays, lr * (1 - 1e-7), beta, rule, decay)) < 1
    assert _radius(_transition(h, labels, delays, lr * (1 + 1e-7), beta, rule, decay)) > 1
    for f in np.r_[np.geomspace(1e-3, 0.5, 6), np.linspace(0.55, 0.999, 12)]:
        assert _radius(_transition(h, labels, delays, lr * f, beta, rule, decay)) < 1
    # the critical root: det M vanishes at z = exp(i theta), |z| = 1
    assert abs(thr.z) == pytest.approx(1.0, abs=1e-12)
    assert thr.z == pytest.approx(np.exp(1j * thr.theta))
    poly = block_polynomial(delays, beta, momentum=_momentum(rule, decay))
    c = poly.coefficients(k, lr)
    mz = np.tensordot(thr.z ** np.arange(poly.degree, -1, -1), c, axes=1)
    assert np.min(np.linalg.svd(mz, compute_uv=False)) < 1e-9 * np.linalg.norm(mz)


@pytest.mark.parametrize(
    "rule, beta", [("gd", 0.0), ("heavy_ball", 0.9), ("nesterov", 0.5), (Adam(), 0.9)]
)
@pytest.mark.parametrize("tau", [0, 1, 4])
def test_uniform_delays_give_the_scalar_threshold(rule, beta, tau):
    """One delay for every block: q_max(tau, beta) / lambda_max(H), to 1e-9 by the
    locus and by the closed form ("auto")."""
    rng = np.random.default_rng(tau)
    h = _spd(rng, 8)
    k = block_curvatures(h, _labels(rng, 8, 3))
    scalar = st.max_stable_lr(float(np.linalg.eigvalsh(h)[-1]), tau, beta, momentum=rule)
    for method in ("locus", "auto"):
        got = block_max_stable_lr(k, (tau,) * 3, beta, momentum=rule, method=method)
        assert got == pytest.approx(scalar, rel=1e-9)


@pytest.mark.parametrize("rule, beta", [("heavy_ball", 0.8), ("gd", 0.0)])
def test_blocks_that_commute_with_the_hessian_decouple(rule, beta):
    """P_b H = H P_b (H block diagonal): the smallest q_max(tau_b) / lambda_max(H_bb),
    by the locus and the closed form; the other blocks' thresholds are not it."""
    rng = np.random.default_rng(7)
    sizes, delays = (3, 4, 2), (0, 3, 1)
    h = np.zeros((9, 9))
    labels = np.repeat(np.arange(3), sizes)
    for b in range(3):
        idx = labels == b
        h[np.ix_(idx, idx)] = _spd(rng, sizes[b], 0.2, 1.0 + b)
    k = block_curvatures(h, labels)
    per_block = [
        st.max_stable_lr(
            float(np.linalg.eigvalsh(h[np.ix_(labels == b, labels == b)])[-1]),
            delays[b],
            beta,
            momentum=rule,
        )
        for b in range(3)
    ]
    for method in ("locus", "auto"):
        got = block_max_stable_lr(k, delays, beta, momentum=rule, method=method)
        assert got == pytest.approx(min(per_block), rel=1e-9)


def test_reduction_to_ritz_vectors_is_exact_for_a_low_rank_hessian():
    """Sylvester: det M(z) = A(z)^(n-k) det(A I_k + lr sum_b B_b R_b), R_b =
    Lambda^1/2 V^T P_b V Lambda^1/2, for a rank-k H; the reduced roots are roots of
    the full problem, and both thresholds agree (the null space's roots at z = 1,
    which stay there for every lr, are excluded)."""
    rng = np.random.default_rng(3)
    n, rank, delays, beta = 10, 3, (2, 0, 1), 0.7
    h = _spd(rng, n, 0.3, 1.0, rank=rank)
    labels = _labels(rng, n, 3)
    k = block_curvatures(h, labels)
    lam, vec = np.linalg.eigh(h)
    lam, vec = lam[-rank:], vec[:, -rank:]
    half = vec * np.sqrt(lam)
    reduced = np.stack([half.T @ np.diag((labels == b) * 1.0) @ half for b in range(3)])
    poly = block_polynomial(delays, beta)
    lr = 0.4
    full_c, red_c = poly.coefficients(k, lr), poly.coefficients(reduced, lr)
    for z in (0.3 + 0.8j, -1.1 + 0.2j, 1.7):
        powers = z ** np.arange(poly.degree, -1, -1)
        lhs = np.linalg.det(np.tensordot(powers, full_c, axes=1))
        a_z = powers @ poly.a
        rhs = a_z ** (n - rank) * np.linalg.det(np.tensordot(powers, red_c, axes=1))
        assert lhs == pytest.approx(rhs, rel=1e-10)
    full = np.linalg.eigvals(block_companion_matrix(k, delays, lr, beta))
    red = np.linalg.eigvals(block_companion_matrix(reduced, delays, lr, beta))
    for root in red[np.abs(red) > 0.2]:
        assert np.min(np.abs(full - root)) < 1e-8
    assert block_spectral_radius(k, delays, lr, beta) == pytest.approx(1.0, abs=1e-12)
    thr_full = block_max_stable_lr(k, delays, beta, method="locus")
    thr_red = block_max_stable_lr(reduced, delays, beta, method="locus")
    assert thr_full == pytest.approx(thr_red, rel=1e-9)
    moving = lambda lr: np.max(  # noqa: E731  roots other than the null space's z = 1
        np.abs(np.linalg.eigvals(block_companion_matrix(reduced, delays, lr, beta)))
    )
    assert moving(thr_red * (1 - 1e-7)) < 1 < moving(thr_red * (1 + 1e-7))


def test_negative_curvature_has_no_stable_lr():
    """An eigenvalue of sum_b K_b below 0 moves a root out of z = 1 at once: 0.0."""
    rng = np.random.default_rng(5)
    h = _spd(rng, 6)
    h -= (np.linalg.eigvalsh(h)[0] + 0.05) * np.eye(6)  # lambda_min = -0.05
    k = block_curvatures(h, _labels(rng, 6, 2))
    assert np.linalg.eigvalsh(h)[0] < 0
    thr = block_threshold(k, (1, 0), 0.5)
    assert thr.lr == 0.0 and thr.z == 1.0
    assert block_spectral_radius(k, (1, 0), 1e-3, 0.5) > 1


def test_block_polynomial_coefficients():
    """Heavy ball, delays (0, 2): A = z^2 (z - 1)(z - beta), B_0 = z^3, B_1 = z; one delay
    for all is the scalar characteristic polynomial."""
    poly = block_polynomial((0, 2), 0.5)
    np.testing.assert_array_equal(poly.a, [1.0, -1.5, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(poly.b, [[0, 1, 0, 0, 0], [0, 0, 0, 1, 0]])
    assert poly.degree == 4 and poly.num_blocks == 2
    for same in (np.array([0, 2]), jnp.array([0, 2]), [np.int32(0), 2]):
        np.testing.assert_array_equal(block_polynomial(same, 0.5).b, poly.b)
    for rule in ("heavy_ball", "nesterov", "gd", Adam(decay=0.1)):
        beta = 0.0 if rule == "gd" else 0.6
        poly = block_polynomial((3, 3), beta, momentum=rule)
        ref = st.characteristic_polynomial(3, beta, momentum=rule)
        np.testing.assert_allclose(poly.a, np.asarray(ref.a), atol=1e-15)
        np.testing.assert_allclose(poly.b[1], np.asarray(ref.b), atol=1e-15)


def test_shifted_is_refused_with_a_delay_per_block():
    """Shifted's A depends on D: refused (named) with distinct delays; with one delay
    for every block (or beta = 0, where it is gd) its A is common and it is accepted."""
    k = block_curvatures(np.diag([1.0, 2.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shifted"):
        block_polynomial((0, 1), 0.5, momentum="shifted")
    with pytest.raises(ValueError, match="shifted"):
        block_max_stable_lr(k, (2, 1), 0.5, momentum="shifted")
    got = block_max_stable_lr(k, (2, 2), 0.5, momentum="shifted", method="locus")
    assert got == pytest.approx(st.max_stable_lr(2.0, 2, 0.5, momentum="shifted"), rel=1e-9)
    block_polynomial((0, 1), 0.0, momentum="shifted")
    optax = pytest.importorskip("optax")
    with pytest.raises(ValueError, match="optax"):
        block_polynomial((0, 1), momentum=OptaxRule(optax.sgd(0.1)))


def test_bad_arguments():
    """Each bad argument raises, naming the argument and the value."""
    k = block_curvatures(np.diag([1.0, 2.0, 3.0]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"delays\[1\]"):
        block_polynomial((0, -1))
    with pytest.raises(TypeError, match=r"delays\[0\]"):
        block_polynomial((0.5, 1))
    with pytest.raises(TypeError, match=r"delays\[0\]"):
        block_polynomial((True, 1))
    with pytest.raises(ValueError, match="delays"):
        block_polynomial(())
    with pytest.raises(ValueError, match="delays"):
        block_polynomial(3)
    with pytest.raises(ValueError, match=r"delays\[0\]"):
        block_polynomial((10**6,))
    with pytest.raises(ValueError, match="beta"):
        block_polynomial((0, 1), 1.0)
    with pytest.raises(ValueError, match="beta"):
        block_polynomial((0, 1), 0.5, momentum="gd")
    with pytest.raises(ValueError, match="beta"):
        block_polynomial((0, 1), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="momentum"):
        block_polynomial((0, 1), momentum="adagrad")
    with pytest.raises(ValueError, match="one matrix per delay"):
        block_max_stable_lr(k, (0, 1, 2))
    with pytest.raises(ValueError, match="shape"):
        block_max_stable_lr(k[0], (0,))
    with pytest.raises(ValueError, match="shape"):
        block_max_stable_lr(k[:, :, :2], (0, 1))
    with pytest.raises(TypeError, match="real"):
        block_max_stable_lr(k + 0j, (0, 1))
    with pytest.raises(ValueError, match="curvatures"):
        block_max_stable_lr(k * np.nan, (0, 1))
    for lr in (0.0, -1.0, np.inf):
        with pytest.raises(ValueError, match="lr"):
            block_companion_matrix(k, (0, 1), lr)
    with pytest.raises(ValueError, match="lr"):
        block_spectral_radius(k, (0, 1), np.array([0.1, 0.2]))
    with pytest.raises(TypeError, match="lr"):
        block_spectral_radius(k, (0, 1), "0.1")
    with pytest.raises(ValueError, match="method"):
        block_threshold(k, (0, 1), method="bisection")
    with pytest.raises(ValueError, match="rtol"):
        block_threshold(k, (0, 1), rtol=0.0)
    with pytest.raises(ValueError, match="blocks"):
        block_curvatures(np.eye(3), np.array([0, 1]))
    with pytest.raises(ValueError, match="blocks"):
        block_curvatures(np.eye(3), np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="hessian"):
        block_curvatures(np.ones((2, 3)), np.array([0, 1]))


def test_block_curvatures_sum_to_the_hessian():
    """K_b = P_b H: block b's rows of H; they sum to H."""
    h = np.arange(16.0).reshape(4, 4)
    k = block_curvatures(h, np.array([1, 0, 1, 1]))
    np.testing.assert_array_equal(k.sum(axis=0), h)
    np.testing.assert_array_equal(k[0][1], h[1])
    np.testing.assert_array_equal(k[0][[0, 2, 3]], 0.0)
