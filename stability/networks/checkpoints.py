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

A damaged file fails with one ``ValueError`` naming the path and what is
wrong (empty, truncated, not a zip archive, a single ``.npy`` array, pickled
objects, a member whose data do not fill its shape; an Orbax folder without its
metadata or with unreadable data, the cause in one line without Orbax's log
noise). An ``.npz`` is checked before any array is decompressed: each member's
``.npy`` header (shape and dtype) is read from the archive, and with the
model's variables known (``expected``; `restore_params` finds them for an nnx
model, and for a linen model given ``data``) a member whose shape differs, or
members claiming more bytes than the model's values could take, are refused
then; without them, members claiming more than the machine's free memory. So a
small archive that would decompress to gigabytes (a zip bomb, or the
checkpoint of a far larger model) is refused without allocating it. A
``CheckpointManager`` folder whose newest step is incomplete (no ``_METADATA``,
an interrupted save or a partial copy) is read at its newest complete step,
with a warning.

`restore_params` puts a loaded checkpoint into the form `loss_from_model`
takes for a model: linen, the variables dict (``{"params": ...,
"batch_stats": ...}``; a bare params dict is wrapped); nnx, the module's
``nnx.State`` with the checkpoint's values, which must include the batch
statistics of an eval-mode model (rng streams are not needed).

A training state, as the Flax examples save a ``TrainState`` (``{"step",
"params", "opt_state"}``, with ``"batch_stats"`` and ``"dynamic_scale"`` where the
model has them), is recognised by its ``"opt_state"`` entry:
`split_training_state` separates the model's variables from the optimizer state,
`restore_params` judges the former and `restore_training_state` returns both (the
optimizer state as restored without a template: optax's NamedTuples as dicts of
their fields, tuples as lists or dicts keyed ``"0"``, ``"1"``, ..., which
`stability.preconditioner_from_optax` reads). An ``.npz`` of a training state may
claim up to 5 times the model's bytes (the moments beside the params).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import math
import os
import re
import sys
import time
import traceback
import warnings
import zipfile
import zlib

import jax
import numpy as np

__all__ = [
    "load_params",
    "restore_params",
    "restore_training_state",
    "save_npz",
    "split_training_state",
]

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


def _layout_problem(path: str) -> str | None:
    """What makes ``path`` an incomplete Orbax checkpoint folder, or None.

    Read from the folder itself, before Orbax: a PyTree/Standard checkpoint keeps
    the tree's structure in ``_METADATA`` (JSON) and, with OCDBT, its index in
    ``manifest.ocdbt``; an interrupted save or a partial copy lacks one of them
    (Orbax then says "'NoneType' object is not iterable")."""
    names = set(os.listdir(path))
    if "checkpoint" in names and "_METADATA" not in names:
        return None  # the older msgpack layout: one file, read by Orbax
    if "_METADATA" not in names:
        found = ", ".join(sorted(names)[:6]) or "nothing"
        return f"no _METADATA file (the tree's structure; found {found})"
    try:
        with open(os.path.join(path, "_METADATA"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        return f"its _METADATA is not readable JSON ({type(err).__name__}: {_first_line(err)})"
    if not isinstance(meta, dict) or not isinstance(meta.get("tree_metadata"), dict):
        return "its _METADATA holds no tree_metadata"
    if meta.get("use_ocdbt") and "manifest.ocdbt" not in names:
        return "no manifest.ocdbt (the index of its OCDBT data)"
    return None


def _step_item(step: str) -> str:
    """A CheckpointManager step folder's checkpoint: the step itself or its one item."""
    if _is_checkpoint(step):
        return step
    items = [
        os.path.join(step, e)
        for e in sorted(os.listdir(step))
        if os.path.isdir(os.path.join(step, e)) and _is_checkpoint(os.path.join(step, e))
    ]
    if len(items) == 1:
        return items[0]
    dirs = [e for e in sorted(os.listdir(step)) if os.path.isdir(os.path.join(step, e))]
    return os.path.join(step, dirs[0]) if len(dirs) == 1 else step


def _orbax_dir(path: str) -> str:
    """The checkpoint folder itself, or a CheckpointManager's newest complete step.

    A step whose item is incomplete (`_layout_problem`) is passed over with a
    warning naming it and why; when no step is complete the newest one is
    returned (its problem is then the error)."""
    if _is_checkpoint(path):
        return path
    steps = [e for e in os.listdir(path) if e.isdigit() and os.path.isdir(os.path.join(path, e))]
    if not steps:
        return path
    steps.sort(key=int, reverse=True)
    items = [_step_item(os.path.join(path, step)) for step in steps]
    problems = [_layout_problem(item) for item in items]
    for step, item, problem in zip(steps, items, problems, strict=True):
        if problem is None:
            if step != steps[0]:
                warnings.warn(
                    f"{path!r}: the newest step {steps[0]} is incomplete ({problems[0]}); "
                    f"reading step {step}, the newest complete one",
                    stacklevel=4,
                )
            return item
    return items[0]


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax's absl warnings and the tracebacks its event loop prints on a failed
    read go to a buffer, not the user's terminal: the error says the cause."""
    _hook_closed_loop_reports()
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL + 1)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        absl.setLevel(level)


def _is_closed_loop_report(report) -> bool:
    """Whether an unraisable-exception report is a TensorStore read of a failed Orbax
    restore calling back into Orbax's closed event loop (nothing the user can act on)."""
    if not (
        isinstance(report.exc_value, RuntimeError) and "loop is closed" in str(report.exc_value)
    ):
        return False
    tb = report.exc_traceback
    while tb is not None:
        args = (
            tb.tb_frame.f_locals.get("args")
            if tb.tb_frame.f_code.co_name == ("call_soon_threadsafe")
            else None
        )
        if args and any(type(a).__module__.startswith("tensorstore") for a in args):
            return True
        tb = tb.tb_next
    return False


def _hook_closed_loop_reports() -> None:
    """Pass over the reports of `_is_closed_loop_report` from now on (once per process).

    A failed Orbax read leaves other reads of the same restore in flight; when they
    complete (during the restore, a moment later, or at exit) they call back into
    the event loop Orbax has closed, and Python reports each "Event loop is closed"
    on stderr. The process's ``sys.unraisablehook`` passes over those reports only;
    any other goes to the hook that was there."""
    global _HOOKED
    if _HOOKED:
        return
    previous = sys.unraisablehook

    def hook(report):
        if not _is_closed_loop_report(report):
            previous(report)

    sys.unraisablehook = hook
    _HOOKED = True


def _settle(seconds: float = 0.05) -> None:
    """After a failed Orbax read: free its frames (holding TensorStore futures) now."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)


_HOOKED = False


def _first_line(err: BaseException) -> str:
    """The first line of an error, without TensorStore's spec dump."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text.split(" [tensorstore_spec=", 1)[0]


def _restore_orbax(path: str, name: str = "params"):
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:  # pragma: no cover - optional dependency
        raise ValueError(
            f"{name}: {path!r} is a directory (an Orbax checkpoint?) but orbax-checkpoint is not "
            "installed: pip install 'stability[checkpoint]'"
        ) from err
    path = os.path.abspath(_orbax_dir(path))
    problem = _layout_problem(path)
    if problem is not None:
        raise ValueError(
            f"{name}: {path!r} is not a complete Orbax checkpoint: {problem} "
            "(an interrupted save or a partial copy?)"
        )
    failure = None
    with _quiet_orbax(), ocp.PyTreeCheckpointer() as checkpointer:
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
        except Exception as first:  # noqa: BLE001 - the plain restore below says what is wrong
            traceback.clear_frames(first.__traceback__)
            try:  # older layouts, or metadata Orbax could not read: restore as saved
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    restored = checkpointer.restore(path)
            except Exception as err:  # noqa: BLE001 - any Orbax failure: one line naming the path
                failure = f"{type(err).__name__}: {_first_line(err)}"
                # The failed read's TensorStore futures live in the traceback's frames;
                # freed later (at exit) they call into Orbax's closed event loop, which
                # prints a traceback: free them here, where stderr is buffered.
                traceback.clear_frames(err.__traceback__)
        if failure is not None:
            _settle()
    if failure is not None:
        raise ValueError(f"{name}: cannot read {path!r} as an Orbax checkpoint: {failure}")
    return jax.tree_util.tree_map(np.asarray, restored)


# ---------------------------------------------------------------------- npz

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError)


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, where: str):
    """``(shape, dtype)`` of one ``.npy`` member, from its header alone.

    Only the first block of the member is decompressed. Refused: a member that is
    not an ``.npy`` array, pickled objects, and data that do not fill the shape
    exactly (the zip entry's uncompressed size is compared with header + data)."""
    member = f"{where}: member {info.filename!r}"
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version} is not supported")
            offset = f.tell()
    except _ZIP_ERRORS as err:
        raise ValueError(
            f"{member} is corrupt, or not an .npy array ({type(err).__name__}: {_first_line(err)})"
        ) from err
    if dtype.hasobject:
        raise ValueError(
            f"{member} holds Python objects (dtype {dtype}, pickled); a checkpoint holds "
            "numeric arrays only"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size != offset + nbytes:
        raise ValueError(
            f"{member} is corrupt: its header says shape {shape} {dtype} ({nbytes} bytes) but "
            f"the archive holds {info.file_size - offset} bytes of data for it"
        )
    return tuple(shape), dtype


def _leaf_key(key: str) -> str:
    """An npz key as the model's variables are keyed: no PRNG-key suffix, no
    ``/value`` level of a saved nnx Variable."""
    match = _KEY_SUFFIX.match(key)
    key = match.group(1) if match else key
    return key[: -len("/value")] if key.endswith("/value") else key


def _expected_shapes(expected) -> dict:
    """``{npz key: shape}`` of a pytree of arrays or ShapeDtypeStructs."""
    flat, _ = jax.tree_util.tree_flatten_with_path(expected)
    out = {}
    for p, leaf in flat:
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            continue  # stored as key data of another shape; within the budget's slack
        out[_leaf_key(_path_key(p))] = tuple(getattr(leaf, "shape", np.shape(leaf)))
    return out


def _free_memory() -> int | None:
    """Bytes of physical memory available now (Linux), or None where unknown."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _check_sizes(where: str, headers: dict, expected) -> None:
    """Refuse, before decompressing, members that cannot be the model's variables.

    With ``expected`` (a pytree of the model's arrays): a member whose key names a
    variable must have its shape, and all members together may claim at most 8
    bytes per value of the model plus 1 MiB (float64 everywhere, keys and
    counters). Without: at most the machine's free memory."""
    total = sum(math.prod(shape) * dtype.itemsize for shape, dtype in headers.values())
    largest = sorted(headers, key=lambda k: -math.prod(headers[k][0]) * headers[k][1].itemsize)
    shown = ", ".join(f"{k} {headers[k][0]} {headers[k][1]}" for k in largest[:3])
    if expected is None:
        free = _free_memory()
        if free is not None and total > free:
            raise ValueError(
                f"{where} claims {total:,} bytes uncompressed, more than the {free:,} bytes of "
                f"free memory: refused before decompressing (largest: {shown})"
            )
        return
    want = _expected_shapes(expected)
    problems = []
    for key, (shape, _) in headers.items():
        leaf = _leaf_key(key)
        for candidate in (leaf, f"params/{leaf}", leaf.removeprefix("params/")):
            if candidate in want:
                if want[candidate] != shape:
                    problems.append(f"{key} has shape {shape}, the model expects {want[candidate]}")
                break
    if problems:
        more = "; ..." if len(problems) > 4 else ""
        raise ValueError(
            f"{where} does not match the model (checked before decompressing): "
            + "; ".join(problems[:4])
            + more
        )
    # A training state's moments (Adam's mu and nu, a trace, MultiSteps' sums) are
    # like the params each: room for four of them beside the params.
    copies = 5 if any(key.startswith(f"{OPT_STATE}/") for key in headers) else 1
    budget = 8 * copies * sum(math.prod(shape) for shape in want.values()) + 2**20
    if total > budget:
        raise ValueError(
            f"{where} claims {total:,} bytes uncompressed, more than the model's "
            f"{budget - 2**20:,} bytes at 8 bytes per value"
            f"{' (x5 with an optimizer state)' if copies > 1 else ''}: refused before "
            f"decompressing (a zip bomb, or the checkpoint of a larger model? largest: {shown})"
        )


def _load_npz(path: str, name: str, expected) -> dict:
    """The arrays of an ``.npz`` file, every member's header checked first."""
    where = f"{name}: {path!r}"
    try:
        with open(path, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except OSError as err:
        raise ValueError(f"{where} cannot be opened ({type(err).__name__}: {err})") from err
    if not head:
        raise ValueError(f"{where} is empty (0 bytes), not an .npz checkpoint")
    if head == _NPY_MAGIC:
        raise ValueError(
            f"{where} is a single .npy array, not a checkpoint of named arrays: save the "
            "parameter tree with stability.networks.checkpoints.save_npz (an .npz, one array "
            "per leaf path)"
        )
    try:
        archive = zipfile.ZipFile(path)
    except _ZIP_ERRORS as err:
        raise ValueError(
            f"{where} is not an .npz checkpoint: not a zip archive, or a truncated one "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err
    with archive:
        infos = archive.infolist()
        others = [i.filename for i in infos if not i.filename.endswith(".npy")]
        if others:
            raise ValueError(
                f"{where} is not an .npz checkpoint: it holds files other than .npy arrays "
                f"({', '.join(others[:3])})"
            )
        headers = {i.filename[: -len(".npy")]: _npy_header(archive, i, where) for i in infos}
        if not headers:
            raise ValueError(f"{where}: the checkpoint holds no arrays")
        _check_sizes(where, headers, expected)
        arrays = {}
        for info in infos:
            try:
                with archive.open(info) as f:
                    arrays[info.filename[: -len(".npy")]] = np.lib.format.read_array(
                        f, allow_pickle=False
                    )
            except _ZIP_ERRORS as err:
                raise ValueError(
                    f"{where}: member {info.filename!r} is corrupt "
                    f"({type(err).__name__}: {_first_line(err)})"
                ) from err
    return arrays


def load_params(path, *, expected=None, name: str = "params") -> dict:
    """Load a checkpoint (``.npz`` file or Orbax directory) as a nested dict.

    Args:
      path: an ``.npz`` file or an Orbax checkpoint (or CheckpointManager) folder.
      expected: optional, the model's variables (a pytree of arrays or
        ``jax.ShapeDtypeStruct``): an ``.npz`` member named like one of them must
        have its shape, and the members may claim at most 8 bytes per value in
        all; checked from the headers before any array is decompressed. Without
        it the members may claim at most the machine's free memory.
      name: how to name the checkpoint in error messages (the CLI: ``--params``).

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file is neither format, is damaged, or does not fit
        ``expected`` (one line naming ``name``, the path and what is wrong).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint path does not exist: {path!r}")
    if os.path.isdir(path):
        return _restore_orbax(path, name)
    return _unflatten(_load_npz(path, name, expected))


def _model_variables(model, data):
    """The variables ``model`` expects (arrays or ShapeDtypeStructs), or None.

    nnx: the module's own state (rng streams aside). linen: ``model.init`` on one
    example of ``data``'s first in-memory batch, traced abstractly (nothing is
    computed); None when that batch is not at hand or ``init`` needs more than the
    inputs (the later comparison on the data still checks)."""
    try:
        from flax import linen, nnx
    except ImportError:  # pragma: no cover
        return None
    if isinstance(model, nnx.Module):
        _, _, own = nnx.split(model, nnx.RngState, ...)
        return nnx.to_pure_dict(own)
    if not isinstance(model, linen.Module) or data is None:
        return None
    batch = data[0] if isinstance(data, list) and data else data
    if not isinstance(batch, (tuple, dict)):
        return None
    try:
        from stability.networks.models import inputs_and_labels

        inputs, _ = inputs_and_labels(batch)
        first = jax.tree_util.tree_map(lambda x: x[:1], inputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. float64 params without x64: shapes only
            return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), first)
    except Exception:  # noqa: BLE001 - init may need keywords or rngs: no shapes then
        return None


OPT_STATE = "opt_state"
# A Flax TrainState's entries that are not the model's variables.
_TRAINING_ONLY = ("step", OPT_STATE, "dynamic_scale")


def split_training_state(tree):
    """``(variables, opt_state)`` of a training-state checkpoint, else ``(tree, None)``.

    A training state is a dict with an ``"opt_state"`` entry, as the Flax examples
    save a ``TrainState`` (``{"step", "params", "opt_state"}``, plus
    ``"batch_stats"`` and ``"dynamic_scale"`` where used). ``variables`` is its
    ``"params"`` entry when that is all the model part holds, else the dict of the
    model's entries (``{"params": ..., "batch_stats": ...}``, a linen variables
    dict); ``"step"`` and ``"dynamic_scale"`` are dropped.
    """
    if not (hasattr(tree, "keys") and OPT_STATE in tree):
        return tree, None
    rest = {k: v for k, v in tree.items() if k not in _TRAINING_ONLY}
    if not rest:
        raise ValueError(
            "the checkpoint holds an optimizer state ('opt_state') but no model variables "
            f"beside it (its entries: {sorted(tree)}); save {{'params': ..., 'opt_state': ...}}"
        )
    variables = rest["params"] if set(rest) == {"params"} else rest
    return variables, tree[OPT_STATE]


def restore_training_state(
    checkpoint, model, *, train: bool = False, name: str = "--params", data=None
):
    """`restore_params` and the checkpoint's optimizer state: ``(params,
    opt_state)``, ``opt_state`` None when the checkpoint is not a training state
    (`split_training_state`), else as restored (dicts and lists; pass it to
    `stability.preconditioner_from_optax` or ``is_accessible(...,
    optimizer_state=)``). Arguments as for `restore_params`."""
    if isinstance(checkpoint, (str, os.PathLike)):
        tree = load_params(checkpoint, expected=_model_variables(model, data), name=name)
    else:
        tree = checkpoint
    try:
        variables, opt_state = split_training_state(tree)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    return _restored(variables, model, train, name), opt_state


def restore_params(checkpoint, model, *, train: bool = False, name: str = "--params", data=None):
    """A checkpoint as the ``params`` that `loss_from_model` takes for ``model``.

    Args:
      checkpoint: a path (``.npz`` or Orbax directory) or an already loaded
        nested dict; of a training state (an ``"opt_state"`` entry), its model
        variables (`split_training_state`).
      model: a Flax linen or nnx ``Module``, or a plain loss callable (the
        nested dict is returned as is).
      train: the mode the model will run in: in eval mode an nnx checkpoint
        must hold the batch statistics (running averages).
      name: how to name the checkpoint in error messages.
      data: optional, the data the model will run on (a batch or a list of
        batches): for a linen model its variables' shapes come from
        ``model.init`` on one example, so that an ``.npz`` that does not fit is
        refused before it is decompressed (`load_params`'s ``expected``; an
        nnx model gives its own).

    Returns:
      linen: ``{"params": ..., **other collections}``; nnx: an ``nnx.State``
      of the module's variables with the checkpoint's values (the module
      itself is not modified); anything else: the nested dict.

    Raises:
      ValueError: the checkpoint is damaged, does not fit the model (every
        differing leaf named), or lacks an eval-mode nnx model's batch
        statistics.
    """
    return restore_training_state(checkpoint, model, train=train, name=name, data=data)[0]


def _restored(tree, model, train, name):
    """A loaded checkpoint's variables in `loss_from_model`'s form for ``model``."""
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

    from stability.networks.models import flat_by_path, pure_dict, shape_problems

    _, rng_state, own = nnx.split(model, nnx.RngState, ...)
    rng_paths = set(flat_by_path(nnx.to_pure_dict(rng_state)))
    given = {k: v for k, v in flat_by_path(pure_dict(tree)).items() if k not in rng_paths}
    own_flat = flat_by_path(nnx.to_pure_dict(own))
    problems = shape_problems(given, own_flat)
    trained = set(flat_by_path(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
    if train:  # running statistics are unused in train mode
        problems = [p for p in problems if not p.startswith("missing") or p.split()[1] in trained]
    if problems:
        shown = "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
        hint = (
            ": save nnx.state(model) (all variables, batch statistics included), not only nnx.Param"
            if any(p.startswith("missing") and p.split()[1] not in trained for p in problems)
            else ""
        )
        top = {k.split("/")[0] for k in given}
        if (
            top
            and top <= {"params", "batch_stats"}
            and not top & {k.split("/")[0] for k in own_flat}
        ):
            hint = (
                ": it looks like a linen variables dict ({'params': ..., 'batch_stats': ...}) "
                "and the model is an nnx Module; save nnx.state(model) of the nnx model, or "
                "judge the linen model it came from"
            )
        raise ValueError(f"{name}: the checkpoint does not match the nnx model: {shown}{hint}")
    from stability.networks.models import nnx_params_from

    return nnx_params_from(tree, own, rng_state)
