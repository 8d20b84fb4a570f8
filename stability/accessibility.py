"""The verdict for a trained network: is its minimum accessible?

A minimum w* is *accessible* to an update rule (delay tau, learning rate lr,
momentum beta) when it is linearly stable: along every Hessian eigenvector
with eigenvalue a the scalar recurrence in q = lr * a is stable. For the rules
of this library the stable set in q is the interval (0, q_max(tau, beta)), so

    accessible  <=>  lambda_min(H) >= 0  and  lambda_max(H) < q_max / lr
                                              = max_stable_sharpness(lr, tau, beta).

Zero curvature (flat directions of an over-parameterised network) is neutral:
the recurrence has a unit root there but the loss does not change, so it does
not make the minimum inaccessible. Curvature above -FLAT_TOLERANCE x sharpness
counts as flat; below it the point is a saddle, not a minimum. A substantially
negative eigenvalue is an isolated end of the spectrum, which Lanczos finds in
few steps; the near-zero cluster converges slowly and is reported as such.
(Giladi et al., "At Stability's Edge", ICLR 2020, section 3; THEORY.md
sections 2 and 4.)

The sharpness is a Lanczos estimate with an error bound (the Ritz residual).
The verdict is certified only when the whole interval sharpness +- error lies
on one side of the threshold; otherwise it is ``None`` ("undecided"). A Ritz
value never exceeds lambda_max, so an estimate already at or above the
threshold proves instability even before Lanczos has converged.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from stability import boundary_locus, companion, delays
from stability.hessian_spectrum import HessianSpectrum, hessian_spectrum
from stability.models import loss_from_model
from stability.validation import check_beta, check_lr, check_momentum

__all__ = ["Accessibility", "is_accessible", "verdict_from_spectrum"]

# Curvature above -FLAT_TOLERANCE x sharpness counts as flat (zero): such a
# direction grows by at most 1 + lr * 1e-5 * sharpness per step, and Lanczos
# cannot resolve the near-zero cluster of an over-parameterised network much
# better in float32.
FLAT_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class Accessibility:
    """What `is_accessible` found, with the numbers behind the verdict.

    Attributes:
      verdict: True (certified accessible), False (certified not accessible,
        or not a minimum) or None (undecided: the error bound of the sharpness
        straddles the threshold, or the estimate did not converge).
      sharpness, sharpness_error: largest Hessian eigenvalue and its bound
        (units of the loss per squared parameter unit).
      smallest_eigenvalue, smallest_error: the smallest eigenvalue and bound.
      max_stable_sharpness: q_max(tau, beta) / lr for these hyperparameters.
      margin: sharpness / max_stable_sharpness (< 1 is the stable side).
      spectral_radius: spectral radius along the top Hessian direction (or
        the bottom one when its curvature is negative, whichever is larger):
        the per-step growth (> 1) or contraction (< 1) factor of the worst
        direction. Flat directions (eigenvalue 0) are neutral and left out.
      max_stable_lr: the largest lr at this tau, beta and rule for which
        this sharpness is stable.
      reason: one line explaining the verdict.
      tau, lr, beta, momentum: the hyperparameters judged.
      spectrum: the `HessianSpectrum` used (reuse it with ``spectrum=``).
    """

    verdict: bool | None
    sharpness: float
    sharpness_error: float
    smallest_eigenvalue: float
    smallest_error: float
    max_stable_sharpness: float
    margin: float
    spectral_radius: float
    max_stable_lr: float
    reason: str
    tau: object
    lr: float
    beta: float
    momentum: str
    spectrum: HessianSpectrum | None = dataclasses.field(default=None, repr=False)

    def __bool__(self) -> bool:
        return self.verdict is True

    def __repr__(self) -> str:
        word = {True: "ACCESSIBLE", False: "NOT ACCESSIBLE", None: "UNDECIDED"}[self.verdict]
        tau = _describe_tau(self.tau)
        return (
            f"Accessibility: {word}  ({self.reason})\n"
            f"  hyperparameters   tau={tau}  lr={self.lr:.6g}  beta={self.beta:g}"
            f"  momentum={self.momentum}\n"
            f"  sharpness         {self.sharpness:.6g} +- {self.sharpness_error:.2g}"
            f"   (max stable {self.max_stable_sharpness:.6g}, margin {self.margin:.4f})\n"
            f"  smallest eig      {self.smallest_eigenvalue:.6g} +- {self.smallest_error:.2g}\n"
            f"  spectral radius   {self.spectral_radius:.8f}  (worst direction, per step)\n"
            f"  max stable lr     {self.max_stable_lr:.6g}  at this tau, beta and rule"
        )

    def to_dict(self) -> dict:
        """A JSON-ready dict of the numbers (the spectrum object left out)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.pop("spectrum")
        out["tau"] = _describe_tau(self.tau)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None if math.isnan(value) else str(value)
        return out


def _describe_tau(tau) -> object:
    if isinstance(tau, delays.DelayDistribution):
        p = np.asarray(tau.probabilities)
        mean = float(np.dot(np.arange(p.size), p))
        return f"distribution(max={p.size - 1}, mean={mean:.3g})"
    return int(tau)


def verdict_from_spectrum(
    spectrum: HessianSpectrum,
    tau,
    lr: float,
    *,
    beta: float = 0.0,
    momentum: str = "heavy_ball",
) -> Accessibility:
    """The verdict for a precomputed spectrum (cheap: no Hessian products).

    Sweeping many (tau, lr, beta) over one network costs one spectrum: call
    `hessian_spectrum` once and this function per setting (or pass
    ``spectrum=`` to `is_accessible`).
    """
    _check_hyperparameters(tau, lr, beta, momentum)
    top = float(spectrum.eigenvalues[0])
    top_err = float(spectrum.errors[0])
    top_ok = bool(spectrum.converged[0])
    low = float(spectrum.smallest)
    low_err = float(spectrum.smallest_error)
    low_ok = bool(spectrum.smallest_converged)

    limit = float(boundary_locus.max_stable_sharpness(lr, tau, beta, momentum=momentum))
    margin = top / limit
    # The worst direction is an end of the spectrum; a flat (zero) direction has
    # a neutral unit root, so the bottom counts only when it is really negative.
    ends = (top, low) if low + low_err < 0 else (top,)
    rho = max(float(companion.spectral_radius(a, lr, tau, beta, momentum=momentum)) for a in ends)
    max_lr = (
        float(boundary_locus.max_stable_lr(top, tau, beta, momentum=momentum))
        if top > 0
        else math.inf
    )

    # Order matters: not-a-minimum first, then the certified cases, then doubt.
    # A Ritz value never leaves [lambda_min, lambda_max]: the smallest one is an
    # upper bound on lambda_min, the largest a lower bound on lambda_max, so the
    # two "no" branches below hold even before Lanczos has converged.
    flat = FLAT_TOLERANCE * abs(top)
    if low < -flat:
        verdict, reason = (
            False,
            (
                f"not a minimum: negative curvature {low:.3g} "
                f"(below -{FLAT_TOLERANCE:g} x sharpness)"
            ),
        )
    elif top >= limit:
        verdict, reason = (
            False,
            (f"sharpness {top:.4g} >= max stable {limit:.4g}: the minimum is unstable"),
        )
    elif not top_ok:
        verdict, reason = (
            None,
            (f"undecided: the sharpness estimate did not converge (bound {top_err:.2g})"),
        )
    elif top + top_err >= limit:
        verdict, reason = (
            None,
            (
                f"undecided: sharpness {top:.4g} +- {top_err:.2g} straddles "
                f"the threshold {limit:.4g}"
            ),
        )
    else:
        verdict, reason = (
            True,
            (f"sharpness {top:.4g} < max stable {limit:.4g} (margin {margin:.3f})"),
        )
        if not low_ok:
            reason += "; smallest eigenvalue ~0 (flat directions), its estimate not converged"

    return Accessibility(
        verdict=verdict,
        sharpness=top,
        sharpness_error=top_err,
        smallest_eigenvalue=low,
        smallest_error=low_err,
        max_stable_sharpness=limit,
        margin=margin,
        spectral_radius=rho,
        max_stable_lr=max_lr,
        reason=reason,
        tau=tau,
        lr=float(lr),
        beta=float(beta),
        momentum=momentum,
        spectrum=spectrum,
    )


def _check_hyperparameters(tau, lr, beta, momentum) -> None:
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
    tol: float = 1e-6,
    max_hvps: int = 200,
    seed: int = 0,
    progress: bool = True,
    return_vectors: bool = False,
) -> Accessibility:
    """Is the minimum ``params`` of ``model`` accessible with delay tau and lr?

    Args:
      model: a callable ``loss(params)`` / ``loss(params, batch)``, a Flax
        linen ``Module`` (``params`` are its variables) or a Flax nnx
        ``Module`` (``params`` may be None: taken from the module). For
        modules, batches are ``(inputs, labels)`` and the loss defaults to
        mean softmax cross-entropy on integer labels; pass ``loss(outputs,
        labels) -> scalar`` for another (e.g. ``stability.mean_squared_error``).
        Modules are evaluated in eval mode (batch-norm running statistics,
        dropout off) unless ``train=True``; only the trainable parameters
        are differentiated.
      params: the trained parameters (a pytree).
      tau: integer delay or a `DelayDistribution` (first-moment stability).
      lr: learning rate (> 0).
      beta, momentum: momentum coefficient in [0, 1) and rule
        ("heavy_ball", "nesterov" or "shifted").
      data: one batch, an iterable of batches or a callable returning an
        iterator; the Hessian is that of the mean loss over all examples.
      spectrum: a precomputed `HessianSpectrum`: skips the estimation.
      tol, max_hvps, seed, progress: passed to `hessian_spectrum`.
      return_vectors: keep the top eigenvector in ``result.spectrum`` (to
        start a simulation along the unstable direction).

    Returns:
      An `Accessibility` report; ``bool(report)`` is True only for a certified
      accessible minimum.
    """
    _check_hyperparameters(tau, lr, beta, momentum)
    if spectrum is None:
        # One in-memory batch lets the adapter check params against the model.
        probe = data if isinstance(data, tuple) else None
        if isinstance(data, list) and data and isinstance(data[0], tuple):
            probe = data[0]
        loss_fn, flat_params = loss_from_model(model, params, loss=loss, train=train, data=probe)
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
            # The verdict is certified on the rigorous Ritz-residual bound,
            # not the (tighter) gap estimate.
            error_bound="residual",
        )
    elif not isinstance(spectrum, HessianSpectrum):
        raise TypeError(f"spectrum must be a HessianSpectrum; got {type(spectrum).__name__}")
    return verdict_from_spectrum(spectrum, tau, lr, beta=beta, momentum=momentum)
