"""A rule is one object: a rule defined here, in this file only, works everywhere.

``ToyHeavyBall`` is heavy-ball momentum declared again from scratch, with its
polynomial and its step and none of the closed forms the built-in `HeavyBall` has
(boundary locus, sparse form, delay-distribution locus). Every public function must
accept it (by object and, once defined, by name) and agree with the built-in rule:
the generic paths (dense boundary locus, companion eigenvalues) against the closed
forms. That is what adding a rule (an Adam rule, say) in its own file relies on.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stability as st
from stability.theory.rules import Rule, as_rule, characteristic_polynomial


class ToyHeavyBall(Rule):
    """Heavy ball, known only by its polynomial and its step."""

    name = "toy_heavy_ball"

    def polynomial(self, d, beta, xp=jnp):
        # A = z^K (z - 1)(z - beta), B = z D
        k = d.shape[-1] - 1
        head = xp.stack([xp.ones_like(beta), -(1.0 + beta), beta], axis=-1)
        a = xp.concatenate([head, xp.zeros(beta.shape + (k,), d.dtype)], axis=-1)
        return a, xp.concatenate([d, xp.zeros(1, d.dtype)])

    def update(self, w, v, g, lr, beta):
        v = jax.tree_util.tree_map(lambda vi, gi: beta.astype(vi.dtype) * vi + gi, v, g)
        w = jax.tree_util.tree_map(lambda wi, vi: wi - lr.astype(wi.dtype) * vi, w, v)
        return w, v


TOY = ToyHeavyBall()
RTOL = 1e-9


def test_the_toy_rule_is_an_object_with_no_closed_forms():
    assert as_rule("toy_heavy_ball") == TOY and hash(as_rule("toy_heavy_ball")) == hash(TOY)
    assert as_rule(TOY) is TOY and str(TOY) == "toy_heavy_ball"
    for method in ("crossing", "sparse_form", "locus_g", "distribution_parts"):
        assert not TOY.provides(method) and as_rule("heavy_ball").provides(method)
    with pytest.raises(ValueError, match="momentum must be one of"):
        as_rule("no_such_rule")


@pytest.mark.parametrize("tau", [0, 2, st.random_order(3)])
def test_polynomial(tau):
    for beta in (0.0, 0.7):
        got = characteristic_polynomial(tau, beta, momentum=TOY)
        want = characteristic_polynomial(tau, beta, momentum="heavy_ball")
        np.testing.assert_array_equal(got.a, want.a)
        np.testing.assert_array_equal(got.b, want.b)


@pytest.mark.parametrize("tau", [0, 1, 3, 12])
def test_thresholds(tau):
    betas = np.array([0.0, 0.5, 0.9])
    got = st.stability_threshold(tau, betas, momentum=TOY)
    want = st.stability_threshold(tau, betas, momentum="heavy_ball")
    assert np.all(got.reliable)
    np.testing.assert_allclose(got.q_max, want.q_max, rtol=RTOL)
    for beta in (0.0, 0.9):  # Python scalars in, Python floats out, by name too
        q = st.stability_threshold(tau, beta, momentum="toy_heavy_ball").q_max
        assert isinstance(q, float)
        assert q == pytest.approx(st.stability_threshold(tau, beta).q_max, rel=RTOL)
    lr, sharpness = 0.1, 3.0
    assert st.max_stable_sharpness(lr, tau, 0.5, momentum=TOY) == pytest.approx(
        st.max_stable_sharpness(lr, tau, 0.5), rel=RTOL
    )
    assert st.max_stable_lr(sharpness, tau, 0.5, momentum=TOY) == pytest.approx(
        st.max_stable_lr(sharpness, tau, 0.5), rel=RTOL
    )


def test_thresholds_of_a_delay_array_and_a_distribution():
    taus = np.array([1, 4, 4, 9])
    got = st.stability_threshold(taus, 0.6, momentum=TOY)
    want = st.stability_threshold(taus, 0.6, momentum="heavy_ball")
    np.testing.assert_allclose(got.q_max, want.q_max, rtol=RTOL)
    dist = st.random_order(4)
    got = st.stability_threshold(dist, 0.5, momentum=TOY)
    assert got.reliable
    assert got.q_max == pytest.approx(st.stability_threshold(dist, 0.5).q_max, rel=RTOL)


@pytest.mark.parametrize("tau", [0, 1, 5, 300, st.random_order(3)])
def test_spectral_radius_and_companion(tau):
    sharpness, lr = np.array([0.5, 2.0, 4.0]), 0.1
    got = st.spectral_radius(sharpness, lr, tau, 0.8, momentum=TOY)
    want = st.spectral_radius(sharpness, lr, tau, 0.8, momentum="heavy_ball")
    np.testing.assert_allclose(got, want, rtol=RTOL)
    assert st.spectral_radius(2.0, lr, tau, 0.8, momentum=TOY) == pytest.approx(
        float(want[1]), rel=RTOL
    )
    np.testing.assert_array_equal(
        st.companion_matrix(sharpness, lr, tau, 0.8, momentum=TOY),
        st.companion_matrix(sharpness, lr, tau, 0.8, momentum="heavy_ball"),
    )


def test_tuning_and_mean_square():
    assert st.lr_for_delay(0.1, 4, beta=0.5, momentum=TOY) == pytest.approx(
        st.lr_for_delay(0.1, 4, beta=0.5), rel=RTOL
    )
    rec = st.recommend_momentum(3, 0.05, momenta=(TOY,), betas=(0.0, 0.5))
    ref = st.recommend_momentum(3, 0.05, momenta=("heavy_ball",), betas=(0.0, 0.5))
    assert rec.momentum == "toy_heavy_ball" and rec.beta == ref.beta
    assert rec.max_stable_sharpness == pytest.approx(ref.max_stable_sharpness, rel=RTOL)
    for fn, args in (
        (st.noise_gain, (0.1, 3, 0.5)),
        (lambda *a, **k: st.mean_square_threshold(*a, **k).q_max, (0.2, 3, 0.5)),
        (st.second_moment_growth, (0.1, 0.001, 3, 0.5)),
    ):
        assert fn(*args, momentum=TOY) == pytest.approx(fn(*args), rel=RTOL)
    got = st.max_stable_lr(
        2.0, 3, 0.5, momentum=TOY, nonuniformity=1.0, batch_size=4, num_examples=32
    )
    want = st.max_stable_lr(2.0, 3, 0.5, nonuniformity=1.0, batch_size=4, num_examples=32)
    assert got == pytest.approx(want, rel=RTOL)


def _quadratic():
    h = jnp.diag(jnp.array([3.0, 1.0, 0.2]))

    def loss(w, batch=None):
        return 0.5 * w @ h @ w

    return loss, jnp.array([1.0, -0.5, 2.0])


@pytest.mark.parametrize("options", [dict(tau=3), dict(num_workers=3, schedule="random")])
def test_simulate_and_train(options):
    loss, w0 = _quadratic()
    kw = dict(lr=0.2, beta=0.6, steps=40, **options)
    got = st.simulate_async(loss, w0, momentum=TOY, **kw)
    want = st.simulate_async(loss, w0, momentum="heavy_ball", **kw)
    np.testing.assert_allclose(got.loss, want.loss, rtol=RTOL, atol=1e-300)
    np.testing.assert_array_equal(got.delays, want.delays)
    data = jnp.ones((8, 1))

    def batch_loss(w, batch):
        return loss(w) * jnp.mean(batch)

    kw = dict(lr=0.2, beta=0.6, batch_size=4, epochs=3, **options)
    got = st.train_async(batch_loss, w0, data, momentum=TOY, **kw)
    want = st.train_async(batch_loss, w0, data, momentum="heavy_ball", **kw)
    np.testing.assert_allclose(got.train_loss, want.train_loss, rtol=RTOL)
