"""loss_from_model against hand-written applies of the same modules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

from stability.networks.examples import DigitsMLP, NnxDigitsMLP
from stability.networks.models import loss_from_model, mean_squared_error


class LinenNet(nn.Module):
    """Dense -> BatchNorm -> Dropout -> Dense, with a ``train`` switch."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(6, param_dtype=jnp.float64)(x)
        x = nn.BatchNorm(use_running_average=not train, param_dtype=jnp.float64)(x)
        x = nn.Dropout(0.5, deterministic=not train)(jnp.tanh(x))
        return nn.Dense(3, param_dtype=jnp.float64)(x)


class NnxNet(nnx.Module):
    def __init__(self, rngs, width=6):
        self.l1 = nnx.Linear(4, width, param_dtype=jnp.float64, rngs=rngs)
        self.bn = nnx.BatchNorm(width, param_dtype=jnp.float64, rngs=rngs)
        self.do = nnx.Dropout(0.5, rngs=rngs)
        self.l2 = nnx.Linear(width, 3, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.do(jnp.tanh(self.bn(self.l1(x)))))


def standard():
    """Flax's BatchNorm mixes float32 statistics into float64 inputs."""
    return jax.numpy_dtype_promotion("standard")


def batch(n=10, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, 4), dtype=jnp.float64)
    y = jax.random.randint(ky, (n,), 0, 3).astype(jnp.int32)
    return x, y


def ce(logits, y):
    return float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)))


def linen_variables():
    model = LinenNet()
    x, _ = batch()
    # linen BatchNorm creates float32 running statistics: init under standard
    # promotion, then store them in float64 like everything else
    with jax.numpy_dtype_promotion("standard"):
        variables = model.init(jax.random.key(1), x, train=False)
    # non-trivial running statistics, so that eval mode is distinguishable
    stats = jax.tree.map(lambda s: s.astype(jnp.float64) + 0.3, variables["batch_stats"])
    return model, {"params": variables["params"], "batch_stats": stats}


def test_linen_loss_is_the_eval_mode_apply():
    model, variables = linen_variables()
    x, y = batch()
    loss_fn, params = loss_from_model(model, variables, data=(x, y))
    with standard():
        hand = ce(model.apply(variables, x, train=False), y)
        # training mode (batch statistics) would give a different number
        train_out, _ = model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
        )
    assert float(loss_fn(params, (x, y))) == pytest.approx(hand, rel=1e-14)
    assert abs(ce(train_out, y) - hand) > 1e-6
    # jit-compatible, with params as an argument
    assert float(jax.jit(loss_fn)(params, (x, y))) == pytest.approx(hand, rel=1e-12)


def test_linen_differentiates_only_params():
    model, variables = linen_variables()
    x, y = batch()
    loss_fn, params = loss_from_model(model, variables)
    grads = jax.grad(loss_fn)(params, (x, y))
    for leaf in jax.tree.leaves(grads["batch_stats"]):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)

    # the params gradient equals the gradient of the hand-written eval loss
    def hand_loss(p):
        v = {"params": p, "batch_stats": variables["batch_stats"]}
        logits = model.apply(v, x, train=False)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    with standard():
        hand = jax.grad(hand_loss)(variables["params"])
    for a, b in zip(jax.tree.leaves(grads["params"]), jax.tree.leaves(hand), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-15)


def test_linen_train_mode_uses_batch_statistics():
    model, variables = linen_variables()
    x, y = batch()
    loss_fn, params = loss_from_model(model, variables, train=True)
    with standard():
        out, _ = model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}
        )
    assert float(loss_fn(params, (x, y))) == pytest.approx(ce(out, y), rel=1e-12)


def test_nnx_loss_is_the_eval_mode_call_and_leaves_the_model_alone():
    model = NnxNet(nnx.Rngs(0))
    x, y = batch()
    model.bn.mean[...] = model.bn.mean[...] + 0.3  # distinguishable running stats
    loss_fn, params = loss_from_model(model, data=(x, y))
    assert isinstance(params, nnx.State)
    assert model.do.deterministic is False and model.bn.use_running_average is False
    reference = nnx.merge(*nnx.split(model))
    reference.eval()
    with standard():
        hand = ce(reference(x), y)
    assert float(loss_fn(params, (x, y))) == pytest.approx(hand, rel=1e-14)
    assert float(jax.jit(loss_fn)(params, (x, y))) == pytest.approx(hand, rel=1e-12)
    # Only Param variables are differentiated. Oracle: the gradient of the
    # hand-written eval-mode loss with respect to the reference module's Params;
    # the batch statistics (and anything else) get exactly zero.
    grads = jax.grad(loss_fn)(params, (x, y))
    graphdef, trained, rest = nnx.split(reference, nnx.Param, ...)

    def hand_loss(p):
        logits = nnx.merge(graphdef, p, rest)(x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    with standard():
        hand_grads = nnx.to_pure_dict(jax.grad(hand_loss)(trained))
    got = nnx.to_pure_dict(grads)
    for layer in ("l1", "bn", "l2"):
        for name, want in hand_grads[layer].items():
            np.testing.assert_allclose(got[layer][name], want, rtol=1e-12, atol=1e-15)
    for name in ("mean", "var"):
        np.testing.assert_array_equal(got["bn"][name], 0.0)
    # and the hand gradient is the derivative: a central difference along a direction
    direction = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size).reshape(p.shape)), trained)
    h = 1e-5
    with standard():
        up = hand_loss(jax.tree.map(lambda p, d: p + h * d, trained, direction))
        down = hand_loss(jax.tree.map(lambda p, d: p - h * d, trained, direction))
    slope = sum(
        float(jnp.vdot(g, d))
        for g, d in zip(jax.tree.leaves(hand_grads), jax.tree.leaves(direction), strict=True)
    )
    assert slope == pytest.approx(float(up - down) / (2 * h), rel=1e-6)


def test_nnx_given_params_are_used():
    model = NnxNet(nnx.Rngs(0))
    x, y = batch()
    loss_fn, params = loss_from_model(model)
    shifted = jax.tree.map(lambda p: p + 0.1, params)
    loss_fn2, same = loss_from_model(model, shifted)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(shifted), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a plain nested dict (nnx.to_pure_dict) of the Params only: the rest is the module's
    only_params = nnx.to_pure_dict(nnx.split_state(shifted, nnx.Param, ...)[0])
    _, from_dict = loss_from_model(model, only_params)
    x, y = batch()
    assert float(loss_fn2(from_dict, (x, y))) != float(loss_fn2(shifted, (x, y)))  # stats
    for path in (("l1", "kernel"), ("bn", "mean")):
        want = only_params[path[0]][path[1]] if path[1] != "mean" else model.bn.mean[...]
        np.testing.assert_array_equal(np.asarray(from_dict[path[0]][path[1]][...]), want)
    m = nnx.merge(*nnx.split(model))
    m.eval()
    nnx.update(m, shifted)
    with standard():
        hand = ce(m(x), y)
    assert float(loss_fn2(shifted, (x, y))) == pytest.approx(hand, rel=1e-14)


def test_linen_and_nnx_twins_agree_with_a_hand_written_mlp():
    x, y = batch(12)
    x = jnp.concatenate([x] * 16, axis=1)  # 64 features
    linen_model = DigitsMLP(param_dtype=jnp.float64)
    variables = linen_model.init(jax.random.key(0), x[:1])
    nnx_model = NnxDigitsMLP(rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    p = variables["params"]
    nnx_model.hidden.kernel[...] = p["Dense_0"]["kernel"]
    nnx_model.hidden.bias[...] = p["Dense_0"]["bias"]
    nnx_model.out.kernel[...] = p["Dense_1"]["kernel"]
    nnx_model.out.bias[...] = p["Dense_1"]["bias"]
    h = np.tanh(
        np.asarray(x) @ np.asarray(p["Dense_0"]["kernel"]) + np.asarray(p["Dense_0"]["bias"])
    )
    out = h @ np.asarray(p["Dense_1"]["kernel"]) + np.asarray(p["Dense_1"]["bias"])
    onehot = np.eye(10)[np.asarray(y)]
    for loss, hand in [
        (None, ce(jnp.asarray(out), y)),
        (mean_squared_error, float(np.mean((out - onehot) ** 2))),
    ]:
        f_linen, w_linen = loss_from_model(linen_model, variables, loss=loss)
        f_nnx, w_nnx = loss_from_model(nnx_model, loss=loss)
        assert float(f_linen(w_linen, (x, y))) == pytest.approx(hand, rel=1e-12)
        assert float(f_nnx(w_nnx, (x, y))) == pytest.approx(hand, rel=1e-12)


def test_mean_squared_error():
    out = jnp.array([[0.5, 0.1], [0.2, 0.9]])
    assert float(mean_squared_error(out, jnp.array([0, 1]))) == pytest.approx(
        (0.25 + 0.01 + 0.04 + 0.01) / 4
    )
    assert float(mean_squared_error(out, jnp.ones((2, 2)))) == pytest.approx(
        (0.25 + 0.81 + 0.64 + 0.01) / 4
    )
    with pytest.raises(ValueError, match="shape"):
        mean_squared_error(out, jnp.ones((2, 3)))


def test_custom_loss_and_plain_callable():
    model, variables = linen_variables()
    x, y = batch()
    loss_fn, params = loss_from_model(model, variables, loss=lambda o, lab: jnp.mean(jnp.square(o)))
    with standard():
        out = model.apply(variables, x, train=False)
    assert float(loss_fn(params, (x, y))) == pytest.approx(float(jnp.mean(out**2)), rel=1e-14)

    def plain(p, b):
        return jnp.sum(p)

    f, p = loss_from_model(plain, jnp.ones(3))
    assert f is plain and float(f(p, None)) == 3.0
    with pytest.raises(ValueError, match="plain callable"):
        loss_from_model(plain, jnp.ones(3), loss=mean_squared_error)


def test_mismatched_linen_params_name_the_leaf():
    model, variables = linen_variables()
    x, y = batch()
    wrong = jax.tree.map(lambda a: a, variables)
    wrong["params"]["Dense_1"]["kernel"] = jnp.zeros((6, 5))
    with pytest.raises(ValueError, match=r"Dense_1.*kernel.*\(6, 5\).*\(6, 3\)"):
        loss_from_model(model, wrong, data=(x, y))
    missing = {"params": {k: v for k, v in variables["params"].items() if k != "Dense_0"}}
    with pytest.raises(ValueError, match="missing.*Dense_0"):
        loss_from_model(model, {**missing, "batch_stats": variables["batch_stats"]}, data=(x, y))
    with pytest.raises(ValueError, match="'params' collection"):
        loss_from_model(model, variables["params"])
    with pytest.raises(ValueError, match="params is required"):
        loss_from_model(model)


def test_mismatched_nnx_params_name_the_leaf():
    model = NnxNet(nnx.Rngs(0))
    _, params = loss_from_model(model)
    _, wrong = loss_from_model(NnxNet(nnx.Rngs(1), width=7))
    with pytest.raises(ValueError, match=r"l1.*kernel.*\(4, 7\).*\(4, 6\)"):
        loss_from_model(model, wrong)
    assert params is not None


def test_non_scalar_loss_is_rejected():
    model, variables = linen_variables()
    x, y = batch()
    per_example = lambda o, lab: optax.softmax_cross_entropy_with_integer_labels(o, lab)  # noqa: E731
    with pytest.raises(ValueError, match="scalar"):
        loss_from_model(model, variables, loss=per_example, data=(x, y))
    loss_fn, params = loss_from_model(model, variables, loss=per_example)
    with pytest.raises(ValueError, match="scalar"):
        loss_fn(params, (x, y))


def test_bad_model_and_batch():
    with pytest.raises(TypeError, match="model"):
        loss_from_model(3, None)
    model, variables = linen_variables()
    loss_fn, params = loss_from_model(model, variables)
    with pytest.raises(TypeError, match="no labels"):
        loss_fn(params, batch()[0])
    with pytest.raises(TypeError, match="pair"):
        loss_fn(params, (batch()[0],))
    with pytest.raises(TypeError, match="train"):
        loss_from_model(model, variables, train="no")


def test_adapted_losses_run_in_the_simulator():
    from stability.simulate import simulate_async

    x, y = batch()
    model, variables = linen_variables()
    loss_fn, params = loss_from_model(model, variables)
    traj = simulate_async(loss_fn, params, (x, y), lr=0.1, tau=2, beta=0.5, steps=5)
    # batch statistics have zero gradient: the simulator leaves them alone
    for a, b in zip(
        jax.tree.leaves(traj.params["batch_stats"]),
        jax.tree.leaves(variables["batch_stats"]),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(traj.loss[-1]) < float(traj.loss[0])

    nnx_model = NnxNet(nnx.Rngs(0))
    # float64 running statistics like everything else (strict promotion in the simulator)
    nnx_model.bn.mean = nnx.BatchStat(nnx_model.bn.mean[...].astype(jnp.float64))
    nnx_model.bn.var = nnx.BatchStat(nnx_model.bn.var[...].astype(jnp.float64))
    loss_fn, params = loss_from_model(nnx_model)
    traj = simulate_async(loss_fn, params, (x, y), lr=0.1, num_workers=3, steps=5)
    assert isinstance(traj.params, nnx.State)
    assert float(traj.loss[-1]) < float(traj.loss[0])


def test_the_same_module_gives_the_same_loss_function():
    """Jitted consumers key compiled code on the loss object: no recompiles."""
    import jax.numpy as jnp
    from flax import nnx

    from stability.networks import examples
    from stability.networks.models import loss_from_model, mean_squared_error

    linen = examples.DigitsMLP(hidden=4, param_dtype=jnp.float64)
    variables = linen.init(jax.random.key(0), jnp.zeros((1, 64)))
    assert (
        loss_from_model(linen, variables, loss=mean_squared_error)[0]
        is loss_from_model(
            examples.DigitsMLP(hidden=4, param_dtype=jnp.float64),
            variables,
            loss=mean_squared_error,
        )[0]
    )
    model = examples.NnxDigitsMLP(hidden=4, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    first, params = loss_from_model(model)
    second, _ = loss_from_model(model)
    assert first is second
    x, y = examples.load_digits(8, dtype=jnp.float64)
    assert jnp.isfinite(first(params, (x, y)))
