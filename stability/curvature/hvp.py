"""Hessian-vector products of a full-data mean loss, data-parallel over devices.

The objective is the mean loss over all ``N`` examples,
``L(w) = sum_b (n_b / N) loss(w, batch_b)``, where ``loss(w, batch)`` returns the
MEAN loss over its batch of ``n_b`` examples. Its Hessian-vector product is
``H v = sum_b (n_b / N) d/de grad loss(w + e v, batch_b)``, computed
forward-over-reverse (``jax.jvp`` of ``jax.grad``; Pearlmutter 1994, "Fast exact
multiplication by the Hessian"), which costs a small multiple of one gradient.

Parameters and batches are ARGUMENTS of module-level jitted functions whose
static arguments are the loss function itself and a tuple saying which leaves
are differentiated; so nothing is constant-folded and a second call with the
same loss function and shapes reuses the compiled code (keep the same function
object: a fresh ``lambda`` per call compiles again).

Parameters are any pytree (dict, Flax linen variables, ``nnx.State``). Floating
leaves selected by ``trainable`` are concatenated into one flat vector (in the
widest floating dtype among them); other leaves (integer counters, RNG keys,
frozen statistics) are passed through unchanged.

Data parallelism: a batch is split into a part whose size is a multiple of the
device count, sharded over the mesh axis ``"batch"`` (parameters replicated;
XLA's SPMD partitioner inserts the all-reduce of the gradient), and a remainder
of fewer examples than devices, replicated. The two means are combined with
weights ``n_main`` and ``n_rem``, so no example is padded or dropped and a mean
loss stays exact.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "FlatParams",
    "flatten_params",
    "trainable_mask",
    "batch_size",
    "split_batch",
    "make_mesh",
    "place_batch",
    "weighted_objective",
    "flat_hvp",
    "hvp_sum",
    "grad_sum",
    "loss_and_hvp",
]

BATCH_AXIS = "batch"


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def trainable_mask(params, trainable=None) -> tuple[bool, ...]:
    """Which leaves of ``params`` are differentiated, as a hashable tuple.

    ``trainable`` is None (every floating leaf), a predicate ``(key_path, leaf) ->
    bool`` (e.g. ``lambda path, x: path[0].key == "params"`` for linen variables with
    ``batch_stats``), or a pytree of bools with the structure of ``params``.
    """
    with_path, _ = jax.tree_util.tree_flatten_with_path(params)
    if trainable is None:
        flags = [True] * len(with_path)
    elif callable(trainable):
        flags = [bool(trainable(p, x)) for p, x in with_path]
    else:
        flags = [bool(f) for f in jax.tree_util.tree_leaves(trainable)]
        if len(flags) != len(with_path):
            raise ValueError(
                f"trainable must be None, a predicate, or a pytree of bools like params; got "
                f"{len(flags)} flags for {len(with_path)} leaves"
            )
    return tuple(f and _is_float(x) for f, (_, x) in zip(flags, with_path, strict=True))


class FlatParams(NamedTuple):
    """A flat view of the differentiated leaves: ``flat`` (n,) and ``unravel``."""

    flat: jax.Array
    unravel: object


def flat_dtype(params, mask):
    """The widest floating dtype among the differentiated leaves."""
    leaves = jax.tree_util.tree_leaves(params)
    dts = [jnp.result_type(x) for x, m in zip(leaves, mask, strict=True) if m]
    if not dts:
        raise ValueError("params must contain at least one floating-point leaf to differentiate")
    return max(dts, key=lambda d: jnp.dtype(d).itemsize)


def flatten_params(params, mask) -> FlatParams:
    """Concatenate the leaves selected by ``mask`` into one vector; ``unravel``
    rebuilds ``params`` with those leaves replaced (others kept as given)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    dtype = flat_dtype(params, mask)
    sel = [jnp.asarray(x) for x, m in zip(leaves, mask, strict=True) if m]
    shapes = [x.shape for x in sel]
    dts = [x.dtype for x in sel]
    sizes = [int(np.prod(s)) for s in shapes]
    flat = jnp.concatenate([x.astype(dtype).ravel() for x in sel])

    def unravel(vec):
        parts = jnp.split(vec, np.cumsum(sizes)[:-1].tolist()) if len(sizes) > 1 else [vec]
        it = iter(p.reshape(s).astype(d) for p, s, d in zip(parts, shapes, dts, strict=True))
        new = [next(it) if m else x for x, m in zip(leaves, mask, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, new)

    return FlatParams(flat, unravel)


def batch_size(batch) -> int:
    """The common leading dimension of every leaf of ``batch``."""
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError(
            "data batch must be a pytree with at least one array leaf; got an empty one"
        )
    sizes = {int(np.shape(x)[0]) if np.ndim(x) > 0 else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [np.shape(x) for x in leaves]
        raise ValueError(
            f"data batch leaves must share a leading batch axis; got leaf shapes {shapes[:6]}"
        )
    return sizes.pop()


def split_batch(batch, num_devices: int):
    """Split into (main, rem): ``main`` has a multiple of ``num_devices`` examples
    (None if zero), ``rem`` the rest (None if zero)."""
    n = batch_size(batch)
    n_main = n - n % num_devices
    main = jax.tree_util.tree_map(lambda x: x[:n_main], batch) if n_main else None
    rem = jax.tree_util.tree_map(lambda x: x[n_main:], batch) if n > n_main else None
    return main, rem


def make_mesh(devices=None) -> Mesh | None:
    """A 1-D mesh with axis ``"batch"`` over ``devices`` (default: all devices of
    all processes, i.e. all local devices on one host). None for a single device."""
    if devices is None:
        devices = jax.devices()
    devices = list(devices)
    if len(devices) <= 1:
        return None
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def place_batch(batch, mesh: Mesh | None, *, whole: bool = False):
    """Put a batch on the devices: ``(main, rem, n)`` with ``main`` sharded over the
    mesh axis and ``rem`` replicated (the mesh holds this process's devices; with
    several processes each one places its own examples and the products are summed
    over processes by :func:`stability.hessian_spectrum`). ``whole=True`` (a loss
    that couples the examples of a batch, e.g. batch statistics in training mode):
    never split the batch in two; a batch that does not divide over the devices is
    placed whole, replicated."""
    n_local = batch_size(batch)
    if mesh is None:
        return jax.device_put(batch), None, n_local
    ndev = mesh.devices.size
    sharded = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    if whole and n_local % ndev:
        return None, jax.device_put(batch, replicated), n_local
    main, rem = split_batch(batch, ndev)
    main = None if main is None else jax.device_put(main, sharded)
    rem = None if rem is None else jax.device_put(rem, replicated)
    return main, rem, n_local


def replicate(tree, mesh: Mesh | None):
    """Replicate a pytree of arrays over the mesh (no-op without a mesh)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def weighted_objective(loss, params, main, rem):
    """``n_main * loss(params, main) + n_rem * loss(params, rem)``: the SUM over the
    examples of the batch (loss is a mean); ``loss(params)`` when there is no data."""
    if main is None and rem is None:
        return loss(params)
    total = 0.0
    for part in (main, rem):
        if part is not None:
            total = total + batch_size(part) * loss(params, part)
    return total


def loss_and_hvp(loss, mask, params, main, rem, vecs):
    """Summed loss, gradient and ``H v`` for each row of ``vecs`` (b, n), flat, for
    the SUM over the batch's examples (divide by the example count for the mean).

    Forward-over-reverse: ``jax.jvp(jax.value_and_grad(f), (w,), (v,))``; the loss
    and gradient are the primal outputs (free)."""
    fp = flatten_params(params, mask)

    def f(flat):
        return weighted_objective(loss, fp.unravel(flat), main, rem)

    vg = jax.value_and_grad(f)

    def one(v):
        (val, g), (_, hv) = jax.jvp(vg, (fp.flat,), (v.astype(fp.flat.dtype),))
        return val, g, hv

    if vecs.shape[0] == 1:  # the common case; vmap of one tangent costs extra on CPU
        val, g, hv = one(vecs[0])
        return val, g, hv[None]
    vals, gs, hvs = jax.vmap(one)(vecs)
    return vals[0], gs[0], hvs


def flat_hvp(loss, mask, params, main, rem, n_total):
    """A traceable ``v -> H v`` of the mean loss over one placed batch (flat ``v``)."""
    fp = flatten_params(params, mask)

    def f(flat):
        return weighted_objective(loss, fp.unravel(flat), main, rem)

    g = jax.grad(f)
    scale = 1.0 / n_total

    def matvec(v):  # in the parameters' dtype; the result in the vector's
        hv = jax.jvp(g, (fp.flat,), (v.astype(fp.flat.dtype),))[1] * scale
        return hv.astype(v.dtype)

    return matvec


@partial(jax.jit, static_argnames=("loss", "mask"), donate_argnames=("acc",))
def hvp_sum(loss, mask, params, main, rem, vecs, acc=None):
    """``acc + sum_{examples} H_i v`` for each row of ``vecs`` (b, n), or for one
    vector ``vecs`` (n,); also the summed loss. One jitted step of a full-data pass
    (accumulator donated); ``acc=None`` (one batch) returns the sum itself and needs
    no zero accumulator."""
    one = vecs.ndim == 1
    val, _, hvs = loss_and_hvp(loss, mask, params, main, rem, vecs[None] if one else vecs)
    # Products in the parameters' dtype (bfloat16 too), returned in the vectors' (float32
    # or better: the recurrence's).
    hvs = (hvs[0] if one else hvs).astype(vecs.dtype)
    return (hvs if acc is None else acc + hvs), val


@partial(jax.jit, static_argnames=("loss", "mask"))
def grad_sum(loss, mask, params, main, rem):
    """Summed loss and flat gradient over the batch (the same machinery as
    :func:`hvp_sum`, used to compare the cost of a product with a gradient)."""
    fp = flatten_params(params, mask)

    def f(flat):
        return weighted_objective(loss, fp.unravel(flat), main, rem)

    return jax.value_and_grad(f)(fp.flat)
