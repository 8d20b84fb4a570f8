"""The saturation-safe softmax cross-entropy (stability.networks.cross_entropy).

Oracles: optax's formulas in float64 on unsaturated logits (the same function, so
values, gradients and Hessians agree to rounding), and float64 against float32 on
saturated logits (every softmax maximum rounds to 1 in float32), where optax's
float32 products lose the curvature and these must not.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stability as st
from stability.networks import cross_entropy as ce
from stability.networks.models import cross_entropy


def _logits(n=64, c=10, margin=0.0, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 2.0
    y = rng.integers(0, c, n)
    z[np.arange(n), y] += margin
    return z, y, rng.normal(size=(n, c))


@partial(jax.jit, static_argnums=0)
def _mean_hvp(fn, z, y, v):
    """Value, gradient and Hessian-vector product of the batch mean w.r.t. the logits,
    forward-over-reverse as the library's products take them (one compiled program)."""

    def f(q):
        return fn(q, y).mean()

    g = jax.grad(f)
    return f(z), g(z), jax.jvp(g, (z,), (v,))[1]


@pytest.mark.parametrize("labels", ["integer", "distribution"])
def test_equals_optax_in_float64(labels):
    z, y, v = _logits(margin=1.0)
    z, v = jnp.asarray(z), jnp.asarray(v)
    if labels == "integer":
        ours, ref, target = (ce.softmax_cross_entropy_with_integer_labels,
                             optax.softmax_cross_entropy_with_integer_labels, y)  # fmt: skip
    else:
        smooth = 0.9 * np.eye(10)[y] + 0.01  # label smoothing: rows sum to 1
        ours, ref, target = ce.softmax_cross_entropy, optax.softmax_cross_entropy, smooth
    for a, b in zip(_mean_hvp(ours, z, target, v), _mean_hvp(ref, z, target, v), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-15)
    dense = jax.jit(jax.hessian(lambda q: ours(q, target[:4]).mean()))(z[:4])
    dense_ref = jax.jit(jax.hessian(lambda q: ref(q, target[:4]).mean()))(z[:4])
    np.testing.assert_allclose(dense, dense_ref, rtol=1e-12, atol=1e-15)


def test_float32_products_keep_saturated_curvature():
    """Every example saturated (float32 softmax maxima are exactly 1.0): the float32
    value, gradient and product of this loss agree with float64 to ~1e-6 relative;
    optax's lose percents (checked, so the test shows a real difference)."""
    z, y, v = _logits(n=256, margin=30.0)
    with jax.enable_x64(False):
        p32 = jax.nn.softmax(jnp.asarray(z, jnp.float32))
        assert int(jnp.sum(jnp.max(p32, axis=-1) == 1.0)) > 200

    def errors(fn):
        with jax.enable_x64(False):
            low = _mean_hvp(fn, jnp.asarray(z, jnp.float32), y, jnp.asarray(v, jnp.float32))
            low = [np.asarray(x, np.float64) for x in low]
        high = [np.asarray(x) for x in _mean_hvp(fn, jnp.asarray(z), y, jnp.asarray(v))]
        return [np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(low, high, strict=True)]

    ours = errors(ce.softmax_cross_entropy_with_integer_labels)
    theirs = errors(optax.softmax_cross_entropy_with_integer_labels)
    assert max(ours) < 2e-6, ours
    assert max(theirs) > 1e-3, theirs  # the cancellation this module removes


def test_model_loss_uses_it_and_optax_functions_are_mapped():
    """The default loss of modules and optax's functions passed as ``loss=`` both give
    the saturation-safe batch mean; other losses pass through unchanged."""
    z, y, _ = _logits(margin=30.0)
    z = jnp.asarray(z)
    mapped = ce.saturation_safe(optax.softmax_cross_entropy_with_integer_labels)
    assert mapped is not optax.softmax_cross_entropy_with_integer_labels
    assert jnp.shape(mapped(z, y)) == ()
    np.testing.assert_allclose(mapped(z, y), cross_entropy(z, y), rtol=1e-14)
    onehot = np.eye(10)[y]
    np.testing.assert_allclose(
        ce.saturation_safe(optax.softmax_cross_entropy)(z, onehot), cross_entropy(z, y),
        rtol=1e-14,
    )  # fmt: skip
    assert ce.saturation_safe(st.mean_squared_error) is st.mean_squared_error
