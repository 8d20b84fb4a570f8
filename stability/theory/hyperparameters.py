"""The hyperparameters of a run, checked once at the public boundary.

`check_hyperparameters` checks ``(tau, lr, beta, momentum)`` and returns them as one
:class:`Hyperparameters` whose ``rule`` is a `stability.theory.rules.Rule` object
(a name such as ``"heavy_ball"`` is looked up once, here). Functions that receive a
``Hyperparameters`` trust it and check nothing again.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from stability.theory.delays import check_delay
from stability.theory.rules import Rule, as_rule
from stability.validation import check_lr


class _NotGiven:
    """The default of an argument a caller does not have (None is a bad value)."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = _NotGiven()


class Hyperparameters(NamedTuple):
    """Checked hyperparameters.

    tau: the delay (integer, integer array or ``DelayDistribution``), as given
      (`NOT_GIVEN`, or unchecked with ``check_tau=False``, where the caller checks it).
    lr: the learning rate, or `NOT_GIVEN` where the caller has none.
    beta: the rule's momentum coefficient (array allowed).
    rule: the rule object.
    """

    tau: Any
    lr: Any
    beta: Any
    rule: Rule


def check_hyperparameters(
    tau=NOT_GIVEN, lr=NOT_GIVEN, beta=0.0, momentum="heavy_ball", *, check_tau: bool = True
) -> Hyperparameters:
    """Check ``(tau, lr, beta, momentum)`` once; ValueError/TypeError naming the bad one.

    Order of the checks (the first bad argument is reported): lr, momentum, tau,
    beta. ``check_tau=False`` leaves tau to the caller (a simulation checks its delay
    options together); an argument left `NOT_GIVEN` is not checked (None is checked,
    and refused).
    """
    if lr is not NOT_GIVEN:
        check_lr(lr, "lr")
    rule = as_rule(momentum, "momentum")
    if check_tau and tau is not NOT_GIVEN:
        check_delay(tau, "tau")
    rule.check_beta(beta, "beta")
    return Hyperparameters(tau, lr, beta, rule)
