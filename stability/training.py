"""Training from initialization under simulated asynchrony: ``train_async``.

`stability.simulate.simulate_async` perturbs a trained minimum; this module
trains a network from its initialization, as a parameter server with stale
gradients would, on mini-batches over epochs, and records what a training log
records: the training loss, held-out metrics and (with a tracker) the
sharpness along the way.

Update rules and delay models are exactly those of `stability.simulate` (the
same code: `simulate.async_step`): at step t the server applies a gradient
computed at stale weights w_{t - tau_t} with the heavy-ball, Nesterov or
shifted (per-worker buffer) momentum rule; a constant ``tau``,
``num_workers`` pushing round robin (tau = N - 1) or in a random order per
round, or ``block_delays``: a delay per block of parameters (a pipeline), the
block-b gradient at w_{t - tau_b}, one evaluation per distinct delay on step
t's batch (`stability.simulate.block_step`).

Mini-batches: each epoch is a fresh uniformly random permutation of the
training examples (seeded), cut into ``n // batch_size`` consecutive batches
(the last ``n mod batch_size`` examples of each permutation are left out of
that epoch, ``drop_last``); the gradient arriving at step t is the mean-loss
gradient of step t's batch at the stale weights (the batch a worker drew when
it computed it). `batch_indices` returns the order. ``batch_size=None`` is
full-batch (delayed) gradient descent: one step per epoch on all the data.

Execution: one jit-compiled ``jax.lax.scan`` per chunk of ``chunk`` steps
(the state, data, lr and beta are arguments of the compiled function; the
loss, the rule and the delay options are static), so a chunk costs no host
round trip per step and every chunk after the first reuses the compiled
program. Between chunks the driver records the full training loss and
``eval_fn`` on the held-out data, calls the tracker, and stops early once the
loss is no longer finite.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability import simulate as _sim
from stability.progress import progress_bar
from stability.theory.hyperparameters import check_hyperparameters
from stability.validation import check_int, check_option, leading_size

__all__ = ["TrainingRun", "batch_indices", "train_async"]


class TrainingRun(NamedTuple):
    """The record of one `train_async` run.

    Attributes:
      params: the final weights (same pytree as the initial ones; the last
        finite weights when the run diverged).
      step: the step index of each record, int ``(records,)``: 0 and the end
        of every chunk.
      epoch: ``step / steps_per_epoch`` (float, ``(records,)``).
      train_loss: the mean loss over ALL the training data at the recorded
        weights w_step, ``(records,)``.
      eval: dict ``name -> (records,)`` of ``eval_fn(params, eval_data)`` at
        the recorded weights (``{"loss": ...}`` by default; empty without
        ``eval_data``).
      batch_loss: the loss of each step's mini-batch at the stale weights its
        gradient was computed at (free: it comes with the gradient),
        ``(steps run,)``; with ``block_delays``, at the weights of the largest
        delay.
      delays: the delay tau_t applied at each step, int32 ``(steps run,)``;
        with ``block_delays``, the largest delay applied, ``min(t, max_b tau_b)``.
      sharpness: the tracker's ``history`` (dict of lists: step, sharpness,
        error, threshold, fraction_of_limit, num_hvps) or None without one.
      diverged: True when the training loss became non-finite (the run stopped
        at the end of that chunk).
      steps_per_epoch: ``n // batch_size`` (1 for full batch).
      seconds: wall-clock seconds of the run (compilation included; tracker
        calls included).
    """

    params: Any
    step: np.ndarray
    epoch: np.ndarray
    train_loss: np.ndarray
    eval: dict
    batch_loss: np.ndarray
    delays: np.ndarray
    sharpness: dict | None
    diverged: bool
    steps_per_epoch: int
    seconds: float

    def __repr__(self) -> str:
        """One line: the steps, the loss at the start and the end, the verdict of
        the run and the sizes of the arrays (never their values: a network's
        parameters would fill the screen)."""
        leaves = jax.tree_util.tree_leaves(self.params)
        size = sum(int(np.size(x)) for x in leaves)
        loss = self.train_loss
        losses = f"{loss[0]:.4g} -> {loss[-1]:.4g}" if len(loss) else "none"
        checks = (
            ""
            if self.sharpness is None
            else f", {len(self.sharpness.get('step', ()))} sharpness checks"
        )
        evals = f", eval {sorted(self.eval)}" if self.eval else ""
        last = int(self.step[-1]) if len(self.step) else 0
        return (
            f"TrainingRun({last} steps ({last / self.steps_per_epoch:g} epochs), "
            f"{len(self.step)} records, train_loss {losses}{evals}{checks}, "
            f"diverged={self.diverged}, params: {len(leaves)} arrays, {size} values, "
            f"{self.seconds:.1f} s)"
        )


def batch_indices(num_examples: int, batch_size: int, epochs: int, seed: int = 0) -> np.ndarray:
    """The example indices of every mini-batch of a `train_async` run.

    Epoch e uses ``jax.random.permutation(fold_in(k, e), num_examples)`` with
    ``k`` the second half of ``jax.random.split(jax.random.key(seed))`` (the
    first half seeds a random worker order), cut into ``num_examples //
    batch_size`` consecutive batches; the remainder is left out of that epoch.
    So within an epoch no example repeats (sampling without replacement).

    Returns:
      int32 array ``(epochs * (num_examples // batch_size), batch_size)``: row t
      holds the batch of step t.
    """
    num_examples = check_int("num_examples", num_examples, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    epochs = check_int("epochs", epochs, 1)
    seed = check_int("seed", seed, 0)
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size must be in 1..{num_examples} (the number of examples); got {batch_size}"
        )
    _, order_key = jax.random.split(jax.random.key(seed))
    return np.asarray(_batch_order(order_key, num_examples, batch_size, epochs))


def _batch_order(key, n: int, batch_size: int, epochs: int):
    """`batch_indices` from the order key: one compiled permutation per (n, batch_size)."""
    return jnp.concatenate(
        [_epoch_batches(key, jnp.asarray(e, jnp.uint32), n, batch_size) for e in range(epochs)]
    )


@functools.partial(jax.jit, static_argnums=(2, 3))
def _epoch_batches(key, epoch, n, batch_size):
    per_epoch = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    return perm[: per_epoch * batch_size].reshape(per_epoch, batch_size).astype(jnp.int32)


def train_async(
    loss: Callable,
    params,
    train_data,
    *,
    lr,
    batch_size: int | None,
    epochs: int,
    tau: int | None = None,
    num_workers: int | None = None,
    block_delays=None,
    beta=0.0,
    momentum: str = "heavy_ball",
    schedule: str = "round_robin",
    eval_data=None,
    eval_fn: Callable | None = None,
    seed: int = 0,
    chunk: int | None = None,
    tracker: Callable | None = None,
    progress: bool = False,
) -> TrainingRun:
    """Train from ``params`` with stale gradients, mini-batches and epochs.

    Step t: ``g = grad loss(w_{t - tau_t}, batch_t)``, then the momentum rule
    (`stability.simulate`): heavy_ball ``v+ = beta v + g, w+ = w - lr v+``;
    nesterov ``w+ = w - lr (g + beta v+)``; shifted: the pushing worker's own
    buffer. With ``tau=0`` (or one worker) this is plain mini-batch SGD with
    momentum (optax ``sgd(lr, momentum=beta, nesterov=...)``).

    Args:
      loss: ``loss(params, batch) -> scalar``, the MEAN loss over the batch (a
        plain function or the one `stability.loss_from_model` makes of a Flax
        module). Static: keep the same object to reuse the compiled program.
      params: the initial weights w_0 (a pytree of float arrays, e.g. linen
        variables); differentiated leaf by leaf.
      train_data: the training set, ONE pytree of arrays sharing the leading
        example axis, held in memory (e.g. ``(x, y)``).
      lr: learning rate (> 0; traced: sweeping it does not recompile).
      batch_size: examples per step (1..n), or None for full-batch steps.
      epochs: passes over the training data (>= 1); steps = epochs * (n //
        batch_size), or ``epochs`` with full batches.
      tau: constant delay (>= 0); give exactly one of ``tau``,
        ``num_workers`` and ``block_delays``.
      num_workers: N >= 1 workers pushing by ``schedule``: "round_robin"
        (tau = N - 1) or "random" (a random permutation per round of N steps).
      block_delays: a delay per block of parameters, any spec
        `stability.curvature.blocks.block_delays` accepts (e.g.
        ``Stages(P, "1f1b")``, a dict of path prefixes): the gradient applied to
        block b at step t is block b's gradient of step t's batch at w_{t -
        tau_b} (w_0 for t < tau_b). Not with ``shifted``.
      beta: momentum in [0, 1) (traced). momentum: "heavy_ball", "nesterov",
        "shifted", "gd" or a `stability.theory.rules.Rule`; any optax optimizer
        (AdamW included) as ``stability.OptaxRule(optimizer)``, with ``lr=1`` to
        apply its updates as they are.
      eval_data: held-out data (one pytree of arrays), or None.
      eval_fn: ``eval_fn(params, eval_data) -> dict[str, scalar]`` (e.g. loss
        and accuracy), jit-compiled; default ``{"loss": loss(params,
        eval_data)}``.
      seed: seeds the batch order (`batch_indices`) and a random worker order.
      chunk: steps per compiled scan (default: one epoch, or ``tracker.every``
        when a tracker is given); records fall on chunk ends.
      tracker: optional ``tracker(params, step)`` (e.g. a
        `stability.SharpnessTracker` with the run's tau, lr, beta and momentum)
        called at step 0 and after every chunk while the training loss is
        finite; at the last step a tracker with a ``check`` method checks even
        when ``steps`` is not a multiple of its ``every``. Its ``history`` is
        returned as ``sharpness``.
      progress: a tqdm bar over chunks, only when stderr is a terminal (none
        in a redirected log), erased when the run ends.

    Returns:
      A `TrainingRun`.
    """
    start = time.perf_counter()
    momentum = check_hyperparameters(lr=lr, beta=beta, momentum=momentum).rule
    schedule = check_option("schedule", schedule, _sim.SCHEDULES)
    epochs = check_int("epochs", epochs, 1)
    seed = check_int("seed", seed, 0)
    if block_delays is None:
        tau, num_workers = _sim.check_delays(tau, num_workers, schedule)
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(params, batch); got {type(loss).__name__}")
    dtype = _sim.check_params(params)
    blocks = _sim.check_block_delays(params, block_delays, tau, num_workers, schedule, momentum)
    if blocks is not None:
        tau = max(blocks)  # the ring of the largest delay holds every stale iterate
    n = leading_size("train_data", train_data)
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, 1)
        if batch_size > n:
            raise ValueError(
                f"batch_size must be in 1..{n} (the number of examples); got {batch_size}"
            )
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable or None; got {type(eval_fn).__name__}")
    if eval_fn is not None and eval_data is None:
        raise ValueError("eval_fn needs eval_data; got eval_data=None")
    if eval_data is not None:
        leading_size("eval_data", eval_data)
    if tracker is not None and not callable(tracker):
        raise TypeError(
            f"tracker must be callable as tracker(params, step); got {type(tracker).__name__}"
        )
    steps_per_epoch = 1 if batch_size is None else n // batch_size
    steps = epochs * steps_per_epoch
    if chunk is None:
        chunk = getattr(tracker, "every", None) if tracker is not None else None
        chunk = steps_per_epoch if chunk is None else chunk
    chunk = min(check_int("chunk", chunk, 1), steps)

    key = jax.random.key(seed)
    schedule_key, order_key = jax.random.split(key)
    workers = _worker_order(
        schedule_key, steps, tau=tau, num_workers=num_workers, schedule=schedule
    )
    if batch_size is None:
        idx = jnp.zeros((steps, 0), jnp.int32)  # full batch: no indices
    else:
        idx = _batch_order(order_key, n, batch_size, epochs)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    state = _sim.init_state(params, tau=tau, num_workers=num_workers, momentum=momentum)
    lr = jnp.asarray(lr, dtype)
    beta = jnp.asarray(beta, dtype)
    evaluate = _evaluator(loss, eval_fn)
    static = dict(
        loss=loss,
        tau=tau,
        num_workers=num_workers,
        momentum=momentum,
        full_batch=batch_size is None,
        blocks=blocks,
    )

    steps_rec, train_rec, eval_rec = [], [], []
    batch_losses, delays = [], []

    def record(w, t):
        tl, metrics = evaluate(w, train_data, eval_data)
        steps_rec.append(t)
        train_rec.append(float(tl))
        eval_rec.append({k: float(v) for k, v in metrics.items()})
        if tracker is not None and math.isfinite(train_rec[-1]):
            _sim.track(tracker, w, t, steps)  # the last step is checked, whatever `every`
        return math.isfinite(train_rec[-1])

    # erased when the run ends (leave=False): an enclosing experiment bar keeps its line
    bar = progress_bar(
        progress, total=-(-steps // chunk), unit="chunk", desc="train_async", leave=False
    )
    finite = record(state.w, 0)
    last_finite = state.w
    for lo in range(0, steps, chunk):
        if not finite:
            break
        xs = (workers[lo : lo + chunk], idx[lo : lo + chunk])
        state, (bl, dl) = _train_chunk(state, xs, train_data, lr, beta, **static)
        batch_losses.append(np.asarray(bl))
        delays.append(np.asarray(dl))
        finite = record(state.w, min(lo + chunk, steps))
        if finite:
            last_finite = state.w
        bar.update(1)
    bar.close()
    step = np.asarray(steps_rec)
    names = eval_rec[0].keys() if eval_rec else ()
    return TrainingRun(
        params=last_finite,
        step=step,
        epoch=step / steps_per_epoch,
        train_loss=np.asarray(train_rec),
        eval={name: np.asarray([r[name] for r in eval_rec]) for name in names},
        batch_loss=np.concatenate(batch_losses) if batch_losses else np.zeros(0),
        delays=np.concatenate(delays) if delays else np.zeros(0, np.int32),
        sharpness=getattr(tracker, "history", None) if tracker is not None else None,
        diverged=not finite,
        steps_per_epoch=steps_per_epoch,
        seconds=time.perf_counter() - start,
    )


_worker_order = jax.jit(
    _sim.worker_order, static_argnames=("steps", "tau", "num_workers", "schedule")
)


@functools.cache
def _evaluator(loss, eval_fn):
    """One jitted ``(w, train, held_out) -> (train loss, metrics)`` per (loss, eval_fn)."""

    def evaluate(w, train_data, eval_data):
        if eval_data is None:
            metrics = {}
        elif eval_fn is None:
            metrics = {"loss": loss(w, eval_data)}
        else:
            metrics = dict(eval_fn(w, eval_data))
        return loss(w, train_data), metrics

    return jax.jit(evaluate)


@functools.partial(
    jax.jit, static_argnames=("loss", "tau", "num_workers", "momentum", "full_batch", "blocks")
)
def _train_chunk(
    state, xs, data, lr, beta, *, loss, tau, num_workers, momentum, full_batch, blocks=None
):
    """``len(xs)`` server steps in one scan: ``(state, (batch losses, delays))``."""
    value_and_grad = jax.value_and_grad(loss)

    def step(state, x):
        worker, idx = x

        def gradient(w_stale):
            if full_batch:
                value, g = value_and_grad(w_stale, data)
            else:
                batch = jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), data)
                value, g = value_and_grad(w_stale, batch)
            return g, value

        state, delay, value = _sim.async_step(
            state,
            worker,
            gradient,
            lr,
            beta,
            tau=tau,
            num_workers=num_workers,
            momentum=momentum,
            blocks=blocks,
        )
        return state, (value, delay)

    return jax.lax.scan(step, state, xs)
