"""The certified dominant root against numpy roots (independent: companion eigenvalues)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stability_oracles import poly, rho, roots

import stability as st
from stability.theory import dominant_root as dr

RULES = ("heavy_ball", "nesterov", "shifted")


def _random_points(rng, size):
    q = 10.0 ** rng.uniform(-6, 1, size)
    beta = rng.uniform(0.0, 0.999, size)
    return q, beta


@pytest.mark.parametrize("rule", RULES)
def test_sparse_form_is_the_characteristic_polynomial(rule):
    # z^m U + V (times z for heavy_ball) has the same roots as the rules' polynomial.
    tau, beta, q = 5, 0.7, 0.3
    p = dr.sparse_characteristic(jnp.asarray(q), jnp.asarray(beta), tau, rule)
    m = p.m
    coeffs = np.zeros(m + 3)
    coeffs[:3] = [1.0, float(p.u1), float(p.u0)]
    coeffs[-2:] += [float(p.v1), float(p.v0)]
    sparse = np.sort_complex(np.roots(coeffs))
    full = roots(poly(tau, beta, q, rule))
    if rule == "heavy_ball":
        sparse = np.sort_complex(np.append(sparse, 0.0))
    np.testing.assert_allclose(np.sort_complex(full), sparse, atol=1e-10)


@pytest.mark.parametrize("rule", RULES)
def test_root_count_matches_numpy(rule):
    rng = np.random.default_rng(1)
    for tau in (2, 40):  # the smallest fast-path delay and a large one (a compile each)
        q, beta = _random_points(rng, 40)
        p = dr.sparse_characteristic(jnp.asarray(q), jnp.asarray(beta), tau, rule)
        point, radii, want = [], [], []
        for i in range(q.size):
            mods = np.sort(np.abs(roots(poly(tau, beta[i], q[i], rule))))
            if rule == "heavy_ball":
                mods = mods[1:]  # the divided-out root z = 0
            # radii between consecutive root moduli (away from roots), and outside all
            gaps = np.flatnonzero(np.diff(mods) > 1e-6 * mods[1:])
            r = np.concatenate([(mods[gaps] + mods[gaps + 1]) / 2, [2 * mods[-1]]])
            point += [i] * r.size
            radii += list(r)
            want += [np.sum(mods < x) for x in r]
        point = np.array(point)
        sub = dr.SparseCharacteristic(p.m, *(x[point] for x in (p.a1, p.a2, p.v1, p.v0)))
        got = np.asarray(dr.root_count(sub, jnp.asarray(radii)))
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("tau", [2, 9, 32, 130, 500])
def test_certified_radius_is_within_tolerance(rule, tau):
    rng = np.random.default_rng(tau)
    q, beta = _random_points(rng, 60 if tau < 500 else 4)
    got, certified = dr.certified_spectral_radius(jnp.asarray(q), jnp.asarray(beta), tau, rule)
    got, certified = np.asarray(got), np.asarray(certified)
    want = np.array([rho(poly(tau, b, x, rule)) for x, b in zip(q, beta, strict=True)])
    assert certified.any()
    err = np.abs(got[certified] / want[certified] - 1)
    assert err.max() <= dr.RELATIVE_TOLERANCE
    if tau >= 9:
        # Most points certify (the rest fall back to eigenvalues in spectral_radius).
        assert certified.mean() >= 0.85


def test_an_undetected_dominant_root_is_not_certified():
    # Force rho_hat below the true radius: the count above it must fail.
    tau, rule = 32, "heavy_ball"
    q, beta = jnp.asarray([0.05]), jnp.asarray([0.5])
    p = dr.sparse_characteristic(q, beta, tau, rule)
    true = rho(poly(tau, 0.5, 0.05, rule))
    n = p.degree
    assert abs(float(dr.root_count(p, jnp.asarray([true * (1 + 1e-9)]))[0]) - n) < 1e-6
    assert float(dr.root_count(p, jnp.asarray([true * (1 - 1e-9)]))[0]) <= n - 1 + 1e-6
    assert float(dr.root_count(p, jnp.asarray([0.95 * true]))[0]) < n - 1.5


@pytest.mark.parametrize("rule", RULES)
def test_spectral_radius_exact_for_large_tau_and_edge_points(rule):
    # The public function (fast path + eigenvalue fallback) against numpy: sharpness 0,
    # beta 0, negative sharpness and near-critical points included.
    rng = np.random.default_rng(7)
    for tau in (2, 100):
        sharp = np.concatenate([[0.0, 0.0, -0.5, 1e-9], rng.uniform(0.0, 3.0, 20)])
        beta = np.concatenate([[0.0, 0.9, 0.5, 0.99], rng.uniform(0.0, 0.99, 20)])
        beta[5] = 0.0
        lr = 0.05
        got = np.asarray(st.spectral_radius(sharp, lr, tau, beta, momentum=rule))
        want = [rho(poly(tau, b, s * lr, rule)) for s, b in zip(sharp, beta, strict=True)]
        np.testing.assert_allclose(got, want, rtol=1e-9)


def test_spectral_radius_grid_under_jit_and_vmap():
    sharp = jnp.linspace(0.0, 2.0, 24)
    beta = jnp.linspace(0.0, 0.99, 16)
    f = jax.jit(lambda s, b: st.spectral_radius(s[:, None], 0.05, 32, b[None, :]))
    grid = np.asarray(f(sharp, beta))
    per_row = np.asarray(jax.vmap(lambda s: st.spectral_radius(s, 0.05, 32, beta))(sharp))
    np.testing.assert_allclose(grid, per_row, rtol=1e-12)
    idx = [(0, 0), (3, 15), (23, 8), (12, 4)]
    for i, j in idx:
        want = rho(poly(32, float(beta[j]), 0.05 * float(sharp[i]), "heavy_ball"))
        assert grid[i, j] == pytest.approx(want, rel=1e-9)


def test_float32_uses_eigenvalues_and_agrees():
    got = st.spectral_radius(np.float32(0.7), np.float32(0.1), 12, np.float32(0.5))
    assert got.dtype == jnp.float32
    want = rho(poly(12, 0.5, 0.07, "heavy_ball"))
    assert float(got) == pytest.approx(want, rel=1e-4)


def test_spectral_radius_on_a_grid_sharded_over_devices():
    # The eigenvalue fallback gathers uncertified points across shards (it once hung
    # XLA:CPU); sharded and unsharded grids must agree.
    devices = np.array(jax.devices()[:4])
    mesh = jax.sharding.Mesh(devices, ("rows",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows", None))
    sharp = jnp.broadcast_to(jnp.linspace(0.0, 2.0, 16)[:, None], (16, 24))
    beta = jnp.linspace(0.0, 0.99, 24)[None, :]
    f = jax.jit(lambda s, b: st.spectral_radius(s, 0.05, 32, b, momentum="nesterov"))
    sharded = np.asarray(f(jax.device_put(sharp, rows), beta))
    np.testing.assert_allclose(sharded, np.asarray(f(sharp, beta)), rtol=1e-13)
    assert sharded[0, 5] == pytest.approx(rho(poly(32, float(beta[0, 5]), 0.0, "nesterov")))


@pytest.mark.parametrize("rule", RULES)
def test_spectral_radius_is_differentiable(rule):
    # d rho / d lr and d rho / d beta against central differences of the same function.
    def f(lr, beta):
        return st.spectral_radius(0.7, lr, 8, beta, momentum=rule)

    lr, beta, h = 0.1, 0.5, 1e-6
    g_lr, g_beta = jax.grad(f, argnums=(0, 1))(lr, beta)
    # pytest.approx takes numbers or numpy arrays as the expected value, not JAX arrays
    fd_lr = float(f(lr + h, beta) - f(lr - h, beta)) / (2 * h)
    fd_beta = float(f(lr, beta + h) - f(lr, beta - h)) / (2 * h)
    assert float(g_lr) == pytest.approx(fd_lr, rel=1e-6)
    assert float(g_beta) == pytest.approx(fd_beta, rel=1e-6)
