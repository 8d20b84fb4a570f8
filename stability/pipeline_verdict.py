"""The verdict with a delay per block of parameters (pipelines; docs/theory.md section 18).

`stability.is_accessible(..., block_delays=spec)` lands here. With different delays
per block, ``P_b`` and ``H`` do not commute and there is no per-eigenvalue limit to
compare the sharpness with: the answer is the largest stable lr of the coupled
dynamics ``det(A(z) I + lr sum_b B_b(z) P_b H)``, estimated matrix-free by the Ritz
reduction (`stability.block_delay_max_lr`). The verdict compares the user's lr with
that estimate and decides only outside a band of relative half-width ``margin``:

    margin = max(3 lr_change, 3 backward_error, floor)

``lr_change`` is the estimate's change with the number of Ritz pairs (the dropped
Hessian tail), ``backward_error`` the critical eigenpair's residual in the full
problem, and ``floor`` the working precision's share (1e-6 in float64; 1e-2 below
float64, where the products of a trained network can be a per cent off). These are
measured error indicators, not bounds: the report says ``certified_by =
"block_estimate"``. An "unstable" estimate is also checked on the full history
operator at the user's lr (Krylov-Schur Arnoldi, `stability.block_delay_radius`): a
converged eigenvalue outside the unit circle by more than its residual and the flat
allowance (``1 + lr FLAT_TOLERANCE sharpness``) confirms it (``certified_by =
"full_operator"``: an exact eigenvalue of the linearised dynamics with the Hessian
perturbed by the residual); the estimate and the full operator disagreeing leaves
the verdict undecided.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from stability.curvature.block_spectrum import block_delay_max_lr, block_delay_radius
from stability.curvature.blocks import block_delays as resolve_blocks
from stability.curvature.history_operator import check_linear_rule
from stability.judgement import FLAT_TOLERANCE
from stability.networks.models import loss_from_model
from stability.report import Accessibility, PipelineAccessibility
from stability.validation import check_lr, check_scalar

__all__ = ["pipeline_accessible"]

# Relative error floors of the estimate by working precision (module docstring).
FLOOR_FLOAT64 = 1e-6
FLOOR_BELOW_FLOAT64 = 1e-2
# Error indicators are estimates: the band is this many times the larger one.
SAFETY = 3.0


def _check(tau, lr, beta, momentum, batch_size, optimizer_state, spectrum, require_minimum):
    if tau not in (None, 0):
        raise ValueError(
            f"tau must be None (or 0) with block_delays: the delays come from block_delays; "
            f"got tau={tau!r}"
        )
    for name, value in (("batch_size", batch_size), ("optimizer_state", optimizer_state),
                        ("spectrum", spectrum)):  # fmt: skip
        if value is not None:
            raise ValueError(
                f"{name} cannot go with block_delays (the block verdict is full batch, SGD "
                f"rules, its own Ritz pairs); got {name}={value!r}"
            )
    if require_minimum:
        raise ValueError("require_minimum=True is not available with block_delays; got True")
    check_scalar("lr", lr)
    check_lr(lr)
    rule = check_linear_rule(momentum)
    check_scalar("beta", beta)
    rule.check_beta(beta)
    return float(lr), float(beta), rule


def _floor(params) -> float:
    dtypes = {np.dtype(x.dtype) for x in jax.tree_util.tree_leaves(params) if hasattr(x, "dtype")}
    low = any(np.finfo(d).eps > np.finfo(np.float64).eps for d in dtypes if d.kind == "f")
    return FLOOR_BELOW_FLOAT64 if low or not dtypes else FLOOR_FLOAT64


def pipeline_accessible(model, params, spec, *, tau, lr, beta, momentum, data, loss, train,
                        call_kwargs, batch_keys, batch_size, optimizer_state, spectrum,
                        require_minimum, max_hvps, seed) -> Accessibility:  # fmt: skip
    """`stability.is_accessible` with ``block_delays=spec`` (its arguments, checked
    here): the Ritz-reduction estimate of the largest stable lr, the band around it
    (module docstring), the full-operator check of an unstable estimate, the report."""
    lr, beta, rule = _check(tau, lr, beta, momentum, batch_size, optimizer_state, spectrum,
                            require_minimum)  # fmt: skip
    loss_fn, flat_params = loss_from_model(
        model, params, loss=loss, train=train, data=data, call_kwargs=call_kwargs,
        batch_keys=batch_keys,
    )  # fmt: skip
    blocks = resolve_blocks(flat_params, spec, name="block_delays")
    est = block_delay_max_lr(loss_fn, flat_params, data, delays=blocks, beta=beta,
                             momentum=rule, max_hvps=max_hvps, seed=seed)  # fmt: skip
    indicators = [x for x in (est.lr_change, est.backward_error) if math.isfinite(x)]
    margin = max([SAFETY * x for x in indicators] + [_floor(flat_params)])
    limit = est.lr
    hvps = int(est.products)
    ratio = lr / limit if limit > 0 else math.inf
    radius = residual = math.nan
    converged = False
    if ratio <= 1 - margin:
        verdict, by = True, "block_estimate"
        why = (
            f"stable: lr is {ratio:.1%} of the block estimate {limit:.6g} (band +-{margin:.2g}, "
            "an estimate, not a proof)"
        )
    elif ratio >= 1 + margin:
        check = block_delay_radius(loss_fn, flat_params, data, delays=blocks, lr=lr, beta=beta,
                                   momentum=rule, max_products=max(int(max_hvps), 50),
                                   seed=seed)  # fmt: skip
        hvps += int(check.products)
        radius, residual, converged = check.radius, check.residual, bool(check.converged)
        allowance = 1 + lr * FLAT_TOLERANCE * est.sharpness
        outside = converged and radius - residual > allowance
        if outside:
            verdict, by = False, "full_operator"
            why = (
                f"unstable: lr is {ratio:.3g}x the block estimate {limit:.6g}, and the full "
                f"history operator has an eigenvalue of modulus {radius:.6g} (residual "
                f"{residual:.2g}) outside the unit circle"
            )
        elif converged:
            verdict, by = None, None
            why = (
                f"undecided: the block estimate {limit:.6g} says unstable ({ratio:.3g}x), but "
                f"the full history operator's largest eigenvalue {radius:.6g} (residual "
                f"{residual:.2g}) is not outside the unit circle"
            )
        else:
            verdict, by = False, "block_estimate"
            why = (
                f"unstable: lr is {ratio:.3g}x the block estimate {limit:.6g} (band "
                f"+-{margin:.2g}, an estimate; the full operator's check did not converge in "
                f"{check.products} products)"
            )
    else:
        verdict, by = None, None
        why = (
            f"undecided: lr is {ratio:.4g}x the block estimate {limit:.6g}, inside its band "
            f"+-{margin:.2g}"
        )
    part = PipelineAccessibility(
        blocks=blocks, max_stable_lr=limit, margin=margin, lr_change=float(est.lr_change),
        backward_error=float(est.backward_error), k=int(est.k), critical_root=complex(est.z),
        radius=float(radius), radius_residual=float(residual), radius_converged=converged,
        lr_uniform_max_delay=float(est.lr_uniform_max_delay),
        lr_uniform_mean_delay=tuple(float(x) for x in est.lr_uniform_mean_delay),
        lr_delay_distribution=float(est.lr_delay_distribution), mean_delay=float(est.mean_delay),
    )  # fmt: skip
    sharpness = float(est.sharpness)
    return Accessibility(
        verdict=verdict,
        is_minimum=None,
        certified_by=by,
        reason=why,
        sharpness=sharpness,
        sharpness_error=math.nan,
        sharpness_upper_bound=math.inf,
        smallest_eigenvalue=math.nan,
        smallest_error=math.nan,
        max_stable_sharpness=sharpness / ratio if ratio > 0 else math.inf,
        fraction_of_limit=ratio,
        spectral_radius=float(radius),
        smallest_growth=math.nan,
        max_stable_lr=limit,
        num_hvps=hvps,
        tau=blocks.max_delay,
        lr=lr,
        beta=beta,
        momentum=rule.name,
        require_minimum=False,
        pipeline=part,
    )
