"""Verdicts on real trained networks agree with simulated asynchronous SGD.

A tanh MLP (linen, and its nnx twin holding the same weights) is trained on
the bundled digits to a true minimum (squared error, L-BFGS, float64).
`is_accessible` estimates the sharpness with Lanczos and gives the max stable
lr; `simulate_async` then starts from the minimum plus 1e-6 along the top
Hessian eigenvector (docs/theory.md section 14: the unstable direction must be
excited) and runs delayed SGD at 0.9x and 1.1x that lr. Below, the iterate
must stay in a small ball; above, the loss must grow by orders of magnitude,
at the per-step rate the spectral radius predicts.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import stability as st
from stability.networks import examples
from stability.networks.models import loss_from_model, mean_squared_error
from stability.simulate import simulate_async, stationary_tilt

EPS = 1e-6
RULES = [("heavy_ball", 0.0), ("heavy_ball", 0.5), ("shifted", 0.5)]  # gd, heavy ball, shifted
TAUS = [1, 4, 16]


@pytest.fixture(scope="module")
def linen_minimum():
    minimum = examples.train_to_minimum(n=256, dtype=jnp.float64)
    assert minimum.converged
    return minimum


@pytest.fixture(scope="module")
def nnx_minimum(linen_minimum):
    """The nnx twin of the linen network, holding the trained weights."""
    model = examples.NnxDigitsMLP(rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    p = linen_minimum.params["params"]
    model.hidden.kernel[...] = p["Dense_0"]["kernel"]
    model.hidden.bias[...] = p["Dense_0"]["bias"]
    model.out.kernel[...] = p["Dense_1"]["kernel"]
    model.out.bias[...] = p["Dense_1"]["bias"]
    loss_fn, params = loss_from_model(model, loss=mean_squared_error)
    # The same function: the nnx loss at its params equals the linen loss.
    np.testing.assert_allclose(
        float(loss_fn(params, linen_minimum.data)), linen_minimum.loss, rtol=1e-9, atol=1e-15
    )
    return model, loss_fn, params


def _report(model, params, data, tau, lr, rule, beta, spectrum=None):
    return st.is_accessible(
        model,
        params,
        tau,
        lr,
        beta=beta,
        momentum=rule,
        data=data,
        loss=mean_squared_error,
        tol=1e-9,
        spectrum=spectrum,
        progress=False,
        return_vectors=True,
    )


def _check_against_simulation(loss_fn, params, data, base, tau, rule, beta):
    """Simulate at 0.9x and 1.1x the max stable lr from the perturbed minimum."""
    spectrum = base.spectrum
    # L-BFGS leaves a residual gradient g* ~ 1e-6, which makes the iterate drift
    # along flat directions and blurs the measured growth. Tilting the loss by
    # -<g*, w - w*> makes w* an exact stationary point with the same Hessian.
    loss_fn = stationary_tilt(loss_fn, params, data)
    top = jax.tree_util.tree_map(lambda v: v[0], spectrum.eigenvectors)
    start = jax.tree_util.tree_map(lambda p, v: p + EPS * v, params, top)
    lr_max = float(st.max_stable_lr(spectrum.sharpness, tau, beta, momentum=rule))
    loss0 = float(loss_fn(params, data))

    above = _report(None, None, None, tau, 1.1 * lr_max, rule, beta, spectrum)
    below = _report(None, None, None, tau, 0.9 * lr_max, rule, beta, spectrum)
    assert above.verdict is False and below.verdict is True
    rho = above.spectral_radius
    assert rho > 1 > below.spectral_radius
    # Steps for the deviation to grow 1e-6 -> 1e-3 at the predicted rate.
    steps = int(math.ceil(1.3 * math.log(1e3) / math.log(rho))) + 50
    # Thin long runs to ~500 records: the full-data loss is evaluated only there.
    record = max(1, steps // 500)
    runs = {}
    for factor in (0.9, 1.1):
        runs[factor] = simulate_async(
            loss_fn,
            start,
            data,
            lr=factor * lr_max,
            tau=tau,
            beta=beta,
            momentum=rule,
            steps=steps,
            record_every=record,
        )
    stay, leave = runs[0.9], runs[1.1]
    # Below: stays in a small ball around the minimum, the loss at its level.
    assert float(jnp.max(stay.distance)) < 20 * EPS
    assert float(jnp.max(stay.loss)) < 1.01 * loss0 + 1e-12
    # Above: the loss grows by orders of magnitude ...
    assert float(leave.loss[-1]) > 1e2 * loss0
    # ... at the predicted per-step rate while the deviation is still linear (< 1e-3).
    dist = np.asarray(leave.distance)
    linear = dist[: int(np.argmax(dist > 1e-3))] if np.any(dist > 1e-3) else dist
    growth = st.growth_rate(linear) ** (1.0 / record)  # per record -> per step
    assert abs(growth - rho) < 0.1 * (rho - 1), (growth, rho)


def _converged(report, loss_fn, params, data):
    """``report`` judged on a converged spectrum with its eigenvector: is_accessible
    stops once decided, the simulations need the top direction to 1e-9."""
    assert report.verdict is True  # a small lr keeps the minimum
    spectrum = st.hessian_spectrum(
        loss_fn, params, data, tol=1e-9, return_vectors=True, progress=False
    )
    assert spectrum.converged[0]
    return _report(None, None, None, 4, 1e-3, "heavy_ball", 0.0, spectrum)


@pytest.fixture(scope="module")
def linen_report(linen_minimum):
    """One is_accessible call on the linen module."""
    m = linen_minimum
    report = _report(m.model, m.params, m.data, 4, 1e-3, "heavy_ball", 0.0)
    return _converged(report, m.loss_fn, m.params, m.data)


@pytest.fixture(scope="module")
def nnx_report(linen_minimum, nnx_minimum):
    """The same through the nnx module (params=None: taken from the module)."""
    model, loss_fn, params = nnx_minimum
    report = _report(model, None, linen_minimum.data, 4, 1e-3, "heavy_ball", 0.0)
    return _converged(report, loss_fn, params, linen_minimum.data)


@pytest.mark.parametrize("rule, beta", RULES, ids=["gd", "heavy_ball", "shifted"])
@pytest.mark.parametrize("tau", TAUS)
def test_linen_verdict_agrees_with_simulation(linen_minimum, linen_report, tau, rule, beta):
    m = linen_minimum
    _check_against_simulation(m.loss_fn, m.params, m.data, linen_report, tau, rule, beta)


@pytest.mark.parametrize("rule, beta", RULES, ids=["gd", "heavy_ball", "shifted"])
@pytest.mark.parametrize("tau", TAUS)
def test_nnx_verdict_agrees_with_simulation(
    linen_minimum, linen_report, nnx_minimum, nnx_report, tau, rule, beta
):
    _, loss_fn, params = nnx_minimum
    assert nnx_report.sharpness == pytest.approx(linen_report.sharpness, rel=1e-6)
    _check_against_simulation(loss_fn, params, linen_minimum.data, nnx_report, tau, rule, beta)


def test_one_spectrum_serves_many_hyperparameters(linen_report):
    first = linen_report
    sweep = [
        _report(None, None, None, tau, lr, "shifted", 0.9, first.spectrum)
        for tau in (0, 2, 8)
        for lr in (1e-3, 1e-1)
    ]
    assert all(r.spectrum is first.spectrum for r in sweep)
    assert all(r.sharpness == first.sharpness for r in sweep)


def test_mismatched_params_are_a_clear_error(linen_minimum):
    m = linen_minimum
    wrong = {"params": {"Dense_0": m.params["params"]["Dense_0"]}}
    with pytest.raises((ValueError, TypeError), match="Dense_1|params"):
        st.is_accessible(m.model, wrong, 2, 0.1, data=m.data, loss=mean_squared_error)


def test_non_scalar_loss_is_a_clear_error(linen_minimum):
    m = linen_minimum

    def per_example(outputs, labels):
        return jnp.sum((outputs - jax.nn.one_hot(labels, 10, dtype=outputs.dtype)) ** 2, -1)

    with pytest.raises((ValueError, TypeError), match="scalar"):
        st.is_accessible(m.model, m.params, 2, 0.1, data=m.data, loss=per_example)


def test_empty_dataset_is_a_clear_error(linen_minimum):
    m = linen_minimum
    with pytest.raises(ValueError, match="data|empty"):
        st.is_accessible(m.model, m.params, 2, 0.1, data=[], loss=mean_squared_error)


def test_lr_must_be_positive(linen_minimum):
    m = linen_minimum
    with pytest.raises(ValueError, match="lr"):
        st.is_accessible(m.model, m.params, 2, -0.1, data=m.data, loss=mean_squared_error)
