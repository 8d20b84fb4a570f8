"""Companion (transition) matrices and spectral radii of the linearised rules.

Along one Hessian eigenvalue ``a`` the weight sequence of any rule obeys the
linear recurrence with characteristic polynomial ``P(z) = A(z) + q B(z)``,
``q = lr * a`` (``stability.rules``). In delay coordinates
``x_t = (w_t, w_{t-1}, ..., w_{t-m+1})`` (m = degree of P, i.e. tau + 2 for the
momentum rules) the update is ``x_{t+1} = C x_t`` with C the companion matrix of
P: first row ``-p_1, ..., -p_m`` (P monic, descending coefficients), ones on the
subdiagonal. Its eigenvalues are the roots of P, so the minimum is linearly
stable along that eigenvalue iff ``spectral_radius < 1`` (THEORY.md section 2).
"""

from __future__ import annotations

import jax.numpy as jnp

from stability.rules import characteristic_polynomial, float_dtype
from stability.validation import check_finite, check_lr


def companion_from_coefficients(coefficients):
    """Companion matrix of monic polynomials (descending coefficients, shape (..., m+1)).

    Returns shape ``(..., m, m)``: first row ``-c[1:]``, ones on the subdiagonal.
    """
    c = jnp.asarray(coefficients)
    m = c.shape[-1] - 1
    sub = jnp.eye(m - 1, m, dtype=c.dtype) if m > 1 else jnp.zeros((0, m), c.dtype)
    sub = jnp.broadcast_to(sub, c.shape[:-1] + sub.shape)
    return jnp.concatenate([-c[..., None, 1:], sub], axis=-2)


def _coefficients(sharpness, lr, tau, beta, momentum):
    check_finite("sharpness", sharpness)
    check_lr(lr, "lr")
    dtype = float_dtype(sharpness, lr, beta)
    sharpness = jnp.asarray(sharpness, dtype)
    lr = jnp.asarray(lr, dtype)
    beta = jnp.asarray(beta, dtype)
    shape = jnp.broadcast_shapes(sharpness.shape, lr.shape, beta.shape)
    poly = characteristic_polynomial(tau, jnp.broadcast_to(beta, shape), momentum=momentum)
    q = jnp.broadcast_to(lr * sharpness, shape)
    return poly.coefficients(q)


def companion_matrix(sharpness, lr, tau, beta=0.0, *, momentum: str = "heavy_ball"):
    """The transition matrix of the linearised update along one Hessian eigenvalue.

    Args:
      sharpness: the Hessian eigenvalue ``a`` (array; broadcasts with lr, beta).
      lr: learning rate (> 0).
      tau: the delay, a concrete Python int (it fixes the matrix size, so it is
        static under ``jax.jit``), or a ``DelayDistribution`` (first-moment model).
      beta: momentum in [0, 1).
      momentum: "heavy_ball" (default), "nesterov" or "shifted".

    Returns:
      Array of shape ``broadcast(sharpness, lr, beta).shape + (m, m)``, m = tau + 2
      (K + 2 for a distribution with largest delay K): the companion matrix of
      ``P(z) = A(z) + lr * sharpness * B(z)`` acting on ``(w_t, ..., w_{t-m+1})``.
    """
    return companion_from_coefficients(_coefficients(sharpness, lr, tau, beta, momentum))


def spectral_radius_from_coefficients(coefficients):
    """Largest root modulus of monic polynomials (eigenvalues of the companion)."""
    roots = jnp.linalg.eigvals(companion_from_coefficients(coefficients))
    return jnp.max(jnp.abs(roots), axis=-1)


def spectral_radius(sharpness, lr, tau, beta=0.0, *, momentum: str = "heavy_ball"):
    """Spectral radius of :func:`companion_matrix` (< 1 means linearly stable).

    Broadcasts over sharpness, lr and beta for a given (concrete) tau or delay
    distribution. Computed from the eigenvalues of the companion matrix
    (``jnp.linalg.eigvals``, backward stable: exact to rounding in float64),
    which is O(m^3) per point.
    """
    return spectral_radius_from_coefficients(_coefficients(sharpness, lr, tau, beta, momentum))
