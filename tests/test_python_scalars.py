"""Python scalars in, Python floats out; arrays in, arrays out; jit/vmap/grad unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stability as st

# (function, Python-scalar arguments, keyword arguments)
SCALAR_CALLS = [
    (st.lr_for_delay, (0.3, 16), {}),
    (st.lr_for_delay, (0.3, 7), {"from_tau": 2, "beta": 0.6, "momentum": "shifted"}),
    (st.lr_for_delay, (0.3, st.random_order(4)), {}),
    (st.max_stable_sharpness, (0.1, 8, 0.9), {"momentum": "shifted"}),
    (st.max_stable_sharpness, (1, 0), {}),
    (st.max_stable_sharpness, (1.0, st.round_robin(3)), {}),
    (st.max_stable_lr, (2.0, 8), {}),
    (st.max_stable_lr, (2.0, 3, 0.5), {"momentum": "nesterov"}),
    (st.spectral_radius, (0.7, 0.1, 8, 0.5), {}),  # certified fast path
    (st.spectral_radius, (0.7, 0.1, 1), {"momentum": "nesterov"}),  # eigenvalues
    (st.spectral_radius, (0.7, 0.1, st.random_order(3)), {}),
]


@pytest.mark.parametrize("fn,args,kwargs", SCALAR_CALLS)
def test_python_scalars_give_python_floats(fn, args, kwargs):
    out = fn(*args, **kwargs)
    assert type(out) is float
    # the same value as the array path (the first argument and the float ones as arrays;
    # spectral_radius needs a Python int delay)
    arrays = [jnp.asarray(a) if i == 0 or isinstance(a, float) else a for i, a in enumerate(args)]
    as_array = fn(*arrays, **kwargs)
    assert isinstance(as_array, jax.Array) and as_array.shape == ()
    # (spectral_radius of Python scalars takes a numpy path: equal to rounding)
    assert out == pytest.approx(float(as_array), rel=1e-13)


def test_stability_threshold_fields_are_python_scalars():
    t = st.stability_threshold(4, 0.5, momentum="shifted")
    assert type(t.q_max) is float and type(t.theta) is float and type(t.reliable) is bool
    assert t.reliable
    arr = st.stability_threshold(np.array([4, 8]), 0.5, momentum="shifted")
    assert all(isinstance(x, jax.Array) for x in arr)
    assert float(arr.q_max[0]) == t.q_max


def test_recommend_momentum_fields_are_python_floats():
    rec = st.recommend_momentum(16, 0.1)
    for x in (rec.beta, rec.lr, rec.max_stable_sharpness, rec.max_stable_sharpness_no_momentum):
        assert type(x) is float
    for row in rec.table:
        assert type(row.beta) is float and type(row.lr) is float
        assert type(row.max_stable_sharpness) is float


def test_arrays_and_numpy_scalars_give_arrays():
    lrs = np.array([0.1, 0.2])
    assert isinstance(st.lr_for_delay(lrs, 8), jax.Array)
    assert st.lr_for_delay(lrs, 8).shape == (2,)
    assert isinstance(st.lr_for_delay(0.1, np.array([4, 8])), jax.Array)
    assert isinstance(st.max_stable_sharpness(np.float64(0.1), 8), jax.Array)
    assert isinstance(st.max_stable_sharpness(jnp.asarray(0.1), 8), jax.Array)
    assert isinstance(st.spectral_radius(jnp.asarray(0.7), 0.1, 8), jax.Array)
    assert isinstance(st.max_stable_lr(2.0, 8, np.float32(0.5)), jax.Array)


def test_jit_vmap_grad_still_work():
    want = st.max_stable_sharpness(0.1, 8, 0.5)
    traced = jax.jit(lambda lr: st.max_stable_sharpness(lr, 8, 0.5))(0.1)
    assert isinstance(traced, jax.Array)
    assert float(traced) == pytest.approx(want, rel=1e-14)
    # Python constants inside a traced function: still traced values, no error
    const = jax.jit(lambda: st.lr_for_delay(0.3, 16) + st.spectral_radius(0.7, 0.1, 8))()
    assert float(const) == pytest.approx(st.lr_for_delay(0.3, 16) + st.spectral_radius(0.7, 0.1, 8))
    lrs = jnp.array([0.1, 0.2, 0.3])
    mapped = jax.vmap(lambda lr: st.lr_for_delay(lr, 8))(lrs)
    np.testing.assert_allclose(np.asarray(mapped), [st.lr_for_delay(x, 8) for x in (0.1, 0.2, 0.3)])
    g = jax.grad(lambda lr: st.spectral_radius(0.7, lr, 8, 0.5))(0.1)
    h = 1e-6
    fd = (st.spectral_radius(0.7, 0.1 + h, 8, 0.5) - st.spectral_radius(0.7, 0.1 - h, 8, 0.5)) / (
        2 * h
    )
    assert float(g) == pytest.approx(fd, rel=1e-6)
    g_sharp = jax.grad(lambda lr: st.max_stable_sharpness(lr, 8))(0.1)
    assert float(g_sharp) == pytest.approx(-st.max_stable_sharpness(0.1, 8) / 0.1, rel=1e-12)
