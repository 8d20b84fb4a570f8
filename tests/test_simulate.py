"""simulate_async against independent oracles.

Oracles: a plain-numpy replay of the update rules of docs/theory.md (history
lists, no ring buffers), the closed-form thresholds of docs/theory.md section 7,
and numpy eigenvalues of a state-transition matrix built here from the
update rule (not from the library's characteristic polynomials).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import examples

from stability.simulate import AsyncTrajectory, growth_rate, simulate_async, stationary_tilt

RULES = ["heavy_ball", "nesterov", "shifted"]


def _quadratic(w, a):
    return 0.5 * jnp.sum(a * jnp.square(w))


def run_quadratic(a, w0, **kwargs):
    """simulate_async on 0.5 * sum_i a_i w_i^2; the curvatures travel as the
    data argument so that runs differing only in a, lr or beta share one
    compiled program."""
    a = jnp.asarray(a, dtype=jnp.float64)
    return simulate_async(_quadratic, jnp.asarray(w0, dtype=jnp.float64), a, **kwargs)


def pow2(n):
    """Round a step count up to a power of two (fewer distinct compilations)."""
    return 1 << max(0, math.ceil(math.log2(n)))


def numpy_replay(a, w0, lr, beta, rule, delays):
    """The docs/theory.md rules on 0.5 sum a w^2, with explicit history lists.

    ``delays[t]`` is the staleness of the gradient applied at step t. For
    "shifted" the delays must be constant tau: v_{t+1} = beta v_{t-tau} + g.
    """
    a = np.asarray(a, dtype=np.float64)
    ws = [np.asarray(w0, dtype=np.float64)]
    vs = [np.zeros_like(ws[0])]
    for t, d in enumerate(delays):
        g = a * ws[t - d]
        if rule == "shifted":
            v = beta * vs[max(t - d, 0)] + g
            w = ws[t] - lr * v
        else:
            v = beta * vs[t] + g
            w = ws[t] - lr * ((g + beta * v) if rule == "nesterov" else v)
        ws.append(w)
        vs.append(v)
    ws = np.array(ws)
    return 0.5 * np.sum(a * ws**2, axis=1), np.linalg.norm(ws - ws[0], axis=1), ws[-1]


def transition_matrix(q, tau, beta, rule):
    """One step of the scalar rule on 0.5 a w^2 (q = lr a) as a linear map.

    State: (w_t, ..., w_{t-tau}, v_t, ..., v_{t-tau}); the gradient that
    arrives at step t is a w_{t-tau}, so lr g = q w_{t-tau}.
    """
    m = tau + 1
    M = np.zeros((2 * m, 2 * m))
    W, V = 0, m  # offsets of the w and v histories
    # v_{t+1} = beta * v_src + a w_{t-tau}  (scaled by lr: u = lr v)
    v_src = V + tau if rule == "shifted" else V
    v_new = np.zeros(2 * m)
    v_new[v_src] += beta
    v_new[W + tau] += q
    if rule == "nesterov":
        step = v_new * beta
        step[W + tau] += q
    else:
        step = v_new
    w_new = -step
    w_new[W] += 1.0
    M[W] = w_new
    M[V] = v_new
    for k in range(1, m):  # shift the histories
        M[W + k, W + k - 1] = 1.0
        M[V + k, V + k - 1] = 1.0
    return M


def companion_radius(q, tau, beta, rule):
    return float(np.max(np.abs(np.linalg.eigvals(transition_matrix(q, tau, beta, rule)))))


def closed_form_threshold(tau, beta, rule):
    """docs/theory.md section 7."""
    if beta == 0.0:
        return 2 * math.sin(math.pi / (2 * (2 * tau + 1)))
    if rule == "heavy_ball":
        return {0: 2 * (1 + beta), 1: 1 - beta}[tau]
    if rule == "shifted":
        return {0: 2 * (1 + beta), 1: 1 - beta**2}[tau]
    assert rule == "nesterov" and tau == 0
    return (2 + 2 * beta) / (1 + 2 * beta)


def _small_loss(p, batch):
    xb, yb = batch
    return jnp.mean(jnp.square(jnp.tanh(xb @ p["w"]) @ p["u"] - yb))


def small_problem():
    """A nonlinear least-squares problem with a two-leaf pytree and data."""
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(k1, (24, 3), dtype=jnp.float64)
    y = jnp.sin(x @ jnp.array([1.0, -0.5, 0.3]))
    params = {
        "w": 0.3 * jax.random.normal(k2, (3, 4), dtype=jnp.float64),
        "u": 0.3 * jax.random.normal(k3, (4,), dtype=jnp.float64),
    }
    return _small_loss, params, (x, y)


def assert_same(a: AsyncTrajectory, b: AsyncTrajectory):
    np.testing.assert_array_equal(np.asarray(a.loss), np.asarray(b.loss))
    np.testing.assert_array_equal(np.asarray(a.distance), np.asarray(b.distance))
    np.testing.assert_array_equal(np.asarray(a.delays), np.asarray(b.delays))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


ROUND_ROBIN_CASES = [
    (rule, beta, workers, None)
    for rule, beta in [
        ("heavy_ball", 0.0),
        ("heavy_ball", 0.7),
        ("nesterov", 0.7),
        ("shifted", 0.7),
    ]
    for workers in (1, 4)
] + [("heavy_ball", 0.7, 3, 7), ("shifted", 0.7, 3, 7)]


@pytest.mark.parametrize("rule,beta,workers,batch_size", ROUND_ROBIN_CASES)
def test_round_robin_is_constant_delay(rule, beta, workers, batch_size):
    loss, params, data = small_problem()
    kw = dict(lr=0.2, beta=beta, momentum=rule, steps=40, batch_size=batch_size, seed=4)
    by_tau = simulate_async(loss, params, data, tau=workers - 1, **kw)
    by_workers = simulate_async(loss, params, data, num_workers=workers, **kw)
    assert_same(by_tau, by_workers)
    expected = np.minimum(np.arange(40), workers - 1)
    np.testing.assert_array_equal(np.asarray(by_tau.delays), expected)
    assert np.asarray(by_tau.loss)[-1] != np.asarray(by_tau.loss)[0]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("tau", [0, 1, 3])
def test_matches_numpy_replay_on_diagonal_quadratic(rule, tau):
    a = np.array([3.0, 1.0, 0.2])
    w0 = np.array([1.0, -2.0, 0.5])
    lr, beta, steps = 0.1, 0.6, 60
    traj = run_quadratic(a, w0, lr=lr, tau=tau, beta=beta, momentum=rule, steps=steps)
    delays = np.minimum(np.arange(steps), tau)
    loss, dist, final = numpy_replay(a, w0, lr, beta, rule, delays)
    np.testing.assert_allclose(np.asarray(traj.loss), loss, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(np.asarray(traj.distance), dist, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(traj.params), final, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(np.asarray(traj.delays), delays)


@pytest.mark.parametrize("rule", RULES)
def test_transition_matrix_oracle_has_the_theory_thresholds(rule):
    # Guards the test oracle itself: its radius crosses 1 at the closed forms.
    cases = [(0, 0.0), (1, 0.0), (2, 0.0), (5, 0.0), (0, 0.5)]
    cases += [(1, 0.5)] if rule != "nesterov" else []
    for tau, beta in cases:
        q = closed_form_threshold(tau, beta, rule)
        assert (
            companion_radius(0.999 * q, tau, beta, rule)
            < 1
            < companion_radius(1.001 * q, tau, beta, rule)
        )


THRESHOLD_CASES = [
    ("heavy_ball", 0, 0.0),
    ("heavy_ball", 2, 0.0),
    ("heavy_ball", 5, 0.0),
    ("heavy_ball", 0, 0.5),
    ("heavy_ball", 1, 0.5),
    ("shifted", 1, 0.5),
    ("shifted", 0, 0.8),
    ("nesterov", 0, 0.5),
]


@pytest.mark.parametrize("rule,tau,beta", THRESHOLD_CASES)
def test_decays_below_and_grows_above_closed_form_threshold(rule, tau, beta):
    q_star = closed_form_threshold(tau, beta, rule)
    a = 2.0
    for factor, grows in [(0.98, False), (1.02, True)]:
        q = factor * q_star
        rho = companion_radius(q, tau, beta, rule)
        # enough steps for a factor 1e3 change at the predicted rate
        steps = pow2(min(16384, math.ceil(math.log(1e3) / abs(math.log(rho))) + 10 * (tau + 2)))
        traj = run_quadratic(
            [a],
            [1.0],
            lr=q / a,
            tau=tau,
            beta=beta,
            momentum=rule,
            steps=steps,
            record_every=max(1, steps // 128),
        )
        loss = np.asarray(traj.loss)
        tail = loss[-max(3, len(loss) // 20) :].max()
        if grows:
            assert tail > 1e3 * loss[0], (rule, tau, beta, q, rho)
        else:
            assert tail < 1e-2 * loss[0], (rule, tau, beta, q, rho)


@pytest.mark.parametrize(
    "rule,tau,beta,factor",
    [
        ("heavy_ball", 0, 0.0, 1.2),
        ("heavy_ball", 3, 0.0, 1.2),
        ("heavy_ball", 3, 0.0, 0.8),
        ("heavy_ball", 2, 0.6, 1.2),
        ("nesterov", 2, 0.6, 1.2),
        ("shifted", 2, 0.6, 1.2),
        ("shifted", 4, 0.9, 0.8),
    ],
)
def test_growth_factor_matches_companion_spectral_radius(rule, tau, beta, factor):
    # Diagonal quadratic: the top curvature sets the threshold, the others
    # are stable modes that must not disturb the measured rate.
    a = np.array([4.0, 1.5, 0.3])
    tight = closed_form_threshold(tau, 0.0, "heavy_ball") if beta == 0 else None
    q_star = tight or _bisect_threshold(tau, beta, rule)
    lr = factor * q_star / a[0]
    rho = max(companion_radius(lr * ai, tau, beta, rule) for ai in a)
    steps = pow2(min(4096, math.ceil(math.log(1e12) / abs(math.log(rho)))))
    traj = run_quadratic(
        a,
        [1.0, 1.0, 1.0],
        lr=lr,
        tau=tau,
        beta=beta,
        momentum=rule,
        steps=steps,
    )
    amplitude = np.sqrt(np.asarray(traj.loss))
    measured = growth_rate(amplitude[steps // 3 :], window=max(20, steps // 12))
    assert measured == pytest.approx(rho, rel=1e-3)


def _bisect_threshold(tau, beta, rule):
    lo, hi = 1e-6, 4.0 * (1 + beta)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if companion_radius(mid, tau, beta, rule) < 1 else (lo, mid)
    return lo


def test_growth_rate_of_a_known_sequence():
    t = np.arange(1000)
    x = 1.01**t * np.cos(0.3 * t + 0.2)
    assert growth_rate(x, window=100) == pytest.approx(1.01, rel=1e-4)
    with pytest.raises(ValueError, match="window"):
        growth_rate(x, window=600)


@pytest.mark.parametrize("workers", [3, 4])
def test_random_schedule_has_triangular_delays(workers):
    steps = 6000
    traj = run_quadratic(
        [1.0], [1.0], lr=0.01, num_workers=workers,
        schedule="random", steps=steps, seed=11,
    )  # fmt: skip
    d = np.asarray(traj.delays)
    first, rest = d[:workers], d[workers:]
    # first round: every worker pulled w_0, so the delay is the step index
    np.testing.assert_array_equal(first, np.arange(workers))
    assert rest.min() >= 0 and rest.max() <= 2 * workers - 2
    k = np.arange(2 * workers - 1)
    p = (workers - np.abs(workers - 1 - k)) / workers**2
    assert p.sum() == pytest.approx(1.0)
    counts = np.bincount(rest, minlength=k.size)
    chi2 = np.sum((counts - rest.size * p) ** 2 / (rest.size * p))
    # the schedule is not i.i.d. across steps, so use a conservative quantile
    assert chi2 < scipy.stats.chi2.ppf(1 - 1e-6, k.size - 1)
    # Each round is a permutation of the workers: in round r >= 1 the workers
    # pulled right after their pushes of round r - 1, i.e. at steps
    # (r - 1) N + 1 .. r N, each exactly once.
    pulled = np.arange(steps) - d
    for r in range(1, steps // workers):
        block = np.sort(pulled[r * workers : (r + 1) * workers])
        np.testing.assert_array_equal(block, np.arange(workers) + 1 + (r - 1) * workers)


def test_random_schedule_is_deterministic_in_the_seed():
    loss, params, data = small_problem()
    kw = dict(lr=0.1, num_workers=4, schedule="random", steps=50, beta=0.5)
    a = simulate_async(loss, params, data, seed=1, **kw)
    b = simulate_async(loss, params, data, seed=1, **kw)
    c = simulate_async(loss, params, data, seed=2, **kw)
    assert_same(a, b)
    assert not np.array_equal(np.asarray(a.delays), np.asarray(c.delays))


@pytest.mark.parametrize("rule", ["heavy_ball", "nesterov"])
def test_random_schedule_matches_replay_of_its_delays(rule):
    # For server-side momentum only the gradient's staleness matters, so the
    # numpy replay with the recorded delays is an exact oracle.
    a = np.array([2.0, 0.5])
    w0 = np.array([1.0, -1.0])
    traj = run_quadratic(
        a, w0, lr=0.05, beta=0.5, momentum=rule,
        num_workers=3, schedule="random", steps=80, seed=5,
    )  # fmt: skip
    loss, dist, final = numpy_replay(a, w0, 0.05, 0.5, rule, np.asarray(traj.delays))
    np.testing.assert_allclose(np.asarray(traj.loss), loss, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(traj.distance), dist, rtol=1e-12, atol=1e-15)


def test_random_shifted_keeps_one_buffer_per_worker():
    # Replay with explicit workers: each worker's buffer is updated only when
    # it pushes. Worker identities follow from the delays (pull step = the
    # step after the worker's previous push).
    a, w0, lr, beta, n, steps = 1.3, 1.0, 0.1, 0.6, 3, 60
    traj = run_quadratic(
        [a], [w0], lr=lr, beta=beta, momentum="shifted",
        num_workers=n, schedule="random", steps=steps, seed=2,
    )  # fmt: skip
    d = np.asarray(traj.delays)
    owner = {}  # pull step -> worker
    worker_of = []
    next_free = list(range(n))
    for t in range(steps):
        pulled = t - d[t]
        k = next_free.pop(0) if pulled == 0 else owner[pulled]
        worker_of.append(k)
        owner[t + 1] = k
    ws, v = [w0], np.zeros(n)
    for t in range(steps):
        k = worker_of[t]
        v[k] = beta * v[k] + a * ws[t - d[t]]
        ws.append(ws[t] - lr * v[k])
    np.testing.assert_allclose(np.asarray(traj.params)[0], ws[-1], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(traj.loss), 0.5 * a * np.square(ws), rtol=1e-12)


def test_minibatch_full_size_equals_full_batch_and_depends_on_seed():
    loss, params, data = small_problem()
    kw = dict(lr=0.3, tau=2, steps=30)
    full = simulate_async(loss, params, data, **kw)
    same = simulate_async(loss, params, data, batch_size=24, **kw)
    np.testing.assert_allclose(np.asarray(same.loss), np.asarray(full.loss), rtol=1e-12)
    a = simulate_async(loss, params, data, batch_size=5, seed=0, **kw)
    b = simulate_async(loss, params, data, batch_size=5, seed=0, **kw)
    c = simulate_async(loss, params, data, batch_size=5, seed=1, **kw)
    assert_same(a, b)
    assert not np.allclose(np.asarray(a.loss), np.asarray(full.loss))
    assert not np.allclose(np.asarray(a.loss), np.asarray(c.loss))


def _scalar_path(traj, w0, c):
    """The iterates w_0..w_T of a 1-parameter run, from its distance and loss records.

    ``distance = |w_t - w0|`` fixes w_t up to the side of w0; the full-data loss
    ``mean(0.5 (w - c)^2)`` recorded beside it picks the side."""
    d = np.asarray(traj.distance)
    below, above = w0 - d, w0 + d

    def full_loss(w):
        return 0.5 * np.mean(np.square(w[:, None] - c), axis=1)

    loss = np.asarray(traj.loss)
    w = np.where(np.abs(full_loss(below) - loss) <= np.abs(full_loss(above) - loss), below, above)
    np.testing.assert_allclose(full_loss(w), loss, rtol=1e-12)
    return w


def test_minibatch_gradient_is_the_mean_over_distinct_sampled_examples():
    # Per-example losses 0.5 (w - c_i)^2: a mini-batch B gives the gradient
    # w_stale - mean(c_B), so every step reveals the mean of the examples drawn,
    # m_t = w_stale + (w_{t+1} - w_t) / lr. Batches of 1 must give one c_i each,
    # uniformly; batches of 2 distinct examples the mean of a pair (never one
    # c_i twice); the full batch always the mean 4/3 (the full-batch run fails both).
    c = np.array([-1.0, 0.0, 5.0])
    w0, lr, tau, steps = 100.0, 0.5, 2, 240

    def loss(w, batch):
        return jnp.mean(0.5 * jnp.square(w[0] - batch))

    def revealed_means(batch_size, seed=0):
        traj = simulate_async(
            loss, jnp.array([w0]), jnp.asarray(c), lr=lr, tau=tau,
            batch_size=batch_size, steps=steps, seed=seed,
        )  # fmt: skip
        w = _scalar_path(traj, w0, c)
        np.testing.assert_allclose(np.asarray(traj.params), w[-1:], rtol=1e-12)
        t = np.arange(steps)
        stale = w[t - np.minimum(t, tau)]
        return stale + (w[1:] - w[:-1]) / lr

    def nearest(m, values):
        values = np.asarray(values)
        i = np.argmin(np.abs(m[:, None] - values), axis=1)
        np.testing.assert_allclose(m, values[i], atol=1e-9)
        return i

    singles = nearest(revealed_means(1), c)
    counts = np.bincount(singles, minlength=3)
    # uniform draws: each count within 5 binomial standard deviations of steps / 3
    assert np.all(np.abs(counts - steps / 3) < 5 * math.sqrt(steps * 2 / 9)), counts
    pairs = nearest(revealed_means(2), [-0.5, 2.0, 2.5])  # (c_i + c_j) / 2, i != j
    assert set(pairs) == {0, 1, 2}
    assert not np.array_equal(revealed_means(1, seed=1), revealed_means(1))
    nearest(revealed_means(None), [c.mean()])  # the oracle's full-batch case


def test_stationary_tilt_is_the_closed_form_on_a_least_squares_loss():
    # loss(p, (x, y)) = 0.5 mean((x w + b - y)^2): gradient (x^T r / n, mean r) with
    # r = x w + b - y. The tilt subtracts <g*, p - p*>, g* the gradient at p*.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=12)
    star = {"w": rng.normal(size=3), "b": np.array(0.7)}

    def loss(p, batch):
        xb, yb = batch
        return 0.5 * jnp.mean(jnp.square(xb @ p["w"] + p["b"] - yb))

    def grad_np(p):
        r = x @ p["w"] + p["b"] - y
        return {"w": x.T @ r / len(y), "b": np.mean(r)}

    def loss_np(p):
        return 0.5 * np.mean(np.square(x @ p["w"] + p["b"] - y))

    g_star = grad_np(star)
    assert np.linalg.norm(g_star["w"]) > 0.1  # p* is far from the minimum
    tilted = stationary_tilt(loss, star, (x, y))
    for seed in range(3):
        r = np.random.default_rng(seed + 1)
        p = {"w": star["w"] + r.normal(size=3), "b": star["b"] + r.normal()}
        inner = g_star["w"] @ (p["w"] - star["w"]) + g_star["b"] * (p["b"] - star["b"])
        assert float(tilted(p, (x, y))) == pytest.approx(loss_np(p) - inner, rel=1e-13)
        got = jax.grad(tilted)(p, (x, y))
        want = grad_np(p)
        np.testing.assert_allclose(np.asarray(got["w"]), want["w"] - g_star["w"], atol=1e-14)
        assert float(got["b"]) == pytest.approx(want["b"] - g_star["b"], abs=1e-14)
    # exactly stationary at p*: a simulation started there does not move (the
    # untilted loss has the gradient g* there, so it would)
    at_star = jax.grad(tilted)(star, (x, y))
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(at_star)) < 1e-15
    traj = simulate_async(tilted, star, (x, y), lr=0.1, tau=2, steps=20)
    assert float(np.max(np.asarray(traj.distance))) < 1e-14


def test_stationary_tilt_without_data():
    # loss(w) = sum(cosh(w)): gradient sinh(w*), and the tilt only adds a linear term
    star = jnp.array([0.3, -1.2])
    tilted = stationary_tilt(lambda w: jnp.sum(jnp.cosh(w)), star)
    w = jnp.array([1.0, 0.5])
    want = np.sum(np.cosh(w)) - np.sinh(star) @ (w - star)
    assert float(tilted(w)) == pytest.approx(float(want), rel=1e-14)
    np.testing.assert_allclose(np.asarray(jax.grad(tilted)(star)), 0.0, atol=1e-15)
    np.testing.assert_allclose(
        np.asarray(jax.grad(tilted)(w)), np.sinh(w) - np.sinh(star), rtol=1e-14
    )


@settings(max_examples=examples(8))
@given(
    steps=st.sampled_from([1, 7, 24]),
    every=st.integers(1, 12),
    tau=st.integers(0, 3),
)
def test_record_every_thins_the_full_record(steps, every, tau):
    a, w0 = [1.5, 0.2], [1.0, 2.0]
    full = run_quadratic(a, w0, lr=0.3, tau=tau, steps=steps)
    thin = run_quadratic(a, w0, lr=0.3, tau=tau, steps=steps, record_every=every)
    expected_steps = sorted(set(range(0, steps + 1, every)) | {steps})
    np.testing.assert_array_equal(thin.step, expected_steps)
    np.testing.assert_allclose(np.asarray(thin.loss), np.asarray(full.loss)[expected_steps])
    np.testing.assert_allclose(np.asarray(thin.distance), np.asarray(full.distance)[expected_steps])
    np.testing.assert_array_equal(np.asarray(thin.delays), np.asarray(full.delays))
    assert thin.loss.shape == (len(expected_steps),)
    assert full.loss.shape == (steps + 1,)


def test_float32_params_stay_float32_and_follow_the_replay():
    w0 = np.array([1.0, -1.0])
    a = np.array([1.0, 3.0])
    f = lambda w: 0.5 * jnp.sum(jnp.asarray(a, jnp.float32) * jnp.square(w))  # noqa: E731
    lr, beta, steps = 0.1, 0.5, 60
    traj = simulate_async(
        f, jnp.asarray(w0, jnp.float32), lr=lr, tau=2, beta=beta, momentum="shifted", steps=steps
    )
    assert traj.params.dtype == jnp.float32
    assert traj.loss.dtype == jnp.float32 and traj.distance.dtype == jnp.float32
    assert not traj.diverged
    # the same run in float64 numpy, step by step: equal to float32 rounding
    loss, dist, final = numpy_replay(a, w0, lr, beta, "shifted", np.minimum(np.arange(steps), 2))
    np.testing.assert_allclose(np.asarray(traj.params), final, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(traj.loss), loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(traj.distance), dist, rtol=1e-5, atol=1e-6)
    assert loss[-1] < 0.1 * loss[0]  # a run that moves (not a trivial replay)


def test_divergence_is_flagged():
    # q = 50 is far above every threshold: |w| grows ~50x per step until it overflows
    traj = run_quadratic([1.0], [1.0], lr=50.0, tau=3, steps=400)
    assert traj.diverged
    loss = np.asarray(traj.loss)
    assert np.isfinite(loss[0]) and not np.all(np.isfinite(loss))
    # the same program at a stable lr: finite throughout and not flagged
    calm = run_quadratic([1.0], [1.0], lr=0.1, tau=3, steps=400)
    assert not calm.diverged and np.all(np.isfinite(np.asarray(calm.loss)))
    assert np.asarray(calm.loss)[-1] < 1e-6 * np.asarray(calm.loss)[0]


def test_growth_rate_of_a_record_starting_at_zero_is_a_named_error():
    with pytest.raises(ValueError, match="values"):
        growth_rate(np.array([0.0, 1.0, 2.0, 4.0, 8.0, 16.0]), window=1)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(lr=0.0, tau=1), ValueError, "lr"),
        (dict(lr=float("nan"), tau=1), ValueError, "lr"),
        (dict(lr=0.1, tau=1, beta=1.0), ValueError, "beta"),
        (dict(lr=0.1, tau=1, beta=-0.1), ValueError, "beta"),
        (dict(lr=0.1, tau=-1), ValueError, "tau"),
        (dict(lr=0.1, tau=1.5), TypeError, "tau"),
        (dict(lr=0.1), ValueError, "exactly one of tau and num_workers"),
        (dict(lr=0.1, tau=1, num_workers=2), ValueError, "exactly one"),
        (dict(lr=0.1, num_workers=0), ValueError, "num_workers"),
        (dict(lr=0.1, tau=1, steps=0), ValueError, "steps"),
        (dict(lr=0.1, num_workers=2, schedule="fifo"), ValueError, "schedule"),
        (dict(lr=0.1, tau=2, schedule="random"), ValueError, "num_workers"),
        (dict(lr=0.1, tau=1, momentum="adam"), ValueError, "momentum"),
        (dict(lr=0.1, tau=1, batch_size=0), ValueError, "batch_size"),
        (dict(lr=0.1, tau=1, batch_size=25), ValueError, "batch_size"),
        (dict(lr=0.1, tau=1, record_every=0), ValueError, "record_every"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    loss, params, data = small_problem()
    kwargs = {"steps": 5, **kwargs}
    with pytest.raises(error, match=match):
        simulate_async(loss, params, data, **kwargs)


def test_bad_params_and_data():
    loss, params, data = small_problem()
    with pytest.raises(ValueError, match="leading example axis"):
        simulate_async(loss, params, (data[0], data[1][:5]), lr=0.1, tau=0, steps=2)
    with pytest.raises(TypeError, match="floating-point"):
        simulate_async(_quadratic, jnp.array([1]), jnp.ones(1), lr=0.1, tau=0, steps=2)
    with pytest.raises(ValueError, match="batch_size"):
        simulate_async(lambda w: jnp.sum(w), jnp.ones(1), lr=0.1, tau=0, steps=2, batch_size=1)
