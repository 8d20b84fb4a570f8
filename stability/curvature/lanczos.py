"""Matrix-free extreme eigenvalues of a symmetric operator: Lanczos and power iteration.

The operator ``A`` is a function on vectors (flat arrays, or pytrees through
``lanczos_extremes(..., )`` with ``jax.flatten_util``); only products ``A v`` are
needed, never the matrix.

Lanczos (Lanczos 1950; Golub and Van Loan, "Matrix Computations", 4th ed., sec.
10.1) builds an orthonormal basis ``V_m`` of the Krylov space
``span(v0, A v0, ..., A^(m-1) v0)`` and the tridiagonal ``T_m = V_m^T A V_m``. The
eigenvalues ``theta_i`` of ``T_m`` (Ritz values) approximate the extreme
eigenvalues of ``A``; with ``T_m s_i = theta_i s_i`` the Ritz vector
``y_i = V_m s_i`` has residual ``||A y_i - theta_i y_i|| = |beta_m| |s_i[m-1]|``,
and for symmetric ``A`` some eigenvalue lies within that residual of
``theta_i`` (Parlett, "The Symmetric Eigenvalue Problem", thm. 4.5.1). That
residual is the error bound reported and the stopping test:
``residual <= tol * max(|theta_max|, |theta_min|)`` (tolerance relative to the
spectral norm) for the wanted Ritz values.

Reorthogonalisation: in floating point the Lanczos vectors lose orthogonality
once a Ritz value converges and copies ("ghosts") of converged eigenvalues
appear. ``reorthogonalize=True`` keeps the whole basis (``m`` vectors of ``n``
numbers: ``m * n * itemsize`` bytes, e.g. 100 x 0.5M float32 = 200 MB) and
applies classical Gram-Schmidt twice per step (cost ``O(m n)``).
``reorthogonalize=False`` keeps three vectors only (the plain three-term
recurrence): extreme Ritz values and their residuals are still reliable, but
ghosts may repeat an eigenvalue among the top-k, and eigenvectors need a second
pass (the recurrence is replayed with the same start vector).

Breakdown (``beta_j ~ 0``: an invariant subspace was found) restarts with a
deterministic pseudo-random vector orthogonal to the basis, so the tridiagonal matrix becomes block
diagonal and the run continues. A single start vector cannot detect the
multiplicity of an eigenvalue before the Krylov space is exhausted.

Power iteration (``method="power"`` of :func:`stability.hessian_spectrum`) is
subspace (orthogonal) iteration on ``k`` vectors with a Rayleigh-Ritz step
(Golub and Van Loan sec. 8.2.4); the smallest eigenvalue is found by power
iteration on ``A - sigma I`` with ``sigma`` the current largest Ritz value. It
keeps ``k (+1)`` vectors only but converges at the rate
``|lambda_{k+1} / lambda_k|`` per product, often hundreds of products where
Lanczos needs tens.

Both algorithms are written as (``init``, ``query``, ``update``, ``finished``)
pure functions on a NamedTuple state so that one driver runs them inside one
``jax.jit`` (``lax.while_loop``, the operator traced) and another runs the
outer loop on the host (the operator being, e.g., a pass over many batches).
The Lanczos step itself exists once, :func:`lanczos_step`, with an array
namespace: traced (jax) in the device loop and in the compiled host step,
numpy (``xp=np``) in the host loop on CPU; so does the restart vector
(:func:`restart_vector`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import eigh_tridiagonal

from stability.curvature.backend import host_is_device

__all__ = [
    "LanczosState",
    "PowerState",
    "Extremes",
    "lanczos_init",
    "lanczos_update",
    "lanczos_extremes",
    "lanczos_step",
    "lanczos_extremes_host",
    "breakdown_tolerance",
    "restart_vector",
    "restart_row",
    "host_norm",
    "random_start_epsilon",
    "random_start_bounds",
    "power_init",
    "power_update",
    "power_extremes",
    "run_in_jit",
    "eigsh_extremes",
]


class Extremes(NamedTuple):
    """Current estimates: ``top`` (k,) descending, ``top_error`` (k,), ``top_converged``
    (k,), ``smallest``, ``smallest_error``, ``smallest_converged``, ``done`` (all wanted
    values converged), ``coeffs``: the Ritz coordinates ((k+1, m) for Lanczos, top-k
    rows then the smallest)."""

    top: jax.Array
    top_error: jax.Array
    top_converged: jax.Array
    smallest: jax.Array
    smallest_error: jax.Array
    smallest_converged: jax.Array
    done: jax.Array
    coeffs: jax.Array


class LanczosState(NamedTuple):
    """Lanczos state after ``j`` products. ``basis`` (m + 1 rows rounded up to
    ``BLOCK``, n) when reorthogonalising: rows ``0..j`` hold the Lanczos vectors
    (row ``j`` is ``v``), later rows are zero; else (0, n). ``alphas``/``betas``
    (m,): the diagonal and off-diagonal of T (``betas[i]`` couples rows ``i`` and
    ``i+1``; ``betas[j-1]`` is the norm of the last residual). ``v``: the next
    vector to multiply, ``v_prev``: the one before it. ``key``: the number of
    restarts after breakdown."""

    basis: jax.Array
    alphas: jax.Array
    betas: jax.Array
    v: jax.Array
    v_prev: jax.Array
    j: jax.Array
    key: jax.Array


def _normalize(x):
    nrm = jnp.linalg.norm(x)
    return x / nrm, nrm


BLOCK = 8  # basis rows per block: reorthogonalise against the filled blocks only


def _orthogonalize(basis, x, used=None):
    """``x`` with its components along the first ``used`` rows of ``basis`` (all when
    None) removed: block Gram-Schmidt applied twice ("twice is enough", Giraud et al.
    2005), classical within a block of ``BLOCK`` rows, modified across blocks. Only the
    blocks holding those rows are read, so step ``j`` costs ``O(j n)``, not
    ``O(m n)``; the zero rows of a partly filled block contribute nothing. One
    ``fori_loop`` (two sweeps over the blocks) keeps the compiled program small."""
    rows = basis.shape[0]
    nblk_max = rows // BLOCK
    nblk = nblk_max if used is None else jnp.minimum((used + BLOCK - 1) // BLOCK, nblk_max)

    def body(i, x):
        blk = lax.dynamic_slice_in_dim(basis, (i % nblk) * BLOCK, BLOCK)
        return x - (blk @ x) @ blk

    return lax.fori_loop(0, 2 * nblk, body, x)


def lanczos_init(v0: jax.Array, max_iters: int, reorthogonalize: bool = True):
    """Start state from ``v0`` (n,), any non-zero vector (normalised here)."""
    n = v0.shape[0]
    dtype = v0.dtype
    v, _ = _normalize(v0)
    rows = -(-(max_iters + 1) // BLOCK) * BLOCK if reorthogonalize else 0
    basis = jnp.zeros((rows, n), dtype)
    if rows:
        basis = basis.at[0].set(v)
    return LanczosState(
        basis=basis,
        alphas=jnp.zeros((max_iters,), dtype),
        betas=jnp.zeros((max_iters,), dtype),
        v=v,
        v_prev=jnp.zeros_like(v),
        j=jnp.zeros((), jnp.int32),
        key=jnp.zeros((), jnp.int32),
    )


def lanczos_update(state: LanczosState, w: jax.Array) -> LanczosState:
    """One Lanczos step given ``w = A state.v``, inside jit: :func:`lanczos_step`,
    then the breakdown test of :func:`breakdown_tolerance` and, on breakdown, a
    restart (:func:`restart_vector`; ``T`` gets a zero off-diagonal, a decoupled
    block)."""
    j = state.j
    v = state.v
    beta_prev = jnp.where(j > 0, state.betas[jnp.maximum(j - 1, 0)], jnp.zeros((), v.dtype))
    basis, v_next, _, ab = lanczos_step(state.basis, v, state.v_prev, w, beta_prev, j)
    alpha, beta = ab[0], ab[1]
    alphas = state.alphas.at[j].set(alpha)
    tiny = breakdown_tolerance(alphas, v.shape[0], v.dtype, jnp)
    broke = (beta <= tiny) | (tiny == 0)

    def restart(_):
        b, r = restart_row(basis, v, j)
        return b, r, jnp.zeros((), v.dtype)

    basis, v_next, beta = lax.cond(broke, restart, lambda _: (basis, v_next, beta), None)
    return LanczosState(
        basis=basis,
        alphas=alphas,
        betas=state.betas.at[j].set(beta),
        v=v_next,
        v_prev=v,
        j=j + 1,
        key=state.key + broke.astype(jnp.int32),
    )


# Phase step of the restart vector sin(i * (j + 1) * phase + 1): 1 / (plastic number),
# an irrational step, so each breakdown index j gives a different vector.
RESTART_PHASE = 0.7548776662466927


def _dot(x, y, xp):
    """``x . y``; in numpy accumulated in float64 (returned in ``x``'s dtype)."""
    if xp is np:
        return x.dtype.type(np.einsum("i,i->", x, y, dtype=np.float64))
    return jnp.vdot(x, y)


def _norm(x, xp):
    """``||x||``; in numpy accumulated in float64, without BLAS (:func:`host_norm`)."""
    return host_norm(x) if xp is np else jnp.linalg.norm(x)


def _project_out(basis, x, used, xp):
    """``x`` with its components along rows ``0..used-1`` of ``basis`` removed,
    twice ("twice is enough", Giraud et al. 2005). numpy: on the slice of those
    rows, in place, by ``np.einsum`` rather than BLAS (OpenBLAS threads keep
    spinning after a call and slow down the XLA:CPU product that runs next:
    measured 13 -> 19 ms per product of the benchmark MLP). jax:
    :func:`_orthogonalize` (whole blocks of rows: rows from ``used`` to the end of
    their block must be zero)."""
    if xp is not np:
        return _orthogonalize(basis, x, used)
    q = basis[:used]
    for _ in range(2):
        x -= np.einsum("i,ij->j", np.einsum("ij,j->i", q, x), q)
    return x


def _set_row(basis, i, x, xp):
    """``basis`` with row ``i`` set to ``x`` (numpy: in place)."""
    if xp is np:
        basis[i] = x
        return basis
    return lax.dynamic_update_slice_in_dim(basis, x[None], i, 0)


def lanczos_step(basis, v, v_prev, w, beta_prev, j, xp=jnp):
    """One Lanczos step given ``w = A v`` (``v`` the ``j``-th Lanczos vector,
    ``v_prev`` the one before, zero at ``j = 0``, ``beta_prev`` the off-diagonal
    coupling them): the one implementation of the step, run by the device loop
    (:func:`lanczos_update`), traced into a compiled host-loop step (GPU/TPU) or
    run as numpy (``xp=np``: arrays in host memory, ``basis`` updated in place, ``w``
    not modified, ``alpha`` and ``beta`` accumulated in float64; nothing to compile).

    Computes ``alpha = v . w``, the residual ``w - alpha v - beta_prev v_prev``, with
    ``basis`` (rows ``0..j`` filled, ``v`` among them; or no rows: plain three-term
    recurrence) reorthogonalised against those rows only, ``beta`` its norm and the
    next vector ``v_next = residual / beta``, written into row ``j + 1`` of ``basis``
    (which needs ``j + 2`` rows). Returns ``(basis, v_next, v, [alpha, beta])``: the
    two scalars in one array so that a host loop reads them with one transfer and
    decides on stopping and breakdown (:func:`breakdown_tolerance`) itself. No
    branches, no eigensolver: the compiled program stays small and compiles fast.
    """
    alpha = _dot(v, w, xp)
    w = w - alpha * v - beta_prev * v_prev
    if basis.shape[0]:
        w = _project_out(basis, w, j + 1, xp)
    beta = _norm(w, xp)
    v_next = w / xp.where(beta > 0, beta, xp.ones((), beta.dtype))
    if basis.shape[0]:
        basis = _set_row(basis, j + 1, v_next, xp)
    return basis, v_next, v, xp.stack([alpha, beta])


def restart_vector(basis, v, j, xp=jnp):
    """The unit vector a Lanczos run continues with after breakdown at step ``j``: a
    deterministic pseudo-random vector (no RNG in the loop: it compiles slowly)
    orthogonalised against the first ``j + 1`` rows of ``basis`` (against ``v`` alone
    when ``basis`` has no rows). ``xp=np``: in numpy."""
    dtype = v.dtype
    phase = xp.asarray(RESTART_PHASE, dtype) * xp.asarray(j + 1).astype(dtype)
    r = xp.sin(xp.arange(v.shape[0], dtype=dtype) * phase + xp.asarray(1.0, dtype))
    if basis.shape[0]:
        r = _project_out(basis, r, j + 1, xp)
    elif xp is np:
        r = _project_out(v[None], r, 1, np)
    else:
        r = r - jnp.vdot(v, r) * v
    # Every direction used (j + 1 = n): nothing is left to restart with, and 0 / 0 would
    # put NaN in the basis, where a zero Ritz coefficient times NaN spoils the vectors.
    nrm = _norm(r, xp)
    return xp.where(nrm > 0, r / xp.where(nrm > 0, nrm, 1), 0).astype(dtype)


def restart_row(basis, v, j, xp=jnp):
    """After breakdown at step ``j`` (``v`` the ``j``-th Lanczos vector, rows
    ``0..j`` of ``basis`` filled): ``(basis, r)``, the restart vector ``r`` of
    :func:`restart_vector` written into row ``j + 1`` in place of the step's
    ``v_next`` (noise over a tiny ``beta``)."""
    if not basis.shape[0]:
        return basis, restart_vector(basis, v, j, xp)
    basis = _set_row(basis, j + 1, xp.zeros_like(v), xp)
    r = restart_vector(basis, v, j, xp)
    return _set_row(basis, j + 1, r, xp), r


def host_norm(x):
    """``||x||`` accumulated in float64, without BLAS (see :func:`_project_out`)."""
    return x.dtype.type(np.sqrt(np.einsum("i,i->", x, x, dtype=np.float64)))


def breakdown_tolerance(alphas, n: int, dtype, xp=np):
    """The residual norm at or below which a Lanczos step is a breakdown (the Krylov
    space is invariant): ``eps * sqrt(n) * max |alpha_i|``, the one test of both
    loops (numpy, ``alphas`` a list, accumulated in float64; or traced, ``xp=jnp``).
    Zero means every ``alpha`` so far is zero, also a breakdown."""
    if xp is np:
        alphas = np.asarray(alphas, np.float64)
        if alphas.shape[0] == 0:
            return 0.0
    return float(np.finfo(dtype).eps * np.sqrt(n)) * xp.max(xp.abs(alphas))


# Kuczynski and Wozniakowski, "Estimating the largest eigenvalue by the power and
# Lanczos algorithms with a random start", SIAM J. Matrix Anal. Appl. 13 (1992),
# theorem 4.2: for A symmetric positive semidefinite of order n and a start vector
# uniformly distributed on the unit sphere, the largest Ritz value theta_k after k
# Lanczos steps obeys P[theta_k <= (1 - eps) lambda_max] <= 1.648 sqrt(n) exp(-sqrt(eps) (2k - 1)).
RANDOM_START_CONSTANT = 1.648


def random_start_epsilon(n: int, steps: int, failure_probability: float) -> float:
    """The smallest relative error ``eps`` that Kuczynski and Wozniakowski's bound
    guarantees after ``steps`` Lanczos steps from a random start on an ``n x n``
    positive semidefinite matrix with probability ``1 - failure_probability``:
    ``1.648 sqrt(n) exp(-sqrt(eps) (2 steps - 1)) = failure_probability``, i.e.
    ``eps = (log(1.648 sqrt(n) / failure_probability) / (2 steps - 1))^2``
    (``inf`` before the first step; 0 when the bound holds for every ``eps``)."""
    if steps < 1 or n < 1:
        return float("inf")
    s = np.log(RANDOM_START_CONSTANT * np.sqrt(n) / failure_probability) / (2 * steps - 1)
    return float(max(s, 0.0) ** 2)


def random_start_bounds(theta_max, theta_min, n: int, steps: int, failure_probability: float):
    """Gap-free bounds ``(upper, lower)`` with ``lower <= lambda_min`` and
    ``lambda_max <= upper`` holding together with probability at least
    ``1 - failure_probability`` over a start vector uniform on the sphere.

    Lanczos is shift invariant, so the positive semidefinite bound
    (:func:`random_start_epsilon`) applies to ``H - lambda_min I`` and to
    ``lambda_max I - H``, each at half the failure probability (union bound):
    ``lambda_max - theta_max <= eps S`` and ``theta_min - lambda_min <= eps S`` with
    ``S = lambda_max - lambda_min``; hence ``S <= (theta_max - theta_min) / (1 - 2 eps)``
    and ``upper = theta_max + slack``, ``lower = theta_min - slack``,
    ``slack = eps (theta_max - theta_min) / (1 - 2 eps)``. No bound (``(inf, -inf)``)
    while ``eps >= 1/2``. Exact arithmetic is assumed: add the rounding error of the
    products to ``slack`` (:func:`stability.hessian_spectrum` does).
    """
    eps = random_start_epsilon(n, steps, failure_probability / 2)
    if not eps < 0.5:
        return float("inf"), float("-inf")
    slack = eps * (float(theta_max) - float(theta_min)) / (1 - 2 * eps)
    return float(theta_max) + slack, float(theta_min) - slack


def lanczos_extremes_host(
    alphas, betas, k: int, tol, want_smallest: bool = True, dtype=None
) -> Extremes:
    """:func:`lanczos_extremes` on the host, with numpy/LAPACK, from the ``j``
    coefficients computed so far (``alphas`` (j,), ``betas`` (j,), ``betas[j-1]`` the
    last residual norm): the same Ritz values, error bounds, flags and ``coeffs``
    ((k+1, j): Ritz coordinates of the top-k, then the smallest), without padding.
    The tridiagonal eigenproblem (float64; numpy's dense ``eigh`` up to 32 rows, so
    that short runs never import ``scipy.linalg``, about 0.2 s on the first call of a
    process; scipy's ``stemr`` beyond) costs microseconds at the sizes Lanczos
    reaches, far less than dispatching a compiled program for it.
    """
    dtype = np.dtype(dtype or np.asarray(alphas).dtype)
    a = np.asarray(alphas, np.float64)
    b = np.asarray(betas, np.float64)
    j = a.shape[0]
    if j == 0:
        nan, inf = np.full(k, np.nan, dtype), np.full(k, np.inf, dtype)
        no = np.zeros(k, bool)
        return Extremes(nan, inf, no, dtype.type(np.nan), dtype.type(np.inf), np.False_,
                        np.False_, np.zeros((k + 1, 0), dtype))  # fmt: skip
    if j == 1:
        theta, s = a.copy(), np.ones((1, 1))
    elif j <= 32:  # dense eigh of T: 20-700 us, no scipy import
        t = np.diag(a)
        i = np.arange(j - 1)
        t[i, i + 1] = t[i + 1, i] = b[: j - 1]
        theta, s = np.linalg.eigh(t)
    else:  # dense eigh grows as j^3 (33 ms at 200 rows; stemr: 4 ms)
        from scipy.linalg import eigh_tridiagonal as sp_eigh_tridiagonal

        theta, s = sp_eigh_tridiagonal(a, b[: j - 1], lapack_driver="stemr")
    wanted = _wanted(j, k, np)
    return _ritz_extremes(theta.astype(dtype), s[:, wanted].T.astype(dtype), dtype.type(b[j - 1]),
                          j, k, tol, want_smallest, np)  # fmt: skip


def lanczos_extremes(state: LanczosState, k: int, tol, want_smallest: bool = True) -> Extremes:
    """Ritz values, error bounds and convergence flags from ``T_j``.

    Error of a Ritz value: its residual ``r = |beta_j| |s[j-1]|``, a rigorous bound
    (some eigenvalue lies within ``r``). The sharper Kato-Temple estimate ``r^2 / gap``
    is not used: it needs the distance to the rest of the spectrum, and the Ritz gap
    that would stand in for it overstates that distance when a cluster is not yet
    resolved (a "converged" value 600,000 error bars away from every eigenvalue was
    observed on a spectrum with a cluster at 0).

    Runs inside jit with static shapes: ``T`` is padded to (m, m) with a
    decoupled diagonal block ``c I``, ``c`` above the Gershgorin bound of the active
    part, so the active Ritz values are exactly the ``j`` smallest eigenvalues.
    """
    alphas, betas, j = state.alphas, state.betas, state.j
    m = alphas.shape[0]
    idx = jnp.arange(m, dtype=jnp.int32)
    active = idx < j
    off = jnp.where(idx < j - 1, betas, 0)
    a_act = jnp.where(active, alphas, 0)
    gersh = jnp.max(jnp.abs(a_act)) + 2 * jnp.max(jnp.abs(off))
    c = 2 * gersh + 1
    diag = jnp.where(active, alphas, c)
    wanted = _wanted(j, k, jnp)
    theta, vecs = _tridiag_eig(diag, off, active, j, wanted)
    beta_last = betas[jnp.maximum(j - 1, 0)]
    ext = _ritz_extremes(theta, vecs, beta_last, j, k, tol, want_smallest, jnp)
    return ext._replace(coeffs=jnp.where(active[None, :], ext.coeffs, 0))


def _top_indices(j, k: int, xp):
    """``j - 1, j - 2, ..., j - k``: the top ``k`` of ``j`` Ritz values in ascending
    order (negative where ``j < k``)."""
    return j - 1 - xp.arange(k, dtype=np.int32)


def _wanted(j, k: int, xp):
    """Indices of the Ritz values whose eigenvectors :func:`_ritz_extremes` reads: the
    top ``k`` (:func:`_top_indices`, 0 where negative), then the smallest (0)."""
    top = xp.maximum(_top_indices(j, k, xp), 0)
    return xp.concatenate([top, xp.zeros(1, top.dtype)])


def _ritz_extremes(theta, vecs, beta_last, j, k: int, tol, want_smallest: bool, xp) -> Extremes:
    """The one Ritz extraction of both Lanczos loops (numpy ``xp=np`` with ``j``
    values; jax with ``T`` padded above the active block): from the Ritz values
    ``theta`` (ascending, the first ``j`` active) and the unit eigenvectors ``vecs``
    of ``T_j`` for :func:`_wanted` (rows), the top ``k`` values and the smallest with
    their residual bounds ``|beta_j| |s[j-1]|``, flagged converged at
    ``residual <= tol * max(|theta_max|, |theta_min|)`` (all in ``theta``'s dtype)."""
    dtype = theta.dtype
    last = xp.maximum(j - 1, 0)
    res = xp.abs(beta_last) * xp.abs(vecs[:, last])
    valid = _top_indices(j, k, xp) >= 0
    top = xp.where(valid, theta[_wanted(j, k, xp)[:k]], xp.asarray(np.nan, dtype))
    top_err = xp.where(valid, res[:k], xp.asarray(np.inf, dtype))
    smallest, smallest_err = theta[0], res[k]
    thresh = xp.asarray(tol, dtype) * xp.maximum(xp.abs(theta[last]), xp.abs(smallest))
    top_conv = valid & (top_err <= thresh)
    small_conv = (j > 0) & (smallest_err <= thresh)
    done = xp.all(top_conv) & (small_conv if want_smallest else True)
    return Extremes(top, top_err, top_conv, smallest, smallest_err, small_conv, done, vecs)


def _tridiag_eig(diag, off, active, j, wanted):
    """All eigenvalues (ascending) of the padded tridiagonal and unit eigenvectors
    for the indices ``wanted``.

    On CPU the host is the device, so LAPACK's ``stemr`` through
    ``scipy.linalg.eigh_tridiagonal`` is called with ``jax.pure_callback`` (no
    transfer; XLA's own bisection compiles for seconds and its dense CPU eigh takes
    seconds at m = 300). On GPU/TPU everything stays on the device: bisection
    (``jax.scipy.linalg.eigh_tridiagonal``) and inverse iteration.
    """
    m = diag.shape[0]
    dtype = diag.dtype
    if host_is_device():
        shapes = (
            jax.ShapeDtypeStruct((m,), dtype),
            jax.ShapeDtypeStruct((wanted.shape[0], m), dtype),
        )
        return jax.pure_callback(_host_tridiag_eig, shapes, diag, off, j, wanted)
    theta = jnp.sort(eigh_tridiagonal(diag, off[:-1], eigvals_only=True))
    return theta, _tridiag_vectors(diag, off, active, theta[wanted])


def _host_tridiag_eig(diag, off, j, wanted):
    from scipy.linalg import eigh_tridiagonal as sp_eigh_tridiagonal

    diag, off = np.asarray(diag), np.asarray(off)
    m, j = diag.shape[0], int(j)
    theta = np.sort(diag.copy())  # padding values: above every active eigenvalue
    vecs = np.zeros((len(wanted), m), diag.dtype)
    if j > 0:
        w, v = sp_eigh_tridiagonal(
            diag[:j].astype(np.float64), off[: j - 1].astype(np.float64), lapack_driver="stemr"
        ) if j > 1 else (diag[:1].astype(np.float64), np.ones((1, 1)))  # fmt: skip
        theta[:j] = w
        theta[j:] = diag[j:]
        idx = np.clip(np.asarray(wanted), 0, j - 1)
        vecs[:, :j] = v[:, idx].T
    return theta.astype(diag.dtype), vecs


def _tridiag_vectors(diag, off, active, thetas, iters: int = 3):
    """Unit eigenvectors of the symmetric tridiagonal (diag, off) for eigenvalues
    ``thetas`` by inverse iteration (``iters`` tridiagonal solves each), supported on
    the ``active`` rows."""
    m = diag.shape[0]
    dtype = diag.dtype
    dl = jnp.concatenate([jnp.zeros((1,), dtype), off[:-1]])
    du = jnp.concatenate([off[:-1], jnp.zeros((1,), dtype)])
    scale = jnp.max(jnp.where(active, jnp.abs(diag), 0)) + 2 * jnp.max(jnp.abs(off))
    # A tiny shift keeps T - theta I non-singular; the solve then amplifies the
    # wanted eigenvector by ~1/shift.
    shift = jnp.finfo(dtype).eps * jnp.maximum(scale, jnp.finfo(dtype).tiny)
    start = jnp.where(active, 1.0 + 0.1 * jnp.sin(jnp.arange(m, dtype=dtype)), 0).astype(dtype)

    def one(theta):
        x = start
        for _ in range(iters):
            x = lax.linalg.tridiagonal_solve(
                dl, diag - theta + shift, du, x[:, None], perturb_singular=True
            )[:, 0]
            x = jnp.where(active & jnp.isfinite(x), x, 0)
            x = x / jnp.maximum(jnp.linalg.norm(x), jnp.finfo(dtype).tiny)
        return x

    return jax.vmap(one)(thetas)


class PowerState(NamedTuple):
    """Subspace iteration state: ``vecs`` (k, n) orthonormal; ``low`` (n,) the vector
    for the smallest eigenvalue (shifted power iteration); the latest Ritz values
    and residual norms; ``count`` products used."""

    vecs: jax.Array
    low: jax.Array
    top: jax.Array
    top_res: jax.Array
    smallest: jax.Array
    smallest_res: jax.Array
    iters: jax.Array


def _orthonormal_rows(x):
    q, _ = jnp.linalg.qr(x.T)
    return q.T


def power_init(v0: jax.Array, want_smallest: bool = True) -> PowerState:
    """``v0`` (k (+1), n): start vectors; the last row is the smallest-eigenvalue vector
    when ``want_smallest``."""
    dtype = v0.dtype
    if want_smallest:
        vecs, low = v0[:-1], _normalize(v0[-1])[0]
    else:
        vecs, low = v0, jnp.zeros((v0.shape[1],), dtype)
    k = vecs.shape[0]
    nan = jnp.full((), jnp.nan, dtype)
    return PowerState(
        vecs=_orthonormal_rows(vecs),
        low=low,
        top=jnp.full((k,), jnp.nan, dtype),
        top_res=jnp.full((k,), jnp.inf, dtype),
        smallest=nan,
        smallest_res=jnp.full((), jnp.inf, dtype),
        iters=jnp.zeros((), jnp.int32),
    )


def power_query(state: PowerState, want_smallest: bool = True) -> jax.Array:
    """Vectors to multiply by A next: (k (+1), n)."""
    if want_smallest:
        return jnp.concatenate([state.vecs, state.low[None]], axis=0)
    return state.vecs


def power_update(state: PowerState, w: jax.Array, want_smallest: bool = True) -> PowerState:
    """One subspace-iteration step given ``w = A query``."""
    k = state.vecs.shape[0]
    aw = w[:k]
    # Rayleigh-Ritz on span(vecs): H_k = V A V^T.
    h = state.vecs @ aw.T
    h = (h + h.T) / 2
    theta, s = jnp.linalg.eigh(h)
    order = jnp.argsort(-theta)
    theta, s = theta[order], s[:, order]
    y = s.T @ state.vecs
    ay = s.T @ aw
    res = jnp.linalg.norm(ay - theta[:, None] * y, axis=1)
    vecs = _orthonormal_rows(ay)
    low, smallest, smallest_res = state.low, state.smallest, state.smallest_res
    if want_smallest:
        al = w[k]
        rho = jnp.vdot(state.low, al)
        smallest = rho
        smallest_res = jnp.linalg.norm(al - rho * state.low)
        sigma = theta[0]
        low = _normalize(al - sigma * state.low)[0]
    return PowerState(vecs, low, theta, res, smallest, smallest_res, state.iters + 1)


def power_extremes(state: PowerState, tol, want_smallest: bool = True) -> Extremes:
    """Estimates and convergence flags (residual <= tol * spectral-norm estimate)."""
    dtype = state.top.dtype
    norm_est = jnp.maximum(jnp.abs(state.top[0]), jnp.abs(state.smallest))
    norm_est = jnp.where(jnp.isnan(norm_est), jnp.abs(state.top[0]), norm_est)
    thresh = jnp.asarray(tol, dtype) * norm_est
    top_conv = state.top_res <= thresh
    small_conv = state.smallest_res <= thresh
    done = jnp.all(top_conv)
    if want_smallest:
        done = done & small_conv
    else:
        small_conv = jnp.zeros((), bool)
    coeffs = jnp.zeros((0, 0), dtype)
    return Extremes(
        state.top, state.top_res, top_conv, state.smallest, state.smallest_res, small_conv, done,
        coeffs,
    )  # fmt: skip


def run_in_jit(
    matvec: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    *,
    k: int,
    tol,
    max_matvecs: int,
    method: str = "lanczos",
    reorthogonalize: bool = True,
    want_smallest: bool = True,
):
    """Run Lanczos or power iteration with ``lax.while_loop`` (traceable ``matvec``).

    ``v0``: (n,) start vector for Lanczos, (k (+1), n) for power iteration.
    ``max_matvecs`` bounds the number of products (static; for Lanczos it is also the
    basis size). Returns ``(state, extremes, num_matvecs)``.
    """
    if method == "lanczos":
        state = lanczos_init(v0, max_matvecs, reorthogonalize)

        def cond(carry):
            state, ext = carry
            return (state.j < max_matvecs) & ~ext.done & jnp.all(jnp.isfinite(state.alphas))

        def body(carry):
            state, _ = carry
            state = lanczos_update(state, matvec(state.v))
            return state, lanczos_extremes(state, k, tol, want_smallest)

        ext = lanczos_extremes(state, k, tol, want_smallest)
        state, ext = lax.while_loop(cond, body, (state, ext))
        return state, ext, state.j
    if method == "power":
        state = power_init(v0, want_smallest)
        per = v0.shape[0]

        def cond(carry):
            state, ext = carry
            ok = ~jnp.any(jnp.isnan(state.top_res))
            return ((state.iters + 1) * per <= max_matvecs) & ~ext.done & ok

        def body(carry):
            state, _ = carry
            w = jax.vmap(matvec)(power_query(state, want_smallest))
            state = power_update(state, w, want_smallest)
            return state, power_extremes(state, tol, want_smallest)

        ext = power_extremes(state, tol, want_smallest)
        state, ext = lax.while_loop(cond, body, (state, ext))
        return state, ext, state.iters * per
    raise ValueError(f"method must be 'lanczos' or 'power'; got {method!r}")


def eigsh_extremes(
    matvec: Callable,
    v0,
    *,
    k: int = 1,
    tol=1e-6,
    max_matvecs: int = 100,
    method: str = "lanczos",
    reorthogonalize: bool = True,
    want_smallest: bool = True,
    seed: int = 0,
):
    """Extreme eigenvalues of a symmetric operator given as a function.

    ``matvec`` maps a vector to ``A`` times it; ``v0`` is a flat vector or a pytree
    (then ``matvec`` takes and returns pytrees of the same structure). Runs in one
    ``jax.jit``. Returns :class:`Extremes` (``coeffs`` dropped) and the number of
    products. Ritz vectors are not formed here; see
    :func:`stability.hessian_spectrum` for eigenvectors.
    """
    from jax.flatten_util import ravel_pytree

    flat0, unravel = ravel_pytree(v0)

    def flat_matvec(x):
        return ravel_pytree(matvec(unravel(x)))[0]

    key = jax.random.key(seed)
    if method == "power":
        rows = k + (1 if want_smallest else 0)
        start = jax.random.normal(key, (rows, flat0.shape[0]), flat0.dtype)
        start = start.at[0].set(flat0)
    else:
        start = flat0
    _, ext, count = run_in_jit(
        flat_matvec, start, k=k, tol=tol, max_matvecs=min(max_matvecs, flat0.shape[0])
        if method == "lanczos" else max_matvecs, method=method,
        reorthogonalize=reorthogonalize, want_smallest=want_smallest,
    )  # fmt: skip
    return ext._replace(coeffs=None), count
