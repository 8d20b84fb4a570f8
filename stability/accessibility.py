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
rounding error of the products (``HessianSpectrum.rounding_error``).

Precision. In float32 (JAX's default), bfloat16 or float16 the products themselves
can be a few per cent from the network's Hessian (saturated softmax, ReLU kinks), so
no certificate rests on them: at the end of the run the certifying Ritz vectors are
multiplied once more in float64 (`stability.curvature.verification`), and the verdict
is judged on their float64 Rayleigh quotients and residuals, with the difference
between the two precisions (``product_error``) added to every bar; a Ritz value
certifies instability only when it less that difference is at or above the limit.
Where the float64 residual no longer decides, the run goes on in float64 from those
vectors. A difference above ``1e-4 x sharpness`` marks a non-smooth point (the
precisions select different pieces) or a loss that loses precision; the reason
says so, and a verdict that the difference could flip is undecided. The estimation
is decision-driven: ``is_accessible`` stops as soon as the verdict is decided (the
smallest eigenvalue costs no extra products unless ``require_minimum=True``); near the
limit it runs to ``max_hvps`` and answers None (undecided) if still undecided.

Mini-batches (``batch_size=B``, ``num_examples=n``): the verdict also requires the
mean-square condition of `stability.theory.mean_square` along the sharp direction: with
``v`` the top Ritz vector, ``a`` its Ritz value and ``s^2 = v^T Sigma v`` the
non-uniformity of the per-example Hessians (`stability.curvature.nonuniformity`), stable iff
``lr^2 gamma s^2 N(lr a) < 1`` (evaluated across ``a``'s error bar) besides the
deterministic condition. Decision-driven: the run stops at a Ritz value above the
limit (the deterministic condition fails; no non-uniformity is computed), otherwise
once the deterministic side is decided and the top Ritz value has converged (its
vector is needed), then one pass of per-example products gives ``s``. A False
verdict from the noise alone has ``certified_by="mean_square"``; like
``"residual"`` it presumes the Ritz vector approximates the top eigenvector.
``binding`` says which condition decides: ``"deterministic"`` when the full-batch
recursion fails or when the noise lowers the largest stable lr by less than
``BINDING_TOLERANCE`` (1 %), ``"stochastic"`` when the noise alone makes the
verdict False or lowers that lr by more.

Local SGD / DiLoCo (``local_sgd=``, `LocalSGDAccessibility`; docs/theory.md section
17): rounds of H inner steps and an outer rule. With the inner buffer reset, an
eigenvalue ``a`` is stable iff ``outer_lr kappa(a)`` lies in the outer rule's stable
interval ``(0, q_max)``; kappa is not monotone in ``a`` (``inner_lr a > 1``), so the
verdict asks it of every ``a`` in an interval: "stable" when all of ``(0, upper]``
is (``upper`` the random-start bound or the converged Ritz value plus its residual),
"unstable" when all of ``[theta_1, inf)`` (``certified_by="ritz_value"``), all of
``theta_1 +- r_1`` (``"ritz_interval"``: some eigenvalue lies there) or all of
``[theta_1, upper]`` is not. For inner GD the range of kappa over an interval is
exact; for inner heavy ball and Nesterov (kappa a polynomial of degree H) it comes from
a checked Chebyshev interpolant; a kept buffer and the inner Adam are left undecided,
with the reason. The code is in `stability.local_sgd_verdict`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

from stability.curvature.hessian_spectrum import HessianSpectrum, hessian_spectrum
from stability.curvature.nonuniformity import (
    directional_nonuniformity,
    nonuniformity_spectrum,
    wu_ma_e_spectrum,
)
from stability.judgement import judge
from stability.networks.models import loss_from_model
from stability.report import (
    Accessibility,
    AdaptiveAccessibility,
    LocalSGDAccessibility,
    MinibatchAccessibility,
    PipelineAccessibility,
    percent,
)
from stability.theory import boundary_locus, companion, delays, mean_square
from stability.theory.rules import as_rule
from stability.validation import check_beta, check_lr, check_scalar

__all__ = [
    "Accessibility",
    "LocalSGDAccessibility",
    "MinibatchAccessibility",
    "PipelineAccessibility",
    "is_accessible",
    "verdict_from_spectrum",
]

# The mini-batch noise "binds" when it lowers the largest stable lr by more than this.
BINDING_TOLERANCE = 0.01

# The non-uniformity is taken along the top Ritz vector once its residual is at most
# this fraction of the gap theta_1 - (theta_2 + r_2) (Davis-Kahan: sine of its angle to
# the top eigenvector at most this, presuming theta_2 + r_2 bounds lambda_2): a
# near-degenerate top pair leaves the sharp direction, and s along it, undetermined
# until both are resolved.
RESOLVED_FRACTION = 0.01


class _Noise(NamedTuple):
    verdict: bool | None
    gain: float
    growth: float
    max_lr: float
    why: str


def _judge_noise(a, err, s, where, lr, tau, beta, momentum, sampling) -> _Noise:
    """The mean-square condition along one direction of curvature ``a +- err`` and
    non-uniformity ``s`` (module docstring): the gain at ``a``, and the verdict across
    the error bar. The gain ``lr^2 gamma s^2 N(q)``, ``q = lr a``, is not monotone in
    ``a``, but ``q^2 N(q)`` increases (`stability.theory.mean_square`), so on a piece
    ``[a_i, a_j]`` of the bar ``N(q_i) (a_i / a_j)^2 <= N <= N(q_j) (a_j / a_i)^2``:
    four pieces bound the gain over the whole bar from five evaluations. A bar that
    reaches curvature 0 decides nothing."""
    if not a > 0:
        return _Noise(
            None, math.nan, math.nan, math.nan, f"curvature {a:.4g} {where} is not positive"
        )
    kw = dict(momentum=momentum, **sampling)
    at = mean_square.mean_square_stability(lr, a, s, tau, beta, **kw)
    bar = np.linspace(a - err, a + err, 5) if err > 0 else np.asarray([a])
    if bar[0] > 0:
        gains = np.asarray(mean_square.mean_square_stability(lr, bar, s, tau, beta, **kw).gain)
        squared_ratio = (bar[1:] / bar[:-1]) ** 2
        upper = np.max(gains[1:] * squared_ratio, initial=gains[0])
        lower = np.min(gains[:-1] / squared_ratio, initial=gains[-1])
    else:  # the bar reaches curvature 0
        upper, lower = math.inf, -math.inf
    verdict = True if upper < 1 else False if lower >= 1 else None
    where = f"{where} (curvature {a:.4g}, non-uniformity s = {s:.4g})"
    if verdict is None:
        why = f"mini-batch noise undecided: second-moment gain {at.gain:.4g} {where} straddles 1"
    else:
        why = f"mini-batch second-moment gain {at.gain:.4g} {'<' if verdict else '>='} 1 {where}"
    return _Noise(verdict, float(at.gain), float(at.growth), float(at.max_stable_lr), why)


def _resolved(spectrum: HessianSpectrum) -> bool:
    """Whether the top Ritz vector is resolved (``RESOLVED_FRACTION``); with one Ritz
    value (no gap known) its convergence is presumed to suffice."""
    if not bool(spectrum.converged[0]):
        return False
    if len(spectrum.eigenvalues) < 2 or not np.isfinite(spectrum.eigenvalues[1]):
        return True
    # theta_2 + its residual: an upper bound on lambda_2 (presumed, like the residual
    # certificate), so the gap below is not the Ritz gap of an unresolved cluster
    gap = float(spectrum.eigenvalues[0] - spectrum.eigenvalues[1] - spectrum.errors[1])
    return float(spectrum.errors[0]) <= RESOLVED_FRACTION * max(gap, 0.0)


def _limit(lr, tau, beta, momentum) -> float:  # checked arguments: nothing checked again
    return float(boundary_locus.checked_limit(lr, tau, beta, as_rule(momentum)))


def verdict_from_spectrum(
    spectrum: HessianSpectrum,
    tau,
    lr: float,
    *,
    beta: float = 0.0,
    momentum: str = "heavy_ball",
    require_minimum: bool = False,
    failure_probability: float = 1e-6,
    nonuniformity: float | None = None,
    batch_size: int | None = None,
    num_examples: int | None = None,
    replacement: bool = False,
    max_nonuniformity: float | None = None,
    max_nonuniformity_curvature: float | None = None,
    wu_ma_e_lambda_max: float | None = None,
    worst_curvature: float | None = None,
    worst_nonuniformity: float | None = None,
) -> Accessibility:
    """The verdict for a precomputed spectrum (cheap: no Hessian products).

    Sweeping many (tau, lr, beta) over one network costs one spectrum: call
    `hessian_spectrum` once and this function per setting (or pass
    ``spectrum=`` to `is_accessible`). The same rule as `is_accessible` decides
    (module docstring), so a reused spectrum never certifies more than a fresh call.
    With ``batch_size`` and ``num_examples`` the mean-square condition is added for
    the given ``nonuniformity`` (``s`` along the top eigenvector) and, when given,
    ``max_nonuniformity`` with ``max_nonuniformity_curvature`` (``s`` and ``a`` along
    the top eigenvector of Sigma) and ``wu_ma_e_lambda_max`` with ``worst_curvature``
    and ``worst_nonuniformity`` (the top of Wu, Ma and E's matrix and ``a``, ``s``
    along its eigenvector; without the latter two: no direction above 1), e.g. a
    previous report's numbers (each depends on lr and the batch size only through
    the condition, except the Wu-Ma-E direction, which is found for one lr and
    gamma). Without all three the verdict is at most undecided unless the
    deterministic side fails.
    """
    _check_hyperparameters(tau, lr, beta, momentum, failure_probability)
    _check_minibatch(tau, batch_size, num_examples, replacement, nonuniformity)
    if (max_nonuniformity is None) != (max_nonuniformity_curvature is None):
        raise ValueError(
            "max_nonuniformity and max_nonuniformity_curvature go together; got "
            f"{max_nonuniformity!r} and {max_nonuniformity_curvature!r}"
        )
    if max_nonuniformity is not None:
        _check_minibatch(tau, batch_size, num_examples, replacement, max_nonuniformity)
    if (worst_curvature is None) != (worst_nonuniformity is None) or (
        worst_curvature is not None and wu_ma_e_lambda_max is None
    ):
        raise ValueError(
            "worst_curvature and worst_nonuniformity go together, with wu_ma_e_lambda_max; got "
            f"{worst_curvature!r}, {worst_nonuniformity!r}, {wu_ma_e_lambda_max!r}"
        )
    worst = None
    if wu_ma_e_lambda_max is not None:
        worst = _WuMaE(wu_ma_e_lambda_max, True, worst_curvature, worst_nonuniformity)
    return _verdict(
        spectrum, tau, lr, beta=beta, momentum=momentum, require_minimum=require_minimum,
        failure_probability=failure_probability, nonuniformity=nonuniformity,
        batch_size=batch_size, num_examples=num_examples, replacement=replacement,
        max_nonuniformity=max_nonuniformity,
        max_nonuniformity_curvature=max_nonuniformity_curvature, worst=worst,
    )  # fmt: skip


def _verdict(
    spectrum, tau, lr, *, beta, momentum, require_minimum, failure_probability,
    nonuniformity=None, batch_size=None, num_examples=None, replacement=False,
    max_nonuniformity=None, max_nonuniformity_curvature=None, noisy_converged=True,
    data_passes=None, worst=None,
) -> Accessibility:  # fmt: skip
    """`verdict_from_spectrum` after its checks, with what `is_accessible` adds: whether
    the Lanczos run on Sigma converged and the passes spent over the data."""
    if not isinstance(spectrum, HessianSpectrum):
        raise TypeError(f"spectrum must be a HessianSpectrum; got {type(spectrum).__name__}")
    limit = _limit(lr, tau, beta, momentum)
    judged = judge(spectrum, limit, bool(require_minimum), failure_probability)
    top, low = float(spectrum.eigenvalues[0]), float(spectrum.smallest)

    def radius(a):
        return float(companion.checked_spectral_radius(a, lr, tau, beta, as_rule(momentum)))

    max_lr = (
        float(boundary_locus.checked_limit(top, tau, beta, as_rule(momentum)))
        if top > 0
        else math.inf
    )
    verdict, certified_by, reason = judged.verdict, judged.certified_by, judged.reason
    extra = {}
    if batch_size is not None:
        verdict, certified_by, reason, extra = _with_noise(
            spectrum, judged, limit, max_lr, lr, tau, beta, momentum,
            dict(batch_size=batch_size, num_examples=num_examples, replacement=replacement),
            nonuniformity, max_nonuniformity, max_nonuniformity_curvature,
            noisy_converged, worst,
        )  # fmt: skip
        extra["data_passes"] = data_passes
    return Accessibility(
        verdict=verdict,
        is_minimum=judged.is_minimum,
        certified_by=certified_by,
        reason=reason,
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
        product_error=float(spectrum.product_error),
        spectrum=spectrum,
        minibatch=None if batch_size is None else MinibatchAccessibility(**extra),
    )


def _with_noise(spectrum, judged, limit, max_lr, lr, tau, beta, momentum, sampling,
                s_sharp, s_noisy, a_noisy, noisy_converged, worst=None):  # fmt: skip
    """The combined verdict, reason and mini-batch fields (module docstring)."""
    verdict, certified_by, reason = judged.verdict, judged.certified_by, judged.reason
    top = float(spectrum.eigenvalues[0])
    batch_size, num_examples = int(sampling["batch_size"]), sampling["num_examples"]
    extra = dict(batch_size=batch_size, replacement=bool(sampling["replacement"]))
    if num_examples is not None:
        sampling = dict(sampling, batch_size=batch_size, num_examples=int(num_examples))
        extra.update(num_examples=int(num_examples),
                     variance_factor=mean_square.variance_factor(**sampling))  # fmt: skip
    if verdict is False:
        extra["binding"] = "deterministic"
        return verdict, certified_by, reason, extra
    if num_examples is None:
        return (
            None,
            None,
            _noise_undecided(reason, "mini-batch noise not judged (no num_examples)"),
            extra,
        )
    usable = _resolved(spectrum)
    if s_sharp is None or not usable:
        gap = (
            " vs gap "
            f"{float(spectrum.eigenvalues[0] - spectrum.eigenvalues[1] - spectrum.errors[1]):.2g}"
            " (the Ritz gap less the second residual))"
            if len(spectrum.eigenvalues) > 1
            else ", not converged)"
        )
        why = (
            "mini-batch noise not judged (the top Ritz vector is not resolved: residual "
            f"{float(spectrum.errors[0]):.2g}{gap}"
        )
        return None, None, _noise_undecided(reason, why), extra
    args = (lr, tau, beta, momentum, sampling)
    sharp = _judge_noise(top, float(spectrum.errors[0]), float(s_sharp),
                         "along the sharp direction", *args)  # fmt: skip
    found = [sharp]
    extra.update(nonuniformity=float(s_sharp), noise_gain=sharp.gain)
    if s_noisy is not None:
        noisy = _judge_noise(float(a_noisy), 0.0, float(s_noisy),
                             "along the most non-uniform direction", *args)  # fmt: skip
        if noisy.verdict is True and not noisy_converged:
            noisy = noisy._replace(verdict=None, why=noisy.why + " (Sigma not converged)")
        found.append(noisy)
        extra.update(max_nonuniformity=float(s_noisy),
                     max_nonuniformity_curvature=float(a_noisy),
                     noise_gain_nonuniform=noisy.gain)  # fmt: skip
    if worst is not None:  # a _WuMaE (or a plain 4-tuple): the top of Wu, Ma and E's matrix
        lam, converged, a_w, s_w = worst
        extra["wu_ma_e_lambda_max"] = float(lam)
        if a_w is None:  # no positive excess: the top of the matrix is 1 (flat directions)
            flat = "Wu, Ma and E's matrix has no direction above 1"
            found.append(_Noise(True if converged else None, 0.0, 0.0, math.inf,
                                flat if converged else flat + " (not converged)"))  # fmt: skip
        else:
            w = _judge_noise(float(a_w), 0.0, float(s_w),
                             "along the top direction of Wu, Ma and E's matrix", *args)  # fmt: skip
            if w.verdict is True and not converged:
                w = w._replace(verdict=None, why=w.why + " (not converged)")
            found.append(w)
            extra.update(worst_curvature=float(a_w), worst_nonuniformity=float(s_w),
                         noise_gain_worst=w.gain)  # fmt: skip
    extra.update(
        second_moment_growth=max(n.growth for n in found),
        max_stable_lr_minibatch=min(n.max_lr for n in found),
    )
    if worst is None and s_noisy is not None:
        found.append(_Noise(None, 0.0, 0.0, math.inf, "Wu, Ma and E's matrix not judged"))
    failed = [n for n in found if n.verdict is False]
    if failed:
        extra.update(mean_square_verdict=False, binding="stochastic")
        reason = (
            f"unstable in mean square: {failed[0].why}, although the full-batch recursion is "
            f"stable (sharpness {percent(top / limit)} of its limit)"
        )
        return False, "mean_square", reason, extra
    if any(n.verdict is None for n in found) or s_noisy is None:
        extra["mean_square_verdict"] = None
        open_ = [n.why for n in found if n.verdict is None]
        if s_noisy is None:
            open_.append("the most non-uniform direction not judged")
        decided = [n.why for n in found if n.verdict is not None]
        reason = _noise_undecided(reason, "; ".join(open_))
        return None, None, reason + "".join("; " + w for w in decided), extra
    reason += "; " + "; ".join(n.why for n in found)
    extra["mean_square_verdict"] = True
    if verdict is True:
        lowered = extra["max_stable_lr_minibatch"] < (1 - BINDING_TOLERANCE) * max_lr
        extra["binding"] = "stochastic" if lowered else "deterministic"
    return verdict, certified_by, reason, extra


def _noise_undecided(reason: str, why: str) -> str:
    """The reason of a verdict left undecided by the mini-batch condition: what is
    undecided first, then what the full-batch side found."""
    if reason.startswith("undecided"):
        return f"{reason}; {why}"
    return f"undecided: {why}; full batch: {reason}"


def _num_params(params) -> int:
    """The number of floating-point parameters (the order of the Hessian)."""
    import jax
    import jax.numpy as jnp

    leaves = jax.tree_util.tree_leaves(params)
    return sum(int(np.size(x)) for x in leaves if jnp.issubdtype(jnp.result_type(x), jnp.floating))


def _check_minibatch(tau, batch_size, num_examples, replacement, nonuniformity=None) -> None:
    """The mini-batch arguments of `is_accessible` / `verdict_from_spectrum`."""
    if batch_size is None:
        for name, value in (("num_examples", num_examples), ("nonuniformity", nonuniformity)):
            if value is not None:
                raise ValueError(f"{name} needs batch_size; got {name}={value!r} without it")
        return
    if isinstance(tau, delays.DelayDistribution):
        raise ValueError(
            "tau must be a constant delay when batch_size is given (the mean-square condition "
            "is for a fixed delay); got a DelayDistribution"
        )
    if num_examples is None:
        from stability.validation import check_int

        check_int("batch_size", batch_size, 1)
        if not isinstance(replacement, (bool, np.bool_)):
            raise TypeError(f"replacement must be True or False; got {replacement!r}")
    else:
        mean_square.variance_factor(batch_size, num_examples, replacement=replacement)
    if nonuniformity is not None and not (
        isinstance(nonuniformity, (int, float)) and math.isfinite(nonuniformity)
        and nonuniformity >= 0
    ):  # fmt: skip
        raise ValueError(f"nonuniformity must be a finite number >= 0; got {nonuniformity!r}")


def _adaptive(optimizer_state, lr, beta, momentum, batch_size):
    """``(corrected lr, b1, rule, AdaptiveAccessibility)`` for an Adam-family state: the
    delayed Adam rule on the preconditioned Hessian (docs/theory.md section 16)."""
    from stability.curvature.preconditioner import Preconditioner, preconditioner_from_optax
    from stability.theory.rules.adam import Adam

    if batch_size is not None:
        raise ValueError(
            "batch_size cannot go with optimizer_state: the mean-square condition is derived "
            f"for the SGD-type rules only; got batch_size={batch_size!r}"
        )
    if not (isinstance(beta, (int, float)) and beta == 0.0) or momentum != "heavy_ball":
        raise ValueError(
            "beta and momentum come from optimizer_state (its b1 and the Adam rule): leave "
            f"them out; got beta={beta!r}, momentum={momentum!r}"
        )
    pre = (
        optimizer_state
        if isinstance(optimizer_state, Preconditioner)
        else preconditioner_from_optax(optimizer_state)
    )
    if lr is None:  # a given lr asks "what if" at the same state
        lr = pre.lr
    if lr is None:
        raise ValueError(
            "lr: optimizer_state does not hold the learning rate (an "
            "optax.inject_hyperparams state does); pass lr"
        )
    check_lr(lr)
    lr = float(lr)
    rule = Adam(decay=lr * pre.weight_decay)
    c = float(pre.bias_correction)
    info = AdaptiveAccessibility(
        optimizer=pre.kind, b1=float(pre.b1), bias_correction=c,
        weight_decay=float(pre.weight_decay), count=pre.count, corrected_lr=lr * c,
        b2=float(pre.b2), preconditioner=pre,
    )  # fmt: skip
    return lr * c, float(pre.b1), rule, info


def _check_hyperparameters(tau, lr, beta, momentum, failure_probability) -> None:
    if not isinstance(tau, delays.DelayDistribution):
        from stability.validation import check_tau

        check_tau(tau)
        if np.ndim(tau) != 0:
            raise ValueError(f"tau must be a single delay or a DelayDistribution; got {tau!r}")
    if np.ndim(lr) != 0:
        raise ValueError(f"lr must be a scalar; got {lr!r}")
    check_lr(lr)
    check_scalar("beta", beta)
    check_beta(beta)
    as_rule(momentum)  # a rule's name or a stability.theory.rules.Rule
    if not (isinstance(failure_probability, (int, float)) and 0 < failure_probability < 1):
        raise ValueError(f"failure_probability must be in (0, 1); got {failure_probability!r}")


def is_accessible(
    model,
    params,
    tau=None,
    lr: float | None = None,
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
    batch_size: int | None = None,
    num_examples: int | None = None,
    replacement: bool = False,
    optimizer_state=None,
    local_sgd=None,
    outer_lr: float | None = None,
    outer_momentum: float = 0.0,
    block_delays=None,
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
      batch_size, num_examples, replacement: mini-batches of ``batch_size`` examples
        drawn from ``num_examples`` (default: the examples in ``data``), without
        replacement (distinct examples, as `stability.simulate_async` draws them) or
        with: adds the mean-square condition along the sharp direction (module
        docstring; `stability.theory.mean_square`). Needs ``data`` and a constant delay;
        the top eigenvector is kept in ``result.spectrum``.
      optimizer_state: judge Adam, AdamW or RMSprop instead of an SGD rule: the
        optax state the network was trained with (``optax.inject_hyperparams(...)``
        states hold lr, b1 and the weight decay), or a `stability.Preconditioner`
        (`stability.preconditioner_from_optax` with the hyperparameters a plain
        ``optax.adamw`` state does not store). The spectrum is that of the
        preconditioned Hessian ``P^-1/2 H P^-1/2`` with the second moment frozen at
        the state's (docs/theory.md section 16), judged against the delayed Adam
        rule (`stability.theory.rules.adam`); ``lr`` defaults to the state's,
        ``beta`` and ``momentum`` come from it (leave them out). Full batch only.

      local_sgd, outer_lr, outer_momentum: judge local SGD / DiLoCo instead (a
        `stability.LocalSGD`: inner rule, inner lr, H, reset, outer rule, schedule;
        docs/theory.md section 17) with the outer rule's lr and momentum. Leave
        ``tau`` 0 or None (the outer delay comes from the schedule), ``lr``, ``beta``
        and ``momentum`` out. Every eigenvalue ``a`` in ``(0, lambda_max]`` must have
        ``outer_lr kappa(a)`` in the outer rule's stable interval; kappa is not
        monotone in ``a`` (``inner_lr a > 1``), so the verdict uses the range of kappa
        over the certified interval (inner GD, heavy ball or Nesterov with the buffer
        reset; otherwise undecided, with the reason). The report's ``lr``, ``beta``,
        ``momentum`` and ``tau`` are the outer rule's and its delay, ``spectral_radius``
        is per inner step; ``report.local_sgd`` (`LocalSGDAccessibility`) holds kappa,
        the round radius and the largest stable outer lr. Full batch only.

      block_delays: judge a delay per block of parameters instead (a pipeline's
        stages): anything `stability.block_delays` accepts, e.g. ``stability.Stages(4,
        "1f1b")`` or ``{"Dense_0": 3, "Dense_1": 2, ...}`` (paths of the differentiated
        params). Leave ``tau`` None. The largest stable lr of the coupled dynamics is
        estimated by the Ritz reduction (`stability.block_delay_max_lr`; docs/theory.md
        section 18) and the verdict is decided only outside a band around it
        (`stability.pipeline_verdict`: an estimate, ``certified_by="block_estimate"``,
        or ``"full_operator"`` when an eigenvalue of the full history operator outside
        the unit circle confirms instability); ``report.pipeline``
        (`PipelineAccessibility`) holds the estimate, its band, the uniform models'
        answers. Full batch, gd / heavy_ball / nesterov; ``tol`` is not used (the Ritz
        pairs are converged to 1e-8).

    Returns:
      An `Accessibility` report; ``bool(report)`` is True only for a certified
      stable verdict (with ``block_delays``: a stable estimate outside its band).
    """
    if block_delays is not None:  # imported here: that module builds this one's report
        from stability.pipeline_verdict import pipeline_accessible

        if local_sgd is not None:
            raise ValueError("block_delays and local_sgd cannot go together; got both")
        return pipeline_accessible(
            model, params, block_delays, tau=tau, lr=lr, beta=beta, momentum=momentum,
            data=data, loss=loss, train=train, call_kwargs=call_kwargs, batch_keys=batch_keys,
            batch_size=batch_size, optimizer_state=optimizer_state, spectrum=spectrum,
            require_minimum=require_minimum, max_hvps=max_hvps, seed=seed,
        )  # fmt: skip
    if local_sgd is not None:  # imported here: that module builds this one's report
        from stability.local_sgd_verdict import local_sgd_accessible

        return local_sgd_accessible(
            model, params, local_sgd, tau=tau, lr=lr, beta=beta, momentum=momentum,
            outer_lr=outer_lr, outer_momentum=outer_momentum, batch_size=batch_size,
            optimizer_state=optimizer_state, data=data, loss=loss, spectrum=spectrum,
            train=train, call_kwargs=call_kwargs, batch_keys=batch_keys,
            require_minimum=require_minimum, failure_probability=failure_probability, tol=tol,
            max_hvps=max_hvps, seed=seed, progress=progress, return_vectors=return_vectors,
        )  # fmt: skip
    if outer_lr is not None or not (
        isinstance(outer_momentum, (int, float)) and outer_momentum == 0.0
    ):
        raise ValueError(
            "outer_lr and outer_momentum need local_sgd; got "
            f"outer_lr={outer_lr!r}, outer_momentum={outer_momentum!r}"
        )
    adaptive = None
    if optimizer_state is not None:
        lr, beta, momentum, adaptive = _adaptive(optimizer_state, lr, beta, momentum, batch_size)
    _check_hyperparameters(tau, lr, beta, momentum, failure_probability)
    _check_minibatch(tau, batch_size, num_examples, replacement)
    minibatch = batch_size is not None
    if minibatch and data is None:
        raise ValueError("batch_size needs data (the per-example Hessians); got data=None")
    if spectrum is None or minibatch:
        # The adapter checks params against the model on the first in-memory batch.
        loss_fn, flat_params = loss_from_model(
            model, params, loss=loss, train=train, data=data, call_kwargs=call_kwargs,
            batch_keys=batch_keys,
        )  # fmt: skip
    setting = _Setting(tau, lr, beta, momentum, bool(require_minimum), failure_probability)
    solver = _Solver(tol, max_hvps, seed, None if adaptive is None else adaptive.preconditioner)
    if spectrum is None:
        spectrum = _spectrum_until_decided(
            loss_fn, flat_params, data, setting, solver, minibatch=minibatch,
            progress=progress, return_vectors=return_vectors,
        )  # fmt: skip
    if not minibatch:
        report = verdict_from_spectrum(
            spectrum,
            tau,
            lr,
            beta=beta,
            momentum=momentum,
            require_minimum=require_minimum,
            failure_probability=failure_probability,
        )
        if adaptive is None:
            return report
        # the rule ran on the corrected lr c; the report speaks the optimizer's lr
        c = adaptive.bias_correction
        if report.verdict is True and report.sharpness > 0:
            ratio = report.max_stable_sharpness / (report.sharpness + report.sharpness_error)
            horizon = 2 * math.log(max(ratio, 1.0)) / -math.log(adaptive.b2)
            adaptive = adaptive._replace(decay_horizon=horizon)
        return dataclasses.replace(
            report, lr=lr / c, max_stable_lr=report.max_stable_lr / c, adaptive=adaptive
        )
    sampling = dict(batch_size=batch_size, num_examples=num_examples, replacement=replacement)
    noise = _measure_noise(loss_fn, flat_params, data, spectrum, setting, solver, sampling)
    return _verdict(
        spectrum, tau, lr, beta=beta, momentum=momentum, require_minimum=require_minimum,
        failure_probability=failure_probability, nonuniformity=noise.nonuniformity,
        batch_size=batch_size, num_examples=noise.num_examples, replacement=replacement,
        max_nonuniformity=noise.max_nonuniformity,
        max_nonuniformity_curvature=noise.max_nonuniformity_curvature,
        noisy_converged=noise.sigma_converged, data_passes=noise.data_passes,
        worst=noise.wu_ma_e,
    )  # fmt: skip


class _Setting(NamedTuple):
    """The hyperparameters and the rule judged (as `is_accessible` received them)."""

    tau: object
    lr: float
    beta: float
    momentum: str
    require_minimum: bool
    failure_probability: float

    def limit(self) -> float:
        return _limit(self.lr, self.tau, self.beta, self.momentum)


class _Solver(NamedTuple):
    """The eigensolver options of `is_accessible`, the same for every spectrum it runs
    (``preconditioner``: Adam's ``P``, or None for the plain Hessian)."""

    tol: float
    max_hvps: int
    seed: int
    preconditioner: object = None


def _spectrum_until_decided(loss_fn, params, data, setting, solver, *, minibatch, progress,
                            return_vectors) -> HessianSpectrum:  # fmt: skip
    """Steps 2 to 4 (`hessian_spectrum`), stopped as soon as `judge` decides; with
    mini-batches, as soon as the deterministic side fails or is stable with the top
    Ritz vector resolved (the noise is measured along it, so the vector is kept)."""
    limit = setting.limit()

    def decided(estimate: HessianSpectrum) -> bool:
        verdict = judge(estimate, limit, setting.require_minimum,
                        setting.failure_probability).verdict  # fmt: skip
        if minibatch:  # the noise needs the top vector resolved, unless already unstable
            return verdict is False or (verdict is True and _resolved(estimate))
        return verdict is not None

    return hessian_spectrum(
        loss_fn,
        params,
        data,
        k=2 if minibatch and _num_params(params) > 1 else 1,
        tol=solver.tol,
        max_hvps=solver.max_hvps,
        seed=solver.seed,
        progress=progress,
        return_vectors=bool(return_vectors or minibatch),
        converge_smallest=setting.require_minimum,
        stop_when=decided,
        preconditioner=solver.preconditioner,
    )


class _WuMaE(NamedTuple):
    """The top of Wu, Ma and E's matrix: its Ritz value, whether it converged, and the
    curvature ``a`` and non-uniformity ``s`` along its Ritz vector (both None when no
    direction has a positive excess: the top is 1, flat directions)."""

    lambda_max: float
    converged: bool
    curvature: float | None = None
    nonuniformity: float | None = None


class _NoiseMeasured(NamedTuple):
    """What `is_accessible` measured for the mean-square condition; None where it was
    not needed (the verdict was decided before)."""

    num_examples: int | None  # given, or counted by the first pass over the data
    nonuniformity: float | None = None  # s along the sharp direction
    max_nonuniformity: float | None = None  # s along the top eigenvector u of Sigma
    max_nonuniformity_curvature: float | None = None  # u^T H u
    sigma_converged: bool = True
    wu_ma_e: _WuMaE | None = None
    data_passes: int = 0


def _measure_noise(loss_fn, params, data, spectrum, setting, solver, sampling) -> _NoiseMeasured:
    """The per-example measurements, decision-driven (module docstring): the sharp
    direction once the deterministic side has not failed and the top Ritz vector is
    resolved, then the top of Sigma and the top of Wu, Ma and E's matrix, each only
    while the directions before it leave the mean-square condition open."""
    found = _NoiseMeasured(num_examples=sampling["num_examples"])
    sharp = judge(spectrum, setting.limit(), setting.require_minimum,
                  setting.failure_probability)  # fmt: skip
    if sharp.verdict is False or not _resolved(spectrum):
        return found
    found = _along_sharp(loss_fn, params, data, spectrum, found)
    sampling = dict(sampling, num_examples=found.num_examples)

    def fails(a, err, s) -> bool:
        args = (setting.lr, setting.tau, setting.beta, setting.momentum, sampling)
        return _judge_noise(a, err, s, "", *args).verdict is False

    top, top_err = float(spectrum.eigenvalues[0]), float(spectrum.errors[0])
    if fails(top, top_err, found.nonuniformity):  # Sigma only when still needed
        return found
    found = _along_sigma(loss_fn, params, data, solver, found)
    if fails(found.max_nonuniformity_curvature, 0.0, found.max_nonuniformity):
        return found
    gamma = mean_square.variance_factor(**sampling)
    return _along_wu_ma_e(loss_fn, params, data, setting.lr, gamma, top, solver, found)


def _along_sharp(loss_fn, params, data, spectrum, found) -> _NoiseMeasured:
    """``s`` along the top Ritz vector (one pass) and the number of examples."""
    if spectrum.eigenvectors is None:
        raise ValueError(
            "spectrum must hold eigenvectors for batch_size: pass hessian_spectrum(..., "
            "return_vectors=True)"
        )
    stats = directional_nonuniformity(loss_fn, params, data, spectrum)
    num_examples = stats.num_examples if found.num_examples is None else found.num_examples
    return found._replace(num_examples=num_examples, nonuniformity=stats.nonuniformity,
                          data_passes=1)  # fmt: skip


def _along_sigma(loss_fn, params, data, solver, found) -> _NoiseMeasured:
    """``s`` and ``a`` along the top eigenvector of Sigma (Lanczos, two passes per
    product, then one pass along the vector)."""
    sigma = nonuniformity_spectrum(loss_fn, params, data, tol=solver.tol,
                                   max_products=solver.max_hvps, seed=solver.seed,
                                   return_vector=True)  # fmt: skip
    along = directional_nonuniformity(loss_fn, params, data, sigma.eigenvector)
    return found._replace(
        max_nonuniformity=along.nonuniformity,
        max_nonuniformity_curvature=along.curvature,
        sigma_converged=sigma.converged,
        data_passes=found.data_passes + 2 * sigma.num_products + 1,
    )


def _along_wu_ma_e(loss_fn, params, data, lr, gamma, top, solver, found) -> _NoiseMeasured:
    """The top of Wu, Ma and E's matrix (two passes per product) and, when some
    direction lies above 1, ``a`` and ``s`` along its Ritz vector (one more pass)."""
    wme = wu_ma_e_spectrum(loss_fn, params, data, lr=lr, variance_factor=gamma,
                           tol=solver.tol, max_products=solver.max_hvps, seed=solver.seed,
                           return_vector=True)  # fmt: skip
    passes = found.data_passes + 2 * wme.num_products
    worst = _WuMaE(wme.lambda_max, wme.converged)
    floor = 1e-8 * abs(top)
    if wme.excess > max(wme.error, floor):  # a direction above 1
        at = directional_nonuniformity(loss_fn, params, data, wme.eigenvector)
        worst = worst._replace(curvature=at.curvature, nonuniformity=at.nonuniformity)
        passes += 1
    return found._replace(wu_ma_e=worst, data_passes=passes)
