"""Simulated asynchronous SGD, as a parameter server sees it.

At step t the server applies a gradient computed at stale weights
w_{t - tau_t} (docs/theory.md sections 1-3). Update rules (v = momentum buffer,
g = the stale gradient that arrives at step t):

=============  ===========================================================
``heavy_ball``  v+ = beta v + g;             w+ = w - lr v+   (torch/optax SGD)
``nesterov``    v+ = beta v + g;             w+ = w - lr (g + beta v+)
``shifted``     v_k+ = beta v_k + g;         w+ = w - lr v_k+ (k = the pushing
                worker; each worker keeps its own buffer, Giladi et al. 2020)
=============  ===========================================================

``beta = 0`` is plain delayed SGD (every rule reduces to it). With a constant
delay and round-robin workers, ``shifted`` is v_{t+1} = beta v_{t-tau} +
g_{t-tau}.

Delay models:

- constant ``tau``: the gradient at step t is evaluated at w_{t - tau}
  (w_0 for t < tau: the ring buffer starts filled with the initial weights).
  Memory: ``tau`` extra copies of the parameters (plus ``tau + 1`` momentum
  buffers for ``shifted``).
- ``num_workers = N``: at step t worker k = schedule(t) pushes a gradient
  computed at the weights it pulled right after its own previous push (w_0
  before its first push), then pulls the new weights. ``"round_robin"``
  (k = t mod N) gives exactly the constant delay tau = N - 1;
  ``"random"`` draws each round of N consecutive steps as a fresh uniformly
  random permutation of the workers, so the delays lie in 0..2N-2 with the
  triangular law P(tau) = (N - |N - 1 - tau|) / N^2 (after the first round).
  Memory: N snapshots of the parameters (plus N momentum buffers for
  ``shifted``).
- ``block_delays``: a delay per block of parameters (a pipeline, docs/theory.md
  section 18; any spec `stability.curvature.blocks.block_delays` accepts, e.g.
  ``Stages(P, "1f1b")``): the gradient applied to block b at step t is block
  b's part of the gradient at w_{t - tau_b} (w_0 for t < tau_b). A step
  evaluates the gradient once per DISTINCT delay d, at w_{t - d}, on the same
  batch, and takes each leaf from its own delay's gradient (`pick_by_delay`);
  then the rule's update. Memory: ``max_b tau_b`` copies of the parameters (the
  ring of the constant delay ``tau = max_b tau_b``). Rules with a buffer per
  worker (``shifted``) are refused: there are no workers.

Everything runs in one jit-compiled ``jax.lax.scan``; parameters, data, lr,
beta and the random key are arguments of the compiled function (not
constants), the shapes, rule and schedule are static. With a sharpness
``tracker`` the same steps run in chunks (one compiled scan per chunk, the
state carried between them) and the tracker sees the weights between chunks.
The state and the step (`ServerState`, `init_state`, `worker_order`,
`async_step`, with the checks `check_delays`, `check_params` and `track`) are
shared with `stability.training.train_async`, which trains
from initialization on mini-batches drawn without replacement per epoch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.curvature.blocks import BlockDelays, pick_by_delay
from stability.curvature.blocks import block_delays as resolve_blocks
from stability.theory.hyperparameters import check_hyperparameters
from stability.theory.rules import Rule
from stability.validation import check_int, check_option, leading_size

__all__ = ["AsyncTrajectory", "growth_rate", "simulate_async", "stationary_tilt"]

SCHEDULES = ("round_robin", "random")


class AsyncTrajectory(NamedTuple):
    """The record of one simulated asynchronous run.

    Attributes:
      loss: full-data loss at the recorded steps, shape ``(records,)``
        (``(steps + 1,)`` with ``record_every=1``: w_0 .. w_steps).
      distance: ``||w_t - w_0||`` (Euclidean norm over all leaves) at the
        recorded steps, same shape as ``loss``.
      params: the final parameters w_steps (same pytree as the input).
      delays: the delay tau_t applied at each step t, int32, shape ``(steps,)``;
        with ``block_delays``, the largest delay applied at step t,
        ``min(t, max_b tau_b)`` (the block delays themselves do not change).
      step: the step index t of each record, shape ``(records,)``.
      diverged: True when the loss or the distance became non-finite.
    """

    loss: jax.Array
    distance: jax.Array
    params: Any
    delays: jax.Array
    step: np.ndarray
    diverged: bool


def simulate_async(
    loss: Callable,
    params,
    data=None,
    *,
    lr,
    tau: int | None = None,
    num_workers: int | None = None,
    block_delays=None,
    beta=0.0,
    momentum: str = "heavy_ball",
    schedule: str = "round_robin",
    batch_size: int | None = None,
    steps: int,
    seed: int = 0,
    record_every: int = 1,
    tracker: Callable | None = None,
) -> AsyncTrajectory:
    """Run asynchronous SGD with stale gradients and record loss and distance.

    Args:
      loss: ``loss(params, batch) -> scalar`` (the mean loss over the batch),
        or ``loss(params)`` when ``data`` is None.
      params: initial parameters w_0 (any pytree of float arrays).
      data: the whole data set as ONE batch held in memory: a pytree of arrays
        sharing the leading (example) axis; or None.
      lr: learning rate (> 0). A traced argument: sweeping it does not
        recompile.
      tau: constant delay (integer >= 0). Give exactly one of ``tau``,
        ``num_workers`` and ``block_delays``.
      num_workers: number of workers N >= 1 (see ``schedule``).
      block_delays: a delay per block of parameters (module docstring): a
        `stability.curvature.blocks.Stages`, a dict of path prefixes, a callable
        of the leaf path, a pytree of ints shaped like ``params`` or a resolved
        `stability.curvature.blocks.BlockDelays`. Not with ``shifted`` (a buffer
        per worker) nor with ``schedule="random"``.
      beta: momentum coefficient in [0, 1); 0 is plain delayed SGD.
      momentum: "heavy_ball", "nesterov", "shifted" or "gd" (see module docstring),
        or a `stability.theory.rules.Rule` (its ``update`` is the step): any optax
        optimizer as ``stability.OptaxRule(optimizer)`` (``lr=1``: its updates as
        they are; its state starts at ``optimizer.init``; to start from a trained
        state use `stability.simulate_optax`).
      schedule: "round_robin" (tau = N - 1) or "random" (a random permutation
        of the workers per round of N steps); needs ``num_workers``.
      batch_size: if given, each step's gradient is on a mini-batch of that
        many distinct examples drawn uniformly at random (with ``seed``);
        otherwise on the full batch ``data``.
      steps: number of server updates (>= 1).
      seed: seeds the random schedule and the mini-batches.
      record_every: record loss and distance every this many steps (and at
        the last step); the full-data loss is evaluated only there.
      tracker: optional sharpness tracker, e.g. a `stability.SharpnessTracker`
        (any callable ``tracker(params, step)`` with an integer attribute
        ``every``). The run is then split into chunks of ``tracker.every``
        steps, one compiled ``lax.scan`` each (one compilation, reused), and
        ``tracker(w_t, t)`` is called before the first step and after each
        chunk: its ``history`` is the sharpness record of the run. The
        trajectory is the same as without a tracker (same steps, delays and
        mini-batches); ``record_every`` must divide ``tracker.every``. At the
        last step a tracker with a ``check`` method (`SharpnessTracker`) checks
        even when ``steps`` is not a multiple of ``every``. Once the loss or
        the distance is non-finite (a diverged run) the tracker is no longer
        called (its check of non-finite weights would raise and lose the
        run): the run goes on to ``steps`` and ``diverged`` is True, as without
        a tracker; the tracker's history ends at the last finite chunk end.

    Returns:
      An `AsyncTrajectory`.

    Compilation: ``loss`` and the integer options are static (the compiled
    program is cached per ``loss`` function object, so pass the same object to
    reuse it); ``params``, ``data``, ``lr``, ``beta`` and ``seed`` are traced
    arguments. This driver itself is not traceable (it validates its inputs
    and reads the result back to set ``diverged``).
    """
    momentum = check_hyperparameters(lr=lr, beta=beta, momentum=momentum).rule
    schedule = check_option("schedule", schedule, SCHEDULES)
    steps = check_int("steps", steps, 1)
    record_every = check_int("record_every", record_every, 1)
    seed = check_int("seed", seed, 0)
    if block_delays is None:
        tau, num_workers = check_delays(tau, num_workers, schedule)
    dtype = check_params(params)
    blocks = check_block_delays(params, block_delays, tau, num_workers, schedule, momentum)
    if blocks is not None:
        tau = max(blocks)  # the ring of the largest delay holds every stale iterate
    if data is None:
        if batch_size is not None:
            raise ValueError(f"batch_size={batch_size!r} needs data; got data=None")
    else:
        n = leading_size("data", data)
        if batch_size is not None:
            batch_size = check_int("batch_size", batch_size, 1)
            if batch_size > n:
                raise ValueError(
                    f"batch_size must be in 1..{n} (the number of examples); got {batch_size}"
                )
    track_every = _check_tracker(tracker, record_every)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    key = jax.random.key(seed)
    options = dict(loss=loss, tau=tau, num_workers=num_workers, momentum=momentum, blocks=blocks)
    lr = jnp.asarray(lr, dtype=dtype)
    beta = jnp.asarray(beta, dtype=dtype)
    if tracker is None:
        traj = _simulate(
            params,
            data,
            lr,
            beta,
            key,
            schedule=schedule,
            batch_size=batch_size,
            steps=steps,
            record_every=record_every,
            **options,
        )
    else:
        traj = _simulate_tracked(
            params,
            data,
            lr,
            beta,
            key,
            tracker,
            track_every,
            schedule=schedule,
            batch_size=batch_size,
            steps=steps,
            record_every=record_every,
            **options,
        )
    loss_rec, dist_rec, final, delays = traj
    record_steps = _record_steps(steps, record_every)
    diverged = bool(
        not (np.all(np.isfinite(np.asarray(loss_rec))) and np.all(np.isfinite(dist_rec)))
    )
    return AsyncTrajectory(loss_rec, dist_rec, final, delays, record_steps, diverged)


def check_delays(tau, num_workers, schedule: str) -> tuple[int | None, int | None]:
    """Exactly one of a constant delay ``tau`` and ``num_workers``, checked."""
    if (tau is None) == (num_workers is None):
        raise ValueError(
            f"give exactly one of tau and num_workers; got tau={tau!r}, num_workers={num_workers!r}"
        )
    if tau is not None:
        tau = check_int("tau", tau, 0)
        if schedule != "round_robin":
            raise ValueError(
                f"schedule={schedule!r} needs num_workers (a constant tau has no schedule)"
            )
        return tau, None
    return None, check_int("num_workers", num_workers, 1)


def check_block_delays(
    params, spec, tau, num_workers, schedule: str, momentum: Rule
) -> tuple[int, ...] | None:
    """``block_delays`` resolved against ``params``: the delay of every leaf
    (``tree_leaves`` order, a static tuple), or None without ``spec``. Exclusive
    with ``tau`` and ``num_workers``; refuses a random schedule and a rule with a
    buffer per worker. Shared with `stability.training.train_async`."""
    if spec is None:
        return None
    if tau is not None or num_workers is not None:
        raise ValueError(
            "give exactly one of tau, num_workers and block_delays (each block has its own "
            f"delay); got tau={tau!r}, num_workers={num_workers!r} with block_delays={spec!r}"
        )
    if schedule != "round_robin":
        raise ValueError(
            f"schedule={schedule!r} needs num_workers (block_delays are fixed delays, with no "
            "schedule)"
        )
    if momentum.per_worker_buffer:
        raise ValueError(
            f"momentum={momentum.name!r} keeps a buffer per worker, and block_delays have no "
            "workers; use heavy_ball, nesterov, gd or an OptaxRule"
        )
    blocks = resolve_blocks(params, spec, name="block_delays")
    return tuple(jax.tree_util.tree_leaves(blocks.leaf_delays))


def check_params(params):
    """Non-empty pytree of floating-point arrays; returns their common dtype."""
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        raise ValueError("params must contain at least one array")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                f"params must be floating-point arrays; got a leaf of dtype {jnp.result_type(leaf)}"
            )
    return jnp.result_type(*leaves)


def _check_tracker(tracker, record_every: int) -> int | None:
    """The tracker's ``every`` (the chunk length), checked; None without a tracker."""
    if tracker is None:
        return None
    if not callable(tracker):
        raise TypeError(
            f"tracker must be callable as tracker(params, step); got {type(tracker).__name__}"
        )
    every = check_int("tracker.every", getattr(tracker, "every", None), 1)
    if every % record_every:
        raise ValueError(
            f"record_every must divide tracker.every={every} (records fall on chunk ends); "
            f"got record_every={record_every}"
        )
    return every


def _simulate_tracked(
    params,
    data,
    lr,
    beta,
    key,
    tracker,
    every,
    *,
    loss,
    tau,
    num_workers,
    momentum,
    schedule,
    batch_size,
    steps,
    record_every,
    blocks=None,
):
    """`_simulate` in chunks of ``every`` steps, calling ``tracker(w_t, t)`` between them."""
    options = dict(loss=loss, tau=tau, num_workers=num_workers, momentum=momentum)
    carry, xs, (l0, d0) = _simulate_start(
        params, data, key, schedule=schedule, steps=steps, **options
    )
    losses, dists, delays = [l0[None]], [d0[None]], []
    finite = _finite(l0, d0)
    if finite:
        tracker(carry.w, 0)
    for lo in range(0, steps, every):
        part = jax.tree_util.tree_map(lambda a, lo=lo: a[lo : lo + every], xs)
        carry, (lc, dc), dl = _simulate_segment(
            carry,
            params,
            part,
            data,
            lr,
            beta,
            batch_size=batch_size,
            record_every=record_every,
            blocks=blocks,
            **options,
        )
        losses.append(lc)
        dists.append(dc)
        delays.append(dl)
        # A diverged run goes on untracked (the same steps as without a tracker):
        # a sharpness check of non-finite weights would raise and lose the record.
        finite = finite and _finite(lc, dc)
        if finite:
            track(tracker, carry.w, min(lo + every, steps), steps)
    return jnp.concatenate(losses), jnp.concatenate(dists), carry.w, jnp.concatenate(delays)


def _finite(*arrays) -> bool:
    """Whether every value of every array is finite (read back to the host)."""
    return all(bool(np.all(np.isfinite(np.asarray(a)))) for a in arrays)


def track(tracker, params, step: int, steps: int) -> None:
    """``tracker(params, step)``; at the last step a tracker with a ``check`` method
    (`stability.SharpnessTracker`) checks whatever ``step % every`` is, so that a
    run's sharpness record ends at its final weights. Shared with `train_async`."""
    every = getattr(tracker, "every", 1)
    last_unchecked = (
        step == steps and isinstance(every, (int, np.integer)) and every > 0 and step % every
    )
    if last_unchecked and callable(getattr(tracker, "check", None)):
        tracker.check(params, step)
    else:
        tracker(params, step)


def _record_steps(steps: int, every: int) -> np.ndarray:
    rec = np.arange(0, steps + 1, every)
    if rec[-1] != steps:
        rec = np.append(rec, steps)
    return rec


def _tree_stack(tree, size: int):
    """``size`` copies of ``tree`` along a new leading axis."""
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (size, *x.shape)), tree)


def _tree_read(buf, i):
    return jax.tree_util.tree_map(lambda b: jax.lax.dynamic_index_in_dim(b, i, keepdims=False), buf)


def _tree_write(buf, i, tree):
    return jax.tree_util.tree_map(lambda b, x: b.at[i].set(x), buf, tree)


def _distance(w, w0):
    pairs = zip(jax.tree.leaves(w), jax.tree.leaves(w0), strict=True)
    sq = [jnp.sum(jnp.square(a - b)) for a, b in pairs]
    return jnp.sqrt(functools.reduce(jnp.add, sq))


class ServerState(NamedTuple):
    """The server's state between steps (shared with `stability.training`).

    w: the current weights w_t. slots: the stale weights (ring of the last
    ``tau`` iterates for a constant delay; the snapshot each worker pulled for
    ``num_workers``), stacked on a leading axis, or None (tau = 0). pulled: the
    step at which each worker pulled its snapshot (int32, ``(N,)``; unused for a
    constant delay). v: the momentum buffer (stacked per slot for ``shifted``).
    t: the step index (int32 scalar).
    """

    w: Any
    slots: Any
    pulled: jax.Array
    v: Any
    t: jax.Array


def _buffers(tau, num_workers, rule: Rule) -> int:
    """How many optimiser buffers the server keeps: one per ring slot (tau + 1) or
    per worker for a rule with ``per_worker_buffer`` (shifted), else one."""
    if not rule.per_worker_buffer:
        return 1
    return tau + 1 if tau is not None else num_workers


def init_state(w0, *, tau, num_workers, momentum: Rule) -> ServerState:
    """The state before step 0: every slot holds w0, every buffer is the rule's
    initial one (zeros for the momentum rules)."""
    constant = tau is not None
    n_slots = tau if constant else num_workers
    buffer = momentum.init_buffer(w0)
    slots = _tree_stack(w0, n_slots) if n_slots else None
    if momentum.per_worker_buffer:
        buffer = _tree_stack(buffer, _buffers(tau, num_workers, momentum))
    pulled = jnp.zeros((num_workers or 1,), jnp.int32)
    return ServerState(w0, slots, pulled, buffer, jnp.zeros((), jnp.int32))


def worker_order(key, steps: int, *, tau, num_workers, schedule):
    """The worker that pushes at each step t, int32 ``(steps,)``.

    Round robin: t mod N. Random: each round of N steps is a fresh uniformly
    random permutation of the workers. A constant delay has no workers: t.
    """
    t_all = jnp.arange(steps, dtype=jnp.int32)
    if tau is not None:
        return t_all  # unused: the ring slot is t mod tau
    if schedule == "round_robin":
        return t_all % num_workers
    rounds = -(-steps // num_workers)
    perms = jax.vmap(lambda k: jax.random.permutation(k, num_workers))(
        jax.random.split(key, rounds)
    )
    return perms.reshape(-1)[:steps].astype(jnp.int32)


def async_step(
    state: ServerState, worker, gradient, lr, beta, *, tau, num_workers, momentum, blocks=None
):
    """One server update: ``(state+, delay, aux)``.

    ``gradient(w_stale) -> (g, aux)`` evaluates the gradient that arrives at
    step t at the stale weights it was computed at (``aux``: anything the
    caller wants back per step, e.g. the mini-batch loss). The update rule is
    the module docstring's; ``worker`` is this step's pushing worker (ignored
    for a constant delay). ``blocks``: the delay of every leaf (a static tuple,
    `check_block_delays`) with ``tau`` their maximum: then `block_step`.
    """
    if blocks is not None:
        return block_step(state, gradient, lr, beta, blocks=blocks, momentum=momentum)
    w, slots, pulled, v, t = state
    constant = tau is not None
    n_vbuf = _buffers(tau, num_workers, momentum)
    # Read the stale weights the arriving gradient was computed at.
    if constant:
        slot = t % tau if tau > 0 else None
        w_stale = w if tau == 0 else _tree_read(slots, slot)
        delay = jnp.minimum(t, tau).astype(jnp.int32)
    else:
        w_stale = _tree_read(slots, worker)
        delay = (t - pulled[worker]).astype(jnp.int32)
    g, aux = gradient(w_stale)
    if momentum.per_worker_buffer:  # the pushing worker's own buffer (shifted)
        vslot = t % n_vbuf if constant else worker
        w_new, v_k = momentum.update(w, _tree_read(v, vslot), g, lr, beta)
        v = _tree_write(v, vslot, v_k)
    else:
        w_new, v = momentum.update(w, v, g, lr, beta)
    if constant:
        if tau > 0:  # w_t goes where w_{t-tau} was: read at step t + tau
            slots = _tree_write(slots, slot, w)
    else:  # the pushing worker pulls the new weights
        slots = _tree_write(slots, worker, w_new)
        pulled = pulled.at[worker].set(t + 1)
    return ServerState(w_new, slots, pulled, v, t + 1), delay, aux


def block_step(state: ServerState, gradient, lr, beta, *, blocks, momentum):
    """One server update with a delay per leaf: ``(state+, largest delay, aux)``.

    ``blocks``: the delay tau_b of every leaf (``tree_leaves`` order), T = max.
    The state's ring (``T`` slots, laid out as for the constant delay T: slot
    ``s mod T`` holds w_s until step s + T overwrites it) holds every w_{t - d},
    d <= T, at slot ``(t - d) mod T`` (w_0 while t < d: not yet overwritten).
    The gradient is evaluated once per distinct delay d at w_{t - d} and each
    leaf is taken from its own delay's gradient (`pick_by_delay`):
    ``g = sum_b P_b grad(w_{t - tau_b})``; then the rule's update. ``aux`` is
    that of the largest delay's evaluation.
    """
    w, slots, pulled, v, t = state
    top = max(blocks)
    distinct = tuple(sorted(set(blocks)))
    grads, aux = [], None
    for d in distinct:
        w_d = w if d == 0 else _tree_read(slots, (t - d) % top)
        g, aux = gradient(w_d)  # ascending delays: aux ends as the largest delay's
        grads.append(g)
    leaf_delays = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(w), list(blocks))
    g = pick_by_delay(BlockDelays(leaf_delays, (), distinct, ()), grads)
    w_new, v = momentum.update(w, v, g, lr, beta)
    if top > 0:  # w_t goes where w_{t-T} was
        slots = _tree_write(slots, t % top, w)
    delay = jnp.minimum(t, top).astype(jnp.int32)
    return ServerState(w_new, slots, pulled, v, t + 1), delay, aux


_STATIC = ("loss", "tau", "num_workers", "momentum", "schedule", "batch_size", "record_every")


def _start(params, data, key, *, loss, tau, num_workers, schedule, steps):
    """Initial state, per-step inputs (worker, mini-batch key) and the w_0 record."""
    schedule_key, batch_key = jax.random.split(key)
    workers = worker_order(schedule_key, steps, tau=tau, num_workers=num_workers, schedule=schedule)
    xs = (workers, jax.random.split(batch_key, steps))
    return xs, _record(loss, data, params, params)


def _record(loss, data, w, w0):
    """(full-data loss, distance from w0) at w."""
    return (loss(w) if data is None else loss(w, data)), _distance(w, w0)


def _segment(
    carry,
    w0,
    xs,
    data,
    lr,
    beta,
    *,
    loss,
    tau,
    num_workers,
    momentum,
    batch_size,
    record_every,
    blocks=None,
):
    """Run ``len(xs)`` steps from ``carry``; record every ``record_every`` and at the end.

    Returns ``(carry, (losses, distances), delays)``. Traced: called inside the
    compiled `_simulate` and `_simulate_segment`.
    """
    grad_fn = jax.grad(loss)

    def gradient(w_stale, bkey):
        if data is None:
            return grad_fn(w_stale), None
        if batch_size is None:
            return grad_fn(w_stale, data), None
        n = jax.tree_util.tree_leaves(data)[0].shape[0]
        idx = jax.random.choice(bkey, n, (batch_size,), replace=False)
        batch = jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0), data)
        return grad_fn(w_stale, batch), None

    def step(carry, x):
        worker, bkey = x
        carry, delay, _ = async_step(
            carry,
            worker,
            lambda w: gradient(w, bkey),
            lr,
            beta,
            tau=tau,
            num_workers=num_workers,
            momentum=momentum,
            blocks=blocks,
        )
        return carry, delay

    def chunk(carry, xs):
        carry, delays = jax.lax.scan(step, carry, xs)
        return carry, (_record(loss, data, carry.w, w0), delays)

    steps = jax.tree_util.tree_leaves(xs)[0].shape[0]
    n_chunks, rem = divmod(steps, record_every)
    head = jax.tree_util.tree_map(
        lambda a: a[: n_chunks * record_every].reshape(n_chunks, record_every, *a.shape[1:]), xs
    )
    losses, dists, delays = [], [], []
    if n_chunks:
        carry, ((lc, dc), dl) = jax.lax.scan(chunk, carry, head)
        losses.append(lc)
        dists.append(dc)
        delays.append(dl.reshape(-1))
    if rem:
        tail = jax.tree_util.tree_map(lambda a: a[n_chunks * record_every :], xs)
        carry, ((lc, dc), dl) = chunk(carry, tail)
        losses.append(lc[None])
        dists.append(dc[None])
        delays.append(dl)
    return carry, (jnp.concatenate(losses), jnp.concatenate(dists)), jnp.concatenate(delays)


@functools.partial(jax.jit, static_argnames=(*_STATIC, "steps", "blocks"))
def _simulate(
    params,
    data,
    lr,
    beta,
    key,
    *,
    loss,
    tau,
    num_workers,
    momentum,
    schedule,
    batch_size,
    steps,
    record_every,
    blocks=None,
):
    """The whole run in one compiled program (the default path)."""
    xs, (l0, d0) = _start(
        params,
        data,
        key,
        loss=loss,
        tau=tau,
        num_workers=num_workers,
        schedule=schedule,
        steps=steps,
    )
    carry = init_state(params, tau=tau, num_workers=num_workers, momentum=momentum)
    carry, (losses, dists), delays = _segment(
        carry,
        params,
        xs,
        data,
        lr,
        beta,
        loss=loss,
        tau=tau,
        num_workers=num_workers,
        momentum=momentum,
        batch_size=batch_size,
        record_every=record_every,
        blocks=blocks,
    )
    return (
        jnp.concatenate([l0[None], losses]),
        jnp.concatenate([d0[None], dists]),
        carry.w,
        delays,
    )


@functools.partial(
    jax.jit, static_argnames=("loss", "tau", "num_workers", "momentum", "schedule", "steps")
)
def _simulate_start(params, data, key, *, loss, tau, num_workers, momentum, schedule, steps):
    """The tracked path's first program: initial state, per-step inputs, w_0 record."""
    xs, rec0 = _start(
        params,
        data,
        key,
        loss=loss,
        tau=tau,
        num_workers=num_workers,
        schedule=schedule,
        steps=steps,
    )
    return init_state(params, tau=tau, num_workers=num_workers, momentum=momentum), xs, rec0


_simulate_segment = jax.jit(
    _segment,
    static_argnames=(
        "loss",
        "tau",
        "num_workers",
        "momentum",
        "batch_size",
        "record_every",
        "blocks",
    ),
)


def growth_rate(values, *, window: int | None = None) -> float:
    """Geometric growth per step of a trajectory, from windowed RMS values.

    ``rho = (rms(values[-window:]) / rms(values[:window])) ** (1 / (T - window))``
    with T the length: the root-mean-square over a window smooths out the
    oscillation of a complex dominant pair, so for x_t ~ rho^t cos(theta t)
    the estimate tends to rho. Useful to compare a simulated run with a
    predicted spectral radius (pass e.g. ``sqrt(loss - loss_min)`` or a
    distance from the minimum).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < 4:
        raise ValueError(f"values must be a 1-D array of length >= 4; got shape {x.shape}")
    if window is None:
        window = max(2, x.size // 10)
    window = check_int("window", window, 1)
    if 2 * window > x.size:
        raise ValueError(f"window must be <= half the length {x.size}; got {window}")
    first = math.sqrt(float(np.mean(x[:window] ** 2)))
    last = math.sqrt(float(np.mean(x[-window:] ** 2)))
    if not (first > 0 and np.isfinite(first) and np.isfinite(last)):
        raise ValueError(
            f"values must have a finite, nonzero RMS over the first window of {window} "
            f"(a distance record starts at 0: use a window > 1 or drop the first value); got "
            f"RMS {first:g} over {x[:window].tolist()[:8]}"
        )
    return (last / first) ** (1.0 / (x.size - window))


def stationary_tilt(loss: Callable, params, data=None) -> Callable:
    """``loss(w) - <g*, w - w*>`` with g* the gradient at w* = ``params``.

    The tilted loss has the same Hessian everywhere and a gradient of exactly
    zero at ``params``. A numerically found minimum keeps a residual gradient
    (an L-BFGS point ~1e-6), which makes a long simulation drift along flat
    directions; simulating the tilted loss isolates the linear dynamics around
    the minimum that a stability verdict is about (docs/theory.md section 14).

    Args:
      loss: ``loss(params, batch)`` (or ``loss(params)`` when ``data`` is None).
      params: the point w* to make exactly stationary.
      data: the batch the residual gradient is taken on (the one you simulate).

    Returns:
      A loss with the same signature as ``loss``.
    """
    args = () if data is None else (data,)
    g_star = jax.grad(loss)(params, *args)

    def tilted(p, *batch):
        inner = jax.tree_util.tree_map(lambda a, b, g: jnp.vdot(g, a - b), p, params, g_star)
        return loss(p, *batch) - sum(jax.tree_util.tree_leaves(inner))

    return tilted
