"""The command line's edges (issue 21, items 8, 10, 11, 14, 16): help, exit codes,
one-line errors, Ctrl-C, the import path, a missing checkpoint."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from stability.app import cli
from stability.app.cli import main

MODEL = textwrap.dedent("""
    import time
    import jax.numpy as jnp
    from flax import nnx
    from stability.networks import examples

    def make_model():
        return examples.NnxDigitsMLP(hidden=4, rngs=nnx.Rngs(1), param_dtype=jnp.float64)

    def batches():
        return examples.load_digits(32, dtype=jnp.float64)

    def slow():  # a loader that takes its time: each batch sleeps a minute
        def passes():
            x, y = examples.load_digits(32, dtype=jnp.float64)
            for i in range(2):
                time.sleep(60.0)
                yield x[16 * i : 16 * (i + 1)], y[16 * i : 16 * (i + 1)]
        return passes()
""")


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "hardmodel.py").write_text(MODEL)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_imports_no_jax_and_lists_options_and_exit_codes():
    # A fresh process: `stability --help` must answer before JAX is imported.
    probe = (
        "import sys\nfrom stability.app.cli import main\n"
        "code = main(['--help'])\nprint('JAX' if 'jax' in sys.modules else 'NOJAX', code)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.strip().endswith("NOJAX 0") and "exit status:" in out
    parser = cli._build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "check" in a.choices)
    for name, sub in subparsers.choices.items():
        assert "130" in sub.format_help(), name
        for action in sub._actions:
            assert action.help, (name, action.dest)


def test_usage_errors_are_one_line_with_exit_2(capsys):
    code, _, err = _run(capsys, "check", "--model", "a:b", "--data", "c:d", "--tau", "1.5",
                        "--lr", "1")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--tau" in err and "1.5" in err


def test_data_naming_a_model_is_refused(project, capsys):
    code, _, err = _run(capsys, "check", "--model", "hardmodel:make_model", "--data",
                        "hardmodel:make_model", "--tau", "1", "--lr", "0.1")  # fmt: skip
    assert code == 2 and "--data" in err and "Flax module" in err
    assert len(err.strip().splitlines()) == 1


def test_without_params_the_initial_weights_are_announced(project, capsys):
    code, _, err = _run(capsys, "check", "--model", "hardmodel:make_model", "--data",
                        "hardmodel:batches", "--tau", "1", "--lr", "0.1", "--quiet")  # fmt: skip
    assert code in (0, 3) and "no --params: judging the initial weights" in err


def test_the_current_directory_is_on_the_path_only_while_importing(project):
    before = list(sys.path)
    assert cli._resolve("hardmodel:make_model", "--model") is not None
    assert sys.path == before and str(project) not in sys.path


def test_ctrl_c_exits_130_with_one_line(project):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from stability.app.cli import main; "
         "sys.exit(main(sys.argv[1:]))", "check", "--model", "hardmodel:make_model",
         "--data", "hardmodel:slow", "--tau", "1", "--lr", "0.1", "--quiet", "--max-hvps",
         "50"],
        cwd=project, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Interrupt while the run is under way (in its loader's first minute-long batch; a
    # run that decides after a few products would otherwise end before the signal).
    time.sleep(8.0)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "stability check: interrupted"
    assert "Traceback" not in err


def test_library_input_errors_and_bugs_are_told_apart():
    def library():
        from stability.validation import check_lr

        check_lr(-1.0)

    def bug():
        np.zeros(2) @ np.zeros(3)  # a ValueError raised inside numpy

    for fn, mine in ((library, True), (bug, False)):
        try:
            fn()
        except ValueError as err:
            assert cli._raised_by_library(err) is mine


def test_advice_names_the_command_line_flags():
    text = ("data: a dict batch must name its inputs with one key; ...: pass "
            "batch_keys=(input_key, label_key)")  # fmt: skip
    assert cli._cli_words(text).endswith("pass --batch-keys INPUT_KEY LABEL_KEY")
    assert "--loss stability:mean_squared_error" in cli._cli_words(
        "or pass loss=stability.mean_squared_error (or your own loss)"
    )
