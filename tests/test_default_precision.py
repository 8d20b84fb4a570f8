"""JAX's default float32 (``jax_enable_x64`` off), as a new user runs the library.

Issue 21, items 1-3: Python scalars give float64 answers whatever x64 says; float32
arrays keep their dtype with an honest ``reliable`` flag; spectral radii for any delay
without a dense companion matrix, and what float32 can resolve of them; delays of
any size work or name tau. The conftest turns x64 on for the suite, so every call
here runs inside ``jax.enable_x64(False)``; the truths are float64 (closed forms of
docs/theory.md section 7, numpy roots and the float64 locus of stability_oracles).
"""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stability_oracles import np_locus_threshold, poly, rho

import stability as st
from stability.app.cli import main

RULES = ("heavy_ball", "nesterov", "shifted")


def float32_default():
    """JAX's default: x64 off (strict promotion stays on, as in the whole suite)."""
    return jax.enable_x64(False)


# ----------------------------------------------------------------------------
# Item 1: Python scalars in, float64 answers out


@pytest.mark.parametrize(
    "call, want",
    [
        # docs/theory.md section 7: shifted tau = 0 is 2 (1 + beta), tau = 1 is 1 - beta^2;
        # heavy ball tau = 1 is 1 - beta; plain SGD 2 sin(pi / (2 (2 tau + 1)))
        (lambda: st.max_stable_sharpness(1.0, 0, 0.9, momentum="shifted"), 3.8),
        (lambda: st.max_stable_sharpness(1.0, 1, 0.9, momentum="shifted"), 1 - 0.9**2),
        (lambda: st.max_stable_sharpness(0.5, 1, 0.9), (1 - 0.9) / 0.5),
        (lambda: st.max_stable_sharpness(1.0, 2), 2 * math.sin(math.pi / 10)),
        (lambda: st.max_stable_lr(2.0, 1, 0.99), (1 - 0.99) / 2.0),
        (lambda: st.stability_threshold(7, 0.0).q_max, 2 * math.sin(math.pi / 30)),
        (lambda: st.lr_for_delay(0.3, 16), 0.3 * math.sin(math.pi / 66)),
    ],
)
def test_python_scalars_give_float64_without_x64(call, want):
    with float32_default():
        got = call()
    assert type(got) is float
    # float32 was 3.799999952316284 for 3.8 (relative 1.3e-8)
    assert got == pytest.approx(want, rel=1e-13)


def test_python_scalar_results_equal_the_x64_ones():
    calls = [
        lambda: st.max_stable_sharpness(0.1, 8, 0.9, momentum="nesterov"),
        lambda: st.lr_for_delay(0.3, 7, from_tau=2, beta=0.6, momentum="shifted"),
        lambda: st.spectral_radius(0.7, 0.1, 8, 0.5),
        lambda: st.spectral_radius(0.7, 0.1, 1, momentum="nesterov"),
        lambda: st.max_stable_sharpness(1.0, st.random_order(3), 0.5),
    ]
    for call in calls:
        want = call()  # the suite's x64
        with float32_default():
            got = call()
        assert type(got) is float and got == pytest.approx(want, rel=1e-13)


def test_python_scalars_inside_a_float32_jit_are_float64_constants():
    with float32_default():
        f = jax.jit(lambda x: x * st.max_stable_sharpness(1.0, 0, 0.9, momentum="shifted"))
        out = f(jnp.ones(2, jnp.float32))
        assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), np.float32(3.8))


def test_recommend_momentum_prints_clean_numbers_without_x64():
    want = st.recommend_momentum(16, 0.1)
    with float32_default():
        rec = st.recommend_momentum(16, 0.1)
    assert (rec.momentum, rec.beta) == ("shifted", 0.99)
    # 0.1 * (1 - 0.99) in binary is 0.0010000000000000009
    assert rec.lr == 0.001 and repr(rec.lr) == "0.001"
    for row in rec.table:
        assert repr(row.lr) == repr(float(f"{0.1 * (1 - row.beta):.12g}"))
    for got, ref in zip(rec.table, want.table, strict=True):
        assert got.max_stable_sharpness == pytest.approx(ref.max_stable_sharpness, rel=1e-13)
    assert rec.max_stable_sharpness_no_momentum == pytest.approx(
        2 * math.sin(math.pi / 66) / 0.1, rel=1e-13
    )


def _table(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_table_prints_the_float64_values_without_x64(capsys):
    argv = "table --tau 0 1 2 --beta 0 0.9 --momentum shifted heavy_ball".split()
    with float32_default():
        text = _table(capsys, argv)
    # was 3.79999995, 0.19000007, 0.61803401
    rows = {(int(r[0]), float(r[1])): r[2:] for r in map(str.split, text.splitlines()[4:])}
    assert rows[(0, 0.9)] == ["3.80000000", "3.80000000"]
    assert rows[(1, 0.9)] == ["0.19000000", "0.10000000"]
    assert rows[(2, 0.0)][0] == f"{2 * math.sin(math.pi / 10):.8f}" == "0.61803399"
    # to the last printed digit: the same text as with x64
    assert _table(capsys, argv) == text
    with float32_default():
        rows = json.loads(_table(capsys, [*argv, "--json"]))
    by_key = {(r["tau"], r["beta"]): r for r in rows}
    assert by_key[(0, 0.9)]["shifted"] == pytest.approx(3.8, rel=1e-14)
    assert by_key[(1, 0.9)]["shifted"] == pytest.approx(1 - 0.81, rel=1e-13)


def test_float32_arrays_keep_their_dtype_and_flag_what_float32_cannot_resolve():
    from stability.theory.boundary_locus import RESOLUTION

    assert RESOLUTION == 1e-3
    taus = np.array([1, 2, 8, 64, 1000, 10**6])
    betas = np.array([0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999, 0.9999999])
    tt, bb = (x.reshape(-1) for x in np.meshgrid(taus, betas, indexing="ij"))
    for rule in RULES:
        with float32_default():
            t = st.stability_threshold(tt, jnp.asarray(bb, jnp.float32), momentum=rule)
            limit = st.max_stable_sharpness(jnp.float32(1.0), tt, jnp.asarray(bb, jnp.float32))
        assert t.q_max.dtype == jnp.float32 and limit.dtype == jnp.float32
        # the truth for the beta the user meant (not its float32 rounding)
        want = np_locus_threshold(tt, bb, rule)[0]
        err = np.abs(np.asarray(t.q_max, np.float64) / want - 1)
        ok = np.asarray(t.reliable)
        # honest: every value flagged reliable is within RESOLUTION of the float64 one
        assert err[ok].max() <= RESOLUTION, rule
        # beta = 0.999999 / 0.9999999 were 1.3 % / 19 % off while flagged reliable
        assert not ok[bb >= 0.999999].any()
        # and the flag is not idle: up to beta = 0.999 float32 is reliable
        assert ok[bb <= 0.999].all()
    assert np.isnan(np.asarray(limit)[bb >= 0.999999]).all()  # NaN where unflagged


# ----------------------------------------------------------------------------
# Item 2: spectral radii for any delay, float32 and float64


@pytest.mark.parametrize("tau", [300, 1000, 10**6, 10**9])
def test_float32_spectral_radius_for_any_delay(tau):
    # was a dense (tau + 2)^2 companion matrix: 10 s at 300, 4 TB at 1e6
    rule, beta = "shifted", 0.9
    q_max = st.stability_threshold(tau, beta, momentum=rule).q_max  # float64
    factors = np.array([0.5, 1 - 1e-3, 1 + 1e-3, 2.0])
    sharp = jnp.asarray(factors * q_max, jnp.float32)
    with float32_default():
        got = st.spectral_radius(sharp, jnp.float32(1.0), tau, jnp.float32(beta), momentum=rule)
        jitted = jax.jit(lambda s: st.spectral_radius(s, 1.0, tau, beta, momentum=rule))(sharp)
    assert got.dtype == jnp.float32 and jitted.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jitted))
    # stable exactly below q_max (the boundary locus, an independent computation)
    np.testing.assert_array_equal(np.asarray(got) < 1, factors < 1)
    if tau <= 1000:  # numpy roots of docs/theory.md's polynomial
        q = np.asarray(sharp, np.float64)
        want = [rho(poly(tau, beta, x, rule)) for x in q]
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-7)


@pytest.mark.parametrize("tau", [1000, 10**6])
def test_python_scalar_radius_is_float64_without_x64(tau):
    # 1 - rho ~ 1e-8: float32 rounded it to 1.0 and a certified-stable report said "grows"
    args = (1e-6, 1e-2, tau, 0.9)
    want = st.spectral_radius(*args)  # x64
    with float32_default():
        got = st.spectral_radius(*args)
    assert type(got) is float and got < 1
    assert got == pytest.approx(want, rel=1e-14)
    if tau == 1000:
        assert got == pytest.approx(rho(poly(tau, 0.9, 1e-8, "heavy_ball")), rel=1e-13)


def test_float32_radius_within_rounding_of_one_keeps_its_side():
    below, above = (
        np.nextafter(np.float32(1), np.float32(0)),
        np.nextafter(np.float32(1), np.float32(2)),
    )
    tau = 10**9
    q_max = st.stability_threshold(tau, 0.0).q_max
    with float32_default():
        # 1 - rho = 1e-11 (contracting) and rho - 1 ~ 3e-9 (growing): both round to 1.0
        got = st.spectral_radius(jnp.asarray([1e-11, 0.0, 2 * q_max], jnp.float32), 1.0, tau)
    np.testing.assert_array_equal(np.asarray(got), np.array([below, 1.0, above], np.float32))


def test_float64_arrays_above_the_host_delay_need_no_companion_matrix(monkeypatch):
    from stability.theory import companion

    def refuse(*args, **kwargs):
        raise AssertionError("a companion matrix was built")

    monkeypatch.setattr(companion, "companion_from_coefficients", refuse)
    monkeypatch.setattr(companion, "_host_fill", refuse)
    sharp = np.array([-0.5, 0.0, 1e-9, 1e-4, 0.3])
    for rule in RULES:
        got = np.asarray(st.spectral_radius(sharp, 0.01, 5000, 0.5, momentum=rule))
        assert got[1] == 1.0 and np.all(got[[0]] > 1) and np.all(got[2:4] < 1)
        with float32_default():
            got32 = np.asarray(st.spectral_radius(jnp.asarray(sharp, jnp.float32), 0.01, 5000, 0.5))
        assert np.all(np.isfinite(got32))


# ----------------------------------------------------------------------------
# Item 3: delays of any size


def test_delays_beyond_int32_do_not_wrap():
    big = np.array([2**31, 2**40, 10**12])
    gd = 2 * np.sin(np.pi / (2 * (2 * big.astype(np.float64) + 1)))
    with float32_default():
        q = st.max_stable_sharpness(jnp.float32(1.0), big)
        scalar = st.max_stable_sharpness(1.0, 2**31)
        huge = st.max_stable_sharpness(1.0, 10**12)
        lr = st.lr_for_delay(0.1, 2**31)
        radius = st.spectral_radius(0.5 * scalar, 1.0, 2**31)
    assert q.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(q, np.float64), gd, rtol=1e-6)  # was -5.5e-10
    assert scalar == pytest.approx(gd[0], rel=1e-12)
    assert huge == pytest.approx(gd[2], rel=1e-12)  # was an OverflowError naming nothing
    assert lr == pytest.approx(0.1 * gd[0] / 2, rel=1e-12)
    assert radius < 1


@pytest.mark.parametrize("tau", [10**30, 2**53 + 1, np.array([3, 2**60])])
def test_delays_too_large_name_tau(tau):
    with float32_default():
        for call in (
            lambda: st.max_stable_sharpness(1.0, tau),
            lambda: st.stability_threshold(tau, 0.5),
            lambda: st.lr_for_delay(0.1, tau),
        ):
            with pytest.raises(ValueError, match=r"tau must be at most 2\*\*53"):
                call()
        if np.ndim(tau) == 0:
            with pytest.raises(ValueError, match=r"tau must be at most 2\*\*53"):
                st.spectral_radius(1.0, 0.1, tau)


def _cli(*argv):
    # a fresh process: JAX's defaults, as a user's shell has them
    return subprocess.run(
        [sys.executable, "-m", "stability.app.cli", *argv], capture_output=True, text=True
    )


def test_cli_table_with_a_delay_beyond_int32():
    proc = _cli("table", "--tau", "2147483648", "10", "--beta", "0", "--momentum", "heavy_ball")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["2147483648", "10"]
    # was -5.5e-10: now 2 sin(pi / (2 (2 tau + 1))) to the printed digits
    assert rows[0][2] == f"{2 * math.sin(math.pi / (2 * (2 * 2**31 + 1))):.6e}"
    assert rows[1][2] == f"{2 * math.sin(math.pi / 42):.8f}"
    proc = _cli("table", "--tau", str(10**30))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"stability table: error: --tau must be at most 2**53 (about 9.0e15); got {10**30}"
    ]
