"""`is_accessible(..., local_sgd=...)`: the local SGD / DiLoCo verdict on a network.

The network is a teacher-student tanh MLP evaluated at the teacher (zero residual: an
exactly stationary minimum in float64), small enough for a dense Hessian: the oracles
are the dense eigenvalues with `round_spectral_radius` at each of them, and
`simulate_diloco` from the minimum plus a small push along the top eigenvector.
"""

import json
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import stability
from stability.theory.local_sgd import (
    LocalSGD,
    max_stable_outer_lr,
    pseudo_gradient_factor,
    round_spectral_radius,
)

MU = 0.9  # DiLoCo's outer Nesterov momentum


def _net(p, x):
    return jnp.tanh(x @ p["w"]) @ p["v"]


def _loss(p, batch):
    x, y = batch
    return 0.5 * jnp.mean((_net(p, x) - y) ** 2)


@pytest.fixture(scope="module")
def minimum():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(k1, (64, 3))
    params = {"w": jax.random.normal(k2, (3, 4)), "v": jax.random.normal(k3, (4,))}
    data = (x, _net(params, x))  # the teacher's labels: params is an exact minimum
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    dense = jax.hessian(lambda f: _loss(unravel(f), data))(flat)
    eigenvalues, vectors = np.linalg.eigh(np.asarray(dense))
    spectrum = stability.hessian_spectrum(
        _loss, params, data, k=1, tol=1e-10, max_hvps=16, progress=False
    )
    return dict(
        params=params, data=data, unravel=unravel, flat=flat, eigenvalues=eigenvalues,
        top_vector=vectors[:, -1], spectrum=spectrum,
    )  # fmt: skip


SCHEDULES = [
    dict(schedule="diloco"),
    dict(schedule="eager", workers=4),
    dict(schedule="streaming", overlap=1),
]


def _verdict(m, config, outer_lr, **kwargs):
    return stability.is_accessible(
        _loss, m["params"], 0, data=m["data"], local_sgd=config, outer_lr=outer_lr,
        outer_momentum=MU, progress=False, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("steps", [5, 30])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s["schedule"])
def test_verdict_and_simulation_at_the_predicted_boundary(minimum, steps, schedule):
    lam = float(minimum["eigenvalues"][-1])
    config = LocalSGD(inner_lr=0.5 / lam, inner_steps=steps, **schedule)
    boundary = max_stable_outer_lr(config, lam, MU)
    assert 0 < boundary < math.inf
    for factor, stable in ((0.95, True), (1.05, False)):
        outer_lr = factor * boundary
        report = _verdict(minimum, config, outer_lr, spectrum=minimum["spectrum"])
        assert report.verdict is stable, report.reason
        assert report.certified_by is not None
        part = report.local_sgd
        assert part.max_stable_outer_lr == pytest.approx(boundary, rel=1e-6)
        assert part.kappa == pytest.approx(float(pseudo_gradient_factor(config, lam)), rel=1e-6)
        rho = float(round_spectral_radius(config, lam, outer_lr, MU))
        assert part.round_radius == pytest.approx(rho, rel=1e-6)
        assert (rho < 1) is stable
        # the dense oracle: every eigenvalue's round radius
        radii = np.asarray(round_spectral_radius(config, minimum["eigenvalues"], outer_lr, MU))
        assert bool(np.all(radii < 1)) is stable
        # simulation from the minimum pushed along the top eigenvector
        rounds = min(800, math.ceil(math.log(20.0) / abs(math.log(rho))))
        push = minimum["unravel"](minimum["flat"] + 1e-5 * minimum["top_vector"])
        run = stability.simulate_diloco(
            _loss, push, minimum["data"], config, rounds=rounds, outer_lr=outer_lr,
            outer_momentum=MU, reference=minimum["params"],
        )  # fmt: skip
        ratio = float(run.distance[-1] / run.distance[0])
        assert (ratio < 0.5) if stable else (ratio > 2.0), (factor, rounds, rho, ratio)


def test_fresh_estimate_stops_once_decided(minimum):
    lam = float(minimum["eigenvalues"][-1])
    config = LocalSGD(inner_lr=0.5 / lam, inner_steps=5)
    boundary = max_stable_outer_lr(config, lam, MU)
    stable = _verdict(minimum, config, 0.95 * boundary)
    unstable = _verdict(minimum, config, 1.05 * boundary)
    assert stable.verdict is True and unstable.verdict is False
    assert 0 < stable.num_hvps <= 16 and 0 < unstable.num_hvps <= 16
    text = repr(stable)
    assert "local SGD" in text and "round radius" in text
    out = stable.to_dict()
    json.dumps(out, allow_nan=False)
    assert out["local_sgd"]["config"]["outer"] == "nesterov"
    assert out["local_sgd"]["max_stable_outer_lr"] == pytest.approx(boundary)
    assert out["lr"] == pytest.approx(0.95 * boundary)


@pytest.mark.parametrize("reach", [0.5, 1.0, 1.3, 1.6, 1.85, 2.05, 2.5])
@pytest.mark.parametrize("steps", [2, 3])
@pytest.mark.parametrize("q_limit", [0.5, 1.2])
def test_non_monotone_kappa_is_never_certified_wrongly(minimum, reach, steps, q_limit):
    """inner_lr x lambda_max up to 2.5: kappa rises, peaks and falls (even H) or
    rises again (odd H). Certified verdicts must agree with the dense spectrum."""
    eigenvalues = minimum["eigenvalues"]
    lam = float(eigenvalues[-1])
    config = LocalSGD(inner_lr=reach / lam, inner_steps=steps)
    q_max = float(stability.stability_threshold(0, MU, momentum="nesterov").q_max)
    outer_lr = q_max / q_limit
    report = _verdict(minimum, config, outer_lr, spectrum=minimum["spectrum"])
    radii = np.asarray(round_spectral_radius(config, eigenvalues, outer_lr, MU))
    truth = bool(np.all(radii < 1))
    if report.verdict is not None:
        assert report.verdict is truth, report.reason
    else:
        assert report.reason.startswith("undecided")


def test_non_monotone_cases_decided_and_undecided(minimum):
    lam = float(minimum["eigenvalues"][-1])
    q_max = float(stability.stability_threshold(0, MU, momentum="nesterov").q_max)
    # H=2, kappa = q (2 - q), q = inner_lr a; outer_lr kappa < q_max iff kappa < 0.5
    peak = LocalSGD(inner_lr=1.0 / lam, inner_steps=2)  # the top sits at kappa's peak 1
    report = _verdict(minimum, peak, q_max / 0.5, spectrum=minimum["spectrum"])
    assert report.verdict is False and report.certified_by == "ritz_interval"
    # the top beyond the unstable band (kappa(1.85) = 0.2775 < 0.5): the top is stable, an
    # eigenvalue below it could fall in the band; only the top is known -> undecided
    beyond = LocalSGD(inner_lr=1.85 / lam, inner_steps=2)
    report = _verdict(minimum, beyond, q_max / 0.5, spectrum=minimum["spectrum"])
    assert report.verdict is None
    assert "not monotone" in report.reason
    assert report.local_sgd.round_radius < 1  # a verdict from lambda_max alone: "stable"
    # ... wrongly: the second eigenvalue (inner_lr a ~ 1.41) sits in the unstable band
    radii = round_spectral_radius(beyond, minimum["eigenvalues"], q_max / 0.5, MU)
    assert np.max(np.asarray(radii)) > 1


# Inner heavy ball and Nesterov with the buffer reset: kappa is a polynomial of degree H
# in the eigenvalue (its range over an interval from a checked Chebyshev interpolant).
# inner_lr x lambda_max = REACH[H] keeps the top eigenvalue below kappa's first peak
# (at inner_lr a ~ 0.22 for H = 5 and ~ 0.015 for H = 30 with beta 0.9), so the largest
# stable outer lr is set by lambda_max and the verdict flips across it.
REACH = {5: 0.2, 30: 0.01}


@pytest.mark.parametrize("beta", [0.5, 0.9])
@pytest.mark.parametrize("inner", ["heavy_ball", "nesterov"])
def test_momentum_inner_rules_at_the_predicted_boundary(minimum, inner, beta):
    """True at 0.95x and False at 1.05x the largest stable outer lr, H in {5, 30}, every
    schedule, right against every dense eigenvalue's round radius."""
    eigenvalues = minimum["eigenvalues"]
    lam = float(eigenvalues[-1])
    for steps in (5, 30):
        for schedule in SCHEDULES:
            config = LocalSGD(REACH[steps] / lam, steps, inner, beta, **schedule)
            boundary = max_stable_outer_lr(config, lam, MU)
            for factor, stable in ((0.95, True), (1.05, False)):
                outer_lr = factor * boundary
                report = _verdict(minimum, config, outer_lr, spectrum=minimum["spectrum"])
                case = (steps, schedule, factor, report.reason)
                assert report.verdict is stable, case
                radii = np.asarray(round_spectral_radius(config, eigenvalues, outer_lr, MU))
                assert bool(np.all(radii < 1)) is stable, case
                assert report.local_sgd.max_stable_outer_lr == pytest.approx(boundary, rel=1e-6)
                # the first exit from the stable interval lies just above lambda_max (0.95x:
                # kappa(lambda_max) is 95 % of the limit) or below it (1.05x)
                assert (report.max_stable_sharpness > lam) is stable, case


def test_momentum_inner_rule_agrees_with_simulate_diloco(minimum):
    """The certified verdicts of H = 5 DiLoCo rounds of inner heavy ball 0.9 against the
    simulated rounds."""
    lam = float(minimum["eigenvalues"][-1])
    config = LocalSGD(REACH[5] / lam, 5, "heavy_ball", 0.9)
    boundary = max_stable_outer_lr(config, lam, MU)
    push = minimum["unravel"](minimum["flat"] + 1e-5 * minimum["top_vector"])
    for factor, stable in ((0.95, True), (1.05, False)):
        outer_lr = factor * boundary
        report = _verdict(minimum, config, outer_lr, spectrum=minimum["spectrum"])
        assert report.verdict is stable, report.reason
        rho = report.local_sgd.round_radius
        rounds = min(800, math.ceil(math.log(20.0) / abs(math.log(rho))))
        run = stability.simulate_diloco(
            _loss, push, minimum["data"], config, rounds=rounds, outer_lr=outer_lr,
            outer_momentum=MU, reference=minimum["params"],
        )  # fmt: skip
        ratio = float(run.distance[-1] / run.distance[0])
        assert (ratio < 0.5) if stable else (ratio > 2.0), (factor, rounds, rho, ratio)


def test_momentum_inner_rule_with_another_eigenvalue_unstable_is_undecided(minimum):
    """Inner heavy ball 0.9, H = 5, inner_lr x lambda_max = 0.5: past kappa's peak (at
    ~0.33), so at 0.95x the outer lr set by lambda_max the top eigenvalue is stable but
    eigenvalues in the peak are not (the dense spectrum has one there); only the top is
    estimated, so the verdict is undecided, and the fresh estimate says the same."""
    eigenvalues = minimum["eigenvalues"]
    lam = float(eigenvalues[-1])
    config = LocalSGD(0.5 / lam, 5, "heavy_ball", 0.9)
    outer_lr = 0.95 * max_stable_outer_lr(config, lam, MU)
    radii = np.asarray(round_spectral_radius(config, eigenvalues, outer_lr, MU))
    assert radii[-1] < 1 and np.max(radii) > 1
    for spectrum in (minimum["spectrum"], None):
        report = _verdict(minimum, config, outer_lr, spectrum=spectrum, max_hvps=16)
        assert report.verdict is None, report.reason
        assert "not monotone" in report.reason
        assert report.max_stable_sharpness < lam


def test_fresh_estimate_with_a_momentum_inner_rule(minimum):
    lam = float(minimum["eigenvalues"][-1])
    config = LocalSGD(REACH[5] / lam, 5, "nesterov", 0.9, schedule="eager", workers=4)
    boundary = max_stable_outer_lr(config, lam, MU)
    stable = _verdict(minimum, config, 0.95 * boundary)
    unstable = _verdict(minimum, config, 1.05 * boundary)
    assert stable.verdict is True and unstable.verdict is False
    assert 0 < stable.num_hvps <= 16 and 0 < unstable.num_hvps <= 16
    json.dumps(stable.to_dict(), allow_nan=False)


def test_rules_outside_the_certificate_are_undecided(minimum, monkeypatch):
    """A kept inner buffer (the pseudo-gradient is not kappa x), the frozen-preconditioner
    Adam (its kappa is of P^-1/2 H P^-1/2) and H above the interpolant's degree cap
    (lowered to 4 here: the same path as H = 257 at a fraction of the cost)."""
    from stability import local_sgd_verdict

    monkeypatch.setattr(local_sgd_verdict, "MAX_POLYNOMIAL_STEPS", 4)
    cases = [
        (LocalSGD(0.1, 5, "heavy_ball", 0.5, reset=False), "kept across rounds"),
        (LocalSGD(0.1, 5, "preconditioned_adam", 0.9), "P^-1/2 H P^-1/2"),
        (LocalSGD(0.01, 5, "nesterov", 0.5), "H = 5 inner steps is above 4"),
    ]
    for config, why in cases:
        report = _verdict(minimum, config, 0.5, spectrum=minimum["spectrum"])
        assert report.verdict is None
        assert report.reason.startswith("undecided") and why in report.reason, report.reason
        json.dumps(report.to_dict(), allow_nan=False)


def test_bad_inputs_name_the_argument(minimum):
    config = LocalSGD(inner_lr=0.1, inner_steps=5)
    kwargs = dict(data=minimum["data"], spectrum=minimum["spectrum"], progress=False)
    p = minimum["params"]
    for outer_lr in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="outer_lr"):
            stability.is_accessible(_loss, p, 0, local_sgd=config, outer_lr=outer_lr, **kwargs)
    with pytest.raises(ValueError, match="outer_lr"):
        stability.is_accessible(_loss, p, 0, local_sgd=config, **kwargs)
    with pytest.raises(TypeError, match="local_sgd"):
        stability.is_accessible(_loss, p, 0, local_sgd={"inner_lr": 0.1}, outer_lr=0.7, **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        stability.is_accessible(_loss, p, 0, local_sgd=config, outer_lr=0.7, batch_size=8, **kwargs)
    with pytest.raises(ValueError, match="optimizer_state"):
        stability.is_accessible(
            _loss, p, 0, local_sgd=config, outer_lr=0.7, optimizer_state=object(), **kwargs
        )
    with pytest.raises(ValueError, match="tau"):
        stability.is_accessible(_loss, p, 2, local_sgd=config, outer_lr=0.7, **kwargs)
    with pytest.raises(ValueError, match="lr must be None"):
        stability.is_accessible(_loss, p, 0, 0.1, local_sgd=config, outer_lr=0.7, **kwargs)
    with pytest.raises(ValueError, match="outer_momentum"):
        stability.is_accessible(
            _loss, p, 0, local_sgd=config, outer_lr=0.7, outer_momentum=1.5, **kwargs
        )
    with pytest.raises(ValueError, match="outer_lr and outer_momentum need local_sgd"):
        stability.is_accessible(_loss, p, 0, 0.1, outer_lr=0.7, **kwargs)


def test_negative_curvature_is_reported_and_fails_require_minimum(minimum):
    """A saddle (the minimum's loss less 0.05 |w - w*|^2): kappa < 0 along the negative
    eigenvalues, so those directions grow; the verdict folds that in only with
    require_minimum=True, as for the other rules."""
    centre = minimum["params"]

    def saddle(p, batch):
        leaves = zip(jax.tree.leaves(p), jax.tree.leaves(centre), strict=True)
        pull = sum(jnp.sum((a - b) ** 2) for a, b in leaves)
        return _loss(p, batch) - 0.05 * pull

    lam = float(minimum["eigenvalues"][-1])
    config = LocalSGD(inner_lr=0.5 / lam, inner_steps=5)
    outer_lr = 0.5 * max_stable_outer_lr(config, lam - 0.1, MU)
    report = stability.is_accessible(
        saddle, centre, 0, data=minimum["data"], local_sgd=config, outer_lr=outer_lr,
        outer_momentum=MU, require_minimum=True, progress=False,
    )  # fmt: skip
    assert report.is_minimum is False
    assert report.verdict is False and report.certified_by == "ritz_value"
    assert "not a minimum" in report.reason
    assert report.smallest_eigenvalue < 0 and report.smallest_growth > 1


def test_a_maximum_has_a_vacuous_sharp_side_for_every_inner_rule():
    """Hessian -2 I: no eigenvalue in (0, upper], so the sharp side is stable for inner
    GD and heavy ball alike (as for the other rules); require_minimum makes it False."""

    def concave(p, batch):
        return -jnp.sum(p["w"] ** 2) * jnp.mean(batch)

    for config in (LocalSGD(0.1, 3), LocalSGD(0.1, 3, "heavy_ball", 0.9)):
        for require, verdict in ((False, True), (True, False)):
            report = stability.is_accessible(
                concave, {"w": jnp.zeros(3)}, 0, data=jnp.ones(4), local_sgd=config,
                outer_lr=0.5, outer_momentum=MU, require_minimum=require, progress=False,
            )  # fmt: skip
            assert report.verdict is verdict and report.is_minimum is False, report.reason


def test_non_monotone_kappa_of_momentum_rules_is_never_certified_wrongly(minimum):
    """Inner heavy ball and Nesterov 0.9 with inner_lr x lambda_max up to 4 (past the
    inner loop's own stability for heavy ball at H = 3: |kappa| grows like a^H): the
    certified verdicts agree with the dense spectrum, and most are certified."""
    eigenvalues = minimum["eigenvalues"]
    lam = float(eigenvalues[-1])
    q_max = float(stability.stability_threshold(0, MU, momentum="nesterov").q_max)
    decided = 0
    for inner in ("heavy_ball", "nesterov"):
        for steps in (2, 3):
            for reach in (0.1, 1.0, 4.0):
                config = LocalSGD(reach / lam, steps, inner, 0.9)
                for q_limit in (0.5, 1.2):
                    outer_lr = q_max / q_limit
                    report = _verdict(minimum, config, outer_lr, spectrum=minimum["spectrum"])
                    radii = np.asarray(round_spectral_radius(config, eigenvalues, outer_lr, MU))
                    if report.verdict is not None:
                        decided += 1
                        assert report.verdict is bool(np.all(radii < 1)), report.reason
                    else:
                        assert report.reason.startswith("undecided")
    assert decided >= 20, decided  # 22 of 24 when written
