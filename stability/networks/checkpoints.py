"""Loading and saving checkpoints for the command line and `is_accessible`.

Two formats:
- ``.npz``: one array per leaf, keys are the leaf paths joined by ``/``
  (``params/Dense_0/kernel``, ``batch_norm1/mean/value``); `save_npz` writes
  this layout (typed PRNG keys as their raw key data) and `load_params`
  rebuilds the nested dict.
- An Orbax checkpoint directory (``orbax-checkpoint``, optional dependency),
  e.g. written by ``orbax.checkpoint.StandardCheckpointer().save(path,
  nnx.state(model))`` as the Flax guides do: restored as a nested dict of
  numpy arrays (host memory, whatever devices wrote it). A
  ``CheckpointManager`` directory (numbered step folders) is read at its
  latest step.

`restore_params` puts a loaded checkpoint into the form `loss_from_model`
takes for a model: linen, the variables dict (``{"params": ...,
"batch_stats": ...}``; a bare params dict is wrapped); nnx, the module's
``nnx.State`` with the checkpoint's values, which must include the batch
statistics of an eval-mode model (rng streams are not needed).
"""

from __future__ import annotations

import os
import re
import warnings

import jax
import numpy as np

__all__ = ["load_params", "restore_params", "save_npz"]

_KEY_SUFFIX = re.compile(r"^(.*)@key\[(.+)\]$")


def _path_key(path) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _host(leaf):
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(leaf)), str(jax.random.key_impl(leaf))
    return np.asarray(leaf), None


def save_npz(path, params) -> None:
    """Write a pytree of arrays to ``path`` (.npz), keyed by leaf path.

    ``params`` may be a linen variables dict, an ``nnx.State``
    (``nnx.state(model)``, batch statistics included) or any pytree; typed
    PRNG keys are stored as their key data (``path@key[impl]``).
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    arrays = {}
    for p, leaf in flat:
        value, impl = _host(leaf)
        arrays[_path_key(p) + (f"@key[{impl}]" if impl else "")] = value
    if len(arrays) != len(flat):
        raise ValueError("params have leaves whose paths collide when joined by '/'")
    np.savez(path, **arrays)


def _unflatten(arrays: dict) -> dict:
    tree: dict = {}
    for key, value in arrays.items():
        match = _KEY_SUFFIX.match(key)
        if match:
            key, impl = match.groups()
            value = jax.random.wrap_key_data(value, impl=impl)
        node = tree
        parts = key.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def _is_checkpoint(path: str) -> bool:
    names = set(os.listdir(path))
    return "_METADATA" in names or "manifest.ocdbt" in names or "checkpoint" in names


def _orbax_dir(path: str) -> str:
    """The checkpoint folder itself, or a CheckpointManager's latest step (its one item)."""
    if _is_checkpoint(path):
        return path
    steps = [e for e in os.listdir(path) if e.isdigit() and os.path.isdir(os.path.join(path, e))]
    if not steps:
        return path
    step = os.path.join(path, max(steps, key=int))
    if _is_checkpoint(step):
        return step
    items = [
        os.path.join(step, e)
        for e in sorted(os.listdir(step))
        if os.path.isdir(os.path.join(step, e)) and _is_checkpoint(os.path.join(step, e))
    ]
    return items[0] if len(items) == 1 else step


def _restore_orbax(path: str):
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:  # pragma: no cover - optional dependency
        raise ValueError(
            f"{path!r} is a directory (an Orbax checkpoint?) but orbax-checkpoint is not "
            "installed: pip install 'stability[checkpoint]'"
        ) from err
    path = os.path.abspath(_orbax_dir(path))
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        meta = checkpointer.metadata(path)
        tree = getattr(getattr(meta, "item_metadata", meta), "tree", None)
        if tree is None:
            tree = getattr(meta, "item_metadata", meta)
        args = jax.tree_util.tree_map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
            dict(tree),
            is_leaf=lambda x: not isinstance(x, dict),
        )
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    except Exception as err:  # noqa: BLE001 - any Orbax failure: one line naming the path
        try:  # older layouts: restore without per-leaf arguments
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                restored = checkpointer.restore(path)
        except Exception:  # noqa: BLE001
            raise ValueError(f"cannot read {path!r} as an Orbax checkpoint: {err}") from err
    return jax.tree_util.tree_map(np.asarray, restored)


def load_params(path) -> dict:
    """Load a checkpoint (``.npz`` file or Orbax directory) as a nested dict.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file is neither format.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint path does not exist: {path!r}")
    if os.path.isdir(path):
        return _restore_orbax(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path!r} as an .npz checkpoint: {err}") from err
    if not arrays:
        raise ValueError(f"checkpoint {path!r} holds no arrays")
    return _unflatten(arrays)


def restore_params(checkpoint, model, *, train: bool = False, name: str = "--params"):
    """A checkpoint as the ``params`` that `loss_from_model` takes for ``model``.

    Args:
      checkpoint: a path (``.npz`` or Orbax directory) or an already loaded
        nested dict.
      model: a Flax linen or nnx ``Module``, or a plain loss callable (the
        nested dict is returned as is).
      train: the mode the model will run in: in eval mode an nnx checkpoint
        must hold the batch statistics (running averages).
      name: how to name the checkpoint in error messages.

    Returns:
      linen: ``{"params": ..., **other collections}``; nnx: an ``nnx.State``
      of the module's variables with the checkpoint's values (the module
      itself is not modified); anything else: the nested dict.

    Raises:
      ValueError: the checkpoint does not fit the model (every differing leaf
        named), or lacks an eval-mode nnx model's batch statistics.
    """
    tree = load_params(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    try:
        from flax import linen, nnx
    except ImportError:  # pragma: no cover
        return tree
    if isinstance(model, linen.Module):
        if not (hasattr(tree, "keys") and "params" in tree):
            return {"params": tree}
        return dict(tree)
    if isinstance(model, nnx.Module):
        return _nnx_state(tree, model, train, name)
    return tree


def _nnx_state(tree, model, train, name):
    from flax import nnx

    from stability.networks.models import _flat, _pure, shape_problems

    _, rng_state, own = nnx.split(model, nnx.RngState, ...)
    rng_paths = set(_flat(nnx.to_pure_dict(rng_state)))
    given = {k: v for k, v in _flat(_pure(tree)).items() if k not in rng_paths}
    own_flat = _flat(nnx.to_pure_dict(own))
    problems = shape_problems(given, own_flat)
    trained = set(_flat(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    if train:  # running statistics are unused in train mode
        problems = [p for p in problems if not p.startswith("missing") or p.split()[1] in trained]
    if problems:
        shown = "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
        hint = (
            ": save nnx.state(model) (all variables, batch statistics included), not only nnx.Param"
            if any(p.startswith("missing") and p.split()[1] not in trained for p in problems)
            else ""
        )
        raise ValueError(f"{name}: the checkpoint does not match the nnx model: {shown}{hint}")
    from stability.networks.models import _nnx_params

    return _nnx_params(tree, own, rng_state)
