"""`OptaxRule`: any optax optimizer as the update rule of `simulate_async` and
`train_async` (mini-batches, workers, delays), against the built-in heavy ball
(optax.sgd with momentum is the heavy ball) and against `simulate_optax`."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stability import max_stable_sharpness, simulate_async, simulate_optax, train_async
from stability.theory.rules.optax_rule import OptaxRule

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(20, 3)))
Y = jnp.asarray(RNG.normal(size=(20,)))
P0 = {"w": jnp.asarray(RNG.normal(size=3)), "s": jnp.asarray(1.3)}


def loss(p, b):
    return jnp.mean((jnp.tanh(b[0] @ p["w"]) * p["s"] - b[1]) ** 2)


@pytest.mark.parametrize("delay", [dict(tau=3), dict(num_workers=3, schedule="random")])
def test_optax_sgd_momentum_is_the_heavy_ball(delay):
    sgd = OptaxRule(optax.sgd(0.1, momentum=0.9))
    a = train_async(loss, P0, (X, Y), lr=1.0, batch_size=5, epochs=4, momentum=sgd, **delay)
    b = train_async(loss, P0, (X, Y), lr=0.1, beta=0.9, batch_size=5, epochs=4, **delay)
    for key in P0:
        np.testing.assert_allclose(a.params[key], b.params[key], rtol=0, atol=1e-13)
    np.testing.assert_array_equal(a.delays, b.delays)


def test_adamw_in_simulate_async_is_simulate_optax():
    adamw = optax.adamw(0.05, weight_decay=0.1)
    a = simulate_async(loss, P0, (X, Y), lr=1.0, tau=2, steps=30, momentum=OptaxRule(adamw))
    b = simulate_optax(loss, P0, (X, Y), adamw, tau=2, steps=30, record_every=30)
    for key in P0:
        np.testing.assert_allclose(a.params[key], b.params[key], rtol=0, atol=1e-14)
    assert float(a.loss[-1]) == pytest.approx(float(b.loss[-1]), rel=1e-12)


def test_lr_scales_the_optimizer_update():
    sgd = OptaxRule(optax.sgd(0.2))
    a = simulate_async(loss, P0, (X, Y), lr=0.5, tau=1, steps=10, momentum=sgd)
    b = simulate_async(loss, P0, (X, Y), lr=0.1, tau=1, steps=10)
    np.testing.assert_allclose(a.params["w"], b.params["w"], rtol=0, atol=1e-14)


def test_clear_errors():
    with pytest.raises(TypeError, match="optimizer must be an optax GradientTransformation"):
        OptaxRule(object())
    rule = OptaxRule(optax.adam(1e-3))
    with pytest.raises(ValueError, match="beta must be 0 for an optax optimizer"):
        simulate_async(loss, P0, (X, Y), lr=1.0, tau=1, beta=0.9, steps=2, momentum=rule)
    with pytest.raises(NotImplementedError, match="optimizer_state"):
        max_stable_sharpness(1.0, 2, momentum=rule)
    assert str(rule) == "optax" and hash(rule) == hash(OptaxRule(rule.optimizer))
