"""simulate_diloco (stability.local_sgd_training) against the theory and plain GD.

Oracles: on the quadratic ``0.5 a w^2`` the simulated global weight is a linear
recurrence; its coefficients are fitted from the simulated trajectory alone (least
squares, Prony), and the largest root modulus of the fit must be the theory's
``round_spectral_radius`` (1e-6 relative), and the theory's characteristic
polynomial must annihilate the trajectory. The signed weight is read from the
recorded distance to a far reference point (``x_k = ||x_k - (-L)|| - L``).
H = M = 1 with outer SGD is plain GD, written out here in numpy.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import stability as st
from stability.local_sgd_training import DiLoCoTrajectory, shard_data, simulate_diloco
from stability.theory.local_sgd import LocalSGD, outer_polynomial, round_spectral_radius

FAR = 1e4  # the reference point -FAR: distance - FAR is the signed weight


def quadratic(w, batch):
    """``0.5 mean_batch sum_i a_i w_i^2``, the rows of ``batch`` being the a_i."""
    return 0.5 * jnp.mean(jnp.sum(batch * w**2, -1))


CONFIGS = {
    "diloco-gd": (LocalSGD(0.3, 5), 0.9, 1.1),
    "eager4-gd": (LocalSGD(0.3, 5, schedule="eager", workers=4), 0.9, 0.9),
    "streaming1-gd": (LocalSGD(0.3, 5, schedule="streaming", overlap=1), 0.9, 0.9),
    "streaming2-gd": (LocalSGD(0.3, 2, schedule="streaming", overlap=2), 0.5, 0.6),
    "diloco-hb-kept": (LocalSGD(0.3, 3, inner="heavy_ball", inner_beta=0.5, reset=False), 0.9, 1.1),
    "diloco-hb-reset": (LocalSGD(0.3, 3, inner="heavy_ball", inner_beta=0.5), 0.9, 1.1),
    "eager3-nesterov-kept": (
        LocalSGD(
            0.2, 4, inner="nesterov", inner_beta=0.6, reset=False, schedule="eager", workers=3
        ),
        0.5,
        1.3,
    ),
    "streaming1-hb-kept-outer-hb": (
        LocalSGD(
            0.3,
            3,
            inner="heavy_ball",
            inner_beta=0.5,
            reset=False,
            outer="heavy_ball",
            schedule="streaming",
            overlap=1,
        ),
        0.7,
        0.8,
    ),
}


def signed_trajectory(config, a, outer_lr, mu, rounds):
    run = simulate_diloco(
        quadratic,
        jnp.ones(1),
        jnp.array([[a]]),
        config,
        rounds=rounds,
        outer_lr=outer_lr,
        outer_momentum=mu,
        reference=jnp.full(1, -FAR),
    )
    assert not run.diverged
    return run.distance - FAR


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("a", [0.7, 2.5])
def test_growth_per_round_is_the_round_spectral_radius(name, a):
    config, mu, outer_lr = CONFIGS[name]
    coef = np.asarray(
        outer_polynomial(config, a, mu).coefficients(outer_lr), dtype=np.float64
    ).ravel()
    coef = coef / coef[0]
    n = coef.size - 1
    x = signed_trajectory(config, a, outer_lr, mu, rounds=24)
    # the theory's polynomial annihilates the simulated trajectory
    windows = np.lib.stride_tricks.sliding_window_view(x, n + 1)
    residual = windows @ coef[::-1]
    assert np.max(np.abs(residual)) <= 1e-9 * max(1.0, np.max(np.abs(x)))
    # the recurrence fitted from the trajectory alone has the theory's radius
    rows = windows[:, :n]
    fit = np.linalg.lstsq(rows[:, ::-1], -windows[:, n], rcond=None)[0]
    measured = np.max(np.abs(np.roots(np.concatenate([[1.0], fit]))))
    predicted = round_spectral_radius(config, a, outer_lr, mu)
    assert measured == pytest.approx(predicted, rel=1e-6)


@pytest.mark.parametrize("name", ["diloco-gd", "eager4-gd"])
def test_long_run_growth_of_the_distance(name):
    """Over 400 rounds the distance from the minimum grows (or decays) as
    radius^rounds: the RMS-window growth rate agrees to 1e-3 (the oscillation of a
    complex pair is what keeps it from 1e-6; the fit above is exact)."""
    config, mu, outer_lr = CONFIGS[name]
    run = simulate_diloco(
        quadratic,
        jnp.ones(1),
        jnp.array([[2.0]]),
        config,
        rounds=400,
        outer_lr=outer_lr,
        outer_momentum=mu,
        reference=jnp.zeros(1),
    )
    predicted = round_spectral_radius(config, 2.0, outer_lr, mu)
    measured = st.growth_rate(run.distance[1:], window=50)
    assert measured == pytest.approx(predicted, rel=1e-3)


def test_one_step_one_worker_outer_sgd_is_gradient_descent():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.1, 3.0, 6)
    w0 = rng.standard_normal(6)
    inner_lr, outer_lr, rounds = 0.25, 0.8, 30
    config = LocalSGD(inner_lr, 1, outer="gd")
    run = simulate_diloco(
        quadratic,
        jnp.asarray(w0),
        jnp.asarray(a)[None],
        config,
        rounds=rounds,
        outer_lr=outer_lr,
        reference=jnp.zeros(6),
    )
    w, distances, losses = w0.copy(), [np.linalg.norm(w0)], [0.5 * np.sum(a * w0**2)]
    for _ in range(rounds):
        w = w - outer_lr * inner_lr * a * w
        distances.append(np.linalg.norm(w))
        losses.append(0.5 * np.sum(a * w**2))
    np.testing.assert_allclose(np.asarray(run.params), w, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(run.distance, distances, rtol=1e-13)
    np.testing.assert_allclose(run.loss, losses, rtol=1e-12)
    np.testing.assert_array_equal(run.round, np.arange(rounds + 1))
    assert isinstance(run, DiLoCoTrajectory) and not run.diverged


def _mlp(w, batch):
    x, y = batch
    h = jnp.tanh(x @ w["w1"])
    return 0.5 * jnp.mean((h @ w["w2"] - y) ** 2)


def _mlp_problem():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((12, 3)))
    y = jnp.asarray(rng.standard_normal((12, 1)))
    params = {"w1": jnp.asarray(rng.standard_normal((3, 4)) / 2), "w2": jnp.zeros((4, 1))}
    return params, (x, y)


@pytest.mark.parametrize(
    "config",
    [
        LocalSGD(0.1, 3, inner="heavy_ball", inner_beta=0.5, reset=False),
        LocalSGD(0.1, 3, schedule="eager", workers=3),
        LocalSGD(0.1, 2, inner="nesterov", inner_beta=0.3, schedule="streaming", overlap=2),
    ],
    ids=["diloco-kept", "eager3", "streaming2"],
)
def test_identical_shards_equal_the_unsharded_run(config):
    params, data = _mlp_problem()
    kwargs = dict(rounds=7, outer_lr=0.7, outer_momentum=0.9, record_every=3)
    plain = simulate_diloco(_mlp, params, data, config, **kwargs)
    workers = config.workers if config.schedule == "eager" else 3
    shards = tuple(jnp.stack([d] * workers) for d in data)
    sharded = simulate_diloco(_mlp, params, data, config, shards=shards, **kwargs)
    np.testing.assert_allclose(sharded.loss, plain.loss, rtol=1e-12)
    np.testing.assert_allclose(sharded.distance, plain.distance, rtol=1e-12)
    for k in params:
        np.testing.assert_allclose(sharded.params[k], plain.params[k], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(plain.round, [0, 3, 6, 7])


def test_distinct_shards_one_step_average_the_shard_gradients():
    """H = 1: the average of the shards' one-step pseudo-gradients is inner_lr times
    the average shard gradient, the full-batch gradient for equal shards: the
    sharded run equals the unsharded one."""
    params, data = _mlp_problem()
    config = LocalSGD(0.1, 1)
    kwargs = dict(rounds=5, outer_lr=0.7, outer_momentum=0.9)
    plain = simulate_diloco(_mlp, params, data, config, **kwargs)
    sharded = simulate_diloco(_mlp, params, data, config, shards=shard_data(data, 4), **kwargs)
    np.testing.assert_allclose(sharded.loss, plain.loss, rtol=1e-12)


def test_divergence_is_flagged_and_last_finite_params_kept():
    config = LocalSGD(0.3, 5)
    run = simulate_diloco(
        quadratic,
        jnp.ones(1),
        jnp.array([[2.0]]),
        config,
        rounds=3000,
        outer_lr=10.0,
        outer_momentum=0.9,
        record_every=100,
    )
    assert run.diverged
    assert np.all(np.isfinite(np.asarray(run.params)))
    assert not np.all(np.isfinite(run.distance))


def test_bad_arguments():
    data = jnp.array([[1.0]])
    w = jnp.ones(1)
    with pytest.raises(TypeError, match="config"):
        simulate_diloco(quadratic, w, data, {"inner_lr": 0.1}, rounds=2, outer_lr=0.5)
    with pytest.raises(ValueError, match="rounds"):
        simulate_diloco(quadratic, w, data, LocalSGD(0.1), rounds=0, outer_lr=0.5)
    with pytest.raises(ValueError, match="outer_lr"):
        simulate_diloco(quadratic, w, data, LocalSGD(0.1), rounds=2, outer_lr=-1.0)
    with pytest.raises(ValueError, match="outer_momentum"):
        simulate_diloco(
            quadratic, w, data, LocalSGD(0.1), rounds=2, outer_lr=0.5, outer_momentum=1.5
        )
    with pytest.raises(ValueError, match="config.workers"):
        simulate_diloco(
            quadratic,
            w,
            data,
            LocalSGD(0.1, schedule="eager", workers=2),
            rounds=2,
            outer_lr=0.5,
            shards=jnp.ones((3, 1, 1)),
        )
    with pytest.raises(ValueError, match="shards"):
        simulate_diloco(
            quadratic, w, data, LocalSGD(0.1), rounds=2, outer_lr=0.5, shards=jnp.ones(3)
        )
    with pytest.raises(TypeError, match="loss"):
        simulate_diloco("loss", w, data, LocalSGD(0.1), rounds=2, outer_lr=0.5)
    with pytest.raises(ValueError, match="workers"):
        shard_data(data, 2)


def test_exported():
    assert st.simulate_diloco is simulate_diloco
    assert st.DiLoCoTrajectory is DiLoCoTrajectory
    assert st.shard_data is shard_data
