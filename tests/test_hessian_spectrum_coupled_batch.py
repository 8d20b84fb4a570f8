"""A loss that couples the examples of a batch (batch statistics, as in training
mode): with ``loss.couples_examples = True`` a batch that does not divide over the 8
test devices runs whole, so the spectrum is that of the user's full-batch loss
(dense ``jax.hessian`` oracle); without the flag it would be a different function."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from stability import hessian_spectrum
from stability.curvature import hvp


def _loss(p, batch):
    x, y = batch
    h = x @ p["w1"]
    h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-3)  # batch normalisation
    return 0.5 * jnp.mean(jnp.sum((jnp.tanh(h) @ p["w2"] - y) ** 2, -1))


def _coupled(p, batch):
    return _loss(p, batch)


_coupled.couples_examples = True


def _problem(n_ex=13):
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.standard_normal((3, 5))),
        "w2": jnp.asarray(rng.standard_normal((5, 2)) / 2),
    }
    batch = (
        jnp.asarray(rng.standard_normal((n_ex, 3))),
        jnp.asarray(rng.standard_normal((n_ex, 2))),
    )
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    h = jax.hessian(lambda f: _loss(unravel(f), batch))(flat)
    return params, batch, np.linalg.eigvalsh(np.asarray(h))


def test_a_coupled_batch_is_placed_whole():
    _, batch, _ = _problem()
    mesh = hvp.make_mesh(None)
    main, rem, n = hvp.place_batch(batch, mesh, whole=True)
    assert main is None and n == 13 and hvp.batch_size(rem) == 13
    main, rem, n = hvp.place_batch(batch, mesh)
    assert hvp.batch_size(main) == 8 and hvp.batch_size(rem) == 5


def test_spectrum_of_the_full_batch_loss():
    params, batch, eigs = _problem()
    r = hessian_spectrum(_coupled, params, batch, k=2, tol=1e-10)
    np.testing.assert_allclose(r.eigenvalues, eigs[::-1][:2], rtol=1e-8)
    # Split (the flag absent) it is the Hessian of another function.
    split = hessian_spectrum(_loss, params, batch, k=1, tol=1e-10)
    assert abs(split.sharpness - eigs[-1]) > 1e-3


def test_loss_from_model_sets_the_flag_in_training_mode():
    import flax.linen as nn

    from stability import loss_from_model

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(4)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(3)(x)

    x = jnp.asarray(np.random.default_rng(1).standard_normal((6, 2)), jnp.float32)
    variables = Net().init(jax.random.key(0), x)
    train_loss, _ = loss_from_model(Net(), variables, train=True)
    eval_loss, _ = loss_from_model(Net(), variables, train=False)
    assert getattr(train_loss, "couples_examples", False) is True
    assert not getattr(eval_loss, "couples_examples", False)
