"""Delay distributions: constructors, the random-order law, first-moment thresholds."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from stability_oracles import bisect_threshold, dist_poly

import stability as st


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_random_order_by_counting_permutations(n):
    # Two consecutive rounds, each a permutation; a worker pushes at position i of
    # round 1 and j of round 2: gap N - i + j, delay = gap - 1.
    counts = np.zeros(2 * n - 1)
    perms = list(itertools.permutations(range(n)))
    for p1, p2 in itertools.product(perms, perms):
        for worker in range(n):
            gap = n - p1.index(worker) + p2.index(worker)
            counts[gap - 1] += 1
    want = counts / counts.sum()
    got = st.random_order(n).probabilities
    np.testing.assert_allclose(got, want, atol=1e-15)
    assert st.random_order(n).mean == pytest.approx(n - 1)


def test_constructors():
    np.testing.assert_array_equal(st.fixed_delay(3).probabilities, [0, 0, 0, 1])
    np.testing.assert_array_equal(st.round_robin(4).probabilities, st.fixed_delay(3).probabilities)
    assert st.delay_distribution([0.25, 0.75]).max_delay == 1


@pytest.mark.parametrize("rule", ["heavy_ball", "nesterov", "shifted"])
def test_fixed_delay_distribution_equals_integer_delay(rule):
    for tau in (0, 1, 6):
        for beta in (0.0, 0.5, 0.95):
            a = float(st.max_stable_sharpness(0.2, st.fixed_delay(tau), beta, momentum=rule))
            b = float(st.max_stable_sharpness(0.2, tau, beta, momentum=rule))
            assert a == pytest.approx(b, rel=1e-10)
            ra = float(st.spectral_radius(3.0, 0.2, st.round_robin(tau + 1), beta, momentum=rule))
            rb = float(st.spectral_radius(3.0, 0.2, tau, beta, momentum=rule))
            assert ra == pytest.approx(rb, rel=1e-12)


@pytest.mark.parametrize("rule", ["heavy_ball", "nesterov", "shifted"])
def test_random_delays_against_eigenvalue_bisection(rule):
    for dist in (st.random_order(3), st.delay_distribution([0.5, 0.0, 0.2, 0.3])):
        for beta in (0.0, 0.9):
            want = bisect_threshold(lambda q: dist_poly(dist.probabilities, beta, q, rule))  # noqa: B023
            got = float(st.max_stable_sharpness(1.0, dist, beta, momentum=rule))
            assert got == pytest.approx(want, rel=1e-9)


def test_expected_iterate_simulation():
    # E[w_{t+1}] = E[w_t] - q sum_k p_k E[w_{t-k}], iterated directly.
    dist = st.random_order(4)
    p = dist.probabilities
    qm = float(st.max_stable_sharpness(1.0, dist))
    for factor, grows in ((0.95, False), (1.05, True)):
        q = factor * qm
        m = [1.0] * len(p)  # m[-1] is the newest
        for _ in range(4000):
            m = m[1:] + [m[-1] - q * sum(pk * m[-1 - k] for k, pk in enumerate(p))]
        assert (abs(m[-1]) > 1e3) == grows
        assert (abs(m[-1]) < 1e-3) == (not grows)


def averaged_transition_matrix(p, beta, q, rule):
    """One step of the expected-iterate recurrence (lr = 1, curvature q) as a matrix.

    Written from the update rules, not from the library's polynomials. State
    (w_t, ..., w_{t-K}, v_t, ..., v_{t-K}); in expectation over the delay the
    gradient applied at step t is q sum_k p_k w_{t-k}. heavy_ball and nesterov keep
    one server buffer, v+ = beta v_t + g; shifted uses the pushing worker's own
    buffer, last written k steps ago: v+ = sum_k p_k (beta v_{t-k} + q w_{t-k}).
    """
    p = np.asarray(p, dtype=float)
    m = len(p)
    w, v = 0, m  # offsets of the two histories in the state
    g = np.zeros(2 * m)
    g[w : w + m] = q * p
    v_new = g.copy()
    if rule == "shifted":
        v_new[v : v + m] += beta * p
    else:
        v_new[v] += beta
    step = g + beta * v_new if rule == "nesterov" else v_new
    w_new = -step
    w_new[w] += 1.0
    out = np.zeros((2 * m, 2 * m))
    out[w], out[v] = w_new, v_new
    for k in range(1, m):  # the histories shift by one step
        out[w + k, w + k - 1] = 1.0
        out[v + k, v + k - 1] = 1.0
    return out


def averaged_radius(p, beta, q, rule):
    return float(np.max(np.abs(np.linalg.eigvals(averaged_transition_matrix(p, beta, q, rule)))))


def averaged_threshold(p, beta, rule):
    """Largest stable q of the averaged recurrence, by bisection on its eigenvalues."""
    lo, hi = 0.0, 4.5
    while hi - lo > 1e-13 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if averaged_radius(p, beta, mid, rule) < 1 else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("rule", ["heavy_ball", "nesterov", "shifted"])
def test_spectral_radius_of_a_distribution_is_that_of_the_averaged_recurrence(rule):
    sharpness, lr = np.array([-0.3, 0.05, 0.4, 1.0, 2.5]), 0.2
    for dist in (st.random_order(3), st.delay_distribution([0.5, 0.0, 0.2, 0.3])):
        p = dist.probabilities
        for beta in (0.0, 0.6, 0.9):
            got = np.asarray(st.spectral_radius(sharpness, lr, dist, beta, momentum=rule))
            want = [averaged_radius(p, beta, lr * a, rule) for a in sharpness]
            np.testing.assert_allclose(got, want, rtol=1e-9)
            scalar = st.spectral_radius(1.0, lr, dist, beta, momentum=rule)
            assert scalar == pytest.approx(averaged_radius(p, beta, lr, rule), rel=1e-9)
            # the threshold is where the averaged recurrence's radius crosses 1
            q = st.max_stable_sharpness(1.0, dist, beta, momentum=rule)
            assert (
                averaged_radius(p, beta, 0.999 * q, rule)
                < 1
                < averaged_radius(p, beta, 1.001 * q, rule)
            )


CURVATURES = np.array([4.0, 1.0, 0.5, 0.1])


def _quadratic(w):
    return 0.5 * jnp.sum(jnp.asarray(CURVATURES) * jnp.square(w))


@pytest.mark.parametrize("rule,beta", [("heavy_ball", 0.0), ("nesterov", 0.6), ("shifted", 0.9)])
def test_verdict_for_a_delay_distribution(rule, beta):
    # 4 workers in random order: delays 0..6, mean 3. Its threshold (from the
    # averaged recurrence) is 20-60 % above that of the constant delay 3 and more
    # than twice that of the constant delay 6, so 0.95x / 1.05x of it separate them.
    dist = st.random_order(4)
    p = dist.probabilities
    q_star = averaged_threshold(p, beta, rule)
    for factor, verdict in ((0.95, True), (1.05, False)):
        lr = factor * q_star / CURVATURES[0]
        report = st.is_accessible(
            _quadratic, jnp.zeros(4), dist, lr, beta=beta, momentum=rule, progress=False
        )
        assert report.verdict is verdict, report
        # the verdict stops Lanczos once decided: the sharpness is a Ritz value, a
        # lower bound on 4 (the bound that decided is in the report)
        top, low = report.sharpness, report.smallest_eigenvalue
        assert top <= CURVATURES[0] * (1 + 1e-12) and (top >= 0.9 * CURVATURES[0])
        assert report.max_stable_sharpness == pytest.approx(q_star / lr, rel=1e-9)
        assert report.fraction_of_limit == pytest.approx(top * lr / q_star, rel=1e-9)
        assert report.max_stable_lr == pytest.approx(q_star / top, rel=1e-9)
        want = averaged_radius(p, beta, lr * top, rule)
        assert report.spectral_radius == pytest.approx(want, rel=1e-9)
        assert (averaged_radius(p, beta, lr * CURVATURES[0], rule) < 1) is verdict
        smallest = averaged_radius(p, beta, lr * low, rule)
        assert report.smallest_growth == pytest.approx(smallest, rel=1e-9)
        assert report.to_dict()["tau"] == "distribution(max=6, mean=3)"


def test_bad_input():
    with pytest.raises(ValueError, match="probabilities"):
        st.delay_distribution([0.5, 0.4])
    with pytest.raises(ValueError, match="probabilities"):
        st.delay_distribution([1.5, -0.5])
    with pytest.raises(ValueError, match="tau"):
        st.fixed_delay(-1)
    with pytest.raises(ValueError, match="num_workers"):
        st.round_robin(0)
    with pytest.raises(ValueError, match="probabilities"):
        st.max_stable_sharpness(1.0, st.DelayDistribution(np.array([0.3, 0.3])))
