"""Local SGD / DiLoCo outer loops (stability.theory.local_sgd) against the dense truth.

The oracle is the one-round transfer matrix built here from the update equations
(plain Python on scalars, nothing from the library): the state is (global x, outer
buffer u, inner buffer v, the stale pseudo-gradients), one round runs the H inner
steps of every worker, forms the pseudo-gradients, mixes them as the schedule
says and applies the outer step; applying that round to the basis vectors gives
the matrix, whose largest eigenvalue modulus must be the library's radius (1e-9)
and exactly 1 at the library's threshold.
"""

from __future__ import annotations

import numpy as np
import pytest

import stability as st
from stability.theory.local_sgd import (
    LocalSGD,
    max_stable_outer_lr,
    outer_delay,
    outer_polynomial,
    outer_stability_region,
    pseudo_gradient_factor,
    round_spectral_radius,
)
from stability.theory.rules.adam import Adam

INNER_LR = 0.1
SHARPNESS = (0.5, 3.0, 15.0, 45.0)  # inner_lr a = 0.05, 0.3, 1.5, 4.5 (inner loop unstable)
HS = (1, 2, 5, 30)
SCHEDULES = {
    "diloco": {},
    "eager2": {"schedule": "eager", "workers": 2},
    "eager8": {"schedule": "eager", "workers": 8},
    "streaming1": {"schedule": "streaming", "overlap": 1},
    "streaming2": {"schedule": "streaming", "overlap": 2},
}
INNERS = {  # (inner rule, inner beta, reset)
    "gd": ("gd", 0.0, True),
    "heavy_ball-reset": ("heavy_ball", 0.9, True),
    "heavy_ball-kept": ("heavy_ball", 0.9, False),
}
OUTERS = (("gd", 0.0), ("nesterov", 0.9))


def _inner_steps(x, v, a, lr, beta, rule, steps):
    """H undelayed inner steps on the loss a x^2 / 2, as torch/optax write them."""
    for _ in range(steps):
        g = a * x
        if rule == "gd":
            x = x - lr * g
        elif rule == "heavy_ball":
            v = beta * v + g
            x = x - lr * v
        elif isinstance(rule, Adam):  # frozen P = I, lr bias-corrected; AdamW: decay lr wd
            v = beta * v + (1 - beta) * g
            x = (1 - rule.decay) * x - lr * v
        else:  # nesterov
            v = beta * v + g
            x = x - lr * (g + beta * v)
    return x, v


def _round(state, cfg, a, outer_lr, mu, workers):
    """One round on the state [x, u, v, d_1..d_K] (d_j the pseudo-gradient j rounds old)."""
    x, u, v, stale = state[0], state[1], state[2], list(state[3:])
    v_start = 0.0 if cfg.reset else v
    x_local, v_end = _inner_steps(
        x, v_start, a, cfg.inner_lr, cfg.inner_beta, cfg.inner, cfg.inner_steps
    )
    delta = x - x_local  # every worker's: same loss, same start
    if cfg.schedule == "diloco":
        g = np.mean([delta] * workers)
    elif cfg.schedule == "eager":
        # a worker's own fresh Delta / M plus the others' one-round-old ones / M
        g = delta / workers + (workers - 1) * stale[0] / workers
    else:
        g = stale[cfg.overlap - 1]
    u = mu * u + g  # the outer buffer (outer SGD: mu = 0 and x ignores it)
    if cfg.outer == "gd":
        x = x - outer_lr * g
    else:  # Nesterov on the pseudo-gradient (DiLoCo's outer optimizer)
        x = x - outer_lr * (g + mu * u)
    stale = ([delta] + stale)[: len(stale)]
    return np.array([x, u, v_end, *stale])


def _round_matrix(cfg, a, outer_lr, mu):
    """The dense one-round transfer matrix (columns: the round applied to e_i)."""
    k = {"diloco": 0, "eager": 1, "streaming": cfg.overlap}[cfg.schedule]
    n = 3 + k
    cols = [_round(np.eye(n)[i], cfg, a, outer_lr, mu, cfg.workers) for i in range(n)]
    return np.stack(cols, axis=1)


def _dense_radius(cfg, a, outer_lr, mu):
    return np.max(np.abs(np.linalg.eigvals(_round_matrix(cfg, a, outer_lr, mu))))


def _config(h, schedule, inner):
    rule, beta, reset = INNERS[inner]
    return LocalSGD(INNER_LR, h, rule, beta, reset, "gd", **SCHEDULES[schedule])


@pytest.mark.parametrize("inner", list(INNERS))
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_polynomial_and_threshold_against_the_round_matrix(schedule, inner):
    """For H in {1, 2, 5, 30}, outer SGD and outer Nesterov: the radius of the outer
    polynomial is the round matrix's (1e-9) at three outer lrs, and at the library's
    largest stable outer lr the round matrix has radius 1 (1e-9), < 1 just below
    and on a grid below it, > 1 just above."""
    for h in HS:
        base = _config(h, schedule, inner)
        for outer, mu in OUTERS:
            cfg = base._replace(outer=outer)
            for a in SHARPNESS:
                for lr in (0.1, 0.7, 1.3):
                    ours = round_spectral_radius(cfg, a, lr, mu)
                    dense = _dense_radius(cfg, a, lr, mu)
                    assert abs(ours - dense) <= 1e-9 * max(1.0, dense), (h, outer, a, lr)
                lr_max = max_stable_outer_lr(cfg, a, mu)
                assert np.isfinite(lr_max), (h, outer, a)
                if lr_max == 0.0:  # no stable outer lr (none on a wide grid either)
                    for lr in np.geomspace(1e-6, 10.0, 30):
                        assert _dense_radius(cfg, a, lr, mu) >= 1 - 1e-12, (h, outer, a, lr)
                    continue
                at = _dense_radius(cfg, a, lr_max, mu)
                assert abs(at - 1.0) <= 1e-9, (h, outer, a, lr_max, at)
                assert _dense_radius(cfg, a, lr_max * (1 + 1e-6), mu) > 1.0
                for f in (1 - 1e-6, 0.9, 0.5, 0.1, 0.01):
                    assert _dense_radius(cfg, a, lr_max * f, mu) < 1.0, (h, outer, a, f)


@pytest.mark.parametrize(
    "decay, reset", [(0.0, True), (0.05, False)], ids=["adam-reset", "adamw-kept"]
)
def test_inner_adam_against_the_round_matrix(decay, reset):
    """Inner Adam(W) with a frozen preconditioner (the rule of docs/theory.md section 16,
    along an eigenvalue of P^-1/2 H P^-1/2; its moment buffer reset or kept across
    rounds), outer Nesterov: the round matrix's radius is the library's (1e-9) and 1 at
    the library's largest stable outer lr, for H in {1, 5, 30} and three schedules."""
    schedules = ("diloco", "eager8", "streaming1")
    for h in (1, 5, 30):
        for schedule in schedules:
            cfg = LocalSGD(INNER_LR, h, Adam(decay=decay), 0.9, reset, "nesterov",
                           **SCHEDULES[schedule])  # fmt: skip
            for a in SHARPNESS:
                for lr in (0.1, 0.7, 1.3):
                    ours = round_spectral_radius(cfg, a, lr, 0.9)
                    dense = _dense_radius(cfg, a, lr, 0.9)
                    assert abs(ours - dense) <= 1e-9 * max(1.0, dense), (h, schedule, a, lr)
                lr_max = max_stable_outer_lr(cfg, a, 0.9)
                assert np.isfinite(lr_max), (h, schedule, a)
                if lr_max == 0.0:
                    for lr in np.geomspace(1e-6, 10.0, 12):
                        assert _dense_radius(cfg, a, lr, 0.9) >= 1 - 1e-12, (h, schedule, a, lr)
                    continue
                assert abs(_dense_radius(cfg, a, lr_max, 0.9) - 1.0) <= 1e-9, (h, schedule, a)
                assert _dense_radius(cfg, a, lr_max * (1 + 1e-6), 0.9) > 1.0
                assert _dense_radius(cfg, a, lr_max * (1 - 1e-6), 0.9) < 1.0
            if reset:  # kappa: 1 - the iterate after H Adam steps from (1, 0)
                for a in SHARPNESS:
                    x, _ = _inner_steps(1.0, 0.0, a, INNER_LR, 0.9, cfg.inner, h)
                    assert pseudo_gradient_factor(cfg, a) == pytest.approx(1 - x, abs=1e-12)


@pytest.mark.parametrize("h", HS)
def test_kappa_of_inner_gd(h):
    """With inner GD the pseudo-gradient factor is 1 - (1 - lr a)^H; for inner heavy
    ball it is 1 - (the local iterate after H steps from (1, 0))."""
    a = np.array([0.5, 3.0, 15.0, 25.0])
    cfg = LocalSGD(INNER_LR, h)
    np.testing.assert_allclose(
        pseudo_gradient_factor(cfg, a), 1 - (1 - INNER_LR * a) ** h, rtol=1e-13, atol=1e-13
    )
    hb = cfg._replace(inner="heavy_ball", inner_beta=0.9)
    for ai, k in zip(a, pseudo_gradient_factor(hb, a), strict=True):
        x, _ = _inner_steps(1.0, 0.0, ai, INNER_LR, 0.9, "heavy_ball", h)
        assert k == pytest.approx(1 - x, abs=1e-12)


@pytest.mark.parametrize("tau", [0, 1, 3])
def test_one_inner_step_is_plain_delayed_sgd(tau):
    """H = 1, outer SGD, M = 1: x+ = x - outer_lr inner_lr a x_{k-tau}, plain delayed
    SGD with lr = outer_lr * inner_lr (its radius and threshold)."""
    sched = {"schedule": "streaming", "overlap": tau} if tau else {"schedule": "eager"}
    cfg = LocalSGD(INNER_LR, 1, outer="gd", **sched)
    for a in (0.5, 3.0, 15.0):
        for outer_lr in (0.3, 1.0, 1.7):
            ours = round_spectral_radius(cfg, a, outer_lr)
            plain = st.spectral_radius(a, outer_lr * INNER_LR, tau, momentum="gd")
            assert ours == pytest.approx(plain, abs=1e-12)
        lr_max = max_stable_outer_lr(cfg, a)
        q_max = st.stability_threshold(tau, momentum="gd").q_max
        assert lr_max * INNER_LR * a == pytest.approx(q_max, rel=1e-12)
        assert st.max_stable_sharpness(lr_max * INNER_LR, tau, momentum="gd") == pytest.approx(
            a, rel=1e-12
        )


def test_reset_threshold_is_the_outer_rules_threshold_over_kappa():
    """Reset: outer_lr_max = q_max(outer delay, mu) / kappa; the eager schedule's delay
    is the distribution (1/M, (M-1)/M); kappa <= 0 (inner GD, even H, lr a > 2)
    leaves no stable outer lr, kappa > 2 (odd H) a small one."""
    cfg = LocalSGD(INNER_LR, 5, schedule="eager", workers=4)
    dist = outer_delay(cfg)
    np.testing.assert_allclose(dist.probabilities, [0.25, 0.75])
    q = st.stability_threshold(dist, 0.9, momentum="nesterov").q_max
    kappa = pseudo_gradient_factor(cfg, 3.0)
    assert max_stable_outer_lr(cfg, 3.0, 0.9) == pytest.approx(q / kappa, rel=1e-12)
    even = LocalSGD(INNER_LR, 2)
    assert pseudo_gradient_factor(even, 25.0) < 0  # (1 - 2.5)^2 = 2.25
    assert max_stable_outer_lr(even, 25.0, 0.9) == 0.0
    assert round_spectral_radius(even, 25.0, 1e-4, 0.9) > 1.0
    odd = LocalSGD(INNER_LR, 3)
    kappa = pseudo_gradient_factor(odd, 25.0)  # 1 + 1.5^3
    assert kappa > 2
    lr = max_stable_outer_lr(odd, 25.0, 0.9)
    assert 0 < lr < 1 and round_spectral_radius(odd, 25.0, 0.5 * lr, 0.9) < 1


def test_kept_polynomial_with_inner_gd_is_the_reset_one_times_z():
    """Inner GD has no buffer to keep: the kept polynomial is z times the reset one."""
    for h in HS:
        reset = LocalSGD(INNER_LR, h, schedule="streaming", overlap=2)
        kept = reset._replace(reset=False)
        p, pk = outer_polynomial(reset, 3.0, 0.9), outer_polynomial(kept, 3.0, 0.9)
        np.testing.assert_allclose(pk.a, np.r_[p.a, 0.0], atol=1e-14)
        np.testing.assert_allclose(pk.b, np.r_[p.b, 0.0], atol=1e-14)


def test_simulated_diloco_rounds_grow_at_the_radius():
    """A direct simulation of DiLoCo: M = 4 workers, each H = 5 inner heavy-ball steps
    from the global x (buffers reset or kept), outer Nesterov (lr 0.7, momentum 0.9) on
    the averaged pseudo-gradient; its per-round growth is the library's radius."""
    workers, h, a, outer_lr, mu = 4, 5, 3.0, 0.7, 0.9
    for reset in (True, False):
        cfg = LocalSGD(INNER_LR, h, "heavy_ball", 0.9, reset, "nesterov")
        for lr in (outer_lr, 2.5):  # one stable, one unstable
            x, u, vs, logs = 1.0, 0.0, [0.0] * workers, []
            for _ in range(3000):
                deltas = []
                for m in range(workers):
                    v0 = 0.0 if reset else vs[m]
                    x_local, vs[m] = _inner_steps(x, v0, a, INNER_LR, 0.9, "heavy_ball", h)
                    deltas.append(x - x_local)
                g = sum(deltas) / workers
                u = mu * u + g
                x = x - lr * (g + mu * u)
                norm = abs(x) + abs(u) + sum(abs(v) for v in vs)
                logs.append(np.log(norm))  # rescaled each round (linear): no overflow
                x, u, vs = x / norm, u / norm, [v / norm for v in vs]
            rate = np.exp(np.mean(logs[1000:]))
            assert rate == pytest.approx(round_spectral_radius(cfg, a, lr, mu), rel=1e-3)


def test_eager_replicas_split_into_consensus_and_difference_modes():
    """Eager with M = 2 workers each holding its own copy of the global state: the
    full matrix's eigenvalues are the consensus mode's (the library's polynomial, delay
    (1/M, (M-1)/M)) together with the replica-difference mode's, whose mixture is
    (1/M, -1/M); the difference mode is excited only when replicas differ."""
    m, h, a, lr, mu = 2, 5, 3.0, 0.7, 0.9
    cfg = LocalSGD(INNER_LR, h, "heavy_ball", 0.9, True, "nesterov", "eager", m)

    def step(state):  # per replica: [x, u, d_prev]
        out = []
        deltas = []
        for r in range(m):
            x = state[3 * r]
            x_local, _ = _inner_steps(x, 0.0, a, INNER_LR, 0.9, "heavy_ball", h)
            deltas.append(x - x_local)
        for r in range(m):
            x, u = state[3 * r], state[3 * r + 1]
            others = sum(state[3 * s + 2] for s in range(m) if s != r)
            g = deltas[r] / m + others / m
            u = mu * u + g
            out += [x - lr * (g + mu * u), u, deltas[r]]
        return np.array(out)

    full = np.stack([step(e) for e in np.eye(3 * m)], axis=1)
    eig = np.linalg.eigvals(full)
    consensus = np.roots(outer_polynomial(cfg, a, mu).coefficients(lr))
    kappa = pseudo_gradient_factor(cfg, a)
    # difference mode: x+ = x - lr (g + mu u+), g = kappa (x_k - x_{k-1}) / M
    diff = np.polyadd(
        np.polymul([1.0, -1.0, 0.0], [1.0, -mu]),
        lr * kappa / m * np.polymul([1.0, -1.0], [1.0 + mu, -mu]),
    )
    both = np.sort_complex(np.r_[consensus, np.roots(diff)])
    got = np.sort_complex(eig)
    np.testing.assert_allclose(np.sort(np.abs(got)), np.sort(np.abs(both)), atol=1e-9)


def test_stability_region_map():
    """The (outer lr, outer momentum) map: stable exactly below each row's threshold."""
    cfg = LocalSGD(INNER_LR, 5, "heavy_ball", 0.9, False, schedule="eager", workers=8)
    lrs = np.linspace(0.02, 2.0, 12)
    mus = np.array([0.0, 0.5, 0.9])
    region = outer_stability_region(cfg, 3.0, lrs, mus)
    assert region.radius.shape == (3, 12)
    np.testing.assert_array_equal(region.stable, lrs[None, :] < region.max_outer_lr[:, None])


@pytest.mark.parametrize(
    "field, value, err, match",
    [
        ("inner_lr", -0.1, ValueError, "config.inner_lr"),
        ("inner_steps", 0, ValueError, "config.inner_steps"),
        ("inner_steps", 2.5, TypeError, "config.inner_steps"),
        ("inner", "adamw", ValueError, "config.inner"),
        ("inner_beta", 0.5, ValueError, "config.inner_beta"),  # gd takes no momentum
        ("reset", "yes", TypeError, "config.reset"),
        ("schedule", "async", ValueError, "config.schedule"),
        ("workers", 3, ValueError, "config.workers"),  # diloco: M plays no part
        ("overlap", 2, ValueError, "config.overlap"),  # diloco: no overlap
    ],
)
def test_bad_configurations(field, value, err, match):
    cfg = LocalSGD(INNER_LR, 5)._replace(**{field: value})
    with pytest.raises(err, match=match):
        round_spectral_radius(cfg, 3.0, 0.7, 0.9)


def test_bad_arguments():
    cfg = LocalSGD(INNER_LR, 5)
    with pytest.raises(ValueError, match="outer_lr"):
        round_spectral_radius(cfg, 3.0, -0.7)
    with pytest.raises(ValueError, match="outer_momentum"):
        max_stable_outer_lr(cfg, 3.0, 1.2)
    with pytest.raises(ValueError, match="sharpness"):
        pseudo_gradient_factor(cfg, float("nan"))
    with pytest.raises(ValueError, match="config.overlap"):
        outer_delay(LocalSGD(INNER_LR, 5, schedule="streaming"))
    with pytest.raises(TypeError, match="config"):
        outer_delay((0.1, 5))


def test_arrays_broadcast_and_keep_their_dtype():
    """Every numeric argument broadcasts (config.inner_lr too); float32 arrays give
    float32 results; a jitted call with the configuration static agrees."""
    import jax
    import jax.numpy as jnp

    a = np.array([0.5, 3.0, 15.0])[:, None]
    mus = np.array([0.0, 0.5, 0.9])
    cfg = LocalSGD(np.array([0.05, 0.1, 0.2])[:, None], 5, "heavy_ball", 0.5, False)
    radius = round_spectral_radius(cfg, a, 0.7, mus)
    lr_max = max_stable_outer_lr(cfg, a, mus)
    assert radius.shape == lr_max.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            one = cfg._replace(inner_lr=float(cfg.inner_lr[i, 0]))
            assert radius[i, j] == pytest.approx(
                round_spectral_radius(one, float(a[i, 0]), 0.7, float(mus[j])), rel=1e-12
            )
            assert lr_max[i, j] == pytest.approx(
                max_stable_outer_lr(one, float(a[i, 0]), float(mus[j])), rel=1e-9
            )
    with jax.enable_x64(False):
        cfg32 = LocalSGD(0.1, 5)
        out = pseudo_gradient_factor(cfg32, jnp.asarray([0.5, 3.0], jnp.float32))
        assert out.dtype == jnp.float32
    jitted = jax.jit(round_spectral_radius, static_argnums=0)
    cfg = LocalSGD(0.1, 5, outer="nesterov")
    assert float(jitted(cfg, jnp.asarray(3.0), jnp.asarray(0.7), jnp.asarray(0.9))) == (
        pytest.approx(round_spectral_radius(cfg, 3.0, 0.7, 0.9), rel=1e-12)
    )
