"""Shifted (per-worker) momentum of Giladi et al. (ICLR 2020).

Each worker keeps its own buffer: ``v_k+ = beta v_k + g``, ``w+ = w - lr v_k+`` (k the
pushing worker); with a constant delay and round-robin workers ``v+ = beta v_{t-tau}
+ g_{t-tau}``. Along a Hessian eigenvalue (``q = lr a``): ``P = (z - 1)(z^(tau+1) -
beta) + q z``, for a delay distribution ``(z - 1)(z^(K+1) - beta D(z)) + q z D(z)``
(the expected buffer obeys z v = S(z)(beta v + a)).

Boundary locus: X = (1-beta) cos(psi/2), Y = (1+beta) sin(psi/2), alpha = tau theta /
2, |q| = 2s |e^{i psi} - beta|, psi = (tau + 1) theta. Sparse form: m = tau, U = z (z
- 1), V = (q - beta) z + beta.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from stability.theory.rules.base import Rule, momentum_step, polymul, unit_polynomial
from stability.theory.sincos import sincos


class Shifted(Rule):
    """Per-worker buffers: ``v_k+ = beta v_k + g``, ``w+ = w - lr v_k+``."""

    name = "shifted"
    locus_span = 2.0
    per_worker_buffer = True

    def polynomial(self, d, beta, xp=jnp):
        # A = (z - 1)(z^(K+1) - beta D),  B = z D
        k = d.shape[-1] - 1
        dtype = d.dtype
        zk1 = unit_polynomial(k + 2, dtype, xp)
        inner = zk1 - beta[..., None] * xp.concatenate([xp.zeros(1, dtype), d])
        a = polymul(inner, xp.asarray(np.array([1.0, -1.0]), dtype=dtype), xp)
        return a, xp.concatenate([d, xp.zeros(1, dtype)])

    def update(self, w, v, g, lr, beta):
        return momentum_step(w, v, g, lr, beta)

    def crossing(self, theta, tau, beta):
        s = sincos(0.5 * theta)[0]
        sp, cp = sincos(0.5 * (tau + 1) * theta)
        x, y, alpha, d_alpha = (1 - beta) * cp, (1 + beta) * sp, 0.5 * tau * theta, 0.5 * tau
        dx, dy = -0.5 * (tau + 1) * (1 - beta) * sp, 0.5 * (tau + 1) * (1 + beta) * cp
        return x, y, dx, dy, alpha, d_alpha, s, sp

    def modulus(self, theta, tau, beta):
        s = sincos(0.5 * theta)[0]
        s_psi = sincos(0.5 * (tau + 1) * theta)[0]
        return 2 * s * jnp.sqrt((1 - beta) ** 2 + 4 * beta * s_psi * s_psi)

    def quadratic_coefficient(self, tau, beta):
        return (1 - beta) * ((tau + 1) ** 2 + tau * tau) / 8 + (1 + beta) * tau * (tau + 1) / 4

    def sparse_form(self, q, beta, tau: int, xp=jnp):
        return tau, xp.ones_like(q), xp.zeros_like(q), q - beta, beta

    def log_v(self, q, beta, d1):
        v = q * (d1 + 1.0) - beta * d1  # (q - beta) z + beta
        return v, q - beta, beta / (beta - q), -q / (beta - q)

    def distribution_parts(self, q, beta):
        return 1.0, 0.0, q - beta, beta

    def locus_g(self, theta, s, ds, beta):
        zc = np.conj(np.exp(1j * theta))  # G = 1/S - beta/z
        return 1 / s - beta * zc, -ds / (s * s) + 1j * beta * zc

    def q_at_pi(self, s, beta):
        return 1 / s + beta

    def locus_g_disc(self, z, r, beta, inv, s1inv2, s_max):
        zc = np.conj(z)  # G = 1/S - beta/z, G' = -S'/S^2 + i beta/z
        (inv_c, inv_r), (d_c, d_r) = inv, s1inv2
        return (inv_c - beta * zc, inv_r + beta * r, -d_c + 1j * beta * zc, d_r + beta * r,
                1 / s_max - beta)  # fmt: skip
