"""Checkpoint round trips (.npz and Orbax) and errors."""

import jax
import numpy as np
import pytest

from stability.networks.checkpoints import load_params, save_npz


def _tree():
    rng = np.random.default_rng(0)
    return {
        "params": {
            "Dense_0": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))},
            "Dense_1": {"kernel": rng.normal(size=(4, 2)).astype(np.float32)},
        }
    }


def _assert_same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=False):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_npz_round_trip(tmp_path):
    tree = _tree()
    path = tmp_path / "ckpt.npz"
    save_npz(path, tree)
    _assert_same(load_params(path), tree)


def test_orbax_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    tree = _tree()
    path = tmp_path / "orbax_ckpt"
    ocp.PyTreeCheckpointer().save(str(path), tree)
    _assert_same(load_params(path), tree)


def test_missing_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_params(missing)


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip archive")
    with pytest.raises(ValueError, match="bad.npz"):
        load_params(bad)


def test_npz_keeps_typed_prng_keys(tmp_path):
    tree = {"rngs": {"key": jax.random.key(3)}, "w": np.arange(3.0)}
    save_npz(tmp_path / "k.npz", tree)
    back = load_params(tmp_path / "k.npz")
    assert jax.dtypes.issubdtype(back["rngs"]["key"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(
        np.asarray(jax.random.key_data(back["rngs"]["key"])),
        np.asarray(jax.random.key_data(tree["rngs"]["key"])),
    )


def test_orbax_checkpoint_manager_folder_is_read_at_its_latest_step(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    tree = _tree()
    with ocp.CheckpointManager(tmp_path / "run") as manager:
        manager.save(1, args=ocp.args.StandardSave(jax.tree.map(np.zeros_like, tree)))
        manager.save(2, args=ocp.args.StandardSave(tree))
        manager.wait_until_finished()
    _assert_same(load_params(tmp_path / "run"), tree)
