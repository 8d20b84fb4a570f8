"""Blocks of parameters and their delays: which leaf of a pytree is how stale.

A pipeline (docs/theory.md section 18) applies to each block of parameters a
gradient computed ``tau_b`` steps earlier. Here a block is a set of whole leaves
of the parameter pytree, and leaves with the same delay form one block (the
dynamics only see the delay: ``sum_b P_b H e_{t - tau_b}`` groups by delay, so
one Hessian-vector product per distinct delay, or one per step with a history of
products, is all a step needs).

`block_delays(params, spec)` resolves a user's description against the pytree:

- ``Stages(num_stages, schedule="1f1b")``: the top-level modules (the first
  path component: ``Dense_0``, ``Dense_1``, ... in natural order, or ``order``)
  cut into ``num_stages`` contiguous stages of near-equal parameter count; stage
  s gets ``stability.theory.pipeline.pipeline_delays(num_stages, schedule)[s]``;
- a dict ``{path prefix: delay}``: a leaf takes the delay of the longest prefix
  (whole path components, ``"/"``-joined, e.g. ``"Dense_0"`` or
  ``"Dense_0/kernel"``) that matches its path; every leaf must match one;
- a callable ``delay(path) -> int`` of the leaf's ``"/"``-joined path;
- a pytree of integers with the structure of ``params``;
- a `BlockDelays` already resolved (checked against ``params``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from stability.theory.pipeline import pipeline_delays
from stability.validation import check_int

__all__ = ["BlockDelays", "Stages", "block_delays", "leaf_paths", "pick_by_delay"]


class Stages(NamedTuple):
    """Pipeline stages of a module's parameters (see the module docstring).

    num_stages: P >= 1. schedule: a ``stability.theory.pipeline.PIPELINE_SCHEDULES``
    name. tau: the delay of ``"uniform"``. order: the top-level names in pipeline
    order (default: natural order of the names, ``Dense_2`` before ``Dense_10``).
    """

    num_stages: int
    schedule: str = "1f1b"
    tau: int | None = None
    order: tuple[str, ...] | None = None


class BlockDelays(NamedTuple):
    """The delay of every parameter leaf, resolved against one pytree.

    Attributes:
      leaf_delays: a pytree with the structure of the parameters whose leaves are
        the leaves' delays (Python ints).
      paths: the ``"/"``-joined path of each leaf, in ``tree_leaves`` order.
      delays: the distinct delays, ascending (one block per distinct delay).
      sizes: the number of parameters with each of ``delays``.
      stages: for `Stages`, the top-level names in each stage; else None.
    """

    leaf_delays: Any
    paths: tuple[str, ...]
    delays: tuple[int, ...]
    sizes: tuple[int, ...]
    stages: tuple[tuple[str, ...], ...] | None = None

    @property
    def max_delay(self) -> int:
        """T = max tau_b, the length of the history a step reads."""
        return self.delays[-1]

    @property
    def mean_delay(self) -> float:
        """The parameter-weighted mean delay, sum_b n_b tau_b / n."""
        return float(np.dot(self.delays, self.sizes) / np.sum(self.sizes))

    @property
    def uniform(self) -> bool:
        """Whether every parameter has the same delay (then the scalar theory holds)."""
        return len(self.delays) == 1

    def describe(self) -> str:
        """One line: ``delay 3: 1,040 parameters; delay 2: 272 ...``."""
        return "; ".join(
            f"delay {d}: {n:,} parameters" for d, n in zip(self.delays, self.sizes, strict=True)
        )


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_paths(params) -> tuple[str, ...]:
    """The ``"/"``-joined path of every leaf of ``params`` (``tree_leaves`` order)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return tuple("/".join(_key_name(k) for k in path) for path, _ in flat)


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def block_delays(params, spec, *, name: str = "delays") -> BlockDelays:
    """Resolve ``spec`` (module docstring) into a `BlockDelays` for ``params``.

    Raises ValueError / TypeError naming ``name`` and the offending value: a leaf
    no prefix matches, a prefix that matches no leaf, a negative or non-integer
    delay, a pytree of another structure, more stages than top-level modules.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if not leaves:
        raise ValueError(f"params has no leaves to assign {name} to; got {params!r}")
    paths = leaf_paths(params)
    sizes = [int(np.size(leaf)) for leaf in leaves]
    stages = None
    if isinstance(spec, BlockDelays):
        if spec.paths != paths:
            raise ValueError(
                f"{name} was resolved for another pytree (leaves {list(spec.paths)[:4]}...); "
                f"params has leaves {list(paths)[:4]}..."
            )
        return spec
    if isinstance(spec, Stages):
        per_leaf, stages = _stage_delays(paths, sizes, spec, name)
    elif callable(spec) and not isinstance(spec, Mapping):
        per_leaf = [spec(p) for p in paths]
    else:
        try:
            spec_leaves, spec_def = jax.tree_util.tree_flatten(spec)
        except Exception:  # noqa: BLE001 - reported below
            spec_def = None
        # A dict shaped like params is the pytree form (for a flat dict of the
        # leaves' names both readings agree); any other dict holds path prefixes.
        if spec_def is not None and spec_def == treedef:
            per_leaf = spec_leaves
        elif isinstance(spec, Mapping):
            per_leaf = _prefix_delays(paths, spec, name)
        else:
            raise TypeError(
                f"{name} must be stability.Stages(...), a dict of path prefixes, a callable of "
                f"the leaf path, or a pytree of ints shaped like params; got {spec!r}"
            )
    checked = []
    for path, d in zip(paths, per_leaf, strict=True):
        if isinstance(d, (np.ndarray, np.generic, jax.Array)) and np.ndim(d) == 0:
            d = np.asarray(d).item()  # a numpy or JAX scalar
        try:
            checked.append(check_int(f"{name}[{path!r}]", d, 0))
        except (TypeError, ValueError) as err:
            raise type(err)(str(err)) from None
    distinct = tuple(sorted(set(checked)))
    block_sizes = tuple(
        sum(n for n, d in zip(sizes, checked, strict=True) if d == b) for b in distinct
    )
    return BlockDelays(
        jax.tree_util.tree_unflatten(treedef, checked), paths, distinct, block_sizes, stages
    )


def _components(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split("/") if p)


def _prefix_delays(paths, spec: Mapping, name: str) -> list:
    prefixes = {}
    for key, d in spec.items():
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be path prefixes (str); got {key!r}")
        prefixes[_components(key)] = (key, d)
    used = set()
    out = []
    for path in paths:
        comps = _components(path)
        best = None
        for pre in prefixes:
            if comps[: len(pre)] == pre and (best is None or len(pre) > len(best)):
                best = pre
        if best is None:
            raise ValueError(
                f"{name}: no prefix in {list(spec)} matches the leaf {path!r} "
                f"(leaves: {list(paths)[:6]}{'...' if len(paths) > 6 else ''})"
            )
        used.add(best)
        out.append(prefixes[best][1])
    unused = [prefixes[p][0] for p in prefixes if p not in used]
    if unused:
        raise ValueError(
            f"{name}: the prefix(es) {unused} match no leaf of params "
            f"(leaves: {list(paths)[:6]}{'...' if len(paths) > 6 else ''})"
        )
    return out


def _top_level(paths) -> tuple[list[str], list[str]]:
    """The top-level name of every leaf, below a lone ``params`` wrapper."""
    comps = [_components(p) for p in paths]
    skip = 1 if all(len(c) > 1 and c[0] == "params" for c in comps) else 0
    return [c[skip] if len(c) > skip else "" for c in comps], ["params"] * skip


def _stage_delays(paths, sizes, spec: Stages, name: str):
    num = check_int(f"{name}.num_stages", spec.num_stages, 1)
    profile = pipeline_delays(num, spec.schedule, tau=spec.tau)
    tops, _ = _top_level(paths)
    names = sorted(set(tops), key=_natural)
    if spec.order is not None:
        order = tuple(spec.order)
        if sorted(order) != sorted(names):
            raise ValueError(
                f"{name}.order must list each top-level name once: {names}; got {list(order)}"
            )
        names = list(order)
    if len(names) < num:
        raise ValueError(
            f"{name}: {num} stages need at least {num} top-level modules; params has "
            f"{len(names)}: {names}"
        )
    weight = [sum(s for t, s in zip(tops, sizes, strict=True) if t == n) for n in names]
    cuts = _balanced_cuts(weight, num)
    groups = [tuple(names[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    stage_of = {n: s for s, g in enumerate(groups) for n in g}
    return [profile[stage_of[t]] for t in tops], tuple(groups)


def _balanced_cuts(weight, parts: int) -> list[int]:
    """Cut a sequence into ``parts`` contiguous non-empty groups minimising the
    largest group's total (dynamic programming; the sequences are short)."""
    n = len(weight)
    prefix = np.concatenate([[0], np.cumsum(weight)])
    best = np.full((parts + 1, n + 1), np.inf)
    arg = np.zeros((parts + 1, n + 1), int)
    best[0, 0] = 0.0
    for p in range(1, parts + 1):
        for j in range(p, n + 1):
            for i in range(p - 1, j):
                cost = max(best[p - 1, i], prefix[j] - prefix[i])
                if cost < best[p, j]:
                    best[p, j], arg[p, j] = cost, i
    cuts = [n]
    for p in range(parts, 0, -1):
        cuts.append(int(arg[p, cuts[-1]]))
    return cuts[::-1]


def pick_by_delay(blocks: BlockDelays, trees):
    """The pytree whose leaf with delay ``d`` is taken from ``trees[k]``, where
    ``blocks.delays[k] == d`` (``trees``: one pytree per distinct delay, each with
    the parameters' structure). This is ``sum_b P_b g_b`` without masks: every
    block is a set of whole leaves."""
    index = {d: k for k, d in enumerate(blocks.delays)}
    flat = [jax.tree_util.tree_leaves(t) for t in trees]
    leaf_delays, treedef = jax.tree_util.tree_flatten(blocks.leaf_delays)
    out = [flat[index[d]][i] for i, d in enumerate(leaf_delays)]
    return jax.tree_util.tree_unflatten(treedef, out)
