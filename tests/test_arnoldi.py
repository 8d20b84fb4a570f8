"""Krylov-Schur Arnoldi (stability/curvature/arnoldi.py) against numpy.linalg.eig on
random non-normal matrices: a real dominant value, complex-conjugate dominant pairs,
clusters, exactly invariant subspaces, the whole space."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from stability.curvature.arnoldi import arnoldi


def _similar(values_blocks, n, seed, strength=0.3):
    """A non-normal matrix ``S D S^-1`` with the given diagonal/2x2 blocks in D."""
    rng = np.random.default_rng(seed)
    d = np.zeros((n, n))
    i = 0
    for block in values_blocks:
        b = np.atleast_2d(block)
        d[i : i + b.shape[0], i : i + b.shape[0]] = b
        i += b.shape[0]
    d[i:, i:] = np.diag(rng.uniform(-0.5, 0.5, n - i))
    s = np.eye(n) + strength * rng.standard_normal((n, n)) / np.sqrt(n)
    return s @ d @ np.linalg.inv(s)


def _rotation(r, angle):
    c, s = np.cos(angle), np.sin(angle)
    return r * np.array([[c, -s], [s, c]])


def _check(a, res, k, rtol=1e-9):
    """Every Ritz value is an eigenvalue, the k of largest modulus, with true residuals."""
    ev = np.linalg.eigvals(a)
    top = np.sort(np.abs(ev))[::-1][:k]
    np.testing.assert_allclose(np.abs(res.eigenvalues), top, rtol=rtol)
    dist = np.min(np.abs(res.eigenvalues[:, None] - ev[None, :]), axis=1)
    assert dist.max() <= rtol * top[0]
    if res.vectors is not None:
        for z, x, r in zip(res.eigenvalues, res.vectors, res.residuals, strict=True):
            true = np.linalg.norm(a @ x - z * x) / np.linalg.norm(x)
            assert true == pytest.approx(r, rel=1e-3, abs=1e-13 * top[0])


def test_random_non_normal_matrix():
    rng = np.random.default_rng(0)
    n = 200
    a = rng.standard_normal((n, n)) / np.sqrt(n) + 0.05 * np.triu(rng.standard_normal((n, n)), 1)
    a[0, 0] += 3.0  # a well-separated real dominant value
    res = arnoldi(lambda x: a @ x, rng.standard_normal(n), k=1, tol=1e-12, return_vectors=True)
    assert res.converged.all() and res.eigenvalues[0].imag == 0
    _check(a, res, 1)


def test_complex_conjugate_dominant_pair():
    a = _similar([_rotation(1.3, 0.7), 0.95, 0.9], 150, seed=1)
    res = arnoldi(lambda x: a @ x, np.ones(150), k=2, tol=1e-12, return_vectors=True)
    assert res.converged.all()
    assert res.eigenvalues[0] == pytest.approx(np.conj(res.eigenvalues[1]), rel=1e-12)
    assert res.eigenvalues[0].imag > 0  # the pair's positive imaginary part first
    assert res.radius == pytest.approx(1.3, rel=1e-10)
    _check(a, res, 2)


def test_two_pairs_and_a_cluster():
    blocks = [_rotation(1.2, 2.0), _rotation(1.19, 0.3), 1.0, 0.999, 0.998, 0.997]
    a = _similar(blocks, 200, seed=2)
    res = arnoldi(lambda x: a @ x, np.random.default_rng(2).standard_normal(200), k=7,
                  tol=1e-11, max_products=3000, return_vectors=True)  # fmt: skip
    assert res.converged.all()
    _check(a, res, 7)
    assert res.restarts >= 1


def test_invariant_subspace_and_whole_space():
    rng = np.random.default_rng(3)
    u, w = rng.standard_normal((60, 3)), rng.standard_normal((3, 60))
    low = u @ np.diag([3.0, -2.0, 1.0]) @ w / 60  # rank 3: Krylov space breaks down
    res = arnoldi(lambda x: low @ x, rng.standard_normal(60), k=2, tol=1e-12)
    assert res.converged.all()
    _check(low, res, 2)
    small = rng.standard_normal((8, 8))
    res = arnoldi(lambda x: small @ x, rng.standard_normal(8), k=5, tol=1e-12)
    assert res.converged.all() and res.restarts == 0
    _check(small, res, 5, rtol=1e-10)


def test_jax_matvec_and_stop_when():
    a = _similar([_rotation(2.0, 1.0)], 80, seed=4)
    aj = jnp.asarray(a)
    seen = []

    def stop(est):
        seen.append(est.products)
        return est.products >= 5

    res = arnoldi(lambda x: aj @ x, np.ones(80), k=2, stop_when=stop)
    assert res.products == 5 and seen[-1] == 5 and seen == sorted(seen)
    res = arnoldi(lambda x: aj @ x, np.ones(80), k=2, tol=1e-12)
    _check(a, res, 2)


def test_budget_flags_unconverged():
    a = _similar([1.0, 0.9999999, 0.9999998], 100, seed=5)
    res = arnoldi(lambda x: a @ x, np.ones(100), k=3, tol=1e-14, max_products=25)
    assert res.products == 25 and not res.converged.all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(matvec=None), "matvec"),
        (dict(v0=np.zeros(5)), "v0"),
        (dict(v0=np.ones((2, 3))), "v0"),
        (dict(k=0), "k"),
        (dict(k=5), "k"),
        (dict(tol=0.0), "tol"),
        (dict(max_products=0), "max_products"),
        (dict(krylov_dim=2), "krylov_dim"),
        (dict(stop_when=3), "stop_when"),
        (dict(matvec=lambda x: np.ones(3)), "matvec"),
        (dict(matvec=lambda x: np.full(5, np.nan)), "matvec"),
    ],
)
def test_argument_errors(kwargs, match):
    args = dict(matvec=lambda x: 2 * x, v0=np.ones(5))
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=match):
        arnoldi(args.pop("matvec"), args.pop("v0"), **args)
