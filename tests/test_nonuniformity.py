"""Per-example curvature statistics against dense per-example Hessians.

The oracle forms every example's Hessian with ``jax.hessian`` on a tiny tanh
network (numpy does the rest: H, Sigma = mean H_i^2 - H^2, eigenvectors), so it
shares nothing with the Hessian-vector products, the chunking, the device
placement or the Lanczos loop under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import stability as st
from stability.curvature.nonuniformity import directional_nonuniformity, nonuniformity_spectrum


def _loss(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    out = h @ params["w2"]
    return 0.5 * jnp.mean(jnp.sum(jnp.square(out - y), axis=-1))


def _problem(n=19, seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "w1": jnp.asarray(rng.normal(size=(3, 4))),
        "b1": jnp.asarray(rng.normal(size=(4,)) * 0.1),
        "w2": jnp.asarray(rng.normal(size=(4, 2))),
    }
    x = jnp.asarray(rng.normal(size=(n, 3)))
    y = jnp.asarray(rng.normal(size=(n, 2)))
    return params, (x, y)


def _dense(params, data):
    """Per-example Hessians (n, p, p), H, Sigma by jax.hessian and numpy."""
    flat, unravel = ravel_pytree(params)
    x, y = data

    def one(f, xi, yi):
        return _loss(unravel(f), (xi[None], yi[None]))

    hs = np.asarray(jax.vmap(jax.hessian(one), in_axes=(None, 0, 0))(flat, x, y))
    h = hs.mean(axis=0)
    sigma = np.einsum("nij,njk->ik", hs, hs) / hs.shape[0] - h @ h
    return hs, h, sigma, unravel


def test_directional_nonuniformity_matches_dense_hessians_along_the_top_eigenvector():
    params, data = _problem()
    hs, h, sigma, unravel = _dense(params, data)
    evals, evecs = np.linalg.eigh(h)
    v = evecs[:, -1]
    got = directional_nonuniformity(_loss, params, data, unravel(jnp.asarray(v)))
    assert got.num_examples == 19
    assert got.curvature == pytest.approx(evals[-1], rel=1e-12)
    assert got.variance == pytest.approx(v @ sigma @ v, rel=1e-10)
    assert got.nonuniformity == pytest.approx(np.sqrt(v @ sigma @ v), rel=1e-10)
    proj = np.einsum("i,nij,j->n", v, hs, v)
    assert got.in_direction == pytest.approx(np.var(proj), rel=1e-10)
    assert got.in_direction < got.variance  # these Hessians do not commute
    assert got.residual < 1e-10 * evals[-1]


def test_directional_nonuniformity_of_any_direction_and_every_data_form():
    params, data = _problem()
    hs, h, sigma, unravel = _dense(params, data)
    u = np.random.default_rng(3).normal(size=h.shape[0])
    u_unit = u / np.linalg.norm(u)
    a = u_unit @ h @ u_unit
    expect = (a, u_unit @ sigma @ u_unit, np.linalg.norm(h @ u_unit - a * u_unit))
    x, y = data
    # 8 devices: 16 examples sharded over them, 3 replicated (the shapes of one batch
    # of 19), merged across chunks and batches.
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    forms = {
        "flat vector, one batch in chunks": (jnp.asarray(3.0 * u), data, {"chunk_size": 16}),
        "pytree, list of batches": (unravel(jnp.asarray(u)), batches, {}),
        "iterator factory": (jnp.asarray(u), lambda: iter(batches), {}),
    }
    for name, (direction, d, kw) in forms.items():
        got = directional_nonuniformity(_loss, params, d, direction, **kw)
        assert (got.curvature, got.variance, got.residual) == pytest.approx(expect, rel=1e-10), name
        assert got.num_examples == 19, name


def test_direction_from_a_spectrum_is_its_top_eigenvector():
    params, data = _problem()
    hs, h, sigma, _ = _dense(params, data)
    spec = st.hessian_spectrum(_loss, params, data, k=1, tol=1e-10, return_vectors=True,
                               progress=False)  # fmt: skip
    got = directional_nonuniformity(_loss, params, data, spec)
    v = np.linalg.eigh(h)[1][:, -1]
    assert got.variance == pytest.approx(v @ sigma @ v, rel=1e-8)
    assert got.curvature == pytest.approx(spec.sharpness, rel=1e-12)


def test_nonuniformity_spectrum_matches_dense_sigma():
    params, data = _problem()
    _, _, sigma, _ = _dense(params, data)
    top = np.linalg.eigvalsh(sigma)[-1]
    got = nonuniformity_spectrum(_loss, params, data, tol=1e-9, max_products=30,
                                 return_vector=True)  # fmt: skip
    assert got.converged and got.num_products <= 30
    assert got.eigenvalue == pytest.approx(top, rel=1e-9)
    assert got.nonuniformity == pytest.approx(np.sqrt(top), rel=1e-9)
    vec = np.asarray(ravel_pytree(got.eigenvector)[0])
    assert vec @ sigma @ vec == pytest.approx(top, rel=1e-7)


def test_bad_input_names_the_argument():
    params, data = _problem()
    with pytest.raises(ValueError, match="data"):
        directional_nonuniformity(_loss, params, None, params)
    with pytest.raises(ValueError, match="direction"):
        directional_nonuniformity(_loss, params, data, jnp.zeros(5))
    with pytest.raises(ValueError, match="direction"):
        directional_nonuniformity(
            _loss, params, data, jax.tree_util.tree_map(jnp.zeros_like, params)
        )
    with pytest.raises(TypeError, match="chunk_size"):
        directional_nonuniformity(_loss, params, data, params, chunk_size=2.5)
    with pytest.raises(TypeError, match="loss"):
        nonuniformity_spectrum("loss", params, data)


def test_wu_ma_e_matrix_matches_dense():
    params, data = _problem()
    _, h, sigma, _ = _dense(params, data)
    lr, gamma = 0.3, 0.4
    eye = np.eye(h.shape[0])
    dense = (eye - lr * h) @ (eye - lr * h) + lr * lr * gamma * sigma
    top = np.linalg.eigvalsh(dense)[-1]
    got = st.nonuniformity.wu_ma_e_spectrum(
        _loss, params, data, lr=lr, variance_factor=gamma, tol=1e-10, max_products=30,
        return_vector=True,
    )  # fmt: skip
    assert got.converged and got.lambda_max == pytest.approx(top, rel=1e-9)
    assert got.excess == pytest.approx((top - 1) / lr, rel=1e-8)
    vec = np.asarray(ravel_pytree(got.eigenvector)[0])
    assert vec @ dense @ vec == pytest.approx(top, rel=1e-8)
    with pytest.raises(ValueError, match="variance_factor"):
        st.nonuniformity.wu_ma_e_spectrum(_loss, params, data, lr=0.1, variance_factor=2.0)
