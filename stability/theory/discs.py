"""Disc (circular) arithmetic for certified enclosures of complex values.

Alefeld and Herzberger, *Introduction to Interval Computations* (1983), ch. 5.
"""

from __future__ import annotations

import numpy as np


def disc_product(a, ar, b, br):
    """Disc product: {x y : |x - a| <= ar, |y - b| <= br} lies in D(a b, this radius)."""
    return a * b, np.abs(a) * br + np.abs(b) * ar + ar * br
