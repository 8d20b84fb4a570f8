"""Mean-square stability of mini-batch SGD with delay and momentum.

Oracles, none of which uses the H2 norm, the renewal equation or the library's
characteristic polynomials:

- closed forms at tau = 0 (Wu, Ma and E): ``(1 - q)^2 + gamma lr^2 s^2 < 1``;
- the variance factor by enumerating every mini-batch of a small data set;
- the lifted (Kronecker) second-moment matrix ``E_S[K_S (x) K_S]`` of the delayed
  state, built from the update rules themselves (a state-space realisation written
  here) and averaged over every mini-batch of the data: its spectral radius is the
  exact per-step factor of the second moment;
- Monte-Carlo simulation of the stochastic recurrence on per-example quadratics
  (a vectorised numpy loop written from the update rules): the second moment decays
  at 0.8x the computed threshold and grows at 1.25x.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stability as st
from stability.theory import mean_square as ms

RULES = [
    # (tau, beta, momentum)
    (0, 0.0, "heavy_ball"),
    (4, 0.0, "heavy_ball"),
    (3, 0.5, "heavy_ball"),
    (2, 0.5, "nesterov"),
    (2, 0.6, "shifted"),
]


# ------------------------------------------------------------------ test's own model


def batch_table(h, batch, replacement):
    """Mean curvature of every equally likely mini-batch: (batches, d)."""
    n = h.shape[0]
    if replacement:
        combos = list(itertools.product(range(n), repeat=batch))
    else:
        combos = list(itertools.combinations(range(n), batch))
    return h[np.asarray(combos)].mean(axis=1)


def state_space(tau, beta, lr, rule):
    """``(F, G)``: the delayed state ``X+ = (F + h G) X`` of one direction with
    random curvature h, from the update rules (simulate.py's module docstring).
    X = (w_t, ..., w_{t-tau}, buffers); shifted keeps tau + 1 per-worker buffers,
    the one used at step t last written at step t - tau - 1."""
    nb = tau + 1 if rule == "shifted" else 1
    size = tau + 1 + nb
    f, g = np.zeros((size, size)), np.zeros((size, size))
    for i in range(1, tau + 1):
        f[i, i - 1] = 1.0
    f[0, 0] = 1.0
    if rule == "shifted":
        old, new = 2 * tau + 1, tau + 1  # buffer written tau + 1 steps ago; the new one
        f[new, old], g[new, tau] = beta, 1.0  # v = beta v_old + h w_{t-tau}
        f[0, old], g[0, tau] = -lr * beta, -lr  # w+ = w - lr v
        for j in range(1, tau + 1):
            f[new + j, new + j - 1] = 1.0
    else:
        vb = tau + 1
        f[vb, vb], g[vb, tau] = beta, 1.0  # v+ = beta v + h w_{t-tau}
        if rule == "heavy_ball":  # w+ = w - lr v+
            f[0, vb], g[0, tau] = -lr * beta, -lr
        else:  # nesterov: w+ = w - lr (g + beta v+) = w - lr ((1 + beta) g + beta^2 v)
            f[0, vb], g[0, tau] = -lr * beta * beta, -lr * (1 + beta)
    return f, g


def lifted_radius(tau, beta, lr, rule, curvatures):
    """Spectral radius of ``E[K (x) K]`` over equally likely curvatures h."""
    f, g = state_space(tau, beta, lr, rule)
    values, counts = np.unique(curvatures, return_counts=True)
    lifted = sum(c * np.kron(f + h * g, f + h * g) for h, c in zip(values, counts, strict=True))
    lifted /= counts.sum()
    return float(np.max(np.abs(np.linalg.eigvals(lifted))))


def monte_carlo(h, lr, tau, beta, rule, batch, replacement, steps, runs=4000, seed=0):
    """Mean of ||w_t||^2 over independent runs of mini-batch delayed SGD on the
    per-example quadratics f_i = sum_j h[i, j] w_j^2 / 2 (diagonal H_i)."""
    rng = np.random.default_rng(seed)
    table = batch_table(h, batch, replacement)
    w = np.ones((runs, h.shape[1]))
    history = [w] * (tau + 1)  # history[0] = w_{t - tau}
    buffers = [np.zeros_like(w)] * (tau + 1 if rule == "shifted" else 1)
    out = [np.mean(np.sum(w * w, axis=1))]
    for t in range(steps):
        grad = table[rng.integers(0, len(table), runs)] * history[0]
        if rule == "shifted":
            slot = t % len(buffers)
            buffers[slot] = beta * buffers[slot] + grad
            w = w - lr * buffers[slot]
        else:
            buffers[0] = beta * buffers[0] + grad
            w = w - lr * (grad + beta * buffers[0] if rule == "nesterov" else buffers[0])
        history = history[1:] + [w]
        out.append(np.mean(np.sum(w * w, axis=1)))
    return np.asarray(out)


# ------------------------------------------------------------------------ formulas


def test_variance_factor_against_every_mini_batch():
    h = np.array([0.0, 1.0, 3.0, 3.5, 7.0, 10.0])
    n, var = h.size, h.var()
    for b in range(1, n + 1):
        without = batch_table(h[:, None], b, False)[:, 0]
        assert without.var() == pytest.approx(ms.variance_factor(b, n) * var, abs=1e-12)
        with_ = batch_table(h[:, None], b, True)[:, 0]
        got = ms.variance_factor(b, n, replacement=True) * var
        assert with_.var() == pytest.approx(got, rel=1e-12)
    assert ms.variance_factor(n, n) == 0.0 and ms.variance_factor(n, n, replacement=True) == 1 / n
    assert ms.variance_factor(1, 1) == 0.0
    assert ms.variance_factor(3, 2, replacement=True) == 1 / 3


def test_sgd_closed_forms_of_wu_ma_and_e():
    for q in (0.1, 0.7, 1.5, 1.99):
        assert ms.noise_gain(q, 0) == pytest.approx(1 / (q * (2 - q)), rel=1e-12)
        for sigma2 in (0.0, 0.01, 0.3):
            mu = ms.second_moment_growth(q, sigma2, 0)
            assert mu == pytest.approx((1 - q) ** 2 + sigma2, rel=1e-9, abs=1e-30)
    for r in (0.0, 0.5, 3.0, 1e6):
        assert ms.mean_square_threshold(r, 0).q_max == pytest.approx(2 / (1 + r), rel=1e-12)
    a, s, b, n = 2.0, 3.0, 4, 50
    gamma = (n - b) / (b * (n - 1))
    lr = ms.max_stable_lr_minibatch(a, s, 0, batch_size=b, num_examples=n)
    assert lr == pytest.approx(2 * a / (a * a + gamma * s * s), rel=1e-12)
    for f, stable in ((0.999, True), (1.001, False)):
        rep = ms.mean_square_stability(f * lr, a, s, 0, batch_size=b, num_examples=n)
        assert rep.stable is stable and rep.mean_stable is True
        assert (1 - f * lr * a) ** 2 + gamma * (f * lr * s) ** 2 == pytest.approx(rep.growth)
        assert (rep.gain < 1) is stable and (rep.growth < 1) is stable
    assert ms.noise_gain(0.0, 0) == math.inf and ms.noise_gain(2.0, 0) == math.inf


@pytest.mark.parametrize("tau, beta, rule", RULES)
def test_growth_is_the_spectral_radius_of_the_lifted_recursion(tau, beta, rule):
    # Per-example curvatures along one direction: sparse (2 of 7 examples curve it).
    h = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 2.5, 4.0])
    a, s2, n = h.mean(), h.var(), h.size
    q_max = ms.mean_square_threshold(0.0, tau, beta, momentum=rule).q_max
    for batch, replacement in ((1, True), (3, False), (4, True)):
        table = batch_table(h[:, None], batch, replacement)[:, 0]
        gamma = ms.variance_factor(batch, n, replacement=replacement)
        for frac in (0.3, 0.7):
            lr = frac * q_max / a
            mu = ms.second_moment_growth(lr * a, lr * lr * gamma * s2, tau, beta, momentum=rule)
            assert mu == pytest.approx(lifted_radius(tau, beta, lr, rule, table), rel=1e-9)
        # On the computed threshold the lifted recursion is marginal.
        sampling = dict(batch_size=batch, num_examples=n, replacement=replacement)
        lr = ms.max_stable_lr_minibatch(a, math.sqrt(s2), tau, beta, momentum=rule, **sampling)
        assert lifted_radius(tau, beta, lr, rule, table) == pytest.approx(1.0, abs=1e-9)
        assert (
            lifted_radius(tau, beta, 0.99 * lr, rule, table)
            < 1
            < lifted_radius(tau, beta, 1.01 * lr, rule, table)
        )


def test_noise_gain_against_the_impulse_response_of_the_rule():
    # N(q) = sum_k y_k^2 for the stale coordinate's response to one unit of noise in
    # lr * gradient, from the state space (noise enters through the column G[:, tau]).
    for tau, beta, rule in RULES:
        q = 0.5 * ms.mean_square_threshold(0.0, tau, beta, momentum=rule).q_max
        f, g = state_space(tau, beta, q, rule)  # lr = q, a = 1
        k = f + g
        x = -g[:, tau] / q  # one unit of noise: lr g -> lr g + 1
        total = 0.0
        for _ in range(20000):
            total += x[tau] ** 2  # the coordinate the next gradient reads
            x = k @ x
        assert ms.noise_gain(q, tau, beta, momentum=rule) == pytest.approx(total, rel=1e-10)


def test_the_stable_set_is_an_interval_below_the_deterministic_threshold():
    # q^2 N(q) increases on (0, q_max): the first crossing is the only one.
    for tau in (0, 1, 2, 5, 16):
        for beta in (0.0, 0.5, 0.9):
            for rule in ("heavy_ball", "nesterov", "shifted"):
                q_max = ms.mean_square_threshold(0.0, tau, beta, momentum=rule).q_max
                q = q_max * jnp.linspace(1e-3, 1 - 1e-3, 200)
                g = q * q * ms.noise_gain(q, tau, beta, momentum=rule)
                assert bool(jnp.all(jnp.diff(g) > 0)), (tau, beta, rule)
                t = ms.mean_square_threshold(jnp.asarray([1e-3, 1.0, 30.0]), tau, beta,
                                             momentum=rule)  # fmt: skip
                assert bool(jnp.all(jnp.diff(t.q_max) < 0)) and bool(t.q_max[0] < q_max)
                assert bool(jnp.all(t.reliable))


# ----------------------------------------------------------------------- full batch


@pytest.mark.parametrize("tau, beta, rule", [*RULES, (16, 0.9, "shifted")])
def test_full_batch_without_replacement_is_the_deterministic_threshold(tau, beta, rule):
    a, s, n = 3.0, 2.0, 40
    got = ms.max_stable_lr_minibatch(a, s, tau, beta, momentum=rule, batch_size=n,
                                     num_examples=n)  # fmt: skip
    assert got == st.max_stable_lr(a, tau, beta, momentum=rule)
    assert got == st.max_stable_sharpness(1.0, tau, beta, momentum=rule) / a
    # with replacement B = n still has noise (gamma = 1 / n): strictly lower (by less
    # at long delays, where q_max is small and the noise term lr^2 gamma s^2 with it)
    with_ = ms.max_stable_lr_minibatch(a, s, tau, beta, momentum=rule, batch_size=n,
                                       num_examples=n, replacement=True)  # fmt: skip
    assert with_ < (0.999 if tau < 16 else 0.99999) * got
    if tau == 0 and beta == 0:
        assert with_ == pytest.approx(2 * a / (a * a + s * s / n), rel=1e-12)


# ----------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize(
    "tau, beta, rule, batch, replacement",
    [
        (0, 0.0, "heavy_ball", 1, True),
        (0, 0.0, "heavy_ball", 2, False),
        (4, 0.0, "heavy_ball", 2, False),
        (3, 0.5, "heavy_ball", 1, True),
        (2, 0.5, "nesterov", 2, False),
        (2, 0.6, "shifted", 2, False),
    ],
)
def test_monte_carlo_second_moment_decays_below_and_grows_above(
    tau, beta, rule, batch, replacement
):
    # Two directions with diagonal per-example Hessians (known Sigma): direction 0 is
    # the sharpest and nearly uniform, direction 1 flatter (a = 0.8) but curved by one
    # example of 8. Direction 1 binds the mean-square condition; the deterministic
    # condition holds in both directions even at 1.25x.
    n = 8
    h = np.zeros((n, 2))
    h[:, 0] = np.linspace(0.9, 1.1, n)
    h[0, 1] = 6.4
    a, s = h.mean(axis=0), h.std(axis=0)
    limits = [
        ms.max_stable_lr_minibatch(
            a[j],
            s[j],
            tau,
            beta,
            momentum=rule,
            batch_size=batch,
            num_examples=n,
            replacement=replacement,
        )  # fmt: skip
        for j in range(2)
    ]
    lr_star = min(limits)
    assert limits[1] < 0.8 * limits[0]  # the flatter, non-uniform direction binds
    q_max = st.max_stable_sharpness(1.0, tau, beta, momentum=rule)
    assert 1.25 * lr_star * a.max() < 0.96 * q_max  # the mean stays stable at 1.25x
    gamma = ms.variance_factor(batch, n, replacement=replacement)
    for factor, grows in ((0.8, False), (1.25, True)):
        lr = factor * lr_star
        mu = ms.second_moment_growth(lr * a[1], lr * lr * gamma * s[1] ** 2, tau, beta,
                                     momentum=rule)  # fmt: skip
        steps = int(np.ceil(10 / abs(np.log(mu))))  # predicted change e^(+-10)
        m = monte_carlo(h, lr, tau, beta, rule, batch, replacement, steps)
        change = np.log(m[-1] / m[0])
        assert (change > 3.0) if grows else (change < -5.0), (factor, change, steps)


# ---------------------------------------------------------------- learning-rate rules


def test_lr_for_delay_minibatch_keeps_the_fraction_of_the_limit():
    a, s, n = 2.0, 5.0, 100
    kw = dict(beta=0.9, momentum="shifted", num_examples=n)
    no_noise = ms.lr_for_delay_minibatch(0.1, 8, sharpness=a, nonuniformity=0.0, batch_size=4,
                                         **kw)  # fmt: skip
    assert no_noise == pytest.approx(st.lr_for_delay(0.1, 8, beta=0.9, momentum="shifted"),
                                     rel=1e-12)  # fmt: skip
    lr0 = 0.3 * ms.max_stable_lr_minibatch(a, s, 0, 0.9, momentum="shifted", batch_size=32,
                                           num_examples=n)  # fmt: skip
    lr1 = ms.lr_for_delay_minibatch(lr0, 8, sharpness=a, nonuniformity=s, batch_size=4,
                                    from_batch_size=32, **kw)  # fmt: skip
    limit1 = ms.max_stable_lr_minibatch(a, s, 8, 0.9, momentum="shifted", batch_size=4,
                                        num_examples=n)  # fmt: skip
    assert lr1 / limit1 == pytest.approx(0.3, rel=1e-10)
    rep = ms.mean_square_stability(lr1, a, s, 8, 0.9, momentum="shifted", batch_size=4,
                                   num_examples=n)  # fmt: skip
    assert rep.stable is True and rep.max_stable_lr == pytest.approx(limit1, rel=1e-12)


def test_traceable_and_vectorised():
    # Under jit the noise and beta are traced; vmap over q; arrays in, arrays out.
    f = jax.jit(lambda r, b: ms.mean_square_threshold(r, 3, b, momentum="nesterov").q_max)
    r = jnp.asarray([0.0, 0.5, 4.0])
    got = f(r, jnp.asarray(0.5))
    expect = [ms.mean_square_threshold(float(x), 3, 0.5, momentum="nesterov").q_max for x in r]
    assert np.allclose(got, expect, rtol=1e-12, atol=0)
    q = jnp.asarray([0.05, 0.1, 0.2])
    vm = jax.vmap(lambda x: ms.noise_gain(x, 3, 0.5, momentum="nesterov"))(q)
    assert np.allclose(vm, ms.noise_gain(q, 3, 0.5, momentum="nesterov"), rtol=1e-12)
    assert isinstance(ms.noise_gain(0.1, 3), float) and isinstance(ms.noise_gain(q, 3), jax.Array)
    g = jax.jit(lambda x, n: ms.second_moment_growth(x, n, 3, 0.5, momentum="nesterov"))
    noise = jnp.asarray([0.0, 1e-3, 1e-2])
    expect = [ms.second_moment_growth(float(x), float(n), 3, 0.5, momentum="nesterov")
              for x, n in zip(q, noise, strict=True)]  # fmt: skip
    assert np.allclose(g(q, noise), expect, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "call, name, error",
    [
        (lambda: ms.variance_factor(5, 4), "batch_size", ValueError),
        (lambda: ms.variance_factor(0, 4), "batch_size", ValueError),
        (lambda: ms.variance_factor(2, 4, replacement="yes"), "replacement", TypeError),
        (lambda: ms.noise_gain(0.1, st.delay_distribution([0.5, 0.5])), "tau", ValueError),
        (lambda: ms.noise_gain(0.1, -1), "tau", ValueError),
        (lambda: ms.mean_square_threshold(-1.0, 2), "relative_noise", ValueError),
        (lambda: ms.second_moment_growth(0.1, -0.1, 2), "noise", ValueError),
        (
            lambda: ms.max_stable_lr_minibatch(1.0, -1.0, 2, batch_size=1, num_examples=2),
            "nonuniformity",
            ValueError,
        ),  # fmt: skip
        (
            lambda: ms.max_stable_lr_minibatch(0.0, 1.0, 2, batch_size=1, num_examples=2),
            "sharpness",
            ValueError,
        ),  # fmt: skip
        (
            lambda: ms.mean_square_stability("0.1", 1.0, 1.0, 2, batch_size=1, num_examples=2),
            "lr",
            TypeError,
        ),  # fmt: skip
        (
            lambda: ms.mean_square_stability(
                0.1, 1.0, 1.0, 2, momentum="adam", batch_size=1, num_examples=2
            ),
            "momentum",
            ValueError,
        ),  # fmt: skip
    ],
)
def test_bad_input_names_the_argument(call, name, error):
    with pytest.raises(error, match=name):
        call()
