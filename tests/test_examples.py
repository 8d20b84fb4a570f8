"""The digits example: data, a true minimum, and delayed SGD at the edge.

The last test is the end-to-end check of docs/theory.md section 14: at a real
minimum of the digits MLP, delayed SGD with tau = 4 stays at 0.9x the
maximal stable learning rate and leaves at 1.1x, growing at the predicted
spectral radius.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg
from jax.flatten_util import ravel_pytree

import stability
from stability.networks.examples import N_DIGITS, load_digits, train_to_minimum
from stability.simulate import growth_rate, simulate_async


@pytest.fixture(scope="module")
def minimum():
    return train_to_minimum(256)


def hand_mlp(p, x):
    h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def test_load_digits():
    x, y = load_digits()
    assert x.shape == (N_DIGITS, 64) and y.shape == (N_DIGITS,)
    assert x.dtype == jnp.float64 and y.dtype == jnp.int32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(np.unique(np.asarray(y)).tolist()) == set(range(10))
    # The UCI test set as scikit-learn ships it: pixels 0..16 (multiples of 1/16 here),
    # its class counts, its pixel total, and its order (0, 1, ..., 9, 0, ...).
    pixels = np.asarray(x) * 16
    np.testing.assert_array_equal(pixels, np.round(pixels))
    assert np.bincount(np.asarray(y)).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert int(pixels.sum()) == 561718 and np.asarray(y[:12]).tolist() == [*range(10), 0, 1]
    x10, y10 = load_digits(10, dtype=jnp.float32)
    assert x10.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(x10), np.asarray(x[:10], dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(y10), np.asarray(y[:10]))
    with pytest.raises(ValueError, match="n must be in 1..1797"):
        load_digits(2000)
    with pytest.raises(ValueError, match="n must be"):
        load_digits(0)


def test_train_to_minimum_reaches_a_true_minimum(minimum):
    assert minimum.converged
    assert minimum.loss < 1e-6
    assert minimum.grad_norm < 1e-5
    # independent check: the hand-written squared-error loss and its gradient
    x, y = minimum.data
    targets = jax.nn.one_hot(y, 10, dtype=x.dtype)

    def loss(p):
        return jnp.mean(jnp.square(hand_mlp(p, x) - targets))

    p = minimum.params["params"]
    assert float(loss(p)) == pytest.approx(minimum.loss, rel=1e-9)
    g, _ = ravel_pytree(jax.grad(loss)(p))
    assert float(jnp.linalg.norm(g)) == pytest.approx(minimum.grad_norm, rel=1e-6)
    assert ravel_pytree(p)[0].size == 2410


def test_cross_entropy_with_weight_decay_is_a_minimum():
    m = train_to_minimum(128, loss="cross_entropy", weight_decay=1e-2)
    assert m.converged and m.grad_norm < 1e-5
    x, y = m.data

    def loss(p):
        logits = hand_mlp(p, x)
        ce = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(y.size), y])
        return ce + 0.5e-2 * jnp.sum(jnp.square(ravel_pytree(p)[0]))

    g, _ = ravel_pytree(jax.grad(loss)(m.params["params"]))
    assert float(jnp.linalg.norm(g)) < 1e-5
    assert float(loss(m.params["params"])) == pytest.approx(m.loss, rel=1e-9)


def test_train_to_minimum_arguments(minimum):
    with pytest.raises(ValueError, match="weight_decay > 0"):
        train_to_minimum(16, loss="cross_entropy")
    with pytest.raises(ValueError, match="loss"):
        train_to_minimum(16, loss="hinge")
    with pytest.raises(ValueError, match="weight_decay"):
        train_to_minimum(16, weight_decay=-1.0)
    m = train_to_minimum(256, max_steps=2)  # shares the compiled loop of the fixture
    assert m.steps == 2 and not m.converged


def gd_radius(q, tau):
    """Largest root modulus of z^(tau+1) - z^tau + q (docs/theory.md table)."""
    c = np.zeros(tau + 2)
    c[0], c[1], c[-1] = 1.0, -1.0, q
    return float(np.max(np.abs(np.roots(c))))


def test_delayed_sgd_stays_below_and_leaves_above_the_threshold(minimum):
    tau = 4
    flat, unravel = ravel_pytree(minimum.params)
    data = minimum.data
    # dense Hessian of this small model (2410 x 2410): the independent oracle
    hess = jax.jit(jax.hessian(lambda z, b: minimum.loss_fn(unravel(z), b)))(flat, data)
    vals, vecs = scipy.sparse.linalg.eigsh(np.asarray(hess), k=1, which="LA", tol=1e-12)
    sharpness, top = float(vals[0]), vecs[:, 0]
    assert 1.0 < sharpness < 100.0
    lr_max = 2 * math.sin(math.pi / (2 * (2 * tau + 1))) / sharpness  # docs/theory.md section 7
    assert float(stability.max_stable_sharpness(lr_max, tau, 0.0)) == pytest.approx(
        sharpness, rel=1e-9
    )
    # start at the minimum plus 1e-6 along the top eigenvector (docs/theory.md section 14)
    start = unravel(flat + 1e-6 * jnp.asarray(top))
    steps = 1500
    for factor in (0.9, 1.1):
        lr = factor * lr_max
        traj = simulate_async(minimum.loss_fn, start, data, lr=lr, tau=tau, steps=steps)
        loss, dist = np.asarray(traj.loss), np.asarray(traj.distance)
        rho = gd_radius(lr * sharpness, tau)
        if factor < 1:
            assert rho < 1
            assert loss.max() < 2 * minimum.loss + 1e-12
            assert dist[-1] < 1e-3
        else:
            assert rho > 1
            assert loss.max() > 1e-3 and dist.max() > 1e-1
            # the linear regime: distance from 1e-5 to 1e-2 grows at rate rho
            lin = np.flatnonzero((dist > 1e-5) & (dist < 1e-2))
            seg = dist[lin[0] : lin[-1] + 1]
            measured = growth_rate(seg, window=max(20, seg.size // 6))
            assert measured == pytest.approx(rho, rel=2e-3)
