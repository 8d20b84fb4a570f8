"""The memory budget of the Krylov basis: a basis that would not fit is refused
before the first product (a warning) and the run goes basis-free, with the same
top eigenvalue (dense ``numpy`` eigenvalues as the oracle)."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from stability import hessian_spectrum
from stability.curvature.hessian_spectrum import default_memory_budget


def _quadratic(n=300, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    eigs = np.linspace(-0.5, 1.0, n)
    eigs[-1] = 2.0
    h = jnp.asarray((q * eigs) @ q.T)

    def loss(p, hm):
        return 0.5 * p["w"] @ (hm[0] @ p["w"])  # a batch of one matrix

    return loss, {"w": jnp.zeros(n)}, h, eigs


def test_default_budget_is_positive_and_bounded():
    b = default_memory_budget()
    assert 0 < b < 2**62


def test_a_basis_over_budget_goes_basis_free_before_starting():
    loss, params, h, eigs = _quadratic()
    # (max_hvps + 1) x 300 float64 numbers = 41 x 2400 bytes = 98,400 bytes.
    with pytest.warns(UserWarning, match="exceeds memory_budget"):
        r = hessian_spectrum(loss, params, h[None], k=1, tol=1e-10, max_hvps=40,
                             memory_budget=50_000)  # fmt: skip
    assert abs(r.sharpness - eigs[-1]) <= max(r.sharpness_error, 1e-12)
    assert r.converged[0]


def test_a_basis_within_budget_is_kept_without_warning():
    loss, params, h, eigs = _quadratic()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = hessian_spectrum(loss, params, h[None], k=1, tol=1e-10, max_hvps=40,
                             memory_budget=200_000)  # fmt: skip
    assert abs(r.sharpness - eigs[-1]) <= max(r.sharpness_error, 1e-12)


def test_basis_free_eigenvectors_under_a_tight_budget():
    loss, params, h, eigs = _quadratic(seed=1)
    with pytest.warns(UserWarning, match="running without a basis"):
        r = hessian_spectrum(loss, params, h[None], k=1, tol=1e-10, max_hvps=60,
                             memory_budget=1000, return_vectors=True)  # fmt: skip
    v = np.asarray(r.eigenvectors["w"][0])
    hv = np.asarray(h) @ v
    assert np.linalg.norm(hv - r.sharpness * v) <= 1e-6


def test_memory_budget_must_be_positive():
    loss, params, h, _ = _quadratic()
    with pytest.raises(ValueError, match="memory_budget"):
        hessian_spectrum(loss, params, h[None], memory_budget=-1)
