"""Turn a Flax model into a ``loss(params, batch)`` function.

Conventions:

- A batch is ``(inputs, labels)`` or a dict with an input and a label entry,
  as the Flax examples write them (``{"image": ..., "label": ...}``). The keys
  are ``batch_keys=(input_key, label_key)`` when given; otherwise the labels
  are the one key of the dict found in `LABEL_KEYS` and the inputs the key
  named as ``__call__``'s input parameter (the sst2 example's ``token_ids``),
  else the one found in `INPUT_KEYS`. Other entries go to the model by rule 4
  or are ignored. The loss is the mean over the batch of
  ``loss(outputs, labels)`` (default: softmax cross-entropy on integer
  labels).
- The model is called as ``model(inputs, **keywords)`` (nnx) or
  ``model.apply(variables, inputs, **keywords)`` (linen): the inputs go to
  ``__call__``'s first parameter after ``self``, by position; when it takes
  none by position (the nlp_seq example's ``__call__(self, *, inputs,
  train)``), by keyword to its first keyword-only parameter that is not
  named by rules 1-3. The keywords follow one rule, read from the signature
  of the module's ``__call__``:

  1. a parameter named in `TRAIN_FLAGS` (``train``, ``training``,
     ``is_training``) receives ``train``; one named in `EVAL_FLAGS`
     (``deterministic``, ``use_running_average``) receives ``not train``;
  2. nnx only, a parameter named ``rngs`` (the Flax examples' call-time
     dropout keys): in train mode it receives ``nnx.Rngs(0)``, made afresh at
     every evaluation (the same dropout masks every time); in eval mode it
     receives ``None`` when it is required and keeps its default otherwise;
  3. ``call_kwargs`` (a dict) is passed as well and wins over 1 and 2; an
     ``nnx.Rngs`` in it is copied at every evaluation, so it too gives the
     same keys every time. Its values are constants, the same for every
     batch;
  4. per-example inputs beside the inputs (the sst2 example's ``lengths``):
     a dict batch entry whose key is the name of a ``__call__`` parameter is
     passed to it, sliced and placed with the batch like the inputs, so each
     batch (and each part of one) gives its own values;
     ``call_kwargs={"lengths": batch_entry("length")}`` takes the entry of
     another key (the sst2 pipeline's ``"length"``);
  5. any other parameter without a default is an error naming it, unless the
     first in-memory batch of ``data`` holds an entry of its name (declare it
     with `batch_entry` when ``data`` is an iterator).

- A collective over a named axis that nothing binds, as in modules written
  for ``jax.pmap`` (the imagenet example's ``BatchNorm(axis_name="batch")``
  in train mode), runs with that axis bound to one member (``jax.vmap`` of
  size 1): the batch statistics are those of the whole batch, as ``pmap`` on
  one device computes them.
- The same loss function object is returned for the same (or an equal)
  module, loss and keywords; a module with list attributes (the imagenet
  example's ``partial(ResNet, stage_sizes=[...])``) is compared by value. Jitted
  consumers key their compiled code on it, so a second `is_accessible` call
  on the same model and shapes compiles nothing.
- A failing call is blamed on the inputs' shape (a conv net given flattened
  images) only when the model runs on inputs of the shape its first layer
  expects; otherwise the module's own error is raised.
- Eval mode by default: batch norm uses its running statistics and dropout is
  off (rule 1; for nnx also ``.eval()`` on a copy of the module). ``train=True``
  evaluates in training mode: batch statistics of the batch (their
  running-average updates are discarded) and dropout with the fixed key
  ``jax.random.key(0)`` (linen: ``rngs={"dropout": key}``; nnx: rule 2, and
  every rng stream the module holds is reset to that key and count 0), so the
  loss is still a deterministic function of ``params``. The user's module is
  never modified.
- Only trainable parameters are differentiated, but the whole state is an
  argument of the loss, never a compiled-in constant. Linen: ``params`` is the
  variables dict ``{"params": ..., "batch_stats": ...}``; nnx: ``params`` is
  the ``nnx.State`` of the module's variables (``nnx.Param`` and batch
  statistics; rng streams left out, see above). Everything other than the
  ``"params"`` collection / ``nnx.Param`` passes through
  ``jax.lax.stop_gradient``: its gradient (and Hessian block) is exactly zero
  and any gradient method leaves it fixed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stability.networks import cross_entropy as _ce

try:  # flax is optional for plain callables
    from flax import linen as nn
    from flax import nnx
except ImportError:  # pragma: no cover
    nn = None
    nnx = None

__all__ = [
    "EVAL_FLAGS",
    "BatchEntry",
    "INPUT_KEYS",
    "LABEL_KEYS",
    "TRAIN_FLAGS",
    "batch_entry",
    "cross_entropy",
    "inputs_and_labels",
    "loss_from_model",
    "mean_squared_error",
]

TRAIN_FLAGS = ("train", "training", "is_training")
EVAL_FLAGS = ("deterministic", "use_running_average")
INPUT_KEYS = ("image", "images", "x", "inputs", "input", "features")
LABEL_KEYS = ("label", "labels", "y", "targets", "target")


class InputError(ValueError):
    """A bad value in the user's data or arguments (one sentence, named)."""


class InputTypeError(TypeError):
    """A bad type in the user's data or arguments (one sentence, named)."""


def _describe(x) -> str:
    dtype = getattr(x, "dtype", None)
    return f"{dtype} array of shape {tuple(jnp.shape(x))}" if dtype is not None else repr(x)


def cross_entropy(outputs, labels):
    """Mean softmax cross-entropy of logits ``outputs`` (B, C) on integer ``labels`` (B,).

    Its derivatives are free of cancellation when the softmax saturates
    (`stability.networks.cross_entropy`), so float32 Hessian-vector products keep
    the curvature of confidently classified examples. Raises ``TypeError`` for
    float labels and ``ValueError`` for one-hot or
    otherwise mis-shaped labels, naming what was expected.
    """
    labels = jnp.asarray(labels)
    out_shape = tuple(jnp.shape(outputs))
    if labels.shape == out_shape and len(out_shape) >= 2:
        raise InputError(
            f"data: labels look one-hot ({_describe(labels)} for outputs of shape {out_shape}); "
            f"the default cross-entropy loss wants integer class indices of shape "
            f"{out_shape[:-1]}: pass labels.argmax(-1), or loss=stability.mean_squared_error"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise InputTypeError(
            f"data: labels must be integer class indices for the default cross-entropy loss; "
            f"got {_describe(labels)}: cast them with labels.astype(int), or pass "
            f"loss=stability.mean_squared_error (or your own loss) for real-valued targets"
        )
    if labels.shape != out_shape[:-1]:
        raise InputError(
            f"data: labels must have shape {out_shape[:-1]} (one class index per example) to "
            f"match the model's outputs of shape {out_shape}; got {_describe(labels)}"
        )
    # Saturation-safe (stability.networks.cross_entropy): optax's float32 products lose
    # the curvature of examples whose softmax maximum rounds to 1.
    return jnp.mean(_ce.softmax_cross_entropy_with_integer_labels(outputs, labels))


def mean_squared_error(outputs, targets):
    """Mean over all entries of ``(outputs - targets)^2``.

    Integer ``targets`` with one dimension fewer than ``outputs`` are class
    labels and are one-hot encoded over the last axis of ``outputs`` first,
    so ``(inputs, labels)`` batches work with either loss. For outputs of
    shape (B, C) this is ``(1 / (B C)) sum_i ||f(x_i) - y_i||^2``.
    """
    outputs = jnp.asarray(outputs)
    targets = jnp.asarray(targets)
    if jnp.issubdtype(targets.dtype, jnp.integer) and targets.ndim == outputs.ndim - 1:
        targets = jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
    if targets.shape != outputs.shape:
        raise InputError(
            f"mean_squared_error: targets shape {targets.shape} does not match "
            f"outputs shape {outputs.shape}"
        )
    return jnp.mean(jnp.square(outputs - targets.astype(outputs.dtype)))


# ------------------------------------------------------------------ batches


def _check_batch_keys(batch_keys):
    if batch_keys is None:
        return None
    if (
        not isinstance(batch_keys, (tuple, list))
        or len(batch_keys) != 2
        or not all(isinstance(k, str) for k in batch_keys)
    ):
        raise InputTypeError(
            f"batch_keys must be a pair of dict keys (input_key, label_key), e.g. "
            f"('image', 'label'); got {batch_keys!r}"
        )
    return tuple(batch_keys)


def _pick(keys, names, what, preferred=None):
    if preferred is not None and preferred in keys:
        return preferred
    found = [k for k in names if k in keys]
    if len(found) == 1:
        return found[0]
    how = "none of" if not found else f"several ({found}) of"
    also = f" nor the model's input name {preferred!r}" if preferred is not None else ""
    raise InputError(
        f"data: a dict batch must name its {what} with one key; its keys {sorted(keys)} hold "
        f"{how} {list(names)}{also}: pass batch_keys=(input_key, label_key)"
    )


def _parse_batch(batch, batch_keys, input_name=None):
    """``(inputs, labels, (input_key, label_key) or None)`` of one batch."""
    keys = None
    if isinstance(batch, Mapping):
        names = list(batch.keys())
        if batch_keys is not None:
            missing = [k for k in batch_keys if k not in batch]
            if missing:
                raise InputError(
                    f"batch_keys {batch_keys!r}: the batch has no key {missing[0]!r}; its keys "
                    f"are {sorted(names)}"
                )
            keys = batch_keys
        else:
            label_key = _pick(names, LABEL_KEYS, "labels")
            keys = (_pick(names, INPUT_KEYS, "inputs", input_name), label_key)
        inputs, labels = batch[keys[0]], batch[keys[1]]
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, labels = batch
    elif hasattr(batch, "shape") and hasattr(batch, "dtype"):
        raise InputTypeError(
            f"data: a batch for a model must hold inputs and labels, as (inputs, labels) or "
            f"{{'image': inputs, 'label': labels}}; got a single {_describe(batch)} (no labels)"
        )
    else:
        got = type(batch).__name__
        if isinstance(batch, (tuple, list)):
            got += f" of length {len(batch)}"
        raise InputTypeError(
            f"data: a batch for a model must be a pair (inputs, labels) or a dict such as "
            f"{{'image': inputs, 'label': labels}}; got a {got}"
        )
    sizes = _leading(inputs)
    n_labels = _leading(labels)
    if sizes and n_labels and sizes != n_labels:
        raise InputError(
            f"data: inputs and labels must hold the same number of examples (leading axis); "
            f"got {sorted(sizes)} inputs and {sorted(n_labels)} labels"
        )
    return inputs, labels, keys


def _leading(tree) -> set:
    return {jnp.shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(tree) if jnp.ndim(leaf)}


def inputs_and_labels(batch, batch_keys=None):
    """``(inputs, labels)`` of one batch: a pair, or a dict (see the module docstring).

    Raises ``TypeError`` / ``ValueError`` naming ``data`` for anything else
    (e.g. inputs without labels) and checks that inputs and labels hold the
    same number of examples.
    """
    inputs, labels, _ = _parse_batch(batch, _check_batch_keys(batch_keys))
    return inputs, labels


def _first_batch(data):
    """One in-memory batch of ``data`` to check against, or None (iterators untouched)."""
    if isinstance(data, (tuple, Mapping)):
        return data
    if isinstance(data, list) and data and isinstance(data[0], (tuple, list, Mapping)):
        return data[0]
    if isinstance(data, list) and not data:
        raise ValueError("data must not be empty; got an empty list of batches")
    if isinstance(data, list):
        return tuple(data) if len(data) == 2 else data
    if hasattr(data, "shape") and hasattr(data, "dtype"):
        return data  # a lone array: inputs_and_labels says what is missing
    return None


# ------------------------------------------------------------ call keywords


class _TrainRngs:
    """Placeholder for the ``nnx.Rngs(0)`` made inside each evaluation."""

    def __repr__(self) -> str:
        return "nnx.Rngs(0)"


_TRAIN_RNGS = _TrainRngs()


@dataclasses.dataclass(frozen=True)
class BatchEntry:
    """A ``call_kwargs`` value: the ``__call__`` argument is the dict batch's entry
    ``key``, one value per example (made by `batch_entry`)."""

    key: str

    def __repr__(self) -> str:
        return f"batch_entry({self.key!r})"


def batch_entry(key: str) -> BatchEntry:
    """``call_kwargs={"lengths": batch_entry("length")}``: pass the dict batch's entry
    ``"length"`` as the ``__call__`` argument ``lengths``, per example.

    The entry is sliced and placed with the batch like the inputs, so every batch
    (and every part of one) gives the model its own values. An entry named as the
    parameter needs no declaration when the first batch is in memory (``data`` a
    batch or a list); `batch_entry` declares it for other names and for data that
    is an iterator.
    """
    if not isinstance(key, str):
        raise InputTypeError(f"batch_entry takes the dict batch's key, a str; got {key!r}")
    return BatchEntry(key)


@dataclasses.dataclass(frozen=True)
class _CallPlan:
    """How a batch becomes the arguments of the module's ``__call__``."""

    input_name: str | None = None  # __call__'s input parameter (None: passed by position)
    input_keyword: bool = False  # the input parameter is keyword-only: inputs=...
    by_name: tuple[str, ...] = ()  # parameters that a dict entry of the same name fills
    entries: tuple[tuple[str, str], ...] = ()  # (parameter, batch key) from batch_entry
    required: tuple[str, ...] = ()  # parameters that only the batch can give
    batch_keys: tuple[str, str] | None = None

    def split(self, batch):
        """``(inputs, labels, extras)``: ``extras`` the per-example keyword arguments."""
        inputs, labels, keys = _parse_batch(batch, self.batch_keys, self.input_name)
        extras = {}
        if keys is not None:
            for name in self.by_name:
                if name in batch and name not in keys:
                    extras[name] = batch[name]
            for name, key in self.entries:
                if key not in batch:
                    raise InputError(
                        f"data: call_kwargs[{name!r}] is batch_entry({key!r}), but the batch has "
                        f"no entry {key!r}; its keys are {sorted(batch.keys())}"
                    )
                extras[name] = batch[key]
        elif self.entries:
            name, key = self.entries[0]
            raise InputTypeError(
                f"data: call_kwargs[{name!r}] is batch_entry({key!r}), which needs dict batches "
                f"such as {{'image': ..., {key!r}: ..., 'label': ...}}; got a "
                f"{type(batch).__name__}"
            )
        missing = [name for name in self.required if name not in extras]
        if missing:
            raise InputTypeError(
                f"data: the model's __call__ requires {', '.join(missing)}: the batch has no "
                f"entry {missing[0]!r} (give one value per example under that key, or "
                f"call_kwargs={{{missing[0]!r}: batch_entry(key)}} for another key)"
            )
        n_inputs = _leading(inputs)
        for name, value in extras.items():
            if n_inputs and _leading(value) and _leading(value) != n_inputs:
                raise InputError(
                    f"data: the batch entry for {name!r} must hold one value per example "
                    f"(leading axis {sorted(n_inputs)}, as the inputs); got "
                    f"{_describe(value) if hasattr(value, 'shape') else type(value).__name__}"
                )
        return inputs, labels, extras

    def arguments(self, inputs, extras, kwargs):
        """``(args, keywords)`` of the module call on ``inputs``."""
        keywords = {**kwargs, **extras}
        if self.input_keyword:
            return (), {self.input_name: inputs, **keywords}
        return (inputs,), keywords


def _check_call_kwargs(call_kwargs) -> dict:
    if call_kwargs is None:
        return {}
    if not isinstance(call_kwargs, Mapping) or not all(isinstance(k, str) for k in call_kwargs):
        raise InputTypeError(
            f"call_kwargs must be a dict of keyword arguments for the model's __call__; "
            f"got {call_kwargs!r}"
        )
    return dict(call_kwargs)


def _plan_call(fn, train, call_kwargs, nnx_rngs, probe, batch_keys):
    """``(keywords, plan)``: the constant keywords the module is called with (rules 1-3
    of the module docstring) and how each batch gives the rest (rule 4); rule 5."""
    entries = tuple(sorted((k, v.key) for k, v in call_kwargs.items() if isinstance(v, BatchEntry)))
    given = {k: v for k, v in call_kwargs.items() if not isinstance(v, BatchEntry)}
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return given, _CallPlan(entries=entries, batch_keys=batch_keys)
    params = list(sig.parameters.values())[1:]  # drop self
    input_name, input_keyword = None, False
    if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        input_name, params = params[0].name, params[1:]
    elif not any(p.kind is p.VAR_POSITIONAL for p in params):
        # no positional input (nlp_seq: __call__(self, *, inputs, train)): the first
        # keyword-only parameter that is not a mode flag, rngs or given in call_kwargs
        taken = {*TRAIN_FLAGS, *EVAL_FLAGS, *call_kwargs, *(("rngs",) if nnx_rngs else ())}
        first = next((p for p in params if p.kind is p.KEYWORD_ONLY and p.name not in taken), None)
        if first is not None:
            input_name, input_keyword = first.name, True
            params = [p for p in params if p is not first]
    kwargs, by_name, required = {}, [], []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in call_kwargs:
            continue
        if p.name in TRAIN_FLAGS:
            kwargs[p.name] = train
        elif p.name in EVAL_FLAGS:
            kwargs[p.name] = not train
        elif p.name == "rngs" and nnx_rngs:
            if train:
                kwargs["rngs"] = _TRAIN_RNGS
            elif p.default is p.empty:
                kwargs["rngs"] = None
        elif p.kind is not p.POSITIONAL_ONLY:
            by_name.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
        elif p.default is p.empty:
            required.append(p.name)  # positional-only: nothing can pass it
    in_memory = set(probe.keys()) if isinstance(probe, Mapping) else set()
    missing = [n for n in required if n not in in_memory or n not in by_name]
    if missing:
        one = missing[0]
        raise InputTypeError(
            f"model: its __call__ requires {', '.join(missing)}, which stability cannot supply: "
            f"give one value per example as a dict batch entry {one!r} beside the inputs and "
            f"labels (call_kwargs={{{one!r}: batch_entry(key)}} for another key or for batches "
            f"not in memory), or a constant as call_kwargs={{"
            + ", ".join(f"{name!r}: ..." for name in missing)
            + "}"
        )
    plan = _CallPlan(
        input_name=input_name,
        input_keyword=input_keyword,
        by_name=tuple(by_name),
        entries=entries,
        required=tuple(required),
        batch_keys=batch_keys,
    )
    return kwargs | given, plan


# ------------------------------------------------------ cache keys (issue 20)


class _Handle:
    """A cache key for an unhashable value (a linen module with a list attribute, as
    ``partial(ResNet, stage_sizes=[2, 2, 2, 2])`` makes): equal by value when its
    lists, dicts and sets hold hashable values, otherwise by identity (the cached
    function keeps the value alive, so its id is not reused while cached)."""

    __slots__ = ("_key", "value")

    def __init__(self, value):
        self.value = value
        try:
            self._key = ("value", type(value), _frozen(value))
            hash(self._key)
        except TypeError:
            self._key = ("id", id(value))

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Handle) and self._key == other._key


def _frozen(value, depth=0):
    """A hashable stand-in for ``value`` built from its contents; TypeError if none."""
    if depth > 32:
        raise TypeError("too deep")
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_frozen(v, depth + 1) for v in value))
    if isinstance(value, Mapping):
        return ("map", frozenset((k, _frozen(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(_frozen(v, depth + 1) for v in value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # a linen module (its parent left out) or a config dataclass it holds
        fields = [f.name for f in dataclasses.fields(value) if f.name != "parent"]
        return (type(value), tuple((f, _frozen(getattr(value, f), depth + 1)) for f in fields))
    hash(value)
    return value


def _handle(value):
    """``value`` if hashable, otherwise a `_Handle` on it."""
    try:
        hash(value)
    except TypeError:
        return _Handle(value)
    return value


def _unhandle(value):
    return value.value if isinstance(value, _Handle) else value


def _quiet_model():
    """JAX's default dtype promotion while a user's module runs, and no warning
    for the discarded float32 running-statistics update in train mode.

    Flax layers (e.g. BatchNorm's float32 running statistics) mix float32 and
    float64 under ``jax_enable_x64``, which ``jax_numpy_dtype_promotion =
    "strict"`` rejects; the module's own dtype handling is its business.
    """
    stack = contextlib.ExitStack()
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", message="scatter inputs have incompatible types")
    return stack


# ----------------------------------------------------------- input hints


_HINT_CANDIDATES = 8  # distinct first-layer kernels tried when a call fails


def _kernel_shapes_nnx(module, found=None, depth=0):
    """Kernel shapes of an nnx module in attribute (usually call) order."""
    found = [] if found is None else found
    if depth > 8 or len(found) >= _HINT_CANDIDATES:
        return found
    items = list(vars(module).values()) if hasattr(module, "__dict__") else []
    if isinstance(module, (list, tuple)):
        items = list(module)
    for value in items:
        kernel = getattr(value, "kernel", None) if isinstance(value, nnx.Module) else None
        if kernel is not None and hasattr(kernel, "shape"):
            shape = tuple(kernel.shape)
            if shape not in found:
                found.append(shape)
        elif isinstance(value, (nnx.Module, list, tuple)):
            _kernel_shapes_nnx(value, found, depth + 1)
    return found


def _kernel_shapes_dict(tree, found=None):
    """Kernel shapes of a linen params dict in its key order (call order as ``init``
    returns it, sorted after a ``jax.tree.map``)."""
    found = [] if found is None else found
    if not isinstance(tree, Mapping) or len(found) >= _HINT_CANDIDATES:
        return found
    for key, value in tree.items():
        if key == "kernel" and hasattr(value, "shape"):
            if tuple(value.shape) not in found:
                found.append(tuple(value.shape))
        else:
            _kernel_shapes_dict(value, found)
    return found


def _input_hint(kernel, inputs):
    """``(hint, shape)``: what inputs a first layer of this kernel shape expects when
    these do not fit, and an input shape to check the claim on; ``(None, None)``."""
    if kernel is None or not hasattr(inputs, "shape"):
        return None, None
    shape = tuple(inputs.shape)
    if len(kernel) >= 3:  # convolution: (*window, in_channels, out_channels)
        spatial, cin = len(kernel) - 2, kernel[-2]
        if len(shape) == spatial + 2 and shape[-1] == cin:
            return None, None
        dims = ", ".join(["height", "width", "depth"][:spatial]) if spatial <= 3 else "..."
        hint = (
            f"its first layer is a {spatial}-D convolution over {cin} channel(s), so it likely "
            f"expects inputs of shape (batch, {dims}, {cin})"
        )
        suggested = None
        if len(shape) == spatial + 2:
            suggested = shape[:-1] + (cin,)
        elif len(shape) == spatial + 1:
            suggested = shape + (cin,)
        elif len(shape) == 2 and spatial == 2 and shape[1] % cin == 0:
            side = math.isqrt(shape[1] // cin)
            if side * side * cin == shape[1]:
                hint += f": reshape them with inputs.reshape(-1, {side}, {side}, {cin})"
                suggested = (shape[0], side, side, cin)
        return hint, suggested
    if len(kernel) == 2:  # dense: (in_features, out_features)
        fin = kernel[0]
        if shape[-1:] == (fin,):
            return None, None
        hint = (
            f"its first layer is dense with {fin} input features, so it likely expects inputs "
            f"of shape (batch, {fin})"
        )
        if len(shape) > 2 and math.prod(shape[1:]) == fin:
            hint += ": flatten them with inputs.reshape(len(inputs), -1)"
        return hint, (shape[0], fin)
    return None, None


# Raised by a collective (lax.pmean, psum) over an axis name that nothing binds:
# "unbound axis name: batch" (JAX 0.4) / "Found an unbound axis name: batch. ..." (0.10).
_UNBOUND_AXIS = re.compile(r"unbound axis name:? *'?([A-Za-z_][\w]*)")


def _on_axes(call, axes):
    """``call`` with each named axis of ``axes`` bound, with one member."""
    for name in axes:
        call = _one_member(call, name)
    return call


def _one_member(call, name):
    mapped = jax.vmap(call, in_axes=None, axis_size=1, axis_name=name)
    return lambda x: jax.tree_util.tree_map(lambda y: y[0], mapped(x))


def _call_model(call, inputs, kernels, axes: list, constants: dict):
    """``call(inputs)``: the module's outputs.

    A collective over a named axis that nothing binds (the imagenet example's
    ``BatchNorm(axis_name="batch")`` in train mode, written for ``jax.pmap``) runs
    with that axis bound to one member (``jax.vmap`` of size 1): the statistics are
    those of the batch, as ``pmap`` on one device computes them. The names found are
    kept in ``axes``, shared by the evaluations of one loss function.

    Any other failure is put in words only when the cause is shown: the inputs'
    shape when the same call runs on inputs of the shape a first layer expects
    (``kernels()``: candidate kernel shapes), a ``call_kwargs`` array that is not
    one value per example of this batch; otherwise the module's own error.
    """
    while True:
        try:
            return _on_axes(call, axes)(inputs)
        except (InputError, InputTypeError):
            raise
        except NameError as err:
            match = _UNBOUND_AXIS.search(str(err))
            if match is None or match.group(1) in axes or len(axes) >= 8:
                raise
            axes.append(match.group(1))
        except Exception as err:
            found = _diagnosis(err, call, inputs, kernels, tuple(axes), constants)
            if found is None:
                raise
            raise found from err


def _runs(call, shape, dtype) -> bool:
    try:
        jax.eval_shape(call, jax.ShapeDtypeStruct(shape, dtype))
    except Exception:  # noqa: BLE001 - any failure: the claim is not shown
        return False
    return True


def _diagnosis(err, call, inputs, kernels, axes, constants):
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    raised = f"(it raised {type(err).__name__}: {first})"
    bound = _on_axes(call, axes)
    for kernel in kernels():
        hint, shape = _input_hint(kernel, inputs)
        if hint is not None and shape is not None and _runs(bound, shape, inputs.dtype):
            return InputError(
                f"data: the model cannot take inputs of shape {tuple(inputs.shape)}; {hint} "
                f"{raised}"
            )
    n = _leading(inputs)
    for name, value in constants.items():
        if hasattr(value, "shape") and jnp.ndim(value) and {jnp.shape(value)[0]} != n:
            return InputError(
                f"data: the model failed on a batch of {sorted(n)} examples with "
                f"call_kwargs[{name!r}] of shape {tuple(jnp.shape(value))}, a constant that "
                f"is not sliced with the batch; give a per-example input as a dict batch "
                f"entry beside the inputs and labels, or call_kwargs={{{name!r}: "
                f"batch_entry(key)}} {raised}"
            )
    return None


# ------------------------------------------------------------------ adapter


def loss_from_model(
    model,
    params=None,
    *,
    loss: Callable | None = None,
    train: bool = False,
    data=None,
    call_kwargs: Mapping[str, Any] | None = None,
    batch_keys: tuple[str, str] | None = None,
) -> tuple[Callable, Any]:
    """``(loss_fn, params)`` with ``loss_fn(params, batch)`` the batch-mean loss.

    Args:
      model: a Flax linen ``Module``, a Flax nnx ``Module``, or a plain
        callable, which is taken to be the loss already and returned as is.
      params: linen: the variables dict (``{"params": ..., "batch_stats":
        ...}``, as returned by ``model.init``; a dict without a ``"params"``
        collection is refused); nnx: None (taken from the module), an
        ``nnx.State`` (``nnx.state(model)`` or only its ``nnx.Param`` part) or
        the same as a plain nested dict (``nnx.to_pure_dict``): its values
        replace the module's, variables it lacks other than ``nnx.Param``
        (batch statistics) are the module's, rng streams are ignored; plain
        callable: anything.
      loss: ``loss(outputs, labels) -> scalar``, the batch mean (default:
        `cross_entropy`, softmax cross-entropy on integer labels; e.g.
        `mean_squared_error`).
      train: evaluate in training mode (see the module docstring); default
        eval mode.
      data: optional: a batch, or a list of batches (the first is used):
        the loss is evaluated once, abstractly, on its first two examples, so
        that params that do not fit the model, bad labels, inputs of the wrong
        shape or a non-scalar loss fail here with one sentence naming the
        argument. Iterators and callables are not consumed.
      call_kwargs: extra keyword arguments for the module's ``__call__``
        (rule 3 of the module docstring), e.g. ``{"deterministic": True}``;
        a value ``batch_entry(key)`` takes the argument from each dict batch,
        per example (rule 4).
      batch_keys: ``(input_key, label_key)`` of dict batches, e.g.
        ``("image", "label")`` (default: found by name, see `INPUT_KEYS`).

    Returns:
      ``(loss_fn, params)``, ``params`` being what ``loss_fn`` takes (only its
      ``"params"`` collection / ``nnx.Param`` part has a nonzero gradient).
    """
    if not isinstance(train, bool):
        raise InputTypeError(f"train must be a bool; got {train!r}")
    if loss is not None and not callable(loss):
        raise InputTypeError(f"loss must be a callable loss(outputs, labels); got {loss!r}")
    call_kwargs = _check_call_kwargs(call_kwargs)
    batch_keys = _check_batch_keys(batch_keys)
    out_loss = cross_entropy if loss is None else _ce.saturation_safe(loss)
    probe = _first_batch(data) if data is not None else None
    if nn is not None and isinstance(model, nn.Module):
        loss_fn, params, plan = _linen_loss(
            model, params, out_loss, train, probe, call_kwargs, batch_keys
        )
    elif nnx is not None and isinstance(model, nnx.Module):
        loss_fn, params, plan = _nnx_loss(
            model, params, out_loss, train, probe, call_kwargs, batch_keys
        )
    elif callable(model):
        if loss is not None:
            raise InputError(
                "loss= applies to Flax modules; a plain callable model is used as the loss "
                "itself, loss(params, batch)"
            )
        if call_kwargs or batch_keys is not None:
            raise InputError(
                "call_kwargs= and batch_keys= apply to Flax modules; a plain callable model is "
                "the loss itself, loss(params, batch)"
            )
        return model, params
    else:
        raise InputTypeError(
            f"model must be a Flax linen/nnx Module or a callable loss; got {type(model).__name__}"
        )
    if train:
        # Batch statistics couple the examples: hessian_spectrum must not split a batch.
        loss_fn.couples_examples = True
    if probe is not None:
        _check_on_data(loss_fn, params, probe, plan)
    return loss_fn, params


def _scalar(value, where: str):
    if jnp.shape(value) != ():
        raise InputError(
            f"loss must return a scalar (the batch mean); {where} returned shape {jnp.shape(value)}"
        )
    return value


# -------------------------------------------------------------------- linen


def _linen_loss(model, variables, out_loss, train, probe, call_kwargs, batch_keys):
    if variables is None:
        raise InputError("params is required for a linen Module: pass model.init(...) variables")
    if not (hasattr(variables, "keys") and "params" in variables):
        raise InputError(
            "params for a linen Module must be its variables dict with a 'params' collection "
            f"(as returned by model.init); got {type(variables).__name__}"
            + (f" with keys {sorted(variables.keys())}" if hasattr(variables, "keys") else "")
        )
    kwargs, plan = _plan_call(
        type(model).__call__, train, call_kwargs, nnx_rngs=False, probe=probe,
        batch_keys=batch_keys,
    )  # fmt: skip
    others = tuple(sorted(c for c in variables.keys() if c != "params"))
    if probe is not None:
        _check_linen_structure(model, variables, probe, kwargs, plan, train)
    items = tuple(sorted((k, _handle(v)) for k, v in kwargs.items()))
    # The same function object for the same (equal) module, loss and keywords:
    # jitted consumers (hessian_spectrum's hvp_sum, simulate_async) key their
    # compiled code on it, so a second is_accessible call compiles nothing. An
    # unhashable module (a list attribute, as the imagenet example's
    # ``partial(ResNet, stage_sizes=[...])``) is keyed by value (`_Handle`).
    fn = _cached_linen_loss(_handle(model), _handle(out_loss), train, others, items, plan)
    return fn, variables, plan


@functools.lru_cache(maxsize=64)
def _cached_linen_loss(model, out_loss, train, others, items, plan):
    model, out_loss = _unhandle(model), _unhandle(out_loss)
    kwargs = {k: _unhandle(v) for k, v in items}
    axes = []  # named axes found unbound, kept for later traces (see _call_model)

    def loss_fn(variables, batch):
        inputs, labels, extras = plan.split(batch)
        fixed = {c: jax.lax.stop_gradient(variables[c]) for c in variables if c != "params"}
        full = {"params": variables["params"], **fixed}

        def call(x):
            args, keywords = plan.arguments(x, extras, kwargs)
            return _apply_linen(model, full, args, keywords, train, others)

        with _quiet_model():
            outputs = _call_model(
                call, inputs, lambda: _kernel_shapes_dict(variables["params"]), axes, kwargs
            )
        return _scalar(out_loss(outputs, labels), "loss(outputs, labels)")

    return loss_fn


def _apply_linen(model, full, args, keywords, train, others):
    if not train:
        return model.apply(full, *args, **keywords)
    outputs, _ = model.apply(
        full, *args, mutable=list(others), rngs={"dropout": jax.random.key(0)}, **keywords
    )
    return outputs


_LINEN_COMPARED = ("params", "batch_stats")


def _check_linen_structure(model, variables, probe, kwargs, plan, train) -> None:
    inputs, _, extras = plan.split(probe)
    first = jax.tree_util.tree_map(lambda x: x[:1], (inputs, extras))
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(0)}

    def init(x, extra):
        args, keywords = plan.arguments(x, extra, kwargs)
        return model.init(rngs, *args, **keywords)

    try:
        with _quiet_model():
            expected = jax.eval_shape(init, *first)
    except Exception:  # noqa: BLE001 - init may need rngs we cannot guess; apply still checks
        return
    names = [c for c in _LINEN_COMPARED if c in expected and (c == "params" or not train)]
    _compare_trees(
        "params",
        {c: variables.get(c, {}) for c in names},
        {c: expected[c] for c in names},
    )


# ---------------------------------------------------------------------- nnx


def _nnx_loss(model, params, out_loss, train, probe, call_kwargs, batch_keys):
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)  # a copy that shares arrays: mode set on it only
    copy.train() if train else copy.eval()
    graphdef, rng_state, own = nnx.split(copy, nnx.RngState, ...)
    params = own if params is None else nnx_params_from(params, own, rng_state)
    kwargs, plan = _plan_call(
        type(model).__call__, train, call_kwargs, nnx_rngs=True, probe=probe,
        batch_keys=batch_keys,
    )  # fmt: skip
    kernels = tuple(_kernel_shapes_nnx(model))
    rng_leaves, rng_def = jax.tree_util.tree_flatten(rng_state)
    rng_spec = tuple(_rng_spec(leaf) for leaf in rng_leaves)
    # nnx objects among the keywords (an nnx.Rngs) are split once and merged
    # afresh at every evaluation: the same keys every time, nothing mutated.
    objects = {k: nnx.split(v) for k, v in kwargs.items() if isinstance(v, (nnx.Module, nnx.Rngs))}
    plain = tuple(sorted((k, _handle(v)) for k, v in kwargs.items() if k not in objects))
    key = (graphdef, rng_def, rng_spec, _handle(out_loss), plain, plan, kernels)
    if not objects:
        return _cached_nnx_loss(*key), params, plan
    return _nnx_loss_fn(*key, objects), params, plan


def _rng_spec(leaf):
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return ("key", tuple(leaf.shape), str(jax.random.key_impl(leaf)))
    return ("zeros", tuple(leaf.shape), str(leaf.dtype))


def _fixed_rng_leaf(spec):
    kind, shape, what = spec
    if kind == "zeros":
        return jnp.zeros(shape, what)
    key = jax.random.key(0, impl=what)
    return key if shape == () else jax.random.split(key, shape)


def _nnx_loss_fn(graphdef, rng_def, rng_spec, out_loss, plain, plan, kernels, objects=None):
    out_loss = _unhandle(out_loss)
    axes = []  # named axes found unbound, kept for later traces (see _call_model)

    def loss_fn(state, batch):
        inputs, labels, extras = plan.split(batch)
        trained, rest = nnx.split_state(state, nnx.Param, ...)
        rest = jax.tree_util.tree_map(jax.lax.stop_gradient, rest)

        def call(x):
            # Fresh Variable objects made here, in the trace that runs the module
            # (tree_map), so that a module update during the call (batch
            # statistics in train mode) stays local.
            fresh = jax.tree_util.tree_map(lambda a: a, (trained, rest))
            rngs = jax.tree_util.tree_unflatten(rng_def, [_fixed_rng_leaf(s) for s in rng_spec])
            module = nnx.merge(graphdef, *fresh, rngs)
            kwargs = {k: _unhandle(v) for k, v in plain}
            for name, value in kwargs.items():
                if value is _TRAIN_RNGS:
                    kwargs[name] = nnx.Rngs(0)
            for name, (gdef, st) in (objects or {}).items():
                kwargs[name] = nnx.merge(gdef, jax.tree_util.tree_map(lambda a: a, st))
            args, keywords = plan.arguments(x, extras, kwargs)
            return module(*args, **keywords)

        constants = {k: _unhandle(v) for k, v in plain}
        with _quiet_model():
            outputs = _call_model(call, inputs, lambda: kernels, axes, constants)
        return _scalar(out_loss(outputs, labels), "loss(outputs, labels)")

    return loss_fn


_cached_nnx_loss = functools.lru_cache(maxsize=64)(_nnx_loss_fn)


def _strip_value(tree):
    """A nested dict without the ``{"value": array}`` level of saved Variables."""
    if isinstance(tree, Mapping):
        if set(tree.keys()) == {"value"} and not isinstance(tree["value"], Mapping):
            return tree["value"]
        return {k: _strip_value(v) for k, v in tree.items()}
    return tree


def pure_dict(tree) -> dict:
    """A plain nested dict of the values of ``tree`` (an nnx.State or a tree of
    nnx Variables or arrays)."""
    if nnx is not None and isinstance(tree, nnx.State):
        return nnx.to_pure_dict(tree)
    return _strip_value(tree)


def flat_by_path(tree) -> dict:
    """``{"a/b/c": leaf}``: the leaves of ``tree`` keyed by their "/"-joined path."""
    return {
        "/".join(_key_name(k) for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def nnx_params_from(given, own, rng_state):
    """The module's non-rng state with the values of ``given`` (see loss_from_model)."""
    if not isinstance(given, Mapping):
        raise InputTypeError(
            f"params for an nnx Module must be None, an nnx.State (nnx.state(model)) or its "
            f"nested dict (nnx.to_pure_dict); got {type(given).__name__}"
        )
    rng_paths = set(flat_by_path(nnx.to_pure_dict(rng_state)))
    given_flat = {k: v for k, v in flat_by_path(pure_dict(given)).items() if k not in rng_paths}
    own_flat = flat_by_path(nnx.to_pure_dict(own))
    trained = set(flat_by_path(nnx.to_pure_dict(nnx.split_state(own, nnx.Param, ...)[0])))
    _compare_flat(
        "params",
        given_flat,
        {k: v for k, v in own_flat.items() if k in trained or k in given_flat},
    )

    def value(path, x):
        key = "/".join(_key_name(e) for e in path)
        key = key[: -len("/value")] if key.endswith("/value") else key
        return jnp.asarray(given_flat[key]) if key in given_flat else x

    return jax.tree_util.tree_map_with_path(value, own)


# ------------------------------------------------------------------- checks


def _path(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _compare_trees(name, given, expected) -> None:
    """Raise naming every leaf whose presence or shape differs."""
    g = {_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(given)}
    e = {_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(expected)}
    _compare_flat(name, g, e)


def shape_problems(given: dict, expected: dict) -> list[str]:
    """How two flat ``{path: array}`` dicts differ, one phrase each (the path is the
    second word): ``missing``, ``unexpected`` and mismatched shapes."""
    g = {k: tuple(jnp.shape(x)) for k, x in given.items()}
    e = {k: tuple(jnp.shape(x)) for k, x in expected.items()}
    problems = [f"missing {k} (expected shape {e[k]})" for k in sorted(set(e) - set(g))]
    problems += [f"unexpected {k} (shape {g[k]})" for k in sorted(set(g) - set(e))]
    problems += [
        f"{k} has shape {g[k]}, the model expects {e[k]}"
        for k in sorted(set(g) & set(e))
        if g[k] != e[k]
    ]
    return problems


def _compare_flat(name, given: dict, expected: dict) -> None:
    problems = shape_problems(given, expected)
    if problems:
        shown = "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
        raise InputError(f"{name} do not match the model (params of another model?): {shown}")


def _check_on_data(loss_fn, params, probe, plan) -> None:
    plan.split(probe)  # the batch's own errors first
    sample = jax.tree_util.tree_map(lambda x: x[:2], probe)
    try:
        jax.eval_shape(loss_fn, params, sample)
    except (InputError, InputTypeError):
        raise
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise InputError(
            f"data: the model could not be applied to params on a slice of data: "
            f"{type(err).__name__}: {first}"
        ) from err
    _, labels, _ = plan.split(probe)
    if hasattr(labels, "dtype") and jnp.issubdtype(labels.dtype, jnp.integer):
        low = int(np.min(np.asarray(labels))) if np.size(labels) else 0
        if low < 0:
            raise InputError(f"data: labels must be class indices >= 0; got minimum {low}")
