"""The verdict rule of `is_accessible`, branch by branch and at its boundaries.

Every expectation is worked out here from the rule as the module docstring of
`stability.accessibility` states it, on spectra built with known numbers: plain SGD
at ``tau = 0`` has the closed forms limit ``2 / lr``, per-step factor ``|1 - lr a|``
and max stable lr ``2 / a``; momentum rules are checked against numpy companion
roots (tests/stability_oracles.py); the random-start bound is Kuczynski and
Wozniakowski's formula evaluated here. The end-to-end runs use quadratic losses
whose Hessian is known exactly. These tests kill the mutants of accessibility.py
that survived test_accessibility.py (tests/MUTATION.md).
"""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stability_oracles import bisect_threshold, poly, rho

import stability as st
from stability.curvature.hessian_spectrum import HessianSpectrum

LR = 0.5  # plain SGD at tau = 0: the stable limit is 2 / LR = 4 exactly
LIMIT = 4.0


def spec(top=1.0, err=0.0, ok=True, low=0.0, low_err=0.0, low_ok=True, *, tops=None, errs=None,
         n=0, steps=0, rounding=0.0, random_start=True, hvps=7):  # fmt: skip
    tops = [top] if tops is None else tops
    errs = [err] * len(tops) if errs is None else errs
    return HessianSpectrum(
        eigenvalues=np.array(tops, float),
        errors=np.array(errs, float),
        converged=np.array([ok] * len(tops)),
        smallest=low,
        smallest_error=low_err,
        smallest_converged=low_ok,
        num_hvps=hvps,
        num_params=n,
        lanczos_steps=steps,
        rounding_error=rounding,
        random_start=random_start,
    )


def ks_upper_lower(top, low, n, steps, p, rounding=0.0):
    """Kuczynski-Wozniakowski (1992, thm 4.2) two-sided bound, union over p / 2 each."""
    eps = (math.log(1.648 * math.sqrt(n) / (p / 2)) / (2 * steps - 1)) ** 2
    slack = eps * (top - low) / (1 - 2 * eps)
    return top + slack + rounding, low - slack - rounding


def judge(s, lr=LR, tau=0, **kw):
    return st.verdict_from_spectrum(s, tau, lr, **kw)


def lr_with_limit(limit):
    """An lr whose plain-SGD limit ``2 / lr`` is exactly ``limit`` (searched over a few ulps)."""
    lr = 2 / limit
    for _ in range(64):
        if 2 / lr == limit:
            return lr
        lr = np.nextafter(lr, 0.0 if 2 / lr < limit else 1.0)
    raise AssertionError("no exact lr found")


def test_gd_limit_is_the_closed_form():
    assert float(st.max_stable_sharpness(LR, 0)) == LIMIT  # the cases below rely on it


SHARP = [
    # top, err, converged, verdict, certified_by, reason
    (4.0, 0.0, True, False, "ritz_value",
     "unstable: a Ritz value 4 is already at or above the stable limit 4, so the sharpness "
     "is at least 100 % of it"),
    (5.0, 0.0, False, False, "ritz_value",
     "unstable: a Ritz value 5 is already at or above the stable limit 4, so the sharpness "
     "is at least 125 % of it"),
    (3.0, 1.0, True, None, None,
     "undecided: sharpness 3 +- 1 straddles the stable limit 4 after 7 Hessian-vector products"),
    (3.0, 0.5, True, True, "residual",
     "stable: sharpness 3 + 0.5 < stable limit 4 (75 % of it; converged Ritz residual bound)"),
    (3.0, 0.5, False, None, None,
     "undecided: sharpness 3 +- 0.5 (below the stable limit 4) has not converged after 7 "
     "Hessian-vector products"),
]  # fmt: skip


@pytest.mark.parametrize("top, err, ok, verdict, by, reason", SHARP)
def test_sharp_side_at_its_boundaries(top, err, ok, verdict, by, reason):
    # A Ritz value AT the limit proves instability (>=); a residual bar reaching
    # exactly to the limit does not certify stability (<).
    rep = judge(spec(top, err, ok))
    assert (rep.verdict, rep.certified_by, rep.reason) == (verdict, by, reason)
    assert bool(rep) is (verdict is True)
    assert rep.sharpness == top and rep.sharpness_error == err
    assert rep.fraction_of_limit == top / LIMIT
    assert rep.sharpness_upper_bound == math.inf  # n = 0: no random-start bound


def test_the_top_ritz_value_is_the_first_one():
    # k = 2: the verdict reads eigenvalues[0] and errors[0], not the second pair.
    rep = judge(spec(tops=[3.0, 2.0], errs=[0.25, 3.0], ok=True))
    assert rep.verdict is True and rep.certified_by == "residual"
    assert (rep.sharpness, rep.sharpness_error) == (3.0, 0.25)
    rep = judge(spec(tops=[4.5, 2.0], errs=[0.0, 0.0]))
    assert rep.verdict is False


@pytest.mark.parametrize("p", [1e-6, 1e-3])
def test_random_start_bound_certifies_strictly_below_the_limit(p):
    n, steps, top, low, rounding = 1000, 60, 3.0, -0.5, 1e-3
    s = spec(top, err=2.0, ok=False, low=low, n=n, steps=steps, rounding=rounding)
    upper, lower = ks_upper_lower(top, low, n, steps, p, rounding)
    assert s.bounds(p) == pytest.approx((upper, lower), rel=1e-12)
    assert top < upper < LIMIT
    rep = judge(s, failure_probability=p)
    assert rep.verdict is True and rep.certified_by == "random_start"
    assert rep.sharpness_upper_bound == pytest.approx(upper, rel=1e-12)
    assert rep.failure_probability == p
    assert rep.reason == (
        f"stable: sharpness <= {s.bounds(p)[0]:.4g} < stable limit 4 with probability >= "
        f"1 - {p:g} (random-start bound)"
    )
    # A limit exactly at the bound: not certified (strict inequality), undecided.
    upper = s.bounds(p)[0]
    lr = float(lr_with_limit(upper))
    assert float(st.max_stable_sharpness(lr, 0)) == upper  # an exact construction
    rep = judge(s, lr=lr, failure_probability=p)
    assert rep.verdict is None and rep.certified_by is None


def test_no_bound_from_a_warm_start_or_too_few_steps():
    s = spec(3.0, err=2.0, ok=False, low=-0.5, n=1000, steps=60, random_start=False)
    assert s.bounds() == (math.inf, -math.inf)
    assert judge(s).verdict is None
    s = spec(3.0, err=2.0, ok=False, low=-0.5, n=1000, steps=8)  # eps >= 1/2
    assert judge(s).sharpness_upper_bound == math.inf


MINIMUM = [
    # top, top_err, low, low_err, low_converged, is_minimum
    (1.0, 0.5, -1.4e-5, 0.0, True, None),  # not below -1e-5 (1 + 0.5), not within -1e-5
    (1.0, 0.5, -1e-5 * (1.0 + 0.5), 0.0, True, None),  # exactly at the proof threshold
    (1.0, 0.5, -1.6e-5, 0.0, False, False),  # below it: a proof, converged or not
    (1.0, 0.0, -5e-6, 5e-6, True, True),  # low - err exactly -1e-5 x sharpness: flat
    (1.0, 0.0, -5e-6, 5e-6, False, None),  # the same, not converged
    (1.0, 0.0, -5e-6, 1e-5, True, None),  # the bar reaches below the tolerance
    (1.0, 0.0, 2e-5, 1e-6, True, True),
    (2.0, 0.0, -1.5e-5, 0.0, True, True),  # the tolerance scales with the sharpness
    (0.0, 0.0, -1.0, 0.0, True, False),  # zero sharpness, negative curvature
]


@pytest.mark.parametrize("top, top_err, low, low_err, low_ok, expected", MINIMUM)
def test_minimum_at_the_flat_tolerance(top, top_err, low, low_err, low_ok, expected):
    rep = judge(spec(top, top_err, True, low, low_err, low_ok), lr=0.01)  # limit 200
    assert rep.is_minimum is expected
    assert rep.verdict is True  # never part of the verdict by default
    assert (rep.smallest_eigenvalue, rep.smallest_error) == (low, low_err)


def test_minimum_from_the_random_start_lower_bound():
    # Not converged, but the gap-free lower bound is above -1e-5 x sharpness.
    n, steps, p = 10, 1000, 1e-6
    s = spec(1.0, 0.0, True, low=0.5, low_err=0.1, low_ok=False, n=n, steps=steps)
    lower = ks_upper_lower(1.0, 0.5, n, steps, p)[1]
    assert 0 < lower < 0.5 and s.bounds(p)[1] == pytest.approx(lower, rel=1e-12)
    assert judge(s, lr=0.01).is_minimum is True
    assert judge(s._replace(lanczos_steps=8), lr=0.01).is_minimum is None
    # A lower bound slightly below zero, within -1e-5 x sharpness, establishes it too;
    # just beyond, it does not.
    for target, expected in ((-0.5e-5, True), (-1.5e-5, None)):
        low = 5e-5
        for _ in range(20):  # solve low - slack(low) = target
            low += target - ks_upper_lower(1.0, low, n, steps, p)[1]
        t = s._replace(smallest=low)
        assert t.bounds(p)[1] == pytest.approx(target, rel=1e-9)
        assert judge(t, lr=0.01).is_minimum is expected


NOT_ESTABLISHED = dict(low=-5e-6, low_err=1e-5, low_ok=False)
REQUIRE = [
    # lr, spectrum kwargs, verdict, certified_by, reason (start), is_minimum, plain verdict
    (0.01, dict(top=1.0, **NOT_ESTABLISHED), None, None,
     "undecided: a minimum is not established (smallest eigenvalue -5e-06 +- 1e-05 after 7 "
     "Hessian-vector products; require_minimum=True); sharp side: stable: sharpness 1 + 0 < "
     "stable limit 200 (0.5 % of it; converged Ritz residual bound)", None, True),
    (LR, dict(top=3.0, err=1.0, low=-1.0), False, "ritz_value",
     "not a minimum: a Ritz value -1 is below -1e-05 x sharpness (require_minimum=True)", False,
     None),
    (LR, dict(top=5.0, low=-1.0), False, "ritz_value",
     "unstable: a Ritz value 5 is already at or above", False, False),
    (LR, dict(top=5.0, **NOT_ESTABLISHED), False, "ritz_value",
     "unstable: a Ritz value 5 is already at or above", None, False),
    (LR, dict(top=3.0, err=1.0, low=0.5), None, None, "undecided: sharpness 3 +- 1 straddles",
     True, None),
    (LR, dict(top=3.0, low=0.5), True, "residual", "stable: sharpness 3 + 0 < stable limit 4",
     True, True),
    (LR, dict(top=3.0, err=1.0, **NOT_ESTABLISHED), None, None,
     "undecided: a minimum is not established (smallest eigenvalue -5e-06 +- 1e-05 after 7 "
     "Hessian-vector products; require_minimum=True); sharp side: undecided: sharpness 3 +- 1 "
     "straddles", None, None),
]  # fmt: skip


@pytest.mark.parametrize("lr, kw, verdict, by, reason, minimum, plain_verdict", REQUIRE)
def test_require_minimum_table(lr, kw, verdict, by, reason, minimum, plain_verdict):
    rep = judge(spec(**kw), lr=lr, require_minimum=True)
    assert (rep.verdict, rep.certified_by, rep.is_minimum) == (verdict, by, minimum)
    assert rep.reason.startswith(reason), rep.reason
    assert rep.require_minimum is True
    # Without the requirement the minimum is reported beside the sharp-side verdict.
    plain = judge(spec(**kw), lr=lr)
    assert (plain.verdict, plain.is_minimum) == (plain_verdict, minimum)
    assert plain.require_minimum is False


def test_every_field_of_a_gd_report():
    rep = judge(spec(3.0, 0.5, True, low=-1.0, low_err=0.125, low_ok=False, hvps=11))
    expected = dict(
        verdict=True, is_minimum=False, certified_by="residual",
        sharpness=3.0, sharpness_error=0.5, sharpness_upper_bound=None,
        smallest_eigenvalue=-1.0, smallest_error=0.125, max_stable_sharpness=LIMIT,
        fraction_of_limit=0.75, spectral_radius=abs(1 - LR * 3.0),
        smallest_growth=abs(1 - LR * -1.0), max_stable_lr=2 / 3.0, num_hvps=11, tau=0,
        lr=LR, beta=0.0, momentum="heavy_ball", require_minimum=False,
        failure_probability=1e-6, product_error=0.0,
    )  # fmt: skip
    got = rep.to_dict()
    reason = got.pop("reason")
    assert reason.startswith("stable: sharpness 3 + 0.5 < stable limit 4")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert got[key] == value and type(got[key]) is type(value), key
    assert isinstance(rep.num_hvps, int) and isinstance(rep.lr, float)
    assert rep.spectrum is not None and rep.spectrum.num_hvps == 11


@pytest.mark.parametrize("rule, beta, tau", [("nesterov", 0.5, 3), ("shifted", 0.9, 2)])
def test_momentum_report_against_companion_roots(rule, beta, tau):
    # numpy roots near the unit circle resolve the threshold to ~1e-7 only.
    lr, low = 0.1, -0.25
    q_max = bisect_threshold(lambda q: poly(tau, beta, q, rule))
    top = 0.5 * q_max / lr
    s = spec(top, 1e-6, low=low)
    rep = judge(s, lr=lr, tau=tau, beta=beta, momentum=rule)
    assert rep.max_stable_sharpness == pytest.approx(q_max / lr, rel=1e-6)
    assert rep.max_stable_lr == pytest.approx(q_max / top, rel=1e-6)
    assert rep.spectral_radius == pytest.approx(rho(poly(tau, beta, lr * top, rule)), rel=1e-8)
    assert rep.smallest_growth == pytest.approx(rho(poly(tau, beta, lr * low, rule)), rel=1e-8)
    assert rep.verdict is True and rep.certified_by == "residual"
    assert (rep.beta, rep.momentum, rep.tau) == (beta, rule, tau)
    # The same through is_accessible with the spectrum given.
    assert st.is_accessible(None, None, tau, lr, beta=beta, momentum=rule, spectrum=s) == rep


def test_zero_sharpness_and_non_finite_numbers():
    # Power iteration without the smallest eigenvalue: NaN +- inf; a zero sharpness
    # has no max stable lr (inf) and no relative size of the negative curvature.
    rep = judge(spec(0.0, low=-1.0))
    assert rep.max_stable_lr == math.inf and rep.fraction_of_limit == 0.0
    assert "(n/a of the sharpness)" in repr(rep) and "nan" not in repr(rep)
    rep = judge(spec(0.5, low=math.nan, low_err=math.inf, low_ok=False))
    d = rep.to_dict()
    assert d["smallest_eigenvalue"] is None and d["smallest_growth"] is None
    assert d["smallest_error"] is None and d["sharpness_upper_bound"] is None
    assert d["max_stable_lr"] == pytest.approx(4.0, rel=1e-12)
    json.dumps(d, allow_nan=False)
    assert rep.is_minimum is None and rep.verdict is True


def test_report_text():
    rep = judge(spec(3.0, 0.5, True, low=0.0, low_err=0.0))
    assert repr(rep) == "\n".join([
        "Accessibility: ACCESSIBLE",
        "  verdict           stable: sharpness 3 + 0.5 < stable limit 4 (75 % of it; "
        "converged Ritz residual bound)",
        "  sharpness         3 +- 0.5: 75 % of the stable limit 4",
        "  minimum           yes: smallest eigenvalue 0 +- 0 (flat or positive curvature)",
        "  per-step factor   0.50000000 along the sharpest direction (it contracts)",
        "  max stable lr     0.666667 at this tau, beta and rule",
        "  hyperparameters   tau=0  lr=0.5  beta=0  momentum=heavy_ball",
        "  cost              7 Hessian-vector products",
    ])  # fmt: skip
    no = repr(judge(spec(5.0, low=-1.0)))
    assert no.splitlines()[0] == "Accessibility: NOT ACCESSIBLE"
    assert no.splitlines()[3] == (
        "  minimum           no: negative curvature, smallest eigenvalue -1 +- 0 (-20 % of the "
        "sharpness); that direction grows x1.5 per step; not part of the verdict "
        "(require_minimum=False)"
    )
    assert no.splitlines()[4].endswith("1.50000000 along the sharpest direction (it grows)")
    strict = repr(judge(spec(5.0, low=-1.0), require_minimum=True)).splitlines()[3]
    assert strict.endswith("that direction grows x1.5 per step")
    undecided = repr(judge(spec(3.0, 1.0, **NOT_ESTABLISHED))).splitlines()
    assert undecided[0] == "Accessibility: UNDECIDED"
    assert undecided[3] == (
        "  minimum           not established: smallest eigenvalue -5e-06 +- 1e-05; not part of "
        "the verdict (require_minimum=False)"
    )
    # A per-step factor of exactly 1 is not a contraction.
    assert "(it grows)" in repr(judge(spec(4.0)))


def test_delay_distribution_in_the_report():
    dist = st.delay_distribution([0.5, 0.0, 0.0, 0.0, 0.0, 0.5])
    rep = judge(spec(1.0), lr=0.1, tau=dist)
    assert rep.to_dict()["tau"] == "distribution(max=5, mean=2.5)"
    assert "tau=distribution(max=5, mean=2.5)  lr=0.1" in repr(rep)
    assert rep.tau is dist


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tau=[1, 2]), ValueError, "tau must be a single delay"),
        (dict(lr=[0.1]), ValueError, "lr must be a scalar"),
        (dict(failure_probability=0.0), ValueError, "failure_probability"),
        (dict(failure_probability=1.0), ValueError, "failure_probability"),
        (dict(failure_probability=-0.5), ValueError, "failure_probability"),
        (dict(failure_probability="0.1"), ValueError, "failure_probability"),
        (dict(beta=-0.1), ValueError, "beta"),
        (dict(momentum=1), TypeError, "momentum"),
    ],
)
def test_bad_arguments_of_verdict_from_spectrum(kwargs, error, match):
    kw = dict(tau=1, lr=0.1) | kwargs
    tau, lr = kw.pop("tau"), kw.pop("lr")
    with pytest.raises(error, match=match):
        st.verdict_from_spectrum(spec(1.0), tau, lr, **kw)
    with pytest.raises(error, match=match):
        st.is_accessible(lambda p: p, None, tau, lr, spectrum=spec(1.0), **kw)


def test_a_spectrum_of_another_type_is_named():
    with pytest.raises(TypeError, match="spectrum must be a HessianSpectrum; got tuple"):
        st.verdict_from_spectrum((1.0, 2.0), 1, 0.1)


def test_extreme_failure_probabilities_are_accepted():
    for p in (0.5, 1e-300):
        assert judge(spec(1.0), failure_probability=p).failure_probability == p


# ------------------------------------------------- end to end on known Hessians

# lambda_max 1 well separated (fast), lambda_min 0.05 in a tight bottom end (slow)
EIGS = np.concatenate([[1.0], np.geomspace(0.05, 0.5, 19)])


def quadratic(eigs=EIGS):
    d = jnp.asarray(eigs)

    def loss(p, batch):
        return 0.5 * jnp.sum(d * p["x"] ** 2) * jnp.mean(batch)

    return loss, {"x": jnp.ones(d.shape[0])}, jnp.ones(3)


def test_is_accessible_stops_once_decided():
    loss, params, data = quadratic()
    # Limit 0.04: every Ritz value (>= 0.05) proves instability after one product.
    rep = st.is_accessible(loss, params, 0, 50.0, data=data, progress=False)
    assert (rep.verdict, rep.certified_by, rep.num_hvps) == (False, "ritz_value", 1)
    assert 0.05 <= rep.sharpness <= 1.0
    assert rep.spectrum.eigenvalues.shape == (1,) and rep.spectrum.eigenvectors is None


def test_is_accessible_passes_tol_max_hvps_and_seed():
    loss, params, data = quadratic()
    loose = st.is_accessible(loss, params, 0, 0.01, data=data, tol=0.2, progress=False)
    assert loose.verdict is True and loose.certified_by == "residual"
    assert np.min(np.abs(EIGS - loose.sharpness)) <= loose.sharpness_error
    # Converged at tol = 0.2, stopped before the default tol (1e-3) was reached.
    assert 1e-3 * loose.sharpness < loose.sharpness_error <= 0.2 * loose.sharpness
    tight = st.is_accessible(loss, params, 0, 0.01, data=data, tol=1e-9, progress=False)
    assert tight.verdict is True and loose.num_hvps < tight.num_hvps
    # Near the limit (1.0 at lr = 2 / (1 + 1e-9)) nothing decides within 4 products.
    lr = 2 / (1 + 1e-9)
    short = [st.is_accessible(loss, params, 0, lr, data=data, max_hvps=4, seed=s, progress=False)
             for s in (0, 0, 1)]  # fmt: skip
    assert all(r.verdict is None and r.num_hvps == 4 for r in short)
    assert "after 4 Hessian-vector products" in short[0].reason
    assert short[0].sharpness == short[1].sharpness != short[2].sharpness


def test_is_accessible_require_minimum_waits_for_the_smallest():
    loss, params, data = quadratic()
    plain = st.is_accessible(loss, params, 0, 0.01, data=data, progress=False)
    strict = st.is_accessible(loss, params, 0, 0.01, data=data, require_minimum=True,
                              progress=False)  # fmt: skip
    assert strict.verdict is True and strict.is_minimum is True and strict.require_minimum
    assert strict.num_hvps > plain.num_hvps and plain.is_minimum is None
    assert strict.spectrum.smallest_converged and strict.smallest_eigenvalue >= 0.05 - 1e-12


def test_is_accessible_returns_the_top_vector_and_the_momentum_limit():
    loss, params, data = quadratic()
    beta, rule, lr = 0.5, "nesterov", 0.1
    rep = st.is_accessible(
        loss, params, 3, lr, beta=beta, momentum=rule, data=data, tol=1e-8,
        return_vectors=True, failure_probability=1e-3, progress=False,
    )  # fmt: skip
    q_max = bisect_threshold(lambda q: poly(3, beta, q, rule))
    assert rep.max_stable_sharpness == pytest.approx(q_max / lr, rel=1e-6)
    assert (rep.beta, rep.momentum, rep.failure_probability) == (beta, rule, 1e-3)
    v = np.asarray(rep.spectrum.eigenvectors["x"][0])
    assert abs(abs(v[0]) - 1.0) <= 1e-6  # the top eigenvector is e_0


def test_is_accessible_progress_bar_only_when_asked(capsys):
    loss, params, data = quadratic()
    batches = [data, data[:2]]
    st.is_accessible(loss, params, 0, 50.0, data=batches, progress=False)
    assert capsys.readouterr().err == ""
    st.is_accessible(loss, params, 0, 50.0, data=batches, progress=True)
    assert "Hessian-vector products" in capsys.readouterr().err


class _Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False, scale: float = 1.0):
        y = nn.Dense(2, use_bias=False, param_dtype=jnp.float64, dtype=jnp.float64)(x)
        return y * scale * (3.0 if train else 1.0)


def test_is_accessible_passes_the_model_options():
    # Mean squared error of c x W over B examples and 2 outputs: the Hessian in W is
    # 2 c^2 X^T X / (2 B) for each output column, so lambda_max = c^2 eig_max(X^T X) / B.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3))
    y = rng.normal(size=(16, 2))
    model = _Linear()
    variables = model.init(jax.random.key(0), jnp.asarray(x))
    top = np.linalg.eigvalsh(x.T @ x)[-1] / 16
    batch = {"pixels": jnp.asarray(x), "digit": jnp.asarray(y)}
    for train, c in ((False, 2.0), (True, 6.0)):
        rep = st.is_accessible(
            model, variables, 0, 0.01, data=batch, loss=st.mean_squared_error, train=train,
            call_kwargs={"scale": 2.0}, batch_keys=("pixels", "digit"), tol=1e-10,
            progress=False,
        )  # fmt: skip
        assert rep.sharpness == pytest.approx(c**2 * top, rel=1e-8)


def test_reports_near_the_limit_show_the_order_and_never_nan():
    """Issue 21, items 13-15: a Ritz value 0.3 % above the limit reads 100.3 %, not
    "100 %", and both numbers are printed with the digits that tell them apart; an
    undecided report says it is undecided (its per-step factor is only an estimate), a
    proven non-minimum is in the headline, and neither text nor JSON holds nan or a
    string for infinity."""
    above = judge(spec(LIMIT * 1.003))
    assert above.verdict is False and "100.3 %" in above.reason
    close = judge(spec(LIMIT * (1 + 1e-7)))
    shown = close.reason.split("a Ritz value ")[1].split(" is already")[0]
    assert float(shown) > LIMIT and "100.00001 %" in close.reason
    undecided = judge(spec(LIMIT * 0.9, err=LIMIT * 0.2, low=-1.0, low_err=0.01))
    text = repr(undecided)
    assert undecided.verdict is None and undecided.reason.startswith("undecided")
    assert "UNDECIDED (not a minimum)" in text and "not certified" in text
    nan_report = judge(spec(0.5, low=math.nan, low_err=math.inf, low_ok=False))
    assert "nan" not in repr(nan_report).lower().replace("non-", "")
    dumped = json.dumps(nan_report.to_dict(), allow_nan=False)
    assert '"inf"' not in dumped and "NaN" not in dumped


def test_a_factor_within_rounding_of_one_shows_its_side():
    from stability.report import _factor

    assert _factor(1 - 1e-11) == "0.99999999999" and _factor(1.0000009) == "1.00000090"
    assert _factor(0.5) == "0.50000000" and _factor(math.nan) == "n/a"
