"""lr_for_delay and recommend_momentum."""

import mpmath
import numpy as np
import pytest
from stability_oracles import (
    mp_poly,
    schur_stable,
    transition_rho,
    transition_threshold,
)

import stability as st
from stability.theory.tuning import DEFAULT_BETAS, lr_for_delay, recommend_momentum


def test_lr_for_delay_plain_sgd_closed_form():
    tau = np.array([1, 2, 10, 1000, 10**5])
    got = np.asarray(lr_for_delay(0.4, tau))
    np.testing.assert_allclose(got, 0.4 * np.sin(np.pi / (4 * tau + 2)), rtol=1e-13)
    # ~ lr pi / (4 tau) at large tau
    assert got[-1] == pytest.approx(0.4 * np.pi / (4 * 10**5), rel=1e-5)


def test_lr_for_delay_preserves_accessible_set():
    for rule in ("heavy_ball", "nesterov", "shifted"):
        for beta in (0.0, 0.6, 0.95):
            lr = float(lr_for_delay(0.3, 7, from_tau=2, beta=beta, momentum=rule))
            before = float(st.max_stable_sharpness(0.3, 2, beta, momentum=rule))
            after = float(st.max_stable_sharpness(lr, 7, beta, momentum=rule))
            assert after == pytest.approx(before, rel=1e-12)
    dist = st.random_order(4)
    lr = float(lr_for_delay(0.3, dist))
    assert float(st.max_stable_sharpness(lr, dist)) == pytest.approx(
        float(st.max_stable_sharpness(0.3, 0)), rel=1e-9
    )


def test_recommend_momentum_follows_the_paper():
    rec = recommend_momentum(32, 0.01)
    # shifted momentum wins at large tau; heavy_ball/nesterov never beat beta = 0
    assert rec.momentum == "shifted" and rec.beta > 0
    assert rec.lr == pytest.approx(0.01 * (1 - rec.beta))
    assert rec.max_stable_sharpness > rec.max_stable_sharpness_no_momentum
    no_mom = float(st.max_stable_sharpness(0.01, 32))
    assert rec.max_stable_sharpness_no_momentum == pytest.approx(no_mom)
    best_row = max(rec.table, key=lambda r: r.max_stable_sharpness)
    assert rec.max_stable_sharpness == pytest.approx(best_row.max_stable_sharpness)
    for row in rec.table:
        want = float(st.max_stable_sharpness(row.lr, 32, row.beta, momentum=row.momentum))
        assert row.max_stable_sharpness == pytest.approx(want, rel=1e-12)
    only_hb = recommend_momentum(32, 0.01, momenta=("heavy_ball",))
    assert only_hb.beta == 0.0  # momentum 0 is best for heavy_ball at a fixed effective rate
    assert only_hb.max_stable_sharpness == pytest.approx(no_mom)


def test_recommend_momentum_at_tau_zero():
    # tau = 0: q_max = 2 (1 + beta) for heavy_ball, so per effective rate 2 (1+b)/(1-b) grows
    rec = recommend_momentum(0, 1.0, betas=[0.0, 0.5, 0.9], momenta=("heavy_ball",))
    assert rec.beta == 0.9
    assert rec.max_stable_sharpness == pytest.approx(2 * 1.9 / 0.1)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: lr_for_delay(-0.1, 3), "lr"),
        (lambda: lr_for_delay(0.1, 3, from_tau=-1), "from_tau"),
        (lambda: lr_for_delay(0.1, 3, beta=1.5), "beta"),
        (lambda: lr_for_delay(0.1, 3, momentum="foo"), "momentum"),
        (lambda: recommend_momentum(3, 0.0), "effective_lr"),
        (lambda: recommend_momentum(3, 0.1, betas=[0.5, 1.0]), "betas"),
        (lambda: recommend_momentum(3, 0.1, momenta=("adam",)), "momenta"),
        (lambda: recommend_momentum(2.5, 0.1), "tau"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# Independent checks: the thresholds below come from the test's own oracles (numpy
# eigenvalues of the update rules' state-space matrix; Schur-Cohn in exact arithmetic
# for 1 - beta down to 1e-6), never from stability.theory.boundary_locus.

TAU0_CLOSED_FORM = {  # q_max at tau = 0 (docs/theory.md section 7)
    "heavy_ball": lambda b: 2 * (1 + b),
    "shifted": lambda b: 2 * (1 + b),
    "nesterov": lambda b: (2 + 2 * b) / (1 + 2 * b),
}


def _on_threshold(stable, q, rel):
    """The oracle's verdict flips between q (1 - rel) and q (1 + rel)."""
    return stable(q * (1 - rel)) and not stable(q * (1 + rel))


def _eigen_stable(rule, tau, beta):
    """q -> spectral radius of the update rule's state-space matrix < 1."""
    return lambda q: transition_rho(rule, tau, beta, q) < 1


@pytest.mark.parametrize("rule", ("heavy_ball", "nesterov", "shifted"))
def test_lr_for_delay_moves_the_threshold_sharpness_exactly(rule):
    # The sharpness on the threshold of (lr0, tau = 0) is the closed form q0 / lr0; the
    # rule's claim is that at (lr_for_delay(lr0, tau), tau) the SAME sharpness is on the
    # threshold: the state-space matrix's spectral radius crosses 1 there (to 1e-9).
    lr0 = 0.3
    for beta in (0.0, 0.6, 0.95):
        sharp = TAU0_CLOSED_FORM[rule](beta) / lr0
        assert _on_threshold(_eigen_stable(rule, 0, beta), lr0 * sharp, 1e-9)
        for tau in (1, 7, 30):
            lr = lr_for_delay(lr0, tau, beta=beta, momentum=rule)
            assert _on_threshold(_eigen_stable(rule, tau, beta), lr * sharp, 1e-9), (beta, tau)
    # from_tau != 0: the sharpness on the threshold at (lr0, from_tau = 3), found by the
    # oracle alone (bisection on the eigenvalues), is on the threshold at the new (lr, tau)
    sharp = transition_threshold(rule, 3, 0.8) / lr0
    lr = lr_for_delay(lr0, 12, from_tau=3, beta=0.8, momentum=rule)
    assert _on_threshold(_eigen_stable(rule, 12, 0.8), lr * sharp, 1e-9)


@pytest.mark.parametrize("rule", ("heavy_ball", "nesterov", "shifted"))
def test_lr_for_delay_extreme_momentum_against_schur_cohn(rule):
    # 1 - beta = 1e-4 and 1e-6 (roots 1 and beta nearly coincide: numpy eigenvalues are
    # not accurate enough): the new point is on the threshold to 1e-10, decided exactly.
    lr0 = 0.05
    for gap in (1e-4, 1e-6):
        beta = 1 - gap
        sharp = TAU0_CLOSED_FORM[rule](beta) / lr0
        for tau in (1, 50):
            lr = lr_for_delay(lr0, tau, beta=beta, momentum=rule)
            with mpmath.workdps(60):
                q = mpmath.mpf(lr) * mpmath.mpf(sharp)

                def stable(x, tau=tau, beta=beta):
                    return schur_stable(mp_poly(tau, beta, x, rule))

                assert _on_threshold(stable, q, mpmath.mpf(1e-10)), (gap, tau)


def test_recommend_momentum_is_the_best_on_a_brute_force_grid():
    # Every (rule, beta) candidate's threshold from the oracle (bisection on the spectral
    # radius of the state-space matrix, rtol 1e-8); the recommendation must be the
    # oracle's maximiser of q_max / lr at the fixed effective rate, and every table row
    # must carry the oracle's value.
    # (the default grid: a new grid size would compile the threshold kernel again, ~3 s)
    tau, eff = 20, 0.01
    betas = DEFAULT_BETAS
    rec = recommend_momentum(tau, eff)
    oracle = {}
    for rule in ("heavy_ball", "nesterov", "shifted"):
        for b in betas:
            q = transition_threshold(rule, tau, b, rtol=1e-8)
            oracle[rule, b] = q / (eff * (1 - b))
    ranked = sorted(oracle.items(), key=lambda kv: -kv[1])
    (best_rule, best_beta), best = ranked[0]
    assert best > ranked[1][1] * (1 + 1e-6)  # a clear winner on this grid
    assert (rec.momentum, rec.beta) == (best_rule, best_beta)
    assert rec.max_stable_sharpness == pytest.approx(best, rel=1e-7)
    assert rec.lr == pytest.approx(eff * (1 - best_beta), rel=1e-15)
    assert rec.max_stable_sharpness_no_momentum == pytest.approx(
        oracle["heavy_ball", 0.0], rel=1e-7
    )
    assert len(rec.table) == 3 * len(betas)
    for row in rec.table:
        assert row.max_stable_sharpness == pytest.approx(oracle[row.momentum, row.beta], rel=1e-7)
    # heavy_ball alone: beta = 0 is the oracle's best too (docs/theory.md: momentum never helps)
    hb = recommend_momentum(tau, eff, momenta="heavy_ball")
    assert hb.beta == max(betas, key=lambda b: oracle["heavy_ball", b]) == 0.0
