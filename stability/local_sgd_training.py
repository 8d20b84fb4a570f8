"""Local SGD / DiLoCo on a network: ``simulate_diloco``.

The simulator of the model in `stability.theory.local_sgd` (docs/theory.md section
17), on the user's loss and data. One round k:

1. every simulated worker m starts from the global weights x_k it holds and takes
   H = ``config.inner_steps`` full-batch steps of the inner rule
   (``config.inner``'s own `Rule.update`, learning rate ``config.inner_lr``,
   momentum ``config.inner_beta``, no delay) on its data: all of ``data``, or its
   shard ``shards[m]``; its inner buffer is zeroed (``init_buffer`` of x_k) every
   round when ``config.reset``, else kept across rounds (its weights still restart
   from x_k);
2. its pseudo-gradient is ``Delta^m_k = x_k - x^m_local``;
3. the outer rule (``config.outer``, ``outer_lr``, ``outer_momentum``) takes the
   schedule's pseudo-gradient as its gradient:

   - ``"diloco"``:    ``mean_m Delta^m_k`` (no delay);
   - ``"eager"``:     worker m applies ``(1/M) Delta^m_k + (1/M) sum_{j != m}
     Delta^j_{k-1}`` (its own fresh pseudo-gradient, the others' one round stale),
     M = ``config.workers``;
   - ``"streaming"``: ``mean_m Delta^m_{k - overlap}`` (the averaged
     pseudo-gradient ``overlap`` rounds late).

   Nothing has arrived before round 0: the stale pseudo-gradients of rounds < 0 are 0.

Workers. Without ``shards`` every worker sees the same full-batch loss and starts
from the same weights, so all M workers compute the same Delta (bit for bit): one
worker is simulated, and the eager mixture is ``(1/M) Delta_k + ((M-1)/M)
Delta_{k-1}``, exactly the delay distribution ``(1/M, (M-1)/M)`` of the theory.
With ``shards`` (a pytree of arrays with a leading worker axis, ``shards[m]`` worker
m's data; `shard_data` makes them) every worker is simulated: each does its inner
steps on its own shard's loss, so the pseudo-gradients differ, the average is over
the M shards, and under ``"eager"`` each worker holds its own replica of the global
weights and outer state (they differ, since each applies its own fresh Delta). What
that changes against the theory: the average of the shards' inner loops is not the
inner loop of the average loss (the theory's kappa(a) is that of the full-batch
Hessian; H inner steps on shard Hessians H_m average to ``mean_m (I - lr H_m)^H``,
which equals ``(I - lr H)^H`` only for H = 1 or equal shard Hessians), and near an
interpolating minimum every shard's gradient vanishes too, but a non-interpolating
minimum of the full loss is not a fixed point of the sharded round (client drift).
The recorded weights are then the replicas' mean.

Execution: one jit-compiled ``jax.lax.scan`` over records, each a scan over
``record_every`` rounds, each a scan over the H inner steps (the workers vmapped);
the weights, data, shards and all four learning rates / momenta are arguments of
the compiled program (a sweep over ``outer_lr`` does not recompile); the loss, the
rules, H, the schedule, M, the overlap, ``rounds`` and ``record_every`` are static.

References: A. Douillard et al., DiLoCo (2023); Streaming DiLoCo (2025); S. Kale et
al., Eager updates for overlapped communication and computation in DiLoCo (2025).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.simulate import check_params
from stability.theory.local_sgd import LocalSGD, check_local_sgd
from stability.validation import check_int, check_lr, leading_size

__all__ = ["DiLoCoTrajectory", "shard_data", "simulate_diloco"]


class DiLoCoTrajectory(NamedTuple):
    """The record of one simulated local SGD / DiLoCo run.

    Attributes:
      loss: full-data loss of the global weights at the recorded rounds, ``(records,)``.
      distance: ``||x_k - reference||`` (all leaves; ``reference`` defaults to the
        starting weights) at the recorded rounds.
      round: the round index of each record (0, every ``record_every``-th round,
        and the last round).
      params: the global weights after the last round (the last recorded finite
        ones when the run diverged; the replicas' mean under eager with shards).
      diverged: True when the loss or the distance became non-finite.
    """

    loss: np.ndarray
    distance: np.ndarray
    round: np.ndarray
    params: Any
    diverged: bool


def shard_data(data, workers: int):
    """``data`` split into ``workers`` contiguous equal shards: every leaf reshaped
    from ``(n, ...)`` to ``(workers, n // workers, ...)`` (the last ``n % workers``
    examples dropped; ValueError when a shard would be empty)."""
    n = leading_size("data", data)
    workers = check_int("workers", workers, 1)
    size = n // workers
    if size < 1:
        raise ValueError(f"workers must be <= the number of examples {n}; got {workers}")
    return jax.tree_util.tree_map(
        lambda x: jnp.reshape(jnp.asarray(x)[: workers * size], (workers, size, *x.shape[1:])),
        data,
    )


def simulate_diloco(
    loss: Callable,
    params,
    data,
    config: LocalSGD,
    *,
    rounds: int,
    outer_lr,
    outer_momentum=0.0,
    shards=None,
    record_every: int = 1,
    reference=None,
) -> DiLoCoTrajectory:
    """Run local SGD / DiLoCo (module docstring) for ``rounds`` rounds from ``params``.

    Args:
      loss: ``loss(params, batch) -> scalar`` (the mean loss over the batch). Static.
      params: the starting global weights x_0 (a pytree of float arrays).
      data: the data set as one pytree of arrays sharing the leading example axis:
        every worker's full batch without ``shards``, and the recorded loss's.
      config: a `stability.LocalSGD` (inner rule, inner lr and momentum, H, reset,
        outer rule, schedule, workers, overlap; checked as the theory checks it).
      rounds: number of rounds (>= 1); each is H inner steps per worker.
      outer_lr: the outer learning rate (> 0; DiLoCo's 0.7). Traced.
      outer_momentum: the outer rule's momentum (0 for ``"gd"``). Traced.
      shards: None (every worker sees all of ``data``), or a pytree of arrays with a
        leading worker axis M and an example axis (`shard_data`): worker m's inner
        steps are full-batch on ``shards[m]``. M = the number of shards; under
        ``"eager"`` it must equal ``config.workers`` (the mixing), otherwise
        ``config.workers`` stays 1 as the theory requires.
      record_every: record the loss and distance every this many rounds (and at the
        last round).
      reference: the point the distance is measured from (default ``params``).

    Returns:
      A `DiLoCoTrajectory`.
    """
    config = check_local_sgd(config)
    rounds = check_int("rounds", rounds, 1)
    record_every = min(check_int("record_every", record_every, 1), rounds)
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(params, batch); got {type(loss).__name__}")
    dtype = check_params(params)
    leading_size("data", data)
    for name, x in (("outer_lr", outer_lr), ("config.inner_lr", config.inner_lr)):
        if np.ndim(x) != 0:
            raise ValueError(f"{name} must be a single number; got shape {np.shape(x)}")
    check_lr(outer_lr, "outer_lr")
    config.outer.check_beta(outer_momentum, "outer_momentum")
    for name, x in (("outer_momentum", outer_momentum), ("config.inner_beta", config.inner_beta)):
        if np.ndim(x) != 0:
            raise ValueError(f"{name} must be a single number; got shape {np.shape(x)}")
    if shards is None:
        simulated = 1
        worker_data = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], data)
    else:
        leaves = jax.tree_util.tree_leaves(shards)
        if not leaves or any(np.ndim(x) < 2 for x in leaves):
            raise ValueError(
                "shards must be a pytree of arrays with a leading worker axis and an example "
                "axis (see stability.shard_data)"
            )
        simulated = leading_size("shards", shards)
        for x in leaves:
            if np.shape(x)[1] < 1:
                raise ValueError(f"every shard must hold at least one example; got {np.shape(x)}")
        if config.schedule == "eager" and config.workers != simulated:
            raise ValueError(
                f"config.workers must equal the number of shards {simulated} for "
                f"schedule='eager'; got {config.workers}"
            )
        worker_data = jax.tree_util.tree_map(jnp.asarray, shards)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
    reference = params if reference is None else jax.tree_util.tree_map(jnp.asarray, reference)
    numbers = tuple(
        jnp.asarray(x, dtype)
        for x in (outer_lr, outer_momentum, config.inner_lr, config.inner_beta)
    )
    run = _program(
        loss,
        config._replace(inner_lr=None, inner_beta=None),
        simulated,
        rounds,
        record_every,
    )
    losses, distances, last, finite = run(params, reference, data, worker_data, *numbers)
    losses, distances = np.asarray(losses), np.asarray(distances)
    records = np.arange(0, rounds, record_every)
    records = np.append(records, rounds)
    return DiLoCoTrajectory(
        loss=losses,
        distance=distances,
        round=records,
        params=last,
        diverged=not bool(finite),
    )


def _tree_mean0(tree):
    return jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), tree)


@functools.cache
def _program(loss, config: LocalSGD, simulated: int, rounds: int, every: int):
    """The compiled run (cached per static options)."""
    inner, outer = config.inner, config.outer
    steps, workers = config.inner_steps, config.workers
    delay = max(config.overlap, 1)  # pseudo-gradients kept: the last `delay` rounds
    grad = jax.grad(loss)
    tmap = jax.tree_util.tree_map

    def local(x, v, batch, lr, beta):
        """One worker's H inner steps from x (buffer v); returns (Delta, v)."""
        if config.reset:
            v = inner.init_buffer(x)

        def step(carry, _):
            w, v = carry
            return inner.update(w, v, grad(w, batch), lr, beta), None

        (w, v), _ = jax.lax.scan(step, (x, v), None, length=steps)
        return tmap(jnp.subtract, x, w), v

    def one_round(state, _, worker_data, numbers):
        x, u, v, past = state  # replicas (S, ...), outer buffers, inner buffers, (delay, S, ...)
        olr, omu, ilr, ibeta = numbers
        delta, v = jax.vmap(local, in_axes=(0, 0, 0, None, None))(x, v, worker_data, ilr, ibeta)
        oldest = tmap(lambda p: p[0], past)
        if config.schedule == "diloco":
            g = tmap(lambda d: jnp.broadcast_to(jnp.mean(d, 0), d.shape), delta)
        elif config.schedule == "streaming":
            g = tmap(lambda d: jnp.broadcast_to(jnp.mean(d, 0), d.shape), oldest)
        else:  # eager: own fresh / M + the others' stale / M
            m = jnp.asarray(workers, olr.dtype)
            g = tmap(
                lambda d, p: (d - p) / m + jnp.mean(p, 0, keepdims=True),
                delta,
                oldest,
            )
        x, u = jax.vmap(outer.update, in_axes=(0, 0, 0, None, None))(x, u, g, olr, omu)
        past = tmap(lambda p, d: jnp.concatenate([p[1:], d[None]], 0), past, delta)
        return (x, u, v, past), None

    def measure(x, reference, data):
        w = _tree_mean0(x)
        diff = tmap(lambda a, b: jnp.sum((a - b) ** 2), w, reference)
        return w, loss(w, data), jnp.sqrt(sum(jax.tree_util.tree_leaves(diff)))

    def advance(carry, length, worker_data, numbers, reference, data):
        state, last, finite = carry
        state, _ = jax.lax.scan(
            lambda s, i: one_round(s, i, worker_data, numbers), state, None, length=length
        )
        w, value, dist = measure(state[0], reference, data)
        ok = finite & jnp.isfinite(value) & jnp.isfinite(dist)
        last = tmap(lambda a, b: jnp.where(ok, a, b), w, last)
        return (state, last, ok), (value, dist)

    full, rest = divmod(rounds, every)

    @jax.jit
    def run(params, reference, data, worker_data, *numbers):
        x = tmap(lambda p: jnp.broadcast_to(p, (simulated, *p.shape)), params)
        u = jax.vmap(outer.init_buffer)(x)
        v = jax.vmap(inner.init_buffer)(x)
        past = tmap(lambda p: jnp.zeros((delay, *p.shape), p.dtype), x)
        _, value0, dist0 = measure(x, reference, data)
        carry = ((x, u, v, past), params, jnp.isfinite(value0) & jnp.isfinite(dist0))
        carry, (values, dists) = jax.lax.scan(
            lambda c, _: advance(c, every, worker_data, numbers, reference, data),
            carry,
            None,
            length=full,
        )
        values = jnp.concatenate([value0[None], values])
        dists = jnp.concatenate([dist0[None], dists])
        if rest:
            carry, (value, dist) = advance(carry, rest, worker_data, numbers, reference, data)
            values = jnp.concatenate([values, value[None]])
            dists = jnp.concatenate([dists, dist[None]])
        _, last, finite = carry
        return values, dists, last, finite

    return run
