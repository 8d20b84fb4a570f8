"""The command line: `table`, `check` and `demo`, and its error handling."""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from stability.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_table_json_matches_closed_forms(capsys):
    argv = "table --tau 0 1 2 --beta 0 0.9 --momentum shifted heavy_ball --json".split()
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    rows = {(r["tau"], r["beta"]): r for r in json.loads(out)}
    # THEORY.md section 3: shifted tau=1 is 1 - beta^2, heavy ball tau=1 is 1 - beta,
    # tau=0 both 2 (1 + beta); beta = 0 is plain delayed SGD 2 sin(pi / (2 (2 tau + 1))).
    assert rows[(1, 0.9)]["shifted"] == pytest.approx(1 - 0.81, rel=1e-9)
    assert rows[(1, 0.9)]["heavy_ball"] == pytest.approx(0.1, rel=1e-9)
    assert rows[(0, 0.9)]["shifted"] == pytest.approx(3.8, rel=1e-9)
    for tau in (0, 1, 2):
        gd = 2 * math.sin(math.pi / (2 * (2 * tau + 1)))
        assert rows[(tau, 0.0)]["shifted"] == pytest.approx(gd, rel=1e-9)


def test_table_text_has_a_row_per_tau_and_beta(capsys):
    argv = "table --tau 0 1 2 4 8 16 32 --beta 0 0.9 --momentum shifted".split()
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    rows = [line for line in out.splitlines() if line[:5].strip().isdigit()]
    assert len(rows) == 14


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["table", "--momentum", "adam"], "momentum"),
        (["table", "--tau", "-1"], "tau"),
        (["table", "--beta", "1.5"], "beta"),
    ],
)
def test_table_bad_input_exits_nonzero_with_one_line(capsys, argv, needle):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def user_project(tmp_path_factory):
    """A user's package with a linen model factory, a batch function and a checkpoint."""
    import jax.numpy as jnp

    from stability import examples
    from stability.checkpoints import save_npz

    root = tmp_path_factory.mktemp("userpkg")
    minimum = examples.train_to_minimum(n=64, hidden=8, dtype=jnp.float64)
    save_npz(root / "ckpt.npz", minimum.params)
    (root / "usermodel.py").write_text(
        textwrap.dedent("""
        import jax.numpy as jnp
        from stability import examples

        def make_model():
            return examples.DigitsMLP(hidden=8, param_dtype=jnp.float64)

        def batches():
            x, y = examples.load_digits(64, dtype=jnp.float64)
            return [(x[:40], y[:40]), (x[40:], y[40:])]

        def mse(outputs, labels):
            return examples.mean_squared_error(outputs, labels)
    """)
    )
    return root, minimum


def test_check_on_a_user_model_and_checkpoint(user_project, capsys, monkeypatch):
    root, _ = user_project
    monkeypatch.syspath_prepend(str(root))
    code, out, _ = _run(
        capsys,
        "check",
        "--model",
        "usermodel:make_model",
        "--params",
        str(root / "ckpt.npz"),
        "--data",
        "usermodel:batches",
        "--loss",
        "usermodel:mse",
        "--tau",
        "2",
        "--lr",
        "1e-4",
        "--json",
    )
    assert code == 0
    report = json.loads(out)
    assert report["verdict"] is True  # a tiny lr keeps any minimum
    assert report["tau"] == 2 and report["sharpness"] > 0
    assert report["max_stable_sharpness"] == pytest.approx(
        2 * math.sin(math.pi / 10) / 1e-4, rel=1e-9
    )


def _check_argv(params_path):
    """`stability check` on the user project's model and data, with these params."""
    return [
        "check",
        "--model",
        "usermodel:make_model",
        "--params",
        str(params_path),
        "--data",
        "usermodel:batches",
        "--tau",
        "2",
        "--lr",
        "0.1",
    ]


def test_check_missing_checkpoint_exits_with_one_line_no_traceback(user_project, tmp_path):
    root, _ = user_project
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stability.cli",
            *_check_argv(tmp_path / "missing.npz"),
        ],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "missing.npz" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "override, needle",
    [
        ({"--lr": "-0.1"}, "lr"),
        ({"--model": "nosuchmodule:make"}, "nosuchmodule"),
        ({"--model": "usermodel:nothing"}, "nothing"),
    ],
)
def test_check_bad_input_is_one_line(user_project, capsys, monkeypatch, override, needle):
    root, _ = user_project
    monkeypatch.syspath_prepend(str(root))
    args = {
        "--model": "usermodel:make_model",
        "--params": str(root / "ckpt.npz"),
        "--data": "usermodel:batches",
        "--loss": "usermodel:mse",
        "--tau": "2",
        "--lr": "0.1",
    }
    args.update(override)
    argv = ["check"] + [x for kv in args.items() for x in kv]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1


def test_check_params_that_do_not_match_the_model(user_project, capsys, monkeypatch, tmp_path):
    import numpy as np

    from stability.checkpoints import save_npz

    root, _ = user_project
    monkeypatch.syspath_prepend(str(root))
    save_npz(tmp_path / "wrong.npz", {"params": {"Dense_0": {"kernel": np.zeros((3, 3))}}})
    code, _, err = _run(capsys, *_check_argv(tmp_path / "wrong.npz"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_demo_quick_runs_and_writes_a_png(tmp_path, capsys):
    code, out, _ = _run(capsys, "demo", "--quick", "--out", str(tmp_path))
    assert code == 0
    png = tmp_path / "demo.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Verdicts" in out and "Simulated" in out
    # The simulations must agree with the verdicts (0.8x stays, 1.25x leaves).
    line = next(line for line in out.splitlines() if line.startswith("verdict and simulation"))
    agreed, total = [int(w) for w in line.split() if w.isdigit()]
    assert agreed == total


def test_check_loads_an_nnx_checkpoint_into_the_module(tmp_path, capsys, monkeypatch):
    from flax import nnx

    from stability.checkpoints import save_npz

    (tmp_path / "nnxuser.py").write_text(
        textwrap.dedent("""
        import jax.numpy as jnp
        from flax import nnx
        from stability import examples

        def make_model():
            return examples.NnxDigitsMLP(hidden=8, rngs=nnx.Rngs(1), param_dtype=jnp.float64)

        def batches():
            return examples.load_digits(64, dtype=jnp.float64)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import nnxuser

    # A checkpoint of a differently initialised twin: the verdict must use it.
    twin = nnxuser.examples.NnxDigitsMLP(hidden=8, rngs=nnx.Rngs(7), param_dtype=np.float64)
    save_npz(tmp_path / "nnx.npz", nnx.to_pure_dict(nnx.state(twin, nnx.Param)))
    argv = ["check", "--model", "nnxuser:make_model", "--data", "nnxuser:batches"]
    argv += ["--tau", "4", "--lr", "0.01", "--json"]
    code, out, _ = _run(capsys, *argv, "--params", str(tmp_path / "nnx.npz"))
    assert code == 0
    from_checkpoint = json.loads(out)
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    from_module = json.loads(out)
    assert from_checkpoint["sharpness"] != pytest.approx(from_module["sharpness"], rel=1e-3)
    # The checkpoint's own spectrum, computed directly.
    import stability as st

    loss_fn, params = st.loss_from_model(twin, loss=None)
    spectrum = st.hessian_spectrum(loss_fn, params, nnxuser.batches(), progress=False)
    assert from_checkpoint["sharpness"] == pytest.approx(spectrum.sharpness, rel=1e-5)

    save_npz(tmp_path / "bad.npz", {"hidden": {"kernel": np.zeros((2, 2))}})
    code, _, err = _run(capsys, *argv, "--params", str(tmp_path / "bad.npz"))
    assert code == 2 and "does not match" in err
