"""hessian_spectrum's error floor, convergence flags, gap-free bounds, report, input
checks and stopping rule, on quadratic losses whose Hessian is known exactly.

The floor on every error is the rounding error of the products, ``10 eps max |theta|``
(module docstring); a value is converged when its floored error is ``<= tol x max
|theta|``; ``HessianSpectrum.bounds`` is Kuczynski and Wozniakowski's formula
(evaluated here) widened by the floor. These tests kill the mutants of
hessian_spectrum.py that survived test_hessian_spectrum.py (tests/MUTATION.md).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stability.curvature.hessian_spectrum import HessianSpectrum, hessian_spectrum


def one():
    return jax.devices()[:1]  # not at import: the backend starts in the tests


EPS = float(np.finfo(np.float64).eps)


def diag_loss(d):
    d = np.asarray(d)  # numpy: nothing here may start JAX's backend at import

    def loss(p, batch):
        return 0.5 * jnp.sum(d * p["x"] ** 2) * jnp.mean(batch)

    return loss


# One loss object per spectrum: compiled products are reused across tests.
POS = diag_loss([4.0, 1.0, -2.0])  # largest magnitude at the top
NEG = diag_loss([1.0, 0.5, -6.0])  # largest magnitude at the bottom
X3 = {"x": np.ones(3)}
B = np.ones(2)


def run(loss=POS, params=X3, data=B, **kw):
    kw = dict(k=1, tol=1e-12, devices=one(), progress=False) | kw
    return hessian_spectrum(loss, params, data, **kw)


@pytest.mark.parametrize("loss, scale", [(POS, 4.0), (NEG, 6.0)])
@pytest.mark.parametrize("loop", ["device", "host"])
def test_errors_are_floored_at_the_rounding_error(loss, scale, loop):
    # Three steps exhaust the Krylov space: the residual underflows, the floor stays.
    r = run(loss, k=2, loop=loop, converge_smallest=True)
    assert r.num_hvps == 3
    floor = 10 * EPS * max(abs(r.eigenvalues).max(), abs(r.smallest))
    assert max(abs(r.eigenvalues).max(), abs(r.smallest)) == pytest.approx(scale, rel=1e-14)
    assert r.rounding_error == floor
    assert np.all(r.errors == floor) and r.smallest_error == floor
    assert r.converged.all() and r.smallest_converged


def test_converged_means_floored_error_within_tol():
    # tol = 10 eps: the floored error equals tol x max |theta|, converged (<=); one ulp
    # below, nothing is, whatever the raw residual says.
    r = run(k=2, tol=10 * EPS, converge_smallest=True)
    assert r.converged.all() and r.smallest_converged
    r = run(k=2, tol=np.nextafter(10 * EPS, 0.0), converge_smallest=True, max_hvps=3)
    assert not r.converged.any() and not r.smallest_converged
    assert r.num_hvps == 3 and np.all(r.errors == r.rounding_error)


def test_float32_floor_uses_float32_eps():
    loss = diag_loss(np.array([4.0, 1.0, -2.0], np.float32))
    x32 = {"x": jnp.ones(3, jnp.float32)}
    # The working-precision run itself (verify=False: no float64 check after it).
    r = run(loss, x32, jnp.ones(2, jnp.float32), k=2, tol=1e-5, converge_smallest=True,
            verify=False)  # fmt: skip
    assert r.eigenvalues.dtype == np.float32
    eps32 = float(np.finfo(np.float32).eps)
    assert r.rounding_error == pytest.approx(10 * eps32 * 4.0, rel=1e-6)


def test_power_iteration_floors_small_spectra_at_their_own_scale():
    # Without the smallest eigenvalue the scale of the floor and of tol is the top
    # alone, also below 1 (not 1): eigenvalues 0.04, 0.01, -0.02.
    r = run(diag_loss([0.04, 0.01, -0.02]), method="power", tol=1e-10, max_hvps=400)
    assert math.isnan(r.smallest) and r.eigenvalues[0] == pytest.approx(0.04, rel=1e-9)
    assert r.rounding_error == 10 * EPS * abs(r.eigenvalues[0])
    assert r.errors[0] >= r.rounding_error


def test_a_custom_pytree_batch_is_one_batch():
    # A registered dataclass (not iterable) holding the batch's arrays is one batch,
    # the same as the tuple of its arrays.
    from dataclasses import dataclass

    @jax.tree_util.register_dataclass
    @dataclass
    class Batch:
        x: jax.Array
        y: jax.Array

    def loss(p, b):
        x, y = (b.x, b.y) if isinstance(b, Batch) else b
        return 0.5 * jnp.mean((x @ p["w"] - y) ** 2)

    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)))
    y = jnp.ones(8)
    p = {"w": jnp.zeros(3)}
    a = hessian_spectrum(loss, p, Batch(x, y), k=1, tol=1e-10, devices=one())
    b = hessian_spectrum(loss, p, (x, y), k=1, tol=1e-10, devices=one())
    assert a.num_hvps == b.num_hvps
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(a.eigenvalues[0], np.linalg.eigvalsh(x.T @ x / 8)[-1], rtol=1e-9)


def test_power_iteration_without_the_smallest_reports_nan():
    r = run(method="power", tol=1e-10, max_hvps=400)
    assert math.isnan(r.smallest) and r.smallest_error == math.inf
    assert not r.smallest_converged and r.converged[0]
    assert r.eigenvalues[0] == pytest.approx(4.0, rel=1e-9)
    assert r.rounding_error == 10 * EPS * abs(r.eigenvalues[0])
    assert r.lanczos_steps == 0 and r.bounds() == (math.inf, -math.inf)


@pytest.mark.parametrize("loop", ["device", "host"])
def test_krylov_steps_behind_the_bounds(loop):
    eigs = np.linspace(-1.0, 2.0, 12)
    loss = diag_loss(eigs)
    kw = dict(params={"x": jnp.ones(12)}, loop=loop, tol=1e-12)
    r = run(loss, **kw)
    assert r.lanczos_steps == r.num_hvps and r.num_params == 12 and r.random_start
    # Without a basis the eigenvectors cost a replay: 2 m - 1 products for m steps.
    r = run(loss, reorthogonalize=False, return_vectors=True, **kw)
    assert r.num_hvps == 2 * r.lanczos_steps - 1 and r.lanczos_steps > 1
    # The replayed Ritz vector is the top eigenvector, e_12 (eigenvalues ascending).
    np.testing.assert_allclose(np.abs(np.asarray(r.eigenvectors["x"][0])), np.eye(12)[-1],
                               atol=1e-6)  # fmt: skip
    upper, lower = r.bounds(1e-6)
    assert lower <= eigs.min() and eigs.max() <= upper


def ks_bounds(top, low, n, steps, p, rounding):
    eps = (math.log(1.648 * math.sqrt(n) / (p / 2)) / (2 * steps - 1)) ** 2
    if eps >= 0.5:
        return math.inf, -math.inf
    slack = eps * (top - low) / (1 - 2 * eps)
    return top + slack + rounding, low - slack - rounding


def spectrum(**kw):
    base = dict(
        eigenvalues=np.array([2.5, 1.0]), errors=np.array([1e-3, 0.2]),
        converged=np.array([True, False]), smallest=-0.5, smallest_error=1e-2,
        smallest_converged=False, num_hvps=9, num_params=400, lanczos_steps=50,
        rounding_error=1e-4,
    )  # fmt: skip
    return HessianSpectrum(**(base | kw))


@pytest.mark.parametrize("p", [1e-6, 0.5, 1e-300])
def test_bounds_formula(p):
    s = spectrum()
    assert s.bounds(p) == pytest.approx(ks_bounds(2.5, -0.5, 400, 50, p, 1e-4), rel=1e-12)
    assert s.bounds() == s.bounds(1e-6)


def test_bounds_refused_or_absent():
    for p in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="failure_probability must be in"):
            spectrum().bounds(p)
    assert spectrum(random_start=False).bounds(0.5) == (math.inf, -math.inf)
    assert spectrum(lanczos_steps=5).bounds() == (math.inf, -math.inf)


def test_warm_start_claims_no_bound():
    loss = diag_loss(np.linspace(-1.0, 2.0, 12))
    kw = dict(params={"x": jnp.ones(12)}, return_vectors=True, tol=1e-10)
    cold = run(loss, **kw)
    warm = run(loss, start=cold, **kw)
    assert cold.random_start and not warm.random_start
    assert warm.bounds() == (math.inf, -math.inf)


def test_report_text():
    s = spectrum()
    assert repr(s) == (
        "HessianSpectrum(top=[2.5 ± 0.001, 1 ± 0.2 (not converged)], "
        "smallest=-0.5 ± 0.01 (not converged), num_hvps=9)"
    )
    s = spectrum(converged=np.array([True, True]), smallest_converged=True, eigenvectors={})
    assert repr(s) == (
        "HessianSpectrum(top=[2.5 ± 0.001, 1 ± 0.2], smallest=-0.5 ± 0.01, num_hvps=9, "
        "with eigenvectors)"
    )
    assert s.sharpness == 2.5 and s.sharpness_error == 1e-3


# ------------------------------------------------------------------ input checks


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(seed=True), TypeError, "seed must be an integer"),
        (dict(seed=1.5), TypeError, "seed must be an integer"),
        (dict(loop="gpu"), ValueError, "loop must be 'auto', 'device' or 'host'"),
        (dict(max_hvps=0), ValueError, "max_hvps must be an integer >= 1"),
        (dict(k=3, max_hvps=2), ValueError, r"max_hvps must be >= k=3 for Lanczos; got 2"),
        (dict(method="power", k=2, converge_smallest=True, max_hvps=2), ValueError,
         r"max_hvps must be >= 3 for power iteration; got 2"),
        (dict(method="power", k=2, max_hvps=1), ValueError,
         r"max_hvps must be >= 2 for power iteration; got 1"),
        (dict(tol=-1.0), ValueError, "tol must be > 0"),
        (dict(k=4), ValueError, r"k must be <= the number of parameters \(3\); got k=4"),
        (dict(stop_when="never"), TypeError, "stop_when must be callable or None; got str"),
    ],
)  # fmt: skip
def test_bad_options(kw, error, match):
    with pytest.raises(error, match=match):
        run(**kw)


def test_boundary_options_are_accepted():
    assert run(seed=np.int64(3)).num_hvps >= 1
    # Power iteration with exactly k + 1 products: one iteration.
    r = run(method="power", k=2, converge_smallest=True, max_hvps=3)
    assert r.num_hvps == 3
    # Lanczos with max_hvps == k; a max_hvps beyond n is capped at n.
    assert run(k=3, max_hvps=3).num_hvps == 3
    assert run(k=1, max_hvps=50, tol=1e-300).num_hvps == 3


def test_bad_params():
    with pytest.raises(TypeError, match="params must have real floating leaves"):
        run(params={"x": jnp.ones(3, jnp.complex128)})
    with pytest.raises(
        ValueError, match=r"^params must contain at least one floating-point leaf; got none$"
    ):
        run(params={"x": jnp.ones(3, jnp.int32)})
    bad = {f"w{i}": jnp.full(1, jnp.nan) for i in range(7)} | {"x": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"params must be finite; got NaN or inf in leaves") as e:
        run(params=bad)
    assert "['w0']" in str(e.value) and "['w4']" in str(e.value) and "w5" not in str(e.value)
    # An integer leaf beside floating ones is not differentiated (and not checked).
    r = run(
        loss=lambda p, b: POS(p, b) + 0.0 * p["n"].astype(jnp.float64).sum(),
        params=X3 | {"n": jnp.arange(4)},
    )
    assert r.num_params == 3


def test_bad_losses():
    with pytest.raises(ValueError, match=r"loss must return a real scalar.*got float64\(2,\)"):
        run(loss=lambda p, b: p["x"][:2] * jnp.mean(b))
    with pytest.raises(ValueError, match=r"loss must return a real scalar.*got int\d+\(\)"):
        run(loss=lambda p, b: jnp.sum(b.astype(jnp.int32)))
    with pytest.raises(TypeError, match=r"loss could not be called as loss\(params, batch\)"):
        run(loss=lambda p: jnp.sum(p["x"]))
    with pytest.raises(TypeError, match=r"loss could not be called as loss\(params\)"):
        hessian_spectrum(lambda p, b: jnp.sum(p["x"]), X3)
    for bad in (jnp.inf, jnp.nan):
        with pytest.raises(ValueError, match=f"loss must be finite at params; got {bad}"):
            run(loss=lambda p, b, bad=bad: POS(p, b) + bad)
        with pytest.raises(ValueError, match="loss must be finite at params"):
            run(loss=lambda p, b, bad=bad: POS(p, b) + bad, data=[B, B])
    with pytest.raises(TypeError, match="loss must be callable; got str"):
        hessian_spectrum("mse", X3, B)


class _Loader:
    """A re-iterable loader (iter() gives a fresh pass each time)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


@jax.tree_util.register_pytree_node_class
class _Batch:
    """A custom pytree batch (not iterable)."""

    def __init__(self, x):
        self.x = x

    def tree_flatten(self):
        return (self.x,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def test_every_form_of_data_gives_the_same_spectrum():
    ref = run(k=2, converge_smallest=True)
    np.testing.assert_allclose(ref.eigenvalues, [4.0, 1.0], rtol=1e-12)

    def loss_dict(p, batch):
        return POS(p, batch["b"])

    def loss_pytree(p, batch):
        return POS(p, batch.x)

    def loss_tuple(p, batch):
        return POS(p, batch[0])

    forms = [
        (POS, [B]),  # a list of one batch
        (POS, [B, jnp.ones(5)]),  # several batches
        (POS, lambda: iter([B, B])),  # a factory of iterators
        (POS, _Loader([B, jnp.ones(3)])),  # a re-iterable loader
        (POS, np.ones(2)),  # a numpy batch
        (loss_dict, {"b": B}),
        (loss_pytree, _Batch(B)),
        (loss_tuple, (B,)),
    ]
    for loss, data in forms:
        r = run(loss, data=data, k=2, converge_smallest=True)
        np.testing.assert_allclose(r.eigenvalues, ref.eigenvalues, rtol=1e-12)
        np.testing.assert_allclose(r.smallest, -2.0, rtol=1e-12)


def test_data_that_cannot_work():
    with pytest.raises(ValueError, match="one-shot iterator.*got generator"):
        run(data=(b for b in [B, B]))
    with pytest.raises(TypeError, match="data must be None, a batch.*got int"):
        run(data=3)
    with pytest.raises(TypeError, match="data must be None, a batch.*got object"):
        run(data=object())
    with pytest.raises(ValueError, match="data must not be empty; got an empty list"):
        run(data=[])
    with pytest.raises(ValueError, match="same examples on every pass; got 5 examples after 2"):
        passes = iter([[B], [B, jnp.ones(3)]])
        run(data=lambda: iter(next(passes)), max_hvps=3)


# --------------------------------------------------------------------- stop_when


def test_stop_when_in_every_loop():
    eigs = np.linspace(-1.0, 2.0, 12)
    loss = diag_loss(eigs)
    x12 = {"x": jnp.ones(12)}
    seen = []

    def stop(est):
        seen.append((est.num_hvps, est.lanczos_steps, est.eigenvectors is None))
        return np.bool_(est.num_hvps >= 4)  # any truthy value

    # loop="device" is overridden: the rule runs in Python, on the host loop.
    r = run(loss, x12, loop="device", tol=1e-15, stop_when=stop)
    assert r.num_hvps == 4 and seen == [(i, i, True) for i in range(1, 5)]
    seen.clear()
    r = run(loss, x12, data=[B, B], tol=1e-15, stop_when=stop)
    assert r.num_hvps == 4 and seen == [(i, i, True) for i in range(1, 5)]
    seen.clear()
    # Power iteration: k + 1 products per iteration, no Krylov steps.
    r = run(loss, x12, method="power", converge_smallest=True, tol=1e-15, stop_when=stop)
    assert r.num_hvps == 4 and seen == [(2, 0, True), (4, 0, True)]
    # The stopping rule sees the same floored errors and flags as the result.
    last = []
    run(loss, x12, tol=1e-3, stop_when=lambda e: last.append(e) or e.converged[0])
    assert last[-1].converged[0] and last[-1].errors[0] >= last[-1].rounding_error
    assert all(not e.converged[0] for e in last[:-1])
    # Never true: the run goes to max_hvps, converged or not.
    r = run(loss, x12, tol=1e-3, max_hvps=9, stop_when=lambda e: False)
    assert r.num_hvps == 9


def test_power_iteration_progress_bar_counts_products(capsys):
    # Several batches: a bar over the products (advanced by k + 1 per iteration).
    r = run(method="power", k=1, converge_smallest=True, data=[B, B], max_hvps=6,
            tol=1e-300, progress=True)  # fmt: skip
    assert r.num_hvps == 6
    err = capsys.readouterr().err
    # Products counted, no total and no ETA to max_hvps (issue 21, item 15: a run stops
    # when decided, usually long before max_hvps).
    assert "Hessian-vector products" in err and " products [" in err and "/6" not in err


def test_stop_when_with_a_loss_of_params_only():
    eigs = np.linspace(-1.0, 2.0, 12)
    d = jnp.asarray(eigs)
    calls = []

    def stop(est):
        calls.append(est.num_hvps)
        return est.num_hvps == 2

    r = hessian_spectrum(lambda p: 0.5 * jnp.sum(d * p["x"] ** 2), {"x": jnp.ones(12)},
                         stop_when=stop, progress=False)  # fmt: skip
    assert r.num_hvps == 2 and calls == [1, 2]
    assert min(abs(eigs - r.eigenvalues[0])) <= r.errors[0]


@pytest.mark.parametrize("loop", ["device", "host"])
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_a_product_that_is_not_finite_names_it(loop, method):
    # Finite params and loss, infinite curvature: d^2/dx^2 |x|^1.5 = 0.75 |x|^-0.5 at 0.
    def loss(p, batch):
        return jnp.sum(jnp.abs(p["x"]) ** 1.5) * jnp.mean(batch)

    with pytest.raises(ValueError, match=r"^the Hessian-vector product is not finite \(NaN"):
        hessian_spectrum(loss, {"x": jnp.zeros(3)}, jnp.ones(2), loop=loop, method=method,
                         max_hvps=4, devices=one())  # fmt: skip


def test_a_float32_run_stays_in_float32_and_compiles_one_product(caplog):
    # Every vector the host loop multiplies keeps the parameters' dtype: a float64
    # vector would compile the product a second time (and cost twice the memory).
    import logging

    d = np.linspace(1.0, 2.0, 12).astype(np.float32)

    def loss(p, batch):  # a new function: its product compiles inside this test
        return 0.5 * jnp.sum(d * p["x"] ** 2) * jnp.mean(batch)

    params = {"x": jnp.ones(12, jnp.float32)}
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        r = hessian_spectrum(loss, params, jnp.ones(2, jnp.float32), loop="host", tol=1e-5,
                             devices=one(), verify=False)  # fmt: skip
    products = [m for rec in caplog.records if "Compiling jit(hvp_sum)" in (m := rec.getMessage())]
    assert len(products) == 1, products
    assert r.num_hvps > 2 and r.eigenvalues.dtype == np.float32
