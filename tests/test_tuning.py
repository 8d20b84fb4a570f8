"""lr_for_delay and recommend_momentum."""

import numpy as np
import pytest

import stability as st
from stability.tuning import lr_for_delay, recommend_momentum


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
