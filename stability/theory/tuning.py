"""Hyperparameter rules that preserve the set of accessible minima.

Giladi et al., "At Stability's Edge", ICLR 2020 (docs/theory.md section 9): a minimum
of sharpness a is accessible iff ``lr * a < q_max(tau, beta)``. Keeping the set
of accessible minima when the delay changes means keeping ``q_max / lr`` fixed;
choosing momentum means maximising ``q_max / lr`` at a fixed effective learning
rate ``lr / (1 - beta)``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from stability.theory import mean_square
from stability.theory.boundary_locus import checked_limit, checked_threshold
from stability.theory.delays import check_delay
from stability.theory.hyperparameters import check_hyperparameters
from stability.theory.precision import float_dtype, host_float64, python_scalars_out
from stability.theory.rules import MOMENTUM_RULES, as_rule
from stability.validation import check_beta, check_lr, check_positive

DEFAULT_BETAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@python_scalars_out
def lr_for_delay(
    lr,
    tau,
    *,
    from_tau=0,
    beta=0.0,
    momentum: str = "heavy_ball",
    batch_size: int | None = None,
    from_batch_size: int | None = None,
    num_examples: int | None = None,
    replacement: bool = False,
    sharpness=None,
    nonuniformity=None,
):
    """The learning rate that keeps the accessible minima when the delay goes ``from_tau -> tau``.

    Full batch (``batch_size=None``, the default): ``lr * q_max(tau, beta) /
    q_max(from_tau, beta)`` (same beta and rule). For plain SGD from ``from_tau = 0``
    this is ``lr sin(pi / (4 tau + 2))``, about ``lr * pi / (4 tau)`` at large tau:
    the learning rate inversely proportional to the delay (Giladi et al. 2020).
    Broadcasts over lr, tau, from_tau and beta; either delay may be a
    ``DelayDistribution``. NaN where a threshold is not certified (see
    ``stability_threshold``). A Python float when every number given is a Python
    scalar, else an array (also under ``jax.jit``).

    Mini-batches (``batch_size`` given; docs/theory.md section 15, Wu, Ma and E
    2018): the mean-square stable set has two coordinates (curvature ``a`` and
    non-uniformity ``s``), so no single learning rate keeps all of it; this keeps
    the given minimum (``sharpness=a``, ``nonuniformity=s``) at the same fraction of
    its mean-square limit when the delay goes ``from_tau -> tau`` and the batch size
    ``from_batch_size -> batch_size`` (default: unchanged): ``lr * q_ms(tau, r_B) /
    q_ms(from_tau, r_B0)``, ``r = gamma s^2 / a^2`` at each batch size and ``q_ms``
    the mean-square threshold of `stability.max_stable_lr` (``batch_size=``). At tau
    = from_tau = 0, plain SGD: ``lr (a^2 + gamma_0 s^2) / (a^2 + gamma s^2)``.
    ``gamma`` (`stability.variance_factor`) assumes a fresh uniform batch every
    step: ``(n - B) / (B (n - 1))`` without replacement (``1 / B`` times the
    finite-population correction ``(n - B) / (n - 1)``; the full batch gives the
    full-batch rule above) or ``1 / B`` with replacement. Delegates to
    `stability.lr_for_delay_minibatch`; delays must be concrete integers (a
    ``DelayDistribution`` raises NotImplementedError: the mean-square model covers
    fixed delays only).

    Args:
      lr: the learning rate at ``from_tau`` (and ``from_batch_size``), > 0.
      tau: the new delay.
      from_tau: the delay ``lr`` was tuned for.
      beta: momentum coefficient in [0, 1).
      momentum: a rule name ("heavy_ball", "nesterov", "shifted", "gd") or a
        `stability.theory.rules.Rule`.
      batch_size: the new batch size ``B`` (None: the full-batch rule).
      from_batch_size: the batch size ``lr`` was tuned for (default ``batch_size``).
      num_examples: ``n``, the examples the batches are drawn from; required with
        ``batch_size``.
      replacement: whether batches draw with replacement (default False).
      sharpness: the minimum's curvature ``a > 0``; required with ``batch_size``.
      nonuniformity: its non-uniformity ``s >= 0`` (same units as ``a``); required
        with ``batch_size``.

    Returns:
      The new learning rate (same units as ``lr``).
    """
    if (
        batch_size is not None
        or from_batch_size is not None
        or num_examples is not None
        or (sharpness is not None or nonuniformity is not None or replacement is not False)
    ):
        mean_square.check_batch_arguments(
            tau, batch_size, num_examples, replacement,
            {"sharpness": sharpness, "nonuniformity": nonuniformity},
            from_tau=from_tau, from_batch_size=from_batch_size,
            given={"from_batch_size": from_batch_size, "num_examples": num_examples,
                   "sharpness": sharpness, "nonuniformity": nonuniformity,
                   "replacement": replacement},
        )  # fmt: skip
        return mean_square.lr_for_delay_minibatch(
            lr,
            tau,
            from_tau=from_tau,
            beta=beta,
            momentum=momentum,
            sharpness=sharpness,
            nonuniformity=nonuniformity,
            batch_size=batch_size,
            num_examples=num_examples,
            from_batch_size=from_batch_size,
            replacement=replacement,
        )
    check_lr(lr, "lr")
    check_delay(tau, "tau")
    check_delay(from_tau, "from_tau")
    hp = check_hyperparameters(beta=beta, momentum=momentum)
    dtype = float_dtype(lr, beta)
    beta = jnp.asarray(beta, dtype)
    new = checked_threshold(tau, beta, hp.rule)
    old = checked_threshold(from_tau, beta, hp.rule)
    ratio = jnp.where(new.reliable & old.reliable, new.q_max / old.q_max, jnp.nan)
    return jnp.asarray(lr, dtype) * ratio


def _times_one_minus(x: float, beta: float) -> float:
    """``x (1 - beta)`` rounded once, from the decimals the floats were typed as.

    In binary ``1 - 0.99`` is 0.010000000000000009, so ``0.1 * (1 - 0.99)`` prints
    as 0.0010000000000000009; the shortest decimals that round-trip (``repr``) are
    what was meant, and their exact product rounds to 0.001.
    """
    exact = Decimal(repr(float(x))) * (1 - Decimal(repr(float(beta))))
    return float(exact)


class MomentumCandidate(NamedTuple):
    """One row of the momentum table (all at the same effective learning rate)."""

    momentum: str
    beta: float
    lr: float  # effective_lr * (1 - beta)
    max_stable_sharpness: float  # q_max(tau, beta) / lr


class MomentumRecommendation(NamedTuple):
    """The (rule, beta) that keeps the largest set of accessible minima.

    momentum, beta: the best candidate (ties go to the smaller beta, so beta = 0,
      "no momentum", wins whenever momentum does not help).
    lr: the learning rate to use, ``effective_lr * (1 - beta)``.
    max_stable_sharpness: the largest accessible sharpness with that choice.
    max_stable_sharpness_no_momentum: the same for beta = 0 (plain delayed SGD at
      lr = effective_lr), for comparison.
    table: every candidate, as :class:`MomentumCandidate` rows.
    """

    momentum: str
    beta: float
    lr: float
    max_stable_sharpness: float
    max_stable_sharpness_no_momentum: float
    table: tuple


def recommend_momentum(
    tau, effective_lr, *, betas=None, momenta=MOMENTUM_RULES
) -> MomentumRecommendation:
    """Which momentum rule and beta keep the largest accessible set at this delay.

    For each rule in ``momenta`` and each beta in ``betas`` (default
    ``DEFAULT_BETAS``, which includes 0) the learning rate is ``effective_lr *
    (1 - beta)`` (effective rate ``lr / (1 - beta)`` held fixed) and the largest
    accessible sharpness is ``q_max(tau, beta) / lr``. Returns the maximiser;
    within a relative 1e-12 the smaller beta wins. docs/theory.md section 8: at large
    tau heavy_ball and nesterov never beat beta = 0, while shifted does.

    ``tau``: a scalar integer delay or a ``DelayDistribution``.

    Every number comes back a Python float computed in float64, whatever
    ``jax_enable_x64`` says; each row's ``lr = effective_lr (1 - beta)`` is rounded
    once from the decimals typed (0.1 and 0.99 give 0.001, not binary's
    0.0010000000000000009).
    """
    check_delay(tau, "tau")
    if not hasattr(tau, "probabilities") and np.ndim(tau) != 0:
        raise ValueError(f"tau must be a scalar delay here; got shape {np.shape(tau)}")
    check_positive("effective_lr", effective_lr)
    if np.ndim(effective_lr) != 0:
        raise ValueError(f"effective_lr must be a scalar; got shape {np.shape(effective_lr)}")
    if isinstance(momenta, str):
        momenta = (momenta,)
    momenta = tuple(momenta)
    if not momenta:
        raise ValueError("momenta must name at least one rule; got ()")
    rules = [as_rule(m, "momenta") for m in momenta]
    betas = np.asarray(DEFAULT_BETAS if betas is None else betas, dtype=np.float64).reshape(-1)
    if betas.size == 0:
        raise ValueError("betas must be non-empty; got []")
    check_beta(betas, "betas")
    eff = float(effective_lr)
    rows = []
    for rule in rules:
        with host_float64():  # Python floats out: float64 whatever jax_enable_x64 says
            t = checked_threshold(tau, np.asarray(betas), rule)
            q = np.where(np.asarray(t.reliable), np.asarray(t.q_max, np.float64), np.nan)
        for b, qb in zip(betas.tolist(), q.tolist(), strict=True):
            lr = _times_one_minus(eff, b)  # Python floats throughout (not numpy scalars)
            rows.append(MomentumCandidate(rule.name, b, lr, qb / lr))
    with host_float64():
        base_q = checked_threshold(tau, 0.0, rules[0])
    base = float(base_q.q_max) / eff if bool(base_q.reliable) else float("nan")
    best = None
    for row in rows:  # first maximum in (rule, increasing beta) order, ties to smaller beta
        if np.isnan(row.max_stable_sharpness):
            continue
        if best is None:
            best = row
            continue
        better = row.max_stable_sharpness > best.max_stable_sharpness * (1 + 1e-12)
        tie = abs(row.max_stable_sharpness / best.max_stable_sharpness - 1) <= 1e-12
        if better or (tie and row.beta < best.beta):
            best = row
    if best is None:
        raise ValueError("no candidate threshold could be certified (all NaN)")
    return MomentumRecommendation(
        best.momentum, best.beta, best.lr, best.max_stable_sharpness, base, tuple(rows)
    )


@python_scalars_out
def max_stable_lr(
    sharpness,
    tau,
    beta=0.0,
    *,
    momentum="heavy_ball",
    nonuniformity=None,
    batch_size: int | None = None,
    num_examples: int | None = None,
    replacement: bool = False,
):
    """The largest learning rate at which a minimum of this sharpness is stable.

    Full batch (``batch_size=None``, the default): ``q_max(tau, beta) / sharpness``
    (sharpness > 0), the linear stability of the exact-gradient recursion; broadcasts
    like :func:`max_stable_sharpness` (a Python float for Python-scalar arguments).

    Mini-batches (``batch_size`` given): the largest lr at which the second moment of
    the distance to the minimum stays bounded (mean-square stability; docs/theory.md
    section 15, Wu, Ma and E 2018), along a direction of curvature ``a = sharpness``
    and non-uniformity ``s = nonuniformity`` (``s^2 = v^T Sigma v``, ``Sigma =
    mean_i H_i^2 - H^2``, the per-example Hessians' spread; same units as the
    sharpness): ``q_ms(r) / a`` with ``r = gamma s^2 / a^2``, ``q_ms`` the root of
    ``q^2 r N(q) = 1`` below ``q_max`` (``N`` the squared H2 norm of the loop,
    `stability.noise_gain`). For SGD at tau = 0 this is Wu, Ma and E's
    ``2 a / (a^2 + gamma s^2)``. ``gamma`` (`stability.variance_factor`) assumes a
    fresh uniform batch every step: ``(n - B) / (B (n - 1))`` without replacement
    (B distinct examples; ``1 / B`` times the finite-population correction ``(n -
    B) / (n - 1)``, so the full batch ``B = n`` gives the deterministic value) or
    ``1 / B`` with replacement. Delegates to `stability.max_stable_lr_minibatch`;
    tau must be a concrete integer (a ``DelayDistribution`` raises
    NotImplementedError: the mean-square model covers fixed delays only).

    Args:
      sharpness: the curvature ``a > 0`` (largest Hessian eigenvalue).
      tau: delay: integer (array) or ``DelayDistribution``; a scalar integer with
        ``batch_size``.
      beta: momentum coefficient in [0, 1).
      momentum: a rule name ("heavy_ball", "nesterov", "shifted", "gd") or a
        `stability.theory.rules.Rule`.
      nonuniformity: ``s >= 0`` along the same direction; required with
        ``batch_size`` (`stability.directional_nonuniformity` estimates it).
      batch_size: ``B``, an integer >= 1 (<= ``num_examples`` without replacement);
        None for the full-batch threshold.
      num_examples: ``n``, the examples the batches are drawn from; required with
        ``batch_size``.
      replacement: whether a batch draws with replacement (default False, as
        `stability.simulate_async` does).

    Returns:
      The learning rate (units: 1 / Hessian eigenvalue units); NaN where the
      deterministic threshold is not certified.
    """
    if (
        batch_size is not None
        or nonuniformity is not None
        or num_examples is not None
        or (replacement is not False)
    ):
        return _max_stable_lr_minibatch(
            sharpness, tau, beta, momentum, nonuniformity, batch_size, num_examples, replacement
        )
    check_positive("sharpness", sharpness)
    hp = check_hyperparameters(tau, beta=beta, momentum=momentum)
    return checked_limit(sharpness, hp.tau, hp.beta, hp.rule)


def _max_stable_lr_minibatch(
    sharpness, tau, beta, momentum, nonuniformity, batch_size, num_examples, replacement
):
    """The ``batch_size`` path of :func:`max_stable_lr`."""
    mean_square.check_batch_arguments(
        tau, batch_size, num_examples, replacement, {"nonuniformity": nonuniformity},
        given={"nonuniformity": nonuniformity, "num_examples": num_examples,
               "replacement": replacement},
    )  # fmt: skip
    return mean_square.max_stable_lr_minibatch(
        sharpness,
        nonuniformity,
        tau,
        beta,
        momentum=momentum,
        batch_size=batch_size,
        num_examples=num_examples,
        replacement=replacement,
    )
