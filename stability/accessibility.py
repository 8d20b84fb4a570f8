"""The verdict for a trained network: is its minimum accessible?

Near a minimum ``w*`` every update rule of this library is a linear recurrence;
along a Hessian eigenvector with eigenvalue ``a`` it is stable iff
``q = lr * a`` lies in the rule's stable interval ``(0, q_max(tau, beta))``
(Giladi et al., "At Stability's Edge", ICLR 2020, section 3). The paper's
criterion concerns the sharp side, so the verdict answers

    are the sharp directions stable?   lambda_max(H) < max_stable_sharpness(lr, tau, beta)
                                                     = q_max / lr.

Negative curvature is reported beside the verdict, in ``is_minimum``, not folded
into it: classifiers trained with cross-entropy end training with small negative
Hessian eigenvalues (Sagun et al. 2017; Ghorbani, Krishnan and Xiao 2019), for
reasons unrelated to delay, learning rate or momentum. ``is_minimum`` is True when
``lambda_min >= -FLAT_TOLERANCE x sharpness`` is established (flat directions,
eigenvalue ~0, are neutral: the loss does not change along them), False when a Ritz
value proves curvature below that, None when neither is established. With
``require_minimum=True`` a proven non-minimum makes the verdict False and the verdict
is True only when the minimum is established too.

Certificates. A Ritz value never exceeds ``lambda_max``, so a Ritz value at or above
the limit proves instability at once (``certified_by="ritz_value"``). Stability
needs an upper bound on ``lambda_max``; two are used:

- ``"random_start"``: Kuczynski and Wozniakowski's gap-free bound for Lanczos from a
  random start (1992): ``lambda_max <= HessianSpectrum.bounds(p)[0]`` with
  probability at least ``1 - p`` (``failure_probability``, default 1e-6) over the
  start vector, whatever the spectrum. It needs tens of products to be useful.
- ``"residual"``: the top Ritz value has converged (residual ``r <= tol x |theta|``)
  and ``theta + r`` is below the limit. Some eigenvalue lies within ``r`` of
  ``theta``; that it is ``lambda_max`` is presumed (false only when the random start
  is nearly orthogonal to the top eigenvector, the event whose probability the
  random-start bound measures).

Either certifies "stable"; the report says which one did. Every error includes the
rounding error of the products (``HessianSpectrum.rounding_error``). The estimation
is decision-driven: ``is_accessible`` stops as soon as the verdict is decided (the
smallest eigenvalue costs no extra products unless ``require_minimum=True``); near the
limit it runs to ``max_hvps`` and answers None (undecided) if still undecided.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from stability import boundary_locus, companion, delays
from stability.hessian_spectrum import HessianSpectrum, hessian_spectrum
from stability.models import loss_from_model
from stability.validation import check_beta, check_lr, check_momentum

__all__ = ["Accessibility", "is_accessible", "verdict_from_spectrum"]

# Curvature above -FLAT_TOLERANCE x sharpness counts as flat (zero): such a
# direction grows by at most 1 + lr * 1e-5 * sharpness per step.
FLAT_TOLERANCE = 1e-5


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
      spectrum: the `HessianSpectrum` used (reuse it with ``spectrum=``).
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
    spectrum: HessianSpectrum | None = dataclasses.field(default=None, repr=False)

    def __bool__(self) -> bool:
        return self.verdict is True

    def __repr__(self) -> str:
        word = {True: "ACCESSIBLE", False: "NOT ACCESSIBLE", None: "UNDECIDED"}[self.verdict]
        contracts = "it contracts" if self.spectral_radius < 1 else "it grows"
        return (
            f"Accessibility: {word}\n"
            f"  verdict           {self.reason}\n"
            f"  sharpness         {self.sharpness:.6g} +- {self.sharpness_error:.2g}: "
            f"{_percent(self.fraction_of_limit)} of the stable limit "
            f"{self.max_stable_sharpness:.6g}\n"
            f"  minimum           {self._minimum_line()}\n"
            f"  per-step factor   {self.spectral_radius:.8f} along the sharpest direction "
            f"({contracts})\n"
            f"  max stable lr     {self.max_stable_lr:.6g} at this tau, beta and rule\n"
            f"  hyperparameters   tau={_describe_tau(self.tau)}  lr={self.lr:.6g}  "
            f"beta={self.beta:g}  momentum={self.momentum}\n"
            f"  cost              {self.num_hvps} Hessian-vector products"
        )

    def _minimum_line(self) -> str:
        low = f"smallest eigenvalue {self.smallest_eigenvalue:.4g} +- {self.smallest_error:.2g}"
        rel = self.smallest_eigenvalue / abs(self.sharpness) if self.sharpness else math.nan
        if self.is_minimum is True:
            return f"yes: {low} (flat or positive curvature)"
        judged = "" if self.require_minimum else "; not part of the verdict (require_minimum=False)"
        if self.is_minimum is False:
            return (
                f"no: negative curvature, {low} ({_percent(rel)} of the sharpness); "
                f"that direction grows x{self.smallest_growth:.6g} per step{judged}"
            )
        return f"not established: {low}{judged}"

    def to_dict(self) -> dict:
        """A JSON-ready dict of the numbers (the spectrum object left out)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.pop("spectrum")
        out["tau"] = _describe_tau(self.tau)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None if math.isnan(value) else str(value)
        return out


def _percent(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{100 * x:.3g} %"


def _describe_tau(tau) -> object:
    if isinstance(tau, delays.DelayDistribution):
        p = np.asarray(tau.probabilities)
        mean = float(np.dot(np.arange(p.size), p))
        return f"distribution(max={p.size - 1}, mean={mean:.3g})"
    return int(tau)


class _Judgement(NamedTuple):
    verdict: bool | None
    is_minimum: bool | None
    certified_by: str | None
    reason: str
    upper: float


def _judge(spectrum: HessianSpectrum, limit: float, require_minimum: bool,
           failure_probability: float) -> _Judgement:  # fmt: skip
    """The verdict for ``spectrum`` against the stable limit ``limit``: the one rule
    used by the decision-driven stop of `is_accessible` and by the final report."""
    top, top_err = float(spectrum.eigenvalues[0]), float(spectrum.errors[0])
    low, low_err = float(spectrum.smallest), float(spectrum.smallest_error)
    upper, lower = spectrum.bounds(failure_probability)
    chance = f"with probability >= 1 - {failure_probability:g} (random-start bound)"

    # The sharp side: a Ritz value is a lower bound on lambda_max.
    if top >= limit:
        sharp, by = False, "ritz_value"
        why = (
            f"unstable: a Ritz value {top:.4g} is already at or above the stable limit "
            f"{limit:.4g}, so the sharpness is at least {_percent(top / limit)} of it"
        )
    elif upper < limit:
        sharp, by = True, "random_start"
        why = f"stable: sharpness <= {upper:.4g} < stable limit {limit:.4g} {chance}"
    elif bool(spectrum.converged[0]) and top + top_err < limit:
        sharp, by = True, "residual"
        why = (
            f"stable: sharpness {top:.4g} + {top_err:.2g} < stable limit {limit:.4g} "
            f"({_percent(top / limit)} of it; converged Ritz residual bound)"
        )
    else:
        sharp, by = None, None
        if top + top_err >= limit:
            why = (
                f"undecided: sharpness {top:.4g} +- {top_err:.2g} straddles the stable "
                f"limit {limit:.4g}"
            )
        else:
            why = (
                f"undecided: sharpness {top:.4g} +- {top_err:.2g} (below the stable limit "
                f"{limit:.4g}) has not converged"
            )
        why += f" after {spectrum.num_hvps} Hessian-vector products"

    # The minimum: a Ritz value is an upper bound on lambda_min.
    flat = FLAT_TOLERANCE * abs(top)
    if low < -FLAT_TOLERANCE * (abs(top) + top_err):
        minimum = False
    elif lower >= -flat or (bool(spectrum.smallest_converged) and low - low_err >= -flat):
        minimum = True
    else:
        minimum = None

    verdict = sharp
    if require_minimum and sharp is not False and minimum is not True:
        if minimum is False:
            verdict, by = False, "ritz_value"
            why = (
                f"not a minimum: a Ritz value {low:.4g} is below -{FLAT_TOLERANCE:g} x "
                f"sharpness (require_minimum=True)"
            )
        else:
            verdict, by = None, None
            why = (
                f"undecided: a minimum is not established (smallest eigenvalue {low:.4g} "
                f"+- {low_err:.2g} after {spectrum.num_hvps} Hessian-vector products; "
                f"require_minimum=True); sharp side: {why}"
            )
    return _Judgement(verdict, minimum, by, why, upper)


def _limit(lr, tau, beta, momentum) -> float:
    return float(boundary_locus.max_stable_sharpness(lr, tau, beta, momentum=momentum))


def verdict_from_spectrum(
    spectrum: HessianSpectrum,
    tau,
    lr: float,
    *,
    beta: float = 0.0,
    momentum: str = "heavy_ball",
    require_minimum: bool = False,
    failure_probability: float = 1e-6,
) -> Accessibility:
    """The verdict for a precomputed spectrum (cheap: no Hessian products).

    Sweeping many (tau, lr, beta) over one network costs one spectrum: call
    `hessian_spectrum` once and this function per setting (or pass
    ``spectrum=`` to `is_accessible`). The same rule as `is_accessible` decides
    (module docstring), so a reused spectrum never certifies more than a fresh call.
    """
    _check_hyperparameters(tau, lr, beta, momentum, failure_probability)
    if not isinstance(spectrum, HessianSpectrum):
        raise TypeError(f"spectrum must be a HessianSpectrum; got {type(spectrum).__name__}")
    limit = _limit(lr, tau, beta, momentum)
    judged = _judge(spectrum, limit, bool(require_minimum), failure_probability)
    top, low = float(spectrum.eigenvalues[0]), float(spectrum.smallest)

    def radius(a):
        return float(companion.spectral_radius(a, lr, tau, beta, momentum=momentum))

    max_lr = (
        float(boundary_locus.max_stable_lr(top, tau, beta, momentum=momentum))
        if top > 0
        else math.inf
    )
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
        fraction_of_limit=top / limit,
        spectral_radius=radius(top),
        smallest_growth=radius(low) if math.isfinite(low) else math.nan,
        max_stable_lr=max_lr,
        num_hvps=int(spectrum.num_hvps),
        tau=tau,
        lr=float(lr),
        beta=float(beta),
        momentum=momentum,
        require_minimum=bool(require_minimum),
        failure_probability=float(failure_probability),
        spectrum=spectrum,
    )


def _check_hyperparameters(tau, lr, beta, momentum, failure_probability) -> None:
    if not isinstance(tau, delays.DelayDistribution):
        from stability.validation import check_tau

        check_tau(tau)
        if np.ndim(tau) != 0:
            raise ValueError(f"tau must be a single delay or a DelayDistribution; got {tau!r}")
    if np.ndim(lr) != 0:
        raise ValueError(f"lr must be a scalar; got {lr!r}")
    check_lr(lr)
    check_beta(beta)
    check_momentum(momentum)
    if not (isinstance(failure_probability, (int, float)) and 0 < failure_probability < 1):
        raise ValueError(f"failure_probability must be in (0, 1); got {failure_probability!r}")


def is_accessible(
    model,
    params,
    tau,
    lr: float,
    *,
    beta: float = 0.0,
    momentum: str = "heavy_ball",
    data=None,
    loss=None,
    spectrum: HessianSpectrum | None = None,
    train: bool = False,
    call_kwargs=None,
    batch_keys: tuple[str, str] | None = None,
    require_minimum: bool = False,
    tol: float = 1e-3,
    failure_probability: float = 1e-6,
    max_hvps: int = 200,
    seed: int = 0,
    progress: bool = True,
    return_vectors: bool = False,
) -> Accessibility:
    """Are the sharp directions of the minimum ``params`` stable with delay tau and lr?

    Estimates the Hessian's top eigenvalue (Lanczos on Hessian-vector products of
    the mean loss over ``data``) only until the verdict is decided (module
    docstring): a Ritz value at or above the limit stops the run at once; a
    certified upper bound below it (the converged top Ritz value plus its residual,
    or the random-start bound) stops it too.

    Args:
      model: a callable ``loss(params)`` / ``loss(params, batch)``, a Flax
        linen ``Module`` (``params`` are its variables) or a Flax nnx
        ``Module`` (``params`` may be None: taken from the module). For
        modules, batches are ``(inputs, labels)`` and the loss defaults to
        mean softmax cross-entropy on integer labels; pass ``loss(outputs,
        labels) -> scalar`` for another (e.g. ``stability.mean_squared_error``).
        Modules are evaluated in eval mode (batch-norm running statistics,
        dropout off) unless ``train=True``; only the trainable parameters
        are differentiated. A ``__call__`` taking ``rngs``, ``train``,
        ``deterministic`` or ``use_running_average`` is called as the Flax examples
        write it, without editing the model (`stability.loss_from_model`).
      params: the trained parameters (a pytree).
      tau: integer delay or a `DelayDistribution` (first-moment stability).
      lr: learning rate (> 0).
      beta, momentum: momentum coefficient in [0, 1) and rule
        ("heavy_ball", "nesterov" or "shifted").
      data: one batch (a tuple ``(inputs, labels)`` or a dict), an iterable of
        batches or a callable returning an iterator; the Hessian is that of the mean
        loss over all examples.
      spectrum: a precomputed `HessianSpectrum`: skips the estimation.
      train, call_kwargs, batch_keys: passed to `stability.loss_from_model`
        (training-mode evaluation; extra ``__call__`` keywords; the input and label
        keys of dict batches such as ``{"image": ..., "label": ...}``).
      require_minimum: also require a minimum (``is_minimum`` True): a proven
        negative curvature below ``-1e-5 x sharpness`` makes the verdict False, and
        the run waits for the smallest eigenvalue (tens of extra products on the
        near-zero cluster of a trained network).
      tol: relative residual at which the top Ritz value counts as converged (the
        ``"residual"`` certificate requires it).
      failure_probability: of the random-start bound (``"random_start"``).
      max_hvps, seed, progress: passed to `hessian_spectrum`.
      return_vectors: keep the top eigenvector in ``result.spectrum`` (to
        start a simulation along the unstable direction).

    Returns:
      An `Accessibility` report; ``bool(report)`` is True only for a certified
      stable verdict.
    """
    _check_hyperparameters(tau, lr, beta, momentum, failure_probability)
    if spectrum is None:
        limit = _limit(lr, tau, beta, momentum)
        require = bool(require_minimum)

        def decided(estimate: HessianSpectrum) -> bool:
            return _judge(estimate, limit, require, failure_probability).verdict is not None

        # The adapter checks params against the model on the first in-memory batch.
        loss_fn, flat_params = loss_from_model(
            model, params, loss=loss, train=train, data=data, call_kwargs=call_kwargs,
            batch_keys=batch_keys,
        )  # fmt: skip
        spectrum = hessian_spectrum(
            loss_fn,
            flat_params,
            data,
            k=1,
            tol=tol,
            max_hvps=max_hvps,
            seed=seed,
            progress=progress,
            return_vectors=return_vectors,
            converge_smallest=require,
            stop_when=decided,
        )
    return verdict_from_spectrum(
        spectrum,
        tau,
        lr,
        beta=beta,
        momentum=momentum,
        require_minimum=require_minimum,
        failure_probability=failure_probability,
    )
