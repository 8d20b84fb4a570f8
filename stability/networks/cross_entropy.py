"""Softmax cross-entropy whose first and second derivatives survive saturation.

A network trained to a minimum of the cross-entropy puts nearly all the softmax
mass on one class: in float32 most maxima ``p_k`` round to exactly 1.0. The usual
formulas then lose the curvature of those examples to cancellation:

- the gradient with respect to the logits, ``g = p - t`` (``t`` the target
  distribution), holds ``p_y - 1``: a difference of nearly equal numbers, zero in
  float32 once ``p_y`` rounds to 1;
- its derivative, the product of the logits' Hessian ``diag(p) - p p^T`` with a
  tangent ``v``, is ``p_i (v_i - p.v)``, and ``v_k - p.v`` is again such a
  difference.

Written from the largest logit ``z_k`` without those subtractions, with
``s = sum_{j != k} exp(z_j - z_k)`` (small at saturation, computed to full relative
accuracy):

    loss    = sum_j t_j (z_k - z_j) + log1p(s) sum_j t_j
    p_j     = exp(z_j - z_k) / (1 + s)  (j != k),   p_k = 1 / (1 + s)
    g_j     = p_j - t_j  (j != k),                  g_k = (1 - t_k) - s / (1 + s)
    (H v)_i = p_i (u_i - p.u),   u = v - v_k  (so u_k = 0 and p.u = sum_{j != k} p_j u_j)

Each line is a sum of terms of one sign or a difference of numbers that are not
close, so float32 products through the loss agree with float64 to a few units of
float32 rounding even when every ``p_k`` is 1.0 (measured in
``tests/test_cross_entropy.py``; ``optax.softmax_cross_entropy_with_integer_labels``
loses the curvature of such examples entirely). The derivatives are JAX custom
JVP rules, so reverse mode, forward mode and forward-over-reverse Hessian-vector
products all use them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "saturation_safe",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
]


def _saturation_parts(z):
    """``(is_k, s, p)``: the mask of the largest logit (first on ties), ``s =
    sum_{j != k} exp(z_j - z_k)`` (keepdims) and the softmax ``p``, all without
    subtracting nearly equal numbers."""
    k = jnp.argmax(z, axis=-1, keepdims=True)
    is_k = jnp.arange(z.shape[-1]) == k
    top = jnp.take_along_axis(z, k, axis=-1)
    e = jnp.where(is_k, 0, jnp.exp(jnp.where(is_k, 0, z - top)))
    s = jnp.sum(e, axis=-1, keepdims=True)
    p = jnp.where(is_k, 1, e) / (1 + s)
    return is_k, top, s, p


@jax.custom_jvp
def _logit_gradient(z, t):
    """``p - t`` with its ``k`` entry as ``(1 - t_k) - s / (1 + s)`` (module docstring)."""
    is_k, _, s, p = _saturation_parts(z)
    t_k = jnp.sum(jnp.where(is_k, t, 0), axis=-1, keepdims=True)
    return jnp.where(is_k, (1 - t_k) - s / (1 + s), p - t)


@_logit_gradient.defjvp
def _logit_gradient_jvp(primals, tangents):
    z, t = primals
    dz, dt = tangents
    is_k, _, _, p = _saturation_parts(z)
    u = dz - jnp.sum(jnp.where(is_k, dz, 0), axis=-1, keepdims=True)
    # The product with the softmax Jacobian diag(p) - p p^T, shifted by v_k (it
    # annihilates constants), so p.u is a sum of small terms.
    return _logit_gradient(z, t), p * (u - jnp.sum(p * u, axis=-1, keepdims=True)) - dt


@jax.custom_jvp
def _cross_entropy(z, t):
    """Per example: ``sum_j t_j (z_k - z_j) + log1p(s) sum_j t_j``."""
    _, top, s, _ = _saturation_parts(z)
    return jnp.sum(t * (top - z), axis=-1) + jnp.log1p(s[..., 0]) * jnp.sum(t, axis=-1)


@_cross_entropy.defjvp
def _cross_entropy_jvp(primals, tangents):
    z, t = primals
    dz, dt = tangents
    _, top, s, _ = _saturation_parts(z)
    log_normalizer = top + jnp.log1p(s)  # d loss / d t_j = logsumexp(z) - z_j
    out = _cross_entropy(z, t)
    tangent = jnp.sum(_logit_gradient(z, t) * dz, axis=-1)
    return out, tangent + jnp.sum(dt * (log_normalizer - z), axis=-1)


def softmax_cross_entropy(logits, labels):
    """Per-example softmax cross-entropy ``-sum_j t_j log softmax(z)_j`` of logits
    ``(..., C)`` against target distributions ``labels`` ``(..., C)`` (one-hot or
    smoothed), shape ``(...)``: `optax.softmax_cross_entropy` with first and second
    derivatives free of cancellation at saturation (module docstring)."""
    logits = jnp.asarray(logits)
    return _cross_entropy(logits, jnp.asarray(labels).astype(logits.dtype))


def softmax_cross_entropy_with_integer_labels(logits, labels):
    """Per-example softmax cross-entropy of logits ``(..., C)`` on integer class
    indices ``labels`` ``(...)``, shape ``(...)``:
    `optax.softmax_cross_entropy_with_integer_labels` with first and second
    derivatives free of cancellation at saturation (module docstring)."""
    logits = jnp.asarray(logits)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return _cross_entropy(logits, jax.lax.stop_gradient(onehot))


def _mean_integer(outputs, labels):
    return jnp.mean(softmax_cross_entropy_with_integer_labels(outputs, labels))


def _mean_distribution(outputs, labels):
    return jnp.mean(softmax_cross_entropy(outputs, labels))


def saturation_safe(loss):
    """``loss`` with optax's softmax cross-entropies replaced by their batch means here:
    `optax.softmax_cross_entropy_with_integer_labels` and `optax.softmax_cross_entropy`
    (per example) become the mean of this module's versions (the same values, derivatives
    free of cancellation); any other loss is returned unchanged. Only the functions
    themselves are recognised: a lambda that calls optax inside cannot be seen into."""
    import optax

    known = {
        optax.softmax_cross_entropy_with_integer_labels: _mean_integer,
        optax.softmax_cross_entropy: _mean_distribution,
    }
    try:
        return known.get(loss, loss)
    except TypeError:  # an unhashable callable
        return loss
