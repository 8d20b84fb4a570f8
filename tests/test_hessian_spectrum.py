"""hessian_spectrum against eigh of the dense jax.hessian (float64 and float32),
for plain pytrees, a CNN, Flax linen variables and nnx.State, on one and on all
devices (8 simulated CPU devices in CI), with one batch, unequal batches and data
factories; bad input. Nothing here depends on the backend or on JAX internals:
compilation is observed through ``jax.log_compiles``."""

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_speed import xla_optimizations
from flax import nnx
from jax.flatten_util import ravel_pytree

from stability.curvature.hessian_spectrum import HessianSpectrum
from stability.curvature.hessian_spectrum import hessian_spectrum as default_hessian_spectrum

# Most tests here check the smallest eigenvalue against dense truth too: they wait
# for it (the default waits for the k largest only; tested below).
hessian_spectrum = functools.partial(default_hessian_spectrum, converge_smallest=True)


def one():
    """The first device (called in the tests: importing this module must not start
    JAX's backend, so that fork-based tools such as mutmut can import it first)."""
    return jax.devices()[:1]


def mlp_loss(p, batch):
    x, y = batch
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return jnp.mean(jnp.sum((h @ p["w2"] + p["b2"] - y) ** 2, axis=1))


def cnn_loss(p, batch):
    x, y = batch  # x: (B, 8, 8, 1) digits-like images, y: (B,) labels
    dn = ("NHWC", "HWIO", "NHWC")
    h = jax.lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME", dimension_numbers=dn)
    h = jnp.tanh(h + p["cb1"])
    h = jax.lax.conv_general_dilated(h, p["c2"], (2, 2), "SAME", dimension_numbers=dn)
    h = jnp.tanh(h + p["cb2"]).reshape(x.shape[0], -1)
    logits = h @ p["w"] + p["b"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _mlp(n=150, dtype=jnp.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, 6)), dtype)
    y = jnp.asarray(rng.normal(size=(n, 3)), dtype)
    p = {
        "w1": jnp.asarray(rng.normal(size=(6, 16)) * 0.6, dtype),
        "b1": jnp.asarray(rng.normal(size=16) * 0.1, dtype),
        "w2": jnp.asarray(rng.normal(size=(16, 3)) * 0.4, dtype),
        "b2": jnp.zeros(3, dtype),
    }
    return p, (x, y)


def _dense_eigs(loss, params, batch):
    """The dense Hessian's eigenvalues (the oracle), one jitted program compiled with
    XLA's optimisations on (hundreds of Hessian columns)."""
    flat, unravel = ravel_pytree(params)
    with xla_optimizations():
        h = jax.jit(jax.hessian(lambda f, b: loss(unravel(f), b)))(flat, batch)
    return np.linalg.eigvalsh(np.asarray(h, np.float64))


def _check(res, ev, k, rtol):
    scale = np.max(np.abs(ev))
    np.testing.assert_allclose(res.eigenvalues, ev[::-1][:k], rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(res.smallest, ev[0], rtol=rtol, atol=rtol * scale)
    assert res.converged.all() and res.smallest_converged
    assert res.num_hvps >= k


@pytest.fixture(scope="module")
def mlp64():
    p, batch = _mlp()
    return p, batch, _dense_eigs(mlp_loss, p, batch)


def test_mlp_float64_top3_smallest(mlp64):
    p, batch, ev = mlp64
    res = hessian_spectrum(mlp_loss, p, batch, k=3, tol=1e-10, max_hvps=200, devices=one())
    _check(res, ev, 3, 1e-6)
    assert isinstance(res, HessianSpectrum) and res.sharpness == res.eigenvalues[0]
    assert res.sharpness_error == res.errors[0] and "HessianSpectrum(top=[" in repr(res)
    # The residual bound holds for every reported value.
    assert np.all(np.abs(res.eigenvalues - ev[::-1][:3]) <= res.errors + 1e-12)


def _compile_messages(caplog):
    """What ``jax.log_compiles`` logged about compiling programs (it also logs each
    trace: the loss is traced abstractly on every call, to check its output shape)."""
    return [m for r in caplog.records if "ompil" in (m := r.getMessage())]


@pytest.mark.parametrize("loop", ["device", "host"])
def test_second_call_reuses_compiled_code_and_is_deterministic(mlp64, loop, caplog):
    p, batch, ev = mlp64
    kw = dict(k=3, tol=1e-10, max_hvps=200, devices=one(), loop=loop)
    p2 = jax.tree_util.tree_map(lambda a: a * 1.01, p)
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        jax.jit(lambda a: a + 1.0)(jnp.ones(3))  # a new program: the log must show it
        assert any("Compiling" in m for m in _compile_messages(caplog))
        r1 = hessian_spectrum(mlp_loss, p, batch, **kw)
        caplog.clear()
        hessian_spectrum(mlp_loss, p2, batch, **kw)  # new values, same shapes
        r2 = hessian_spectrum(mlp_loss, p, batch, **kw)
    assert _compile_messages(caplog) == []  # nothing compiled again
    _check(r1, ev, 3, 1e-6)
    assert np.array_equal(r1.eigenvalues, r2.eigenvalues) and r1.num_hvps == r2.num_hvps


def test_sharded_over_all_devices_equals_one_device(mlp64):
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("one device: nothing to shard over (conftest simulates 8 on CPU)")
    p, (x, y), ev = mlp64
    if x.shape[0] % len(devices) == 0:  # keep a remainder that runs replicated
        x, y = x[:-1], y[:-1]
        ev = _dense_eigs(mlp_loss, p, (x, y))
    assert x.shape[0] % len(devices) != 0
    batch = (x, y)
    r1 = hessian_spectrum(mlp_loss, p, batch, k=3, tol=1e-10, max_hvps=200, devices=one())
    for loop in ("device", "host"):
        r8 = hessian_spectrum(mlp_loss, p, batch, k=3, tol=1e-10, max_hvps=200, loop=loop)
        np.testing.assert_allclose(r8.eigenvalues, r1.eigenvalues, rtol=1e-10)
        np.testing.assert_allclose(r8.smallest, r1.smallest, rtol=1e-8)
        _check(r8, ev, 3, 1e-6)


def test_unequal_batches_equal_one_big_batch(mlp64):
    p, (x, y), ev = mlp64
    cuts = [0, 17, 90, 101, 150]
    batches = [(x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    r_list = hessian_spectrum(
        mlp_loss, p, batches, k=3, tol=1e-10, max_hvps=200, devices=one(), progress=False
    )
    _check(r_list, ev, 3, 1e-6)
    # A factory returning fresh iterators, sharded over 8 devices (17, 73, 11, 49
    # examples: remainders everywhere).
    r_fac = hessian_spectrum(
        mlp_loss, p, lambda: iter(batches), k=1, tol=1e-10, max_hvps=200, progress=False
    )
    np.testing.assert_allclose(r_fac.eigenvalues, r_list.eigenvalues[:1], rtol=1e-9)


def test_eigenvectors(mlp64):
    p, batch, ev = mlp64
    flat, unravel = ravel_pytree(p)
    h = np.asarray(jax.hessian(lambda f: mlp_loss(unravel(f), batch))(flat))
    for reorth in (True, False):
        res = hessian_spectrum(
            mlp_loss, p, batch, k=2, tol=1e-10, max_hvps=200, devices=one(),
            return_vectors=True, reorthogonalize=reorth, loop="device" if reorth else "host",
        )  # fmt: skip
        assert res.eigenvectors["w1"].shape == (2, 6, 16)
        v = np.asarray(ravel_pytree(jax.tree_util.tree_map(lambda a: a[0], res.eigenvectors))[0])
        np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-8)
        assert np.linalg.norm(h @ v - res.eigenvalues[0] * v) <= 1e-6 * abs(ev).max()


def test_host_loop_grown_basis_and_vectors(mlp64, monkeypatch):
    # A basis far smaller than the run: it doubles (16 -> 32 -> ... rows) and the
    # eigenvalues, residual bounds and Ritz vectors still match the dense oracle.
    from stability.curvature import host_loop

    monkeypatch.setattr(host_loop, "BASIS_BYTES", 1)
    p, batch, ev = mlp64
    flat, unravel = ravel_pytree(p)
    h = np.asarray(jax.hessian(lambda f: mlp_loss(unravel(f), batch))(flat))
    res = hessian_spectrum(
        mlp_loss, p, batch, k=2, tol=1e-10, max_hvps=200, devices=one(), loop="host",
        return_vectors=True,
    )  # fmt: skip
    assert res.num_hvps > 32  # grew at least twice
    _check(res, ev, 2, 1e-6)
    np.testing.assert_allclose(res.smallest, ev[0], rtol=1e-6, atol=1e-6 * np.abs(ev).max())
    for i in range(2):
        v = np.asarray(
            ravel_pytree(jax.tree_util.tree_map(lambda a, i=i: a[i], res.eigenvectors))[0]
        )
        np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-8)
        assert np.linalg.norm(h @ v - res.eigenvalues[i] * v) <= 1e-6 * abs(ev).max()


def test_host_loop_breakdown_restarts():
    # Hessian diag(3, 3, -1): a single start vector spans only 2 dimensions, so
    # Lanczos breaks down after 2 products, before it has k = 3 Ritz values, and
    # must restart (orthogonal to the basis) to find the repeated eigenvalue.
    d = jnp.asarray([3.0, 3.0, -1.0])

    def loss(p, b):
        return 0.5 * jnp.sum(d * p["x"] ** 2) * jnp.mean(b)

    kw = dict(k=3, tol=1e-12, devices=one(), loop="host", return_vectors=True)
    res = hessian_spectrum(loss, {"x": jnp.ones(3)}, jnp.ones(4), **kw)
    np.testing.assert_allclose(res.eigenvalues, [3.0, 3.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(res.smallest, -1.0, atol=1e-12)
    vecs = np.asarray(res.eigenvectors["x"])
    np.testing.assert_allclose(np.abs(vecs[2]), [0.0, 0.0, 1.0], atol=1e-10)
    np.testing.assert_allclose(vecs[:2] @ vecs[:2].T, np.eye(2), atol=1e-10)
    # Without a basis the restart is orthogonal to the last vector only (ghosts
    # possible), but the extremes stay right.
    res = hessian_spectrum(
        loss, {"x": jnp.ones(3)}, jnp.ones(4), reorthogonalize=False, **kw
    )  # fmt: skip
    np.testing.assert_allclose([res.eigenvalues[0], res.smallest], [3.0, -1.0], atol=1e-12)


def test_host_loop_compiled_steps_equal_numpy_steps(mlp64, monkeypatch):
    # On CPU the host loop steps in numpy; on GPU/TPU it runs the compiled step
    # (basis on the device). Forcing the compiled path here keeps it tested in CI:
    # the same eigenvalues, product count, vectors and breakdown restarts.
    from stability.curvature import host_loop as mod

    p, batch, ev = mlp64
    d = jnp.asarray([3.0, 3.0, -1.0])

    def diag_loss(q, b):
        return 0.5 * jnp.sum(d * q["x"] ** 2) * jnp.mean(b)

    def runs():
        kw = dict(k=2, tol=1e-10, max_hvps=200, loop="host", return_vectors=True)
        out = [hessian_spectrum(mlp_loss, p, batch, devices=one(), **kw)]
        # Without a basis the 2nd Ritz value is a ghost of the 1st, whose residual
        # stalls near the tolerance: k=1 keeps the product count a property of the
        # algorithm, not of the rounding.
        out.append(hessian_spectrum(mlp_loss, p, batch, reorthogonalize=False, **{**kw, "k": 1}))
        kw.update(k=3, tol=1e-12, devices=one())
        out.append(hessian_spectrum(diag_loss, {"x": jnp.ones(3)}, jnp.ones(4), **kw))
        return out

    numpy_runs = runs()
    monkeypatch.setattr(mod, "step_on_host", lambda mesh: False)
    calls = {"step": 0, "restart": 0}

    def counted(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)

        return wrapper

    monkeypatch.setattr(mod, "_lanczos_step", counted("step", mod._lanczos_step))
    monkeypatch.setattr(mod, "_restart", counted("restart", mod._restart))
    compiled_runs = runs()
    # The compiled step ran once per product (the replay of the run without a basis
    # steps again), the compiled restart at the breakdown of the diagonal problem.
    r = compiled_runs
    assert calls["step"] == r[0].num_hvps + r[1].num_hvps + r[2].num_hvps
    assert calls["restart"] >= 1
    for a, b in zip(numpy_runs, compiled_runs, strict=True):
        assert a.num_hvps == b.num_hvps
        np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-10)
        np.testing.assert_allclose(a.smallest, b.smallest, rtol=1e-8, atol=1e-12)
        leaves = [jax.tree_util.tree_leaves(r.eigenvectors) for r in (a, b)]
        for leaf_a, leaf_b in zip(*leaves, strict=True):
            np.testing.assert_allclose(np.abs(leaf_a), np.abs(leaf_b), atol=1e-7)
    _check(numpy_runs[0], ev, 2, 1e-6)
    np.testing.assert_allclose(numpy_runs[2].eigenvalues, [3.0, 3.0, -1.0], atol=1e-12)


def test_power_method(mlp64):
    p, batch, ev = mlp64
    res = hessian_spectrum(
        mlp_loss, p, batch, k=1, tol=1e-9, max_hvps=4000, method="power", devices=one(),
        converge_smallest=False,
    )  # fmt: skip
    np.testing.assert_allclose(res.sharpness, ev[-1], rtol=1e-6)
    assert res.converged[0] and not res.smallest_converged


def test_float32():
    p, batch = _mlp(dtype=jnp.float32, seed=1)
    p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), p)
    b64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), batch)
    ev = _dense_eigs(mlp_loss, p64, b64)
    res = hessian_spectrum(mlp_loss, p, batch, k=3, tol=1e-5, max_hvps=200, devices=one())
    assert res.eigenvalues.dtype == np.float64  # float64 Rayleigh quotients (verify=None)
    assert 0 < res.product_error < 1e-4 * res.sharpness  # smooth: rounding only
    _check(res, ev, 3, 1e-4)
    raw = hessian_spectrum(mlp_loss, p, batch, k=3, tol=1e-5, max_hvps=200, devices=one(),
                           verify=False)  # fmt: skip
    assert raw.eigenvalues.dtype == np.float32 and raw.product_error == 0
    _check(raw, ev, 3, 1e-4)


def test_cnn_float64():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(64, 8, 8, 1)))
    y = jnp.asarray(rng.integers(0, 10, size=64), jnp.int32)
    p = {
        "c1": jnp.asarray(rng.normal(size=(3, 3, 1, 6)) * 0.4),
        "cb1": jnp.zeros(6),
        "c2": jnp.asarray(rng.normal(size=(3, 3, 6, 4)) * 0.2),
        "cb2": jnp.zeros(4),
        "w": jnp.asarray(rng.normal(size=(64, 10)) * 0.1),
        "b": jnp.zeros(10),
    }
    ev = _dense_eigs(cnn_loss, p, (x, y))
    assert 900 < ev.size < 1000
    res = hessian_spectrum(cnn_loss, p, (x, y), k=3, tol=1e-10, max_hvps=300, devices=one())
    _check(res, ev, 3, 1e-6)


class _LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(12, param_dtype=jnp.float64, dtype=jnp.float64)(x))
        return nn.Dense(2, param_dtype=jnp.float64, dtype=jnp.float64)(h)


def test_flax_linen_variables():
    model = _LinenMLP()
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(40, 5)))
    y = jnp.asarray(rng.normal(size=(40, 2)))
    variables = model.init(jax.random.key(0), x)

    def loss(v, batch):
        return jnp.mean((model.apply(v, batch[0]) - batch[1]) ** 2)

    ev = _dense_eigs(loss, variables, (x, y))
    res = hessian_spectrum(loss, variables, (x, y), k=3, tol=1e-10, max_hvps=100, devices=one())
    _check(res, ev, 3, 1e-6)


class _NnxMLP(nnx.Module):
    def __init__(self, rngs):
        kw = dict(param_dtype=jnp.float64, dtype=jnp.float64, rngs=rngs)
        self.l1 = nnx.Linear(5, 12, **kw)
        self.l2 = nnx.Linear(12, 2, **kw)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x)))


def test_nnx_state():
    graphdef, state = nnx.split(_NnxMLP(nnx.Rngs(0)))
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(40, 5)))
    y = jnp.asarray(rng.normal(size=(40, 2)))

    def loss(s, batch):
        return jnp.mean((nnx.merge(graphdef, s)(batch[0]) - batch[1]) ** 2)

    ev = _dense_eigs(loss, state, (x, y))
    res = hessian_spectrum(
        loss, state, (x, y), k=3, tol=1e-10, max_hvps=100, devices=one(), return_vectors=True
    )
    _check(res, ev, 3, 1e-6)
    assert isinstance(res.eigenvectors, nnx.State)


def test_no_data_loss_of_params_only():
    a = jnp.asarray(np.diag([4.0, 1.0, -2.0]))

    def quad(p):
        return 0.5 * p["x"] @ a @ p["x"]

    res = hessian_spectrum(quad, {"x": jnp.ones(3)}, k=2, tol=1e-12)
    np.testing.assert_allclose(res.eigenvalues, [4.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(res.smallest, -2.0, atol=1e-12)


def test_bad_input(mlp64):
    p, batch, _ = mlp64
    kw = dict(devices=one(), progress=False)
    with pytest.raises(ValueError, match="loss must return a real scalar"):
        hessian_spectrum(lambda q, b: jnp.sum(b[0] @ q["w1"], 0), p, batch, **kw)
    bad = dict(p, w1=p["w1"].at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"params must be finite.*w1"):
        hessian_spectrum(mlp_loss, bad, batch, **kw)
    with pytest.raises(ValueError, match="loss must be finite"):
        hessian_spectrum(lambda q, b: mlp_loss(q, b) + jnp.inf, p, batch, **kw)
    with pytest.raises(ValueError, match="data must not be empty"):
        hessian_spectrum(mlp_loss, p, [], **kw)
    with pytest.raises(ValueError, match="data must not be empty"):
        hessian_spectrum(mlp_loss, p, (batch[0][:0], batch[1][:0]), **kw)
    with pytest.raises(ValueError, match="data must not be empty"):
        hessian_spectrum(mlp_loss, p, lambda: iter([]), **kw)
    with pytest.raises(ValueError, match=r"k must be <= the number of parameters \(163\)"):
        hessian_spectrum(mlp_loss, p, batch, k=164, **kw)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        hessian_spectrum(mlp_loss, p, batch, k=0, **kw)
    with pytest.raises(ValueError, match="one-shot iterator"):
        hessian_spectrum(mlp_loss, p, iter([batch, batch]), **kw)
    with pytest.raises(ValueError, match="method must be one of"):
        hessian_spectrum(mlp_loss, p, batch, method="arnoldi", **kw)
    with pytest.raises(ValueError, match="tol must be > 0"):
        hessian_spectrum(mlp_loss, p, batch, tol=0.0, **kw)
    with pytest.raises(TypeError, match="loss must be callable"):
        hessian_spectrum("mse", p, batch, **kw)
    with pytest.raises(ValueError, match="leading batch axis"):
        hessian_spectrum(mlp_loss, p, (batch[0], batch[1][:3]), **kw)


# ------------------------------------------------------- defaults and error bars


def test_default_waits_for_the_top_only(mlp64):
    p, batch, ev = mlp64
    kw = dict(k=1, tol=1e-8, max_hvps=200, devices=one())
    top = default_hessian_spectrum(mlp_loss, p, batch, **kw)
    both = hessian_spectrum(mlp_loss, p, batch, **kw)
    assert top.converged[0] and both.smallest_converged
    assert top.num_hvps < both.num_hvps
    np.testing.assert_allclose(top.eigenvalues[0], ev[-1], rtol=1e-8)
    # The smallest comes from the same Krylov space, with a bound that holds.
    assert np.min(np.abs(ev - top.smallest)) <= top.smallest_error


def _diagonal(eigs):
    d = jnp.asarray(eigs)

    def loss(p, b):
        return 0.5 * jnp.sum(d * p["x"] ** 2) * jnp.mean(b)

    return loss, {"x": jnp.ones(d.shape[0])}, jnp.ones(2)


SPECTRA = {
    # the flaky Hypothesis example: a cluster at 0 below an isolated 1e-5
    "cluster_at_zero": [0.0] * 14 + [6.0, 1e-5],
    # a trained classifier's shape: outliers, a bulk near 0, a small negative end
    "negative_end": [5.0, 4.0, 1.0] + list(np.linspace(-3e-3, 1e-3, 40)),
    "close_top": [1.0, 1.0 - 1e-7, 0.5] + [0.0] * 20 + [-0.25],
}


@pytest.mark.parametrize("name", sorted(SPECTRA))
def test_every_error_bar_contains_an_eigenvalue(name):
    # A residual bound must hold whether or not the value is flagged converged,
    # at every step: checked on 12 start vectors and several run lengths.
    eigs = np.asarray(SPECTRA[name])
    loss, params, batch = _diagonal(eigs)
    for seed in range(12):
        for max_hvps in (2, 5, 16):
            r = default_hessian_spectrum(
                loss, params, batch, k=2, tol=1e-12, max_hvps=max_hvps, seed=seed,
                converge_smallest=True, devices=one(),
            )  # fmt: skip
            for value, err in [*zip(r.eigenvalues, r.errors, strict=True),
                               (r.smallest, r.smallest_error)]:  # fmt: skip
                assert np.min(np.abs(eigs - value)) <= err, (seed, max_hvps, value, err)


def test_random_start_bounds_hold_and_tighten():
    rng = np.random.default_rng(0)
    eigs = np.concatenate([[4.0, 3.9], rng.uniform(-0.5, 1.0, 300)])
    loss, params, batch = _diagonal(eigs)
    widths = []
    for steps in (10, 20, 40, 80):
        for seed in range(5):
            r = default_hessian_spectrum(
                loss, params, batch, max_hvps=steps, seed=seed, devices=one(),
                stop_when=lambda est: False,  # run exactly max_hvps steps
            )  # fmt: skip
            assert r.lanczos_steps == steps and r.num_params == eigs.size
            upper, lower = r.bounds(1e-6)
            assert lower <= eigs.min() and eigs.max() <= upper
        widths.append(upper - r.eigenvalues[0])
    assert widths[0] == np.inf and np.all(np.diff(widths[1:]) < 0), widths
    # A looser failure probability gives a tighter bound.
    assert r.bounds(1e-2)[0] < r.bounds(1e-6)[0]
    with pytest.raises(ValueError, match="failure_probability"):
        r.bounds(0.0)


def test_stop_when_stops_at_the_first_true():
    eigs = np.linspace(-1.0, 2.0, 50)
    loss, params, batch = _diagonal(eigs)
    seen = []

    def stop(est):
        assert isinstance(est, HessianSpectrum) and est.eigenvectors is None
        seen.append(est.num_hvps)
        return est.num_hvps == 6

    r = default_hessian_spectrum(loss, params, batch, tol=1e-15, stop_when=stop, devices=one())
    assert r.num_hvps == 6 and seen == [1, 2, 3, 4, 5, 6]
    # A loss of params only works too (the loop then runs on the host).
    d = jnp.asarray(eigs)
    r = default_hessian_spectrum(
        lambda p: 0.5 * jnp.sum(d * p["x"] ** 2), params, stop_when=lambda e: e.num_hvps == 3
    )
    assert r.num_hvps == 3
    with pytest.raises(TypeError, match="stop_when"):
        default_hessian_spectrum(loss, params, batch, stop_when=3)
