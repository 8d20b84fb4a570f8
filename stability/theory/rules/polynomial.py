"""Characteristic polynomials ``P(z) = A(z) + q B(z)`` of the rules.

Along one Hessian eigenvalue ``a`` (``q = lr * a``) every rule is a scalar linear
recurrence whose characteristic polynomial is affine in q, A monic (each rule's
file gives its A and B and their derivation; docs/theory.md section 3). Random
delays (``stability.theory.delays``, first-moment model) replace ``z^-tau`` by
``S(z) = sum_k p_k z^-k`` and clear denominators with ``z^K``: with ``D(z) = z^K
S(z) = sum_k p_k z^(K-k)`` a rule's A and B are polynomials in z and D (a fixed
delay is D = 1 padded to tau + 1 coefficients). Coefficients are stored in
DESCENDING powers (numpy ``polyval``/``roots`` order), length ``degree + 1``, leading
batch axes from beta.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from stability.theory.delays import DelayDistribution, static_delay
from stability.theory.precision import float_dtype
from stability.theory.rules.base import as_rule


class CharacteristicPolynomial(NamedTuple):
    """``P(z) = A(z) + q B(z)``; coefficients in descending powers.

    ``a``, ``b``: arrays of shape ``(..., degree + 1)`` (batch axes from beta);
    ``a[..., 0] == 1``.
    """

    a: jnp.ndarray
    b: jnp.ndarray

    @property
    def degree(self) -> int:
        """The degree of ``P`` (number of roots; the companion matrix's order)."""
        return self.a.shape[-1] - 1

    def coefficients(self, q):
        """The coefficients of ``A + q B`` (q broadcast against the batch axes)."""
        q = jnp.asarray(q)
        return self.a + q[..., None] * self.b


def delay_coefficients(delay, dtype, xp=jnp):
    """``D(z)``'s descending coefficients: a distribution's probabilities, or ``z^0``
    padded to ``tau + 1`` coefficients for a fixed (Python int) delay."""
    if isinstance(delay, DelayDistribution):
        return xp.asarray(np.asarray(delay.probabilities), dtype=dtype)
    d = np.zeros(delay + 1, dtype=dtype)
    d[delay] = 1.0
    return xp.asarray(d)


def rule_polynomial(rule, delay, beta, xp=jnp):
    """``(A, B)`` of ``rule`` (a Rule) for a checked delay (Python int or distribution)
    and beta (an array of the working dtype): equal shapes ``beta.shape + (n + 1,)``.
    Trusts its inputs (the public functions check them)."""
    beta = xp.asarray(beta)
    d = delay_coefficients(delay, beta.dtype, xp)
    a, b = rule.polynomial(d, beta, xp)
    batch = beta.shape
    b = xp.broadcast_to(b, batch + b.shape[-1:])
    pad = [(0, 0)] * (b.ndim - 1) + [(a.shape[-1] - b.shape[-1], 0)]
    b = xp.pad(b, pad)
    return xp.broadcast_to(a, b.shape), b


def characteristic_polynomial(tau, beta=0.0, *, momentum="heavy_ball") -> CharacteristicPolynomial:
    """``P(z) = A(z) + q B(z)`` of a rule with delay ``tau`` (int or distribution).

    ``tau`` must be concrete (it fixes the degree: tau + 2, or K + 2 for a
    distribution with max delay K; gd is built as heavy ball with beta = 0, gd's
    polynomial times z). ``beta`` may be an array (batch axes). ``momentum``: a rule
    name or a `stability.theory.rules.Rule`.
    """
    rule = as_rule(momentum, "momentum")
    rule.check_beta(beta, "beta")
    delay = static_delay(tau, "tau")
    extra = (delay.probabilities,) if isinstance(delay, DelayDistribution) else ()
    dtype = float_dtype(beta, *extra)
    return CharacteristicPolynomial(*rule_polynomial(rule, delay, jnp.asarray(beta, dtype)))
