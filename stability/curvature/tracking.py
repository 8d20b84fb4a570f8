"""Sharpness during training: ``SharpnessTracker``, warm-started checks for any loop.

At every ``every``-th step the tracker re-estimates the largest Hessian eigenvalue
``lambda_max`` of the mean loss at the current parameters (Lanczos,
:func:`stability.hessian_spectrum`), warm-started (``start=``) from the previous
check's top eigenvector, moved on along its change between the two previous checks
in proportion to how far the parameters moved (``extrapolate``), so that between
nearby parameters a check costs one or two Hessian-vector products instead of a cold
start's seven or more. Every ``cold_every``-th check starts cold (random), so that a
direction that overtook the tracked one is not missed for long.

What a record guarantees. ``sharpness`` is a Ritz value: always a lower bound on
``lambda_max``, whatever the start, so ``stable=False`` (``sharpness >= limit``) is
certain. ``error`` is the Ritz residual: SOME eigenvalue lies within it, rigorously
(a check may stop after a single product when the start vector's own residual
``||H v - (v'Hv) v||`` already meets ``tol``). That this eigenvalue is
``lambda_max`` (and so ``stable=True``) is presumed: for a cold check on the usual
random-start argument (:meth:`stability.HessianSpectrum.bounds`); for a warm check
only by continuity with the previous check (``random_start=False``, no gap-free
certificate): a direction that overtook the tracked one between two checks can be
reported late, until the next cold check, which is what the cold checks are for.
The random part mixed into a warm start
(:data:`stability.curvature.hessian_spectrum.WARM_START_NOISE`) keeps every direction
in the Krylov space of a long check, but at ``tol=1e-3`` a check that has converged
on the old direction stops before it grows. Each record holds
the estimate and its residual bound, the stable limit
``max_stable_sharpness(lr, tau, beta, momentum)`` of the training hyperparameters,
their ratio, the verdict of the sharp side (as :func:`stability.is_accessible`
reads it, from the residual: stable when ``lambda + error < limit``, unstable when
the Ritz value ``lambda`` (a lower bound on ``lambda_max``) is ``>= limit``,
undecided between) and the products used.

Usable from any training loop (plain Python, optax, Flax)::

    tracker = stability.SharpnessTracker(loss, (x, y), tau=8, lr=0.05, every=100)
    for step in range(steps):
        params, opt_state = update(params, opt_state, batch(step))
        tracker(params, step)          # a check on steps 0, 100, 200, ...
    tracker.history["sharpness"], tracker.plot()

Compilation: the product program is compiled on the first check and reused by the
later ones (the same ``loss`` object, data and parameter shapes); a check compiles
nothing new.

Reference: Cohen et al., "Gradient descent on neural networks typically occurs at
the edge of stability", ICLR 2021 (sharpness tracked along training); Giladi et
al., ICLR 2020 (the delayed threshold).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from stability.curvature.hessian_spectrum import hessian_spectrum
from stability.curvature.hvp import trainable_mask
from stability.figures import axes
from stability.theory.boundary_locus import max_stable_sharpness
from stability.validation import check_int, check_positive, check_scalar

__all__ = ["SharpnessRecord", "SharpnessTracker"]

FIELDS = (
    "step",
    "sharpness",
    "error",
    "threshold",
    "fraction_of_limit",
    "stable",
    "converged",
    "num_hvps",
    "warm",
)


class SharpnessRecord(NamedTuple):
    """One check.

    step: the training step given (or the count of calls). sharpness: the top Ritz
    value (a lower bound on ``lambda_max``, within ``error`` of an eigenvalue).
    error: its residual bound (floored at the products' rounding error).
    threshold: ``max_stable_sharpness(lr, tau, beta, momentum)`` (1 / lr units).
    fraction_of_limit: ``sharpness / threshold``. stable: True (``sharpness + error
    < threshold``; presumes that ``sharpness`` is the top eigenvalue, see the module
    docstring), False (``sharpness >= threshold``: certain, a Ritz value is a lower
    bound on ``lambda_max``; below float64, less the products' error) or None
    (undecided).
    converged: ``error <= tol * |sharpness|``. num_hvps: products of this check.
    warm: whether it was warm-started.
    """

    step: int
    sharpness: float
    error: float
    threshold: float
    fraction_of_limit: float
    stable: bool | None
    converged: bool
    num_hvps: int
    warm: bool


def _selected(tree, mask, row=False):
    """The differentiated leaves of ``tree`` as numpy arrays (row 0 of each for
    eigenvectors)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return [
        np.asarray(x)[0] if row else np.asarray(x) for x, m in zip(leaves, mask, strict=True) if m
    ]


def _distance(xs, ys) -> float:
    """The Euclidean distance between two lists of arrays (float64)."""
    return float(
        np.sqrt(
            sum(np.sum((np.asarray(a, np.float64) - b) ** 2) for a, b in zip(xs, ys, strict=True))
        )
    )


def _stable(sharpness: float, error: float, threshold: float, product_error=0.0) -> bool | None:
    # Below float64 a Ritz value proves instability only less the products' own error
    # (HessianSpectrum.product_error; the error bar includes it already).
    if sharpness - product_error >= threshold:
        return False
    if sharpness + error < threshold:
        return True
    return None


def _no_update_yet(opt_state) -> bool:
    """Whether every step count in an optax state is 0 (``init``'s state)."""
    counts = [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]
        if path and getattr(path[-1], "name", None) == "count"
    ]
    return bool(counts) and all(int(np.asarray(c)) == 0 for c in counts)


class SharpnessTracker:
    """Tracks ``lambda_max`` of the loss Hessian along a training run.

    Args:
      loss: ``loss(params, batch)`` (the mean over the batch), or ``loss(params)``
        when ``data`` is None; the same function object on every check.
      data: what :func:`stability.hessian_spectrum` takes (one batch, a list or a
        re-iterable of batches, a callable returning an iterator, or None): the
        Hessian is that of the mean loss over all of it.
      tau: the training delay (an integer or a :class:`stability.DelayDistribution`).
      lr: the learning rate (> 0).
      beta: the momentum coefficient in [0, 1).
      momentum: ``"heavy_ball"``, ``"nesterov"`` or ``"shifted"``.
      every: check when ``step % every == 0``.
      tol: relative residual at which a check stops (1e-3: three digits).
      max_hvps: most products per check.
      warm_start: start each check from the previous top eigenvector (default);
        False makes every check a cold start (the comparison the benchmarks make).
      extrapolate: a warm start from ``u1 + f (u1 - u0)``, ``u1`` and ``u0`` the
        top eigenvectors of the last two checks (sign-aligned) and ``f = |p - p1| /
        |p1 - p0|`` (at most 1) the distance the parameters moved since the last
        check over the distance between the two before it (differentiated leaves);
        the first-order drift of the eigenvector is then in the start. Keeps one
        copy of the parameters and one more vector. False: start from ``u1``.
      cold_every: every this many checks, a cold (random) start instead: a top
        direction that overtook the tracked one is found by it with the same
        presumption as any single cold estimate, where a warm check may stop on the
        old direction (module docstring). None: never (every check after the first
        then rests on continuity alone).
      seed: the random start of check ``i`` uses ``seed + i``.
      trainable: which leaves to differentiate (:func:`stability.curvature.hvp.trainable_mask`).
      optimizer_hyperparameters: for Adam, AdamW or RMSprop, the keywords of
        :func:`stability.preconditioner_from_optax` that the optimizer state does
        not hold (e.g. ``{"b1": 0.9, "weight_decay": 1e-4}`` for a plain
        ``optax.adamw`` state; an ``optax.inject_hyperparams`` state holds them).

    Calling ``tracker(params, step)`` returns the new :class:`SharpnessRecord`, or
    None when ``step`` is not a multiple of ``every``; with ``step=None`` the calls
    are counted and every call is a step. For Adam, AdamW or RMSprop call
    ``tracker(params, step, opt_state=state)`` with the live optimizer state: the
    check then tracks the preconditioned sharpness, the top eigenvalue of
    ``P^-1/2 H P^-1/2`` with ``P`` read from the state
    (:func:`stability.preconditioner_from_optax`), against the delayed Adam limit
    ``q_max(tau, b1) / (lr c (1 - b1))`` at the state's bias correction ``c``
    (docs/theory.md section 16); ``beta`` and ``momentum`` are then not used, and
    each record's ``threshold`` is the limit at its step. ``history`` is a dict of lists (one per
    record field), ``arrays()`` the same as numpy arrays, ``records`` the list of
    records, ``threshold`` the stable limit, ``last`` the last
    :class:`stability.HessianSpectrum` (with its eigenvector).
    """

    def __init__(
        self,
        loss: Callable,
        data=None,
        *,
        lr,
        tau=0,
        beta=0.0,
        momentum: str = "heavy_ball",
        every: int = 1,
        tol: float = 1e-3,
        max_hvps: int = 100,
        warm_start: bool = True,
        extrapolate: bool = True,
        cold_every: int | None = 20,
        seed: int = 0,
        trainable=None,
        optimizer_hyperparameters: dict | None = None,
    ):
        if not callable(loss):
            raise TypeError(f"loss must be callable; got {type(loss).__name__}")
        self.every = check_int("every", every, 1)
        self.max_hvps = check_int("max_hvps", max_hvps, 1)
        self.cold_every = None if cold_every is None else check_int("cold_every", cold_every, 1)
        for name, value in (("lr", lr), ("tau", tau), ("beta", beta), ("tol", tol)):
            if not hasattr(value, "probabilities"):  # a DelayDistribution is one delay law
                check_scalar(name, value)
        check_positive("tol", tol)
        self.loss, self.data, self.tol = loss, data, float(tol)
        self.seed = check_int("seed", seed, 0)
        self.warm_start, self.trainable = bool(warm_start), trainable
        self.extrapolate = bool(extrapolate)
        self.lr, self.tau, self.beta, self.momentum = lr, tau, beta, momentum
        self.threshold = float(max_stable_sharpness(lr, tau, beta, momentum=momentum))
        if not np.isfinite(self.threshold):
            raise ValueError(
                f"the stable limit of lr={lr!r}, tau={tau!r}, beta={beta!r}, "
                f"momentum={momentum!r} could not be computed (NaN)"
            )
        if optimizer_hyperparameters is not None and not isinstance(
            optimizer_hyperparameters, dict
        ):
            raise TypeError(
                "optimizer_hyperparameters must be a dict of preconditioner_from_optax "
                f"keywords or None; got {type(optimizer_hyperparameters).__name__}"
            )
        self.optimizer_hyperparameters = dict(optimizer_hyperparameters or {})
        self.records: list[SharpnessRecord] = []
        self.last = None
        self._calls = 0
        # For the extrapolated start: the differentiated leaves of the last check's
        # parameters, the distance between the last two checks' parameters, and
        # the top eigenvector of the check before the last.
        self._params_prev = None
        self._dist_prev = 0.0
        self._vec_prev = None

    def __call__(
        self, params, step: int | None = None, *, opt_state=None
    ) -> SharpnessRecord | None:
        if step is None:
            step = self._calls
        elif isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step must be an integer or None; got {step!r}")
        self._calls += 1
        if step % self.every or (opt_state is not None and _no_update_yet(opt_state)):
            return None  # (an optimizer state before its first update has no moments)
        return self.check(params, int(step), opt_state=opt_state)

    def check(self, params, step: int, *, opt_state=None) -> SharpnessRecord:
        """A check now, whatever the step (``opt_state``: an Adam-family optimizer's
        live state, for the preconditioned sharpness)."""
        preconditioner = None
        if opt_state is not None:
            preconditioner, self.threshold = self._adaptive(opt_state)
        n = len(self.records)
        warm = (
            self.warm_start
            and self.last is not None
            and (self.cold_every is None or n % self.cold_every != 0)
        )
        track = self.warm_start and self.extrapolate
        mask = trainable_mask(params, self.trainable) if track else None
        start = self.last if warm else None
        moved = self._extrapolated(params, mask) if warm and track else None
        if moved is not None:
            start = moved
        spec = hessian_spectrum(
            self.loss, params, self.data, k=1, tol=self.tol, max_hvps=self.max_hvps,
            seed=self.seed + n, trainable=self.trainable, progress=False,
            return_vectors=self.warm_start, start=start, preconditioner=preconditioner,
        )  # fmt: skip
        if track:
            self._remember(params, mask)
        self.last = spec
        lam, err = spec.sharpness, spec.sharpness_error
        rec = SharpnessRecord(
            step=step,
            sharpness=lam,
            error=err,
            threshold=self.threshold,
            fraction_of_limit=lam / self.threshold,
            stable=_stable(lam, err, self.threshold, spec.product_error),
            converged=bool(spec.converged[0]),
            num_hvps=spec.num_hvps,
            warm=bool(warm),
        )
        self.records.append(rec)
        return rec

    def _adaptive(self, opt_state):
        """The frozen preconditioner of ``opt_state`` and the delayed Adam limit at its
        bias correction (docs/theory.md section 16)."""
        from stability.curvature.preconditioner import preconditioner_from_optax
        from stability.theory.rules.adam import Adam

        pre = preconditioner_from_optax(opt_state, **self.optimizer_hyperparameters)
        if pre.lr is not None and not np.isclose(pre.lr, float(self.lr), rtol=1e-6):
            raise ValueError(
                f"lr={self.lr!r} contradicts the learning rate the optimizer state holds "
                f"(inject_hyperparams): {pre.lr!r}"
            )
        lr = float(self.lr)
        rule = Adam(decay=lr * pre.weight_decay)
        limit = float(
            max_stable_sharpness(lr * pre.bias_correction, self.tau, pre.b1, momentum=rule)
        )
        return pre, limit

    def _extrapolated(self, params, mask):
        """The extrapolated start (a pytree like params), or None when the last two
        checks do not define one. In numpy on the host: no compiled program."""
        if self._vec_prev is None or self._params_prev is None or not self._dist_prev > 0:
            return None
        f = min(_distance(_selected(params, mask), self._params_prev) / self._dist_prev, 1.0)
        u1 = _selected(self.last.eigenvectors, mask, row=True)
        sign = np.sign(sum(float(np.vdot(a, b)) for a, b in zip(u1, self._vec_prev, strict=True)))
        moved = iter([b + f * (b - sign * a) for a, b in zip(self._vec_prev, u1, strict=True)])
        leaves, tree = jax.tree_util.tree_flatten(params)
        return jax.tree_util.tree_unflatten(
            tree, [next(moved) if m else x for x, m in zip(leaves, mask, strict=True)]
        )

    def _remember(self, params, mask):
        """Keep what the next check's extrapolation needs, on the host (copies: the
        caller may donate or overwrite its buffers): the differentiated parameters,
        their distance from the last check's, the last check's top eigenvector."""
        now = [np.array(x, copy=True) for x in _selected(params, mask)]
        if self._params_prev is not None:
            self._dist_prev = _distance(now, self._params_prev)
        self._params_prev = now
        last = self.last
        self._vec_prev = None if last is None else _selected(last.eigenvectors, mask, row=True)

    @property
    def history(self) -> dict[str, list]:
        """One list per :class:`SharpnessRecord` field, in check order."""
        return {f: [getattr(r, f) for r in self.records] for f in FIELDS}

    def arrays(self) -> dict[str, np.ndarray]:
        """:attr:`history` as numpy arrays (``stable`` as float: 1, 0 or NaN)."""
        out = {}
        for f, vals in self.history.items():
            if f == "stable":
                out[f] = np.array([np.nan if v is None else float(v) for v in vals])
            else:
                out[f] = np.asarray(vals)
        return out

    def plot(self, ax=None):
        """Sharpness (with its error bar) and the stable limit against the step;
        returns the matplotlib Axes."""
        ax = axes(ax)
        h = self.arrays()
        ax.errorbar(h["step"], h["sharpness"], yerr=h["error"], fmt="o-", ms=3,
                    label="sharpness $\\lambda_{max}$")  # fmt: skip
        ax.axhline(self.threshold, color="k", ls="--",
                   label=f"stable limit {self.threshold:.4g}")  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel("largest Hessian eigenvalue")
        ax.legend()
        return ax

    def __repr__(self) -> str:
        n = len(self.records)
        last = "" if not n else f", last sharpness {self.records[-1].sharpness:.4g}"
        return (
            f"SharpnessTracker({n} checks, limit {self.threshold:.4g} for lr={self.lr}, "
            f"tau={self.tau}, beta={self.beta}, {self.momentum}{last})"
        )
