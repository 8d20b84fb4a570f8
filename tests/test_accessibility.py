"""The verdict logic of `is_accessible` on spectra with known numbers.

The threshold comes from the core (`max_stable_sharpness`); here the spectrum
is given, so every branch of the verdict (certified yes, certified no, not a
minimum, undecided near the boundary, undecided when not converged) is
exercised with an exact expectation. Networks are in
test_accessibility_networks.py.
"""

import math

import numpy as np
import pytest

import stability as st
from stability.hessian_spectrum import HessianSpectrum


def _spectrum(top, err=1e-9, ok=True, low=0.0, low_err=1e-9, low_ok=True):
    return HessianSpectrum(
        eigenvalues=np.array([top]),
        errors=np.array([err]),
        converged=np.array([ok]),
        smallest=low,
        smallest_error=low_err,
        smallest_converged=low_ok,
        num_hvps=10,
    )


def test_certified_yes_and_no_around_the_gd_closed_form():
    tau, lr = 4, 0.1
    limit = 2 * math.sin(math.pi / (2 * (2 * tau + 1))) / lr  # THEORY.md section 3
    yes = st.is_accessible(None, None, tau, lr, spectrum=_spectrum(0.99 * limit))
    no = st.is_accessible(None, None, tau, lr, spectrum=_spectrum(1.01 * limit))
    assert yes.verdict is True and bool(yes)
    assert no.verdict is False and not bool(no)
    assert yes.max_stable_sharpness == pytest.approx(limit, rel=1e-9)
    assert yes.margin == pytest.approx(0.99, rel=1e-9)
    assert yes.spectral_radius < 1 < no.spectral_radius
    # The max stable lr at this sharpness puts it exactly on the threshold.
    assert yes.max_stable_lr == pytest.approx(lr / 0.99, rel=1e-9)


def test_error_bar_straddling_the_threshold_is_undecided():
    tau, lr = 8, 0.05
    limit = float(st.max_stable_sharpness(lr, tau, 0.9, momentum="shifted"))
    rep = st.is_accessible(
        None,
        None,
        tau,
        lr,
        beta=0.9,
        momentum="shifted",
        spectrum=_spectrum(0.999 * limit, err=0.01 * limit),
    )
    assert rep.verdict is None and not bool(rep)
    assert "straddles" in rep.reason


def test_not_converged_below_threshold_is_undecided_but_above_is_certain():
    lr = 0.1
    limit = float(st.max_stable_sharpness(lr, 2))
    below = st.is_accessible(None, None, 2, lr, spectrum=_spectrum(0.5 * limit, ok=False))
    assert below.verdict is None and "did not converge" in below.reason
    # A Ritz value is a lower bound on lambda_max: above the threshold is proof.
    above = st.is_accessible(None, None, 2, lr, spectrum=_spectrum(1.5 * limit, ok=False))
    assert above.verdict is False


def test_negative_curvature_is_not_a_minimum():
    rep = st.is_accessible(None, None, 1, 0.01, spectrum=_spectrum(1.0, low=-0.5))
    assert rep.verdict is False
    assert "not a minimum" in rep.reason
    assert rep.spectral_radius > 1  # the negative direction grows


def test_flat_directions_are_neutral():
    rep = st.is_accessible(None, None, 1, 0.01, spectrum=_spectrum(1.0, low=-1e-7))
    assert rep.verdict is True
    slow = st.is_accessible(
        None, None, 1, 0.01, spectrum=_spectrum(1.0, low=1e-9, low_err=1e-6, low_ok=False)
    )
    assert slow.verdict is True and "not converged" in slow.reason


def test_negative_curvature_is_proved_even_without_convergence():
    # The smallest Ritz value is an upper bound on lambda_min.
    rep = st.is_accessible(None, None, 1, 0.01, spectrum=_spectrum(1.0, low=-0.1, low_ok=False))
    assert rep.verdict is False and "not a minimum" in rep.reason


def test_delay_distribution_is_accepted():
    lr = 0.1
    dist = st.round_robin(5)
    limit = float(st.max_stable_sharpness(lr, 4))
    rep = st.is_accessible(None, None, dist, lr, spectrum=_spectrum(0.9 * limit))
    assert rep.verdict is True
    assert rep.max_stable_sharpness == pytest.approx(limit, rel=1e-9)


def test_report_reads_like_a_report_and_serialises():
    rep = st.is_accessible(None, None, 4, 0.1, spectrum=_spectrum(2.0))
    text = repr(rep)
    assert "NOT ACCESSIBLE" in text or "ACCESSIBLE" in text
    assert "max stable lr" in text and "tau=4" in text
    d = rep.to_dict()
    assert d["tau"] == 4 and "spectrum" not in d
    import json

    json.dumps(d)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(tau=-1, lr=0.1), "tau"),
        (dict(tau=1.5, lr=0.1), "tau"),
        (dict(tau=1, lr=0.0), "lr"),
        (dict(tau=1, lr=float("nan")), "lr"),
        (dict(tau=1, lr=0.1, beta=1.0), "beta"),
        (dict(tau=1, lr=0.1, momentum="adam"), "momentum"),
    ],
)
def test_bad_hyperparameters_name_the_argument(kwargs, name):
    tau, lr = kwargs.pop("tau"), kwargs.pop("lr")
    with pytest.raises(ValueError, match=name):
        st.is_accessible(None, None, tau, lr, spectrum=_spectrum(1.0), **kwargs)


def test_spectrum_of_wrong_type_is_refused():
    with pytest.raises(TypeError, match="spectrum"):
        st.is_accessible(None, None, 1, 0.1, spectrum=(1.0, 2.0))
