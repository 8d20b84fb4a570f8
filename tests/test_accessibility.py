"""The verdict logic of `is_accessible` on spectra with known numbers.

The threshold comes from the core (`max_stable_sharpness`); here the spectrum
is given, so every branch of the verdict is
exercised with an exact expectation: the sharp side (certified stable by the
residual or the random-start bound, certified unstable by a Ritz value,
undecided), the minimum beside it, and ``require_minimum``. Networks are in
test_accessibility_networks.py.
"""

import json
import math

import numpy as np
import pytest

import stability as st
from stability.curvature.hessian_spectrum import HessianSpectrum


def _spectrum(top, err=1e-9, ok=True, low=0.0, low_err=1e-9, low_ok=True, **extra):
    return HessianSpectrum(
        eigenvalues=np.array([top]),
        errors=np.array([err]),
        converged=np.array([ok]),
        smallest=low,
        smallest_error=low_err,
        smallest_converged=low_ok,
        num_hvps=10,
        **extra,
    )


def test_certified_yes_and_no_around_the_gd_closed_form():
    tau, lr = 4, 0.1
    limit = 2 * math.sin(math.pi / (2 * (2 * tau + 1))) / lr  # docs/theory.md section 7
    yes = st.is_accessible(None, None, tau, lr, spectrum=_spectrum(0.99 * limit))
    no = st.is_accessible(None, None, tau, lr, spectrum=_spectrum(1.01 * limit, ok=False))
    assert yes.verdict is True and bool(yes) and yes.certified_by == "residual"
    assert no.verdict is False and not bool(no) and no.certified_by == "ritz_value"
    assert yes.max_stable_sharpness == pytest.approx(limit, rel=1e-9)
    assert yes.fraction_of_limit == pytest.approx(0.99, rel=1e-9)
    assert yes.spectral_radius < 1 < no.spectral_radius
    # The max stable lr at this sharpness puts it exactly on the threshold.
    assert yes.max_stable_lr == pytest.approx(lr / 0.99, rel=1e-9)
    assert yes.num_hvps == 10


def test_error_bar_straddling_the_threshold_is_undecided():
    tau, lr = 8, 0.05
    limit = float(st.max_stable_sharpness(lr, tau, 0.9, momentum="shifted"))
    rep = st.is_accessible(
        None, None, tau, lr, beta=0.9, momentum="shifted",
        spectrum=_spectrum(0.999 * limit, err=0.01 * limit),
    )  # fmt: skip
    assert rep.verdict is None and not bool(rep) and rep.certified_by is None
    assert "straddles" in rep.reason
    # The bar just clears the limit: certified.
    rep = st.is_accessible(
        None, None, tau, lr, beta=0.9, momentum="shifted",
        spectrum=_spectrum(0.98 * limit, err=0.0199 * limit),
    )  # fmt: skip
    assert rep.verdict is True


def test_unconverged_sharpness_below_is_undecided_but_above_is_certain():
    lr = 0.1
    limit = float(st.max_stable_sharpness(lr, 2))
    # The residual bound presumes a converged top Ritz value: not certified.
    below = st.is_accessible(None, None, 2, lr, spectrum=_spectrum(0.5 * limit, ok=False))
    assert below.verdict is None and "has not converged" in below.reason
    # A Ritz value is a lower bound on lambda_max: above the threshold is proof.
    above = st.is_accessible(None, None, 2, lr, spectrum=_spectrum(1.5 * limit, ok=False))
    assert above.verdict is False and "unstable" in above.reason


def test_random_start_bound_certifies_without_convergence():
    lr, tau = 0.1, 2
    limit = float(st.max_stable_sharpness(lr, tau))
    kw = dict(ok=False, err=0.4 * limit, low=0.0, num_params=1000)
    spectrum = _spectrum(0.5 * limit, lanczos_steps=60, **kw)
    upper, lower = spectrum.bounds(1e-6)
    assert 0.5 * limit < upper < limit and lower < 0
    rep = st.is_accessible(None, None, tau, lr, spectrum=spectrum)
    assert rep.verdict is True and rep.certified_by == "random_start"
    assert rep.sharpness_upper_bound == upper and "probability" in rep.reason
    # Fewer steps: the bound is too loose, nothing certifies.
    rep = st.is_accessible(
        None, None, tau, lr, spectrum=_spectrum(0.5 * limit, lanczos_steps=8, **kw)
    )
    assert rep.verdict is None and rep.sharpness_upper_bound > limit
    # A stricter failure probability loosens the bound.
    strict = st.is_accessible(None, None, tau, lr, spectrum=spectrum, failure_probability=1e-300)
    assert strict.sharpness_upper_bound > upper


def test_negative_curvature_is_reported_beside_the_verdict():
    rep = st.is_accessible(None, None, 1, 0.01, spectrum=_spectrum(1.0, low=-0.5))
    assert rep.verdict is True and rep.is_minimum is False
    assert rep.smallest_growth > 1 > rep.spectral_radius  # the negative direction grows
    assert "negative curvature" in repr(rep) and "not part of the verdict" in repr(rep)
    strict = st.is_accessible(
        None, None, 1, 0.01, spectrum=_spectrum(1.0, low=-0.5), require_minimum=True
    )
    assert strict.verdict is False and "not a minimum" in strict.reason
    assert strict.certified_by == "ritz_value"


def test_flat_tolerance_is_1e_5_of_the_sharpness():
    def minimum(low, **kw):
        return st.is_accessible(None, None, 1, 0.01, spectrum=_spectrum(1.0, low=low, **kw))

    assert minimum(-2e-5).is_minimum is False  # proven by the Ritz value alone
    assert minimum(-2e-5, low_ok=False).is_minimum is False
    assert minimum(-5e-6).is_minimum is True  # within the tolerance, converged
    assert minimum(-5e-6, low_err=1e-5).is_minimum is None  # the bar reaches below
    assert minimum(1e-9, low_err=1e-6, low_ok=False).is_minimum is None  # not converged
    assert minimum(-5e-6, low_ok=False).is_minimum is None
    # Every one of these keeps the sharp-side verdict.
    assert minimum(-2e-5).verdict is True


def test_require_minimum_waits_for_an_established_minimum():
    def judged(low, **kw):
        spectrum = _spectrum(1.0, low=low, **kw)
        return st.is_accessible(None, None, 1, 0.01, spectrum=spectrum, require_minimum=True)

    assert judged(1e-3).verdict is True and judged(1e-3).is_minimum is True
    undecided = judged(1e-9, low_err=1e-4, low_ok=False)
    assert undecided.verdict is None and "minimum is not established" in undecided.reason
    # An unstable sharp side stays False whatever the minimum.
    unstable = st.is_accessible(
        None, None, 1, 10.0, spectrum=_spectrum(1.0, low=1e-9, low_ok=False),
        require_minimum=True,
    )  # fmt: skip
    assert unstable.verdict is False and "unstable" in unstable.reason


def test_delay_distribution_is_judged_by_its_own_limit():
    lr = 0.1
    dist = st.delay_distribution([0.5, 0.0, 0.0, 0.0, 0.0, 0.5])
    limit = float(st.max_stable_sharpness(lr, dist))
    largest = float(st.max_stable_sharpness(lr, 5))
    assert limit > 1.2 * largest  # a different limit than the largest delay's
    rep = st.is_accessible(None, None, dist, lr, spectrum=_spectrum(1.1 * largest))
    assert rep.verdict is True
    assert rep.max_stable_sharpness == pytest.approx(limit, rel=1e-12)
    assert rep.spectral_radius == pytest.approx(
        float(st.spectral_radius(1.1 * largest, lr, dist)), rel=1e-12
    )
    assert rep.to_dict()["tau"].startswith("distribution(max=5")


@pytest.mark.parametrize(
    "top, low, word, absent",
    [(0.5, 0.0, "ACCESSIBLE", "NOT ACCESSIBLE"), (2.0, 0.0, "NOT ACCESSIBLE", "UNDECIDED")],
)
def test_report_reads_like_a_report_and_serialises(top, low, word, absent):
    lr = 0.1
    limit = float(st.max_stable_sharpness(lr, 4))
    rep = st.is_accessible(None, None, 4, lr, spectrum=_spectrum(top * limit, low=low))
    text = repr(rep)
    first, *rest = text.splitlines()
    assert first == f"Accessibility: {word}" and absent not in text
    lines = {line.split()[0]: line for line in rest}
    assert f"{100 * top:.3g} % of the stable limit" in lines["sharpness"]
    assert rep.reason in lines["verdict"]
    assert lines["minimum"].split()[1] == "yes:"  # low = 0 +- 1e-9: flat, converged
    assert "tau=4" in lines["hyperparameters"] and "10 Hessian-vector" in lines["cost"]
    assert ("contracts" if top < 1 else "grows") in lines["per-step"]
    d = rep.to_dict()
    assert d["tau"] == 4 and "spectrum" not in d
    assert d["verdict"] is (top < 1) and d["is_minimum"] is True
    assert d["certified_by"] == ("residual" if top < 1 else "ritz_value")
    json.dumps(d)


def test_undecided_report_says_undecided():
    lr = 0.1
    limit = float(st.max_stable_sharpness(lr, 4))
    rep = st.is_accessible(None, None, 4, lr, spectrum=_spectrum(0.9 * limit, ok=False))
    assert repr(rep).splitlines()[0] == "Accessibility: UNDECIDED"
    assert rep.to_dict()["verdict"] is None


def test_reused_spectrum_gives_the_same_report_as_verdict_from_spectrum():
    spectrum = _spectrum(3.0, low=-0.01, num_params=500, lanczos_steps=40)
    for lr in (0.1, 0.5, 0.66, 1.0):
        a = st.is_accessible(None, None, 3, lr, beta=0.5, momentum="nesterov", spectrum=spectrum)
        b = st.verdict_from_spectrum(spectrum, 3, lr, beta=0.5, momentum="nesterov")
        assert a == b


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
    with pytest.raises(ValueError, match="failure_probability"):
        st.is_accessible(None, None, 1, 0.1, spectrum=_spectrum(1.0), failure_probability=1.0)


def test_params_of_another_model_fail_before_any_product_with_one_sentence():
    import jax

    from stability.networks.examples import DigitsMLP

    x, y = st.load_digits(32)
    other = DigitsMLP(hidden=6).init(jax.random.key(0), x[:1])
    with pytest.raises(ValueError, match=r"^params do not match the model \(params of another "
                                         r"model\?\): \['params'\]\['Dense_0'\]\['bias'\] has "
                                         r"shape \(6,\), the model expects \(8,\)"):  # fmt: skip
        st.is_accessible(DigitsMLP(hidden=8), other, 0, 0.1, data=(x, y))
