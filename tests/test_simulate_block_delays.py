"""simulate_async / train_async with a delay per block of parameters (block_delays).

Oracles: the constant-delay path of the same functions (uniform block delays must
give the same numbers exactly), and a plain-numpy run of the linear recurrence of a
quadratic 0.5 e^T H e with a dense, non-diagonal H (so that every block's gradient
mixes all the coordinates): e_{t+1} = e_t - lr sum_b P_b H e_{t - tau_b}
(e_0 for t < tau_b), with heavy-ball and Nesterov momentum on top.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from stability.curvature.blocks import Stages, block_delays
from stability.simulate import simulate_async
from stability.training import train_async

# ---------------------------------------------------------------- a small network


def _mlp_params(key, widths=(3, 4, 4, 2)):
    params = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        key, k1, k2 = jax.random.split(key, 3)
        params[f"Dense_{i}"] = {
            "kernel": jax.random.normal(k1, (a, b)) / np.sqrt(a),
            "bias": 0.1 * jax.random.normal(k2, (b,)),
        }
    return {"params": params}


def _mlp_loss(variables, batch):
    x, y = batch
    p = variables["params"]
    h = x
    names = sorted(p, key=lambda n: int(n.split("_")[1]))
    for i, name in enumerate(names):
        h = h @ p[name]["kernel"] + p[name]["bias"]
        if i < len(names) - 1:
            h = jnp.tanh(h)
    return 0.5 * jnp.mean(jnp.sum((h - y) ** 2, axis=-1))


PARAMS = _mlp_params(jax.random.key(0))
X = jax.random.normal(jax.random.key(1), (16, 3))
Y = jax.random.normal(jax.random.key(2), (16, 2))
DATA = (X, Y)


def _assert_same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------- uniform = constant tau


@pytest.mark.parametrize(
    ("tau", "momentum", "beta", "batch_size"),
    [
        (0, "heavy_ball", 0.0, None),
        (1, "heavy_ball", 0.5, None),
        (3, "nesterov", 0.7, 4),
        (2, "gd", 0.0, 8),
    ],
)
def test_uniform_blocks_equal_constant_tau(tau, momentum, beta, batch_size):
    common = dict(lr=0.3, beta=beta, momentum=momentum, batch_size=batch_size, steps=12, seed=3)
    ref = simulate_async(_mlp_loss, PARAMS, DATA, tau=tau, **common, record_every=5)
    for spec in ({"params": tau}, Stages(3, "uniform", tau=tau)):
        got = simulate_async(_mlp_loss, PARAMS, DATA, block_delays=spec, **common, record_every=5)
        _assert_same(got.params, ref.params)
        np.testing.assert_array_equal(got.loss, ref.loss)
        np.testing.assert_array_equal(got.distance, ref.distance)
        np.testing.assert_array_equal(got.delays, ref.delays)
        np.testing.assert_array_equal(got.step, ref.step)
        assert got.diverged == ref.diverged


def test_uniform_blocks_equal_constant_tau_in_training():
    common = dict(lr=0.2, beta=0.5, batch_size=4, epochs=2, seed=1, chunk=3)
    ref = train_async(_mlp_loss, PARAMS, DATA, tau=2, **common)
    got = train_async(_mlp_loss, PARAMS, DATA, block_delays=Stages(3, "pipedream_2bw"), **common)
    assert block_delays(PARAMS, Stages(3, "pipedream_2bw")).delays == (1,)
    got2 = train_async(_mlp_loss, PARAMS, DATA, block_delays={"params": 2}, **common)
    _assert_same(got2.params, ref.params)
    np.testing.assert_array_equal(got2.train_loss, ref.train_loss)
    np.testing.assert_array_equal(got2.batch_loss, ref.batch_loss)
    np.testing.assert_array_equal(got2.delays, ref.delays)
    assert np.all(np.isfinite(got.train_loss))
    np.testing.assert_array_equal(got.delays, np.minimum(np.arange(8), 1))


# ---------------------------------------------------------------- the linear recurrence


SHAPES = {"a": (3,), "b": (2, 2), "c": (4,), "d": (1,)}
DELAYS = {"a": 0, "b": 2, "c": 3, "d": 2}


def _quadratic_problem(seed=0):
    rng = np.random.default_rng(seed)
    n = sum(int(np.prod(s)) for s in SHAPES.values())
    q = rng.standard_normal((n, n))
    h = q @ q.T / n + 0.2 * np.eye(n)  # dense, symmetric positive definite
    w_star = {k: jnp.asarray(rng.standard_normal(s)) for k, s in SHAPES.items()}
    w0 = {k: v + 0.1 * jnp.asarray(rng.standard_normal(v.shape)) for k, v in w_star.items()}
    return h, w_star, w0


def _quadratic_loss(w, batch):
    """0.5 e^T H e, e = w - w*; ``batch = (H, w* raveled)`` share the leading axis n."""
    h, w_star = batch
    e = ravel_pytree(w)[0] - w_star
    return 0.5 * e @ h @ e


def _numpy_recurrence(h, e0, tau, lr, beta, rule, steps):
    """e_{t+1} = e_t - lr u_t, u from g_t = sum_b P_b H e_{max(t - tau_b, 0)}
    (tau: the delay of each coordinate); histories as lists."""
    es, v = [e0.copy()], np.zeros_like(e0)
    for t in range(steps):
        stale = np.stack([es[max(t - d, 0)] for d in tau])  # row i: e at coordinate i's delay
        g = np.einsum("ij,ij->i", h, stale)  # (H e_{t - tau_i})_i
        if rule == "gd":
            u = g
        else:
            v = beta * v + g
            u = g + beta * v if rule == "nesterov" else v
        es.append(es[t] - lr * u)
    return np.stack(es)


@pytest.mark.parametrize(
    ("rule", "beta"), [("heavy_ball", 0.0), ("heavy_ball", 0.6), ("nesterov", 0.5), ("gd", 0.0)]
)
def test_quadratic_equals_the_block_recurrence(rule, beta):
    h, w_star, w0 = _quadratic_problem()
    lr, steps = 0.08, 40  # lr lambda_max ~ 0.35: inside the tau = 3 threshold, O(1) values
    tau = np.concatenate(
        [np.full(int(np.prod(SHAPES[k])), DELAYS[k]) for k in sorted(SHAPES)]
    )  # ravel_pytree order = tree_leaves order = sorted keys
    e0 = np.asarray(ravel_pytree(w0)[0] - ravel_pytree(w_star)[0])
    es = _numpy_recurrence(h, e0, tau, lr, beta, rule, steps)
    batch = (jnp.asarray(h), ravel_pytree(w_star)[0])
    run = simulate_async(
        _quadratic_loss,
        w0,
        batch,
        lr=lr,
        beta=beta,
        momentum=rule,
        block_delays=DELAYS,
        steps=steps,
    )
    final = np.asarray(ravel_pytree(run.params)[0] - ravel_pytree(w_star)[0])
    np.testing.assert_allclose(final, es[-1], rtol=0, atol=1e-12)
    dist = np.linalg.norm(es - e0, axis=1)
    np.testing.assert_allclose(np.asarray(run.distance), dist, rtol=0, atol=1e-12)
    loss = 0.5 * np.einsum("ti,ij,tj->t", es, h, es)
    np.testing.assert_allclose(np.asarray(run.loss), loss, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(run.delays, np.minimum(np.arange(steps), 3))
    # The block answer is not a uniform delay: tau = 3 everywhere gives other numbers.
    uniform = _numpy_recurrence(h, e0, np.full_like(tau, 3), lr, beta, rule, steps)
    assert np.max(np.abs(uniform[-1] - es[-1])) > 1e-6


def test_quadratic_block_recurrence_in_training_full_batch():
    """train_async with batch_size=None is the same full-batch recurrence."""
    h, w_star, w0 = _quadratic_problem(1)
    lr, beta, steps = 0.1, 0.4, 24
    batch = (jnp.asarray(h), ravel_pytree(w_star)[0])
    run = train_async(
        _quadratic_loss,
        w0,
        batch,
        lr=lr,
        beta=beta,
        batch_size=None,
        epochs=steps,
        block_delays=DELAYS,
        chunk=7,
    )
    sim = simulate_async(
        _quadratic_loss, w0, batch, lr=lr, beta=beta, block_delays=DELAYS, steps=steps
    )
    for a, b in zip(
        jax.tree_util.tree_leaves(run.params), jax.tree_util.tree_leaves(sim.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-13)
    np.testing.assert_array_equal(run.delays, sim.delays)
    np.testing.assert_allclose(run.train_loss, np.asarray(sim.loss)[run.step], rtol=1e-12)


# ---------------------------------------------------------------- networks, tracker


def test_stages_on_a_network_full_batch_simulate_equals_train():
    spec = Stages(3)  # Dense_0, Dense_1, Dense_2: delays 2, 1, 0
    blocks = block_delays(PARAMS, spec)
    assert blocks.delays == (0, 1, 2)
    sim = simulate_async(_mlp_loss, PARAMS, DATA, lr=0.2, beta=0.3, block_delays=spec, steps=10)
    run = train_async(
        _mlp_loss, PARAMS, DATA, lr=0.2, beta=0.3, batch_size=None, epochs=10, block_delays=spec
    )
    for a, b in zip(
        jax.tree_util.tree_leaves(run.params), jax.tree_util.tree_leaves(sim.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-13)
    np.testing.assert_array_equal(run.delays, np.minimum(np.arange(10), 2))
    assert not sim.diverged


def test_minibatch_training_with_stages_runs():
    run = train_async(
        _mlp_loss, PARAMS, DATA, lr=0.1, batch_size=4, epochs=3, block_delays=Stages(2), seed=2
    )
    assert run.batch_loss.shape == (12,)
    assert np.all(np.isfinite(run.train_loss))
    assert run.train_loss[-1] < run.train_loss[0]
    np.testing.assert_array_equal(run.delays, np.minimum(np.arange(12), 1))


class _Recorder:
    every = 4

    def __init__(self):
        self.steps = []

    def __call__(self, params, step):
        self.steps.append(step)


def test_tracker_path_is_the_same_run():
    spec = {"params/Dense_0": 2, "params/Dense_1": 1, "params/Dense_2": 0}
    common = dict(lr=0.2, beta=0.5, block_delays=spec, steps=10, batch_size=8, seed=4)
    ref = simulate_async(_mlp_loss, PARAMS, DATA, **common, record_every=2)
    rec = _Recorder()
    got = simulate_async(_mlp_loss, PARAMS, DATA, **common, record_every=2, tracker=rec)
    _assert_same(got.params, ref.params)
    np.testing.assert_array_equal(got.loss, ref.loss)
    np.testing.assert_array_equal(got.delays, ref.delays)
    assert rec.steps == [0, 4, 8, 10]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", ["simulate", "train"])
def test_errors(fn):
    def call(**kw):
        if fn == "simulate":
            return simulate_async(_mlp_loss, PARAMS, DATA, lr=0.1, steps=2, **kw)
        return train_async(_mlp_loss, PARAMS, DATA, lr=0.1, batch_size=None, epochs=2, **kw)

    with pytest.raises(
        ValueError,
        match=r"exactly one of tau, num_workers and block_delays.*"
        r"tau=1",
    ):
        call(tau=1, block_delays=Stages(2))
    with pytest.raises(ValueError, match=r"num_workers=2"):
        call(num_workers=2, block_delays=Stages(2))
    with pytest.raises(ValueError, match=r"schedule='random' needs num_workers"):
        call(block_delays=Stages(2), schedule="random")
    with pytest.raises(ValueError, match=r"momentum='shifted' keeps a buffer per worker"):
        call(block_delays=Stages(2), momentum="shifted", beta=0.5)
    with pytest.raises(ValueError, match=r"block_delays: the prefix\(es\) \['params/Dense_9'\]"):
        call(block_delays={"params": 0, "params/Dense_9": 1})
    with pytest.raises(
        ValueError,
        match=r"block_delays\['params/Dense_0/bias'\] must be an "
        r"integer >= 0; got -1",
    ):
        call(block_delays=lambda path: -1)
    with pytest.raises(ValueError, match=r"block_delays: 5 stages need at least 5"):
        call(block_delays=Stages(5))
    with pytest.raises(TypeError, match=r"block_delays must be stability.Stages"):
        call(block_delays=[1, 2])
    with pytest.raises(ValueError, match=r"give exactly one of tau and num_workers"):
        call()  # neither: the message of the paths without blocks, unchanged
