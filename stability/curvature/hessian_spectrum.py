"""Extreme eigenvalues of the full-data Hessian of a loss: ``hessian_spectrum``.

Computes the ``k`` largest eigenvalues and the smallest eigenvalue of
``H = nabla^2 L(w)``, ``L(w) = (1/N) sum_i loss_i(w)`` the mean loss over all
``N`` examples, with a residual error bound for each, by Lanczos with full
reorthogonalisation (default) or power iteration on Hessian-vector products
(forward-over-reverse, :mod:`stability.curvature.hvp`; Lanczos in
:mod:`stability.curvature.lanczos`).

Data
    ``data=None``: ``loss(params)``. Otherwise ``loss(params, batch)`` must return the
    MEAN loss over ``batch`` (a pytree of arrays sharing a leading batch axis).
    ``data`` is one batch (any pytree other than a ``list``), a ``list`` of batches,
    a re-iterable (e.g. a data loader: ``iter(data)`` is called once per pass), or a
    callable returning a fresh iterator of batches. Batches are weighted by their
    size, so unequal batches give the Hessian of the mean over all examples. Each
    Hessian-vector product is a full pass over the data. A loss whose value couples
    the examples of a batch (batch statistics in training mode) must carry
    ``loss.couples_examples = True`` (``loss_from_model(..., train=True)`` sets it):
    its batches are then never split over the devices into a sharded part and a
    replicated remainder (a batch that does not divide runs whole, replicated).

Execution
    One batch (or ``data=None``) on GPU/TPU: the whole Lanczos loop runs inside one
    ``jax.jit`` (``lax.while_loop``), no host round trip (``loop="device"``; on CPU
    the default drives the loop from the host, see ``loop``). Several batches: the
    outer loop runs on the host and each product is a jitted accumulation over the
    batches (a tqdm bar counts the products unless ``progress=False``). Each
    host-loop iteration runs the product (one compiled program per batch) and one
    Lanczos step (in-place basis update, reorthogonalisation against the filled
    rows only): in numpy on CPU, where device memory is host memory, so the product
    is the only compiled program; on GPU/TPU a small compiled step keeps the basis
    on the device and only two scalars come back. The tridiagonal eigenproblem and
    the stopping test run in numpy. :func:`stability.enable_compilation_cache` keeps
    compiled programs on disk for later processes; within a process compiled code
    is cached on the loss function object and the shapes, so a second call does
    not compile again.

Devices
    Data-parallel over ``devices`` (default: ``jax.devices()``): each batch is split
    over a 1-D mesh axis, parameters replicated; batch sizes that are not a multiple
    of the device count are exact (the remainder runs replicated, see
    :mod:`stability.curvature.hvp`). Several processes (``jax.distributed``, e.g. one per host):
    call ``jax.distributed.initialize()`` on every process first, then
    ``hessian_spectrum`` on every process with the SAME params, seed and arguments
    and that process's own share of the data: any number of examples, any number of
    batches. Each process runs the product over its share on its own devices
    (``jax.local_devices()``), and each product (and the example count, once) is
    summed over processes with one all-gather, so every process holds the same
    Krylov vectors and takes the same decisions; the Lanczos loop runs on the host.
    A process whose data fails a check shares that first: every process raises
    (the others a ``RuntimeError`` naming it) rather than waiting in a collective.
    A process that dies without raising is detected by ``jax.distributed``'s
    heartbeat (``heartbeat_timeout_seconds``). Tested with 2 processes x 2 CPU
    devices and gloo collectives (``tests/test_multiprocess.py``).

Memory
    Nothing of size ``n^2``. Lanczos with ``reorthogonalize=True`` keeps the Krylov
    basis: up to ``(max_hvps + 1) x n`` numbers (100 products of a 0.5M-parameter
    float32 model: 200 MB). The host loop allocates ``BASIS_BYTES`` (16 MiB, at
    least 16 rows) first and doubles it when a run needs more rows (the step
    program then compiles once more); the device loop allocates all rows.
    ``reorthogonalize=False`` keeps three vectors (eigenvectors then cost a second
    pass that replays the recurrence); ``method="power"`` keeps ``k + 1``. A full
    basis that would not fit in ``memory_budget`` (default: half the memory available
    where it lives) is refused before the first product, with a warning, and the run
    goes basis-free.

Accuracy
    The Ritz residual ``r_i = ||H y_i - theta_i y_i||`` bounds ``|theta_i - lambda|``
    for some eigenvalue ``lambda``. ``errors`` is ``r_i``, floored at the rounding
    error of the products (``10 eps max |theta|``). The sharper Kato-Temple estimate
    ``r^2 / gap`` is not offered: with the Ritz gap standing in for the unknown true
    gap it claimed convergence far from every eigenvalue on clustered spectra. Which
    eigenvalue a
    residual bound brackets is presumed (the top Ritz value approximates
    ``lambda_max``); :meth:`HessianSpectrum.bounds` gives gap-free bounds that hold
    with a stated probability over the random start (Kuczynski and Wozniakowski 1992).
    A value is converged when its error is ``<= tol * max(|theta_max|, |theta_min|)``.
    Unconverged values are flagged, never hidden.

Precision
    Products below float64 (float32, JAX's default; bfloat16; float16) are exact for
    the arithmetic they run, which can be a few per cent from the Hessian of a network
    trained to a minimum (saturated softmax, ReLU kinks). At the end of such a run the
    top Ritz vectors are multiplied once more in float64
    (`stability.curvature.verification`; ``verify=None``): the values become float64
    Rayleigh quotients, the errors float64 residuals plus ``product_error``, the
    difference between the two precisions along the top vector, and when that no
    longer passes the stopping test the run goes on in float64 from those vectors.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.curvature import host_loop as _loop
from stability.curvature import hvp as _hvp
from stability.curvature import lanczos as _lz
from stability.curvature import preconditioner as _pre
from stability.curvature import verification as _check
from stability.curvature.backend import host_is_device
from stability.curvature.inputs import (
    check_leaves,
    check_loss_shape,
    check_loss_value,
    check_params,
    classify_data,
)
from stability.progress import progress_bar
from stability.validation import check_int, check_positive, check_scalar

__all__ = ["HessianSpectrum", "hessian_spectrum"]

METHODS = ("lanczos", "power")


class HessianSpectrum(NamedTuple):
    """Extreme Hessian eigenvalues with rigorous error bounds.

    eigenvalues: (k,) largest Ritz values, descending. errors: (k,) their error
    bounds: the Ritz residual ``||H y - theta y||`` (some eigenvalue of ``H`` lies within
    it), floored at the rounding error of the products (``rounding_error``).
    converged: (k,) bool, ``error <= tol * max(|theta_max|, |theta_min|)``.
    smallest, smallest_error, smallest_converged: the same for the smallest Ritz
    value (always from the same Krylov space; waited for only with
    ``converge_smallest=True``). num_hvps: Hessian-vector products used.
    eigenvectors: pytree like params with a leading axis k (unit norm over all
    differentiated leaves), or None. num_params: the order ``n`` of the Hessian.
    lanczos_steps: the dimension of the Krylov space (0 for power iteration), for
    :meth:`bounds`. rounding_error: the error floor of the products
    (``10 eps max |theta|`` in the working precision). random_start: False when the
    run was warm-started (``start=``): :meth:`bounds` then claims nothing.

    A residual bound says that SOME eigenvalue lies within it; that this one is
    ``lambda_max`` is presumed (true unless the start vector is nearly orthogonal to
    the top eigenvector). :meth:`bounds` gives gap-free bounds on ``lambda_max`` and
    ``lambda_min`` that hold with a stated probability over the random start.
    """

    eigenvalues: np.ndarray
    errors: np.ndarray
    converged: np.ndarray
    smallest: float
    smallest_error: float
    smallest_converged: bool
    num_hvps: int
    eigenvectors: Any = None
    num_params: int = 0
    lanczos_steps: int = 0
    rounding_error: float = 0.0
    random_start: bool = True
    product_error: float = 0.0

    @property
    def sharpness(self) -> float:
        """The largest eigenvalue."""
        return float(self.eigenvalues[0])

    @property
    def sharpness_error(self) -> float:
        """Its residual error bound."""
        return float(self.errors[0])

    def bounds(self, failure_probability: float = 1e-6) -> tuple[float, float]:
        """``(upper, lower)``: ``lower <= lambda_min`` and ``lambda_max <= upper`` with
        probability at least ``1 - failure_probability`` over the random start vector,
        whatever the gaps in the spectrum (Kuczynski and Wozniakowski 1992, see
        :func:`stability.curvature.lanczos.random_start_bounds`), widened by ``rounding_error``.
        ``(inf, -inf)`` until enough Lanczos steps have run, for power iteration, and
        for a warm start (``random_start=False``: the theorem needs a start vector
        uniformly distributed on the sphere)."""
        if not 0 < failure_probability < 1:
            raise ValueError(f"failure_probability must be in (0, 1); got {failure_probability!r}")
        if not self.random_start:
            return float("inf"), float("-inf")
        upper, lower = _lz.random_start_bounds(
            self.eigenvalues[0], self.smallest, self.num_params, self.lanczos_steps,
            failure_probability,
        )  # fmt: skip
        return upper + self.rounding_error, lower - self.rounding_error

    def __repr__(self) -> str:
        top = ", ".join(
            f"{v:.6g} ± {e:.2g}{'' if c else ' (not converged)'}"
            for v, e, c in zip(self.eigenvalues, self.errors, self.converged, strict=True)
        )
        small = f"{self.smallest:.6g} ± {self.smallest_error:.2g}"
        if not self.smallest_converged:
            small += " (not converged)"
        vecs = "" if self.eigenvectors is None else ", with eigenvectors"
        return f"HessianSpectrum(top=[{top}], smallest={small}, num_hvps={self.num_hvps}{vecs})"


# ----------------------------------------------------------------- input handling


@lru_cache(maxsize=32)
def _ignore_batch(loss):
    """``loss(params)`` as ``loss(params, batch)`` (one object per ``loss``, so
    compiled code is reused across calls)."""
    return lambda params, batch: loss(params)


# --------------------------------------------------------------- fused (one jit)


def _start(seed, n, dtype, k, method, want_smallest):
    # On the host with numpy: deterministic in the seed, identical on every process,
    # and no RNG to compile inside the jitted loop.
    rng = np.random.default_rng(seed)
    shape = (k + (1 if want_smallest else 0), n) if method == "power" else (n,)
    return rng.standard_normal(shape).astype(dtype)


# Weight of the random unit vector added to a warm start's unit direction (1e-8 of
# the start's energy). Every eigenvector then has a component of about
# WARM_START_NOISE / sqrt(n) in the start, so a top direction that the previous
# estimate did not hold (an eigenvalue that overtook it) is in the Krylov space, and
# Lanczos grows it by a Chebyshev factor per step: with relative gap g it dominates
# after about ln(sqrt(n) / WARM_START_NOISE) / (2 sqrt(g)) steps. A check that
# converges on the old direction sooner stops there, hence the tracker's periodic
# cold starts. Kept a tenth of the tracker's tol=1e-3, so that the noise alone does
# not hold the start's residual above that tolerance: with 0.01 (or 1e-3) no warm
# check of benchmarks/tracking.py could stop after one product, with 1e-4 11 of 38
# did (extrapolated starts). The noise found an overtaking top direction
# within a tol=1e-3 check in 2 of 20 trials at 0.01 and in none at 1e-3 and 1e-4
# (quadratics, n = 200 and 20,000, started on the second eigenvector exactly).
WARM_START_NOISE = 1e-4


def _start_directions(start, params, mask, n):
    """The unit direction rows (m, n) of a warm start: the eigenvectors of a
    :class:`HessianSpectrum` (``return_vectors=True``) or one params-like pytree."""
    if isinstance(start, HessianSpectrum):
        if start.eigenvectors is None:
            raise ValueError(
                "start must hold eigenvectors: pass the result of hessian_spectrum(..., "
                "return_vectors=True), or a pytree like params; got a HessianSpectrum "
                "without eigenvectors"
            )
        tree, batched = start.eigenvectors, True
    else:
        tree, batched = start, False
    leaves = jax.tree_util.tree_leaves(tree)
    if len(leaves) != len(mask):
        raise ValueError(
            f"start must have the structure of params ({len(mask)} leaves); got "
            f"{len(leaves)} leaves"
        )
    sel = [np.asarray(x) for x, m in zip(leaves, mask, strict=True) if m]
    rows = sel[0].shape[0] if batched and sel[0].ndim else 1
    try:
        flat = np.concatenate([x.reshape(rows, -1) for x in sel], axis=1).astype(np.float64)
    except ValueError as err:
        raise ValueError(f"start must have the shapes of params; got {err}") from None
    if flat.shape[1] != n:
        raise ValueError(
            f"start must hold {n} differentiated numbers like params; got {flat.shape[1]}"
        )
    norms = np.linalg.norm(flat, axis=1)
    if not (np.all(np.isfinite(flat)) and np.all(norms > 0)):
        raise ValueError("start must be finite and nonzero")
    return flat / norms[:, None]


def _warm_start(directions, v0, method):
    """The start of a warm-started run: for Lanczos the unit sum of the start
    directions plus ``WARM_START_NOISE`` times the unit random start ``v0``; for power
    iteration each row of ``v0`` (random) replaced by a start direction plus that much
    of itself, the rows beyond the directions kept random."""
    dtype = v0.dtype
    if method == "lanczos":
        u = directions.sum(axis=0)
        u /= np.linalg.norm(u)
        r = v0 / np.linalg.norm(v0)
        return (u + WARM_START_NOISE * r).astype(dtype)
    out = v0.astype(np.float64)
    m = min(directions.shape[0], out.shape[0])
    r = out[:m] / np.linalg.norm(out[:m], axis=1, keepdims=True)
    out[:m] = directions[:m] + WARM_START_NOISE * r
    return out.astype(dtype)


def _replay_vectors(matvec, v0, coeffs, count, m):
    """Second pass of Lanczos without a stored basis: replay the recurrence from the
    same start and accumulate ``Y = coeffs @ V`` (the same products again)."""
    state = _lz.lanczos_init(v0, m, False)
    y = jnp.zeros((coeffs.shape[0], v0.shape[0]), v0.dtype)

    def body(carry):
        state, y = carry
        y = y + coeffs[:, state.j][:, None] * state.v[None, :]
        state = _lz.lanczos_update(state, matvec(state.v))
        return state, y

    def cond(carry):
        return carry[0].j < count - 1

    # count - 1 products: the last vector needs no product.
    state, y = jax.lax.while_loop(cond, body, (state, y))
    return y + coeffs[:, state.j][:, None] * state.v[None, :]


def _unit_rows(y):
    # Without reorthogonalisation the Lanczos vectors are not orthonormal, so V s
    # is not of unit norm; the direction is still the Ritz vector's.
    return y / jnp.linalg.norm(y, axis=1, keepdims=True)


@partial(
    jax.jit,
    static_argnames=(
        "loss", "mask", "k", "max_hvps", "method", "reorthogonalize", "want_smallest",
        "return_vectors",
    ),
)  # fmt: skip
def _fused(
    loss, mask, params, main, rem, v0, tol, *, k, max_hvps, method, reorthogonalize,
    want_smallest, return_vectors,
):  # fmt: skip
    """The device loop, one program: the product over one placed batch (or none),
    :func:`stability.curvature.lanczos.run_in_jit`, the Ritz vectors as flat rows
    (:func:`_solve_on_device`; from the basis, or by :func:`_replay_vectors` without
    one), the loss value and whether every product was finite."""
    n_total = sum(_hvp.batch_size(p) for p in (main, rem) if p is not None) or 1
    matvec = _hvp.flat_hvp(loss, mask, params, main, rem, n_total)
    loss_value = _hvp.weighted_objective(loss, params, main, rem) / n_total
    state, ext, count = _lz.run_in_jit(
        matvec, v0, k=k, tol=tol, max_matvecs=max_hvps, method=method,
        reorthogonalize=reorthogonalize, want_smallest=want_smallest,
    )  # fmt: skip
    vecs = None
    if return_vectors:
        if method == "lanczos" and not reorthogonalize:
            vecs = _unit_rows(_replay_vectors(matvec, v0, ext.coeffs, count, max_hvps))
            count = count + jnp.maximum(count - 1, 0)
        elif method == "power":
            vecs = state.vecs
        else:
            vecs = _unit_rows(ext.coeffs @ state.basis[: ext.coeffs.shape[1]])
    finite = jnp.all(jnp.isfinite(state.alphas if method == "lanczos" else state.top))
    return ext._replace(coeffs=None), count, vecs, loss_value, finite


@partial(jax.jit, static_argnames=("mask",))
def _unravel_rows(params, rows, *, mask):
    return jax.vmap(_hvp.flatten_params(params, mask).unravel)(rows)


def _couples_examples(loss) -> bool:
    """Whether the loss couples the examples of a batch (``loss.couples_examples``,
    set by :func:`stability.loss_from_model` in training mode: batch statistics), so
    that a batch must not be split into a sharded part and a remainder."""
    return bool(getattr(loss, "couples_examples", False))


def _multi_process() -> bool:
    return jax.process_count() > 1


def _agree(local):
    """``local()`` on every process of a multi-process run, with its failures shared:
    each process reports (one all-gather) whether ``local`` raised, so a process
    whose own data is bad raises its error and every other process raises one that
    names it, instead of waiting for a collective the failing process never joins.
    One process: just ``local()``."""
    if not _multi_process():
        return local()
    from jax.experimental import multihost_utils

    try:
        out, err = local(), None
    except Exception as e:  # shared below, then re-raised
        out, err = None, e
    msg = b"" if err is None else f"{type(err).__name__}: {err}".encode()[:_MESSAGE_BYTES]
    buf = np.zeros(_MESSAGE_BYTES + 1, np.uint8)
    buf[0] = err is not None
    buf[1 : 1 + len(msg)] = np.frombuffer(msg, np.uint8)
    every = np.asarray(multihost_utils.process_allgather(buf))
    if err is not None:
        raise err
    failed = np.flatnonzero(every[:, 0]).tolist()
    if failed:
        first = bytes(every[failed[0], 1:]).rstrip(b"\0").decode(errors="replace")
        raise RuntimeError(
            f"process {failed[0]} of {jax.process_count()} failed (all failing: {failed}), "
            f"so this one stops too; its error: {first}"
        )
    return out


def _process_sum(x):
    """``x`` summed over the processes (an all-gather, then a sum in the gathered
    order, identical on every process); ``x`` itself with one process."""
    if not _multi_process():
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(x))).sum(axis=0)


# Bytes of a failing process's error message shared with the others.
_MESSAGE_BYTES = 400


class _OneBatch:
    """``v -> (sum_i H_i v, 1 / N)`` for ``v`` (n,) or (b, n) over one batch of
    ``N`` examples already on the devices (``main``, ``rem``): one compiled program
    per product, no accumulator; the loss value (a free by-product) is checked
    once, after the first product."""

    def __init__(self, loss, mask, params, main, rem, n_examples, dtype):
        self.loss, self.mask, self.params, self.main, self.rem = loss, mask, params, main, rem
        self.n = int(_process_sum(n_examples))  # all processes' examples
        self.scale = np.asarray(1.0 / self.n, dtype)
        self.loss_value = None

    def sum(self, v):
        main, rem = self.main, self.rem
        if _multi_process():  # this process's sum, then the sum over processes

            def local():
                hv, val = _hvp.hvp_sum(self.loss, self.mask, self.params, main, rem, v, None)
                return np.asarray(hv), float(val)

            hv, val = _agree(local)
            hv, val = _process_sum(hv), float(_process_sum(val))
        else:
            hv, val = _hvp.hvp_sum(self.loss, self.mask, self.params, main, rem, v, None)
        if self.loss_value is None:
            self.loss_value = float(val) / self.n
            check_loss_value(self.loss_value)
        return hv, self.scale


class _Pass:
    """``H v`` for a block of vectors by a full pass over the batches."""

    def __init__(self, loss, mask, params, factory, mesh, progress):
        self.loss, self.mask, self.params = loss, mask, params
        self.factory, self.mesh, self.progress = factory, mesh, progress
        self.n_examples = None
        self.loss_value = None
        self.checked = False

    def sum(self, vecs):
        """``(sum_i H_i v, 1 / N)`` for ``vecs`` (n,) or (b, n); with several
        processes, over every process's batches (one sum over processes per pass)."""
        if not _multi_process():
            acc, total, lsum = self._local(vecs)
        else:
            acc, total, lsum = _agree(lambda: self._local(vecs, to_host=True))
            acc = _process_sum(acc)
            total = int(_process_sum(total))
            lsum = None if lsum is None else [_process_sum(sum(float(x) for x in lsum))]
        if total == 0:
            raise ValueError("data must not be empty; a pass over it yielded no examples")
        if self.n_examples is None:
            self.n_examples = total
            self.loss_value = sum(float(x) for x in lsum) / total
            check_loss_value(self.loss_value)
        elif total != self.n_examples:
            raise ValueError(
                f"data must yield the same examples on every pass; got {total} examples after "
                f"{self.n_examples} on the first pass"
            )
        return acc, np.asarray(1.0 / total, vecs.dtype)

    def _local(self, vecs, to_host=False):
        """This process's ``(sum over its examples of H_i v, examples, loss sums or
        None after the first pass)``."""
        acc = _loop.put(np.zeros(vecs.shape, vecs.dtype), self.mesh)  # no compiled zeros
        total, lsum, prints = 0, [], []
        for batch in self.factory():
            if not self.checked:
                check_loss_shape(self.loss, self.params, batch)
                self.checked = True
            main, rem, nb = _hvp.place_batch(batch, self.mesh, whole=_couples_examples(self.loss))
            if nb == 0:
                continue
            acc, val = _hvp.hvp_sum(self.loss, self.mask, self.params, main, rem, vecs, acc)
            # where the batch already is; the split into main and rem varies with its size
            prints += [_fingerprint(part) for part in (main, rem) if part is not None]
            total += nb
            if self.n_examples is None:
                lsum.append(val)
        if self.n_examples is None or total == self.n_examples:  # else the count says it
            self._check_same_examples(prints)
        if self.n_examples is not None:
            lsum = None
        return (np.asarray(acc) if to_host else acc), total, lsum

    def _check_same_examples(self, prints):
        """Raise when this pass's examples differ from the first pass's: the sums of
        every leaf's entries and squares over the pass (:func:`_fingerprint`), equal up
        to the rounding of a reordered sum (relative ``FINGERPRINT_RTOL``) for the
        same examples in any order or batching."""
        if not prints:
            return
        now = np.sum(np.asarray(jax.device_get(prints), np.float64), axis=0)
        first = getattr(self, "fingerprint", None)
        if first is None:
            self.fingerprint = now
            return
        scale = np.maximum(np.abs(first), 1.0)
        if np.any(np.abs(now - first) > FINGERPRINT_RTOL * scale):
            raise ValueError(
                "data must yield the same examples on every pass (each Hessian-vector "
                "product is a full pass over them); a later pass held other examples (their "
                "sums changed): a loader that samples a new subset or augments at random? "
                "Pass a fixed list of batches or a callable that returns the same ones"
            )


# Relative change of a pass's data sums that is not the rounding of a reordered sum.
FINGERPRINT_RTOL = 1e-5


@jax.jit
def _fingerprint(batch):
    """Per leaf of ``batch``, the sum of its entries and of their squares (float32 or
    better): a pass's sums identify its examples whatever their order or batching."""
    leaves = [jnp.asarray(x) for x in jax.tree_util.tree_leaves(batch)]
    wide = any(x.dtype == jnp.float64 for x in leaves)
    leaves = [x.astype(jnp.float64 if wide else jnp.float32) for x in leaves]
    return jnp.stack([s for x in leaves for s in (jnp.sum(x), jnp.sum(x * x))])


def default_memory_budget() -> int:
    """Half the memory available now where a Krylov basis lives: the default
    device's free memory (``memory_stats``: ``bytes_limit - bytes_in_use``) on
    GPU/TPU, the host's available physical memory (``/proc/meminfo``
    ``MemAvailable``, else ``sysconf``) on CPU. Bytes."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0)) // 2
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: no limit


def _basis_fits(n, dtype, max_hvps, budget) -> bool:
    """Whether a full basis of ``max_hvps + 1`` rows fits in ``budget`` bytes (default
    :func:`default_memory_budget`); warns and returns False when it does not."""
    if budget is None:
        budget = default_memory_budget()
    else:
        check_scalar("memory_budget", budget)
        check_positive("memory_budget", budget)
    need = (max_hvps + 1) * n * np.dtype(dtype).itemsize
    if need <= budget:
        return True
    warnings.warn(
        f"the Krylov basis of {max_hvps + 1} x {n:,} numbers ({need / 2**30:.2f} GiB) "
        f"exceeds memory_budget ({budget / 2**30:.2f} GiB): running without a basis "
        f"(reorthogonalize=False: three vectors). Lower max_hvps or raise memory_budget to "
        f"keep it.",
        stacklevel=4,
    )
    return False


# ------------------------------------------------------------------------ public
#
# hessian_spectrum follows the data path of docs/architecture.md:
#   1. _check_arguments   arguments, parameters, the basis size, the start vector
#   2. _build_product     the data placed on the devices, the Hessian-vector product
#                         and where the loop runs (device or host)
#   3. _solve_on_device   the whole eigensolver in one jit (lax.while_loop), or
#      _solve_on_host     driven from Python, one product and one step per iteration
#   4. _spectrum          the HessianSpectrum: error floors, flags, eigenvectors


def hessian_spectrum(
    loss: Callable,
    params,
    data=None,
    *,
    k: int = 1,
    tol: float = 1e-5,
    max_hvps: int = 100,
    seed: int = 0,
    method: str = "lanczos",
    reorthogonalize: bool = True,
    return_vectors: bool = False,
    converge_smallest: bool = False,
    trainable=None,
    devices=None,
    progress: bool = True,
    loop: str = "auto",
    stop_when: Callable[[HessianSpectrum], bool] | None = None,
    start=None,
    memory_budget: int | None = None,
    verify: bool | None = None,
    preconditioner=None,
) -> HessianSpectrum:
    """The ``k`` largest and the smallest eigenvalue of the Hessian of the mean loss.

    Args:
      loss: ``loss(params)`` if ``data`` is None, else ``loss(params, batch)``
        returning the MEAN loss over the batch (a real scalar). Keep the same
        function object across calls to reuse compiled code.
      params: any pytree (dict, Flax linen variables, ``nnx.State``); the Hessian is
        taken w.r.t. its floating leaves (or those selected by ``trainable``).
      data: None, one batch, a list / re-iterable of batches, or a callable
        returning a fresh iterator of batches (module docstring).
      k: how many of the largest eigenvalues (1 <= k <= number of parameters).
      tol: stop when every wanted Ritz residual is <= ``tol`` times the
        spectral-norm estimate (relative error bound).
      max_hvps: most Hessian-vector products (Lanczos: also the basis size; capped
        at the number of parameters).
      seed: seed of the random start vector (results are deterministic in it).
      method: ``"lanczos"`` (default) or ``"power"`` (subspace iteration).
      reorthogonalize: Lanczos only; False keeps no basis (module docstring).
      return_vectors: also return the top-k eigenvectors as pytrees like params.
      converge_smallest: also wait for the smallest eigenvalue to converge. By
        default only the ``k`` largest are waited for; the smallest is reported from
        the same Krylov space with its own ``smallest_converged`` flag (the near-zero
        cluster of a trained network converges slowly: tens of extra products).
      trainable: which leaves to differentiate (see :func:`stability.curvature.hvp.trainable_mask`).
      devices: devices of the data-parallel mesh (default ``jax.devices()``).
      progress: show a tqdm bar over products when there are several batches.
      loop: one batch: ``"device"`` runs the whole iteration in one jit
        (``lax.while_loop``, no host round trip), ``"host"`` drives it from Python
        (one jitted product per iteration; the Lanczos step in numpy on CPU, jitted
        elsewhere), ``"auto"`` (default):
        device on GPU/TPU, host on CPU (XLA:CPU runs models inside while loops
        several times slower). Several batches always use the host loop.
      stop_when: ``stop_when(estimate) -> bool`` called after every iteration with
        the current :class:`HessianSpectrum` (no eigenvectors); the run stops as soon
        as it returns True (or at ``max_hvps``) and ``tol`` then only sets the
        ``converged`` flags. Decision-driven runs use it (:func:`stability.is_accessible`
        stops once its verdict is decided). Implies the host loop.
      start: a warm start: a previous :class:`HessianSpectrum` computed with
        ``return_vectors=True`` (its eigenvectors) or a pytree like params (one
        direction). Lanczos starts from the unit sum of the directions plus
        ``WARM_START_NOISE`` (1e-4) times the unit random start of ``seed`` (power
        iteration: each start row so mixed). Between nearby parameters (consecutive
        checks during training) the top eigenvalue then converges in a few products.
        The random part keeps every eigenvector in the Krylov space, so an eigenvalue
        that overtook the previous top is found as its gap grows; the gap-free
        :meth:`HessianSpectrum.bounds` are not claimed for a warm start
        (``random_start=False``).
      memory_budget: bytes the Krylov basis may take (``(max_hvps + 1) x n``
        numbers with ``reorthogonalize=True``). Default: half the memory available
        where the basis lives when the call starts (:func:`default_memory_budget`).
        A basis that would exceed it is refused BEFORE the first product: with a
        warning, the run switches to the basis-free recurrence
        (``reorthogonalize=False``: three vectors; eigenvectors by a second pass),
        so a long run never runs out of memory halfway.
      verify: products below float64 (float32, JAX's default; bfloat16, float16)
        are checked in float64 at the end (default None: whenever the parameters
        are narrower than float64; False skips it): the top Ritz vectors (and the
        smallest with ``converge_smallest``) are multiplied once more with parameters
        and data cast to float64, and the result reports
        their float64 Rayleigh quotients, residuals and the products' own error
        (``product_error``), so a converged value is within its bar of an
        eigenvalue of the float64 Hessian. When the float64 residuals no longer
        pass the stopping test, Lanczos goes on in float64 from those vectors. A
        ``tol`` below what the products' dtype resolves (``RESOLVABLE_EPS`` eps)
        is then reached in float64; with ``verify=False`` (and in float64) a warning
        says that nothing can be flagged converged. Costs ``k`` float64 products
        (``k + 1`` with ``converge_smallest``), about three float32 products' time each
        on a CPU.
      preconditioner: a diagonal ``P`` (a :class:`stability.Preconditioner`, e.g. from
        :func:`stability.preconditioner_from_optax` of an Adam state, or a pytree of
        positive arrays like params or like its differentiated leaves): the spectrum
        is then that of ``P^-1/2 H P^-1/2`` (Adam's linearised step,
        :mod:`stability.curvature.preconditioner`), computed as the Hessian of
        ``loss(params + P^-1/2 u)`` at ``u = 0``, with the same error bars, data,
        devices and float64 check. Its eigenvectors (and ``start``) are directions
        in ``u``: :func:`stability.weight_space_direction` maps them to weight space.

    Returns:
      :class:`HessianSpectrum`.
    """
    if preconditioner is not None:  # a change of variables; everything below as is
        problem = _pre.change_of_variables(loss, params, preconditioner,
                                           trainable=trainable, start=start)  # fmt: skip
        return problem.restore(hessian_spectrum(
            problem.loss, problem.params, data, k=k, tol=tol, max_hvps=max_hvps, seed=seed,
            method=method, reorthogonalize=reorthogonalize, return_vectors=return_vectors,
            converge_smallest=converge_smallest, trainable=problem.trainable,
            devices=devices, progress=progress, loop=loop, stop_when=stop_when,
            start=problem.start, memory_budget=memory_budget, verify=verify,
        ))  # fmt: skip
    args = _check_arguments(
        loss, params, k=k, tol=tol, max_hvps=max_hvps, seed=seed, method=method,
        reorthogonalize=reorthogonalize, converge_smallest=converge_smallest,
        trainable=trainable, loop=loop, stop_when=stop_when, start=start,
        memory_budget=memory_budget,
    )  # fmt: skip
    product = _build_product(loss, params, data, args, devices=devices, loop=loop,
                             progress=progress, stop_when=stop_when)  # fmt: skip
    verify = _wants_verification(verify, args.product_dtype)
    args = _resolvable_tolerance(args, verify)
    spectrum = partial(_spectrum, n=args.n, tol=args.tol, dtype=args.product_dtype,
                       method=method, want_smallest=args.want_smallest,
                       random_start=start is None)  # fmt: skip
    want_rows = bool(return_vectors) or verify
    if product.on_device:
        ext, count, steps, rows = _solve_on_device(product, args, want_rows)
    else:
        stop = None
        if stop_when is not None:

            def stop(ext, count, steps):
                return bool(stop_when(spectrum(ext, count, steps, None)))

        ext, count, steps, rows = _solve_on_host(product, args, want_rows, stop)
    result = spectrum(ext, count, steps, None)
    if verify:
        again = dict(
            loss=loss,
            params=params,
            data=data,
            devices=devices,
            progress=progress,
            loop=loop,
            stop_when=stop_when,
            memory_budget=memory_budget,
            seed=seed,
        )
        result, rows = _verify(result, rows, args, again)  # fmt: skip
    if return_vectors:
        vecs = _unravel_rows(product.params, jnp.asarray(rows[: args.k], args.dtype),
                             mask=args.mask)  # fmt: skip
        result = result._replace(eigenvectors=vecs)
    return result


# Errors are floored at 10 eps x scale (_spectrum): a tol below 10 eps never converges,
# and one near it only once the residual has underflowed the floor. A run checked in
# float64 stops its working-precision part at this many eps.
RESOLVABLE_EPS = 20


def _resolvable_tolerance(args, verify):
    """``args`` with the working run's ``tol`` at least ``RESOLVABLE_EPS`` eps of the
    products' dtype when the float64 check follows, and the requested one in
    ``args.requested_tol`` (what the check and its continuation are held to). Without
    the check (float64 products, or ``verify=False``) a tol below that is kept and warned
    of: no value can be flagged converged."""
    low = RESOLVABLE_EPS * float(np.finfo(args.product_dtype).eps)
    if args.tol >= low:
        return args._replace(requested_tol=args.tol)
    if not verify:  # float64, or the check switched off: nothing finer to reach it with
        if args.tol >= 10 * float(np.finfo(args.product_dtype).eps):
            return args._replace(requested_tol=args.tol)
        warnings.warn(
            f"tol={args.tol:g} is below what {args.product_dtype} products resolve "
            f"({low:.2g}: their rounding floors every error at 10 eps), so no value will be "
            "flagged converged"
            + ("" if args.product_dtype == np.float64 else "; leave verify on to reach it "
               "with float64 products"),
            stacklevel=3,
        )  # fmt: skip
        return args._replace(requested_tol=args.tol)
    return args._replace(tol=low, requested_tol=args.tol)


def _wants_verification(verify, dtype) -> bool:
    """``verify`` resolved: None (default) checks products below float64; float64
    products are the reference and are never re-checked."""
    if verify is not None and not isinstance(verify, (bool, np.bool_)):
        raise TypeError(f"verify must be True, False or None; got {verify!r}")
    return _check.needs_verification(dtype) and verify is not False


def _float64_product(loss, params, data, args, devices):
    """Step 5's product: ``hv(v) -> (sum_i H_i v, 1 / N)`` in float64 over the same
    data (floating leaves cast up exactly, batch by batch), on
    :func:`stability.curvature.verification.float64_devices`. Call under
    ``jax.enable_x64(True)``."""
    args64 = args._replace(dtype=np.dtype(np.float64), product_dtype=np.dtype(np.float64),
                           tol=args.requested_tol)  # fmt: skip
    product = _build_product(loss, _check.to_float64(params), _float64_data(data), args64,
                             devices=_check.float64_devices(devices), loop="host",
                             progress=False, stop_when=_never, check_loss=False)  # fmt: skip
    return product


def _float64_data(data):
    """``data`` with floating leaves cast to float64, batch by batch as a pass reads
    them (several batches are never all copied at once)."""
    kind, payload = classify_data(data)
    if kind == "single":
        return _check.to_float64(payload)
    if kind == "many":
        return lambda: map(_check.to_float64, payload())
    return data


def _float64_scope():
    """float64 enabled, and JAX's standard dtype promotion: a loss written for float32
    (float32 constants) meets float64 parameters here."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.enable_x64(True))
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    return stack


def _never(estimate) -> bool:
    return False


def _verify(result, rows, args, again):
    """Step 5, below float64: the working-precision Ritz vectors (top ``k``, then
    the smallest when it is waited for, ``converge_smallest``) multiplied once more
    in float64
    (`stability.curvature.verification`): the values become their float64 Rayleigh
    quotients, the errors their float64 residuals plus the products' own error
    ``|theta_working - theta_64|`` (so no certificate depends on which precision's
    Hessian is the right one at a non-smooth point), the converged flags are those of
    the float64 residuals. When that no longer passes the stopping test (``stop_when``,
    else every wanted value converged), the run goes on in float64 from the top Ritz
    vectors with the products left, the products' error still added. An unchecked
    smallest value keeps its working-precision Ritz value, its error widened by the
    top's product error (an estimate, not a bound: one float64 product costs about
    three float32 ones on a CPU, so it is checked only when waited for).
    Returns ``(spectrum, rows)``."""
    k, tol = args.k, args.requested_tol
    rows = np.asarray(rows)
    has_smallest = rows.shape[0] > k and args.want_smallest
    rows = rows[: k + 1] if has_smallest else rows[:k]
    try:
        with _float64_scope():
            product = _float64_product(again["loss"], again["params"], again["data"], args,
                                       again["devices"])  # fmt: skip
            sums, scale = product.hv(_loop.put(rows.astype(np.float64), product.mesh))
            theta, residual = _check.ritz_pairs(rows, np.asarray(sums) * float(scale))
    except (TypeError, ValueError, RuntimeError) as err:
        # A loss that cannot run in float64 (e.g. numpy float constants it closes over,
        # which JAX caches in float32 once traced in float32): nothing is verified, so
        # nothing is certified.
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        warnings.warn(
            f"the float64 check of the float32 products failed ({type(err).__name__}: "
            f"{first[:200]}); the spectrum's error bars are infinite. Pass constants of the "
            "loss as data or parameters, or enable jax_enable_x64 for the whole run.",
            stacklevel=3,
        )
        inf = np.full(k, np.inf)
        unverified = result._replace(errors=inf, converged=np.zeros(k, bool),
                                     smallest_error=float("inf"), smallest_converged=False,
                                     random_start=False, product_error=float("inf"))  # fmt: skip
        return unverified, rows
    working = np.concatenate([np.asarray(result.eigenvalues, np.float64),
                              [result.smallest] if has_smallest else []])  # fmt: skip
    spread = np.abs(working - theta)
    spread = np.where(np.isfinite(spread), spread, np.inf)
    checked = _from_float64(result, theta, residual, spread, k, tol, has_smallest,
                            result.num_hvps + rows.shape[0])  # fmt: skip
    stop_when = again["stop_when"]
    passed = stop_when(checked) if stop_when is not None else _done(checked, args)
    left = args.max_hvps - checked.num_hvps
    if passed or left < max(args.k, 1) or args.method != "lanczos":
        return checked, rows
    return _continue_in_float64(checked, rows, args, again, float(spread[0]), left)


def _from_float64(result, theta, residual, spread, k, tol, has_smallest, count):
    """The :class:`HessianSpectrum` of float64 Ritz pairs (:func:`_verify`)."""
    scale = float(np.nanmax(np.abs(theta), initial=0.0))
    floor = 10.0 * float(np.finfo(np.float64).eps) * scale
    res = np.maximum(residual, floor)
    errors = res + spread
    converged = res <= tol * scale
    small = dict(smallest=result.smallest, smallest_error=result.smallest_error + spread[0],
                 smallest_converged=result.smallest_converged)  # fmt: skip
    if has_smallest:
        small = dict(smallest=float(theta[k]), smallest_error=float(errors[k]),
                     smallest_converged=bool(converged[k]))  # fmt: skip
    return result._replace(
        eigenvalues=theta[:k], errors=errors[:k], converged=converged[:k], num_hvps=int(count),
        rounding_error=floor, random_start=False, product_error=float(spread[0]), **small,
    )  # fmt: skip


def _done(spectrum, args) -> bool:
    """The stopping test of a run without ``stop_when``: every wanted value converged."""
    return bool(np.all(spectrum.converged)) and (
        not args.want_smallest or bool(spectrum.smallest_converged)
    )


def _continue_in_float64(checked, rows, args, again, spread, left):
    """The run resumed in float64 (:func:`_verify`): Lanczos from the unit sum of the
    top Ritz vectors with ``left`` products, each estimate's errors widened by the
    products' error ``spread`` before the stopping test and in the result."""
    stop_when = again["stop_when"]

    def widened(est):
        return est._replace(errors=np.asarray(est.errors) + spread,
                            smallest_error=float(est.smallest_error) + spread,
                            product_error=spread, random_start=False)  # fmt: skip

    with _float64_scope():
        params = _check.to_float64(again["params"])
        fp = _hvp.flatten_params(params, args.mask)
        start = fp.unravel(jnp.asarray(rows[: args.k].sum(axis=0), jnp.float64))
        treedef = jax.tree_util.tree_structure(params)
        trainable = jax.tree_util.tree_unflatten(treedef, list(args.mask))
        cont = hessian_spectrum(
            again["loss"], params, _float64_data(again["data"]), k=args.k, tol=args.requested_tol,
            max_hvps=left, seed=again["seed"], method="lanczos",
            reorthogonalize=args.reorthogonalize, return_vectors=True,
            converge_smallest=args.want_smallest, trainable=trainable,
            devices=_check.float64_devices(again["devices"]), progress=again["progress"],
            loop=again["loop"], start=start, memory_budget=again["memory_budget"],
            stop_when=None if stop_when is None else (lambda est: stop_when(widened(est))),
        )  # fmt: skip
        leaves = jax.tree_util.tree_leaves(cont.eigenvectors)
        flat = np.concatenate([np.asarray(x, np.float64).reshape(args.k, -1)
                               for x, m in zip(leaves, args.mask, strict=True) if m],
                              axis=1)  # fmt: skip
    out = widened(cont)._replace(num_hvps=checked.num_hvps + cont.num_hvps, eigenvectors=None)
    return out, flat


class _Args(NamedTuple):
    """The checked arguments of :func:`hessian_spectrum` (step 1)."""

    k: int
    tol: float
    max_hvps: int  # Lanczos: capped at n
    method: str
    reorthogonalize: bool  # False when the basis would exceed memory_budget
    want_smallest: bool
    mask: Any  # which leaves are differentiated
    n: int  # the order of the Hessian
    dtype: np.dtype  # of the Lanczos vectors: the parameters' dtype, at least float32
    v0: np.ndarray  # the start vector (power iteration: the start rows)
    product_dtype: np.dtype  # of the products: the widest differentiated leaf's
    requested_tol: float = 0.0  # tol as given (the working run's may be raised to resolve)


def _check_arguments(
    loss, params, *, k, tol, max_hvps, seed, method, reorthogonalize, converge_smallest,
    trainable, loop, stop_when, start, memory_budget,
) -> _Args:  # fmt: skip
    """Step 1: every argument but the data checked, the parameters counted
    (finite, real), the basis checked against ``memory_budget`` (before any
    product) and the start vector drawn (warm: mixed with ``start``)."""
    if not callable(loss):
        raise TypeError(f"loss must be callable; got {type(loss).__name__}")
    if stop_when is not None and not callable(stop_when):
        raise TypeError(f"stop_when must be callable or None; got {type(stop_when).__name__}")
    k = check_int("k", k, minimum=1)
    max_hvps = check_int("max_hvps", max_hvps, minimum=1)
    check_scalar("tol", tol)
    check_positive("tol", tol)
    tol = float(tol)  # a Python int of any size would overflow a jitted argument
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer; got {seed!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if loop not in ("auto", "device", "host"):
        raise ValueError(f"loop must be 'auto', 'device' or 'host'; got {loop!r}")
    check_leaves(params)
    mask = _hvp.trainable_mask(params, trainable)
    n = check_params(params, mask)
    if k > n:
        raise ValueError(f"k must be <= the number of parameters ({n}); got k={k}")
    want_smallest = bool(converge_smallest)
    if method == "lanczos":
        max_hvps = min(max_hvps, n)
        if max_hvps < k:
            raise ValueError(f"max_hvps must be >= k={k} for Lanczos; got {max_hvps}")
    elif max_hvps < k + want_smallest:
        raise ValueError(
            f"max_hvps must be >= {k + want_smallest} for power iteration; got {max_hvps}"
        )
    product_dtype = np.dtype(_hvp.flat_dtype(params, mask))
    # The recurrence runs in float32 or better: bfloat16 / float16 Lanczos vectors would
    # lose orthogonality at once; the products stay in the parameters' dtype.
    dtype = product_dtype if product_dtype.itemsize >= 4 else np.dtype(np.float32)
    if method == "lanczos" and reorthogonalize:
        reorthogonalize = _basis_fits(n, dtype, max_hvps, memory_budget)
    v0 = _start(int(seed), n, dtype, k, method, want_smallest)
    if start is not None:
        v0 = _warm_start(_start_directions(start, params, mask, n), v0, method)
    return _Args(k, tol, max_hvps, method, bool(reorthogonalize), want_smallest, mask, n,
                 dtype, v0, product_dtype)  # fmt: skip


class _Product(NamedTuple):
    """Step 2: where the products run and on what. ``on_device``: the device loop,
    over ``main``/``rem`` (one batch on the devices, or None for ``data=None``).
    Otherwise the host loop over ``hv(v) -> (sum_i H_i v, 1 / N)``, ``v`` one vector
    (Lanczos) or a block (power iteration): one compiled program per product for one
    batch (:class:`_OneBatch`), a full pass over several (:class:`_Pass`)."""

    loss: Callable
    params: Any  # replicated over mesh
    mesh: Any
    on_device: bool
    main: Any = None
    rem: Any = None
    hv: Callable | None = None
    progress: bool = False


def _build_product(
    loss, params, data, args, *, devices, loop, progress, stop_when, check_loss=True
) -> _Product:
    """Step 2: the data classified, checked and placed on the mesh (every process
    agreeing, :func:`_agree`), the loop chosen (device: one batch or no data on
    GPU/TPU, or ``loop="device"``; host: CPU by default, several batches, a
    stopping rule, several processes) and the Hessian-vector product built."""
    kind, payload = classify_data(data)
    if kind == "none" and stop_when is not None:
        # The stopping rule runs in Python, so the loop runs on the host, whose
        # products take a batch: a one-example dummy batch that the loss ignores.
        loss, kind, payload = _ignore_batch(loss), "single", np.zeros((1,), np.int8)
    multi = _multi_process() and kind != "none"
    if multi:
        # Several processes (jax.distributed): each computes on its own devices over
        # its own data, and every product is summed over processes on the host.
        if loop == "device":
            raise ValueError("loop='device' runs on one process; with several processes "
                             "use loop='auto' or 'host'")  # fmt: skip
        local = set(jax.local_devices())
        if devices is not None and not set(devices) <= local:
            raise ValueError("devices must be this process's own (jax.local_devices()) "
                             "when several processes run")  # fmt: skip
        devices = jax.local_devices() if devices is None else devices
    mesh = _hvp.make_mesh(devices) if kind != "none" else None
    params_d = _hvp.replicate(params, mesh)
    if kind == "none":
        check_loss_shape(loss, params, None)
        return _Product(loss, params_d, mesh, on_device=True)
    if kind == "many":
        passes = _Pass(loss, args.mask, params_d, payload, mesh, progress)
        passes.checked = not check_loss
        hv = passes.sum
        return _Product(loss, params_d, mesh, False, hv=hv, progress=progress)

    def place():
        if _hvp.batch_size(payload) == 0:
            raise ValueError("data must not be empty; got a batch of 0 examples")
        if check_loss:  # (the float64 check's product: checked in working precision)
            check_loss_shape(loss, params, payload)
        return _hvp.place_batch(payload, mesh, whole=_couples_examples(loss))

    main, rem, n_ex = _agree(place)
    if loop == "auto":
        # XLA:CPU runs a model inside a while loop much slower than the same jitted
        # product called from the host (measured: 11 products of a 0.47M-parameter
        # CNN took 87 s in one while loop, 7.7 s host-driven); on CPU the host is the
        # device, so the host loop costs no transfer.
        on_device = not host_is_device()
    else:
        on_device = loop == "device"
    if stop_when is not None or multi:
        on_device = False  # the stopping rule / the sum over processes run on the host
    if on_device:
        return _Product(loss, params_d, mesh, True, main, rem)
    hv = _OneBatch(loss, args.mask, params_d, main, rem, n_ex, args.dtype).sum
    return _Product(loss, params_d, mesh, False, main, rem, hv=hv)


def _solve_on_device(product, args, return_vectors):
    """Step 3 on the device: Lanczos or power iteration in one jit
    (:func:`_fused`). Returns ``(extremes, products, Lanczos steps, Ritz vectors)``,
    the vectors (or None) as flat unit rows: Lanczos the top ``k`` then the smallest,
    power iteration its block (the smallest last with ``want_smallest``)."""
    ext, count, vecs, loss_value, finite = _fused(
        product.loss, args.mask, product.params, product.main, product.rem,
        _hvp.replicate(args.v0, product.mesh), args.tol, k=args.k, max_hvps=args.max_hvps,
        method=args.method, reorthogonalize=args.reorthogonalize,
        want_smallest=args.want_smallest, return_vectors=return_vectors,
    )  # fmt: skip
    check_loss_value(loss_value)
    if not bool(finite):
        raise ValueError("the Hessian-vector product is not finite (NaN or inf) at params")
    ext, count = jax.device_get(ext), int(count)
    steps = count if args.method == "lanczos" else 0
    if args.method == "lanczos" and return_vectors and not args.reorthogonalize:
        steps = (count + 1) // 2  # the replay's products are not Krylov steps
    return ext, count, steps, vecs


def _solve_on_host(product, args, return_vectors, stop):
    """Step 3 on the host (`stability.curvature.host_loop`): Lanczos (eigenvectors
    from the basis, or by a replay without one) or power iteration, a progress bar
    over the products when there are several batches. Returns ``(extremes,
    products, Lanczos steps, Ritz vectors)``, the vectors as flat rows like
    :func:`_solve_on_device`'s."""
    k, mesh, v0 = args.k, product.mesh, args.v0
    # No total: a run stops when its answer is decided, usually long before max_hvps, so an
    # ETA to max_hvps would mislead; the bar counts products and their rate. It is drawn
    # wherever stderr goes, a terminal or not.
    bar = progress_bar(product.progress, desc="Hessian-vector products", unit=" products",
                       leave=False, terminal_only=False)  # fmt: skip
    vecs = None
    try:
        if args.method == "lanczos":
            basis, ext, count = _loop.host_lanczos(
                product.hv, v0, mesh, k=k, tol=args.tol, max_hvps=args.max_hvps,
                reorthogonalize=args.reorthogonalize, want_smallest=args.want_smallest,
                bar=bar, stop_when=stop,
            )  # fmt: skip
            steps = count
            if return_vectors and not args.reorthogonalize:
                y, extra = _loop.host_replay(product.hv, v0, mesh, ext.coeffs, count)
                vecs = _unit_rows(jnp.asarray(y))
                count += extra
            elif return_vectors:
                # Coefficients padded to the basis rows: the product's shape does not
                # depend on the count, so a later call compiles nothing new.
                coeffs = np.zeros((ext.coeffs.shape[0], basis.shape[0]), ext.coeffs.dtype)
                coeffs[:, :count] = ext.coeffs
                vecs = _unit_rows(jnp.asarray(coeffs) @ basis)
        else:
            state, ext, count = _loop.host_power(
                product.hv, _hvp.replicate(v0, mesh), tol=args.tol,
                max_hvps=args.max_hvps, want_smallest=args.want_smallest, bar=bar,
                stop_when=stop,
            )  # fmt: skip
            steps = 0
            if return_vectors:
                vecs = state.vecs
    finally:
        bar.close()
    return jax.device_get(ext), count, steps, vecs


def _spectrum(ext, count, steps, vecs, *, n, tol, dtype, method, want_smallest, random_start):
    """Step 4: the :class:`HessianSpectrum` of the estimates ``ext`` after ``count`` products
    (``steps`` Lanczos steps), with the rounding floor applied to every error and the
    converged flags taken against the floored errors."""
    top = np.asarray(ext.top)
    # The Lanczos residual estimate beta_m |s_m| can underflow far below what
    # floating point resolves; no bound is tighter than the rounding error of
    # the products, ~ eps * ||H|| (floored at 10 eps * max |Ritz value|).
    small = float(ext.smallest)
    scale = max(
        float(np.nanmax(np.abs(top), initial=0.0)), abs(small) if np.isfinite(small) else 0.0
    )
    floor = 10.0 * float(np.finfo(dtype).eps) * scale
    thresh = tol * scale
    errors = np.maximum(np.asarray(ext.top_error), floor)
    converged = np.asarray(ext.top_converged, bool) & (errors <= thresh)
    if method == "power" and not want_smallest:
        smallest, smallest_err, smallest_conv = float("nan"), float("inf"), False
    else:
        smallest_err = max(float(ext.smallest_error), floor)
        smallest, smallest_conv = small, bool(ext.smallest_converged) and smallest_err <= thresh
    return HessianSpectrum(
        eigenvalues=top,
        errors=errors,
        converged=converged,
        smallest=smallest,
        smallest_error=smallest_err,
        smallest_converged=smallest_conv,
        num_hvps=int(count),
        eigenvectors=vecs,
        num_params=int(n),
        lanczos_steps=int(steps),
        rounding_error=floor,
        random_start=random_start,
    )
