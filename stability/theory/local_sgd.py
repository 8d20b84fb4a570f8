"""Local SGD and DiLoCo outer loops along one Hessian eigenvalue (docs/theory.md section 17).

A round of local SGD / DiLoCo (Douillard et al. 2023): every one of M workers starts
from the global parameters x_k, takes H inner steps of an inner rule (SGD, heavy
ball, Nesterov, frozen-preconditioner Adam; learning rate ``inner_lr``, momentum
``inner_beta``, no delay), and sends its pseudo-gradient ``Delta = x_k - x_local``;
an outer rule (SGD, heavy ball, Nesterov: DiLoCo's outer optimizer) with learning
rate ``outer_lr`` and momentum ``outer_momentum`` applies the averaged
pseudo-gradient as its "gradient". Near a minimum, along one eigenvalue ``a`` of
the Hessian (of ``P^-1/2 H P^-1/2`` for the Adam rule), every piece is linear.

Inner loop. The inner rule's state is ``s = (w, v)`` (weight, buffer); one
undelayed step is ``s+ = T(a) s`` (T built from the rule's own `Rule.update` with
the gradient ``a w``), so H steps are ``T^H``. With ``T^H = [[t00, t01], [t10,
t11]]``:

- reset (the inner buffer zeroed every round): the worker ends at ``t00 x_k``, so
  ``Delta_k = kappa x_k`` with the pseudo-gradient factor

      kappa(a) = 1 - e_1^T T(a)^H e_1        (inner GD: kappa = 1 - (1 - inner_lr a)^H);

- kept (each worker keeps its inner buffer v across rounds, as DiLoCo keeps its
  inner AdamW state; it restarts its weights from x_k): ``Delta_k = (1 - t00) x_k
  - t01 v_k`` and ``v_{k+1} = t10 x_k + t11 v_k``. With ``x_k = z^k``: ``v = t10 x /
  (z - t11)`` and ``Delta = kappa(z) x`` with

      kappa(z) = ((1 - t00) z - t11 + det T^H) / (z - t11).

All M workers see the same full-batch loss and start from the same x_k (and hold
the same buffer), so their pseudo-gradients are equal and the average is that one
``Delta``: M enters only through the schedule below.

Outer schedules (the outer delay, in rounds):

- ``"diloco"``: the outer step at round k uses ``Delta_k`` (delay 0);
- ``"eager"`` (Kale et al. 2025, eager updates): communication of round k
  overlaps round k + 1, and each worker applies ``(1/M)`` its own fresh
  ``Delta_k`` plus ``(1/M)`` the sum of the other M - 1 workers' one-round-stale
  ``Delta_{k-1}``. Identical workers make this EXACTLY the delay distribution
  ``p_0 = 1/M, p_1 = (M - 1)/M`` (every worker's Delta is the same linear function
  of the global iterate, so the first-moment model of ``stability.theory.delays``
  holds with no averaging over chance. If each worker holds its own replica of the global
  state, identical replicas stay identical; a difference between replicas (excited
  only when they differ) sees ``(Delta_k - Delta_{k-1}) / M``, the signed law
  ``(1/M, -1/M)``: tests/test_local_sgd.py finds both sets of roots in the
  replicated round matrix);
- ``"streaming"`` with ``overlap`` tau >= 1: the averaged pseudo-gradient of round
  k reaches the outer optimizer tau rounds later: ``x_{k+1} = outer(x_k,
  Delta_{k-tau})``, the workers starting round k from the x_k they hold. This is
  the round-level model of Streaming DiLoCo's overlapped communication (Douillard
  et al. 2025); the paper's own overlap is tau INNER steps < H followed by a merge
  ``x_local <- alpha x_local + (1 - alpha) x_global``, which this module does not
  model.

Outer polynomial. The outer rule treats ``Delta`` as its gradient, so with the
schedule's delay polynomial D (``stability.theory.rules.polynomial``) and the
outer rule's ``(A_out, B_out)``:

    reset:  P(z) = A_out(z) + outer_lr kappa B_out(z)              (the rule at q = outer_lr kappa)
    kept:   P(z) = (z - t11) A_out(z) + outer_lr ((1 - t00) z - t11 + det T^H) B_out(z).

Both are ``A + outer_lr B`` (a `CharacteristicPolynomial` with ``q = outer_lr``);
their largest root modulus is the growth per ROUND (H inner steps). Thresholds:

- reset: ``outer_lr_max = q_max(outer delay, outer_momentum; outer rule) / kappa``
  when kappa > 0. kappa = 0 leaves a root at 1 for every outer lr (not
  asymptotically stable: 0 returned); kappa < 0 (the inner loop overshoots: inner
  GD with an even H and inner_lr a > 2) gives P(1) = outer_lr kappa B_out(1) < 0, a
  real root > 1 for every outer_lr > 0 (0 returned). kappa > 2, an unstable odd-H
  inner loop, still has a small stable outer lr.
- kept: the root 1 of P at outer_lr = 0 moves inside iff ``det(I - T^H) > 0`` (the
  kept analogue of kappa > 0) and the extra root t11 must satisfy |t11| < 1;
  then outer_lr_max is the first crossing of the unit circle (`dense_threshold` of
  ``(A, B)``), else 0.

References: A. Douillard et al., DiLoCo: Distributed Low-Communication Training
of Language Models (2023); A. Douillard et al., Streaming DiLoCo with overlapping
communication (2025); S. Kale et al., Eager updates for overlapped communication
and computation in DiLoCo (2025); S. U. Stich, Local SGD converges fast and
communicates little (ICLR 2019).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from stability.theory.boundary_locus import checked_threshold, dense_threshold
from stability.theory.companion import spectral_radius_from_coefficients
from stability.theory.delays import delay_distribution
from stability.theory.precision import float_dtype, host_float64, python_scalars_out
from stability.theory.rules import CharacteristicPolynomial, as_rule, rule_polynomial
from stability.validation import MAX_DELAY, check_finite, check_int, check_lr, check_option

SCHEDULES = ("diloco", "eager", "streaming")

# The largest H (inner steps per round) and M (workers): T^H is a matrix power (log H
# products), M only sets two probabilities; the caps keep a typo from looking valid.
MAX_INNER_STEPS = 10**6
MAX_WORKERS = 10**7


class LocalSGD(NamedTuple):
    """A local SGD / DiLoCo configuration (module docstring: the model).

    inner: the inner rule (a name such as ``"gd"``, ``"heavy_ball"``, ``"nesterov"``,
      ``"preconditioned_adam"`` or a `stability.theory.rules.Rule`, e.g.
      ``stability.theory.rules.adam.Adam(decay=lr * weight_decay)`` for AdamW; with
      the Adam rule the sharpness is an eigenvalue of ``P^-1/2 H P^-1/2``, the inner lr
      the bias-corrected one and inner_beta its b1); inner_lr: its learning rate (> 0; array
      allowed, broadcasts with the functions' arguments); inner_beta: its momentum
      (0 for ``"gd"``; array allowed); inner_steps: H >= 1; reset: whether the inner
      buffer is zeroed every round (True) or kept across rounds (False); outer: the
      outer rule (default ``"nesterov"``, DiLoCo's); schedule: ``"diloco"``,
      ``"eager"`` or ``"streaming"``; workers: M >= 1 (the eager schedule's mixing);
      overlap: the streaming schedule's delay tau >= 1 in rounds (0 otherwise).
    """

    inner_lr: Any
    inner_steps: int = 1
    inner: Any = "gd"
    inner_beta: Any = 0.0
    reset: bool = True
    outer: Any = "nesterov"
    schedule: str = "diloco"
    workers: int = 1
    overlap: int = 0


def check_local_sgd(config) -> LocalSGD:
    """``config`` checked, with its rules as `Rule` objects; ValueError/TypeError
    naming the bad field and its value."""
    if not isinstance(config, LocalSGD):
        raise TypeError(f"config must be a stability.LocalSGD; got {config!r}")
    check_lr(config.inner_lr, "config.inner_lr")
    steps = check_int("config.inner_steps", config.inner_steps, 1, MAX_INNER_STEPS)
    inner = as_rule(config.inner, "config.inner")
    inner.check_beta(config.inner_beta, "config.inner_beta")
    if not isinstance(config.reset, (bool, np.bool_)):
        raise TypeError(f"config.reset must be True or False; got {config.reset!r}")
    outer = as_rule(config.outer, "config.outer")
    schedule = check_option("config.schedule", config.schedule, SCHEDULES)
    workers = check_int("config.workers", config.workers, 1, MAX_WORKERS)
    overlap = check_int("config.overlap", config.overlap, 0, MAX_DELAY)
    if schedule == "streaming" and overlap < 1:
        raise ValueError(f"config.overlap must be >= 1 for schedule='streaming'; got {overlap!r}")
    if schedule != "streaming" and overlap != 0:
        raise ValueError(
            f"config.overlap must be 0 unless schedule='streaming'; got {overlap!r} "
            f"with schedule={schedule!r}"
        )
    if schedule != "eager" and workers != 1:
        raise ValueError(
            f"config.workers matters only for schedule='eager' (identical full-batch "
            f"workers send equal pseudo-gradients); got {workers!r} with schedule={schedule!r}"
        )
    return config._replace(
        inner_steps=steps,
        inner=inner,
        reset=bool(config.reset),
        outer=outer,
        workers=workers,
        overlap=overlap,
    )


def outer_delay(config: LocalSGD):
    """The outer loop's delay in rounds: 0 (diloco), the distribution ``(1/M, (M-1)/M)``
    (eager; ``(1,)`` for M = 1) or the integer overlap (streaming)."""
    config = check_local_sgd(config)
    return _outer_delay(config)


def _outer_delay(config: LocalSGD):
    if config.schedule == "eager":
        m = config.workers
        return delay_distribution([1.0] if m == 1 else [1.0 / m, (m - 1.0) / m])
    return config.overlap


def _arrays(config: LocalSGD, sharpness, *more):
    """sharpness, inner lr, inner beta and ``more`` as arrays of one dtype and shape."""
    dtype = float_dtype(sharpness, config.inner_lr, config.inner_beta, *more)
    xs = [jnp.asarray(x, dtype) for x in (sharpness, config.inner_lr, config.inner_beta, *more)]
    return jnp.broadcast_arrays(*xs)


def _inner_power(config: LocalSGD, a, lr, beta):
    """``T(a)^H``, shape (..., 2, 2): columns are the rule's step applied to the
    state (w, v) = (1, 0) (gradient a) and (0, 1) (gradient 0), H times."""
    one, zero = jnp.ones_like(a), jnp.zeros_like(a)
    w_w, v_w = config.inner.update(one, zero, a, lr, beta)
    w_v, v_v = config.inner.update(zero, one, zero, lr, beta)
    t = jnp.stack([jnp.stack([w_w, w_v], -1), jnp.stack([v_w, v_v], -1)], -2)
    return jnp.linalg.matrix_power(t, config.inner_steps)


def _vectorised(fn):
    """Python scalars in (config fields included) -> Python floats out, in float64
    (`python_scalars_out`); the config is checked once here."""

    @functools.wraps(fn)
    def wrapper(config, *args, **kwargs):
        config = check_local_sgd(config)

        def call(inner_lr, inner_beta, *a, **k):
            return fn(config._replace(inner_lr=inner_lr, inner_beta=inner_beta), *a, **k)

        return python_scalars_out(call)(config.inner_lr, config.inner_beta, *args, **kwargs)

    return wrapper


@_vectorised
def pseudo_gradient_factor(config: LocalSGD, sharpness):
    """``kappa(a) = 1 - e_1^T T(a)^H e_1``: the pseudo-gradient of one round with the
    inner state reset is ``kappa x_k`` (docs/theory.md (46)).

    Inner GD: ``1 - (1 - inner_lr a)^H``; inner heavy ball / Nesterov: the (w, w)
    entry of the H-th power of their 2 x 2 step matrix. Broadcasts over sharpness,
    ``config.inner_lr`` and ``config.inner_beta``; dimensionless. (Meaningful for
    ``reset=False`` too: it is then ``Delta / x`` of the first round from v = 0.)
    """
    check_finite("sharpness", sharpness)
    a, lr, beta = _arrays(config, sharpness)
    return 1.0 - _inner_power(config, a, lr, beta)[..., 0, 0]


def _outer_polynomial(config: LocalSGD, sharpness, outer_momentum) -> CharacteristicPolynomial:
    a, lr, beta, mu = _arrays(config, sharpness, outer_momentum)
    a_out, b_out = rule_polynomial(config.outer, _outer_delay(config), mu)
    t = _inner_power(config, a, lr, beta)
    if config.reset:
        kappa = 1.0 - t[..., 0, 0]
        return CharacteristicPolynomial(a_out, kappa[..., None] * b_out)
    t00, t01, t10, t11 = t[..., 0, 0], t[..., 0, 1], t[..., 1, 0], t[..., 1, 1]
    det = t00 * t11 - t01 * t10
    a_kept = _times_linear(a_out, jnp.ones_like(t11), -t11)  # (z - t11) A_out
    b_kept = _times_linear(b_out, 1.0 - t00, det - t11)  # ((1 - t00) z - t11 + det) B_out
    return CharacteristicPolynomial(a_kept, b_kept)


def _times_linear(p, c1, c0):
    """``p(z) (c1 z + c0)`` for descending coefficients p (..., n+1), c1 and c0 (...)."""
    pad = jnp.zeros(p.shape[:-1] + (1,), p.dtype)
    return c1[..., None] * jnp.concatenate([p, pad], -1) + c0[..., None] * jnp.concatenate(
        [pad, p], -1
    )


@_vectorised
def outer_polynomial(config: LocalSGD, sharpness, outer_momentum=0.0) -> CharacteristicPolynomial:
    """The one-round characteristic polynomial ``P(z) = A(z) + outer_lr B(z)``.

    Reset (docs/theory.md (47)): ``A = A_out``, ``B = kappa B_out`` with the outer
    rule's ``(A_out, B_out)`` for the schedule's delay (`outer_delay`); kept (48):
    ``A = (z - t11) A_out``, ``B = ((1 - t00) z - t11 + det T^H) B_out`` (one degree
    more). Evaluate with ``.coefficients(outer_lr)``. Broadcasts over sharpness,
    outer_momentum and the config's inner lr and beta (batch axes first).
    """
    check_finite("sharpness", sharpness)
    config.outer.check_beta(outer_momentum, "outer_momentum")
    return _outer_polynomial(config, sharpness, outer_momentum)


@_vectorised
def round_spectral_radius(config: LocalSGD, sharpness, outer_lr, outer_momentum=0.0):
    """The growth per round (H inner steps) along eigenvalue ``sharpness``: the largest
    root modulus of `outer_polynomial` at ``q = outer_lr`` (< 1: linearly stable).
    Per inner step it is ``radius ** (1 / H)``. Broadcasts over all numeric arguments.
    """
    check_finite("sharpness", sharpness)
    check_lr(outer_lr, "outer_lr")
    config.outer.check_beta(outer_momentum, "outer_momentum")
    poly = _outer_polynomial(config, sharpness, outer_momentum)
    q = jnp.asarray(outer_lr, poly.a.dtype)
    return spectral_radius_from_coefficients(poly.coefficients(q))


@_vectorised
def max_stable_outer_lr(config: LocalSGD, sharpness, outer_momentum=0.0):
    """The largest stable outer learning rate at sharpness ``a`` (docs/theory.md (49)).

    Reset: ``q_max(outer delay, outer_momentum; outer rule) / kappa(a)`` (the outer
    rule's exact threshold, `stability.stability_threshold`) where kappa > 0, and 0
    where kappa <= 0 (no positive outer lr is stable: see the module docstring).
    Kept: the first crossing of the unit circle of ``A + outer_lr B`` (`dense_threshold`)
    where det(I - T^H) > 0 and |t11| < 1, else 0 (small outer lrs are then unstable;
    tests/test_local_sgd.py finds no stable one on a grid up to 10 either). The
    stable set is taken to be ``(0, outer_lr_max)``, as the tests check on a grid
    below each threshold. NaN where a threshold is not
    certified. Units: those of a learning rate of the outer rule (dimensionless
    scale on the pseudo-gradient; DiLoCo's outer lr 0.7).
    """
    check_finite("sharpness", sharpness)
    config.outer.check_beta(outer_momentum, "outer_momentum")
    a, lr, beta, mu = _arrays(config, sharpness, outer_momentum)
    t = _inner_power(config, a, lr, beta)
    if config.reset:
        threshold = checked_threshold(_outer_delay(config), mu, config.outer)
        q = jnp.where(threshold.reliable, threshold.q_max, jnp.nan)
        kappa = 1.0 - t[..., 0, 0]
        safe = jnp.where(kappa > 0, kappa, 1.0)
        return jnp.where(kappa > 0, q / safe, 0.0)
    poly = _outer_polynomial(config, sharpness, outer_momentum)
    threshold = dense_threshold(poly.a, poly.b)
    eye = jnp.eye(2, dtype=t.dtype)
    moves_in = (jnp.linalg.det(eye - t) > 0) & (jnp.abs(t[..., 1, 1]) < 1)
    q = jnp.where(threshold.reliable, threshold.q_max, jnp.nan)
    return jnp.where(moves_in, q, 0.0)


class OuterStabilityRegion(NamedTuple):
    """The one-round spectral radius on a grid: ``radius[i, j]`` at
    ``outer_momentum[i]``, ``outer_lr[j]``; ``stable = radius < 1``;
    ``max_outer_lr[i]`` the threshold of each momentum (`max_stable_outer_lr`)."""

    outer_lr: np.ndarray
    outer_momentum: np.ndarray
    radius: np.ndarray
    stable: np.ndarray
    max_outer_lr: np.ndarray


def outer_stability_region(config: LocalSGD, sharpness, outer_lr, outer_momentum):
    """The stable region in (outer lr, outer momentum) at one sharpness, for a figure.

    ``outer_lr``, ``outer_momentum``: 1-D grids; returns numpy arrays
    (:class:`OuterStabilityRegion`), computed in float64 on the host.
    """
    config = check_local_sgd(config)
    check_finite("sharpness", sharpness)
    if np.ndim(sharpness) != 0:
        raise ValueError(f"sharpness must be a single number; got shape {np.shape(sharpness)}")
    lrs = np.asarray(outer_lr, dtype=np.float64)
    mus = np.asarray(outer_momentum, dtype=np.float64)
    for name, grid in (("outer_lr", lrs), ("outer_momentum", mus)):
        if grid.ndim != 1 or grid.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D grid; got shape {grid.shape}")
    check_lr(lrs, "outer_lr")
    config.outer.check_beta(mus, "outer_momentum")
    scalars = config._replace(
        inner_lr=np.float64(config.inner_lr), inner_beta=np.float64(config.inner_beta)
    )
    with host_float64():
        s = np.float64(sharpness)
        radius = np.asarray(round_spectral_radius(scalars, s, lrs[None, :], mus[:, None]))
        lr_max = np.asarray(max_stable_outer_lr(scalars, s, mus))
    return OuterStabilityRegion(lrs, mus, radius, radius < 1.0, lr_max)


__all__ = [
    "LocalSGD",
    "OuterStabilityRegion",
    "max_stable_outer_lr",
    "outer_delay",
    "outer_polynomial",
    "outer_stability_region",
    "pseudo_gradient_factor",
    "round_spectral_radius",
]
