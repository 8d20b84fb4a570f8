"""The report of a verdict: `Accessibility` and its parts, and how it prints.

`Accessibility` holds what `stability.is_accessible` found with the numbers behind
it; its parts hold the mini-batch (`MinibatchAccessibility`), adaptive
(`AdaptiveAccessibility`) and local SGD (`LocalSGDAccessibility`) findings. The
verdicts themselves are decided in `stability.judgement` (the rule against a
spectrum) and in the modules that build each report (`stability.accessibility`,
`stability.local_sgd_verdict`); this module only holds and formats them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import numpy as np

from stability.curvature.hessian_spectrum import HessianSpectrum
from stability.theory import delays

__all__ = [
    "Accessibility",
    "AdaptiveAccessibility",
    "LocalSGDAccessibility",
    "MinibatchAccessibility",
    "PipelineAccessibility",
]


class MinibatchAccessibility(NamedTuple):
    """The mini-batch part of an `Accessibility` report (``report.minibatch``): the
    mean-square condition beside the deterministic one (module docstring).

    Attributes:
      batch_size, num_examples, replacement: the sampling judged (``num_examples``
        None when it was not given and not measured).
      variance_factor: ``gamma`` (`stability.theory.mean_square.variance_factor`).
      nonuniformity: ``s = sqrt(v^T Sigma v)`` along the top Ritz vector (Hessian
        units; None when not computed: the deterministic side failed or the top
        Ritz value did not converge).
      noise_gain: ``lr^2 gamma s^2 N(lr a)`` at the sharpness (< 1: the second
        moment is stable; inf when the mean itself is not).
      max_nonuniformity: ``sqrt(u^T Sigma u)`` along the top Ritz vector ``u`` of
        Sigma (Wu, Ma and E's non-uniformity ``sqrt(lambda_max(Sigma))``);
        max_nonuniformity_curvature: ``u^T H u``; noise_gain_nonuniform: the gain
        along u (None when not computed: the sharp direction already decided).
      wu_ma_e_lambda_max: the top Ritz value of Wu, Ma and E's matrix ``(I - lr H)^2 +
        lr^2 gamma Sigma`` (`stability.curvature.nonuniformity.wu_ma_e_spectrum`; > 1: their
        condition fails); worst_curvature, worst_nonuniformity, noise_gain_worst:
        ``a``, ``s`` and the gain along its Ritz vector (None when not needed, or
        when no direction has a positive excess: then flat).
      second_moment_growth: per-step factor of the second moment, the larger of the
        two directions (< 1 decays).
      max_stable_lr_minibatch: the largest lr at which both directions are stable in
        mean square (compare ``max_stable_lr``).
      mean_square_verdict: the noise condition alone, across the sharpness error
        bar: True (gain < 1 along both), False (>= 1 along one) or None.
      binding: ``"deterministic"`` or ``"stochastic"`` (module docstring).
      data_passes: passes of per-example products over the data (0 when the
        deterministic side decided alone).
    """

    batch_size: int
    num_examples: int | None = None
    replacement: bool = False
    variance_factor: float | None = None
    nonuniformity: float | None = None
    noise_gain: float | None = None
    max_nonuniformity: float | None = None
    max_nonuniformity_curvature: float | None = None
    noise_gain_nonuniform: float | None = None
    wu_ma_e_lambda_max: float | None = None
    worst_curvature: float | None = None
    worst_nonuniformity: float | None = None
    noise_gain_worst: float | None = None
    second_moment_growth: float | None = None
    max_stable_lr_minibatch: float | None = None
    mean_square_verdict: bool | None = None
    binding: str | None = None
    data_passes: int | None = None


class AdaptiveAccessibility(NamedTuple):
    """The optimizer part of an `Accessibility` report for Adam, AdamW or RMSprop
    (``report.adaptive``; docs/theory.md section 16): the Hessian judged is the
    preconditioned ``P^-1/2 H P^-1/2`` with the second moment frozen at the state's.

    Attributes:
      optimizer: ``"adam"``, ``"adamw"`` or ``"rmsprop"`` (`stability.Preconditioner.kind`).
      b1: the first-moment decay (the report's ``beta``). bias_correction: ``c =
        1 / (1 - b1^t)`` at the state's step count (RMSprop: ``1 / (1 - momentum)``).
      weight_decay: AdamW's decoupled decay (0 otherwise). count: the step count.
      corrected_lr: ``lr c``, the rule's learning rate: the limit is
        ``q_max / (lr c)`` in preconditioned units.
      b2: the second-moment decay. decay_horizon: the steps a stable verdict lasts if
        the gradient vanishes (an exact full-batch minimum): the second moment then
        decays by b2 per step and the preconditioned sharpness grows like
        ``b2^(-t/2)`` (while ``sqrt(v) >> eps``), reaching the limit after about
        ``2 ln(limit / sharpness) / ln(1 / b2)`` steps (None when not stable).
      preconditioner: the `stability.Preconditioner` used (left out of ``to_dict``).
    """

    optimizer: str
    b1: float
    bias_correction: float
    weight_decay: float
    count: int | None
    corrected_lr: float
    b2: float = 0.999
    decay_horizon: float | None = None
    preconditioner: object = None


class LocalSGDAccessibility(NamedTuple):
    """The local SGD / DiLoCo part of an `Accessibility` report (``report.local_sgd``;
    docs/theory.md section 17): the minimum judged under rounds of H inner steps and an
    outer rule, eigenvalue by eigenvalue (`stability.theory.local_sgd`).

    Attributes:
      config: the `stability.LocalSGD` judged (inner rule, inner lr, H, reset, outer
        rule, schedule, workers, overlap).
      outer_lr, outer_momentum: the outer rule's learning rate and momentum.
      kappa: the pseudo-gradient factor ``kappa(a)`` at the sharpness (46).
      max_stable_outer_lr: the largest stable outer lr at the sharpness (49).
      round_radius: the growth per round (H inner steps) along the sharpest direction
        (`stability.theory.local_sgd.round_spectral_radius`; < 1 contracts).
      max_stable_sharpness: the largest ``a`` such that every eigenvalue in ``(0, a)``
        is stable (inner GD with the buffer reset: a closed form; heavy ball, Nesterov:
        the first root of a Chebyshev interpolant; NaN otherwise).
    """

    config: object
    outer_lr: float
    outer_momentum: float
    kappa: float | None = None
    max_stable_outer_lr: float | None = None
    round_radius: float | None = None
    max_stable_sharpness: float | None = None


class PipelineAccessibility(NamedTuple):
    """The block-delay part of an `Accessibility` report (``report.pipeline``): a delay
    per block of parameters (a pipeline's stages), judged on the coupled dynamics
    ``det(A(z) I + lr sum_b B_b(z) P_b H)`` (docs/theory.md section 18,
    `stability.pipeline_verdict`).

    Attributes:
      blocks: the resolved `stability.BlockDelays` (which leaves have which delay).
      max_stable_lr: the largest stable lr by the Ritz reduction
        (`stability.block_delay_max_lr`): an estimate, with ``margin``.
      margin: the relative half-width of the undecided band around it: the verdict
        is decided only for ``lr <= max_stable_lr (1 - margin)`` or ``lr >=
        max_stable_lr (1 + margin)``. It covers the measured error indicators (three
        times the change with k and the backward error, at least the working
        precision's floor); it is not a proof.
      lr_change, backward_error, k: the reduction's convergence in k, the backward
        error of its critical eigenpair in the full problem, and the Ritz pairs used.
      critical_root: the root ``exp(i theta)`` at which the reduced problem crosses the
        unit circle at ``max_stable_lr``.
      radius, radius_residual, radius_converged: the largest-modulus eigenvalue of the
        full history operator at this lr (Krylov-Schur Arnoldi,
        `stability.block_delay_radius`), its residual and convergence; run only when
        the estimate says unstable (an eigenvalue outside the unit circle then confirms
        it on the full operator); nan otherwise.
      lr_uniform_max_delay, lr_uniform_mean_delay, lr_delay_distribution, mean_delay:
        what the uniform models say for the same sharpness: every block at the largest
        delay, at floor / ceil of the parameter-weighted mean delay, and the scalar
        first-moment model with the delays' distribution.
    """

    blocks: Any
    max_stable_lr: float
    margin: float
    lr_change: float
    backward_error: float
    k: int
    critical_root: complex
    radius: float
    radius_residual: float
    radius_converged: bool
    lr_uniform_max_delay: float
    lr_uniform_mean_delay: tuple[float, float]
    lr_delay_distribution: float
    mean_delay: float


def _alias(name: str) -> property:
    """A read-only property of `Accessibility`: ``minibatch.<name>``, None without
    ``batch_size``."""

    def read(self):
        return None if self.minibatch is None else getattr(self.minibatch, name)

    return property(read, doc=f"Alias of ``minibatch.{name}`` (None without batch_size).")


@dataclasses.dataclass(frozen=True)
class Accessibility:
    """What `is_accessible` found, with the numbers behind the verdict.

    Attributes:
      verdict: are the sharp directions stable? True (certified), False
        (certified unstable; or, with ``require_minimum=True``, a proven
        non-minimum) or None (undecided: the error bar straddles the limit, or
        ``max_hvps`` ran out before a certificate).
      is_minimum: True (``lambda_min >= -1e-5 x sharpness`` established), False
        (a Ritz value proves curvature below that: a saddle) or None (not
        established). Part of the verdict only with ``require_minimum=True``.
      certified_by: which bound decided the verdict: ``"ritz_value"`` (a Ritz value
        at or above the limit, or below the flat tolerance: proof),
        ``"residual"`` (the converged top Ritz value plus its residual, presuming it
        approximates ``lambda_max``) or ``"random_start"`` (the gap-free
        probabilistic bound, failing with probability at most
        ``failure_probability``); None when undecided.
      reason: one line: which condition decided, in words.
      sharpness, sharpness_error: the largest Ritz value (a lower bound on
        ``lambda_max``) and its residual bound (loss units per squared parameter
        unit).
      sharpness_upper_bound: ``lambda_max`` is at most this with probability at
        least ``1 - failure_probability`` (inf until enough products have run).
      smallest_eigenvalue, smallest_error: the smallest Ritz value (an upper bound
        on ``lambda_min``) and its residual bound.
      max_stable_sharpness: the stable limit ``q_max(tau, beta) / lr``.
      fraction_of_limit: sharpness / max_stable_sharpness: below 1 is stable
        (0.21 reads "sharpness is 21 % of the stable limit").
      spectral_radius: per-step growth (> 1) or contraction (< 1) factor of the
        recurrence along the sharpest direction.
      smallest_growth: the same factor along the smallest eigenvalue's direction
        (> 1 when its curvature is negative: that direction is left, not kept).
      max_stable_lr: the largest lr at this tau, beta and rule for which this
        sharpness is stable.
      num_hvps: Hessian-vector products spent (0 for a reused spectrum).
      tau, lr, beta, momentum, require_minimum, failure_probability: as judged.
      product_error: below float64, how far the working-precision products are from
        float64 products along the top Ritz vector (``HessianSpectrum.product_error``,
        0 in float64); included in ``sharpness_error``. Above ``1e-4 x sharpness`` it
        marks a non-smooth point or a loss that loses precision, and the reason says so.
      spectrum: the `HessianSpectrum` used (reuse it with ``spectrum=``).

      minibatch: with ``batch_size``, the mini-batch part of the report
        (`MinibatchAccessibility`); None without it.
      adaptive: with ``optimizer_state`` (Adam, AdamW, RMSprop), the optimizer part
        (`AdaptiveAccessibility`); None otherwise. Then ``sharpness`` and the limit are
        those of the preconditioned Hessian, ``lr`` is the optimizer's, ``beta`` its b1
        and ``max_stable_lr`` in the optimizer's lr.
      local_sgd: with ``local_sgd``, the local SGD / DiLoCo part
        (`LocalSGDAccessibility`); None otherwise. Then ``lr``, ``beta``, ``momentum``
        and ``tau`` are the outer rule's and its delay in rounds, ``max_stable_sharpness``
        the first eigenvalue where the outer rate leaves the stable interval,
        ``max_stable_lr`` the largest stable outer lr, and ``spectral_radius`` the
        round radius to the power 1/H (per inner step).

    Aliases: ``batch_size``, ``num_examples``, ``replacement``, ``variance_factor``,
    ``nonuniformity``, ``noise_gain``, ``max_nonuniformity``,
    ``max_nonuniformity_curvature``, ``noise_gain_nonuniform``, ``wu_ma_e_lambda_max``,
    ``worst_curvature``, ``worst_nonuniformity``, ``noise_gain_worst``,
    ``second_moment_growth``, ``max_stable_lr_minibatch``, ``mean_square_verdict``,
    ``binding`` and ``data_passes`` read the field of that name of ``minibatch``
    (``report.noise_gain`` is ``report.minibatch.noise_gain``), None without
    ``batch_size``. They are properties, not fields (`to_dict` lists them after the
    others, and only with ``batch_size``).
    """

    verdict: bool | None
    is_minimum: bool | None
    certified_by: str | None
    reason: str
    sharpness: float
    sharpness_error: float
    sharpness_upper_bound: float
    smallest_eigenvalue: float
    smallest_error: float
    max_stable_sharpness: float
    fraction_of_limit: float
    spectral_radius: float
    smallest_growth: float
    max_stable_lr: float
    num_hvps: int
    tau: object
    lr: float
    beta: float
    momentum: str
    require_minimum: bool = False
    failure_probability: float = 1e-6
    product_error: float = 0.0
    spectrum: HessianSpectrum | None = dataclasses.field(default=None, repr=False)
    minibatch: MinibatchAccessibility | None = None
    adaptive: AdaptiveAccessibility | None = None
    local_sgd: LocalSGDAccessibility | None = None
    pipeline: PipelineAccessibility | None = None

    batch_size = _alias("batch_size")
    num_examples = _alias("num_examples")
    replacement = _alias("replacement")
    variance_factor = _alias("variance_factor")
    nonuniformity = _alias("nonuniformity")
    noise_gain = _alias("noise_gain")
    max_nonuniformity = _alias("max_nonuniformity")
    max_nonuniformity_curvature = _alias("max_nonuniformity_curvature")
    noise_gain_nonuniform = _alias("noise_gain_nonuniform")
    wu_ma_e_lambda_max = _alias("wu_ma_e_lambda_max")
    worst_curvature = _alias("worst_curvature")
    worst_nonuniformity = _alias("worst_nonuniformity")
    noise_gain_worst = _alias("noise_gain_worst")
    second_moment_growth = _alias("second_moment_growth")
    max_stable_lr_minibatch = _alias("max_stable_lr_minibatch")
    mean_square_verdict = _alias("mean_square_verdict")
    binding = _alias("binding")
    data_passes = _alias("data_passes")

    def __bool__(self) -> bool:
        return self.verdict is True

    def __repr__(self) -> str:
        word = {True: "ACCESSIBLE", False: "NOT ACCESSIBLE", None: "UNDECIDED"}[self.verdict]
        if self.is_minimum is False and self.verdict is not False:
            word += " (not a minimum)"
        rho = self.spectral_radius
        contracts = "n/a" if not math.isfinite(rho) else "it contracts" if rho < 1 else "it grows"
        if self.verdict is None:
            contracts += " at the estimate; not certified"
        sharp, limit = distinct(self.sharpness, self.max_stable_sharpness)
        return (
            f"Accessibility: {word}\n"
            f"  verdict           {self.reason}\n"
            f"  sharpness         {sharp} +- {_number(self.sharpness_error, '.2g')}: "
            f"{percent(self.fraction_of_limit)} of the stable limit {limit}\n"
            f"  minimum           {self._minimum_line()}\n"
            f"  per-step factor   {_factor(rho)} along the sharpest direction "
            f"({contracts})\n"
            f"  max stable lr     {_number(self.max_stable_lr, '.6g')} at this tau, beta and "
            "rule\n"
            f"  hyperparameters   tau={_describe_tau(self.tau)}  lr={self.lr:.6g}  "
            f"beta={self.beta:g}  momentum={self.momentum}\n"
            f"  cost              {self.num_hvps} Hessian-vector products"
            + self._minibatch_lines()
            + self._adaptive_lines()
            + self._local_sgd_lines()
            + self._pipeline_lines()
        )

    def _pipeline_lines(self) -> str:
        p = self.pipeline
        if p is None:
            return ""
        floor, ceil = p.lr_uniform_mean_delay
        radius = (
            ""
            if not math.isfinite(p.radius)
            else f"; full operator at this lr: radius {p.radius:.6g} (residual "
            f"{p.radius_residual:.2g}{'' if p.radius_converged else ', not converged'})"
        )
        return (
            f"\n  block delays      {p.blocks.describe()}\n"
            f"  pipeline          max stable lr {_number(p.max_stable_lr, '.6g')} +- "
            f"{percent(p.margin)} (k={p.k} Ritz pairs, change with k "
            f"{_number(p.lr_change, '.2g')}, backward error {_number(p.backward_error, '.2g')})"
            f"{radius}\n"
            f"  uniform models    tau=max {_versus(p.lr_uniform_max_delay, p.max_stable_lr)}, "
            f"tau=mean {p.mean_delay:.3g} (floor/ceil) {_versus(floor, p.max_stable_lr)} / "
            f"{_versus(ceil, p.max_stable_lr)}, delay distribution "
            f"{_versus(p.lr_delay_distribution, p.max_stable_lr)} (max stable lr; vs the "
            "block estimate)"
        )

    def _local_sgd_lines(self) -> str:
        p = self.local_sgd
        if p is None:
            return ""
        c = p.config
        schedule = c.schedule + (
            f" (M={c.workers})" if c.schedule == "eager"
            else f" (overlap {c.overlap})" if c.schedule == "streaming" else ""
        )  # fmt: skip
        return (
            f"\n  local SGD         {c.inner.name} inner lr {c.inner_lr:g} x H={c.inner_steps} "
            f"({'reset' if c.reset else 'kept'} buffer), outer {c.outer.name} lr "
            f"{p.outer_lr:g} momentum {p.outer_momentum:g}, {schedule}: kappa "
            f"{_number(p.kappa, '.6g')} at the sharpness, round radius "
            f"{_factor(p.round_radius)}, max stable outer lr "
            f"{_number(p.max_stable_outer_lr, '.6g')} (the lines above: lr is the outer lr, "
            "the per-step factor is the round radius^(1/H))"
        )

    def _adaptive_lines(self) -> str:
        a = self.adaptive
        if a is None:
            return ""
        decay = f", weight decay {a.weight_decay:g}" if a.weight_decay else ""
        text = (
            f"\n  optimizer         {a.optimizer} (b1={a.b1:g}, step {a.count}, bias correction "
            f"c={a.bias_correction:.6g}{decay}): the sharpness is that of P^-1/2 H P^-1/2 with "
            f"the second moment frozen at the state's; the rule's lr is lr c = "
            f"{a.corrected_lr:.6g}"
        )
        if a.decay_horizon is not None:
            shrink = self.spectral_radius**a.decay_horizon
            text += (
                f"\n  live Adam         if the gradient vanishes (an exact full-batch minimum) the "
                f"second moment decays by b2={a.b2:g} per step and the preconditioned sharpness "
                f"grows like b2^(-t/2): this state stays stable for about "
                f"{_number(a.decay_horizon, '.0f')} steps, while a perturbation along the "
                f"sharpest direction shrinks by at most x{shrink:.2g}; then it grows "
                "(mini-batch noise keeps v near its level)"
            )
            if shrink > 0.1:
                text += "; little margin for live full-batch Adam"
        elif self.verdict is False:
            text += (
                "\n  live Adam         at an exact minimum live Adam grows at least as fast "
                "(its preconditioned sharpness only grows as v decays)"
            )
        return text

    def _minibatch_lines(self) -> str:
        m = self.minibatch
        if m is None:
            return ""
        sampling = "with" if m.replacement else "without"
        n = "?" if m.num_examples is None else m.num_examples
        gamma = m.variance_factor
        gamma = "" if gamma is None else f" (variance factor {gamma:.4g})"
        lines = [f"  mini-batch        B={m.batch_size} of n={n}, {sampling} replacement{gamma}"]
        if m.nonuniformity is None:
            lines.append("  non-uniformity    not computed (the verdict did not need it, or the "
                         "top Ritz vector is not resolved)")  # fmt: skip
        else:
            lines.append(
                f"  non-uniformity    s={_number(m.nonuniformity, '.6g')} along the sharp "
                "direction: "
                f"second-moment gain {_number(m.noise_gain, '.4g')} (< 1 stable)"
            )
            if m.max_nonuniformity is not None:
                lines.append(
                    f"  max non-unif.     s={_number(m.max_nonuniformity, '.6g')} along the "
                    "most non-uniform direction (curvature "
                    f"{_number(m.max_nonuniformity_curvature, '.4g')}): "
                    f"gain {_number(m.noise_gain_nonuniform, '.4g')}"
                )
            if m.wu_ma_e_lambda_max is not None:
                worst = (
                    "no direction above 1"
                    if m.noise_gain_worst is None
                    else f"its top direction (curvature {_number(m.worst_curvature, '.4g')}, s="
                    f"{_number(m.worst_nonuniformity, '.6g')}): gain "
                    f"{_number(m.noise_gain_worst, '.4g')}"
                )
                lines.append(
                    f"  Wu-Ma-E matrix    lambda_max {_number(m.wu_ma_e_lambda_max, '.8f')}; "
                    f"{worst}"
                )
            growth = m.second_moment_growth
            grows = "n/a" if growth is None or math.isnan(growth) else (
                "it decays" if growth < 1 else "it grows"
            )  # fmt: skip
            lines.append(
                f"  second moment     per-step factor {_number(m.second_moment_growth, '.8f')} ("
                f"{grows}); max stable lr {_number(m.max_stable_lr_minibatch, '.6g')} with "
                "these mini-batches"
            )
        if m.binding is not None:
            lines.append(f"  binding           {m.binding} condition")
        return "\n" + "\n".join(lines)

    def _minimum_line(self) -> str:
        low = (
            f"smallest eigenvalue {_number(self.smallest_eigenvalue, '.4g')} +- "
            f"{_number(self.smallest_error, '.2g')}"
        )
        rel = self.smallest_eigenvalue / abs(self.sharpness) if self.sharpness else math.nan
        if self.is_minimum is True:
            return f"yes: {low} (flat or positive curvature)"
        judged = "" if self.require_minimum else "; not part of the verdict (require_minimum=False)"
        if self.is_minimum is False:
            return (
                f"no: negative curvature, {low} ({percent(rel)} of the sharpness); "
                f"that direction grows x{_short_factor(self.smallest_growth)} per step{judged}"
            )
        return f"not established: {low}{judged}"

    def to_dict(self) -> dict:
        """A JSON-ready dict of the numbers (the spectrum object left out); a value that
        is not a finite number (an unbounded bound, an undefined factor) is None."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.pop("spectrum")
        out.pop("minibatch")
        out.pop("adaptive")
        out.pop("local_sgd")
        out.pop("pipeline")
        if self.minibatch is not None:
            out.update(self.minibatch._asdict())
        if self.adaptive is not None:
            adaptive = self.adaptive._asdict()
            adaptive.pop("preconditioner")
            out["adaptive"] = adaptive
        if self.local_sgd is not None:
            out["local_sgd"] = local_sgd_dict(self.local_sgd)
        if self.pipeline is not None:
            out["pipeline"] = pipeline_dict(self.pipeline)
        out["tau"] = _describe_tau(self.tau)
        out["momentum"] = str(self.momentum)  # a rule object by its name
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None  # JSON numbers are numbers or null (no "inf", no NaN)
        return out


def _versus(x: float, reference: float) -> str:
    """``x`` and how far it is from ``reference``: ``0.966 (-3.6 %)``."""
    if not (math.isfinite(x) and math.isfinite(reference) and reference > 0):
        return _number(x, ".6g")
    return f"{x:.6g} ({(x / reference - 1) * 100:+.1f} %)"


def _number(x, spec: str) -> str:
    """``x`` formatted with ``spec``; "n/a" for None or NaN (a report never shows nan)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def _factor(rho) -> str:
    """A per-step factor with the digits that show its distance from 1 (1 - 1e-11 is
    not "1.00000000"); "n/a" when undefined."""
    if rho is None or not math.isfinite(rho):
        return _number(rho, ".8f")
    for digits in range(8, 18):
        text = f"{rho:.{digits}f}"
        if rho == 1 or float(text) != 1:
            return text
    return repr(rho)


def _short_factor(rho) -> str:
    """Six significant digits, more when those would read as exactly 1."""
    text = _number(rho, ".6g")
    return _factor(rho) if text == "1" and rho != 1 else text


def distinct(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` with the fewest significant digits (at least 6) that show them
    apart when they differ (1.851 against a limit of 1.851 shows their order)."""
    for digits in range(6, 18):
        sa, sb = _number(a, f".{digits}g"), _number(b, f".{digits}g")
        if a == b or sa != sb:
            return sa, sb
    return repr(a), repr(b)


def percent(x: float) -> str:
    """``x`` as a percentage, with enough digits that a value other than 1 never
    reads as 100 % (100.3 % is not "100 %")."""
    if not math.isfinite(x):
        return "n/a" if math.isnan(x) else str(x)
    for digits in range(3, 12):
        text = f"{100 * x:.{digits}g}"
        if x == 1 or float(text) != 100:
            return f"{text} %"
    return f"{100 * x!r} %"


def _describe_tau(tau) -> object:
    if isinstance(tau, delays.DelayDistribution):
        p = np.asarray(tau.probabilities)
        mean = float(np.dot(np.arange(p.size), p))
        return f"distribution(max={p.size - 1}, mean={mean:.3g})"
    return int(tau)


def local_sgd_dict(part: LocalSGDAccessibility) -> dict:
    """``part`` JSON-ready: the config's rules by name, non-finite numbers as None."""
    config = {k: (v.name if hasattr(v, "name") and not isinstance(v, str) else v)
              for k, v in part.config._asdict().items()}  # fmt: skip
    out = dict(part._asdict(), config=config)
    for key, value in out.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
    return out


def pipeline_dict(part: PipelineAccessibility) -> dict:
    """``part`` JSON-ready: the blocks as delays and sizes, the root as (re, im),
    non-finite numbers as None."""
    out = part._asdict()
    blocks = out.pop("blocks")
    out["delays"] = list(blocks.delays)
    out["sizes"] = list(blocks.sizes)
    out["stages"] = None if blocks.stages is None else [list(g) for g in blocks.stages]
    out["critical_root"] = [part.critical_root.real, part.critical_root.imag]
    out["lr_uniform_mean_delay"] = [
        x if math.isfinite(x) else None for x in part.lr_uniform_mean_delay
    ]
    for key, value in out.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
    return out
