"""The GPU/TPU code paths, forced on CPU (``stability.curvature.backend.accelerator_code_paths``):
the device-resident Lanczos loop with XLA's tridiagonal eigensolver, and the host
loop with compiled steps (basis on the devices), over data sharded on 8 devices.
Oracle: dense ``jax.hessian`` eigenvalues; the CPU paths give the same numbers."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import stability
from stability import hessian_spectrum
from stability.curvature.backend import accelerator_code_paths, host_is_device


def _problem(seed=0, n_ex=32):
    rng = np.random.default_rng(seed)
    params = {
        "w1": jnp.asarray(rng.standard_normal((4, 6)) / 2),
        "w2": jnp.asarray(rng.standard_normal((6, 2)) / 2),
    }
    x = jnp.asarray(rng.standard_normal((n_ex, 4)))
    y = jnp.asarray(rng.standard_normal((n_ex, 2)))

    def loss(p, batch):
        xb, yb = batch
        return 0.5 * jnp.mean(jnp.sum((jnp.tanh(xb @ p["w1"]) @ p["w2"] - yb) ** 2, -1))

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    h = jax.hessian(lambda f: loss(unravel(f), (x, y)))(flat)
    return loss, params, (x, y), np.linalg.eigvalsh(np.asarray(h))


def test_the_switch_is_scoped():
    assert host_is_device()  # the suite runs on CPU
    with accelerator_code_paths():
        assert not host_is_device()
    assert host_is_device()


def test_device_loop_matches_dense_and_the_cpu_path():
    loss, params, batch, eigs = _problem()
    kw = dict(k=2, tol=1e-10, converge_smallest=True, max_hvps=36, return_vectors=True)
    cpu = hessian_spectrum(loss, params, batch, **kw)
    with accelerator_code_paths():
        acc = hessian_spectrum(loss, params, batch, **kw)
    for r in (cpu, acc):
        np.testing.assert_allclose(r.eigenvalues, eigs[::-1][:2], atol=1e-8)
        assert abs(r.smallest - eigs[0]) <= max(r.smallest_error, 1e-8)
        assert r.converged.all()
    np.testing.assert_allclose(acc.eigenvalues, cpu.eigenvalues, rtol=1e-9)
    v = np.asarray(acc.eigenvectors["w2"][0]).ravel()
    w = np.asarray(cpu.eigenvectors["w2"][0]).ravel()
    assert abs(abs(v @ w) / (np.linalg.norm(v) * np.linalg.norm(w)) - 1) < 1e-6


def test_basis_free_device_loop():
    # k = 1: without reorthogonalisation later Ritz values include ghost copies of
    # converged ones (flagged not converged), so only the top is asked for.
    loss, params, batch, eigs = _problem(seed=3)
    with accelerator_code_paths():
        r = hessian_spectrum(loss, params, batch, k=1, tol=1e-10, reorthogonalize=False)
    assert r.converged[0]
    assert abs(r.sharpness - eigs[-1]) <= max(r.sharpness_error, 1e-10)


def test_host_loop_with_compiled_steps_over_batches():
    loss, params, (x, y), eigs = _problem(seed=1)
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    with accelerator_code_paths():
        r = hessian_spectrum(loss, params, batches, k=1, tol=1e-10, progress=False,
                             return_vectors=True)  # fmt: skip
    assert abs(r.sharpness - eigs[-1]) <= max(r.sharpness_error, 1e-10)


def test_verdict_on_the_accelerator_paths():
    loss, params, batch, eigs = _problem(seed=2)
    lr = 0.5 * float(stability.max_stable_lr(eigs[-1], 3))
    with accelerator_code_paths():
        acc = stability.is_accessible(loss, params, tau=3, lr=lr, data=batch)
    cpu = stability.is_accessible(loss, params, tau=3, lr=lr, data=batch)
    assert acc.verdict is True and cpu.verdict is True
    assert acc.num_hvps == cpu.num_hvps
    assert acc.sharpness == pytest.approx(cpu.sharpness, rel=1e-9)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_device_loop_padding_stays_above_any_spectrum(scale):
    # The device loop pads T to max_hvps rows with a decoupled c I, c above the active
    # block (2 x its Gershgorin bound + 1), so that its Ritz values are the j smallest
    # eigenvalues. Spectra of any scale; the run stops long before max_hvps = n = 40
    # (two separated top values), so the padding is there when the top is read.
    eigs = scale * np.concatenate([[1.0, 0.5], np.linspace(0.1, -0.05, 38)])

    def loss(p, batch):
        return 0.5 * jnp.sum(eigs * p["x"] ** 2) * jnp.mean(batch)

    kw = dict(k=2, tol=1e-8, max_hvps=40, loop="device")
    with accelerator_code_paths():
        r = hessian_spectrum(loss, {"x": jnp.ones(40)}, jnp.ones(3), **kw)
    assert r.num_hvps < 30
    np.testing.assert_allclose(r.eigenvalues, eigs[:2], rtol=1e-7)
