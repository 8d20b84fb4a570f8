"""Adam verdicts on a real optax.adamw-trained network (issue 22).

A tanh MLP trained with ``optax.inject_hyperparams(optax.adamw)`` to an interpolating
minimum (its real state, nothing synthetic; the lr cut by sqrt(b2) per step at the end
so that it converges instead of settling at the adaptive edge of stability). Checked:

- the preconditioned sharpness of ``is_accessible(..., optimizer_state=state)`` against
  the dense float64 ``P^-1/2 H P^-1/2`` (``jax.hessian`` on the raveled weights);
- the verdicts at 0.9x / 1.1x ``max_stable_lr`` for tau 0, 4, 16, and the frozen model
  (`stability.delayed_optax.frozen_adam` under `simulate_optax`): the projection of
  the perturbed-minus-unperturbed run on the top eigenvector follows this file's own
  scalar recurrence (written from the update equations) and decays or grows as the
  verdict says;
- live AdamW from the minimum (the training state, its lr replaced): it follows the same
  scalar recurrence with the preconditioned curvature growing like ``b2^(-t/2)`` (the
  second moment decays by b2 per step at an exact minimum). It agrees with the verdict
  where it says unstable, and where it says stable for as long as ``report.adaptive
  .decay_horizon`` (about 2 ln(1/0.9) / ln(1/b2) = 211 steps); past it, it grows
  (benchmarks/RESULTS-adam-verdicts.md, docs/theory.md section 16);
- the argument errors of ``optimizer_state``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compile_speed import xla_optimizations
from jax.flatten_util import ravel_pytree

import stability
from stability.app.experiments import mlp_init, squared_error
from stability.curvature.preconditioner import weight_space_direction
from stability.delayed_optax import frozen_adam, simulate_optax
from stability.networks.examples import load_digits

LR0, WD, B2 = 1e-3, 1e-4, 0.999
N_EXAMPLES, WIDTH, STEPS_CONSTANT, STEPS_DECAY, CHUNK = 16, 24, 1500, 6500, 50
TOL = 1e-10
Y0 = 1e-12  # the perturbation, in y = P^1/2 w along the top preconditioned eigenvector
SAMPLES = 8  # records per run


def with_lr(state, lr):
    hyper = dict(state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(lr, hyper["learning_rate"].dtype)
    return state._replace(hyperparams=hyper)


def flat(tree):
    return ravel_pytree(tree)[0]


@pytest.fixture(scope="module")
def trained():
    """``(data, params, state, optimizer)`` at the adamw-trained minimum."""
    data = load_digits(N_EXAMPLES, dtype=jnp.float64)
    params = mlp_init(0, [64, WIDTH, 10], dtype=jnp.float64)
    tx = optax.inject_hyperparams(optax.adamw)(learning_rate=LR0, weight_decay=WD)
    state = tx.init(params)
    with xla_optimizations(), jax.numpy_dtype_promotion("standard"):  # optax's arithmetic

        @jax.jit
        def chunk(p, s):
            def body(c, _):
                p, s = c
                u, s = tx.update(jax.grad(squared_error)(p, data), s, p)
                return (optax.apply_updates(p, u), s), None

            return jax.lax.scan(body, (p, s), None, length=CHUNK)[0]

        for k in range((STEPS_CONSTANT + STEPS_DECAY) // CHUNK):
            t = k * CHUNK
            if t >= STEPS_CONSTANT:
                state = with_lr(state, LR0 * math.sqrt(B2) ** (t - STEPS_CONSTANT))
            params, state = chunk(params, state)
        grad = float(jnp.linalg.norm(flat(jax.grad(squared_error)(params, data))))
    assert float(squared_error(params, data)) < 1e-12 and grad < 1e-6
    return data, params, state, tx


@pytest.fixture(scope="module")
def top(trained):
    """The converged preconditioned spectrum at the state (stable at its lr, tau 0)."""
    data, params, state, _ = trained
    report = stability.is_accessible(
        squared_error, params, 0, data=data, optimizer_state=state, tol=TOL, max_hvps=300,
        progress=False, return_vectors=True,
    )  # fmt: skip
    assert report.verdict is True
    return report


def test_preconditioned_sharpness_matches_dense(trained, top):
    data, params, state, _ = trained
    pre = top.adaptive.preconditioner
    w, unravel = ravel_pytree(params)
    with xla_optimizations():
        hessian = jax.jit(jax.hessian(lambda v: squared_error(unravel(v), data)))(w)
    s = 1 / jnp.sqrt(flat(pre.diagonal))
    dense = np.linalg.eigvalsh(np.asarray(s[:, None] * hessian * s[None, :]))
    assert top.sharpness == pytest.approx(dense[-1], rel=1e-8)
    assert top.sharpness_error <= 1e-8 * top.sharpness
    # the limit and max_stable_lr are in the optimizer's lr, with the state's b1 and c
    ad = top.adaptive
    assert (ad.optimizer, ad.b1, ad.weight_decay) == ("adamw", 0.9, WD)
    assert top.lr == pytest.approx(float(state.hyperparams["learning_rate"]))
    assert top.max_stable_lr * ad.bias_correction * (1 - 0.9) * top.sharpness == pytest.approx(
        2 * 1.9, rel=1e-6
    )  # tau 0: lr c (1 - b1) a = 2 (1 + b1), weight decay lr wd ~ 1e-9 aside


def scalar_recurrence(a, lr, c, b1, d, tau, steps, y0, scale=None):
    """The top direction's recurrence from the update equations: ``m+ = b1 m + (1 - b1)
    a y_{t-tau}``, ``y+ = (1 - d) y - lr c s_t m+`` (``y_{t-tau} = y_0`` for t < tau;
    ``s_t = scale(t)``, 1 for the frozen model). Returns ``y_0 .. y_steps``."""
    ys = [y0]
    m = 0.0
    for t in range(steps):
        m = b1 * m + (1 - b1) * a * ys[max(t - tau, 0)]
        s = 1.0 if scale is None else scale(t)
        ys.append((1 - d) * ys[-1] - lr * c * s * m)
    return np.array(ys)


def projected_difference(params, data, opt, state, tau, steps, direction, sqrt_p, u):
    """``<P^1/2 (w_t - w_t^base), u>`` at ``SAMPLES + 1`` records, and the base run."""
    every = steps // SAMPLES
    bases, diffs = {}, {}

    def base_tracker(w, t, opt_state=None):
        bases[t] = w

    def pert_tracker(w, t, opt_state=None):
        diffs[t] = float(jnp.vdot(sqrt_p * (flat(w) - flat(bases[t])), u))

    base = simulate_optax(
        squared_error, params, data, opt, tau=tau, steps=steps, opt_state=state,
        record_every=every, tracker=base_tracker,
    )  # fmt: skip
    start = jax.tree_util.tree_map(lambda w, d: w + Y0 * d, params, direction)
    simulate_optax(
        squared_error, start, data, opt, tau=tau, steps=steps, opt_state=state,
        record_every=every, tracker=pert_tracker,
    )  # fmt: skip
    steps_recorded = np.array(sorted(diffs))
    return steps_recorded, np.array([diffs[t] for t in steps_recorded]), base


def horizon(rho):
    """Steps for a growth or decay by about e^7 (a multiple of SAMPLES)."""
    n = int(np.clip(math.ceil(7 / abs(math.log(rho))), 16, 4000))
    return SAMPLES * math.ceil(n / SAMPLES)


@pytest.mark.parametrize("tau", [0, 4, 16])
def test_verdicts_against_frozen_and_live_adamw(trained, top, tau):
    data, params, state, tx = trained
    pre = top.adaptive.preconditioner
    a, c, b1, count = top.sharpness, pre.bias_correction, pre.b1, pre.count
    lr_star = stability.is_accessible(
        squared_error, params, tau, data=data, optimizer_state=state, spectrum=top.spectrum,
        progress=False,
    ).max_stable_lr  # fmt: skip
    # The spectrum's vectors are replicated over the mesh of all devices (8 simulated
    # CPU devices in the suite): on one device, as the fixture's params, the runs below
    # compute once instead of 8 times and compile once per run length, not once per
    # placement of their inputs (the same numbers).
    u_tree = jax.tree_util.tree_map(
        lambda v: jnp.asarray(np.asarray(v[0])), top.spectrum.eigenvectors
    )
    norm = float(jnp.linalg.norm(flat(u_tree)))
    u = flat(u_tree) / norm
    direction = jax.tree_util.tree_map(lambda x: x / norm, weight_space_direction(u_tree, pre))
    sqrt_p = jnp.sqrt(flat(pre.diagonal))
    for f in (0.9, 1.1):
        lr = f * lr_star
        report = stability.is_accessible(
            squared_error, params, tau, lr, data=data, optimizer_state=state, tol=TOL,
            max_hvps=300, progress=False,
        )  # fmt: skip
        assert report.verdict is (f < 1), (f, report)
        rho = stability.spectral_radius(
            a, lr * c, tau, b1, momentum=stability.theory.rules.adam.Adam(decay=lr * WD)
        )
        assert (rho < 1) is (f < 1)
        steps = horizon(rho)

        # the frozen model: this file's recurrence, point by point; decays or grows as
        # the verdict says
        t, e, _ = projected_difference(
            params, data, frozen_adam(pre, lr), None, tau, steps, direction, sqrt_p, u
        )
        y = scalar_recurrence(a, lr, c, b1, lr * WD, tau, steps, Y0)[t]
        scale = np.abs(y).max()
        np.testing.assert_allclose(e, y, rtol=0, atol=1e-4 * scale)
        end = np.abs(e[-2:]).max() / Y0  # two samples: one may sit near a zero crossing
        assert end < math.exp(-3) if f < 1 else end > math.exp(3), (f, end)

        # live AdamW from the minimum: its second moment decays by b2 per step, so it is
        # the recurrence with lr c_t P_0 / P_t, P_t = sqrt(nu_0 b2^(t+1) / (1 - b2^(k+t+1)))
        # (k the state's count); the verdict holds while t < decay_horizon
        def live_scale(step, k=count):
            p0 = 1 / math.sqrt(1 - B2**k)
            pt = math.sqrt(B2 ** (step + 1) / (1 - B2 ** (k + step + 1)))
            return (1 - b1 ** (k + step + 1)) ** -1 / c * p0 / pt

        # as far as the perturbation stays linear (|y| <= 1e-9: its gradient far below
        # sqrt(nu), so that it does not move the second moment itself)
        y = scalar_recurrence(a, lr, c, b1, lr * WD, tau, steps, Y0, live_scale)
        over = np.flatnonzero(np.abs(y) > 1e-9)
        live_steps = steps if len(over) == 0 else SAMPLES * (int(over[0]) // SAMPLES)
        with jax.numpy_dtype_promotion("standard"):  # optax's own arithmetic
            t, e, base = projected_difference(
                params, data, tx, with_lr(state, lr), tau, live_steps, direction, sqrt_p, u
            )
        y = scalar_recurrence(a, lr, c, b1, lr * WD, tau, live_steps, Y0, live_scale)[t]
        np.testing.assert_allclose(e, y, rtol=0, atol=2e-2 * np.abs(y).max())
        grew = np.abs(e[-2:]).max() / Y0
        horizon_steps = report.adaptive.decay_horizon if f < 1 else None
        if f > 1:
            assert grew > math.exp(3)  # agrees: unstable, and faster than frozen
        elif live_steps < horizon_steps:
            assert grew < math.exp(-3)  # tau 0: decays before the second moment has moved
        else:
            # the documented gap: stable frozen verdict, growing live optimizer, because
            # the live state has left the stable region (its nu decayed by b2^t)
            assert horizon_steps == pytest.approx(2 * math.log(1 / f) / -math.log(B2), rel=1e-3)
            assert grew > 1, (tau, grew)
            nu0, nu1 = (flat(s.inner_state[0].nu) for s in (state, base.opt_state))
            live = nu0 > 0
            ratio = np.asarray(nu1[live] / nu0[live])
            assert np.median(ratio) == pytest.approx(B2**live_steps, rel=1e-3)
            later = stability.is_accessible(
                squared_error, base.params, tau, lr, data=data,
                optimizer_state=base.opt_state, tol=1e-6, progress=False,
            )  # fmt: skip
            assert later.verdict is False


def test_optimizer_state_argument_errors(trained):
    data, params, state, _ = trained
    with pytest.raises(ValueError, match="batch_size"):
        stability.is_accessible(
            squared_error, params, 0, data=data, optimizer_state=state, batch_size=4,
            progress=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="beta"):
        stability.is_accessible(
            squared_error, params, 0, data=data, optimizer_state=state, beta=0.9,
            progress=False,
        )  # fmt: skip
    plain = state.inner_state  # the trained optax.adamw state, without inject_hyperparams
    with pytest.raises(ValueError, match="lr"):
        stability.is_accessible(
            squared_error, params, 0, data=data, optimizer_state=plain, progress=False
        )
