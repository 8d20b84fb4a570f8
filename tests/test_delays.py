"""Delay distributions: constructors, the random-order law, first-moment thresholds."""

import itertools

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
