"""`simulate_optax` (any optax optimizer with a delayed gradient) against a plain
Python loop that applies the same optimizer to the gradient of w_{t - tau}, and
`frozen_adam` against the scalar recurrence of docs/theory.md section 16; the
tracker of the preconditioned sharpness on a live Adam state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stability import SharpnessTracker, hessian_spectrum, max_stable_sharpness
from stability.curvature.preconditioner import Preconditioner, preconditioner_from_optax
from stability.delayed_optax import frozen_adam, simulate_optax
from stability.theory.rules.adam import Adam


def _problem():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(20, 3)))
    y = jnp.asarray(rng.normal(size=(20,)))

    def loss(p, b):
        return jnp.mean((jnp.tanh(b[0] @ p["w"]) * p["s"] - b[1]) ** 2)

    return loss, {"w": jnp.asarray(rng.normal(size=3)), "s": jnp.asarray(1.3)}, (x, y)


LOSS, P0, DATA = _problem()


@pytest.mark.parametrize("tau", [0, 1, 3])
@pytest.mark.parametrize(
    "make", [lambda: optax.adamw(0.05, weight_decay=0.1), lambda: optax.sgd(0.1, 0.9)]
)
def test_simulate_optax_is_the_delayed_loop(tau, make):
    tx = make()
    run = simulate_optax(LOSS, P0, DATA, tx, tau=tau, steps=25, record_every=7)
    history, state, w = [P0], tx.init(P0), P0
    for t in range(25):
        g = jax.grad(LOSS)(history[max(0, t - tau)], DATA)
        with jax.numpy_dtype_promotion("standard"):  # optax's own arithmetic
            updates, state = tx.update(g, state, w)
        w = optax.apply_updates(w, updates)
        history.append(w)
    np.testing.assert_array_equal(run.step, [0, 7, 14, 21, 25])
    for key in w:
        np.testing.assert_allclose(run.params[key], w[key], rtol=0, atol=1e-14)
    assert run.loss[-1] == pytest.approx(float(LOSS(w, DATA)), rel=1e-12)
    assert not run.diverged


def test_simulate_optax_stops_when_the_loss_blows_up():
    run = simulate_optax(LOSS, P0, DATA, optax.sgd(50.0), tau=2, steps=400, record_every=10)
    assert run.diverged and run.step[-1] < 400
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree_util.tree_leaves(run.params))


@pytest.mark.parametrize("bad, match", [
    (dict(tau=-1), "tau"), (dict(steps=0), "steps"), (dict(record_every=0), "record_every"),
    (dict(optimizer=object()), "optimizer"), (dict(batch_size=21), "batch_size"),
])  # fmt: skip
def test_simulate_optax_names_bad_arguments(bad, match):
    kwargs = dict(tau=1, steps=3, optimizer=optax.sgd(0.1)) | bad
    optimizer = kwargs.pop("optimizer")
    with pytest.raises((ValueError, TypeError), match=match):
        simulate_optax(LOSS, P0, DATA, optimizer, **kwargs)


def test_frozen_adam_is_the_scalar_recurrence():
    """On L = a w^2 / 2 with P fixed, frozen_adam under delay tau is m+ = b1 m + (1 - b1)
    a w_{t-tau}, w+ = (1 - lr wd) w - lr c m+ / P (section 16), step by step."""
    a, p, lr, b1, c, wd, tau = 3.0, 0.5, 0.02, 0.8, 1.25, 0.1, 2
    pre = Preconditioner(
        diagonal={"w": jnp.asarray(p)}, kind="adamw", lr=lr, b1=b1, b2=0.999, eps=1e-8,
        eps_root=0.0, weight_decay=wd, count=3, bias_correction=c,
    )  # fmt: skip
    run = simulate_optax(
        lambda w, batch: 0.5 * a * w["w"] ** 2 + 0.0 * jnp.sum(batch),
        {"w": jnp.asarray(1.0)}, jnp.zeros((1,)), frozen_adam(pre, lr), tau=tau, steps=30,
        record_every=30,
    )  # fmt: skip
    ws, m = [1.0], 0.0
    for t in range(30):
        m = b1 * m + (1 - b1) * a * ws[max(0, t - tau)]
        ws.append((1 - lr * wd) * ws[-1] - lr * c * m / p)
    assert float(run.params["w"]) == pytest.approx(ws[-1], rel=1e-12)


def test_tracker_follows_the_preconditioned_sharpness_of_live_adam():
    """With opt_state, each record is the top eigenvalue of P^-1/2 H P^-1/2 at that step's
    state (against a direct hessian_spectrum call) and its threshold the delayed Adam
    limit at the state's bias correction, (45)."""
    lr, tau = 0.01, 2
    tracker = SharpnessTracker(LOSS, DATA, lr=lr, tau=tau, every=5, tol=1e-8, max_hvps=10)
    run = simulate_optax(LOSS, P0, DATA, optax.adam(lr), tau=tau, steps=10, record_every=5,
                         tracker=tracker)  # fmt: skip
    records = tracker.records
    assert [r.step for r in records] == [5, 10]  # step 0: no moments yet, no check
    pre = preconditioner_from_optax(run.opt_state, learning_rate=lr)
    truth = hessian_spectrum(LOSS, run.params, DATA, preconditioner=pre, tol=1e-10, progress=False)
    assert records[-1].sharpness == pytest.approx(float(truth.eigenvalues[0]), rel=1e-8)
    limit = float(max_stable_sharpness(lr * pre.bias_correction, tau, 0.9, momentum=Adam()))
    assert records[-1].threshold == pytest.approx(limit, rel=1e-12)
    assert records[0].threshold != records[-1].threshold  # c moves with the step count
