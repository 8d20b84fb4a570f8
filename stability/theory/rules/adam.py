"""Adam, AdamW and RMSprop with a frozen second moment, along the preconditioned Hessian.

optax's Adam(W) with the gradient of step t - tau, linearised at a fixed point with
its second moment frozen in ``P = diag(sqrt(v_hat + eps_root) + eps)``
(`stability.Preconditioner`), splits along the eigenvectors of
``P^-1/2 H P^-1/2``; along one with eigenvalue ``a``, in the coordinates
``y = P^1/2 w`` (docs/theory.md section 16):

    m+ = beta m + (1 - beta) a y_{t-tau},   y+ = (1 - d) y - lr c m+
    P(z) = z^tau (z - 1 + d)(z - beta) + (1 - beta) q z,    q = lr c a,

``beta`` Adam's b1, ``c = 1 / (1 - b1^t)`` the bias correction at the state's step
count t (so ``lr c`` is the bias-corrected learning rate, the ``lr`` the other
functions take for this rule) and ``d = lr * weight_decay`` AdamW's decoupled decay
per step (0 for Adam). For a delay distribution ``z^tau`` becomes ``z^K`` and the
``q`` term takes the factor ``D(z)``. Derivation (x_t = z^t): ``m (1 - beta/z) =
(1 - beta) a z^-tau y`` and ``y (z - 1 + d) = -lr c m``; multiply by ``z^(tau+1)``.

With ``d = 0`` this is the heavy ball's polynomial with ``q`` scaled by ``1 - beta``:
the threshold is ``q_max_heavy_ball(tau, beta) / (1 - beta)``, which is
``2 (1 + beta) / (1 - beta)`` at tau = 0 (38 at beta = 0.9: Cohen et al. 2022).
RMSprop with momentum ``beta`` is the heavy ball on ``P^-1/2 H P^-1/2`` (its
``c (1 - beta) = 1``); without momentum, plain delayed SGD. The rule defines only its
polynomial and its step; every threshold, radius and distribution result comes from
the generic methods of `Rule`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from stability.theory.rules.base import Rule, polymul


@dataclasses.dataclass(frozen=True)
class Adam(Rule):
    """Adam(W) with a frozen preconditioner, in the preconditioned coordinates.

    Field (static): ``decay`` d = lr * weight_decay in [0, 1), AdamW's per-step decay
    (0 for Adam). ``beta`` (the methods' argument) is b1; ``lr`` is the bias-corrected
    ``lr / (1 - b1^t)`` and the sharpness an eigenvalue of ``P^-1/2 H P^-1/2``.
    """

    name = "preconditioned_adam"  # q is lr c times an eigenvalue of P^-1/2 H P^-1/2
    decay: float = 0.0

    def __post_init__(self):
        d = self.decay
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
            raise ValueError(f"decay (lr * weight_decay) must be in [0, 1); got {d!r}")

    def polynomial(self, d, beta, xp=jnp):
        k = d.shape[-1] - 1
        dtype = d.dtype
        zd = xp.asarray(np.array([1.0, self.decay - 1.0]), dtype=dtype)  # z - 1 + d
        zb = xp.stack([xp.ones_like(beta), -beta], axis=-1)  # z - beta
        a = xp.concatenate([polymul(zd, zb, xp), xp.zeros(beta.shape + (k,), dtype)], axis=-1)
        b = (1 - beta)[..., None] * xp.concatenate([d, xp.zeros(1, dtype)])  # (1 - beta) z D
        return a, b

    def update(self, w, v, g, lr, beta):
        """``m+ = beta m + (1 - beta) g``, ``w+ = (1 - d) w - lr m+`` (P = I: the
        preconditioned coordinates; ``lr`` bias-corrected)."""
        v_new = jax.tree_util.tree_map(
            lambda vi, gi: beta.astype(vi.dtype) * vi + (1 - beta.astype(vi.dtype)) * gi, v, g
        )
        w_new = jax.tree_util.tree_map(
            lambda wi, mi: (1 - self.decay) * wi - lr.astype(wi.dtype) * mi, w, v_new
        )
        return w_new, v_new
