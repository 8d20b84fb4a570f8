"""The error bounds and stopping tests of stability.curvature.lanczos against independent oracles.

The oracle for every Ritz value and residual bound is a reference Lanczos run
written here in plain numpy (full reorthogonalisation) on a small explicit matrix:
the Ritz values are the eigenvalues of its tridiagonal ``T`` (dense ``eigh``), and
each residual bound must equal the residual ``||A y - theta y||`` of the Ritz vector
``y = V^T s`` formed explicitly (Parlett, thm. 4.5.1: an eigenvalue of ``A`` lies
within it). Convergence flags are checked at the exact tolerance where they switch.
The Kuczynski-Wozniakowski bound and the breakdown tolerance are checked against
their formulas evaluated here. These tests kill the mutants of lanczos.py that
survived test_lanczos.py (tests/MUTATION.md).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stability import hessian_spectrum
from stability.curvature.backend import accelerator_code_paths
from stability.curvature.lanczos import (
    LanczosState,
    PowerState,
    _tridiag_vectors,
    breakdown_tolerance,
    eigsh_extremes,
    lanczos_extremes,
    lanczos_extremes_host,
    power_extremes,
    random_start_bounds,
    random_start_epsilon,
)


def sym(eigs, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(len(eigs), len(eigs))))
    return (q * np.asarray(eigs, float)) @ q.T


def ref_lanczos(a, m, seed=1):
    """``m`` Lanczos steps with full reorthogonalisation: alphas, betas, basis (m, n)."""
    n = a.shape[0]
    v = np.random.default_rng(seed).normal(size=n)
    basis = np.zeros((m + 1, n))
    basis[0] = v / np.linalg.norm(v)
    alphas, betas = np.zeros(m), np.zeros(m)
    for j in range(m):
        w = a @ basis[j]
        alphas[j] = basis[j] @ w
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        betas[j] = np.linalg.norm(w)
        basis[j + 1] = w / betas[j]
    return alphas, betas, basis[:m]


def ritz(a, alphas, betas, basis):
    """Ritz values (ascending), their explicit residuals and coordinates, from T_m."""
    m = alphas.size
    t = np.diag(alphas) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)
    theta, s = np.linalg.eigh(t)
    y = s.T @ basis
    res = np.linalg.norm(y @ a - theta[:, None] * y, axis=1)
    return theta, res, s


# Eigenvalues: a wide negative end makes max(|theta_max|, |theta_min|) the smallest's.
EIGS = np.concatenate([[3.0, 2.9, 2.5], np.linspace(-1.0, 2.0, 44), [-8.0]])
A = sym(EIGS)


def check_extremes(ext, a, alphas, betas, basis, k, tol, want_smallest, atol=1e-10):
    theta, res, s = ritz(a, alphas, betas, basis)
    j = alphas.size
    top = np.asarray(ext.top)
    err = np.asarray(ext.top_error)
    valid = np.arange(k) < j
    np.testing.assert_allclose(top[valid], theta[::-1][:k], rtol=1e-12)
    np.testing.assert_allclose(err[valid], res[::-1][:k], atol=atol)
    assert np.all(np.isnan(top[~valid])) and np.all(np.isinf(err[~valid]))
    np.testing.assert_allclose(float(ext.smallest), theta[0], rtol=1e-12)
    np.testing.assert_allclose(float(ext.smallest_error), res[0], atol=atol)
    # Parlett: each bar holds an eigenvalue of A.
    for value, bar in [*zip(top[valid], err[valid], strict=True),
                       (float(ext.smallest), float(ext.smallest_error))]:  # fmt: skip
        assert np.min(np.abs(EIGS - value)) <= bar + 1e-12
    thresh = tol * max(abs(theta[-1]), abs(theta[0]))
    top_conv = valid & (err <= thresh)
    small_conv = float(ext.smallest_error) <= thresh
    assert np.array_equal(np.asarray(ext.top_converged), top_conv)
    assert bool(ext.smallest_converged) == small_conv
    assert bool(ext.done) == bool(top_conv.all() and (small_conv or not want_smallest))
    # Ritz coordinates: rows of the top k, then the smallest (up to sign).
    coeffs = np.asarray(ext.coeffs)[:, :j]
    wanted = [*np.clip(j - 1 - np.arange(k), 0, j - 1), 0]
    np.testing.assert_allclose(np.abs(coeffs), np.abs(s[:, wanted].T), atol=1e-8)


def state_of(alphas, betas, m):
    pad = m - alphas.size
    return LanczosState(
        basis=jnp.zeros((0, 1)),
        alphas=jnp.asarray(np.pad(alphas, (0, pad))),
        betas=jnp.asarray(np.pad(betas, (0, pad))),
        v=jnp.zeros(1),
        v_prev=jnp.zeros(1),
        j=jnp.asarray(alphas.size, jnp.int32),
        key=jnp.zeros((), jnp.int32),
    )


_jit_extremes = jax.jit(lanczos_extremes, static_argnums=(1, 3))


@pytest.mark.parametrize("m", [1, 2, 6, 32, 40])  # 33+ rows: scipy's stemr on the host
@pytest.mark.parametrize("k", [1, 3])
def test_host_extremes_against_explicit_residuals(m, k):
    alphas, betas, basis = ref_lanczos(A, m)
    for want_smallest in (True, False):
        ext = lanczos_extremes_host(alphas, betas, k, 1e-3, want_smallest)
        check_extremes(ext, A, alphas, betas, basis, k, 1e-3, want_smallest)
        assert ext.top.dtype == np.float64 and ext.coeffs.shape == (k + 1, m)


@pytest.mark.parametrize("m", [1, 2, 6, 40])
def test_jitted_extremes_against_explicit_residuals(m):
    alphas, betas, basis = ref_lanczos(A, m)
    for want_smallest in (True, False):
        ext = _jit_extremes(state_of(alphas, betas, 48), 3, 1e-3, want_smallest)
        check_extremes(ext, A, alphas, betas, basis, 3, 1e-3, want_smallest)
        assert np.all(np.asarray(ext.coeffs)[:, m:] == 0)  # padding rows carry nothing


def _switch_tolerances(err, norm):
    """``(on, off)``: the tolerance at which ``err <= tol * norm`` just holds, and the
    next smaller float, at which it fails."""
    tol = err / norm
    for _ in range(64):
        if tol * norm == err:
            break
        tol = np.nextafter(tol, np.inf if tol * norm < err else 0.0)
    assert tol * norm == err
    return tol, np.nextafter(tol, 0.0)


@pytest.mark.parametrize("sign", [1, -1], ids=["smallest_dominates", "top_dominates"])
def test_convergence_flags_switch_exactly_at_tol(sign):
    # The stopping test is residual <= tol * max(|theta_max|, |theta_min|), inclusive.
    # On A, |theta_min| (the -8 end) is the larger one; on -A the top (+8) is, and the
    # norm estimate must be the top Ritz value, not the next one (a smaller estimate
    # would only switch the flags on later; tests/MUTATION.md). The two
    # implementations round the residual differently in the last bits: each is
    # probed on its own.
    alphas, betas, _ = ref_lanczos(sign * A, 12)
    impls = (
        lambda tol: lanczos_extremes_host(alphas, betas, 1, tol),
        lambda tol: _jit_extremes(state_of(alphas, betas, 16), 1, tol, True),
    )
    for impl in impls:
        probe = impl(1.0)
        norm = max(abs(float(probe.top[0])), abs(float(probe.smallest)))
        top_larger = abs(float(probe.top[0])) > abs(float(probe.smallest))
        assert top_larger is (sign == -1)
        for field, flag in (
            ("top_error", "top_converged"),
            ("smallest_error", "smallest_converged"),
        ):
            err = float(np.ravel(getattr(probe, field))[0])
            on, off = _switch_tolerances(err, norm)
            assert bool(np.ravel(getattr(impl(on), flag))[0]) is True, field
            assert bool(np.ravel(getattr(impl(off), flag))[0]) is False, field


def test_host_extremes_wait_for_the_smallest_by_default():
    # done = every top flag and (by default, want_smallest=True) the smallest flag:
    # at a tolerance between the two residuals (top converged, smallest not) the
    # default is not done, want_smallest=False is.
    for a in (A, -A):
        alphas, betas, _ = ref_lanczos(a, 12)
        probe = lanczos_extremes_host(alphas, betas, 1, 1.0, want_smallest=True)
        norm = max(abs(float(probe.top[0])), abs(float(probe.smallest)))
        top_err, small_err = float(probe.top_error[0]), float(probe.smallest_error)
        if top_err < small_err:
            break
    else:
        raise AssertionError("no case with the top converging first")
    tol = math.sqrt(top_err * small_err) / norm
    ext = lanczos_extremes_host(alphas, betas, 1, tol)
    assert bool(ext.top_converged[0]) and not bool(ext.smallest_converged)
    assert not bool(ext.done)
    assert bool(lanczos_extremes_host(alphas, betas, 1, tol, want_smallest=False).done)


def test_extremes_before_the_first_step():
    host = lanczos_extremes_host(np.zeros(0), np.zeros(0), 2, 1e-3, dtype=np.float32)
    assert np.all(np.isnan(host.top)) and np.all(np.isinf(host.top_error))
    assert host.top.dtype == np.float32 and host.coeffs.shape == (3, 0)
    assert np.isnan(host.smallest) and np.isinf(host.smallest_error)
    assert not host.top_converged.any() and not host.smallest_converged and not host.done
    dev = _jit_extremes(state_of(np.zeros(0), np.zeros(0), 8), 2, 1e-3, False)
    assert np.all(np.isnan(np.asarray(dev.top))) and np.all(np.isinf(np.asarray(dev.top_error)))
    assert not bool(dev.smallest_converged) and not bool(dev.done)
    assert not np.asarray(dev.top_converged).any()


def test_one_step_is_the_rayleigh_quotient():
    # T_1 = [alpha]: the Ritz value is alpha, its residual |beta|.
    for ext in (
        lanczos_extremes_host(np.array([2.5]), np.array([-0.75]), 1, 1e-3),
        _jit_extremes(state_of(np.array([2.5]), np.array([-0.75]), 8), 1, 1e-3, True),
    ):
        assert float(ext.top[0]) == 2.5 and float(ext.smallest) == 2.5
        assert float(ext.top_error[0]) == 0.75 and float(ext.smallest_error) == 0.75
        assert not bool(ext.done)
    ext = lanczos_extremes_host(np.array([2.5]), np.array([0.0025]), 1, 1e-3)
    assert bool(ext.done)  # 0.0025 <= 1e-3 x 2.5


def test_float32_dtype_is_kept():
    alphas, betas, _ = ref_lanczos(A, 5)
    ext = lanczos_extremes_host(alphas.astype(np.float32), betas.astype(np.float32), 2, 1e-3)
    assert ext.top.dtype == np.float32 and ext.top_error.dtype == np.float32
    assert ext.smallest.dtype == np.float32 and ext.coeffs.dtype == np.float32
    ext64 = lanczos_extremes_host(alphas, betas, 2, 1e-3, dtype=np.float32)
    assert ext64.top.dtype == np.float32


def test_accelerator_tridiagonal_branch_error_bars():
    # On GPU/TPU lanczos_extremes solves the tridiagonal eigenproblem on the device
    # (bisection, then inverse iteration in _tridiag_vectors); the branch is chosen at
    # trace time, so stability.curvature.backend.accelerator_code_paths runs it here. Its error
    # bars against the explicit residuals (test_accelerator_paths.py checks the values
    # end to end).
    alphas, betas, basis = ref_lanczos(A, 10)
    cpu = _jit_extremes(state_of(alphas, betas, 16), 3, 1e-3, True)
    with accelerator_code_paths():
        gpu = jax.jit(lanczos_extremes, static_argnums=(1, 3))(state_of(alphas, betas, 16), 3, 1e-3)
    check_extremes(gpu, A, alphas, betas, basis, 3, 1e-3, True, atol=1e-8)
    np.testing.assert_allclose(np.asarray(gpu.top), np.asarray(cpu.top), rtol=1e-12)


def test_inverse_iteration_eigenvectors():
    # _tridiag_vectors: unit eigenvectors of the active block, zero on padded rows.
    rng = np.random.default_rng(3)
    m, j = 12, 9
    diag, off = rng.normal(size=m), rng.uniform(0.1, 1.0, size=m)
    t = np.diag(diag[:j]) + np.diag(off[: j - 1], 1) + np.diag(off[: j - 1], -1)
    theta, s = np.linalg.eigh(t)
    active = np.arange(m) < j
    off_active = np.where(np.arange(m) < j - 1, off, 0.0)
    pick = [0, 4, j - 1]
    vecs = np.asarray(
        jax.jit(_tridiag_vectors)(
            jnp.asarray(np.where(active, diag, 50.0)), jnp.asarray(off_active),
            jnp.asarray(active), jnp.asarray(theta[pick]),
        )
    )  # fmt: skip
    assert np.all(vecs[:, j:] == 0)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.abs(vecs[:, :j]), np.abs(s[:, pick].T), atol=1e-8)


# ------------------------------------------------------------------- power method


def power_state(top, top_res, smallest, smallest_res):
    return PowerState(
        vecs=jnp.zeros((len(top), 1)),
        low=jnp.zeros(1),
        top=jnp.asarray(top, jnp.float64),
        top_res=jnp.asarray(top_res, jnp.float64),
        smallest=jnp.asarray(smallest, jnp.float64),
        smallest_res=jnp.asarray(smallest_res, jnp.float64),
        iters=jnp.zeros((), jnp.int32),
    )


def test_power_flags_switch_exactly_at_tol():
    # norm estimate max(|top[0]|, |smallest|): here |smallest| = 4.
    s = power_state([2.0, 1.0], [0.5, 0.25], -4.0, 1.0)
    ext = power_extremes(s, 1 / 16)  # threshold exactly 0.25
    assert np.asarray(ext.top_converged).tolist() == [False, True]
    assert not bool(ext.smallest_converged) and not bool(ext.done)
    ext = power_extremes(s, 1 / 8)  # threshold 0.5
    assert np.asarray(ext.top_converged).tolist() == [True, True]
    assert not bool(ext.smallest_converged) and not bool(ext.done)
    ext = power_extremes(s, 1 / 4)  # threshold 1.0
    assert bool(ext.smallest_converged) and bool(ext.done)
    # Without the smallest: never flagged (a boolean flag), and done needs the top only.
    ext = power_extremes(s, 1 / 8, want_smallest=False)
    assert not bool(ext.smallest_converged) and bool(ext.done)
    assert np.asarray(ext.smallest_converged).dtype == bool
    assert np.asarray(ext.smallest_converged).shape == ()
    # The norm estimate is the top Ritz value's when it is the larger: top[0], not top[1].
    ext = power_extremes(power_state([5.0, 1.0], [0.5, 0.25], -2.0, 1.0), 1 / 10)
    assert np.asarray(ext.top_converged).tolist() == [True, True]
    assert bool(ext.smallest_converged) is False  # 1.0 > 0.5
    # Before the smallest is known (NaN), the norm estimate is |top[0]|.
    ext = power_extremes(power_state([2.0, 0.5], [0.5, 0.25], np.nan, np.inf), 1 / 4)
    assert np.asarray(ext.top_converged).tolist() == [True, True] and not bool(ext.done)
    assert np.asarray(ext.top).tolist() == [2.0, 0.5]
    assert np.asarray(ext.top_error).tolist() == [0.5, 0.25]


def test_power_iteration_smallest_eigenvalue_against_eigh():
    # Shifted power iteration: the smallest eigenvalue of a matrix whose bottom end is
    # well separated (-3 below -1), with its residual bound.
    eigs = np.concatenate([[5.0, 1.5], np.linspace(-1.0, 1.0, 20), [-3.0]])
    a = jnp.asarray(sym(eigs, seed=4))
    ext, count = eigsh_extremes(
        lambda x: a @ x, jnp.ones(eigs.size), k=1, tol=1e-10, max_matvecs=4000, method="power",
        want_smallest=True,
    )  # fmt: skip
    assert bool(ext.done) and bool(ext.smallest_converged) and int(count) % 2 == 0
    np.testing.assert_allclose(float(ext.smallest), -3.0, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(ext.top), [5.0], rtol=1e-9)
    assert abs(float(ext.smallest) + 3.0) <= float(ext.smallest_error) + 1e-12


def test_hessian_spectrum_power_smallest_against_eigh():
    # The host loop (the jitted loop is eigsh_extremes' above).
    eigs = np.concatenate([[4.0, 1.0], np.linspace(-0.5, 0.5, 10), [-2.0]])
    a = jnp.asarray(sym(eigs, seed=5))

    def loss(p, batch):
        return 0.5 * (p["x"] @ a @ p["x"]) * jnp.mean(batch)

    dense = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda x: loss({"x": x}, jnp.ones(2)))(
        jnp.ones(eigs.size))))  # fmt: skip
    res = hessian_spectrum(
        loss, {"x": jnp.ones(eigs.size)}, jnp.ones(2), method="power", k=1, tol=1e-10,
        max_hvps=4000, converge_smallest=True, loop="host", progress=False,
        devices=jax.devices()[:1],
    )  # fmt: skip
    assert res.converged[0] and res.smallest_converged
    np.testing.assert_allclose(res.smallest, dense[0], rtol=1e-9)
    np.testing.assert_allclose(res.eigenvalues, dense[-1:], rtol=1e-9)
    assert abs(res.smallest - dense[0]) <= res.smallest_error
    assert res.lanczos_steps == 0 and res.bounds() == (math.inf, -math.inf)


# ---------------------------------------------- random-start bound, breakdown


def ks_eps(n, steps, p):
    """Kuczynski-Wozniakowski (1992, thm 4.2): 1.648 sqrt(n) exp(-sqrt(eps)(2 steps - 1)) = p."""
    return max(math.log(1.648 * math.sqrt(n) / p) / (2 * steps - 1), 0.0) ** 2


@pytest.mark.parametrize(
    "n, steps, p", [(1, 1, 1e-6), (2, 1, 0.5), (1000, 60, 1e-6), (85_002, 3, 1e-3)]
)
def test_random_start_epsilon_formula(n, steps, p):
    assert random_start_epsilon(n, steps, p) == pytest.approx(ks_eps(n, steps, p), rel=1e-13)


def test_random_start_epsilon_edges():
    assert random_start_epsilon(10, 0, 1e-6) == math.inf  # no step yet
    assert random_start_epsilon(0, 10, 1e-6) == math.inf  # no matrix
    assert random_start_epsilon(0, 0, 1e-6) == math.inf
    # A failure probability above 1.648 sqrt(n): the bound holds for every eps >= 0.
    assert random_start_epsilon(1, 5, 2.0) == 0.0
    assert random_start_epsilon(4, 1, 1.648 * 2) == 0.0


@pytest.mark.parametrize("theta_max, theta_min", [(3.0, -1.0), (0.5, 0.25), (-0.1, -2.0)])
def test_random_start_bounds_formula(theta_max, theta_min):
    n, steps, p = 500, 40, 1e-6
    eps = ks_eps(n, steps, p / 2)
    slack = eps * (theta_max - theta_min) / (1 - 2 * eps)
    upper, lower = random_start_bounds(theta_max, theta_min, n, steps, p)
    assert upper == pytest.approx(theta_max + slack, rel=1e-12)
    assert lower == pytest.approx(theta_min - slack, rel=1e-12)
    assert lower < theta_min <= theta_max < upper


def test_random_start_bounds_need_eps_below_one_half():
    # eps >= 1/2 gives no bound; just below it the slack is finite but huge.
    n, p = 500, 1e-6
    steps = next(s for s in range(1, 100) if ks_eps(n, s, p / 2) < 0.5)
    assert random_start_bounds(1.0, 0.0, n, steps - 1, p) == (math.inf, -math.inf)
    upper, lower = random_start_bounds(1.0, 0.0, n, steps, p)
    assert math.isfinite(upper) and math.isfinite(lower) and upper > 1.0 > 0.0 > lower
    # Exactly 1/2 (a failure probability solving the equation to the last bit): no bound.
    p_half = 2 * 1.648 * math.sqrt(n) * math.exp(-math.sqrt(0.5) * (2 * steps - 1))
    for _ in range(200):
        if random_start_epsilon(n, steps, p_half / 2) == 0.5:
            break
        eps = random_start_epsilon(n, steps, p_half / 2)
        p_half = np.nextafter(p_half, 0.0 if eps < 0.5 else 1.0)
    if random_start_epsilon(n, steps, p_half / 2) == 0.5:
        assert random_start_bounds(1.0, 0.0, n, steps, p_half) == (math.inf, -math.inf)


def test_breakdown_tolerance_formula():
    alphas = [0.5, -3.0, 2.0]
    assert breakdown_tolerance(alphas, 100, np.float64) == pytest.approx(
        np.finfo(np.float64).eps * 10 * 3.0, rel=1e-15
    )
    assert breakdown_tolerance(alphas, 100, np.float32) == pytest.approx(
        float(np.finfo(np.float32).eps) * 10 * 3.0, rel=1e-7
    )
    assert breakdown_tolerance([], 100, np.float64) == 0.0
    assert breakdown_tolerance([0.0, 0.0], 100, np.float64) == 0.0
    assert breakdown_tolerance(np.array([-7.0], np.float32), 1, np.float64) == pytest.approx(
        np.finfo(np.float64).eps * 7.0, rel=1e-15
    )


def test_host_extremes_solve_the_tridiagonal_in_float64():
    # A float32 run's coefficients: the Ritz values are those of the float64 solve,
    # rounded once to float32 (not a float32 solve's).
    rng = np.random.default_rng(3)
    alphas = [np.float32(x) for x in rng.uniform(-1.0, 2.0, 12)]
    betas = [np.float32(x) for x in rng.uniform(0.1, 1.0, 12)]
    ext = lanczos_extremes_host(alphas, betas, 3, 1e-3, True, np.float32)
    t = np.diag(np.asarray(alphas, np.float64))
    i = np.arange(11)
    t[i, i + 1] = t[i + 1, i] = np.asarray(betas[:11], np.float64)
    theta = np.linalg.eigvalsh(t)
    assert ext.top.dtype == np.float32
    np.testing.assert_array_equal(ext.top, theta[::-1][:3].astype(np.float32))
    assert ext.smallest == np.float32(theta[0])
