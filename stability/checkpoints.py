"""Loading and saving parameter pytrees for the command line.

Two formats:
- ``.npz``: one array per leaf, keys are the leaf paths joined by ``/``
  (``params/Dense_0/kernel``); `save_npz` writes this layout and `load_params`
  rebuilds the nested dict.
- An Orbax checkpoint directory (``orbax-checkpoint``, optional dependency):
  restored with ``orbax.checkpoint.PyTreeCheckpointer`` as a nested dict of
  arrays.
"""

from __future__ import annotations

import os

import jax
import numpy as np

__all__ = ["load_params", "save_npz"]


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


def save_npz(path, params) -> None:
    """Write a pytree of arrays to ``path`` (.npz), keyed by leaf path."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    arrays = {_path_key(p): np.asarray(leaf) for p, leaf in flat}
    if len(arrays) != len(flat):
        raise ValueError("params have leaves whose paths collide when joined by '/'")
    np.savez(path, **arrays)


def _unflatten(arrays: dict) -> dict:
    tree: dict = {}
    for key, value in arrays.items():
        node = tree
        parts = key.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


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
        try:
            import orbax.checkpoint as ocp
        except ImportError as err:  # pragma: no cover - optional dependency
            raise ValueError(
                f"{path!r} is a directory (an Orbax checkpoint?) but orbax-checkpoint is not "
                "installed: pip install 'stability[checkpoint]'"
            ) from err
        restored = ocp.PyTreeCheckpointer().restore(os.path.abspath(path))
        return jax.tree_util.tree_map(np.asarray, restored)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path!r} as an .npz checkpoint: {err}") from err
    if not arrays:
        raise ValueError(f"checkpoint {path!r} holds no arrays")
    return _unflatten(arrays)
