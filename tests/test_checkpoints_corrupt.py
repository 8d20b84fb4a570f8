"""Damaged checkpoints (issue 21, item 7): one ValueError naming the path and what
is wrong, an npz checked against the model before it is decompressed, Orbax's
cause in one line without its log noise, a CheckpointManager's incomplete newest
step passed over with a warning; `stability check --params` exits 2 with one line.

All files are made here, small: the "bomb" is a valid npz whose one member
decompresses to 128 MiB of zeros (about 130 kB on disk); its header is refused
before that is allocated, as a subprocess measures (peak RSS, VmHWM).
"""

import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stability.app.cli import main
from stability.networks.checkpoints import load_params, restore_params, save_npz

TREE = {"params": {"Dense_0": {"kernel": np.ones((3, 4)), "bias": np.zeros(4)}}}


def write_bomb(path, key, n):
    """A valid npz whose member ``key`` is n float64 zeros, deflated in 1 MiB pieces
    (never n * 8 bytes in memory here): n = 2**24 is 128 MiB for ~130 kB on disk."""
    header = {"descr": "<f8", "fortran_order": False, "shape": (n,)}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(key + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            piece = bytes(2**20)
            for _ in range(n * 8 // 2**20):
                f.write(piece)
    return path


def _good(tmp_path):
    save_npz(tmp_path / "good.npz", TREE)
    return (tmp_path / "good.npz").read_bytes()


def _truncated(tmp_path):
    data = _good(tmp_path)
    return tmp_path / "t.npz", data[: len(data) // 2]


def _bad_member_data(tmp_path):
    """A zip whose member's compressed bytes are damaged (CRC or deflate error)."""
    np.savez_compressed(tmp_path / "c.npz", w=np.arange(1000.0))
    data = bytearray((tmp_path / "c.npz").read_bytes())
    for i in range(200, 260):
        data[i] ^= 0x5A
    return tmp_path / "c2.npz", bytes(data)


def _object_member(tmp_path):
    np.savez(tmp_path / "o.npz", w=np.array([{"a": 1}], dtype=object))
    return tmp_path / "o2.npz", (tmp_path / "o.npz").read_bytes()


def _not_npy_member(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as archive:
        archive.writestr("notes.txt", "hello")
    return tmp_path / "z2.npz", (tmp_path / "z.npz").read_bytes()


def _short_member(tmp_path):
    """An .npy member whose header promises more data than it holds."""
    with zipfile.ZipFile(tmp_path / "s.npz", "w") as archive:
        with archive.open("w.npy", "w") as f:
            header = {"descr": "<f8", "fortran_order": False, "shape": (100,)}
            np.lib.format.write_array_header_1_0(f, header)
            f.write(bytes(80))
    return tmp_path / "s2.npz", (tmp_path / "s.npz").read_bytes()


def _npy(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3))
    return tmp_path / "a2.npy", (tmp_path / "a.npy").read_bytes()


# (name, file maker, words the message must contain)
DAMAGED = [
    ("truncated", _truncated, "not a zip archive, or a truncated one"),
    ("empty", lambda p: (p / "e.npz", b""), "is empty (0 bytes)"),
    ("garbage", lambda p: (p / "g.npz", bytes(range(256)) * 3), "not a zip archive"),
    ("npy", _npy, "is a single .npy array"),
    ("object", _object_member, "holds Python objects"),
    ("not_npy", _not_npy_member, "files other than .npy arrays"),
    ("short", _short_member, "is corrupt: its header says shape (100,)"),
    ("bad_data", _bad_member_data, "is corrupt"),
]


@pytest.mark.parametrize("name, make, words", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_damaged_npz_is_one_value_error_naming_the_path(tmp_path, name, make, words):
    path, data = make(tmp_path)
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        load_params(path)
    text = str(info.value)
    assert str(path) in text and words in text, text
    assert "\n" not in text
    assert "allow_pickle" not in text and "context manager" not in text


def test_dev_null_is_an_empty_file_not_eof_error():
    with pytest.raises(ValueError, match="'/dev/null' is empty"):
        load_params("/dev/null")


def test_npz_shapes_are_checked_against_the_model_before_decompressing(tmp_path):
    path = tmp_path / "good.npz"
    save_npz(path, TREE)
    ok = load_params(path, expected=TREE)
    np.testing.assert_array_equal(
        ok["params"]["Dense_0"]["kernel"], TREE["params"]["Dense_0"]["kernel"]
    )
    other = {"params": {"Dense_0": {"kernel": np.ones((3, 5)), "bias": np.zeros(5)}}}
    with pytest.raises(ValueError, match=r"params/Dense_0/kernel has shape \(3, 4\), the model "
                       r"expects \(3, 5\)"):  # fmt: skip
        load_params(path, expected=other)
    # a bare params dict is matched under "params/" too, and the name is the caller's
    bare = tmp_path / "bare.npz"
    save_npz(bare, TREE["params"])
    with pytest.raises(ValueError, match=r"^--params: .*Dense_0/kernel has shape"):
        load_params(bare, expected=other, name="--params")


def test_members_claiming_more_than_the_model_are_refused(tmp_path):
    """A member the model does not name, claiming 128 MiB: more than 8 bytes per
    value of a 28-value model, refused from the header."""
    path = write_bomb(tmp_path / "bomb.npz", "params/extra", 2**24)
    assert path.stat().st_size < 2**20
    with pytest.raises(ValueError, match="claims 134,217,728 bytes uncompressed, more than the "
                       "model's"):  # fmt: skip
        load_params(path, expected=TREE)


def _nnx_model():
    from flax import nnx

    from stability.networks import examples

    return examples.NnxDigitsMLP(hidden=4, rngs=nnx.Rngs(1), param_dtype=jnp.float64)


def test_restore_params_checks_an_nnx_bomb_against_the_module(tmp_path):
    path = write_bomb(tmp_path / "bomb.npz", "hidden/kernel", 2**24)
    with pytest.raises(ValueError, match=r"hidden/kernel has shape \(16777216,\), the model "
                       r"expects \(64, 4\)"):  # fmt: skip
        restore_params(path, _nnx_model())


def test_restore_params_checks_a_linen_bomb_against_init_on_the_data(tmp_path):
    from stability.networks import examples

    model = examples.DigitsMLP(hidden=4, param_dtype=jnp.float64)
    data = examples.load_digits(8, dtype=jnp.float64)
    path = write_bomb(tmp_path / "bomb.npz", "params/Dense_0/kernel", 2**24)
    with pytest.raises(ValueError, match=r"Dense_0/kernel has shape \(16777216,\), the model "
                       r"expects \(64, 4\)"):  # fmt: skip
        restore_params(path, model, data=data)
    # and a fitting checkpoint still loads (as the variables dict)
    variables = model.init(jax.random.key(0), data[0][:1])
    save_npz(tmp_path / "fit.npz", variables)
    back = restore_params(tmp_path / "fit.npz", model, data=data)
    np.testing.assert_array_equal(
        back["params"]["Dense_0"]["kernel"], variables["params"]["Dense_0"]["kernel"]
    )


PEAK = textwrap.dedent("""
    import re, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    from flax import nnx
    import jax.numpy as jnp
    from stability.networks import examples
    from stability.networks.checkpoints import restore_params

    def peak():  # KiB: the high-water mark of the resident set since the last reset
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    model = examples.NnxDigitsMLP(hidden=4, rngs=nnx.Rngs(1), param_dtype=jnp.float64)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    before = peak()
    try:
        restore_params(sys.argv[1], model)
        outcome = "loaded"
    except ValueError as err:
        outcome = "refused"
    print(outcome, (peak() - before) // 1024)  # MiB
""")


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM" in open("/proc/self/status").read()
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak_rss(), reason="needs Linux's /proc/self/clear_refs")
def test_the_bomb_is_refused_without_allocating_it(tmp_path):
    """The peak resident set grows by under 48 MiB for a member that decompresses
    to 128 MiB (before: the whole array was allocated, +129 MiB, then refused by the
    shape check)."""
    path = write_bomb(tmp_path / "bomb.npz", "hidden/kernel", 2**24)
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "refused" and int(out[1]) < 48, out


# ------------------------------------------------------------------- Orbax


def _orbax(path, tree=TREE):
    ocp = pytest.importorskip("orbax.checkpoint")
    with ocp.PyTreeCheckpointer() as checkpointer:
        checkpointer.save(str(path), tree)
    return path


def _damage_files(folder, pick):
    for root, _, files in os.walk(folder):
        for f in files:
            if pick(root, f):
                with open(os.path.join(root, f), "wb") as out:
                    out.write(bytes(range(20)))


ORBAX_DAMAGE = [
    ("no_metadata", lambda p: os.remove(p / "_METADATA"), "no _METADATA file"),
    (
        "bad_metadata",
        lambda p: (p / "_METADATA").write_text("{not json"),
        "_METADATA is not readable JSON",
    ),
    (
        "no_manifest",
        lambda p: os.remove(p / "manifest.ocdbt"),
        "no manifest.ocdbt",
    ),
    (
        "corrupt_data",
        lambda p: _damage_files(p, lambda root, f: os.path.basename(root) == "d"),
        "cannot read",
    ),
    (
        "corrupt_manifest",
        lambda p: (p / "manifest.ocdbt").write_bytes(bytes(30)),
        "cannot read",
    ),
]


@pytest.mark.parametrize("name, damage, words", ORBAX_DAMAGE, ids=[d[0] for d in ORBAX_DAMAGE])
def test_damaged_orbax_folder_is_one_line_without_noise(tmp_path, capfd, name, damage, words):
    path = _orbax(tmp_path / "ckpt")
    damage(path)
    capfd.readouterr()
    with pytest.raises(ValueError) as info:
        load_params(path)
    text = str(info.value)
    assert str(path) in text and words in text, text
    assert "NoneType" not in text and "\n" not in text and "tensorstore_spec" not in text
    out, err = capfd.readouterr()
    assert err == "", err  # no absl warnings, no asyncio traceback


def test_checkpoint_manager_falls_back_to_the_newest_complete_step(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    older = jax.tree.map(lambda x: x + 1.0, TREE)
    with ocp.CheckpointManager(tmp_path / "run") as manager:
        manager.save(1, args=ocp.args.StandardSave(older))
        manager.save(2, args=ocp.args.StandardSave(TREE))
        manager.wait_until_finished()
    os.remove(tmp_path / "run" / "2" / "default" / "_METADATA")  # step 2 cut short
    with pytest.warns(UserWarning, match="the newest step 2 is incomplete .*no _METADATA.*"
                      "reading step 1, the newest complete one"):  # fmt: skip
        back = load_params(tmp_path / "run")
    np.testing.assert_array_equal(
        back["params"]["Dense_0"]["kernel"], older["params"]["Dense_0"]["kernel"]
    )
    # every step incomplete: the newest one's problem is the error
    os.remove(tmp_path / "run" / "1" / "default" / "_METADATA")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"run/2/default' is not a complete Orbax"):
            load_params(tmp_path / "run")


# --------------------------------------------------------------------- CLI


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    (tmp_path / "corruptuser.py").write_text(
        textwrap.dedent("""
        import jax.numpy as jnp
        from flax import nnx
        from stability.networks import examples

        def make_linen():
            return examples.DigitsMLP(hidden=4, param_dtype=jnp.float64)

        def make_nnx():
            return examples.NnxDigitsMLP(hidden=4, rngs=nnx.Rngs(1), param_dtype=jnp.float64)

        def batches():
            return examples.load_digits(16, dtype=jnp.float64)

        def stream():  # a fresh iterator per pass, as a data loader gives
            return iter([examples.load_digits(16, dtype=jnp.float64)])
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _check(capsys, params, factory="make_linen", data="batches"):
    code = main(
        ["check", "--model", f"corruptuser:{factory}", "--params", str(params),
         "--data", f"corruptuser:{data}", "--tau", "2", "--lr", "0.1", "--quiet"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name, make, words", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_check_with_a_damaged_npz_exits_2_with_one_line(user_model, capsys, name, make, words):
    path, data = make(user_model)
    path.write_bytes(data)
    code, out, err = _check(capsys, path)
    assert code == 2 and out == "", (code, err)
    assert len(err.splitlines()) == 1 and str(path) in err and words in err, err


def test_check_with_an_nnx_bomb_exits_2_before_decompressing(user_model, capsys):
    path = write_bomb(user_model / "bomb.npz", "hidden/kernel", 2**24)
    code, out, err = _check(capsys, path, "make_nnx")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "checked before decompressing" in err and "hidden/kernel" in err, err


@pytest.mark.parametrize("data", ["batches", "stream"])
def test_check_with_a_linen_bomb_exits_2_before_decompressing(user_model, capsys, data):
    """A linen model has no shapes of its own: the CLI reads --data first and
    checks the npz headers against ``init`` on one example (before: the member was
    decompressed, limited only by free memory, then refused)."""
    path = write_bomb(user_model / "bomb.npz", "params/Dense_0/kernel", 2**24)
    code, out, err = _check(capsys, path, "make_linen", data)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "checked before decompressing" in err and "Dense_0/kernel" in err, err


def test_check_with_a_damaged_orbax_folder_exits_2_with_one_line(user_model):
    """A fresh process, as a user runs it: stderr is one line (no absl warnings, no
    asyncio traceback at exit)."""
    path = _orbax(user_model / "ckpt", {"params": {"w": np.ones(3)}})
    _damage_files(path, lambda root, f: os.path.basename(root) == "d")
    proc = subprocess.run(
        [sys.executable, "-m", "stability.app.cli", "check", "--model", "corruptuser:make_linen",
         "--params", str(path), "--data", "corruptuser:batches", "--tau", "2", "--lr", "0.1"],
        capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(user_model)}, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(path) in proc.stderr and "Orbax checkpoint" in proc.stderr
