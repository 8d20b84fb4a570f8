"""The batch size in the hyperparameter rules: `max_stable_lr` and `lr_for_delay`
with ``batch_size`` (issue 13).

Oracles: the deterministic rules themselves (the full batch without replacement
has no noise), Wu, Ma and E's closed form at tau = 0 with the variance factor
written out by hand, and Monte-Carlo simulation of the stochastic recurrence on
per-example quadratics (tests/test_mean_square.py's numpy loop, written from the
update rules). The delegation is checked against the ``*_minibatch`` functions.
"""

import math

import numpy as np
import pytest
from test_mean_square import monte_carlo

import stability as st

RULES = [
    # (tau, beta, momentum)
    (0, 0.0, "heavy_ball"),
    (3, 0.0, "heavy_ball"),
    (2, 0.5, "heavy_ball"),
    (2, 0.5, "nesterov"),
    (4, 0.6, "shifted"),
]


def gamma_by_hand(batch, n, replacement):
    return 1.0 / batch if replacement else (n - batch) / (batch * (n - 1))


# ------------------------------------------------------------------ full batch, tau = 0


@pytest.mark.parametrize("tau, beta, rule", RULES)
def test_full_batch_without_replacement_is_the_deterministic_rule(tau, beta, rule):
    a, s, n = 3.0, 2.0, 50
    det = st.max_stable_lr(a, tau, beta, momentum=rule)
    full = st.max_stable_lr(a, tau, beta, momentum=rule, nonuniformity=s, batch_size=n,
                            num_examples=n)  # fmt: skip
    assert full == det
    kw = dict(beta=beta, momentum=rule)
    det_lr = st.lr_for_delay(0.1, tau + 3, from_tau=tau, **kw)
    full_lr = st.lr_for_delay(0.1, tau + 3, from_tau=tau, batch_size=n, num_examples=n,
                              sharpness=a, nonuniformity=s, **kw)  # fmt: skip
    assert full_lr == pytest.approx(det_lr, rel=1e-14)
    # a smaller batch lowers the limit (by less at long delays, where q_max is small)
    assert st.max_stable_lr(a, tau, beta, momentum=rule, nonuniformity=s, batch_size=n // 5,
                            num_examples=n) < det  # fmt: skip


@pytest.mark.parametrize("batch, replacement", [(1, False), (4, False), (4, True), (64, True)])
def test_tau_zero_is_wu_ma_and_e(batch, replacement):
    a, s, n = 2.0, 5.0, 50
    g = gamma_by_hand(batch, n, replacement)
    got = st.max_stable_lr(a, 0, nonuniformity=s, batch_size=batch, num_examples=n,
                           replacement=replacement)  # fmt: skip
    assert got == pytest.approx(2 * a / (a * a + g * s * s), rel=1e-13)
    # lr_for_delay at tau = from_tau = 0 between two batch sizes: the ratio of limits
    g0 = gamma_by_hand(10, n, replacement)
    lr = st.lr_for_delay(0.05, 0, batch_size=batch, from_batch_size=10, num_examples=n,
                         replacement=replacement, sharpness=a, nonuniformity=s)  # fmt: skip
    assert lr == pytest.approx(0.05 * (a * a + g0 * s * s) / (a * a + g * s * s), rel=1e-13)
    # with no delay change and no batch change: unchanged
    same = st.lr_for_delay(0.05, 0, batch_size=batch, num_examples=n, replacement=replacement,
                           sharpness=a, nonuniformity=s)  # fmt: skip
    assert same == pytest.approx(0.05, rel=1e-14)


@pytest.mark.parametrize("tau, beta, rule", RULES)
def test_the_rules_delegate_to_the_minibatch_functions(tau, beta, rule):
    a, s, n, b = np.array([0.5, 2.0, 8.0]), 3.0, 100, 8
    kw = dict(momentum=rule, batch_size=b, num_examples=n)
    got = st.max_stable_lr(a, tau, beta, nonuniformity=s, **kw)
    expect = st.max_stable_lr_minibatch(a, s, tau, beta, **kw)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expect))
    assert isinstance(st.max_stable_lr(2.0, tau, beta, nonuniformity=s, **kw), float)
    got = st.lr_for_delay(0.01, tau + 2, from_tau=tau, beta=beta, sharpness=2.0,
                          nonuniformity=s, from_batch_size=32, **kw)  # fmt: skip
    expect = st.lr_for_delay_minibatch(0.01, tau + 2, from_tau=tau, beta=beta, sharpness=2.0,
                                       nonuniformity=s, from_batch_size=32, **kw)  # fmt: skip
    assert got == expect
    # the minibatch lr keeps the minimum at the same fraction of its mean-square limit
    before = st.max_stable_lr(2.0, tau, beta, nonuniformity=s, **dict(kw, batch_size=32))
    after = st.max_stable_lr(2.0, tau + 2, beta, nonuniformity=s, **kw)
    assert got / after == pytest.approx(0.01 / before, rel=1e-10)


# ----------------------------------------------------------------------- Monte Carlo


LINEAR = np.linspace(0.0, 1.6, 8)  # a = 0.8, s^2 = 0.2743 (mean of squares - a^2)
HALF = np.r_[[1.6] * 4, [0.0] * 4]  # a = 0.8, s^2 = 0.64


@pytest.mark.parametrize(
    "tau, beta, rule, batch, replacement, column",
    [
        (0, 0.0, "heavy_ball", 2, False, LINEAR),
        (3, 0.0, "heavy_ball", 1, True, LINEAR),
        (1, 0.5, "shifted", 1, True, LINEAR),
        (2, 0.5, "heavy_ball", 2, False, HALF),  # with LINEAR 1.1x leaves the mean-stable set
    ],
)
def test_monte_carlo_second_moment_just_below_and_above_the_returned_lr(
    tau, beta, rule, batch, replacement, column
):
    # One direction, 8 examples with diagonal per-example Hessians (known Sigma): the
    # per-example curvatures of `column`. The noise binds below the deterministic
    # limit; at 0.9x the returned lr the simulated second moment decays, at 1.1x it
    # grows. 20,000 runs: near the threshold the mean square grows through rare runs
    # (docstring of stability.theory.mean_square), which 4,000 runs can miss.
    n = 8
    h = np.asarray(column, float).reshape(n, 1)
    a, s = float(h.mean()), float(h.std())
    lr_star = st.max_stable_lr(a, tau, beta, momentum=rule, nonuniformity=s, batch_size=batch,
                               num_examples=n, replacement=replacement)  # fmt: skip
    q_max = st.max_stable_sharpness(1.0, tau, beta, momentum=rule)
    assert 1.1 * lr_star * a < q_max  # the mean recursion stays stable at 1.1x
    assert lr_star < 0.9 * st.max_stable_lr(a, tau, beta, momentum=rule)
    g = gamma_by_hand(batch, n, replacement)
    for factor, grows in ((0.9, False), (1.1, True)):
        lr = factor * lr_star
        mu = st.second_moment_growth(lr * a, lr * lr * g * s * s, tau, beta, momentum=rule)
        assert (mu > 1) is grows
        steps = math.ceil(8 / abs(math.log(mu)))  # predicted change e^(+-8)
        m = monte_carlo(h, lr, tau, beta, rule, batch, replacement, steps, runs=20000)
        change = math.log(m[-1] / m[0])
        assert (change > 2.0) if grows else (change < -5.0), (factor, change, steps)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: st.max_stable_lr(1.0, 2, nonuniformity=1.0, batch_size=4), ValueError,
         r"num_examples .*batch_size=4; got num_examples=None"),
        (lambda: st.max_stable_lr(1.0, 2, batch_size=4, num_examples=10), ValueError,
         r"nonuniformity is required with batch_size=4.*got nonuniformity=None"),
        (lambda: st.max_stable_lr(1.0, 2, nonuniformity=1.0), ValueError,
         r"nonuniformity=1.0 .*needs batch_size.*got batch_size=None"),
        (lambda: st.max_stable_lr(1.0, 2, nonuniformity=1.0, batch_size=11, num_examples=10),
         ValueError, r"batch_size must be <= num_examples \(10\).*got 11"),
        (lambda: st.max_stable_lr(1.0, 2, nonuniformity=1.0, batch_size=2.5, num_examples=10),
         ValueError, r"batch_size must be an integer; got 2.5"),
        (lambda: st.max_stable_lr(1.0, 2, nonuniformity=1.0, batch_size=0, num_examples=10),
         ValueError, r"batch_size must be an integer >= 1; got 0"),
        (lambda: st.max_stable_lr(1.0, 2, nonuniformity=-1.0, batch_size=2, num_examples=10),
         ValueError, r"nonuniformity must be >= 0; got -1.0"),
        (lambda: st.max_stable_lr(1.0, st.round_robin(3), nonuniformity=1.0, batch_size=2,
                                  num_examples=10),
         NotImplementedError, r"tau is a DelayDistribution.*fixed delays only"),
        (lambda: st.lr_for_delay(0.1, 3, batch_size=2, num_examples=10, nonuniformity=1.0),
         ValueError, r"sharpness is required with batch_size=2.*got sharpness=None"),
        (lambda: st.lr_for_delay(0.1, 3, batch_size=2, num_examples=10, sharpness=1.0),
         ValueError, r"nonuniformity is required with batch_size=2.*got nonuniformity=None"),
        (lambda: st.lr_for_delay(0.1, 3, batch_size=2, sharpness=1.0, nonuniformity=1.0),
         ValueError, r"num_examples .*got num_examples=None"),
        (lambda: st.lr_for_delay(0.1, 3, from_batch_size=8, num_examples=10), ValueError,
         r"from_batch_size=8 .*needs batch_size"),
        (lambda: st.lr_for_delay(0.1, 3, batch_size=2, from_batch_size=20, num_examples=10,
                                 sharpness=1.0, nonuniformity=1.0),
         ValueError, r"from_batch_size must be <= num_examples \(10\).*got 20"),
        (lambda: st.lr_for_delay(0.1, 3, from_tau=st.round_robin(2), batch_size=2,
                                 num_examples=10, sharpness=1.0, nonuniformity=1.0),
         NotImplementedError, r"from_tau is a DelayDistribution.*fixed delays only"),
    ],
)  # fmt: skip
def test_bad_arguments_name_the_argument_and_value(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_the_default_call_is_unchanged():
    # without batch_size: the full-batch formulas (docs/theory.md sections 7 and 9)
    assert st.max_stable_lr(2.0, 0) == pytest.approx(1.0, rel=1e-15)
    assert st.max_stable_lr(4.0, 1, 0.9) == pytest.approx(0.1 / 4.0, rel=1e-12)
    sgd = st.lr_for_delay(0.1, 4)
    assert sgd == pytest.approx(0.1 * math.sin(math.pi / 18), rel=1e-12)
    # delay distributions keep working without batch_size
    assert st.lr_for_delay(0.1, st.fixed_delay(4)) == pytest.approx(sgd, rel=1e-9)
