"""The verdict rule: a Hessian spectrum against a stable limit.

`judge` compares the top Ritz value and its error bar (and, with
``require_minimum``, the smallest one) with the limit ``q_max / lr`` and says which
bound decided: a Ritz value at or above the limit (proof of instability), the
converged top Ritz value plus its residual, or the random-start bound (docs/theory.md
section 12). It is the one rule used by the decision-driven stop of
`stability.is_accessible`, its final report and `stability.local_sgd_verdict`.
"""

from __future__ import annotations

from typing import NamedTuple

from stability.curvature.hessian_spectrum import HessianSpectrum
from stability.curvature.verification import PRECISION_TOLERANCE
from stability.report import distinct, percent

__all__ = ["FLAT_TOLERANCE", "Judgement", "judge", "with_minimum"]

# Curvature above -FLAT_TOLERANCE x sharpness counts as flat (zero): such a
# direction grows by at most 1 + lr * 1e-5 * sharpness per step.
FLAT_TOLERANCE = 1e-5


class Judgement(NamedTuple):
    """A verdict with its reason and the random-start bound ``upper`` (`judge`)."""

    verdict: bool | None
    is_minimum: bool | None
    certified_by: str | None
    reason: str
    upper: float


def judge(spectrum: HessianSpectrum, limit: float, require_minimum: bool,
          failure_probability: float) -> Judgement:  # fmt: skip
    """The verdict for ``spectrum`` against the stable limit ``limit``: the one rule
    used by the decision-driven stop of `is_accessible` and by the final report (and,
    for ``is_minimum`` and the bound, by `stability.local_sgd_verdict`)."""
    top, top_err = float(spectrum.eigenvalues[0]), float(spectrum.errors[0])
    low, low_err = float(spectrum.smallest), float(spectrum.smallest_error)
    upper, lower = spectrum.bounds(failure_probability)
    chance = f"with probability >= 1 - {failure_probability:g} (random-start bound)"
    # The products' own error (float32 against float64 along the top Ritz vector): at a
    # non-smooth point the two precisions differ, and neither piece may decide alone.
    spread = float(spectrum.product_error)

    # The sharp side: a Ritz value is a lower bound on lambda_max.
    if top - spread >= limit:
        sharp, by = False, "ritz_value"
        shown, shown_limit = distinct(top - spread, limit)
        if spread:
            shown = f"{top:.6g} (less the products' error {spread:.2g}: {shown})"
        why = (
            f"unstable: a Ritz value {shown} is already at or above the stable limit "
            f"{shown_limit}, so the sharpness is at least {percent((top - spread) / limit)} of it"
        )
    elif upper < limit:
        sharp, by = True, "random_start"
        why = f"stable: sharpness <= {upper:.4g} < stable limit {limit:.4g} {chance}"
    elif bool(spectrum.converged[0]) and top + top_err < limit:
        sharp, by = True, "residual"
        why = (
            f"stable: sharpness {top:.4g} + {top_err:.2g} < stable limit {limit:.4g} "
            f"({percent(top / limit)} of it; converged Ritz residual bound)"
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
    if spread > PRECISION_TOLERANCE * abs(top):
        why += (
            f"; the working-precision and float64 products differ by {spread:.2g} "
            f"({percent(spread / abs(top))} of the sharpness) along the top direction: a "
            "non-smooth point (a ReLU at 0, a max-pool tie) or a loss that loses precision; "
            "the error bar includes the difference"
        )

    # The minimum: a Ritz value is an upper bound on lambda_min.
    flat = FLAT_TOLERANCE * abs(top)
    if low < -FLAT_TOLERANCE * (abs(top) + top_err):
        minimum = False
    elif lower >= -flat or (bool(spectrum.smallest_converged) and low - low_err >= -flat):
        minimum = True
    else:
        minimum = None

    verdict = sharp
    if require_minimum:
        verdict, by, why = with_minimum(sharp, by, why, minimum, low, low_err, spectrum.num_hvps)
    return Judgement(verdict, minimum, by, why, upper)


def with_minimum(verdict, by, why, minimum, low, low_err, num_hvps, *, grows: str = ""):
    """``require_minimum=True``: the sharp side's ``(verdict, by, why)`` unless it is
    already False or the minimum is established; a proven non-minimum (``minimum``
    False) makes it False, an unsettled one undecided. ``grows``: words appended to
    the non-minimum reason (what that direction does under the rule)."""
    if verdict is False or minimum is True:
        return verdict, by, why
    if minimum is False:
        return (
            False,
            "ritz_value",
            (
                f"not a minimum: a Ritz value {low:.4g} is below -{FLAT_TOLERANCE:g} x "
                f"sharpness (require_minimum=True{grows})"
            ),
        )
    return (
        None,
        None,
        (
            f"undecided: a minimum is not established (smallest eigenvalue {low:.4g} "
            f"+- {low_err:.2g} after {num_hvps} Hessian-vector products; "
            f"require_minimum=True); sharp side: {why}"
        ),
    )
