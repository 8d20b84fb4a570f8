"""sin and cos on [0, 3 pi / 4] as vectorisable polynomials.

XLA's float64 sin/cos are scalar library calls (~6 ns each on CPU), these vectorise
(< 1 ns) and were most of the boundary-locus solver's cost. Taylor series on |r| <=
pi / 4 to degree 15 (sin; truncation < 5e-17) and 16 (cos; < 3e-18), with sin x =
cos(pi/2 - x) above pi / 4. Errors (tested against libm): relative 1 ulp on [0, pi /
4] (small angles, where s = sin(theta / 2) must be relatively exact), absolute 2 ulp
above. (pi/2 - x carries the 6e-17 rounding of pi/2 in float64; a two-part pi/2
would be re-associated away by XLA's simplifier, and absolute accuracy is all the
solver needs there.)
"""

from __future__ import annotations

import math

import jax.numpy as jnp

_HALF_PI = 1.5707963267948966
_SIN_TAYLOR = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(8))
_COS_TAYLOR = tuple((-1) ** k / math.factorial(2 * k) for k in range(9))


def sincos(x):
    """(sin x, cos x) for x in [0, 3 pi / 4] (Taylor polynomials on [-pi/4, pi/4])."""
    big = x > 0.5 * _HALF_PI
    r = jnp.where(big, _HALF_PI - x, x)
    u = r * r
    sr = _SIN_TAYLOR[-1]
    for coef in _SIN_TAYLOR[-2::-1]:
        sr = sr * u + coef
    sr = sr * r
    cr = _COS_TAYLOR[-1]
    for coef in _COS_TAYLOR[-2::-1]:
        cr = cr * u + coef
    return jnp.where(big, cr, sr), jnp.where(big, sr, cr)
