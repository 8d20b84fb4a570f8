"""The verdict on a classifier trained with cross-entropy, against its dense spectrum.

A tanh MLP (610 parameters, float64) trained with plain SGD on 512 bundled
digits ends, like real classifiers, with a few small negative Hessian
eigenvalues. Its dense ``eigh`` spectrum is the oracle: the verdict must follow
the sharp side (``lambda_max`` against the stable limit) with the negative
curvature reported in ``is_minimum``, decide clear cases in few products, and
never be wrong near the limit (undecided instead).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import stability as st


def ce_loss(p, batch):
    x, t = batch
    z = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, t))


@pytest.fixture(scope="module")
def network():
    x, y = st.load_digits(512)
    rng = np.random.default_rng(0)
    p = {
        "w1": jnp.asarray(rng.normal(size=(64, 8)) / 4),
        "b1": jnp.zeros(8),
        "w2": jnp.asarray(rng.normal(size=(8, 10)) / np.sqrt(8)),
        "b2": jnp.zeros(10),
    }
    opt = optax.sgd(0.5)

    @jax.jit
    def train(p):
        def step(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(ce_loss)(p, (x, y)), s)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (p, opt.init(p)), None, length=500)[0][0]

    p = train(p)
    flat, unravel = ravel_pytree(p)
    h = jax.hessian(lambda f: ce_loss(unravel(f), (x, y)))(flat)
    ev = np.linalg.eigvalsh(np.asarray(h))
    # The point of the test: real negative curvature, beyond the flat tolerance.
    assert ev[0] < -1e-4 * ev[-1] < 0
    return p, (x, y), ev


def _lr(sharpness, tau, fraction):
    """The lr at which ``sharpness`` is ``fraction`` of the stable limit."""
    return float(st.max_stable_lr(sharpness / fraction, tau))


@pytest.mark.parametrize("tau", [0, 8])
def test_clear_cases_are_decided_in_at_most_10_products(network, tau):
    p, data, ev = network
    below = st.is_accessible(ce_loss, p, tau, _lr(ev[-1], tau, 0.5), data=data, progress=False)
    above = st.is_accessible(ce_loss, p, tau, _lr(ev[-1], tau, 2.0), data=data, progress=False)
    assert below.verdict is True and below.certified_by == "residual"
    assert above.verdict is False and above.certified_by == "ritz_value"
    assert below.num_hvps <= 10 and above.num_hvps <= 10
    # A Ritz value never exceeds lambda_max; the converged one is within its bar.
    assert below.sharpness <= ev[-1] * (1 + 1e-12)
    assert abs(below.sharpness - ev[-1]) <= below.sharpness_error
    assert above.sharpness <= ev[-1] * (1 + 1e-12)
    assert below.fraction_of_limit == pytest.approx(0.5, rel=1e-3)


def test_negative_curvature_is_beside_the_verdict_unless_required(network):
    p, data, ev = network
    lr = _lr(ev[-1], 4, 0.5)
    strict = st.is_accessible(ce_loss, p, 4, lr, data=data, require_minimum=True, progress=False)
    assert strict.verdict is False and strict.is_minimum is False
    assert "not a minimum" in strict.reason
    assert ev[0] <= strict.smallest_eigenvalue < -1e-5 * ev[-1]  # a Ritz value: an upper bound
    assert strict.smallest_growth > 1  # that direction is left at this lr
    # The same network and lr, judged on the sharp side: stable.
    spectrum = st.hessian_spectrum(
        ce_loss, p, data, tol=1e-10, converge_smallest=True, progress=False
    )
    assert abs(spectrum.smallest - ev[0]) <= spectrum.smallest_error
    stable = st.verdict_from_spectrum(spectrum, 4, lr)
    assert stable.verdict is True and stable.is_minimum is False
    unstable = st.verdict_from_spectrum(spectrum, 4, _lr(ev[-1], 4, 1.5))
    assert unstable.verdict is False and unstable.is_minimum is False
    assert st.verdict_from_spectrum(spectrum, 4, lr, require_minimum=True).verdict is False


@pytest.mark.parametrize("fraction", [1 / (1 + 1e-6), 1 + 1e-6])
def test_near_the_limit_the_verdict_is_right_or_undecided(network, fraction):
    p, data, ev = network
    lr = _lr(ev[-1], 2, fraction)
    truth = fraction < 1
    short = st.is_accessible(ce_loss, p, 2, lr, data=data, max_hvps=8, progress=False)
    assert short.verdict is None and "after 8 Hessian-vector products" in short.reason
    for seed in range(3):
        rep = st.is_accessible(ce_loss, p, 2, lr, data=data, seed=seed, progress=False)
        assert rep.verdict in (truth, None), (seed, rep)
