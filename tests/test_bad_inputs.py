"""One catalogue of bad inputs, tried on every public entry point (issue 21).

For each argument of each function: NaN, inf, a negative, a huge number, a string, None,
a boolean, an empty array, a wrong-length array. Each call must either raise one
ValueError/TypeError whose message names the argument, or answer with finite numbers
(e.g. a huge delay that the library handles). Nothing else: no IndexError, no
OverflowError, no LinAlgError, no silent NaN. The command line gets the same
catalogue: exit status 2 and one line on stderr naming the option.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import stability as st
from stability.app.cli import main

CATALOGUE = {
    "nan": math.nan,
    "inf": math.inf,
    "negative": -3.0,
    "huge": 10**30,
    "string": "0.3",
    "none": None,
    "bool": True,
    "empty": np.zeros(0),
    "matrix": np.ones((2, 2)),
}


def _quadratic(p):
    return 0.5 * jnp.sum(jnp.arange(1.0, 4.0) * p["x"] ** 2)


X = {"x": jnp.ones(3)}

# name -> (function, valid keyword arguments, the arguments to spoil)
ENTRY_POINTS = {
    "max_stable_sharpness": (st.max_stable_sharpness, dict(lr=0.1, tau=4, beta=0.5),
                             ("lr", "tau", "beta", "momentum")),
    "max_stable_lr": (st.max_stable_lr, dict(sharpness=2.0, tau=4, beta=0.5),
                      ("sharpness", "tau", "beta", "momentum")),
    "spectral_radius": (st.spectral_radius, dict(sharpness=2.0, lr=0.1, tau=4, beta=0.5),
                        ("sharpness", "lr", "tau", "beta", "momentum")),
    "stability_threshold": (st.stability_threshold, dict(tau=4, beta=0.5),
                            ("tau", "beta", "momentum")),
    "lr_for_delay": (st.lr_for_delay, dict(lr=0.1, tau=4), ("lr", "tau", "from_tau", "beta")),
    "recommend_momentum": (st.recommend_momentum, dict(tau=4, effective_lr=0.1),
                           ("tau", "effective_lr")),
    "variance_factor": (st.variance_factor, dict(batch_size=4, num_examples=100),
                        ("batch_size", "num_examples")),
    "delay_distribution": (st.delay_distribution, dict(probabilities=[0.5, 0.5]),
                           ("probabilities",)),
    "fixed_delay": (st.fixed_delay, dict(tau=3), ("tau",)),
    "round_robin": (st.round_robin, dict(num_workers=3), ("num_workers",)),
    "random_order": (st.random_order, dict(num_workers=3), ("num_workers",)),
    "mean_square_threshold": (st.mean_square_threshold, dict(relative_noise=0.1, tau=2),
                              ("relative_noise", "tau", "beta")),
    "hessian_spectrum": (st.hessian_spectrum, dict(loss=_quadratic, params=X, progress=False),
                         ("k", "tol", "max_hvps", "seed", "memory_budget", "params")),
    "is_accessible": (st.is_accessible, dict(model=_quadratic, params=X, tau=2, lr=0.1,
                                             progress=False),
                      ("tau", "lr", "beta", "momentum", "max_hvps", "tol",
                       "failure_probability")),
    "SharpnessTracker": (st.SharpnessTracker, dict(loss=_quadratic, lr=0.1),
                         ("lr", "tau", "beta", "every", "tol", "max_hvps")),
}  # fmt: skip

CASES = [
    (fn_name, arg, bad)
    for fn_name, (_, _, args) in ENTRY_POINTS.items()
    for arg in args
    for bad in CATALOGUE
]


def _finite(value) -> bool:
    """No NaN among the numbers of ``value`` (a number, an array or a NamedTuple of
    them; inf is an answer, e.g. an unbounded lr; objects are tested elsewhere)."""
    leaves = [value] if not isinstance(value, tuple) else list(value)
    for leaf in leaves:
        if leaf is None or isinstance(leaf, (str, bool, dict)):
            continue
        try:
            arr = np.asarray(leaf, dtype=float)
        except (TypeError, ValueError):
            continue
        if arr.size and np.any(np.isnan(arr)):
            return False
    return True


@pytest.mark.parametrize("fn_name, arg, bad", CASES)
def test_a_bad_argument_is_named_or_answered(fn_name, arg, bad):
    fn, kwargs, _ = ENTRY_POINTS[fn_name]
    kwargs = dict(kwargs)
    if arg == "params":
        kwargs[arg] = {"x": CATALOGUE[bad]} if CATALOGUE[bad] is not None else None
    else:
        kwargs[arg] = CATALOGUE[bad]
    try:
        out = fn(**kwargs)
    except (ValueError, TypeError) as err:
        text = str(err)
        assert arg in text or arg.replace("_", " ") in text, (fn_name, arg, bad, text)
        assert "\n" not in text.strip() or len(text) < 400, text
        return
    assert _finite(out), (fn_name, arg, bad, out)


CLI_CASES = [
    ("table", "--tau", ["nan", "-1", "1e40", "2147483648x", ""]),
    ("table", "--beta", ["nan", "inf", "-0.5", "1", "abc"]),
    ("table", "--momentum", ["adam", ""]),
    ("check", "--tau", ["-1", "1.5", "abc"]),
    ("check", "--lr", ["nan", "inf", "-0.1", "0", "abc"]),
    ("check", "--beta", ["nan", "1.0", "-1"]),
    ("check", "--momentum", ["adam"]),
    ("check", "--max-hvps", ["0", "-5", "abc"]),
    ("experiment", "name", ["nope"]),
]


@pytest.mark.parametrize(
    "command, option, value", [(c, o, v) for c, o, vs in CLI_CASES for v in vs]
)
def test_a_bad_option_exits_2_with_one_line(capsys, tmp_path, monkeypatch, command, option, value):
    if command == "check":
        (tmp_path / "badmodel.py").write_text(
            "import jax.numpy as jnp\n"
            "def loss(p, batch):\n    return 0.5 * jnp.sum(p ** 2) * jnp.mean(batch)\n"
            "def make():\n    return loss\n"
            "def batches():\n    return jnp.ones(4)\n"
        )
        monkeypatch.chdir(tmp_path)
        argv = ["check", "--model", "badmodel:make", "--data", "badmodel:batches",
                "--tau", "2", "--lr", "0.1", option, value]  # fmt: skip
    elif option == "name":
        argv = [command, value]
    else:
        argv = [command, option, value]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    name = option.lstrip("-").replace("-", "_")
    assert option in err or name in err or "invalid choice" in err, err
