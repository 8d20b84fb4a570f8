"""Plain delayed SGD: ``w+ = w - lr g_{t-tau}``, ``P = z^tau (z - 1) + q``.

Built as heavy ball with beta = 0 (the polynomial ``z`` times gd's: the extra root
0 changes nothing), so every closed form of `HeavyBall` applies; beta must be 0.
"""

from __future__ import annotations

import numpy as np

from stability.theory.rules.heavy_ball import HeavyBall
from stability.validation import is_concrete


class GD(HeavyBall):
    """Delayed gradient descent (heavy ball with beta = 0)."""

    name = "gd"

    def check_beta(self, beta, name: str = "beta") -> None:
        super().check_beta(beta, name)
        if is_concrete(beta) and np.any(np.asarray(beta) != 0):
            raise ValueError(f"{name} must be 0 for momentum='gd'; got {beta!r}")
