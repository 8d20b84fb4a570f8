"""`stability table --diloco`: the local SGD / DiLoCo outer loop at one sharpness
(issue 23; stability/theory/local_sgd.py, docs/theory.md section 17)."""

import json
import math

import numpy as np
import pytest
from stability_oracles import bisect_threshold, dist_poly, poly

import stability as st
from stability.app import cli
from stability.app.cli import main
from stability.theory import local_sgd
from stability.theory.rules import host_float64, rule_names


def _run(capsys, *argv):
    code = main(["table", "--diloco", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, *argv):
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    # JSON numbers or null only: a NaN/Infinity token would fail here.
    return json.loads(out, parse_constant=lambda token: pytest.fail(f"{token} in JSON"))


def test_the_parser_choices_are_the_librarys():
    assert set(cli.LOCAL_SGD_RULES) <= set(rule_names())
    assert cli.LOCAL_SGD_SCHEDULES == local_sgd.SCHEDULES


CONFIGS = [
    # (argv, LocalSGD fields)
    ([], dict()),
    (["--outer-rule", "gd"], dict(outer="gd")),
    (["--outer-rule", "heavy_ball"], dict(outer="heavy_ball")),
    (["--inner-momentum", "0.5"], dict(inner="heavy_ball", inner_beta=0.5)),
    (
        ["--inner-rule", "nesterov", "--inner-momentum", "0.8", "--keep-inner-state"],
        dict(inner="nesterov", inner_beta=0.8, reset=False),
    ),
    (["--schedule", "eager", "--workers", "4"], dict(schedule="eager", workers=4)),
    (
        "--schedule streaming --overlap 2 --keep-inner-state --inner-momentum 0.9".split(),
        dict(schedule="streaming", overlap=2, reset=False, inner="heavy_ball", inner_beta=0.9),
    ),
]


@pytest.mark.parametrize("argv, fields", CONFIGS)
def test_json_rows_are_the_librarys_numbers(capsys, argv, fields):
    outer_rule = fields.get("outer", "nesterov")
    momenta = [0.0] if outer_rule == "gd" else [0.0, 0.9]
    rows = _json(capsys, "--sharpness", "3", "--inner-lr", "0.05", "--inner-steps", "1", "7",
                 "--outer-momentum", *map(str, momenta), "--outer-lr", "0.6",
                 *argv)  # fmt: skip
    assert [(r["inner_steps"], r["outer_momentum"]) for r in rows] == [
        (h, mu) for h in (1, 7) for mu in momenta
    ]
    for row in rows:
        config = st.LocalSGD(inner_lr=0.05, inner_steps=row["inner_steps"], **fields)
        mu = row["outer_momentum"]
        with host_float64():
            expected = st.max_stable_outer_lr(config, 3.0, mu)
            kappa = st.pseudo_gradient_factor(config, 3.0)
            radius = st.round_spectral_radius(config, 3.0, 0.6, mu)
        assert row["max_stable_outer_lr"] == pytest.approx(expected, rel=1e-12)
        assert row["kappa"] == pytest.approx(kappa, rel=1e-12)
        assert row["outer_lr"] == 0.6
        assert row["round_spectral_radius"] == pytest.approx(radius, rel=1e-12)
        assert row["max_stable_outer_lr"] > 0


def test_reset_thresholds_against_closed_forms_and_numpy_roots(capsys):
    # Inner GD, state reset: kappa = 1 - (1 - lr a)^H and the outer rule at q = lr_out
    # kappa, so lr_out_max = q_max / kappa; Nesterov at delay 0: q_max = 2 (1 + mu) /
    # (1 + 2 mu) (docs/theory.md section 7).
    lr, a = 0.1, 2.0
    rows = _json(capsys, "--sharpness", "2", "--inner-lr", "0.1", "--inner-steps", "1", "3",
                 "10", "--outer-momentum", "0", "0.9")  # fmt: skip
    for row in rows:
        h, mu = row["inner_steps"], row["outer_momentum"]
        kappa = 1 - (1 - lr * a) ** h
        assert row["kappa"] == pytest.approx(kappa, rel=1e-13)
        assert row["max_stable_outer_lr"] == pytest.approx(
            2 * (1 + mu) / (1 + 2 * mu) / kappa, rel=1e-12
        )
        assert row["outer_lr"] is None and row["round_spectral_radius"] is None
    # eager (delays 0 and 1 with probabilities 1/M, (M-1)/M) and streaming (delay 2):
    # bisection on numpy eigenvalues of the outer rule's polynomial at q = lr_out kappa.
    for argv, make in (
        (["--schedule", "eager", "--workers", "3"],
         lambda q: dist_poly([1 / 3, 2 / 3], 0.9, q, "heavy_ball")),
        (["--schedule", "streaming", "--overlap", "2"], lambda q: poly(2, 0.9, q, "heavy_ball")),
    ):  # fmt: skip
        (row,) = _json(capsys, "--sharpness", "2", "--inner-lr", "0.1", "--inner-steps", "3",
                       "--outer-rule", "heavy_ball", *argv)  # fmt: skip
        kappa = 1 - (1 - lr * a) ** 3
        assert row["outer_momentum"] == 0.9  # the default outer momentum
        assert row["max_stable_outer_lr"] * kappa == pytest.approx(bisect_threshold(make), rel=1e-9)


def _kept_round_matrix(lr, beta, a, h, outer_lr, mu):
    """One DiLoCo round, simulated step by step: state (x, v, m) = global weight, the
    kept inner heavy-ball buffer, the outer Nesterov buffer; columns = the round
    applied to the unit vectors."""

    def round_(x, v, m):
        w = x
        for _ in range(h):
            v = beta * v + a * w
            w = w - lr * v
        delta = x - w
        m = mu * m + delta
        return x - outer_lr * (delta + mu * m), v, m

    return np.array([round_(*e) for e in np.eye(3)]).T


def test_kept_state_against_a_simulated_round(capsys):
    lr, beta, a, h, mu = 0.1, 0.9, 2.0, 5, 0.9
    argv = ["--sharpness", "2", "--inner-lr", "0.1", "--inner-momentum", "0.9",
            "--keep-inner-state", "--inner-steps", "5", "--outer-lr", "0.5"]  # fmt: skip
    (row,) = _json(capsys, *argv)
    radius = np.max(np.abs(np.linalg.eigvals(_kept_round_matrix(lr, beta, a, h, 0.5, mu))))
    assert row["round_spectral_radius"] == pytest.approx(radius, rel=1e-9)
    lo, hi = 0.0, 10.0
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        m = _kept_round_matrix(lr, beta, a, h, mid, mu)
        lo, hi = (mid, hi) if np.max(np.abs(np.linalg.eigvals(m))) < 1 else (lo, mid)
    assert row["max_stable_outer_lr"] == pytest.approx(lo, rel=1e-8)


def test_text_table_prints_the_json_numbers(capsys):
    argv = ["--sharpness", "2", "--inner-lr", "0.1", "--inner-steps", "1", "10", "100",
            "--outer-momentum", "0", "0.9", "--outer-lr", "0.7"]  # fmt: skip
    rows = _json(capsys, *argv)
    code, out, err = _run(capsys, *argv)
    assert code == 0 and err == ""
    assert "radius@0.7" in out and "max outer lr" in out and "kappa" in out
    lines = [line.split() for line in out.splitlines() if line[:6].strip().isdigit()]
    assert len(lines) == len(rows) == 6
    for cells, row in zip(lines, rows, strict=True):
        assert (int(cells[0]), float(cells[1])) == (row["inner_steps"], row["outer_momentum"])
        for text, key in zip(cells[2:], ("kappa", "max_stable_outer_lr", "round_spectral_radius"),
                             strict=True):  # fmt: skip
            assert float(text) == pytest.approx(row[key], abs=6e-9)
        # The threshold is the radius' crossing of 1: just below and above it.
        config = st.LocalSGD(inner_lr=0.1, inner_steps=row["inner_steps"])
        q, mu = row["max_stable_outer_lr"], row["outer_momentum"]
        with host_float64():
            assert st.round_spectral_radius(config, 2.0, q * (1 - 1e-6), mu) < 1
            assert st.round_spectral_radius(config, 2.0, q * (1 + 1e-6), mu) > 1


def test_no_stable_outer_lr_and_overflow(capsys):
    # An even H with lr a > 2 overshoots (kappa < 0): no outer lr is stable -> 0; a
    # sharpness so large that (1 - lr a)^H overflows gives null, never NaN.
    rows = _json(capsys, "--sharpness", "30", "--inner-lr", "0.1", "--inner-steps", "2",
                 "--outer-lr", "0.1")  # fmt: skip
    assert rows[0]["kappa"] == pytest.approx(-3.0) and rows[0]["max_stable_outer_lr"] == 0.0
    assert rows[0]["round_spectral_radius"] > 1
    rows = _json(capsys, "--sharpness", "1e300", "--inner-lr", "0.1", "--inner-steps", "10",
                 "--outer-lr", "0.1")  # fmt: skip
    assert rows[0]["kappa"] is None and rows[0]["round_spectral_radius"] is None
    code, out, _ = _run(capsys, "--sharpness", "1e300", "--inner-lr", "0.1", "--inner-steps",
                        "10", "--outer-lr", "0.1")  # fmt: skip
    assert code == 0 and "n/a" in out and "nan" not in out.lower()


def test_every_diloco_option_says_its_default_or_that_it_is_required():
    parser = cli._build_parser()
    table = next(a for a in parser._actions if a.choices and "table" in a.choices).choices["table"]
    flags = {flag for flag, _, _ in cli._LOCAL_SGD_DEFAULTS} | {"--diloco"}
    seen = set()
    for action in table._actions:
        for flag in set(action.option_strings) & flags:
            seen.add(flag)
            text = table._get_formatter()._expand_help(action)
            assert flag == "--diloco" or "default" in text or "required" in text, flag
            if action.choices:
                assert "choices" in text, flag
    assert seen == flags


BASE = ["--sharpness", "2", "--inner-lr", "0.1"]

BAD = [
    # (argv after `table --diloco`, the flag the one line must name)
    (["--inner-lr", "0.1"], "--sharpness"),
    (["--sharpness", "2"], "--inner-lr"),
    (["--sharpness", "nan", "--inner-lr", "0.1"], "--sharpness"),
    (["--sharpness", "inf", "--inner-lr", "0.1"], "--sharpness"),
    (["--sharpness", "1e400", "--inner-lr", "0.1"], "--sharpness"),
    (["--sharpness", "abc", "--inner-lr", "0.1"], "--sharpness"),
    *[(["--sharpness", "2", "--inner-lr", v], "--inner-lr") for v in ("0", "-1", "nan", "inf")],
    *[
        (BASE + ["--inner-steps", v], "--inner-steps")
        for v in ("0", "-2", "1.5", "abc", "10000001")
    ],
    *[(BASE + ["--inner-momentum", v], "--inner-momentum") for v in ("1", "-0.1", "nan")],
    (BASE + ["--inner-rule", "gd", "--inner-momentum", "0.5"], "--inner-momentum"),
    (BASE + ["--inner-rule", "adam"], "--inner-rule"),
    (BASE + ["--outer-rule", "shifted"], "--outer-rule"),
    *[(BASE + ["--outer-momentum", v], "--outer-momentum") for v in ("1", "-0.5", "inf", "")],
    (BASE + ["--outer-rule", "gd", "--outer-momentum", "0.9"], "--outer-momentum"),
    *[(BASE + ["--outer-lr", v], "--outer-lr") for v in ("0", "-0.7", "nan", "inf")],
    (BASE + ["--schedule", "async"], "--schedule"),
    (BASE + ["--workers", "4"], "--workers"),
    *[
        (BASE + ["--schedule", "eager", "--workers", v], "--workers")
        for v in ("0", "-1", "2.5", "100000000")
    ],
    (BASE + ["--schedule", "streaming"], "--overlap"),
    (BASE + ["--overlap", "2"], "--overlap"),
    *[
        (BASE + ["--schedule", "streaming", "--overlap", v], "--overlap")
        for v in ("0", "-1", "x", str(2**60))
    ],
    (BASE + ["--schedule", "streaming", "--overlap", "5000", "--outer-lr", "1"], "--overlap"),
    (BASE + ["--tau", "3"], "--tau"),
    (BASE + ["--beta", "0.9"], "--beta"),
    (BASE + ["--momentum", "nesterov"], "--momentum"),
]


@pytest.mark.parametrize("argv, flag", BAD)
def test_a_bad_option_exits_2_with_one_line_naming_it(capsys, argv, flag):
    code, out, err = _run(capsys, *argv)
    assert code == 2, (argv, out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and out == ""
    assert flag in err, err


@pytest.mark.parametrize("flag, value", [("--sharpness", "2"), ("--inner-steps", "3"),
                                         ("--keep-inner-state", None), ("--schedule", "eager"),
                                         ("--outer-lr", "0.5")])  # fmt: skip
def test_a_diloco_option_without_diloco_is_refused(capsys, flag, value):
    code = main(["table", flag] + ([value] if value else []))
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "--diloco" in err
    assert len(err.strip().splitlines()) == 1


def test_the_delayed_sgd_table_keeps_its_defaults(capsys):
    code = main(["table", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    assert sorted({r["tau"] for r in rows}) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert sorted({r["beta"] for r in rows}) == [0.0, 0.9]
    assert set(rows[0]) == {"tau", "beta", "heavy_ball", "nesterov", "shifted"}
    assert rows[0]["shifted"] == pytest.approx(2.0) and math.isfinite(rows[-1]["nesterov"])
