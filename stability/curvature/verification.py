"""Float64 re-evaluation of Ritz pairs: the error of the products themselves.

A Lanczos run in float32 (JAX's default) is exact for the float32 arithmetic it
runs, but that arithmetic can be a few per cent from the network's Hessian: the
cross-entropy loses the curvature of saturated examples to cancellation, and at a
non-smooth point (a ReLU pre-activation at 0, a max-pool near-tie) float32 and
float64 select different pieces. A Ritz residual computed from float32 products
bounds the distance to an eigenvalue of the float32 operator only.

The remedy here costs one product per Ritz vector: the working-precision Ritz
vectors ``y_i`` (unit norm) are multiplied by the Hessian in float64 (parameters
and floating data cast up exactly, under a scoped ``jax.enable_x64``), giving

    theta_i = y_i^T H y_i,          r_i = || H y_i - theta_i y_i ||,

so some eigenvalue of the float64 Hessian lies within ``r_i`` of ``theta_i``
(Weyl / residual theorem), ``theta_1 <= lambda_max`` and ``theta_min >= lambda_min``
(Rayleigh quotients), whatever the float32 products did. The difference
``|theta_i^(32) - theta_i|`` between the working-precision Ritz value and the
float64 one is the products' own error along ``y_i``; where it exceeds rounding,
the two precisions computed different Hessians (a non-smooth point, or a loss that
loses precision), and the bars are widened by it so that no certificate depends on
which piece was selected.

This module holds the pieces that need no eigensolver: the casts, the Ritz pairs,
and where the float64 products can run. `stability.hessian_spectrum` calls them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "PRECISION_TOLERANCE",
    "float64_devices",
    "needs_verification",
    "ritz_pairs",
    "to_float64",
]

# A difference between the working-precision and float64 Ritz values above this
# fraction of the spectral scale is not rounding: smooth float32 products with a
# cancellation-free loss agree with float64 to about 1e-6 (tests/test_verification.py);
# pieces of a non-smooth loss differ by 1e-3 to 1e-1 (issue 20's ResNet: 5 %).
PRECISION_TOLERANCE = 1e-4


def needs_verification(dtype) -> bool:
    """Whether products in ``dtype`` need the float64 check: every floating dtype
    narrower than float64 (float32, bfloat16, float16)."""
    return np.dtype(dtype).itemsize < 8


def _cast_leaf(x):
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or dtype == np.float64:
        return x
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    return jnp.asarray(x).astype(jnp.float64)


def to_float64(tree):
    """``tree`` with every floating leaf cast to float64 (exact: float32, bfloat16 and
    float16 values are float64 values); other leaves unchanged. Call under
    ``jax.enable_x64(True)`` for JAX arrays."""
    return jax.tree_util.tree_map(_cast_leaf, tree)


def float64_devices(devices):
    """Where the float64 products run: ``devices`` as given (None: the run's default),
    unless they are TPUs, which have no float64 arithmetic: then this process's CPU
    device (one pass over the data on the CPU, the cost of the check there)."""
    platforms = {d.platform for d in (jax.local_devices() if devices is None else devices)}
    if "tpu" in platforms:
        return jax.local_devices(backend="cpu")[:1]
    return devices


def ritz_pairs(vectors, products):
    """``(theta, residual)`` for the rows ``y_i`` of ``vectors`` (m, n) and their
    products ``H y_i`` (m, n), in float64: ``theta_i = y_i^T H y_i / y_i^T y_i`` and
    ``residual_i = ||H y_i - theta_i y_i|| / ||y_i||``."""
    y = np.asarray(vectors, np.float64)
    hy = np.asarray(products, np.float64)
    norms = np.linalg.norm(y, axis=1)
    y = y / norms[:, None]
    hy = hy / norms[:, None]
    theta = np.einsum("ij,ij->i", y, hy)
    residual = np.linalg.norm(hy - theta[:, None] * y, axis=1)
    return theta, residual
