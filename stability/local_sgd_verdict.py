"""The local SGD / DiLoCo verdict on a network: `is_accessible(..., local_sgd=...)`.

docs/theory.md section 17. Rounds of H inner steps and an outer rule; with the inner
buffer reset, an eigenvalue ``a`` of the Hessian is stable iff ``outer_lr kappa(a)``
lies in the outer rule's stable interval ``(0, q_max)`` at the schedule's delay
(`stability.theory.local_sgd`). kappa is not monotone in ``a`` (``inner_lr a > 1``),
so the verdict asks it of every ``a`` in an interval: "stable" when all of ``(0,
upper]`` is (``upper`` the random-start bound or the converged Ritz value plus its
residual), "unstable" when all of ``[theta_1, inf)`` (``certified_by="ritz_value"``),
all of ``theta_1 +- r_1`` (``"ritz_interval"``: some eigenvalue lies there) or all of
``[theta_1, upper]`` is not. The minimum (``is_minimum``, ``require_minimum``) and the
random-start bound are those of `stability.accessibility`'s rule for the other rules.

`stability.accessibility.is_accessible` imports this module inside the function (this
module builds that module's `Accessibility` report).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from stability.accessibility import (
    FLAT_TOLERANCE,
    Accessibility,
    Judgement,
    LocalSGDAccessibility,
    judge,
)
from stability.curvature.hessian_spectrum import HessianSpectrum, hessian_spectrum
from stability.networks.models import loss_from_model
from stability.theory import boundary_locus
from stability.theory import local_sgd as theory
from stability.theory.precision import host_float64
from stability.validation import check_lr

__all__ = ["local_sgd_accessible"]


# Along an eigenvalue a
# with the inner buffer reset, a round's polynomial is A_out + outer_lr kappa(a) B_out:
# a is stable iff outer_lr kappa(a) lies in the outer rule's stable interval
# (0, q_max), whatever a is otherwise. For inner GD, kappa(a) = 1 - (1 - inner_lr a)^H
# and the range of u^H over an interval of u = 1 - inner_lr a is exact (monotone for
# odd H; even H: its minimum 0 where the interval holds 0), so "every a in [lo, hi] is
# stable" and "every a in [lo, hi] is unstable" are both decided exactly, kappa being
# non-monotone in a (inner_lr a > 1) or not. Rounding: a relative margin.
_LOCAL_MARGIN = 1e-12


class _LocalSetting(NamedTuple):
    """A checked local SGD configuration, the outer hyperparameters and the outer
    rule's stable limit on ``outer_lr kappa`` (``q_limit = q_max / outer_lr``; NaN when
    the outer threshold is not certified)."""

    config: object
    outer_lr: float
    outer_momentum: float
    q_limit: float

    def exact(self) -> bool:  # the closed-form certificate's scope
        return self.config.inner.name == "gd" and bool(self.config.reset)

    def kappa_range(self, lo: float, hi: float) -> tuple[float, float]:
        """``(min, max)`` of kappa over ``a`` in ``[lo, hi]`` (hi may be inf), inner GD."""
        h, lr = self.config.inner_steps, float(self.config.inner_lr)
        u_lo, u_hi = 1.0 - lr * hi, 1.0 - lr * lo
        with np.errstate(over="ignore"):
            p_lo, p_hi = (float(np.power(np.float64(u), h)) for u in (u_lo, u_hi))
        if h % 2 == 1 or u_lo >= 0:
            low, high = p_lo, p_hi
        elif u_hi <= 0:
            low, high = p_hi, p_lo
        else:
            low, high = 0.0, max(p_lo, p_hi)
        return 1.0 - high, 1.0 - low

    def all_unstable(self, lo: float, hi: float) -> bool:
        k_min, k_max = self.kappa_range(lo, hi)
        return k_max < -_LOCAL_MARGIN or k_min > self.q_limit * (1 + _LOCAL_MARGIN)

    def sharp_side_stable(self, upper: float) -> bool:
        """Every eigenvalue in (0, upper] stable: kappa in (0, q_limit) there."""
        lr = float(self.config.inner_lr)
        positive = self.config.inner_steps % 2 == 1 or lr * upper < 2 * (1 - _LOCAL_MARGIN)
        return positive and self.kappa_range(0.0, upper)[1] < self.q_limit * (1 - _LOCAL_MARGIN)

    def max_stable_sharpness(self) -> float:
        """The first a > 0 where outer_lr kappa(a) leaves (0, q_max): every eigenvalue
        in (0, a) is stable (inner GD, reset; NaN otherwise)."""
        if not self.exact() or not math.isfinite(self.q_limit):
            return math.nan
        h, lr, q = self.config.inner_steps, float(self.config.inner_lr), self.q_limit
        if q <= 1:  # kappa rises through q before inner_lr a = 1
            return (1.0 - (1.0 - q) ** (1.0 / h)) / lr
        if h % 2 == 1:  # kappa = 1 + (inner_lr a - 1)^H beyond 1 / inner_lr
            return (1.0 + (q - 1.0) ** (1.0 / h)) / lr
        return 2.0 / lr  # even H: kappa falls back to 0 at inner_lr a = 2


def _local_setting(local_sgd, tau, lr, beta, momentum, outer_lr, outer_momentum, batch_size,
                   optimizer_state, failure_probability) -> _LocalSetting:  # fmt: skip
    """The checked arguments of `is_accessible` with ``local_sgd``."""
    if not isinstance(local_sgd, theory.LocalSGD):
        raise TypeError(f"local_sgd must be a stability.LocalSGD; got {local_sgd!r}")
    if batch_size is not None:
        raise ValueError(
            "batch_size cannot go with local_sgd: the rounds are judged full batch; got "
            f"batch_size={batch_size!r}"
        )
    if optimizer_state is not None:
        raise ValueError(
            "optimizer_state cannot go with local_sgd: the inner rule is local_sgd.inner; got "
            f"optimizer_state of type {type(optimizer_state).__name__}"
        )
    if not (tau is None or (isinstance(tau, (int, np.integer)) and tau == 0)):
        raise ValueError(
            "tau must be 0 or None with local_sgd: the outer delay comes from "
            f"local_sgd.schedule (and workers, overlap); got tau={tau!r}"
        )
    if lr is not None:
        raise ValueError(
            "lr must be None with local_sgd: the inner lr is local_sgd.inner_lr and the outer "
            f"lr is outer_lr; got lr={lr!r}"
        )
    if not (isinstance(beta, (int, float)) and beta == 0.0) or momentum != "heavy_ball":
        raise ValueError(
            "beta and momentum must be left out with local_sgd (the outer rule is "
            "local_sgd.outer, its momentum outer_momentum); got "
            f"beta={beta!r}, momentum={momentum!r}"
        )
    config = theory.check_local_sgd(local_sgd)
    for name, x in (("local_sgd.inner_lr", config.inner_lr),
                    ("local_sgd.inner_beta", config.inner_beta)):  # fmt: skip
        if np.ndim(x) != 0:
            raise ValueError(f"{name} must be a single number; got shape {np.shape(x)}")
    if outer_lr is None:
        raise ValueError("outer_lr is required with local_sgd (DiLoCo's is 0.7); got None")
    if np.ndim(outer_lr) != 0 or np.ndim(outer_momentum) != 0:
        raise ValueError(
            f"outer_lr and outer_momentum must be scalars; got {outer_lr!r}, {outer_momentum!r}"
        )
    check_lr(outer_lr, "outer_lr")
    config.outer.check_beta(outer_momentum, "outer_momentum")
    if not (isinstance(failure_probability, (int, float)) and 0 < failure_probability < 1):
        raise ValueError(f"failure_probability must be in (0, 1); got {failure_probability!r}")
    config = config._replace(inner_lr=float(config.inner_lr), inner_beta=float(config.inner_beta))
    with host_float64():
        threshold = boundary_locus.checked_threshold(
            theory.outer_delay(config), np.float64(outer_momentum), config.outer
        )
        q_max = float(threshold.q_max) if bool(threshold.reliable) else math.nan
    return _LocalSetting(config, float(outer_lr), float(outer_momentum), q_max / float(outer_lr))


def _judge_local(spectrum: HessianSpectrum, setting: _LocalSetting, require_minimum: bool,
                 failure_probability: float) -> Judgement:  # fmt: skip
    """The local SGD verdict on the sharp side (every eigenvalue in (0, lambda_max]),
    with the minimum folded in as `judge` folds it (``require_minimum``)."""
    base = judge(spectrum, math.inf, False, failure_probability)  # is_minimum, the bound
    top, top_err = float(spectrum.eigenvalues[0]), float(spectrum.errors[0])
    low, low_err = float(spectrum.smallest), float(spectrum.smallest_error)
    spread, upper = float(spectrum.product_error), base.upper
    chance = f"with probability >= 1 - {failure_probability:g} (random-start bound)"
    sharp, by = None, None
    if not setting.exact():
        why = (
            "undecided: the local SGD certificate covers inner GD with the inner buffer reset "
            f"(got inner={setting.config.inner.name!r}, reset={setting.config.reset}); kappa "
            "is not monotone in the sharpness in general, so the sharpness alone cannot decide"
        )
    elif not math.isfinite(setting.q_limit):
        why = "undecided: the outer rule's threshold is not certified at this outer delay"
    elif top - spread > 0 and setting.all_unstable(top - spread, math.inf):
        sharp, by = False, "ritz_value"
        why = (
            f"unstable: every eigenvalue at or above the Ritz value {top - spread:.6g} (a lower "
            "bound on lambda_max) has outer_lr kappa outside the outer rule's stable interval"
        )
    elif top - top_err > 0 and setting.all_unstable(top - top_err, top + top_err):
        sharp, by = False, "ritz_interval"
        why = (
            f"unstable: some eigenvalue lies in {top:.6g} +- {top_err:.2g} (the Ritz residual "
            "bound), and every a there has outer_lr kappa(a) outside the outer rule's stable "
            "interval"
        )
    elif top - spread > 0 and math.isfinite(upper) and setting.all_unstable(top - spread, upper):
        sharp, by = False, "random_start"
        why = f"unstable: lambda_max in [{top - spread:.6g}, {upper:.6g}] {chance}, all unstable"
    elif math.isfinite(upper) and setting.sharp_side_stable(upper):
        sharp, by = True, "random_start"
        why = (
            f"stable: every eigenvalue in (0, {upper:.4g}] has outer_lr kappa in the outer "
            f"rule's stable interval; sharpness <= {upper:.4g} {chance}"
        )
    elif bool(spectrum.converged[0]) and setting.sharp_side_stable(top + top_err):
        sharp, by = True, "residual"
        why = (
            f"stable: every eigenvalue in (0, {top:.4g} + {top_err:.2g}] has outer_lr kappa in "
            "the outer rule's stable interval (converged Ritz residual bound)"
        )
    else:
        why = (
            f"undecided: sharpness {top:.4g} +- {top_err:.2g} (largest stable sharpness "
            f"{setting.max_stable_sharpness():.4g}) neither proven stable nor unstable"
        )
        reach = float(setting.config.inner_lr) * (top + top_err)
        if reach > 1:
            why += (
                f" (inner_lr x sharpness = {reach:.3g} > 1: kappa is not monotone, so an "
                "eigenvalue below the sharpness may be unstable while the top one is not; "
                "only the top is estimated)"
            )
    if sharp is None:
        why += f" after {spectrum.num_hvps} Hessian-vector products"
    verdict, minimum = sharp, base.is_minimum
    if require_minimum and sharp is not False and minimum is not True:
        if minimum is False:
            verdict, by = False, "ritz_value"
            why = (
                f"not a minimum: a Ritz value {low:.4g} is below -{FLAT_TOLERANCE:g} x "
                f"sharpness (require_minimum=True; kappa < 0 there: that direction grows)"
            )
        else:
            verdict, by = None, None
            why = (
                f"undecided: a minimum is not established (smallest eigenvalue {low:.4g} "
                f"+- {low_err:.2g} after {spectrum.num_hvps} Hessian-vector products; "
                f"require_minimum=True); sharp side: {why}"
            )
    return Judgement(verdict, minimum, by, why, upper)


def _local_sgd_report(spectrum, setting: _LocalSetting, require_minimum: bool,
                      failure_probability: float) -> Accessibility:  # fmt: skip
    """The `Accessibility` report of local SGD / DiLoCo (``report.local_sgd``)."""
    judged = _judge_local(spectrum, setting, require_minimum, failure_probability)
    config, mu = setting.config, setting.outer_momentum
    top, low = float(spectrum.eigenvalues[0]), float(spectrum.smallest)
    h = config.inner_steps

    def round_radius(a):
        return float(theory.round_spectral_radius(config, a, setting.outer_lr, mu))

    with host_float64():
        kappa = float(theory.pseudo_gradient_factor(config, top))
        max_outer = float(theory.max_stable_outer_lr(config, top, mu)) if top > 0 else math.inf
        rho = round_radius(top)
        rho_low = round_radius(low) if math.isfinite(low) else math.nan
    limit = setting.max_stable_sharpness()
    part = LocalSGDAccessibility(
        config=config, outer_lr=setting.outer_lr, outer_momentum=mu, kappa=kappa,
        max_stable_outer_lr=max_outer, round_radius=rho, max_stable_sharpness=limit,
    )  # fmt: skip
    return Accessibility(
        verdict=judged.verdict,
        is_minimum=judged.is_minimum,
        certified_by=judged.certified_by,
        reason=judged.reason,
        sharpness=top,
        sharpness_error=float(spectrum.errors[0]),
        sharpness_upper_bound=judged.upper,
        smallest_eigenvalue=low,
        smallest_error=float(spectrum.smallest_error),
        max_stable_sharpness=limit,
        fraction_of_limit=top / limit if limit else math.nan,
        spectral_radius=rho ** (1.0 / h),  # per inner step, as the report's other rules
        smallest_growth=rho_low ** (1.0 / h),
        max_stable_lr=max_outer,
        num_hvps=int(spectrum.num_hvps),
        tau=theory.outer_delay(config),
        lr=setting.outer_lr,
        beta=mu,
        momentum=config.outer.name,
        require_minimum=bool(require_minimum),
        failure_probability=float(failure_probability),
        product_error=float(spectrum.product_error),
        spectrum=spectrum,
        local_sgd=part,
    )


def local_sgd_accessible(model, params, local_sgd, *, tau, lr, beta, momentum, outer_lr,
                         outer_momentum, batch_size, optimizer_state, data, loss, spectrum, train,
                         call_kwargs, batch_keys, require_minimum, failure_probability, tol,
                         max_hvps, seed, progress, return_vectors) -> Accessibility:  # fmt: skip
    """`stability.is_accessible` with ``local_sgd`` (its arguments, checked here): the
    spectrum until `_judge_local` decides (or, outside the certificate's scope, until
    the top Ritz value converges), and the report."""
    setting = _local_setting(local_sgd, tau, lr, beta, momentum, outer_lr, outer_momentum,
                             batch_size, optimizer_state, failure_probability)  # fmt: skip
    require_minimum = bool(require_minimum)
    if spectrum is None:
        loss_fn, flat_params = loss_from_model(
            model, params, loss=loss, train=train, data=data, call_kwargs=call_kwargs,
            batch_keys=batch_keys,
        )  # fmt: skip

        def decided(estimate: HessianSpectrum) -> bool:
            if not setting.exact():
                return bool(estimate.converged[0])
            judged = _judge_local(estimate, setting, require_minimum, failure_probability)
            return judged.verdict is not None

        spectrum = hessian_spectrum(
            loss_fn, flat_params, data, k=1, tol=tol, max_hvps=max_hvps, seed=seed,
            progress=progress, return_vectors=bool(return_vectors),
            converge_smallest=require_minimum, stop_when=decided,
        )  # fmt: skip
    elif not isinstance(spectrum, HessianSpectrum):
        raise TypeError(f"spectrum must be a HessianSpectrum; got {type(spectrum).__name__}")
    return _local_sgd_report(spectrum, setting, require_minimum, failure_probability)
