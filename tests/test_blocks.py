"""Parameter blocks and their delays (stability/curvature/blocks.py).

Every form of the spec, resolved against a small pytree whose leaves' sizes are
known, against delays written out by hand; stage cuts against a brute-force
search over all contiguous cuts; the errors name the argument and the value.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stability.curvature.blocks import (
    BlockDelays,
    Stages,
    block_delays,
    leaf_paths,
    pick_by_delay,
)
from stability.theory.pipeline import pipeline_delays


def dense(n_in, n_out):
    return {"kernel": jnp.zeros((n_in, n_out)), "bias": jnp.zeros((n_out,))}


def mlp(*widths):
    """A linen-like ``{"Dense_i": {"kernel", "bias"}}`` for the given widths."""
    return {f"Dense_{i}": dense(a, b) for i, (a, b) in enumerate(itertools.pairwise(widths))}


PARAMS = mlp(3, 4, 2)  # Dense_0: 12 + 4 = 16, Dense_1: 8 + 2 = 10


def flat_delays(blocks: BlockDelays) -> dict:
    return dict(zip(blocks.paths, jax.tree_util.tree_leaves(blocks.leaf_delays), strict=True))


# ---------------------------------------------------------------- the spec forms


def test_prefix_dict_longest_prefix_wins():
    b = block_delays(PARAMS, {"Dense_0": 1, "Dense_1/kernel": 2, "Dense_1": 0})
    assert flat_delays(b) == {
        "Dense_0/bias": 1,
        "Dense_0/kernel": 1,
        "Dense_1/bias": 0,
        "Dense_1/kernel": 2,
    }
    assert b.delays == (0, 1, 2)
    assert b.sizes == (2, 16, 8)
    assert b.stages is None
    assert b.max_delay == 2
    assert b.mean_delay == pytest.approx((0 * 2 + 1 * 16 + 2 * 8) / 26)
    assert not b.uniform
    assert b.describe() == "delay 0: 2 parameters; delay 1: 16 parameters; delay 2: 8 parameters"


def test_prefix_matches_whole_components_and_slashes():
    # "Dense_1" must not match "Dense_10"; leading/trailing slashes are ignored.
    params = {f"Dense_{i}": dense(1, 1) for i in (1, 10)}
    b = block_delays(params, {"/Dense_1/": 3, "Dense_10": 0})
    assert flat_delays(b) == {
        "Dense_1/bias": 3,
        "Dense_1/kernel": 3,
        "Dense_10/bias": 0,
        "Dense_10/kernel": 0,
    }


def test_callable_of_the_path():
    b = block_delays(PARAMS, lambda path: 5 if path.endswith("kernel") else 0)
    assert flat_delays(b)["Dense_1/kernel"] == 5
    assert b.delays == (0, 5)
    assert b.sizes == (6, 20)


def test_pytree_of_ints_nested_dicts():
    spec = {"Dense_0": {"kernel": 1, "bias": 2}, "Dense_1": {"kernel": 0, "bias": 0}}
    b = block_delays(PARAMS, spec)
    assert flat_delays(b) == {
        "Dense_0/bias": 2,
        "Dense_0/kernel": 1,
        "Dense_1/bias": 0,
        "Dense_1/kernel": 0,
    }
    assert jax.tree_util.tree_structure(b.leaf_delays) == jax.tree_util.tree_structure(PARAMS)


def test_pytree_of_numpy_and_jax_scalars():
    spec = {
        "Dense_0": {"kernel": np.int64(1), "bias": jnp.asarray(1)},
        "Dense_1": {"kernel": np.asarray(2), "bias": 2.0},
    }
    b = block_delays(PARAMS, spec)
    assert b.delays == (1, 2)
    assert all(type(d) is int for d in jax.tree_util.tree_leaves(b.leaf_delays))


def test_pytree_list_params():
    params = [jnp.zeros(2), jnp.zeros((3, 2))]
    b = block_delays(params, [1, 2])
    assert b.paths == ("0", "1")
    assert b.delays == (1, 2)
    assert b.sizes == (2, 6)


def test_flat_dict_reads_the_same_as_prefix_or_pytree():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
    b = block_delays(params, {"a": 0, "b": 4})
    assert flat_delays(b) == {"a": 0, "b": 4}


def test_resolved_blocks_pass_through():
    b = block_delays(PARAMS, Stages(2))
    assert block_delays(PARAMS, b) is b
    with pytest.raises(ValueError, match="delays was resolved for another pytree"):
        block_delays(mlp(3, 4, 2, 1), b)


def test_leaf_paths_of_linen_variables():
    params = {"params": PARAMS}
    assert leaf_paths(params) == (
        "params/Dense_0/bias",
        "params/Dense_0/kernel",
        "params/Dense_1/bias",
        "params/Dense_1/kernel",
    )


# ---------------------------------------------------------------- stages


def brute_force_cuts(weights, parts):
    """Every contiguous cut into ``parts`` non-empty groups; the least largest group."""
    n = len(weights)
    best = None
    for inner in itertools.combinations(range(1, n), parts - 1):
        cuts = (0, *inner, n)
        cost = max(sum(weights[a:b]) for a, b in itertools.pairwise(cuts))
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4])
def test_stages_1f1b_on_a_four_layer_mlp(num_stages):
    params = {"params": mlp(64, 16, 16, 16, 10)}  # 1040, 272, 272, 170
    b = block_delays(params, Stages(num_stages))
    profile = pipeline_delays(num_stages, "1f1b")
    assert len(b.stages) == num_stages
    assert [n for g in b.stages for n in g] == [f"Dense_{i}" for i in range(4)]
    weights = [1040, 272, 272, 170]
    stage_weights = []
    start = 0
    for group in b.stages:
        stage_weights.append(sum(weights[start : start + len(group)]))
        start += len(group)
    assert max(stage_weights) == brute_force_cuts(weights, num_stages)
    leaves = flat_delays(b)
    for s, group in enumerate(b.stages):
        for name in group:
            assert leaves[f"params/{name}/kernel"] == profile[s]
            assert leaves[f"params/{name}/bias"] == profile[s]
    assert b.delays == tuple(sorted(set(profile)))
    assert sum(b.sizes) == sum(weights)


def test_stages_four_on_four_layers_one_layer_each():
    b = block_delays({"params": mlp(64, 16, 16, 16, 10)}, Stages(4))
    assert b.stages == (("Dense_0",), ("Dense_1",), ("Dense_2",), ("Dense_3",))
    assert b.delays == (0, 1, 2, 3)
    assert b.sizes == (170, 272, 272, 1040)
    assert b.mean_delay == pytest.approx((3 * 1040 + 2 * 272 + 1 * 272) / 1754)


@pytest.mark.parametrize("weights", [(5, 1, 1, 1, 1, 5), (1, 2, 3, 4, 5, 6, 7), (9, 1, 9, 1)])
@pytest.mark.parametrize("parts", [2, 3])
def test_stage_cuts_balanced(weights, parts):
    params = {f"L{i}": jnp.zeros(w) for i, w in enumerate(weights)}
    b = block_delays(params, Stages(parts))
    sizes = {f"L{i}": w for i, w in enumerate(weights)}
    cost = max(sum(sizes[n] for n in g) for g in b.stages)
    assert cost == brute_force_cuts(list(weights), parts)


def test_stages_natural_order():
    params = {f"Dense_{i}": jnp.zeros(1) for i in range(11)}
    b = block_delays(params, Stages(11))
    assert [g[0] for g in b.stages] == [f"Dense_{i}" for i in range(11)]
    leaves = flat_delays(b)
    assert leaves["Dense_2"] == 8
    assert leaves["Dense_10"] == 0


def test_stages_params_wrapper_only_when_alone():
    # Below a lone "params" the layers are the top level ...
    assert block_delays({"params": PARAMS}, Stages(2)).stages == (("Dense_0",), ("Dense_1",))
    # ... with a second collection "params" is one module among others.
    variables = {"params": PARAMS, "stats": {"mean": jnp.zeros(3)}}
    assert block_delays(variables, Stages(2)).stages == (("params",), ("stats",))


@pytest.mark.parametrize(
    ("schedule", "tau", "expected"),
    [
        ("gpipe", None, (0, 0, 0)),
        ("pipedream_2bw", None, (1, 1, 1)),
        ("1f1b", None, (2, 1, 0)),
        ("uniform", 4, (4, 4, 4)),
    ],
)
def test_stages_each_schedule(schedule, tau, expected):
    params = {f"Dense_{i}": jnp.zeros(2) for i in range(3)}
    b = block_delays(params, Stages(3, schedule, tau=tau))
    assert [flat_delays(b)[f"Dense_{i}"] for i in range(3)] == list(expected)
    assert b.delays == tuple(sorted(set(expected)))
    assert b.uniform == (len(set(expected)) == 1)


def test_stages_order():
    params = {name: jnp.zeros(1) for name in ("embed", "block", "head")}
    b = block_delays(params, Stages(3, order=("embed", "block", "head")))
    assert b.stages == (("embed",), ("block",), ("head",))
    assert flat_delays(b) == {"block": 1, "embed": 2, "head": 0}


# ---------------------------------------------------------------- errors


def test_error_unmatched_leaf():
    with pytest.raises(
        ValueError,
        match=r"delays: no prefix in \['Dense_0'\] matches the leaf "
        r"'Dense_1/bias'",
    ):
        block_delays(PARAMS, {"Dense_0": 1})


def test_error_unused_prefix():
    with pytest.raises(ValueError, match=r"the prefix\(es\) \['Dense_7'\] match no leaf"):
        block_delays(PARAMS, {"Dense_0": 1, "Dense_1": 0, "Dense_7": 2})


def test_error_non_string_prefix():
    with pytest.raises(TypeError, match="delays keys must be path prefixes"):
        block_delays(PARAMS, {"Dense_0": 1, 3: 0})


def test_error_negative_delay_names_the_leaf():
    with pytest.raises(
        ValueError,
        match=r"delays\['Dense_1/kernel'\] must be an integer >= 0; "
        r"got -1",
    ):
        block_delays(PARAMS, {"Dense_0": 0, "Dense_1": 0, "Dense_1/kernel": -1})


@pytest.mark.parametrize("bad", [1.5, "2", None, True])
def test_error_non_integer_delay(bad):
    with pytest.raises(TypeError, match=r"delays\['Dense_0/bias'\] must be an integer; got"):
        block_delays(PARAMS, lambda path: bad)


def test_error_name_is_used():
    with pytest.raises(ValueError, match=r"block_delays\['Dense_0/bias'\]"):
        block_delays(PARAMS, lambda path: -3, name="block_delays")


def test_error_too_many_stages():
    with pytest.raises(
        ValueError,
        match=r"delays: 3 stages need at least 3 top-level modules; "
        r"params has 2: \['Dense_0', 'Dense_1'\]",
    ):
        block_delays(PARAMS, Stages(3))


def test_error_bad_stage_count_and_schedule():
    with pytest.raises(ValueError, match=r"delays.num_stages must be an integer >= 1; got 0"):
        block_delays(PARAMS, Stages(0))
    with pytest.raises(ValueError, match="schedule"):
        block_delays(PARAMS, Stages(2, "interleaved"))
    with pytest.raises(ValueError, match="tau"):
        block_delays(PARAMS, Stages(2, "uniform"))


def test_error_order_not_a_permutation():
    with pytest.raises(ValueError, match=r"delays.order must list each top-level name once"):
        block_delays(PARAMS, Stages(2, order=("Dense_0",)))
    with pytest.raises(ValueError, match=r"got \['Dense_0', 'Dense_0', 'Dense_1'\]"):
        block_delays(PARAMS, Stages(2, order=("Dense_0", "Dense_0", "Dense_1")))


@pytest.mark.parametrize(
    "spec", [[1, 2], {"Dense_0": {"kernel": 1}, "Dense_1": 0}, 3, "1f1b", (1, 2, 3, 4, 5)]
)
def test_error_wrong_structure(spec):
    err = (TypeError, ValueError)  # a dict of prefixes with a dict value: a non-integer delay
    with pytest.raises(err, match="delays"):
        block_delays(PARAMS, spec)


def test_error_wrong_structure_message():
    with pytest.raises(
        TypeError,
        match=r"delays must be stability.Stages\(...\), a dict of path "
        r"prefixes, a callable of the leaf path, or a pytree of ints shaped like "
        r"params; got \[1, 2\]",
    ):
        block_delays(PARAMS, [1, 2])


def test_error_no_leaves():
    with pytest.raises(ValueError, match="params has no leaves"):
        block_delays({}, Stages(1))


# ---------------------------------------------------------------- pick_by_delay


def test_pick_by_delay_takes_each_leaf_from_its_delays_tree():
    b = block_delays(PARAMS, {"Dense_0": 3, "Dense_1/kernel": 1, "Dense_1/bias": 3})
    assert b.delays == (1, 3)
    trees = [jax.tree_util.tree_map(lambda x, k=k: jnp.full_like(x, k), PARAMS) for k in (10, 30)]
    out = pick_by_delay(b, trees)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(PARAMS)
    assert float(out["Dense_0"]["kernel"][0, 0]) == 30
    assert float(out["Dense_0"]["bias"][0]) == 30
    assert float(out["Dense_1"]["kernel"][0, 0]) == 10
    assert float(out["Dense_1"]["bias"][0]) == 30


def test_pick_by_delay_is_the_masked_sum():
    """sum_b P_b g_b with P_b the 0/1 projection on block b's coordinates."""
    b = block_delays(PARAMS, Stages(2))
    keys = jax.random.split(jax.random.key(0), len(b.delays))
    trees = []
    for key in keys:
        leaves, treedef = jax.tree_util.tree_flatten(PARAMS)
        ks = jax.random.split(key, len(leaves))
        trees.append(
            treedef.unflatten(
                [jax.random.normal(k, x.shape) for k, x in zip(ks, leaves, strict=True)]
            )
        )
    picked = jnp.concatenate(
        [x.ravel() for x in jax.tree_util.tree_leaves(pick_by_delay(b, trees))]
    )
    delay_of = jnp.concatenate(
        [
            jnp.full(x.size, d)
            for x, d in zip(
                jax.tree_util.tree_leaves(PARAMS),
                jax.tree_util.tree_leaves(b.leaf_delays),
                strict=True,
            )
        ]
    )
    masked = sum(
        jnp.where(
            delay_of == d, jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(t)]), 0.0
        )
        for d, t in zip(b.delays, trees, strict=True)
    )
    np.testing.assert_array_equal(picked, masked)


def test_pick_by_delay_under_jit():
    b = block_delays(PARAMS, {"Dense_0": 0, "Dense_1": 2})
    f = jax.jit(lambda trees: pick_by_delay(b, trees))
    out = f(
        [
            jax.tree_util.tree_map(jnp.ones_like, PARAMS),
            jax.tree_util.tree_map(jnp.zeros_like, PARAMS),
        ]
    )
    assert float(jnp.sum(out["Dense_0"]["kernel"])) == 12
    assert float(jnp.sum(out["Dense_1"]["kernel"])) == 0
