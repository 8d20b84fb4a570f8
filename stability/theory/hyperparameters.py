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


class Hyperparameters(NamedTuple):
    """Checked hyperparameters.

    tau: the delay (integer, integer array or ``DelayDistribution``); None where the
      caller has none (a simulation with ``num_workers``).
    lr: the learning rate, or None where the caller has none.
    beta: the rule's momentum coefficient (array allowed).
    rule: the rule object.
    """

    tau: Any
    lr: Any
    beta: Any
    rule: Rule


def check_hyperparameters(
    tau, lr=None, beta=0.0, momentum="heavy_ball", *, check_tau: bool = True
) -> Hyperparameters:
    """Check ``(tau, lr, beta, momentum)`` once; ValueError/TypeError naming the bad one.

    Order of the checks (the first bad argument is reported): lr, momentum, tau,
    beta. ``check_tau=False`` leaves tau to the caller (a simulation checks its delay
    options together). ``lr=None`` skips the learning rate.
    """
    if lr is not None:
        check_lr(lr, "lr")
    rule = as_rule(momentum, "momentum")
    if check_tau and tau is not None:
        check_delay(tau, "tau")
    rule.check_beta(beta, "beta")
    return Hyperparameters(tau, lr, beta, rule)
