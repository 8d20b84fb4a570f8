"""Nesterov momentum (the torch/optax Nesterov form) with a stale gradient.

``v+ = beta v + g_{t-tau}``, ``w+ = w - lr (g_{t-tau} + beta v+)``; along a Hessian
eigenvalue (``q = lr a``): ``P = z^tau (z - 1)(z - beta) + q ((1 + beta) z - beta)``,
for a delay distribution ``z^K (z - 1)(z - beta) + q ((1 + beta) z - beta) D(z)``.

Derivation: v = q' z^-tau / (z - beta) (q' = a), z - 1 = -lr a z^-tau (1 + beta z /
(z - beta)).

Boundary locus: X = (1-beta) c^2 + (1+beta)(1+2beta) s^2, Y = 2 beta^2 c s, alpha =
(tau + 1/2) theta, |q| = 2s |e^{i theta} - beta| / |(1+beta) e^{i theta} - beta|;
g is nearly flat at tau = 1, where the cubic's unit-circle condition ``1 - a0^2 +
a0 a2 - a1 = 0`` gives ``beta^2 q^2 + (1 - beta^2) q - (1 - beta) = 0``. Sparse form:
m = tau, U = (z - 1)(z - beta), V = q (1 + beta) z - q beta.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from stability.theory.rules.base import Rule, a_momentum, g_over_s, momentum_step, polymul
from stability.theory.sincos import sincos


class Nesterov(Rule):
    """``v+ = beta v + g``, ``w+ = w - lr (g + beta v+)`` (the gradient ``g`` stale)."""

    name = "nesterov"
    locus_span = 1.5

    def polynomial(self, d, beta, xp=jnp):
        b = polymul(d, xp.stack([1.0 + beta, -beta], axis=-1), xp)  # ((1 + beta) z - beta) D
        return a_momentum(d, beta, xp), b

    def update(self, w, v, g, lr, beta):
        return momentum_step(w, v, g, lr, beta, nesterov=True)

    def crossing(self, theta, tau, beta):
        s, c = sincos(0.5 * theta)
        k = (1 + beta) * (1 + 2 * beta)
        x = (1 - beta) * c * c + k * s * s
        y = 2 * beta * beta * c * s
        dx = (k - (1 - beta)) * c * s
        dy = beta * beta * (c * c - s * s)
        return x, y, dx, dy, (tau + 0.5) * theta, tau + 0.5, s, s

    def modulus(self, theta, tau, beta):
        s = sincos(0.5 * theta)[0]
        hb = 2 * s * jnp.sqrt((1 - beta) ** 2 + 4 * beta * s * s)
        return hb / jnp.sqrt(1 + 4 * beta * (1 + beta) * s * s)

    def quadratic_coefficient(self, tau, beta):
        t = tau + 0.5
        x2 = 0.25 * ((1 + beta) * (1 + 2 * beta) - (1 - beta))
        return (1 - beta) * 0.5 * t * t + beta * beta * t - x2

    def trivial_delay(self, tau):
        return (tau == 0) | (tau == 1)

    def exact_threshold(self, q, theta, done, tau, beta):
        # tau = 1: closed form of beta^2 q^2 + (1 - beta^2) q - (1 - beta) = 0 (stable root).
        b2 = (1 - beta) * (1 + beta)
        q1 = 2 * (1 - beta) / (b2 + jnp.sqrt(b2 * b2 + 4 * beta * beta * (1 - beta)))
        # the circle pair has cos(theta) = (a0 - a2) / 2 with a0 = -q beta, a2 = -(1 + beta)
        th1 = jnp.arccos(jnp.clip(0.5 * (1 + beta - q1 * beta), -1.0, 1.0))
        q = jnp.where(tau == 1, q1, q)
        theta = jnp.where(tau == 1, th1, theta)
        return q, theta, done | (tau == 1)

    def sparse_form(self, q, beta, tau: int, xp=jnp):
        return tau, xp.ones_like(q), beta, q * (1.0 + beta), -q * beta

    def log_v(self, q, beta, d1):
        v = q * ((1.0 + beta) * d1 + 1.0)  # q ((1 + beta) z - beta)
        v1 = q * (1.0 + beta)
        return v, v1, beta / (1.0 + beta), 1.0 / (1.0 + beta)

    def distribution_parts(self, q, beta):
        return 1.0, beta, q * (1 + beta), -q * beta

    def locus_g(self, theta, s, ds, beta):
        z = np.exp(1j * theta)
        w = (1 + beta) * z - beta
        f, df = (z - beta) / w, 1j * z * beta * beta / (w * w)
        return f / s, df / s - f * ds / (s * s)

    def q_at_pi(self, s, beta):
        return (1 + beta) / (1 + 2 * beta) / s

    def locus_g_disc(self, z, r, beta, inv, s1inv2, s_max):
        w = (1 + beta) * z - beta  # f = (z - beta)/w, |w| >= 1
        f_c, f_r = (z - beta) / w, beta * beta * r
        df_c, df_r = 1j * z * beta * beta / (w * w), beta * beta * (3 + 2 * beta) * r
        return g_over_s(f_c, f_r, df_c, df_r, inv, s1inv2, s_max)
