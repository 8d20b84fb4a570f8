"""Adam's, AdamW's and RMSProp's diagonal preconditioner, read from an optax state, and
the change of variables that gives :func:`stability.hessian_spectrum` the spectrum of
the preconditioned Hessian ``P^-1/2 H P^-1/2``.

Linearised at a minimum with the second moment frozen (Cohen et al. 2022, "Adaptive
gradient methods at the edge of stability"), Adam and AdamW (optax's
``scale_by_adam``, ``add_decayed_weights``, ``scale_by_learning_rate``) update

    m_{t+1} = b1 m_t + (1 - b1) g_t,     w_{t+1} = w_t - lr c P^-1 m_{t+1} - lr wd w_t,

    P = diag(sqrt(v_hat + eps_root) + eps),   v_hat = nu / (1 - b2^t),   c = 1 / (1 - b1^t),

``nu`` the second moment and ``t`` the step count of the state, ``wd`` the weight decay
(0 for Adam). ``P`` and ``c`` are frozen at the state's count ``t``: those of the step
that produced the state (the next step's ``nu`` differs by ``(1 - b2) (g^2 - nu)``,
zero at a minimum, and its ``c`` is closer to 1). With ``g = H w`` (or a delayed
``H w_{t-tau}``), one step's Jacobian through the gradient is
``-(lr (1 - b1) c P^-1 H + lr wd I)``; ``P^-1 H`` is similar to ``S H S`` with
``S = P^-1/2``, and along each eigenvector of ``S H S`` (in the coordinates
``u = P^1/2 w``) the recurrence is scalar: the momentum recurrence with the eigenvalue
in place of the sharpness. This module supplies ``P`` and those constants
(:class:`Preconditioner`, :func:`preconditioner_from_optax`) and the extreme
eigenvalues of ``S H S`` come from ``hessian_spectrum(..., preconditioner=P)``.

RMSProp (optax's ``rmsprop``: ``scale_by_rms``, ``scale_by_learning_rate``, an
optional ``trace``): ``P = diag(sqrt(v_hat + eps))`` (``eps_in_sqrt=True``, optax's
default) or ``diag(sqrt(v_hat) + eps)``, ``v_hat = nu / (1 - decay^t)`` with
``bias_correction=True`` and ``nu`` otherwise. Its momentum is heavy ball on the
preconditioned gradient, ``t_{k+1} = beta t_k - lr P^-1 g_k``, which is the update above
with ``b1 = beta`` and ``c = 1 / (1 - beta)``; without momentum ``b1 = 0``, ``c = 1``.
Centered RMSProp (``scale_by_stddev``) uses ``v_hat - mu_hat^2`` for ``v_hat``.
Not supported (their states look the same, so they are not detected): Nesterov
variants (``nesterov=True``), AMSGrad and others (their states are refused).

The change of variables: with ``s = P^-1/2`` (a pytree) the loss
``loss_u(u) = loss(w + s * u)`` has the Hessian ``S H(w) S`` at ``u = 0`` exactly, so
the engine runs unchanged on ``u`` (:func:`change_of_variables`). ``w`` and ``s`` travel
as arguments beside ``u``, never as closed-over constants. The spectrum's
eigenvectors are directions in ``u``; ``s * u`` (:func:`weight_space_direction`) is the
direction in weight space.
"""

from __future__ import annotations

import collections
from functools import cache, lru_cache
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.curvature.hvp import trainable_mask
from stability.validation import check_number

__all__ = [
    "Preconditioner",
    "preconditioner_from_optax",
    "change_of_variables",
    "weight_space_direction",
]

KINDS = ("adam", "adamw", "rmsprop")
# optax's defaults (optax.adam / adamw / rmsprop, 0.2.x).
ADAM_DEFAULTS = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0}
ADAMW_WEIGHT_DECAY = 1e-4
RMSPROP_DEFAULTS = {"decay": 0.9, "eps": 1e-8}

# optax's state classes, matched by name and fields (some are not exported by optax,
# and a private import would tie us to one release's layout).
_ADAM = {"ScaleByAdamState"}
_RMS = {"ScaleByRmsState", "ScaleByRmsWithCountState"}
_CENTERED = {"ScaleByRStdDevState", "ScaleByRStdDevWithCountState"}
_TRACE = {"TraceState"}
_REFUSED = {
    "ScaleByAmsgradState", "ScaleByBeliefState", "ScaleByAdanState", "ScaleByLionState",
    "ScaleByNovogradState", "ScaleByAdaDeltaState", "ScaleByRssState", "FactoredState",
    "ScaleBySM3State",
}  # fmt: skip
# The same states restored without their optax classes (Orbax without a template,
# an .npz read by `stability.networks.checkpoints.load_params`): a NamedTuple comes
# back as the dict of its fields, a tuple as a list or a dict keyed "0", "1", ...
# Matched by the exact set of keys. {count, mu, nu} is also AdaBelief's and
# NovoGrad's layout (and centered RMSProp's with bias correction): the dict cannot
# tell them apart, so it is read as Adam unless kind="rmsprop" says otherwise.
_RAW = {
    frozenset({"count", "mu", "nu"}): "ScaleByAdamState",
    frozenset({"nu"}): "ScaleByRmsState",
    frozenset({"count", "nu"}): "ScaleByRmsWithCountState",
    frozenset({"mu", "nu"}): "ScaleByRStdDevState",
    frozenset({"trace"}): "TraceState",
    frozenset({"count", "mu", "nu", "nu_max"}): "ScaleByAmsgradState",
    frozenset({"count", "mu"}): "ScaleByLionState",
    frozenset({"count", "v_row", "v_col", "v"}): "FactoredState",
    frozenset({"m", "v", "n", "g", "t"}): "ScaleByAdanState",
    frozenset({"e_g", "e_x"}): "ScaleByAdaDeltaState",
    frozenset({"sum_of_squares"}): "ScaleByRssState",
}


class Preconditioner(NamedTuple):
    """The frozen diagonal preconditioner of an Adam-family optimizer and its constants.

    diagonal: ``P`` as a pytree like the optimizer's params,
    ``sqrt(v_hat + eps_root) + eps`` (module docstring). kind: ``"adam"``, ``"adamw"``
    or ``"rmsprop"``. lr: the learning rate when it could be read
    (``optax.inject_hyperparams``) or was given, else None. b1: the first-moment decay
    (RMSProp: its heavy-ball momentum, 0 without). b2: the second-moment decay
    (RMSProp: ``decay``). eps, eps_root: the constants of ``P`` (RMSProp with
    ``eps_in_sqrt=True``: ``eps_root`` is its eps and ``eps = 0``). weight_decay:
    AdamW's decoupled decay (0 otherwise; with ``optax.adamw(mask=...)`` it applies
    to the masked leaves only, and the state does not record the mask). count: the
    state's step count ``t`` (None for RMSProp without bias correction, which keeps
    none). bias_correction: ``c`` in
    ``w <- w - lr c P^-1 m``: ``1 / (1 - b1^t)`` for Adam, ``1 / (1 - b1)`` for RMSProp
    (1 without momentum).

    The linearised step is ``w <- w - lr c P^-1 m - lr weight_decay w`` with
    ``m <- b1 m + (1 - b1) H w``: one step's Jacobian through the gradient is
    ``-(lr (1 - b1) c P^-1 H + lr weight_decay I)`` (:attr:`gain` is
    ``lr (1 - b1) c``), and ``P^-1 H`` has the eigenvalues of ``P^-1/2 H P^-1/2``
    (similar matrices).
    """

    diagonal: Any
    kind: str
    lr: float | None
    b1: float
    b2: float
    eps: float
    eps_root: float
    weight_decay: float
    count: int | None
    bias_correction: float

    @property
    def gain(self) -> float | None:
        """``lr (1 - b1) c``: the linearised step is ``gain P^-1 H`` (plus
        ``lr weight_decay I``); None when ``lr`` is unknown."""
        if self.lr is None:
            return None
        return self.lr * (1.0 - self.b1) * self.bias_correction


# ------------------------------------------------------------- reading optax states


@cache
def _raw_class(name: str, fields: tuple):
    """A NamedTuple class named like optax's state class, marked as read from a dict."""
    cls = collections.namedtuple(name, fields)
    cls.raw = True
    return cls


def _from_raw(state):
    """A restored state dict as its optax state (`_RAW`), or ``state`` unchanged. An
    ``inject_hyperparams`` dict (``hyperparams``, ``inner_state``) keeps its
    hyperparameters; a ``count`` must be a scalar."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        return state
    keys = frozenset(state)
    if {"hyperparams", "inner_state"} <= keys and isinstance(state["hyperparams"], dict):
        fields = ("hyperparams", "inner_state")
        return _raw_class("InjectHyperparamsState", fields)(*(state[k] for k in fields))
    name = _RAW.get(keys)
    if name is None or ("count" in keys and np.ndim(state["count"]) != 0):
        return state
    fields = tuple(sorted(keys))
    return _raw_class(name, fields)(*(state[k] for k in fields))


def _walk(state, hyper, found, traces, refused):
    """Collect optax moment states (with the hyperparameters of the nearest enclosing
    ``inject_hyperparams``), momentum traces and refused states, depth first; the
    states may be optax's classes or their restored dicts (`_RAW`)."""
    state = _from_raw(state)
    name = type(state).__name__
    fields = getattr(state, "_fields", None)
    if fields is not None and "hyperparams" in fields and "inner_state" in fields:
        hyper = dict(state.hyperparams)
        _walk(state.inner_state, hyper, found, traces, refused)
        return
    if fields is not None and name in _ADAM | _RMS | _CENTERED:
        found.append((name, state, hyper))
        return
    if fields is not None and name in _TRACE:
        traces.append(hyper)
        return
    if name in _REFUSED:
        refused.append(name)
        return
    if isinstance(state, (tuple, list)):
        for x in state:
            _walk(x, hyper, found, traces, refused)
    elif isinstance(state, dict):
        for x in state.values():
            _walk(x, hyper, found, traces, refused)


def _hyper(name, given, stored, default):
    """``name`` from the explicit argument, the ``inject_hyperparams`` value or the
    default, in that order; a given value that contradicts the stored one is an error."""
    if stored is not None:
        stored = float(np.asarray(stored))
    if given is not None:
        check_number(name, given)
        given = float(given)
        if stored is not None and not np.isclose(given, stored, rtol=1e-6, atol=0.0):
            raise ValueError(
                f"{name}={given!r} contradicts the value the optimizer state holds "
                f"(inject_hyperparams): {stored!r}"
            )
        return given
    return stored if stored is not None else default


def _count(state) -> int:
    count = int(np.asarray(state.count))
    if count < 1:
        raise ValueError(
            "opt_state has taken no update yet (count 0): its second moment is zero and "
            "its bias correction undefined; read it after at least one optimizer step"
        )
    return count


def _check_like_params(tree, params):
    got, want = jax.tree_util.tree_structure(tree), jax.tree_util.tree_structure(params)
    if got != want and hasattr(params, "keys") and "params" in params:
        # linen variables ({"params": ..., "batch_stats": ...}): the optimizer ran on
        # the "params" collection
        inner = jax.tree_util.tree_structure(params["params"])
        if inner == got:
            params, want = params["params"], inner
    if got != want:
        raise ValueError(
            f"params must have the structure of the optimizer state's moments; got {want}, "
            f"the state holds {got}"
        )
    for (path, a), b in zip(
        jax.tree_util.tree_flatten_with_path(tree)[0],
        jax.tree_util.tree_leaves(params),
        strict=True,
    ):
        if np.shape(a) != np.shape(b):
            raise ValueError(
                f"params must have the shapes of the optimizer state's moments; at "
                f"{jax.tree_util.keystr(path)} params has {np.shape(b)}, the state "
                f"{np.shape(a)}"
            )


def preconditioner_from_optax(
    opt_state,
    params=None,
    *,
    kind: str | None = None,
    learning_rate: float | None = None,
    b1: float | None = None,
    b2: float | None = None,
    eps: float | None = None,
    eps_root: float | None = None,
    weight_decay: float | None = None,
    momentum: float | None = None,
    eps_in_sqrt: bool = True,
) -> Preconditioner:
    """The frozen preconditioner ``P`` of an Adam, AdamW or RMSProp optax state.

    Finds the one ``ScaleByAdamState`` (``count, mu, nu``) or ``ScaleByRmsState``
    (``nu``; ``ScaleByRmsWithCountState`` with ``bias_correction=True``; centered:
    ``ScaleByRStdDevState``) inside ``opt_state``: a plain ``optax.adam / adamw /
    rmsprop`` state, ``optax.chain`` tuples, ``optax.inject_hyperparams(...)``,
    ``optax.masked`` weight decay, ``optax.MultiSteps``; or the same state
    restored without its classes (Orbax without a template, an ``.npz`` read by
    `stability.networks.checkpoints.load_params`): nested dicts and lists in which
    the Adam state is a dict with the keys ``count, mu, nu`` (read as Adam unless
    ``kind="rmsprop"``: centered RMSProp's, AdaBelief's and NovoGrad's have the same
    keys), the RMSProp state ``nu`` (``count, nu``; centered ``mu, nu``), a trace
    ``trace``, ``inject_hyperparams`` ``hyperparams, inner_state``. Returns ``P`` as
    ``sqrt(nu / (1 - b2^t) + eps_root) + eps`` (module docstring) with the
    constants of the linearised update.

    A plain optax state holds no hyperparameters: each is taken from its argument,
    else from ``inject_hyperparams`` (``opt_state.hyperparams``), else optax's default
    (``b1=0.9, b2=0.999, eps=1e-8, eps_root=0``; adamw ``weight_decay=1e-4``; rmsprop
    ``decay=0.9, eps=1e-8``). An argument that contradicts a stored value is an error.

    Args:
      opt_state: an optax optimizer state, or its restored dicts (above).
      params: optional; when given, the moments must have its structure and shapes
        (or those of its ``"params"`` entry: linen variables).
      kind: ``"adam"``, ``"adamw"`` or ``"rmsprop"``; default: from the state
        (an Adam state is ``"adamw"`` when a ``weight_decay`` is given or stored).
      learning_rate: the learning rate (``lr``; default: the stored one, else None).
      b1, b2, eps, eps_root: Adam's constants; for RMSProp ``b2`` is its ``decay``
        and ``eps`` its eps (``b1`` and ``eps_root`` refused: see ``momentum``).
      weight_decay: AdamW's weight decay.
      momentum: RMSProp's momentum (required when its state holds a trace and no
        stored value).
      eps_in_sqrt: RMSProp's ``eps_in_sqrt`` (optax's default True: ``P =
        sqrt(v_hat + eps)``); the state does not record it.

    Returns:
      :class:`Preconditioner`.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None; got {kind!r}")
    found, traces, refused = [], [], []
    _walk(opt_state, None, found, traces, refused)
    if not found:
        extra = f" (found {sorted(set(refused))}, which are not supported)" if refused else ""
        keys = ""
        if isinstance(opt_state, dict):
            keys = f" with keys {sorted(map(str, opt_state))[:6]}"
        raise ValueError(
            "opt_state must hold an Adam or RMSProp state (optax.ScaleByAdamState or "
            f"ScaleByRmsState, or its dict count, mu, nu){extra}; got "
            f"{type(opt_state).__name__}{keys}"
        )
    if len(found) > 1:
        raise ValueError(
            f"opt_state must hold one Adam or RMSProp state; got {len(found)} "
            f"({[n for n, _, _ in found]}), e.g. from optax.multi_transform"
        )
    name, state, hyper = found[0]
    centered_dict = getattr(state, "raw", False) and name in _ADAM and kind == "rmsprop"
    if centered_dict:
        name = "ScaleByRStdDevWithCountState"  # the same dict keys (`_RAW`)
    stored = hyper or {}
    if params is not None:
        _check_like_params(state.nu, params)
    if name in _ADAM:
        return _adam(state, stored, traces, kind, learning_rate, b1, b2, eps, eps_root,
                     weight_decay, momentum)  # fmt: skip
    if kind not in (None, "rmsprop"):
        raise ValueError(f"kind={kind!r} does not match opt_state, which holds {name}")
    for arg, value in (("b1", b1), ("eps_root", eps_root), ("weight_decay", weight_decay)):
        if value is not None:
            raise ValueError(f"{arg} is not an RMSProp hyperparameter; got {arg}={value!r}")
    pre = _rmsprop(name, state, stored, traces, learning_rate, b2, eps, momentum,
                   eps_in_sqrt)  # fmt: skip
    if centered_dict and not all(
        np.all(np.isfinite(np.asarray(d))) for d in jax.tree_util.tree_leaves(pre.diagonal)
    ):
        raise ValueError(
            "kind='rmsprop' reads the dict (count, mu, nu) as centered RMSProp, but its "
            "variance nu - mu^2 is negative: it is not one (an Adam state? leave kind out)"
        )
    return pre


def _adam(state, stored, traces, kind, learning_rate, b1, b2, eps, eps_root, weight_decay,
          momentum) -> Preconditioner:  # fmt: skip
    if kind == "rmsprop":
        raise ValueError("kind='rmsprop' does not match opt_state, which holds an Adam state")
    if momentum is not None:
        raise ValueError(f"momentum is RMSProp's; Adam's is b1. Got momentum={momentum!r}")
    if traces:
        raise ValueError(
            "opt_state holds a momentum trace (optax.TraceState) beside its Adam state; "
            "that update is not Adam's and is not supported"
        )
    if kind is None:
        kind = "adamw" if weight_decay is not None or "weight_decay" in stored else "adam"
    wd_default = ADAMW_WEIGHT_DECAY if kind == "adamw" else 0.0
    wd = _hyper("weight_decay", weight_decay, stored.get("weight_decay"), wd_default)
    if kind == "adam" and wd != 0.0:
        raise ValueError(f"weight_decay must be 0 for kind='adam' (use 'adamw'); got {wd!r}")
    values = {
        key: _hyper(key, given, stored.get(key), ADAM_DEFAULTS[key])
        for key, given in (("b1", b1), ("b2", b2), ("eps", eps), ("eps_root", eps_root))
    }
    _check_constants(values)
    lr = _hyper("learning_rate", learning_rate, stored.get("learning_rate"), None)
    t = _count(state)
    v_correction = 1.0 - values["b2"] ** t
    diag = jax.tree_util.tree_map(
        lambda n: _diagonal(n / _like(v_correction, n), values["eps_root"], values["eps"]),
        state.nu,
    )
    return Preconditioner(diag, kind, lr, values["b1"], values["b2"], values["eps"],
                          values["eps_root"], wd, t, 1.0 / (1.0 - values["b1"] ** t))  # fmt: skip


def _rmsprop(name, state, stored, traces, learning_rate, decay, eps, momentum,
             eps_in_sqrt) -> Preconditioner:  # fmt: skip
    decay = _hyper("b2", decay, stored.get("decay"), RMSPROP_DEFAULTS["decay"])
    eps = _hyper("eps", eps, stored.get("eps"), RMSPROP_DEFAULTS["eps"])
    lr = _hyper("learning_rate", learning_rate, stored.get("learning_rate"), None)
    beta = 0.0
    if traces:
        beta = _hyper("momentum", momentum, traces[0] and traces[0].get("momentum"), None)
        if beta is None:
            raise ValueError(
                "opt_state holds RMSProp momentum (optax.TraceState) but not its value: "
                "pass momentum=..."
            )
    elif momentum is not None:
        raise ValueError(f"momentum={momentum!r} given, but opt_state holds no momentum trace")
    _check_constants({"b2": decay, "eps": eps, "b1": beta})
    count = None
    nu = state.nu
    mu = state.mu if name in _CENTERED else None
    if "count" in state._fields:  # bias_correction=True
        count = _count(state)
        correction = 1.0 - decay**count
        nu = jax.tree_util.tree_map(lambda n: n / _like(correction, n), nu)
        if mu is not None:
            mu = jax.tree_util.tree_map(lambda m: m / _like(correction, m), mu)
    if mu is not None:
        nu = jax.tree_util.tree_map(lambda n, m: n - m * m, nu, mu)
    root, outer = (eps, 0.0) if eps_in_sqrt else (0.0, eps)
    diag = jax.tree_util.tree_map(lambda n: _diagonal(n, root, outer), nu)
    return Preconditioner(diag, "rmsprop", lr, beta, decay, outer, root, 0.0, count,
                          1.0 / (1.0 - beta))  # fmt: skip


def _check_constants(values):
    for key in ("b1", "b2"):
        if key in values and not 0.0 <= values[key] < 1.0:
            raise ValueError(f"{key} must be in [0, 1); got {values[key]!r}")
    for key in ("eps", "eps_root"):
        if key in values and not values[key] >= 0.0:
            raise ValueError(f"{key} must be >= 0; got {values[key]!r}")


def _like(x, leaf):
    """A Python scalar as a 0-d array of ``leaf``'s dtype (strict dtype promotion)."""
    return jnp.asarray(x, jnp.result_type(leaf))


def _diagonal(v_hat, eps_root, eps):
    return jnp.sqrt(v_hat + _like(eps_root, v_hat)) + _like(eps, v_hat)


# ------------------------------------------------------------ change of variables


class ChangeOfVariables(NamedTuple):
    """``hessian_spectrum``'s arguments in the coordinates ``u``, ``w = w0 + s * u``:
    ``loss(params_u[, batch])``, ``params_u = (u, w0 leaves, s leaves)``, the
    ``trainable`` flags that differentiate ``u`` only, and the warm ``start``."""

    loss: Any
    params: Any
    trainable: Any
    start: Any

    def restore(self, spectrum):
        """The spectrum with its eigenvectors as pytrees like params (the ``u`` part)."""
        if getattr(spectrum, "eigenvectors", None) is None:
            return spectrum
        return spectrum._replace(eigenvectors=spectrum.eigenvectors[0])


def _selected_diagonal(preconditioner, params, mask):
    """``P``'s leaves for the differentiated leaves of ``params``, in order: ``P`` has
    the structure of ``params``, or one leaf per differentiated leaf (an optimizer over
    ``variables["params"]`` beside ``batch_stats`` that are not differentiated)."""
    diag = preconditioner.diagonal if isinstance(preconditioner, Preconditioner) else preconditioner
    d_leaves, d_def = jax.tree_util.tree_flatten(diag)
    if d_def == jax.tree_util.tree_structure(params):
        return [d for d, m in zip(d_leaves, mask, strict=True) if m]
    if len(d_leaves) != sum(mask):
        raise ValueError(
            "preconditioner must be a Preconditioner or a pytree of positive arrays with "
            f"the structure of params, or one leaf per differentiated leaf ({sum(mask)}); got "
            f"{len(d_leaves)} leaves"
        )
    return d_leaves


def _diagonal_leaves(preconditioner, params, mask, *, batched=False):
    """:func:`_selected_diagonal`, checked: floating, shapes those of the leaves
    (``batched``: the leaves carry one more, leading, axis); values: :func:`_scales`."""
    paths = [p for (p, _), m in zip(jax.tree_util.tree_flatten_with_path(params)[0], mask,
                                    strict=True) if m]  # fmt: skip
    xs = [x for x, m in zip(jax.tree_util.tree_leaves(params), mask, strict=True) if m]
    out = []
    for path, x, d in zip(paths, xs, _selected_diagonal(preconditioner, params, mask),
                          strict=True):  # fmt: skip
        where = jax.tree_util.keystr(path) or "<root>"
        want = np.shape(x)[int(batched) :]
        if not hasattr(d, "shape") or np.shape(d) != want:
            raise ValueError(
                f"preconditioner must have the shapes of params; at {where} params has "
                f"{want}, the preconditioner {np.shape(d)}"
            )
        d = jnp.asarray(d)
        if not jnp.issubdtype(d.dtype, jnp.floating):
            raise ValueError(f"preconditioner must be floating; got {d.dtype} at {where}")
        out.append(d)
    return out


def _paths(params, mask):
    return [jax.tree_util.keystr(p) or "<root>"
            for (p, _), m in zip(jax.tree_util.tree_flatten_with_path(params)[0], mask,
                                 strict=True) if m]  # fmt: skip


# One compiled program per shapes for all the leaves (eager operations leaf by leaf
# compiled dozens of small programs: 2 s on the first call for the digits MLP).
@jax.jit
def _scales(d, like):
    """Per leaf: whether ``d`` is finite and positive, and ``d^-1/2`` in ``like``'s dtype."""
    ok = jnp.stack([jnp.all(jnp.isfinite(x) & (x > 0)) for x in d])
    return ok, [_inverse_sqrt(x, jnp.result_type(y)) for x, y in zip(d, like, strict=True)]


@jax.jit
def _zeros(w):
    """Per leaf: whether ``w`` is finite, and zeros like it."""
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in w]), [jnp.zeros_like(x) for x in w]


def _checked_scales(diag, like, paths):
    ok, s = _scales(diag, like)
    bad = [p for p, good in zip(paths, np.asarray(ok), strict=True) if not good]
    if bad:
        raise ValueError(
            f"preconditioner must be finite and positive; it is not at {', '.join(bad[:5])}"
        )
    return s


def _inverse_sqrt(d, dtype):
    """``d^-1/2`` computed in the wider of the two dtypes, then cast to the leaf's."""
    wide = jnp.promote_types(d.dtype, dtype)
    return (1 / jnp.sqrt(d.astype(wide))).astype(dtype)


@lru_cache(maxsize=32)
def _loss_in_u(loss, mask, couples):
    """``loss_u((u, w, s)[, batch]) = loss(u with its differentiated leaves replaced by
    w + s * u[, batch])``: one object per ``(loss, mask)``, so compiled code is reused."""

    def loss_u(wrapped, *batch):
        tree, w, s = wrapped
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        pairs = iter(zip(w, s, strict=True))
        new = []
        for x, m in zip(leaves, mask, strict=True):
            if m:
                w0, scale = next(pairs)
                x = w0 + scale * x
            new.append(x)
        return loss(jax.tree_util.tree_unflatten(treedef, new), *batch)

    loss_u.couples_examples = couples
    return loss_u


def change_of_variables(loss, params, preconditioner, *, trainable=None, start=None):
    """The problem in ``u = P^1/2 (w - params)``: ``loss_u(u) = loss(params + s * u)``
    with ``s = P^-1/2``, whose Hessian at ``u = 0`` is ``S H S`` exactly.

    Only the differentiated leaves (``trainable``) are scaled; the others pass
    through. ``params_u = (u, w, s)``: ``u`` like params (its differentiated leaves
    zero), ``w`` and ``s`` lists of the differentiated leaves and their scales (in each
    leaf's dtype), arguments of the loss (never constants folded into it).
    ``start`` (a pytree like params, or a spectrum with eigenvectors) is a direction in
    ``u``. Returns :class:`ChangeOfVariables`.
    """
    if not callable(loss):
        raise TypeError(f"loss must be callable; got {type(loss).__name__}")
    mask = trainable_mask(params, trainable)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if not any(mask):
        raise ValueError("params must contain at least one floating-point leaf; got none")
    diag = _diagonal_leaves(preconditioner, params, mask)
    w = [jnp.asarray(x) for x, m in zip(leaves, mask, strict=True) if m]
    paths = _paths(params, mask)
    finite, zeros = _zeros(w)
    bad = [p for p, good in zip(paths, np.asarray(finite), strict=True) if not good]
    if bad:
        raise ValueError(f"params must be finite; got NaN or inf in leaves {', '.join(bad[:5])}")
    s = _checked_scales(diag, w, paths)
    it = iter(zeros)
    u = [next(it) if m else x for x, m in zip(leaves, mask, strict=True)]
    wrapped = (jax.tree_util.tree_unflatten(treedef, u), w, s)
    flags = (jax.tree_util.tree_unflatten(treedef, list(mask)), [False] * len(w),
             [False] * len(s))  # fmt: skip
    couples = bool(getattr(loss, "couples_examples", False))
    if start is not None:
        if hasattr(start, "eigenvectors") and hasattr(start, "_replace"):
            if start.eigenvectors is not None:
                start = start._replace(eigenvectors=(start.eigenvectors, w, s))
        else:
            start = (start, w, s)
    return ChangeOfVariables(_loss_in_u(loss, mask, couples), wrapped, flags, start)


def weight_space_direction(direction, preconditioner, *, trainable=None):
    """``s * u``, ``s = P^-1/2``: a direction ``u`` of the preconditioned problem (a
    pytree like params, or the ``eigenvectors`` of ``hessian_spectrum(...,
    preconditioner=P)``, whose leaves carry a leading axis ``k``) as a direction in
    weight space (not of unit norm). Leaves that are not differentiated are returned as
    given."""
    mask = trainable_mask(direction, trainable)
    leaves, treedef = jax.tree_util.tree_flatten(direction)
    xs = [x for x, m in zip(leaves, mask, strict=True) if m]
    ds = _selected_diagonal(preconditioner, direction, mask)
    batched = bool(xs) and np.ndim(xs[0]) == np.ndim(ds[0]) + 1
    diag = _diagonal_leaves(preconditioner, direction, mask, batched=batched)
    scales = iter(_checked_scales(diag, xs, _paths(direction, mask)))
    out = [x * next(scales) if m else x for x, m in zip(leaves, mask, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, out)
