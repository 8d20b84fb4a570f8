"""Hessian-vector products against the dense Hessian (jax.hessian)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from stability.curvature.hvp import (
    batch_size,
    flatten_params,
    grad_sum,
    hvp_sum,
    make_mesh,
    place_batch,
    split_batch,
    trainable_mask,
)


def _mlp_loss(p, batch):
    x, y = batch
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return jnp.mean(jnp.sum((h @ p["w2"] - y) ** 2, axis=1))


def _setup(n=37):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, 5)))
    y = jnp.asarray(rng.normal(size=(n, 2)))
    p = {
        "w1": jnp.asarray(rng.normal(size=(5, 7)) * 0.5),
        "b1": jnp.asarray(rng.normal(size=7) * 0.1),
        "w2": jnp.asarray(rng.normal(size=(7, 2)) * 0.5),
        "step": jnp.asarray(3, jnp.int32),  # a non-float leaf: passed through
    }
    return p, (x, y)


def _dense(p, batch):
    floats = {k: v for k, v in p.items() if k != "step"}
    flat, unravel = ravel_pytree(floats)
    h = jax.hessian(lambda f: _mlp_loss(unravel(f), batch))(flat)
    g = jax.grad(lambda f: _mlp_loss(unravel(f), batch))(flat)
    return np.asarray(h), np.asarray(g)


def test_mask_and_flatten_round_trip():
    p, _ = _setup()
    mask = trainable_mask(p)
    assert mask == (True, False, True, True)  # leaves in key order b1, step, w1, w2
    fp = flatten_params(p, mask)
    assert fp.flat.shape == (7 + 35 + 14,)
    back = fp.unravel(fp.flat)
    for k in p:
        assert back[k].dtype == p[k].dtype
        np.testing.assert_array_equal(back[k], p[k])
    only_w = trainable_mask(p, lambda path, x: path[0].key.startswith("w"))
    assert only_w == (False, False, True, True)


def test_hvp_matches_dense_hessian_on_one_device():
    p, batch = _setup()
    h, g = _dense(p, batch)
    mask = trainable_mask(p)
    vecs = jnp.asarray(np.random.default_rng(1).normal(size=(2, h.shape[0])))
    main, rem, n = place_batch(batch, None)
    acc, val = hvp_sum(_mlp_loss, mask, p, main, rem, vecs, jnp.zeros_like(vecs))
    np.testing.assert_allclose(np.asarray(acc) / n, np.asarray(vecs) @ h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(val) / n, float(_mlp_loss(p, batch)), rtol=1e-13)
    gval, grad = grad_sum(_mlp_loss, mask, p, main, rem)
    np.testing.assert_allclose(np.asarray(grad) / n, g, rtol=1e-12, atol=1e-14)


def test_sharded_with_remainder_matches_dense():
    # 37 examples over 8 devices: 32 sharded + 5 replicated, weighted exactly.
    p, batch = _setup(37)
    h, _ = _dense(p, batch)
    mesh = make_mesh(jax.devices())
    assert mesh is not None and mesh.devices.size == len(jax.devices())
    main, rem, n = place_batch(batch, mesh)
    ndev = len(jax.devices())
    assert batch_size(main) == 37 - 37 % ndev and n == 37
    assert (rem is None) == (37 % ndev == 0)
    vecs = jnp.asarray(np.random.default_rng(2).normal(size=(1, h.shape[0])))
    acc, _ = hvp_sum(_mlp_loss, trainable_mask(p), p, main, rem, vecs, jnp.zeros_like(vecs))
    np.testing.assert_allclose(np.asarray(acc)[0] / n, h @ np.asarray(vecs)[0], rtol=1e-11)


def test_split_batch_keeps_every_example():
    _, batch = _setup(11)
    main, rem = split_batch(batch, 4)
    assert batch_size(main) == 8 and batch_size(rem) == 3
    main, rem = split_batch(batch, 16)
    assert main is None and batch_size(rem) == 11
