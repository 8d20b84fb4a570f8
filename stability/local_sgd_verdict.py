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

The range of kappa over an interval: inner GD, exact (a closed form); inner heavy ball
and Nesterov, kappa is a polynomial of degree H in ``a`` and its range comes from a
Chebyshev interpolant checked against direct evaluation (the comment above
`_polynomial_range`; H <= 256, finite intervals only). A kept inner buffer (the
pseudo-gradient is not ``kappa(a) x_k``) and the frozen-preconditioner Adam (its
eigenvalues are those of ``P^-1/2 H P^-1/2``) are undecided, with the reason.

`stability.accessibility.is_accessible` imports this module inside the function (this
module builds that module's `Accessibility` report).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from stability.curvature.hessian_spectrum import HessianSpectrum, hessian_spectrum
from stability.judgement import Judgement, judge, with_minimum
from stability.networks.models import loss_from_model
from stability.report import Accessibility, LocalSGDAccessibility
from stability.theory import boundary_locus
from stability.theory import local_sgd as theory
from stability.theory.precision import host_float64
from stability.validation import check_lr

__all__ = ["local_sgd_accessible"]


# Along an eigenvalue a with the inner buffer reset, a round's polynomial is A_out +
# outer_lr kappa(a) B_out: a is stable iff outer_lr kappa(a) lies in the outer rule's
# stable interval (0, q_max), whatever a is otherwise. So "every a in [lo, hi] is
# stable" and "every a in [lo, hi] is unstable" are questions about the range of kappa
# over [lo, hi], kappa being non-monotone in a (inner_lr a > 1) or not.
#
# Inner GD: kappa(a) = 1 - (1 - inner_lr a)^H and the range of u^H over an interval of
# u = 1 - inner_lr a is exact (monotone for odd H; even H: its minimum 0 where the
# interval holds 0). Rounding: a relative margin.
_LOCAL_MARGIN = 1e-12

# Inner heavy ball, Nesterov (any linear rule but the preconditioned Adam, whose
# eigenvalues are those of P^-1/2 H P^-1/2, not of the Hessian measured here): T(a) is
# affine in a, so kappa(a) = 1 - e_1^T T(a)^H e_1 is a polynomial of degree <= H. Its
# range over a finite [lo, hi] is taken at the endpoints and the real parts of the roots
# of the derivative of its Chebyshev interpolant at H + 1 points (numpy, float64), plus
# the interpolant at the check points below (extra points inside the interval can only
# narrow the gap to the true range). The interpolant must agree with kappa evaluated
# directly (`stability.theory.local_sgd.pseudo_gradient_factor`) at 4 H + 16 other
# points of the interval to POLYNOMIAL_CHECK x max(1, max |kappa|), else nothing is
# certified; the range found is widened by POLYNOMIAL_MARGIN x that scale. This is
# floating point, not interval arithmetic: the margin covers the rounding of the
# interpolant and of the roots (an extremum is a critical point, so a root error delta
# moves the value by O(delta^2)) by orders of magnitude, without proof. The degree is
# capped (MAX_POLYNOMIAL_STEPS) and an infinite interval is not judged (the Ritz
# interval and the random-start bound still are).
POLYNOMIAL_CHECK = 1e-11
POLYNOMIAL_MARGIN = 1e-9
MAX_POLYNOMIAL_STEPS = 256
_ADAPTIVE = "preconditioned_adam"


def _polynomial_range(f, degree: int, lo: float, hi: float) -> tuple[float, float]:
    """``(min, max)`` of the polynomial ``f`` (degree <= ``degree``; evaluates an array)
    over ``[lo, hi]``, widened by the margin; ``(nan, nan)`` when its interpolant fails
    the check (see the comment above)."""
    if not hi > lo:  # one point (a zero residual bound): its value
        value = float(np.asarray(f(np.asarray([lo], np.float64)))[0])
        margin = POLYNOMIAL_MARGIN * max(1.0, abs(value))
        return value - margin, value + margin
    cheb = np.polynomial.Chebyshev.interpolate(f, max(degree, 1), domain=[lo, hi])
    n = 4 * degree + 16  # Chebyshev points of the first kind: interior, off the nodes
    x = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(np.pi * (np.arange(n) + 0.5) / n)
    direct, fitted = np.asarray(f(x), np.float64), cheb(x)
    scale = max(1.0, float(np.max(np.abs(direct))))
    if not (
        np.all(np.isfinite(direct)) and np.max(np.abs(fitted - direct)) <= POLYNOMIAL_CHECK * scale
    ):
        return math.nan, math.nan
    critical = cheb.deriv().roots() if degree >= 2 else np.zeros(0)
    points = np.clip(np.concatenate([[lo, hi], np.real(critical)]), lo, hi)
    values = np.concatenate([cheb(points), fitted])
    margin = POLYNOMIAL_MARGIN * scale
    return float(np.min(values)) - margin, float(np.max(values)) + margin


class _LocalSetting(NamedTuple):
    """A checked local SGD configuration, the outer hyperparameters and the outer
    rule's stable limit on ``outer_lr kappa`` (``q_limit = q_max / outer_lr``; NaN when
    the outer threshold is not certified)."""

    config: object
    outer_lr: float
    outer_momentum: float
    q_limit: float

    def closed_form(self) -> bool:  # inner GD, reset: the exact range of u^H
        return self.config.inner.name == "gd" and bool(self.config.reset)

    def polynomial(self) -> bool:  # another linear inner rule, reset: kappa's interpolant
        c = self.config
        return (
            bool(c.reset)
            and c.inner.name not in ("gd", _ADAPTIVE)
            and c.inner_steps <= MAX_POLYNOMIAL_STEPS
        )

    def exact(self) -> bool:  # the certificate's scope
        return self.closed_form() or self.polynomial()

    def scope(self) -> str:
        """Why a configuration is outside the certificate's scope ("" inside it)."""
        c = self.config
        if self.exact():
            return ""
        if not c.reset:
            return (
                "the inner buffer is kept across rounds, so the pseudo-gradient is not "
                "kappa(a) x_k for a number kappa(a) (docs/theory.md (48)) and the certificate "
                "(inner state reset every round) does not apply"
            )
        if c.inner.name == _ADAPTIVE:
            return (
                "the inner rule is the frozen-preconditioner Adam, whose kappa is a function of "
                "the eigenvalues of P^-1/2 H P^-1/2, not of the Hessian measured here"
            )
        return (
            f"H = {c.inner_steps} inner steps is above {MAX_POLYNOMIAL_STEPS}, the largest "
            "degree of kappa's interpolant"
        )

    def kappa(self, a):
        """kappa at the numbers ``a`` (float64 numpy)."""
        with host_float64():
            return np.asarray(theory.pseudo_gradient_factor(self.config, np.asarray(a, np.float64)))

    def kappa_range(self, lo: float, hi: float) -> tuple[float, float]:
        """``(min, max)`` of kappa over ``a`` in ``[lo, hi]`` (hi may be inf); inner GD:
        exact; other rules: the checked interpolant, ``(-inf, inf)`` for an infinite
        ``hi`` and ``(nan, nan)`` when the check fails (nothing certified either way)."""
        if not self.closed_form():
            if not math.isfinite(hi):
                return -math.inf, math.inf
            return _polynomial_range(self.kappa, self.config.inner_steps, lo, hi)
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

    def positive(self, upper: float) -> bool:
        """kappa > 0 on all of (0, upper]. kappa(0) = 0, so for the polynomial rules this
        is kappa(a) / a > 0 on [0, upper] (a polynomial of degree H - 1; its
        interpolation points are interior, never a = 0)."""
        lr = float(self.config.inner_lr)
        if self.closed_form():
            return self.config.inner_steps % 2 == 1 or lr * upper < 2 * (1 - _LOCAL_MARGIN)
        low, _ = _polynomial_range(
            lambda a: self.kappa(a) / a, self.config.inner_steps - 1, 0.0, upper
        )
        return low > 0

    def sharp_side_stable(self, upper: float) -> bool:
        """Every eigenvalue in (0, upper] stable: kappa in (0, q_limit) there (vacuous
        for upper <= 0: no curvature above 0, as a maximum has)."""
        if not upper > 0:
            return upper <= 0
        if not self.positive(upper):
            return False
        return self.kappa_range(0.0, upper)[1] < self.q_limit * (1 - _LOCAL_MARGIN)

    def max_stable_sharpness(self) -> float:
        """The first a > 0 where outer_lr kappa(a) leaves (0, q_max): every eigenvalue
        in (0, a) is stable (NaN outside the certificate's scope)."""
        if not self.exact() or not math.isfinite(self.q_limit):
            return math.nan
        h, lr, q = self.config.inner_steps, float(self.config.inner_lr), self.q_limit
        if not self.closed_form():
            return self._first_exit()
        if q <= 1:  # kappa rises through q before inner_lr a = 1
            return (1.0 - (1.0 - q) ** (1.0 / h)) / lr
        if h % 2 == 1:  # kappa = 1 + (inner_lr a - 1)^H beyond 1 / inner_lr
            return (1.0 + (q - 1.0) ** (1.0 / h)) / lr
        return 2.0 / lr  # even H: kappa falls back to 0 at inner_lr a = 2

    def _first_exit(self) -> float:
        """The smallest root in (0, b] of kappa(a) / a or of kappa(a) - q_limit (roots of
        their Chebyshev interpolants; a double root counts), b doubling from 1 / inner_lr
        until there is one (|kappa| grows like a^H, so there is). A reported number, not
        a certificate: the verdict uses `sharp_side_stable`."""
        h, lr, q = self.config.inner_steps, float(self.config.inner_lr), self.q_limit
        for k in range(24):
            b = 2.0**k / lr
            found = []
            for f, degree in ((lambda a: self.kappa(a) / a, h - 1),
                              (lambda a: self.kappa(a) - q, h)):  # fmt: skip
                if degree < 1:
                    continue
                cheb = np.polynomial.Chebyshev.interpolate(f, degree, domain=[0.0, b])
                roots = cheb.roots()
                real = roots[(np.abs(np.imag(roots)) <= 1e-6 * b) & (np.real(roots) > 0)]
                found += [float(r) for r in np.real(real) if r <= b]
            if found:
                return min(found)
        return math.nan


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
            "undecided: the local SGD certificate covers inner rules with the inner state reset "
            f"every round (inner GD; heavy ball, Nesterov up to H = {MAX_POLYNOMIAL_STEPS}); "
            f"got inner={setting.config.inner.name!r}, reset={setting.config.reset}: "
            f"{setting.scope()}"
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
        if setting.closed_form() and reach > 1:
            why += (
                f" (inner_lr x sharpness = {reach:.3g} > 1: kappa is not monotone, so an "
                "eigenvalue below the sharpness may be unstable while the top one is not; "
                "only the top is estimated)"
            )
        elif not setting.closed_form() and top + top_err > 0:
            if math.isnan(setting.kappa_range(0.0, top + top_err)[0]):
                why += (
                    " (kappa's Chebyshev interpolant failed its check against direct "
                    "evaluation: nothing certified)"
                )
            elif 0 < float(setting.kappa(top)) < setting.q_limit:
                why += (
                    " (kappa of a momentum inner rule is not monotone in general, so an "
                    "eigenvalue below the sharpness may be unstable while the top one is not; "
                    "only the top is estimated)"
                )
    if sharp is None:
        why += f" after {spectrum.num_hvps} Hessian-vector products"
    verdict, minimum = sharp, base.is_minimum
    if require_minimum:
        verdict, by, why = with_minimum(
            sharp, by, why, minimum, low, low_err, spectrum.num_hvps,
            grows="; kappa < 0 there: that direction grows",
        )  # fmt: skip
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
