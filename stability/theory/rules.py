"""The momentum rules and their characteristic polynomials.

Along one Hessian eigenvalue ``a`` (``q = lr * a``) every rule is a scalar
linear recurrence whose characteristic polynomial is affine in q:

    P(z) = A(z) + q B(z),        A monic.

With ``g_s = a w_s`` the gradient at ``w_s`` and ``v`` the momentum buffer
(docs/theory.md section 3):

- gd:         w+ = w - lr g_{t-tau};
              P = z^tau (z - 1) + q
- heavy_ball: v+ = beta v + g_{t-tau};  w+ = w - lr v+;
              P = z^tau (z - 1)(z - beta) + q z
- nesterov:   v+ = beta v + g_{t-tau};  w+ = w - lr (g_{t-tau} + beta v+);
              P = z^tau (z - 1)(z - beta) + q ((1 + beta) z - beta)
- shifted:    v+ = beta v_{t-tau} + g_{t-tau};  w+ = w - lr v+;
              P = (z - 1)(z^(tau+1) - beta) + q z

heavy_ball is torch/optax SGD momentum, nesterov their Nesterov form and shifted
the per-worker momentum of Giladi et al. (ICLR 2020). With beta = 0 the three
momentum rules are ``z * (gd polynomial)``: the extra root 0 changes nothing.

Derivation (x_t = z^t): heavy_ball: u_t = w_{t+1} - w_t = -lr v_{t+1} obeys
u_t - beta u_{t-1} = -q w_{t-tau}, i.e. (z-1)(1 - beta/z) = -q z^-tau.
nesterov: v = q' z^-tau / (z - beta) (q' = a), z - 1 = -lr a z^-tau (1 + beta z
/ (z - beta)). shifted: z v = z^-tau (beta v + a), z - 1 = -lr z v.

Random delays (``stability.theory.delays``, first-moment model): replace ``z^-tau`` by
``S(z) = sum_k p_k z^-k`` in those derivations and multiply by ``z^K``; with
``D(z) = z^K S(z) = sum_k p_k z^(K-k)``:

- gd:         z^K (z-1) + q D(z)
- heavy_ball: z^K (z-1)(z-beta) + q z D(z)
- nesterov:   z^K (z-1)(z-beta) + q ((1+beta) z - beta) D(z)
- shifted:    (z-1)(z^(K+1) - beta D(z)) + q z D(z)

(for shifted the expected buffer obeys z v = S(z)(beta v + a)). A fixed delay
gives back the table above. Coefficients are stored in DESCENDING powers (numpy
``polyval``/``roots`` order), length ``degree + 1``, leading batch axes from beta.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.theory.delays import DelayDistribution
from stability.validation import (
    check_beta,
    check_int,
    check_momentum,
    check_probabilities,
    check_tau,
    is_concrete,
)

MOMENTUM_RULES = ("heavy_ball", "nesterov", "shifted")


class CharacteristicPolynomial(NamedTuple):
    """``P(z) = A(z) + q B(z)``; coefficients in descending powers.

    ``a``, ``b``: arrays of shape ``(..., degree + 1)`` (batch axes from beta);
    ``a[..., 0] == 1``.
    """

    a: jnp.ndarray
    b: jnp.ndarray

    @property
    def degree(self) -> int:
        """The degree of ``P`` (number of roots; the companion matrix's order)."""
        return self.a.shape[-1] - 1

    def coefficients(self, q):
        """The coefficients of ``A + q B`` (q broadcast against the batch axes)."""
        q = jnp.asarray(q)
        return self.a + q[..., None] * self.b


def float_dtype(*xs):
    """The common floating dtype of the inexact arguments (default float otherwise).

    Explicit, so that the library works under ``jax_numpy_dtype_promotion="strict"``.
    """
    dtypes = []
    for x in xs:
        if isinstance(x, (bool, int, float)) or x is None:
            continue  # Python scalars are weak: they take the other arguments' dtype
        dt = jnp.asarray(x).dtype
        if jnp.issubdtype(dt, jnp.inexact):
            dtypes.append(jnp.dtype(dt))
    if not dtypes:
        return jnp.asarray(0.0).dtype
    out = dtypes[0]
    for dt in dtypes[1:]:
        out = jnp.promote_types(out, dt)
    if jnp.issubdtype(out, jnp.complexfloating):
        raise TypeError(f"expected real arguments, got dtype {out}")
    return out


def _scalar_or_option(x) -> bool:
    """A Python int/float (not a numpy scalar); strings, None and delay distributions
    are options, not numbers, and do not count against it."""
    if x is None or isinstance(x, (str, DelayDistribution)):
        return True
    return isinstance(x, (int, float)) and not isinstance(x, np.generic)


def _to_python(x):
    """A concrete 0-d array as a Python float/bool/int, a larger one as numpy;
    anything else unchanged."""
    if is_concrete(x) and hasattr(x, "dtype"):
        return np.asarray(x).item() if np.ndim(x) == 0 else np.asarray(x)
    return x


@contextlib.contextmanager
def host_float64():
    """Compute in float64 on the host CPU, whatever ``jax_enable_x64`` says.

    Python numbers carry no precision of their own: a threshold of ``beta = 0.9``
    asked for with Python floats should be the float64 answer (3.8, not float32's
    3.7999999523), and a scalar costs microseconds either way. Inside, x64 is on,
    operations run eagerly even while an enclosing function is traced (their
    arguments are Python constants there) and arrays live on the CPU. Results made
    inside must leave as Python numbers or numpy arrays (`python_scalars_out` does
    that), never as float64 JAX arrays into a float32 program.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(jax.enable_x64(True))
        stack.enter_context(jax.ensure_compile_time_eval())
        # This process's own CPU device: with several processes (jax.distributed),
        # jax.devices("cpu")[0] belongs to process 0.
        stack.enter_context(jax.default_device(jax.local_devices(backend="cpu")[0]))
        yield


def python_scalars_out(fn):
    """Decorator: Python scalars in, Python scalars out, computed in float64.

    When every numeric argument of ``fn`` is a Python ``int``/``float`` (options
    such as ``momentum`` strings and ``DelayDistribution`` delays do not count),
    ``fn`` runs in float64 on the host (`host_float64`, whatever ``jax_enable_x64``
    says) and each 0-d array in the result (a leaf of a NamedTuple too) comes back as
    a Python ``float`` (``bool`` for flags; any larger array as a numpy array). Array
    arguments give arrays in their own dtype as before, and under
    ``jax.jit``/``vmap``/``grad`` traced arguments give tracers, never converted.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if all(_scalar_or_option(x) for x in (*args, *kwargs.values())):
            with host_float64():
                out = fn(*args, **kwargs)
                return jax.tree_util.tree_map(_to_python, out)
        return fn(*args, **kwargs)

    return wrapper


def check_delay(tau, name: str = "tau") -> None:
    """An integer delay (scalar or array) or a :class:`DelayDistribution`."""
    if isinstance(tau, DelayDistribution):
        if is_concrete(tau.probabilities):
            check_probabilities(tau.probabilities, f"{name}.probabilities")
        return
    check_tau(tau, name)


def static_delay(tau, name: str = "tau"):
    """A delay that fixes a polynomial's size: a Python int or a DelayDistribution."""
    if isinstance(tau, DelayDistribution):
        check_delay(tau, name)
        return tau
    if not is_concrete(tau):
        raise TypeError(
            f"{name} fixes the size of the companion matrix, so it must be a concrete "
            f"integer (mark it static under jax.jit); got a traced value {tau!r}"
        )
    check_tau(tau, name)
    if np.ndim(tau) != 0:
        raise ValueError(f"{name} must be a scalar integer here; got shape {np.shape(tau)}")
    return check_int(name, tau)


def _pad_left(c, length):
    pad = [(0, 0)] * (c.ndim - 1) + [(length - c.shape[-1], 0)]
    return jnp.pad(c, pad)


def _polymul(p, r):
    """Product of two descending-coefficient polynomials with batch axes."""
    n = p.shape[-1] + r.shape[-1] - 1
    batch = jnp.broadcast_shapes(p.shape[:-1], r.shape[:-1])
    out = jnp.zeros(batch + (n,), dtype=jnp.result_type(p, r))
    for j in range(r.shape[-1]):  # r is short (<= 3 terms) whenever it matters for speed
        out = out.at[..., j : j + p.shape[-1]].add(p * r[..., j : j + 1])
    return out


def characteristic_polynomial(
    tau, beta=0.0, *, momentum: str = "heavy_ball"
) -> CharacteristicPolynomial:
    """``P(z) = A(z) + q B(z)`` of a rule with delay ``tau`` (int or distribution).

    ``tau`` must be concrete (it fixes the degree: tau + 2, or K + 2 for a
    distribution with max delay K; gd itself is never built, beta = 0 of any
    momentum rule is gd times z). ``beta`` may be an array (batch axes).
    """
    check_momentum(momentum, "momentum")
    check_beta(beta, "beta")
    dist = static_delay(tau, "tau")
    if isinstance(dist, DelayDistribution):
        dtype = float_dtype(beta, dist.probabilities)
        d = jnp.asarray(dist.probabilities, dtype=dtype)  # D(z) = sum_k p_k z^(K-k)
    else:
        dtype = float_dtype(beta)
        d = jnp.zeros(dist + 1, dtype=dtype).at[dist].set(1.0)  # fixed delay: D = 1 (padded)
    k = d.shape[-1] - 1
    beta = jnp.asarray(beta, dtype=dtype)
    batch = beta.shape
    bcol = beta[..., None]
    zm1 = jnp.array([1.0, -1.0], dtype=dtype)  # z - 1
    dz = jnp.concatenate([d, jnp.zeros(1, dtype)])  # z D(z), degree K + 1
    if momentum == "shifted":
        # A = (z - 1)(z^(K+1) - beta D),  B = z D
        zk1 = jnp.zeros(k + 2, dtype=dtype).at[0].set(1.0)
        inner = zk1 - bcol * jnp.concatenate([jnp.zeros(1, dtype), d])
        a = _polymul(inner, zm1)
        b = dz
    else:
        # A = z^K (z - 1)(z - beta)
        zb = jnp.stack([jnp.ones_like(beta), -beta], axis=-1)
        a = jnp.concatenate([_polymul(zm1, zb), jnp.zeros(batch + (k,), dtype)], axis=-1)
        if momentum == "heavy_ball":
            b = dz  # B = z D
        else:  # nesterov: B = ((1 + beta) z - beta) D
            b = _polymul(d, jnp.stack([1.0 + beta, -beta], axis=-1))
    b = _pad_left(jnp.broadcast_to(b, batch + b.shape[-1:]), a.shape[-1])
    a = jnp.broadcast_to(a, b.shape)
    return CharacteristicPolynomial(a, b)
