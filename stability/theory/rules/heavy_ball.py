"""Heavy-ball momentum (torch/optax SGD momentum) with a stale gradient.

``v+ = beta v + g_{t-tau}``, ``w+ = w - lr v+``; along a Hessian eigenvalue ``a``
(``q = lr a``): ``P = z^tau (z - 1)(z - beta) + q z``, and for a delay distribution
``z^K (z - 1)(z - beta) + q z D(z)`` (docs/theory.md section 3).

Derivation (x_t = z^t): u_t = w_{t+1} - w_t = -lr v_{t+1} obeys u_t - beta u_{t-1}
= -q w_{t-tau}, i.e. (z - 1)(1 - beta/z) = -q z^-tau.

Boundary locus (``stability.theory.boundary_locus``): X = (1-beta) c, Y = (1+beta) s,
alpha = tau theta, |q| = 2s |e^{i theta} - beta| (c, s = cos, sin(theta / 2)).
Sparse form (root 0 divided out): m = tau - 1, U = (z - 1)(z - beta), V = q.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from stability.theory.rules.base import Rule, a_momentum, g_over_s, momentum_step
from stability.theory.sincos import sincos


class HeavyBall(Rule):
    """``v+ = beta v + g``, ``w+ = w - lr v+`` (the gradient ``g`` stale)."""

    name = "heavy_ball"
    locus_span = 1.5

    def polynomial(self, d, beta, xp=jnp):
        a = a_momentum(d, beta, xp)
        return a, xp.concatenate([d, xp.zeros(1, d.dtype)])  # B = z D

    def update(self, w, v, g, lr, beta):
        return momentum_step(w, v, g, lr, beta)

    def crossing(self, theta, tau, beta):
        s, c = sincos(0.5 * theta)
        x, y, alpha, d_alpha = (1 - beta) * c, (1 + beta) * s, tau * theta, tau
        dx, dy = -0.5 * (1 - beta) * s, 0.5 * (1 + beta) * c
        return x, y, dx, dy, alpha, d_alpha, s, s

    def modulus(self, theta, tau, beta):
        s = sincos(0.5 * theta)[0]
        return 2 * s * jnp.sqrt((1 - beta) ** 2 + 4 * beta * s * s)

    def quadratic_coefficient(self, tau, beta):
        return (1 - beta) * (0.125 + 0.5 * tau * tau) + 0.5 * (1 + beta) * tau

    def sparse_form(self, q, beta, tau: int, xp=jnp):
        return tau - 1, xp.ones_like(q), beta, xp.zeros_like(q), q

    def log_v(self, q, beta, d1):
        v, v1 = q + 0j * d1, np.zeros_like(q)
        zero = one_minus = np.full_like(q, np.nan)
        return v, v1, zero, one_minus

    def distribution_parts(self, q, beta):
        return 1.0, beta, q, 0.0

    def locus_g(self, theta, s, ds, beta):
        zc = np.conj(np.exp(1j * theta))
        f, df = 1 - beta * zc, 1j * beta * zc
        return f / s, df / s - f * ds / (s * s)

    def q_at_pi(self, s, beta):
        return (1 + beta) / s

    def locus_g_disc(self, z, r, beta, inv, s1inv2, s_max):
        zc = np.conj(z)  # f = 1 - beta/z: |f'| = |f''| = beta
        f_c, f_r = 1 - beta * zc, beta * r
        df_c, df_r = 1j * beta * zc, beta * r
        return g_over_s(f_c, f_r, df_c, df_r, inv, s1inv2, s_max)
