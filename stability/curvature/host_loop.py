"""The eigensolver driven from Python: one compiled Hessian-vector product per step.

On CPU, XLA runs a model inside a ``lax.while_loop`` much slower than the same
jitted product called from the host (11 products of a 0.47M-parameter CNN: 87 s
in one while loop, 7.7 s host-driven), and the host is the device, so reading a
product back costs no copy: there `stability.hessian_spectrum` drives Lanczos (or
power iteration) from Python with these functions, one product and one step per
iteration. The device loop (`stability.curvature.lanczos.run_in_jit`) runs on
GPU/TPU. Both take their step (`lanczos_step`), breakdown test, restart and Ritz
extraction (`lanczos_extremes_host` here) from `stability.curvature.lanczos`.

- `host_steps`: the Lanczos recurrence, one product per ``next`` (numpy on CPU,
  the compiled step with the basis on the devices elsewhere);
- `host_lanczos`: a run with its stopping test; `host_replay`: Ritz vectors
  without a stored basis (the recurrence again from the same start);
- `host_power`: subspace iteration.

A product is ``hv(v) -> (sum_i H_i v, scale)``, the mean-loss product being
``scale * sum``.
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from stability.curvature import hvp as _hvp
from stability.curvature import lanczos as _lz
from stability.curvature.backend import host_is_device

# Bytes of Krylov basis allocated up front by the host loop; the basis doubles (up
# to max_hvps + 1 rows) when a run needs more. Zeroing a full max_hvps-row basis
# (70 MB for 200 x 85k float32) took longer than two Hessian-vector products of that
# model, and most runs stop after tens of products.
BASIS_BYTES = 16 * 2**20


@partial(jax.jit, donate_argnames=("basis", "v_prev"))
def _lanczos_step(basis, v, v_prev, hv, scale, beta_prev, j):
    """:func:`stability.curvature.lanczos.lanczos_step` compiled, on ``w = scale *
    hv``: the host loop's step on GPU/TPU, the only program besides the product that
    runs per iteration; ``basis`` is updated in place (donated)."""
    return _lz.lanczos_step(basis, v, v_prev, hv * scale, beta_prev, j)


@partial(jax.jit, donate_argnames=("basis",))
def _restart(basis, v, j):
    """:func:`stability.curvature.lanczos.restart_row` compiled (GPU/TPU); compiled
    only if a run breaks down."""
    return _lz.restart_row(basis, v, j)


@partial(jax.jit, static_argnames=("want_smallest",), donate_argnames=("state",))
def _power_step(state, w, tol, *, want_smallest):
    state = _lz.power_update(state, w, want_smallest)
    return state, _lz.power_extremes(state, tol, want_smallest)


def put(x, mesh):
    """A host array onto the device (replicated over the mesh), without a compile."""
    return jax.device_put(x) if mesh is None else _hvp.replicate(x, mesh)


def _basis_rows(n, dtype, max_hvps, reorthogonalize):
    """``(first, full)``: rows of the first basis allocation and the most a run can
    need. ``full`` is ``max_hvps + 1`` rounded up to the block size; ``first`` is
    ``full`` when that fits in ``BASIS_BYTES``, else as many blocks as fit (at least
    two); both 0 without reorthogonalisation."""
    if not reorthogonalize:
        return 0, 0
    blk = _lz.BLOCK
    full = -(-(max_hvps + 1) // blk) * blk
    fit = max(2, BASIS_BYTES // (n * np.dtype(dtype).itemsize * blk)) * blk
    return min(full, fit), full


def _grow(basis, rows):
    """The basis with zero rows appended up to ``rows`` (on a device: a new shape, the
    step program compiles once more; the product program does not)."""
    extra = np.zeros((rows - basis.shape[0], basis.shape[1]), basis.dtype)
    if isinstance(basis, np.ndarray):
        return np.concatenate([basis, extra])
    return jnp.concatenate([basis, jax.device_put(extra, basis.sharding)])


def step_on_host(mesh) -> bool:
    """Whether the host loop keeps its basis in numpy and steps there: when the
    products run on CPU devices, whose memory is host memory (reading a product
    back costs no copy). On GPU/TPU the basis stays on the device and the step is
    the compiled :func:`_lanczos_step` (one transfer of two scalars per step)."""
    devices = mesh.devices.flat if mesh is not None else jax.devices()[:1]
    return host_is_device() and all(d.platform == "cpu" for d in devices)


def _namespace(mesh):
    """``np`` when the host loop steps in numpy (:func:`step_on_host`), else ``jnp``."""
    return np if step_on_host(mesh) else jnp


def _step(xp, basis, v, v_prev, hv, scale, beta_prev, j: int):
    """One host-loop Lanczos step on ``w = scale * hv``: the numpy
    :func:`stability.curvature.lanczos.lanczos_step` (``xp=np``, CPU) or the same
    step compiled (:func:`_lanczos_step`)."""
    if xp is np:
        return _lz.lanczos_step(basis, v, v_prev, np.asarray(hv) * scale, beta_prev, j, np)
    return _lanczos_step(basis, v, v_prev, hv, scale, beta_prev, np.int32(j))


def _restart_row(xp, basis, v, j: int):
    """After breakdown at step ``j``: ``(basis, restart vector)``, numpy or compiled."""
    if xp is np:
        return _lz.restart_row(basis, v, j, np)
    return _restart(basis, v, np.int32(j))


def _first_vectors(xp, v0, rows, mesh):
    """``(basis, v, v_prev)`` at step 0: a ``rows``-row basis holding the unit start
    vector in row 0 (no rows: no basis), the start vector and zeros; in numpy or on
    the devices (``xp``)."""
    n, dtype = v0.shape[0], v0.dtype
    v = (v0 / _lz.host_norm(v0)).astype(dtype)
    basis = np.zeros((rows, n), dtype)
    if rows:
        basis[0] = v
    out = (basis, v, np.zeros(n, dtype))
    return out if xp is np else tuple(put(x, mesh) for x in out)


def host_steps(hv, v0, mesh, rows, full):
    """Lanczos driven from Python, one step per ``next``: one product ``hv(v) ->
    (sum, scale)`` (one compiled program for one batch) and one Lanczos step (numpy
    on CPU, else the compiled :func:`_lanczos_step` and one transfer of the two
    scalars ``alpha`` and ``beta``; :func:`_step`), a restart on breakdown. The basis
    starts with ``rows`` rows (none: no reorthogonalisation) and doubles up to
    ``full``. Yields ``(basis, v_next, alpha, beta)`` after each product."""
    n, dtype = v0.shape[0], v0.dtype
    xp = _namespace(mesh)
    basis, v, v_prev = _first_vectors(xp, v0, rows, mesh)
    alphas = []
    beta_prev = np.zeros((), dtype)
    for j in itertools.count():
        if rows and basis.shape[0] < j + 2:
            basis = _grow(basis, min(2 * basis.shape[0], full))
        w, scale = hv(put(v, mesh) if xp is np else v)
        basis, v, v_prev, ab = _step(xp, basis, v, v_prev, w, scale, beta_prev, j)
        alpha, beta = np.asarray(ab)  # on GPU/TPU the one device -> host transfer per step
        if not (np.isfinite(alpha) and np.isfinite(beta)):
            raise ValueError("the Hessian-vector product is not finite (NaN or inf)")
        alphas.append(alpha)
        tiny = _lz.breakdown_tolerance(alphas, n, dtype)
        if beta <= tiny or tiny == 0:  # invariant subspace: restart (T decouples)
            basis, v = _restart_row(xp, basis, v_prev, j)
            beta = dtype.type(0)
        beta_prev = np.asarray(beta, dtype)
        yield basis, v, alpha, beta


def host_lanczos(hv, v0, mesh, *, k, tol, max_hvps, reorthogonalize, want_smallest,
                  bar, stop_when=None):  # fmt: skip
    """Lanczos from the host (:func:`host_steps`); after each step the tridiagonal
    eigenproblem and the stopping test run in numpy
    (:func:`stability.curvature.lanczos.lanczos_extremes_host`). ``max_hvps >= 1``.
    Returns ``(basis, extremes, count)``."""
    n, dtype = v0.shape[0], v0.dtype
    rows, full = _basis_rows(n, dtype, max_hvps, reorthogonalize)
    alphas, betas = [], []
    for step in itertools.islice(host_steps(hv, v0, mesh, rows, full), max_hvps):
        basis, _, alpha, beta = step
        alphas.append(alpha)
        betas.append(beta)
        ext = _lz.lanczos_extremes_host(alphas, betas, k, tol, want_smallest, dtype)
        bar.update(1)
        bar.set_postfix(sharpness=f"{ext.top[0]:.6g}", residual=f"{ext.top_error[0]:.2g}")
        if ext.done if stop_when is None else stop_when(ext, len(alphas), len(alphas)):
            break
    return basis, ext, len(alphas)


def host_replay(hv, v0, mesh, coeffs, count):
    """Ritz vectors ``coeffs @ V`` without a stored basis: the recurrence replayed
    from the same start (:func:`host_steps`, ``count - 1`` products: the last vector
    needs none), accumulated on the host. Returns ``(y, products)``."""
    coeffs = np.asarray(coeffs)
    v = np.asarray(_first_vectors(np, v0, 0, None)[1])
    y = coeffs[:, :1] * v[None, :]
    steps = host_steps(hv, v0, mesh, 0, 0)
    for j in range(1, count):
        v = np.asarray(next(steps)[1])
        y += coeffs[:, j : j + 1] * v[None, :]
    return y, max(count - 1, 0)


def host_power(hv, v0, *, tol, max_hvps, want_smallest, bar, stop_when=None):
    """Subspace iteration driven from Python: per iteration one product of the block
    of vectors ``hv(vecs) -> (sum, scale)`` and one jitted step."""
    state = _lz.power_init(jnp.asarray(v0), want_smallest)
    per = v0.shape[0]
    tol = jnp.asarray(tol, v0.dtype)
    ext = _lz.power_extremes(state, tol, want_smallest)
    count = 0
    while count + per <= max_hvps:
        acc, scale = hv(_lz.power_query(state, want_smallest))
        w = acc * scale
        state, ext = _power_step(state, w, tol, want_smallest=want_smallest)
        count += per
        bar.update(per)
        done, top = jax.device_get((ext.done, ext.top[0]))
        if not np.isfinite(top):
            raise ValueError("the Hessian-vector product is not finite (NaN or inf)")
        if done if stop_when is None else stop_when(jax.device_get(ext), count, 0):
            break
    return state, ext, count
