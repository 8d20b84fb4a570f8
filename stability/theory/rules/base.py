"""The rule object: one momentum rule, defined once, in its own file.

A rule is an immutable, hashable object (a static argument of ``jax.jit``): its
class holds the formulas, its fields (none for the built-in rules) any static
configuration. The numeric hyperparameter that is vectorised and traced,
``beta``, is an argument of every method, never a field. A rule with more
numbers (an Adam rule's weight decay, say) keeps them as fields of its frozen
dataclass, or takes them through its own :meth:`Rule.check_beta`.

What every rule defines (the only required method):

- :meth:`Rule.polynomial`: ``(A, B)`` with ``P(z) = A(z) + q B(z)``, for a delay
  polynomial ``D(z)`` (a fixed delay tau is ``D = 1`` padded to tau + 1
  coefficients, a distribution ``D(z) = sum_k p_k z^(K-k)``;
  ``stability.theory.rules.polynomial`` builds D and calls this);
- :meth:`Rule.update` and :meth:`Rule.init_buffer` (the simulator's step), with
  ``per_worker_buffer`` (the buffer layout).

What a rule may define, the closed forms the fast paths use; without them every
function falls back to a generic method on the polynomial alone (which
`Rule.provides` tells the modules):

- boundary locus of a fixed delay (``stability.theory.boundary_locus``):
  ``locus_span``, :meth:`crossing`, :meth:`modulus`,
  :meth:`quadratic_coefficient`, :meth:`trivial_delay`, :meth:`exact_threshold`;
  generic: ``dense_threshold`` of the polynomial;
- sparse form ``z^m (z - a1)(z - a2) + v1 z + v0`` (``stability.theory.dominant_root``,
  ``stability.theory.companion``): :meth:`sparse_form`, and in log coordinates
  :meth:`log_v`; generic: companion-matrix eigenvalues;
- delay distributions (``stability.theory.delay_locus``): :meth:`distribution_parts`,
  :meth:`locus_g`, :meth:`q_at_pi`, :meth:`locus_g_disc`; generic: eigenvalues and
  ``dense_threshold`` of the distribution's polynomial.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from stability.theory.discs import disc_product
from stability.validation import check_beta

_REGISTRY: dict[str, type] = {}


@dataclasses.dataclass(frozen=True)
class Rule:
    """Base class of the rules (see the module docstring for the methods)."""

    name: ClassVar[str] = ""
    is_rule: ClassVar[bool] = True  # lets stability.theory.precision tell a rule apart
    per_worker_buffer: ClassVar[bool] = False  # one momentum buffer per worker (shifted)
    locus_span: ClassVar[float | None] = None  # closed-form boundary locus (see crossing)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            _REGISTRY[name] = cls  # `as_rule(name)` finds it

    def __str__(self) -> str:
        return self.name

    def provides(self, method: str) -> bool:
        """Whether this rule defines ``method`` itself (a closed form) rather than
        inheriting the base class's (which has none)."""
        return getattr(type(self), method) is not getattr(Rule, method)

    # ------------------------------------------------------------------ checks

    def check_beta(self, beta, name: str = "beta") -> None:
        """The rule's momentum coefficient: in [0, 1) by default."""
        check_beta(beta, name)

    # -------------------------------------------------------------- polynomial

    def polynomial(self, d, beta, xp=jnp):
        """``(A, B)`` of ``P(z) = A(z) + q B(z)`` for the delay polynomial ``d``.

        ``d``: descending coefficients of ``D(z)`` (1-D, length K + 1); ``beta``: an
        array (batch axes); ``xp``: ``numpy`` or ``jax.numpy``. Returns A (monic,
        batch + (n + 1,)) and B (batch + (len,), len <= n + 1; padded by the caller).
        """
        raise NotImplementedError(f"rule {self.name!r} must define polynomial()")

    # --------------------------------------------------------------- simulator

    def init_buffer(self, w0) -> Any:
        """The optimiser's buffer before step 0 (a pytree): zeros like the weights."""
        return jax.tree_util.tree_map(jnp.zeros_like, w0)

    def update(self, w, v, g, lr, beta):
        """One step: ``(w+, v+)`` from the weights, the buffer, the arriving (stale)
        gradient ``g`` (pytrees), ``lr`` and ``beta`` (0-d arrays)."""
        raise NotImplementedError(f"rule {self.name!r} must define update()")

    # ------------------------------------------ closed forms: fixed-delay locus

    def crossing(self, theta, tau, beta):
        """``(X, Y, dX, dY, alpha, dalpha, s, s_psi)`` of the boundary locus
        (``stability.theory.boundary_locus``: ``-A/B = 2 s (-i) G``, ``G = e^{i alpha}
        (X + iY)`` up to a positive factor, derivatives in theta; s = sin(theta / 2)),
        with every angle in [0, 3 pi / 4] on the bracket ``(0, locus_span pi / (2 tau
        + 1)]`` (``stability.theory.sincos``)."""
        raise NotImplementedError

    def modulus(self, theta, tau, beta):
        """|A/B| on the unit circle at theta, without cancellation near theta = 0."""
        raise NotImplementedError

    def quadratic_coefficient(self, tau, beta):
        """K in F(theta) = (1 - beta) - K theta^2 + O(theta^4)."""
        raise NotImplementedError

    def trivial_delay(self, tau):
        """Where the threshold is a closed form (no Newton iterations): tau = 0."""
        return tau == 0

    def exact_threshold(self, q, theta, done, tau, beta):
        """Closed forms that replace the solver's ``(q, theta, done)`` somewhere."""
        return q, theta, done

    # ------------------------------------------------- closed forms: sparse form

    def sparse_form(self, q, beta, tau: int, xp=jnp):
        """``(m, a1, a2, v1, v0)``: ``P(z) = z^m (z - a1)(z - a2) + v1 z + v0`` up to
        roots at 0, for an integer delay ``tau >= 2`` (a1 = 1 for the log form)."""
        raise NotImplementedError

    def log_v(self, q, beta, d1):
        """``(V, v1, zero, 1 - zero)`` of the sparse form at z = 1 + d1 (numpy),
        written without cancellation at z = 1 (``stability.theory.dominant_root``)."""
        raise NotImplementedError

    # ---------------------------------------------- closed forms: distributions

    def distribution_parts(self, q: float, beta: float):
        """``(a1, a2, w1, w0)``: ``P = z^K [(z - a1)(z - a2) + (w1 z + w0) S(z)]``."""
        raise NotImplementedError

    def locus_g(self, theta, s, ds, beta):
        """G and dG/dtheta (``Q = -i e^{i theta/2} G``) from S, dS/dtheta (numpy)."""
        raise NotImplementedError

    def q_at_pi(self, s: float, beta: float) -> float:
        """Q(pi), real, from S(pi) = s."""
        raise NotImplementedError

    def locus_g_disc(self, z, r, beta, inv, s1inv2, s_max):
        """Discs holding G and G' over an angle interval of half-width r at z, from
        the discs ``inv`` of 1/S and ``s1inv2`` of S'/S^2 (centre, radius), and a lower
        bound of |G| (``|S| <= s_max``): ``(g_c, g_r, dg_c, dg_r, lower)``."""
        raise NotImplementedError


def as_rule(x, name: str = "momentum") -> Rule:
    """A rule object from a rule or its name (``"heavy_ball"``, ``"nesterov"``,
    ``"shifted"``, ``"gd"``, or any rule defined in ``stability.theory.rules``)."""
    if isinstance(x, Rule):
        return x
    if isinstance(x, str) and x in _REGISTRY:
        return _REGISTRY[x]()
    names = tuple(_REGISTRY)
    if isinstance(x, str):
        raise ValueError(f"{name} must be one of {names} or a Rule; got {x!r}")
    raise TypeError(f"{name} must be one of {names} or a Rule; got {x!r}")


def rule_names() -> tuple[str, ...]:
    """The names of the rules defined so far."""
    return tuple(_REGISTRY)


def polymul(p, r, xp=jnp):
    """Product of two descending-coefficient polynomials with batch axes."""
    n = p.shape[-1] + r.shape[-1] - 1
    batch = np.broadcast_shapes(p.shape[:-1], r.shape[:-1])
    dtype = xp.result_type(p, r)
    out = xp.zeros(batch + (n,), dtype=dtype)
    for j in range(r.shape[-1]):  # r is short (<= 3 terms) whenever it matters for speed
        term = p * r[..., j : j + 1]
        if xp is np:
            out[..., j : j + p.shape[-1]] += term
        else:
            out = out.at[..., j : j + p.shape[-1]].add(term)
    return out


def momentum_step(w, v, g, lr, beta, *, nesterov: bool = False):
    """torch/optax SGD momentum on pytrees: ``v+ = beta v + g``, ``w+ = w - lr v+``
    (Nesterov: ``w+ = w - lr (g + beta v+)``); returns ``(w+, v+)``."""
    v_new = jax.tree_util.tree_map(lambda vi, gi: beta.astype(vi.dtype) * vi + gi, v, g)
    if nesterov:
        step = jax.tree_util.tree_map(lambda gi, vi: gi + beta.astype(vi.dtype) * vi, g, v_new)
    else:
        step = v_new
    w_new = jax.tree_util.tree_map(lambda wi, si: wi - lr.astype(wi.dtype) * si, w, step)
    return w_new, v_new


def unit_polynomial(n: int, dtype, xp=jnp):
    """``z^(n-1)``: n descending coefficients, the first 1."""
    if xp is np:
        out = np.zeros(n, dtype)
        out[0] = 1.0
        return out
    return jnp.zeros(n, dtype=dtype).at[0].set(1.0)


def a_momentum(d, beta, xp):
    """``A = z^K (z - 1)(z - beta)`` (heavy ball and Nesterov), batch axes from beta."""
    k = d.shape[-1] - 1
    dtype = d.dtype
    zm1 = xp.asarray(np.array([1.0, -1.0]), dtype=dtype)  # z - 1
    zb = xp.stack([xp.ones_like(beta), -beta], axis=-1)
    return xp.concatenate([polymul(zm1, zb, xp), xp.zeros(beta.shape + (k,), dtype)], axis=-1)


def g_over_s(f_c, f_r, df_c, df_r, inv, s1inv2, s_max):
    """The discs of ``G = f / S`` and ``G' = f'/S - f S'/S^2`` from discs of f, f',
    1/S and S'/S^2, and a lower bound of |G| (``|S| <= s_max``)."""
    g_c, g_r = disc_product(f_c, f_r, *inv)
    a_c, a_r = disc_product(df_c, df_r, *inv)
    b_c, b_r = disc_product(f_c, f_r, *s1inv2)
    return g_c, g_r, a_c - b_c, a_r + b_r, (np.abs(f_c) - f_r) / s_max
