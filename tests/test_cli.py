"""The command line: `table`, `check` and `demo`, and its error handling."""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from stability_oracles import bisect_threshold, poly, rho

from stability.app.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_table_json_matches_closed_forms(capsys):
    argv = "table --tau 0 1 2 --beta 0 0.9 --momentum shifted heavy_ball --json".split()
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    rows = {(r["tau"], r["beta"]): r for r in json.loads(out)}
    # docs/theory.md section 7: shifted tau=1 is 1 - beta^2, heavy ball tau=1 is 1 - beta,
    # tau=0 both 2 (1 + beta); beta = 0 is plain delayed SGD 2 sin(pi / (2 (2 tau + 1))).
    assert rows[(1, 0.9)]["shifted"] == pytest.approx(1 - 0.81, rel=1e-9)
    assert rows[(1, 0.9)]["heavy_ball"] == pytest.approx(0.1, rel=1e-9)
    assert rows[(0, 0.9)]["shifted"] == pytest.approx(3.8, rel=1e-9)
    for tau in (0, 1, 2):
        gd = 2 * math.sin(math.pi / (2 * (2 * tau + 1)))
        assert rows[(tau, 0.0)]["shifted"] == pytest.approx(gd, rel=1e-9)


def q_max_oracle(tau, beta, rule):
    """Largest stable q by bisection on numpy eigenvalues of docs/theory.md's polynomial."""
    return bisect_threshold(lambda q: poly(tau, beta, q, rule))


def test_table_text_prints_the_thresholds(capsys):
    taus = (0, 1, 2, 4, 8, 16, 32)
    argv = "table --tau 0 1 2 4 8 16 32 --beta 0 0.9 --momentum shifted nesterov".split()
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert [(int(r[0]), float(r[1])) for r in rows] == [(t, b) for b in (0.0, 0.9) for t in taus]
    for tau_s, beta_s, shifted, nesterov in rows:
        tau, beta = int(tau_s), float(beta_s)
        # 8 decimals printed: the threshold lies within half a unit of the last place,
        # i.e. numpy's eigenvalues of docs/theory.md's polynomial are inside the unit
        # circle just below the printed value and outside just above it.
        for printed, rule in ((shifted, "shifted"), (nesterov, "nesterov")):
            q = float(printed)
            assert rho(poly(tau, beta, q - 6e-9, rule)) < 1 < rho(poly(tau, beta, q + 6e-9, rule))
        if beta == 0.0:  # plain delayed SGD: 2 sin(pi / (2 (2 tau + 1))) (docs/theory.md section 7)
            assert float(shifted) == pytest.approx(2 * math.sin(math.pi / (4 * tau + 2)), abs=6e-9)
    by_key = {(int(r[0]), float(r[1])): r for r in rows}
    assert float(by_key[(1, 0.9)][2]) == pytest.approx(1 - 0.9**2, abs=6e-9)  # shifted tau=1
    assert float(by_key[(0, 0.9)][3]) == pytest.approx(3.8 / 2.8, abs=6e-9)  # nesterov tau=0


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

    from stability.networks import examples
    from stability.networks.checkpoints import save_npz

    root = tmp_path_factory.mktemp("userpkg")
    minimum = examples.train_to_minimum(n=64, hidden=8, dtype=jnp.float64)
    save_npz(root / "ckpt.npz", minimum.params)
    save_npz(root / "concave.npz", {"w": np.full(3, 0.5)})
    (root / "usermodel.py").write_text(
        textwrap.dedent("""
        import jax.numpy as jnp
        from stability.networks import examples

        def make_model():
            return examples.DigitsMLP(hidden=8, param_dtype=jnp.float64)

        def batches():
            x, y = examples.load_digits(64, dtype=jnp.float64)
            return [(x[:40], y[:40]), (x[40:], y[40:])]

        def mse(outputs, labels):
            return examples.mean_squared_error(outputs, labels)

        FACTORY_CALLS = []

        def batch_iterator():  # an iterator factory: one fresh pass per call
            FACTORY_CALLS.append(1)
            yield from batches()

        def broken_factory():
            raise RuntimeError("cannot build the model")

        def exploding_loss(params, batch):  # a loss(params, batch) model that fails
            raise RuntimeError("the model exploded")

        def make_exploding():
            return exploding_loss

        def concave_loss(params, batch):  # Hessian -2 I: a maximum, not a minimum
            return -jnp.sum(jnp.square(params["w"])) * jnp.mean(batch)

        def make_concave():
            return concave_loss

        def ones():
            return [jnp.ones(4)]
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


def _user_check(root, *extra, data="usermodel:batches", model="usermodel:make_model"):
    """argv of `stability check` on the user project (checkpoint, MSE, tau 2)."""
    argv = ["check", "--model", model, "--data", data, "--tau", "2"]
    argv += ["--params", str(root / "ckpt.npz")]
    if model == "usermodel:make_model":
        argv += ["--loss", "usermodel:mse"]
    return [*argv, *extra]


def test_check_with_an_iterator_factory_reads_every_batch_on_every_pass(
    user_project, capsys, monkeypatch
):
    # --data names a generator function: each call is one fresh pass over the data.
    root, minimum = user_project
    monkeypatch.syspath_prepend(str(root))
    import usermodel

    usermodel.FACTORY_CALLS.clear()
    code, out, _ = _run(
        capsys, *_user_check(root, "--lr", "1e-4", "--json", data="usermodel:batch_iterator")
    )
    assert code == 0
    from_iterator = json.loads(out)
    # The Hessian is the mean over all 64 examples, one product per pass over the
    # factory's two batches (40 + 24 examples, weighted by size): the same as one
    # in-memory batch holding every example.
    assert len(usermodel.FACTORY_CALLS) >= from_iterator["num_hvps"] >= 2
    import stability as st

    loss_fn, params = st.loss_from_model(usermodel.make_model(), minimum.params, loss=usermodel.mse)
    x, y = usermodel.examples.load_digits(64, dtype=np.float64)
    direct = st.is_accessible(loss_fn, params, 2, 1e-4, data=(x, y), progress=False)
    assert from_iterator["num_hvps"] == direct.num_hvps
    assert from_iterator["sharpness"] == pytest.approx(direct.sharpness, rel=1e-10)
    assert from_iterator["verdict"] is direct.verdict is True


def test_check_with_a_batch_size_adds_the_mean_square_condition(user_project, capsys, monkeypatch):
    # The digits network of the fixture (64 examples, hidden 8) at 0.6x its
    # full-batch limit: stable for the full batch, but with batches of B = 4 (of
    # 64, without replacement: gamma = 60 / (4 * 63)) the non-uniformity of the
    # per-example Hessians makes the second moment grow, so the stochastic condition
    # binds. The printed report is that of is_accessible called directly.
    root, minimum = user_project
    monkeypatch.syspath_prepend(str(root))
    import usermodel

    import stability as st

    loss_fn, params = st.loss_from_model(usermodel.make_model(), minimum.params, loss=usermodel.mse)
    full = st.is_accessible(loss_fn, params, 2, 1e-3, data=usermodel.batches(), progress=False)
    lr = 0.6 * full.max_stable_lr
    argv = _user_check(root, "--lr", repr(lr), "--batch-size", "4", "--quiet")
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    direct = st.is_accessible(loss_fn, params, 2, lr, data=usermodel.batches(), batch_size=4,
                              progress=False)  # fmt: skip
    assert direct.verdict is False and direct.binding == "stochastic"
    assert direct.certified_by == "mean_square" and direct.fraction_of_limit < 0.61
    assert direct.variance_factor == pytest.approx(60 / (4 * 63), rel=1e-15)
    assert direct.num_examples == 64 and direct.nonuniformity > 0
    lines = out.splitlines()
    assert lines[0] == "Accessibility: NOT ACCESSIBLE"
    assert "  binding           stochastic condition" in lines
    assert "  mini-batch        B=4 of n=64, without replacement (variance factor 0.2381)" in lines
    s_line = f"  non-uniformity    s={direct.nonuniformity:.6g} along the sharp direction"
    assert any(line.startswith(s_line) for line in lines)
    assert out.strip() == str(direct).strip()  # every number as is_accessible reports it
    # --json and --replacement (gamma = 1 / B); --num-examples overrides the count
    argv = _user_check(root, "--lr", repr(lr), "--batch-size", "4", "--replacement",
                       "--num-examples", "64", "--json")  # fmt: skip
    code, out, _ = _run(capsys, *argv)
    report = json.loads(out)
    assert code == 0 and report["replacement"] is True and report["variance_factor"] == 0.25
    assert report["verdict"] is False and report["binding"] == "stochastic"
    assert report["nonuniformity"] == pytest.approx(direct.nonuniformity, rel=1e-12)


def test_check_exits_3_when_the_verdict_is_undecided(user_project, capsys, monkeypatch):
    # Two products: the top Ritz value is far below the limit but not converged, and
    # the random-start bound needs more products: neither stable nor unstable.
    root, _ = user_project
    monkeypatch.syspath_prepend(str(root))
    code, out, err = _run(capsys, *_user_check(root, "--lr", "1e-4", "--max-hvps", "2", "--json"))
    assert code == 3 and err == ""
    report = json.loads(out)
    assert report["verdict"] is None and report["certified_by"] is None
    assert report["num_hvps"] == 2 and report["sharpness_upper_bound"] is None
    assert report["sharpness"] + report["sharpness_error"] < report["max_stable_sharpness"]
    assert "has not converged after 2 Hessian-vector products" in report["reason"]
    code, out, _ = _run(capsys, *_user_check(root, "--lr", "1e-4", "--max-hvps", "2", "--quiet"))
    assert code == 3 and out.startswith("Accessibility: UNDECIDED\n")


@pytest.mark.parametrize(
    "model, data, message",
    [
        ("usermodel:broken_factory", "usermodel:batches", "RuntimeError: cannot build the model"),
        ("usermodel:make_exploding", "usermodel:batches", "RuntimeError: the model exploded"),
    ],
)
def test_check_exits_1_when_the_users_model_raises(
    user_project, capsys, monkeypatch, model, data, message
):
    root, _ = user_project
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("STABILITY_DEBUG", raising=False)
    argv = _user_check(root, "--lr", "0.1", "--quiet", model=model, data=data)
    code, out, err = _run(capsys, *argv)
    assert code == 1 and out == "", err
    assert err == f"stability check: error: {message} (set STABILITY_DEBUG=1 for the traceback)\n"
    # STABILITY_DEBUG: the user's exception itself propagates, with its traceback
    monkeypatch.setenv("STABILITY_DEBUG", "1")
    with pytest.raises(RuntimeError, match=message.split(": ", 1)[1]):
        main(argv)


def test_check_json_of_a_maximum_writes_infinite_and_negative_numbers(
    user_project, capsys, monkeypatch
):
    # Every Hessian eigenvalue is -2: the sharp side is trivially stable, but it is
    # no minimum (with --require-minimum the verdict is False), the max stable lr
    # is unbounded (JSON has no inf: null) and each direction grows by
    # the radius of delayed SGD at q = -2 lr.
    root, _ = user_project
    monkeypatch.syspath_prepend(str(root))
    argv = ["check", "--model", "usermodel:make_concave", "--params", str(root / "concave.npz")]
    argv += ["--data", "usermodel:ones", "--tau", "2", "--lr", "0.1", "--json"]
    for extra, verdict in (([], True), (["--require-minimum"], False)):
        code, out, err = _run(capsys, *argv, *extra)
        assert code == 0, err
        report = json.loads(out)
        assert report["verdict"] is verdict and report["is_minimum"] is False
        assert report["sharpness"] == pytest.approx(-2.0, rel=1e-12)
        assert report["smallest_eigenvalue"] == pytest.approx(-2.0, rel=1e-12)
        assert report["max_stable_lr"] is None
        assert report["fraction_of_limit"] == pytest.approx(
            -2.0 * 0.1 / (2 * math.sin(math.pi / 10))
        )
        grows = rho(poly(2, 0.0, -0.2, "gd"))
        assert grows > 1
        assert report["spectral_radius"] == pytest.approx(grows, rel=1e-9)
        assert report["smallest_growth"] == pytest.approx(grows, rel=1e-9)
    assert report["certified_by"] == "ritz_value" and "not a minimum" in report["reason"]


def test_stability_debug_leaves_input_errors_one_line(user_project, capsys, monkeypatch):
    root, _ = user_project
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("STABILITY_DEBUG", "1")
    code, _, err = _run(capsys, *_user_check(root, "--lr", "-0.1"))
    assert code == 2 and err == "stability check: error: --lr must be > 0; got -0.1\n"


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
            "stability.app.cli",
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
    "override, message",
    [
        ({"--lr": "-0.1"}, "lr must be > 0; got -0.1"),
        ({"--tau": "-3"}, "tau must be a non-negative integer; got -3"),
        ({"--beta": "1.0"}, "beta must be in [0, 1); got 1.0"),
        ({"--momentum": "adam"}, "momentum must be one of"),
        ({"--model": "nosuchmodule:make"}, "--model: cannot import module 'nosuchmodule'"),
        ({"--model": "usermodel:nil"}, "--model: module 'usermodel' has no attribute 'nil'"),
        ({"--data": "usermodel"}, "--data must look like PKG.MODULE:NAME; got 'usermodel'"),
        ({"--loss": "usermodel:nope"}, "--loss: module 'usermodel' has no attribute 'nope'"),
        ({"--call-kwargs": "[1]"}, "--call-kwargs must be a JSON object; got '[1]'"),
        ({"--batch-size": "0"}, "batch_size must be an integer >= 1; got 0"),
        ({"--num-examples": "10"}, "--num-examples needs --batch-size"),
        (
            {"--batch-size": "65", "--num-examples": "64"},
            "batch_size must be <= num_examples (64) when sampling without replacement; got 65",
        ),
    ],
)
def test_check_bad_input_is_one_line(user_project, capsys, monkeypatch, override, message):
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
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    # one line: the command, then the argument and the value that was wrong
    assert err.startswith("stability check: error: ") and err.endswith("\n")
    assert len(err.splitlines()) == 1
    assert message in err, err


def test_check_params_that_do_not_match_the_model(user_project, capsys, monkeypatch, tmp_path):
    import numpy as np

    from stability.networks.checkpoints import save_npz

    root, _ = user_project
    monkeypatch.syspath_prepend(str(root))
    save_npz(tmp_path / "wrong.npz", {"params": {"Dense_0": {"kernel": np.zeros((3, 3))}}})
    code, _, err = _run(capsys, *_check_argv(tmp_path / "wrong.npz"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _section(out, title, columns):
    """The table rows (``columns`` fields, the first an integer) of the demo's
    section whose heading contains ``title``."""
    block = out.split(title, 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in block.splitlines()[1:]]
    return [r for r in rows if len(r) == columns and r[0].isdigit()]


def test_demo_quick_prints_what_the_oracles_predict_and_writes_the_figure(tmp_path, capsys):
    import struct

    code, out, _ = _run(capsys, "demo", "--quick", "--out", str(tmp_path))
    assert code == 0
    # The figure: a PNG of the 13 x 9.5 inch figure at 110 dpi (IHDR: width, height).
    data = (tmp_path / "demo.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1430, 1045)

    configs = {"sgd": ("gd", 0.0), "heavy_ball": ("heavy_ball", 0.9)}
    configs |= {"nesterov": ("nesterov", 0.9), "shifted": ("shifted", 0.9)}
    q_max = {
        (tau, label): q_max_oracle(tau, beta, rule)
        for tau in (0, 1, 4, 16)
        for label, (rule, beta) in configs.items()
    }
    # 1. The threshold table (6 decimals).
    table = _section(out, "Max stable q", 5)
    assert [int(r[0]) for r in table] == [0, 1, 4, 16]
    for row in table:
        for label, printed in zip(configs, row[1:], strict=True):
            assert abs(float(printed) - q_max[(int(row[0]), label)]) <= 6e-7, (row, label)
    # 2. The verdicts at lr0 = 0.9 x the tau = 0 limit of plain SGD: lr0 * sharpness
    # = 1.8 whatever the sharpness, so each rule's fraction of its limit is
    # 1.8 (1 - beta) / q_max and the lrs are multiples of lr0.
    lr0 = float(out.split("Verdicts at effective lr ", 1)[1].split()[0])
    verdicts = _section(out, "== Verdicts", 6)
    assert len(verdicts) == 16
    for tau_s, label, word, percent, max_lr, paper_lr in verdicts:
        tau, (_, beta) = int(tau_s), configs[label]
        fraction = 1.8 * (1 - beta) / q_max[(tau, label)]
        assert float(percent.rstrip("%")) == pytest.approx(100 * fraction, abs=0.051)
        assert word == ("yes" if fraction < 1 else "no"), (tau, label, fraction)
        assert float(max_lr) == pytest.approx(lr0 * q_max[(tau, label)] / 1.8, rel=5e-5)
        ratio = q_max[(tau, label)] / q_max[(0, label)]  # the paper's rule
        assert float(paper_lr) == pytest.approx(lr0 * (1 - beta) * ratio, rel=5e-5)
    # 3. The simulations at 0.8x and 1.25x the max stable lr: the predicted radius is
    # that of q = factor * q_max; the first run stays, the second leaves at about it.
    sims = _section(out, "== Simulated", 11)
    assert len(sims) == 4
    for tau_s, label, factor, *_, verdict, stayed, rho_pred, growth in sims:
        tau, (rule, beta) = int(tau_s), configs[label]
        want = rho(poly(tau, beta, float(factor) * q_max[(tau, label)], rule))
        assert float(rho_pred) == pytest.approx(want, abs=6e-7)
        if float(factor) < 1:
            assert (verdict, stayed, growth) == ("yes", "True", "-")
        else:
            assert (verdict, stayed) == ("no", "False")
            assert math.log(float(growth)) == pytest.approx(math.log(want), rel=0.1)
    assert "verdict and simulation agree in 4 of 4 runs" in out


def test_check_loads_an_nnx_checkpoint_into_the_module(tmp_path, capsys, monkeypatch):
    from flax import nnx

    from stability.networks.checkpoints import save_npz

    (tmp_path / "nnxuser.py").write_text(
        textwrap.dedent("""
        import jax.numpy as jnp
        from flax import nnx
        from stability.networks import examples

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
    # A linen variables dict given to the nnx model says so (issue 21, item 11).
    save_npz(tmp_path / "linen.npz", {"params": {"Dense_0": {"kernel": np.zeros((64, 8))}}})
    code, _, err = _run(capsys, *argv, "--params", str(tmp_path / "linen.npz"))
    assert code == 2 and "looks like a linen variables dict" in err
