"""Stability threshold of any linear optax optimiser under a delay.

An optax ``GradientTransformation`` whose update is linear in (gradient, state,
params) (sgd with or without momentum or Nesterov, ``trace``, ``scale``,
``add_decayed_weights``, chains of them) applied with a delayed gradient to the
one-dimensional quadratic ``L(w) = a w^2 / 2`` is a linear recurrence. Writing the
optimiser's own update (read off with ``jax.jacfwd`` at zero) as

    x_{t+1} = M x_t + N g_t,    x = (w, s),   s = the float leaves of its state,

the transfer function from gradient to weight is ``n(z) / d(z)`` with
``d = det(zI - M)`` and ``n = e1^T adj(zI - M) N = d(z) - det(zI - M - N e1^T)``.
Closing the loop with ``g_t = a w_{t-tau}`` gives

    P(z) = z^tau d(z) - a n(z) = A(z) + a B(z),

(with a ``DelayDistribution``: ``z^K d(z) - a n(z) D(z)``, the first-moment model
of ``stability.theory.delays``). The learning rate is inside the optimiser, so the
boundary locus of (A, B) is directly a threshold on the sharpness a.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.theory.boundary_locus import dense_threshold
from stability.theory.companion import spectral_radius_from_coefficients
from stability.theory.delays import DelayDistribution
from stability.theory.rules import static_delay
from stability.validation import check_finite


class LinearizedOptimizer(NamedTuple):
    """The delayed recurrence of a linear optax optimiser on ``a w^2 / 2``.

    a, b: descending coefficients of ``P(z) = A(z) + sharpness * B(z)`` (float64
      numpy arrays of equal length; A monic).
    tau: the delay (int) or ``DelayDistribution`` it was built for.
    max_stable_sharpness: the largest stable Hessian eigenvalue (the learning rate
      is inside the optimiser); inf if no root ever crosses the unit circle.
    theta: the angle of the unit-circle root at the threshold.
    reliable: False when the threshold cannot be trusted: the dense boundary
      locus did not resolve its candidates, or the recurrence is not stable for
      small sharpness (then the stable set is not ``(0, max_stable_sharpness)``).
    """

    a: np.ndarray
    b: np.ndarray
    tau: object
    max_stable_sharpness: float
    theta: float
    reliable: bool

    def spectral_radius(self, sharpness):
        """Spectral radius of the recurrence at this sharpness (array broadcast)."""
        check_finite("sharpness", sharpness)
        s = jnp.asarray(sharpness, jnp.asarray(self.a).dtype)
        coeffs = jnp.asarray(self.a) + s[..., None] * jnp.asarray(self.b)
        return spectral_radius_from_coefficients(coeffs)


def _charpoly(m: np.ndarray) -> np.ndarray:
    """det(zI - m), descending (Faddeev-LeVerrier; exact for the small matrices here)."""
    n = m.shape[0]
    coeffs = np.zeros(n + 1)
    coeffs[0] = 1.0
    mk = np.zeros_like(m)
    ident = np.eye(n)
    for k in range(1, n + 1):
        mk = m @ (mk + coeffs[k - 1] * ident)
        coeffs[k] = -np.trace(mk) / k
    return coeffs


def _update_function(optimizer, dtype):
    params0 = jnp.zeros((), dtype)
    with jax.numpy_dtype_promotion("standard"):
        state0 = optimizer.init(params0)
    leaves, treedef = jax.tree_util.tree_flatten(state0)
    is_float = [jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) for x in leaves]
    shapes = [jnp.shape(x) for x, f in zip(leaves, is_float, strict=True) if f]
    sizes = [int(np.prod(s)) for s in shapes]
    n_s = sum(sizes)

    def f(x):
        """x = (w, s..., g) -> (u, s_new...) as one flat vector."""
        w, s, g = x[0], x[1 : 1 + n_s], x[1 + n_s]
        out, pos, it = [], 0, iter(range(len(sizes)))
        for leaf, fl in zip(leaves, is_float, strict=True):
            if fl:
                i = next(it)
                out.append(
                    s[pos : pos + sizes[i]].reshape(shapes[i]).astype(jnp.asarray(leaf).dtype)
                )
                pos += sizes[i]
            else:
                out.append(leaf)  # counters etc. stay at their initial value
        state = jax.tree_util.tree_unflatten(treedef, out)
        # optax's own code assumes standard promotion (e.g. adam's bias correction)
        with jax.numpy_dtype_promotion("standard"):
            u, new_state = optimizer.update(g.astype(dtype), state, w.astype(dtype))
        new_leaves = jax.tree_util.tree_leaves(new_state)
        new_s = [
            jnp.ravel(jnp.asarray(x, dtype))
            for x, fl in zip(new_leaves, is_float, strict=True)
            if fl
        ]
        return jnp.concatenate([jnp.reshape(jnp.asarray(u, dtype), (1,)), *new_s])

    return f, n_s


def _check_linear(f, n_s, dtype, rtol):
    key = jax.random.PRNGKey(0)
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (n_s + 2,), dtype)
    y = jax.random.normal(k2, (n_s + 2,), dtype)
    fx, fy, f2x, fxy, f0 = (np.asarray(f(v)) for v in (x, y, 2 * x, x + y, jnp.zeros_like(x)))
    scale = max(np.max(np.abs(fx)), np.max(np.abs(fy)), 1e-300)
    tests = {
        "f(0) = 0 (no state- or gradient-independent offset)": np.max(np.abs(f0)),
        "f(2x) = 2 f(x)": np.max(np.abs(f2x - 2 * fx)),
        "f(x + y) = f(x) + f(y)": np.max(np.abs(fxy - fx - fy)),
    }
    for what, err in tests.items():
        if not np.isfinite(err) or err > rtol * scale:
            raise ValueError(
                "optimizer must be linear in (gradient, state, params) to be linearised exactly "
                f"(sgd, momentum, nesterov, scale, add_decayed_weights, ...); its update fails "
                f"{what}: error {float(err):.3g} against scale {float(scale):.3g}. Adaptive "
                "optimisers (adam, rmsprop, ...) are refused."
            )


def linearize(optimizer, tau, *, grid_factor: int = 16) -> LinearizedOptimizer:
    """The delayed linear recurrence of an optax optimiser and its stability threshold.

    Args:
      optimizer: an ``optax.GradientTransformation`` that is linear in (gradient,
        state, params). Non-linearity is detected numerically (``f(0) = 0``, ``f(2x)
        = 2 f(x)``, additivity, at random points) and refused with a ``ValueError``.
      tau: the delay (a non-negative Python int) or a ``DelayDistribution``.
      grid_factor: resolution of the dense boundary locus (``dense_threshold``).

    Returns:
      :class:`LinearizedOptimizer`; e.g. ``linearize(optax.sgd(lr, momentum=b),
      tau).max_stable_sharpness == max_stable_sharpness(lr, tau, b)``.

    Computed in float64 when ``jax_enable_x64`` is on, else float32.
    """
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer must be an optax GradientTransformation; got {optimizer!r}")
    dist = static_delay(tau, "tau")
    dtype = jnp.asarray(0.0).dtype
    f, n_s = _update_function(optimizer, dtype)
    _check_linear(f, n_s, dtype, rtol=1e-9 if dtype == jnp.float64 else 1e-4)
    jac = np.asarray(jax.jacfwd(f)(jnp.zeros(n_s + 2, dtype)), dtype=np.float64)
    # rows: (u, s_new); columns: (w, s, g).  w+ = w + u.
    m = jac[:, : n_s + 1].copy()
    m[0, 0] += 1.0
    n_vec = jac[:, n_s + 1]
    d = _charpoly(m)
    closed = m.copy()
    closed[:, 0] += n_vec  # M + N e1^T
    n_poly = d - _charpoly(closed)
    if isinstance(dist, DelayDistribution):
        probs = np.asarray(dist.probabilities, dtype=np.float64)
        k = len(probs) - 1
        a = np.concatenate([d, np.zeros(k)])
        b = -np.polymul(n_poly, probs)
    else:
        a = np.concatenate([d, np.zeros(dist)])
        b = -n_poly
    b = np.concatenate([np.zeros(len(a) - len(b)), b])
    t = dense_threshold(jnp.asarray(a, dtype), jnp.asarray(b, dtype), grid_factor=grid_factor)
    reliable = bool(t.reliable) and _stable_for_small_sharpness(a, b)
    return LinearizedOptimizer(a, b, tau, float(t.q_max), float(t.theta), reliable)


def _stable_for_small_sharpness(a, b) -> bool:
    """All roots of A inside the unit circle, except a simple root at 1 moving inwards."""
    core = np.trim_zeros(a, "b")  # the z^tau factor: roots at 0
    r = np.roots(core)
    at_one = np.abs(r - 1) < 1e-8
    if np.sum(at_one) > 1 or np.any(np.abs(r[~at_one]) >= 1 - 1e-12):
        return False
    if np.any(at_one):
        # z ~ 1 - a B(1) / A'(1) for small a > 0
        return float(np.polyval(b, 1.0) / np.polyval(np.polyder(a), 1.0)) > 0
    return True
