"""A small worked example: a tanh MLP trained to a TRUE minimum on digits.

The stability verdict is about a minimum (gradient 0). Cross-entropy on
separable data has none, the trained point keeps drifting along a valley
(docs/theory.md section 14), so the example uses squared error on one-hot targets
and trains with L-BFGS until the network fits its data: a point where the
gradient vanishes to round-off in float64. A cross-entropy + weight decay
variant (a strictly positive-definite regulariser makes a true minimum) is
also available.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx

from stability.networks.models import cross_entropy, loss_from_model, mean_squared_error
from stability.validation import check_int, check_option

N_DIGITS = 1797  # examples in the digits data set


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The bundled ``digits.npz``: pixels (1797, 64) and labels (1797,), uint8."""
    from importlib.resources import files

    with files("stability.networks").joinpath("digits.npz").open("rb") as f:
        data = np.load(f)
        return data["pixels"], data["labels"]


def load_digits(n: int | None = None, *, dtype=None) -> tuple[jax.Array, jax.Array]:
    """The 8x8 handwritten digits bundled with the package: ``(x, y)``, x in [0, 1].

    The test set of the UCI "Optical Recognition of Handwritten Digits" data
    (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), 1797 images, as scikit-learn also
    ships it (``sklearn.datasets.load_digits``: the same numbers, in the same
    order); stored in ``stability/networks/digits.npz`` (45 kB), so the demo needs
    no download and no extra dependency.

    Args:
      n: number of examples, the FIRST n of the 1797 (deterministic; the data
        set cycles through the classes so any prefix is roughly balanced).
        None: all.
      dtype: float dtype of ``x`` (default: JAX's default float, float64 when
        ``jax_enable_x64`` is on).

    Returns:
      ``x`` of shape (n, 64) (pixel intensities 0..16 divided by 16) and
      integer labels ``y`` (int32) of shape (n,).
    """
    if n is None:
        n = N_DIGITS
    n = check_int("n", n, 1)
    if n > N_DIGITS:
        raise ValueError(f"n must be in 1..{N_DIGITS}; got {n}")
    pixels, labels = _digits_arrays()
    x = jnp.asarray(pixels[:n] / 16.0, dtype=dtype or jnp.result_type(float))
    y = jnp.asarray(labels[:n], dtype=jnp.int32)
    return x, y


class DigitsMLP(nn.Module):
    """Linen tanh MLP 64 -> hidden (x depth) -> classes (2410 parameters by default).

    ``depth``: the number of hidden layers, each ``Dense`` + tanh (``Dense_0`` ..
    ``Dense_{depth-1}``), then the output ``Dense_{depth}``; the default 1 is
    64 -> hidden -> classes. Deeper nets give a pipeline whole layers per stage.
    """

    hidden: int = 32
    classes: int = 10
    param_dtype: Any = jnp.float32
    depth: int = 1

    @nn.compact
    def __call__(self, x):
        for _ in range(self.depth):
            x = jnp.tanh(nn.Dense(self.hidden, dtype=x.dtype, param_dtype=self.param_dtype)(x))
        return nn.Dense(self.classes, dtype=x.dtype, param_dtype=self.param_dtype)(x)


class NnxDigitsMLP(nnx.Module):
    """The nnx twin of `DigitsMLP` (same parameter shapes and function)."""

    def __init__(self, hidden: int = 32, classes: int = 10, *, rngs: nnx.Rngs, param_dtype=None):
        param_dtype = param_dtype or jnp.float32
        self.hidden = nnx.Linear(64, hidden, param_dtype=param_dtype, rngs=rngs)
        self.out = nnx.Linear(hidden, classes, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


class Minimum(NamedTuple):
    """A trained minimum of the digits example.

    Attributes:
      params: linen variables ``{"params": ...}`` of `DigitsMLP` at the minimum.
      loss_fn: ``loss_fn(params, batch)``, the training objective (including
        weight decay, if any).
      data: the training batch ``(x, y)``.
      model: the `DigitsMLP` instance.
      loss: final training loss.
      grad_norm: Euclidean norm of the full-batch gradient at ``params``.
      steps: L-BFGS iterations run.
      converged: True when ``grad_norm <= gtol`` (the point is a minimum to
        the requested tolerance); False means do not trust it as a minimum.
    """

    params: Any
    loss_fn: Callable
    data: tuple
    model: DigitsMLP
    loss: float
    grad_norm: float
    steps: int
    converged: bool


def with_weight_decay(loss_fn: Callable, weight_decay) -> Callable:
    """``loss_fn(p, batch) + weight_decay / 2 * ||p["params"]||^2``."""

    def regularised(variables, batch):
        sq = sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(variables["params"]))
        return loss_fn(variables, batch) + 0.5 * weight_decay * sq

    return regularised


def train_to_minimum(
    n: int = 256,
    *,
    hidden: int = 32,
    depth: int = 1,
    loss: str = "squared_error",
    weight_decay: float = 0.0,
    seed: int = 0,
    max_steps: int = 3000,
    gtol: float | None = None,
    memory_size: int = 100,
    dtype=None,
) -> Minimum:
    """Train `DigitsMLP` on the first ``n`` digits to a minimum with L-BFGS.

    Args:
      n: number of training examples (first n digits).
      hidden: hidden width (n=256, hidden=32: 2410 parameters).
      depth: hidden layers (`DigitsMLP`; 1: 64 -> hidden -> 10).
      loss: "squared_error" (`mean_squared_error` on one-hot targets; the
        network interpolates, loss -> ~0) or "cross_entropy" (needs
        ``weight_decay > 0`` to have a minimum).
      weight_decay: adds ``weight_decay / 2 * ||params||^2``.
      seed: initialisation seed.
      max_steps: L-BFGS iteration cap (a jit-compiled ``lax.while_loop``).
      gtol: stop when the gradient norm is below this (default 1e-6 in float64,
        1e-5 in lower precision, where round-off floors the gradient near 1e-6).
      memory_size: L-BFGS history length. Near an interpolating minimum the
        Hessian is badly conditioned; a long history (100) reaches loss ~1e-9
        in ~10x fewer iterations than optax's default 10.
      dtype: float dtype (default JAX's default float; use float64, i.e.
        ``jax_enable_x64``, to reach a gradient ~1e-8).

    Returns:
      A `Minimum`; check ``converged``.
    """
    n = check_int("n", n, 1)
    hidden = check_int("hidden", hidden, 1)
    depth = check_int("depth", depth, 1)
    max_steps = check_int("max_steps", max_steps, 1)
    memory_size = check_int("memory_size", memory_size, 1)
    loss = check_option("loss", loss, ("squared_error", "cross_entropy"))
    if not (np.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be finite and >= 0; got {weight_decay!r}")
    if loss == "cross_entropy" and weight_decay == 0:
        raise ValueError(
            "loss='cross_entropy' has no finite minimum on separable data without weight decay "
            "(docs/theory.md section 14); pass weight_decay > 0"
        )
    dtype = dtype or jnp.result_type(float)
    if gtol is None:
        gtol = 1e-6 if jnp.finfo(dtype).bits >= 64 else 1e-5
    if not gtol > 0:
        raise ValueError(f"gtol must be > 0; got {gtol!r}")
    x, y = load_digits(n, dtype=dtype)
    model = DigitsMLP(hidden=hidden, param_dtype=dtype, depth=depth)
    params = model.init(jax.random.key(seed), x[:1])
    data_loss = _data_loss(hidden, loss, jnp.dtype(dtype).name, depth)
    wd = jnp.asarray(weight_decay, dtype)
    # optax.lbfgs mixes int32 and int64 counters under x64: allow standard promotion.
    with jax.numpy_dtype_promotion("standard"):
        params, value, gnorm, steps = _lbfgs(
            data_loss,
            params,
            (x, y),
            wd,
            jnp.asarray(gtol, dtype),
            jnp.asarray(max_steps, jnp.int32),
            memory_size=memory_size,
        )
    gnorm = float(gnorm)
    loss_fn = with_weight_decay(data_loss, weight_decay) if weight_decay else data_loss
    return Minimum(
        params, loss_fn, (x, y), model, float(value), gnorm, int(steps), bool(gnorm <= gtol)
    )


@functools.cache
def _data_loss(hidden: int, loss: str, dtype: str, depth: int = 1) -> Callable:
    """One loss function object per configuration, so compilations are reused."""
    out_loss = mean_squared_error if loss == "squared_error" else cross_entropy
    model = DigitsMLP(hidden=hidden, param_dtype=jnp.dtype(dtype), depth=depth)
    return loss_from_model(model, {"params": {}}, loss=out_loss)[0]


@functools.partial(jax.jit, static_argnames=("loss_fn", "memory_size"))
def _lbfgs(loss_fn, params, data, weight_decay, gtol, max_steps, *, memory_size):
    """L-BFGS (optax) until ||grad|| <= gtol or max_steps."""

    def fun(p):
        sq = sum(jnp.sum(jnp.square(w)) for w in jax.tree_util.tree_leaves(p["params"]))
        return loss_fn(p, data) + 0.5 * weight_decay * sq

    # A backtracking (Armijo) line search: about half the compile time of the
    # default zoom search, and as fast to converge on this problem.
    linesearch = optax.scale_by_backtracking_linesearch(max_backtracking_steps=20, store_grad=True)
    opt = optax.lbfgs(memory_size=memory_size, linesearch=linesearch)
    value_and_grad = optax.value_and_grad_from_state(fun)

    def body(carry):
        p, state, _, _, k = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=fun)
        p = optax.apply_updates(p, updates)
        # The line search stores the value and gradient at the new point.
        value = optax.tree.get(state, "value")
        grad = optax.tree.get(state, "grad")
        return p, state, value, optax.tree.norm(grad), k + 1

    def cond(carry):
        _, _, value, gnorm, k = carry
        return (k < max_steps) & (gnorm > gtol) & jnp.isfinite(value)

    value0, grad0 = jax.value_and_grad(fun)(params)
    init = (params, opt.init(params), value0, optax.tree.norm(grad0), jnp.zeros((), jnp.int32))
    p, _, value, gnorm, k = jax.lax.while_loop(cond, body, init)
    return p, value, gnorm, k
