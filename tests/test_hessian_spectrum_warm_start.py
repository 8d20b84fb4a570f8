"""Warm starts of ``hessian_spectrum`` (``start=``): the same eigenvalue as a cold
start within the tolerance, fewer products between nearby parameters, a top
direction that the start does not hold is still found, and no gap-free bound is
claimed. Oracle: dense ``jax.hessian`` eigenvalues of a small model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stability import hessian_spectrum
from stability.curvature.hessian_spectrum import WARM_START_NOISE

TOL = 1e-3  # the tracker's default: three digits


def _mlp(seed=0, n_in=6, hidden=12, n_out=3, n_ex=40):
    rng = np.random.default_rng(seed)  # numpy: no RNG programs to compile
    params = {
        "w1": jnp.asarray(rng.standard_normal((n_in, hidden)) / np.sqrt(n_in)),
        "b1": jnp.zeros((hidden,), jnp.float64),
        "w2": jnp.asarray(rng.standard_normal((hidden, n_out)) / np.sqrt(hidden)),
    }
    x = jnp.asarray(rng.standard_normal((n_ex, n_in)))
    y = jnp.asarray(rng.standard_normal((n_ex, n_out)))

    def loss(p, batch):
        xb, yb = batch
        out = jnp.tanh(xb @ p["w1"] + p["b1"]) @ p["w2"]
        return 0.5 * jnp.mean(jnp.sum((out - yb) ** 2, axis=-1))

    return loss, params, (x, y)


def _dense_top(loss, params, batch):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return np.linalg.eigvalsh(np.asarray(_dense_hessian(loss, unravel, flat, batch)))


@jax.jit(static_argnames=("loss", "unravel"))
def _dense_hessian(loss, unravel, flat, batch):
    return jax.hessian(lambda f: loss(unravel(f), batch))(flat)


def _trajectory(loss, params, batch, steps, lr):
    grad = jax.jit(jax.grad(loss))
    out = [params]
    for _ in range(steps):
        g = grad(out[-1], batch)
        out.append(jax.tree_util.tree_map(lambda a, b: a - lr * b, out[-1], g))
    return out


def test_warm_equals_cold_and_needs_fewer_products():
    import jax.flatten_util  # noqa: F401

    loss, p0, batch = _mlp()
    path = _trajectory(loss, p0, batch, steps=6, lr=0.01)
    prev = hessian_spectrum(loss, path[0], batch, k=1, tol=TOL, return_vectors=True)
    warm_hvps, cold_hvps = [], []
    for p in path[1:]:
        truth = _dense_top(loss, p, batch)[-1]
        cold = hessian_spectrum(loss, p, batch, k=1, tol=TOL)
        warm = hessian_spectrum(loss, p, batch, k=1, tol=TOL, start=prev, return_vectors=True)
        for r in (cold, warm):
            assert r.converged[0]
            assert abs(r.sharpness - truth) <= r.sharpness_error
            assert r.sharpness <= truth + 1e-12  # a Ritz value never exceeds lambda_max
        assert warm.random_start is False and cold.random_start is True
        warm_hvps.append(warm.num_hvps)
        cold_hvps.append(cold.num_hvps)
        prev = warm
    assert sum(warm_hvps) * 3 <= 2 * sum(cold_hvps), (warm_hvps, cold_hvps)


def test_warm_start_from_a_params_like_pytree():
    import jax.flatten_util  # noqa: F401

    loss, p0, batch = _mlp(seed=1)
    r = hessian_spectrum(loss, p0, batch, k=1, tol=TOL, return_vectors=True)
    vec = jax.tree_util.tree_map(lambda x: x[0], r.eigenvectors)
    again = hessian_spectrum(loss, p0, batch, k=1, tol=TOL, start=vec)
    assert abs(again.sharpness - _dense_top(loss, p0, batch)[-1]) <= again.sharpness_error
    # Started from the converged eigenvector itself: far fewer products.
    assert again.num_hvps < r.num_hvps


def _quadratic(eigs):
    eigs = jnp.asarray(eigs, jnp.float64)

    def loss(p):
        return 0.5 * jnp.sum(eigs * p["w"] ** 2)

    return loss, {"w": jnp.zeros_like(eigs)}


def test_a_top_direction_missing_from_the_start_is_found():
    # The start is exactly the SECOND eigenvector, orthogonal to the top one: only
    # the random part of the warm start reaches the top direction.
    eigs = np.linspace(0.0, 1.0, 200)
    eigs[-1], eigs[-2] = 3.0, 2.0
    loss, params = _quadratic(eigs)
    start = {"w": jnp.zeros(200, jnp.float64).at[-2].set(1.0)}
    r = hessian_spectrum(loss, params, None, k=1, tol=1e-8, start=start)
    assert abs(r.sharpness - 3.0) <= max(r.sharpness_error, 1e-12)
    assert 0 < WARM_START_NOISE < 1


def test_warm_start_k2_and_power_method():
    eigs = np.linspace(0.0, 1.0, 100)
    eigs[-3:] = [2.0, 2.5, 4.0]
    loss, params = _quadratic(eigs)
    cold = hessian_spectrum(loss, params, None, k=2, tol=1e-9, return_vectors=True)
    np.testing.assert_allclose(cold.eigenvalues, [4.0, 2.5], atol=1e-8)
    warm = hessian_spectrum(loss, params, None, k=2, tol=1e-9, start=cold)
    np.testing.assert_allclose(warm.eigenvalues, [4.0, 2.5], atol=1e-8)
    assert warm.num_hvps < cold.num_hvps
    pw = hessian_spectrum(loss, params, None, k=2, tol=1e-9, method="power", max_hvps=400,
                          start=cold)  # fmt: skip
    np.testing.assert_allclose(pw.eigenvalues, [4.0, 2.5], atol=1e-6)


def test_warm_start_claims_no_gap_free_bound():
    loss, params = _quadratic(np.linspace(0.1, 2.0, 50))
    cold = hessian_spectrum(loss, params, None, k=1, tol=1e-10, return_vectors=True)
    assert np.isfinite(cold.bounds(1e-3)[0])
    warm = hessian_spectrum(loss, params, None, k=1, tol=1e-10, start=cold)
    assert warm.bounds(1e-3) == (np.inf, -np.inf)


def test_bad_starts_are_refused():
    loss, params = _quadratic(np.linspace(0.1, 2.0, 50))
    no_vecs = hessian_spectrum(loss, params, None, k=1, tol=1e-6)
    with pytest.raises(ValueError, match="start must hold eigenvectors"):
        hessian_spectrum(loss, params, None, start=no_vecs)
    with pytest.raises(ValueError, match="start must have the structure of params"):
        hessian_spectrum(loss, params, None, start={"w": jnp.ones(50), "b": jnp.ones(2)})
    with pytest.raises(ValueError, match="start must hold 50"):
        hessian_spectrum(loss, params, None, start={"w": jnp.ones(7)})
    with pytest.raises(ValueError, match="finite and nonzero"):
        hessian_spectrum(loss, params, None, start={"w": jnp.zeros(50)})
