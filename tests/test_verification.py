"""The float64 check of float32 spectra (stability.curvature.verification).

Oracles: a loss whose float32 and float64 evaluations sit on different pieces of a
ReLU by construction (so the float64 truth and the float32 piece are known in closed
form), and a ReLU CNN trained in float32 with cross-entropy to saturation, against
its dense float64 Hessian. Everything runs with JAX's default float32
(``jax.enable_x64(False)``), as users run it; the truths are float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compile_speed import xla_optimizations
from flax import linen as nn

import stability as st
from stability.curvature import hvp as _hvp

# Coordinate 0: curvature 1 plus a ReLU kink of curvature 1/2 that is active in float64
# and not in float32: ((w + s) - s) - c with s = 1 (data, so that XLA cannot fold the
# shift away) is 1e-9 - 5e-10 > 0 exactly, but w + 1 rounds to 1 in float32. The
# others: curvatures 0.1 .. 0.9.
# (The constants are made inside the loss, in the dtype of the run: JAX caches a numpy
# constant closed over by a traced function in the dtype of its first trace.)
KINK, OFFSET = 0.5, 5e-10


SHIFT = np.ones(1, np.float32)  # one example: the shift s


def kink_loss(params, shift):
    w = params["w"]
    curvatures = jnp.concatenate([jnp.ones(1, w.dtype), jnp.linspace(0.1, 0.9, 9, dtype=w.dtype)])
    z = jnp.mean((w[0] + shift) - shift) - OFFSET
    return 0.5 * jnp.sum(curvatures * w**2) + 0.5 * KINK * jax.nn.relu(z) ** 2


def _kink_params():
    w = np.zeros(10, np.float32)
    w[0] = 1e-9
    return {"w": jnp.asarray(w)}


def test_kink_is_where_the_precisions_differ():
    """The oracle itself: float32 computes the piece without the kink, float64 with."""
    with jax.enable_x64(False):
        h32 = jax.hessian(kink_loss)(_kink_params(), SHIFT)["w"]["w"]
    h64 = jax.hessian(kink_loss)(
        jax.tree.map(lambda x: x.astype(jnp.float64), _kink_params()), SHIFT.astype(np.float64)
    )
    assert float(h32[0, 0]) == 1.0 and float(h64["w"]["w"][0, 0]) == 1.5


def test_non_smooth_point_widens_the_bar_and_is_reported():
    with jax.enable_x64(False):
        params = _kink_params()
        spec = st.hessian_spectrum(kink_loss, params, SHIFT, tol=1e-6, progress=False)
        raw = st.hessian_spectrum(kink_loss, params, SHIFT, tol=1e-6, progress=False, verify=False)
    assert abs(raw.sharpness - 1.0) < 1e-6  # float32's piece, "converged" on its own
    assert abs(spec.sharpness - 1.5) < 1e-6  # the float64 Rayleigh quotient
    assert abs(spec.product_error - 0.5) < 1e-6  # the spread between the pieces
    assert spec.sharpness - spec.sharpness_error <= 1.0 <= spec.sharpness + spec.sharpness_error
    verdicts = {}
    for limit in (0.4, 1.2, 3.0):  # below both pieces, between them, above both
        lr = float(st.max_stable_lr(limit, 0))
        with jax.enable_x64(False):
            report = st.is_accessible(kink_loss, _kink_params(), 0, lr, data=SHIFT, progress=False)
        verdicts[limit] = report.verdict
        if limit > 1:  # decided on the converged top vector: the whole spread shows
            assert report.product_error == pytest.approx(0.5, abs=1e-6)
            assert "non-smooth point" in report.reason
    assert verdicts == {0.4: False, 1.2: None, 3.0: True}


class _CNN(nn.Module):
    """A ReLU CNN with a max-pool, as the Flax examples write one."""

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(12)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


@pytest.fixture(scope="module")
def saturated_cnn():
    """The CNN trained in float32 with optax's cross-entropy until the softmax
    saturates (training accuracy 1), and its dense float64 Hessian's top eigenvalue."""
    x, y = st.load_digits(256, dtype=np.float32)
    x, y = np.asarray(x).reshape(-1, 8, 8, 1), np.asarray(y)
    model = _CNN()
    # As users train: float32 and JAX's standard dtype promotion (the steps in one scan).
    with jax.enable_x64(False), jax.numpy_dtype_promotion("standard"), xla_optimizations():
        variables = model.init(jax.random.key(0), x[:1])
        tx = optax.adam(1e-2)

        def step(carry, _):
            v, opt = carry

            def loss(v):
                return optax.softmax_cross_entropy_with_integer_labels(model.apply(v, x), y).mean()

            u, opt = tx.update(jax.grad(loss)(v), opt)
            return (optax.apply_updates(v, u), opt), None

        run = jax.jit(lambda c: jax.lax.scan(step, c, None, length=800)[0])
        variables, _ = run((variables, tx.init(variables)))
        accuracy = float(jnp.mean(model.apply(variables, x).argmax(-1) == y))
    loss_fn, p64 = st.loss_from_model(
        model, jax.tree.map(lambda a: a.astype(jnp.float64), variables)
    )
    mask = _hvp.trainable_mask(p64)
    fp = _hvp.flatten_params(p64, mask)
    batch64 = (x.astype(np.float64), y)
    with xla_optimizations():
        dense = jax.jit(jax.hessian(lambda w: loss_fn(fp.unravel(w), batch64)))(fp.flat)
    truth = float(np.linalg.eigvalsh(np.asarray(dense))[-1])
    return model, variables, (x, y), truth, accuracy


def test_saturated_cnn_bars_contain_the_float64_truth_whatever_the_batching(saturated_cnn):
    """One batch and the same examples in 3 batches: float32 runs whose
    converged bars all contain the float64 truth (so they agree with each other)."""
    model, variables, (x, y), truth, accuracy = saturated_cnn
    assert accuracy == 1.0
    splits = {1: [(x, y)], 3: [(x[:100], y[:100]), (x[100:200], y[100:200]), (x[200:], y[200:])]}
    bars = []
    with jax.enable_x64(False):
        loss_fn, params = st.loss_from_model(model, variables, data=(x, y))
        for batches in splits.values():
            spec = st.hessian_spectrum(loss_fn, params, batches, tol=1e-4, progress=False)
            assert spec.converged[0]
            bars.append(
                (spec.sharpness - spec.sharpness_error, spec.sharpness + spec.sharpness_error)
            )
    for low, high in bars:
        assert low <= truth <= high, (bars, truth)


@pytest.mark.parametrize("ratio", [0.5, 0.97, 0.999, 1.001, 1.03, 2.0])
def test_saturated_cnn_verdict_never_certifies_wrong(saturated_cnn, ratio):
    """The default float32 call, true sharpness / limit = ``ratio``: True only below
    the limit, False only above it, None only near it or at a non-smooth point."""
    model, variables, batch, truth, _ = saturated_cnn
    lr = float(st.max_stable_lr(truth / ratio, 4))
    with jax.enable_x64(False):
        report = st.is_accessible(model, variables, 4, lr, data=batch, progress=False)
    if report.verdict is not None:
        assert report.verdict == (ratio < 1), report
    else:
        near = abs(ratio - 1) < 0.01
        assert near or "non-smooth point" in report.reason, report


def _mlp_loss(p, batch):
    x, y = batch
    h = jnp.tanh(x.astype(p["w1"].dtype) @ p["w1"])
    return st.mean_squared_error(h @ p["w2"], y)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_params_against_the_float64_truth(dtype):
    """bfloat16 / float16 parameters (as large models are stored): products in that
    dtype, the recurrence in float32, the bars from the float64 check, against the
    dense float64 Hessian of the same (rounded) parameters. The tracker and the
    verdict accept them too."""
    rng = np.random.default_rng(0)
    x, y = st.load_digits(200, dtype=np.float32)
    batch = (np.asarray(x), np.asarray(y))
    p32 = {"w1": rng.normal(size=(64, 8)) * 0.3, "w2": rng.normal(size=(8, 10)) * 0.3}
    with jax.enable_x64(False):
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), p32)
        spec = st.hessian_spectrum(_mlp_loss, params, batch, tol=1e-3, progress=False,
                                   return_vectors=True)  # fmt: skip
        raw = st.hessian_spectrum(_mlp_loss, params, batch, tol=1e-3, progress=False,
                                  verify=False)  # fmt: skip
        tracker = st.SharpnessTracker(_mlp_loss, batch, lr=0.1, tol=1e-3)
        record = tracker(params)
        report = st.is_accessible(_mlp_loss, params, 0, 0.1, data=batch, progress=False)
    p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    fp = _hvp.flatten_params(p64, _hvp.trainable_mask(p64))
    b64 = (batch[0].astype(np.float64), batch[1])
    dense = jax.hessian(lambda w: _mlp_loss(fp.unravel(w), b64))(fp.flat)
    truth = float(np.linalg.eigvalsh(np.asarray(dense))[-1])
    assert spec.converged[0] and abs(spec.sharpness - truth) <= spec.sharpness_error
    assert spec.sharpness_error < 0.01 * truth  # the check resolves it to a per cent
    assert jax.tree.leaves(spec.eigenvectors)[0].dtype == dtype
    # Unchecked, the bar is that of the half-precision rounding (10 eps x sharpness).
    assert raw.rounding_error == pytest.approx(10 * float(jnp.finfo(dtype).eps) * raw.sharpness)
    assert abs(record.sharpness - truth) <= record.error
    assert report.verdict == (truth < report.max_stable_sharpness)


def test_a_tolerance_below_float32_resolution_is_reached_in_float64():
    """tol=1e-6 on float32 (below the 20 eps it resolves): converged through the float64
    continuation, not left "not converged" (issue 21, item 5); without the check a
    warning says that nothing can be flagged converged."""
    rng = np.random.default_rng(1)
    x, y = st.load_digits(100, dtype=np.float32)
    batch = (np.asarray(x), np.asarray(y))
    p32 = {"w1": rng.normal(size=(64, 8)) * 0.3, "w2": rng.normal(size=(8, 10)) * 0.3}
    with jax.enable_x64(False):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p32)
        spec = st.hessian_spectrum(_mlp_loss, params, batch, tol=1e-6, progress=False)
        with pytest.warns(UserWarning, match="below what float32 products resolve"):
            raw = st.hessian_spectrum(_mlp_loss, params, batch, tol=1e-6, progress=False,
                                      verify=False)  # fmt: skip
    assert spec.converged[0] and spec.sharpness_error <= 1e-6 * spec.sharpness + spec.product_error
    assert not raw.converged[0]


def test_data_that_change_between_passes_are_refused():
    """A callable returning another subset of the same size on every pass (issue 21,
    item 9) is refused; the same examples reshuffled and rebatched are not."""
    x, y = st.load_digits(300)
    x, y = np.asarray(x), np.asarray(y)
    params = {"w1": jnp.asarray(np.random.default_rng(0).normal(size=(64, 8)) * 0.3),
              "w2": jnp.asarray(np.random.default_rng(1).normal(size=(8, 10)) * 0.3)}  # fmt: skip
    calls = {"n": 0}

    def changing():
        calls["n"] += 1
        idx = np.random.default_rng(calls["n"]).choice(300, 200, replace=False)
        return iter([(x[idx[:100]], y[idx[:100]]), (x[idx[100:]], y[idx[100:]])])

    def reshuffled():
        calls["n"] += 1
        idx = np.random.default_rng(calls["n"]).permutation(200)
        cut = 40 + calls["n"] % 50
        return iter([(x[idx[:cut]], y[idx[:cut]]), (x[idx[cut:]], y[idx[cut:]])])

    with pytest.raises(ValueError, match="same examples on every pass"):
        st.hessian_spectrum(_mlp_loss, params, changing, progress=False)
    spec = st.hessian_spectrum(_mlp_loss, params, reshuffled, tol=1e-4, progress=False)
    dense = st.hessian_spectrum(_mlp_loss, params, (x[:200], y[:200]), tol=1e-4, progress=False)
    assert spec.sharpness == pytest.approx(dense.sharpness, rel=1e-9)
