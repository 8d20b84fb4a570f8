"""The momentum rules, one object each, and their characteristic polynomials.

A rule (`Rule`, ``stability/theory/rules/base.py``) is one immutable object: its
name, its characteristic polynomial for a fixed delay and a delay distribution,
its simulator step and the closed forms the fast paths use. One file per rule:

- ``gd.py`` (`GD`):                 w+ = w - lr g_{t-tau};  P = z^tau (z - 1) + q
- ``heavy_ball.py`` (`HeavyBall`):  v+ = beta v + g_{t-tau};  w+ = w - lr v+;
                                    P = z^tau (z - 1)(z - beta) + q z
- ``nesterov.py`` (`Nesterov`):     v+ = beta v + g_{t-tau};  w+ = w - lr (g_{t-tau} + beta v+);
                                    P = z^tau (z - 1)(z - beta) + q ((1 + beta) z - beta)
- ``shifted.py`` (`Shifted`):       v+ = beta v_{t-tau} + g_{t-tau};  w+ = w - lr v+;
                                    P = (z - 1)(z^(tau+1) - beta) + q z

heavy_ball is torch/optax SGD momentum, nesterov their Nesterov form and shifted
the per-worker momentum of Giladi et al. (ICLR 2020). With beta = 0 the three
momentum rules are ``z * (gd polynomial)``: the extra root 0 changes nothing.

Random delays (first-moment model): ``z^-tau`` becomes ``S(z) = sum_k p_k z^-k``;
with ``D(z) = z^K S(z)``:

- heavy_ball: z^K (z-1)(z-beta) + q z D(z)
- nesterov:   z^K (z-1)(z-beta) + q ((1+beta) z - beta) D(z)
- shifted:    (z-1)(z^(K+1) - beta D(z)) + q z D(z)

Every public function takes ``momentum=`` a rule's name or a rule object; names are
turned into objects once (`as_rule`). Adding a rule is adding its file here: every
module of this package is imported below, and a `Rule` subclass with a ``name``
registers itself.
"""

from __future__ import annotations

import importlib
import pkgutil

from stability.theory.delays import check_delay, static_delay
from stability.theory.precision import float_dtype, host_float64, python_scalars_out
from stability.theory.rules.base import Rule, as_rule, rule_names
from stability.theory.rules.gd import GD
from stability.theory.rules.heavy_ball import HeavyBall
from stability.theory.rules.nesterov import Nesterov
from stability.theory.rules.polynomial import (
    CharacteristicPolynomial,
    characteristic_polynomial,
    rule_polynomial,
)
from stability.theory.rules.shifted import Shifted

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # each rule's file registers it

# The momentum rules of the paper (gd is their beta = 0).
MOMENTUM_RULES = ("heavy_ball", "nesterov", "shifted")

__all__ = [
    "GD",
    "MOMENTUM_RULES",
    "CharacteristicPolynomial",
    "HeavyBall",
    "Nesterov",
    "Rule",
    "Shifted",
    "as_rule",
    "characteristic_polynomial",
    "check_delay",
    "float_dtype",
    "host_float64",
    "python_scalars_out",
    "rule_names",
    "rule_polynomial",
    "static_delay",
]
