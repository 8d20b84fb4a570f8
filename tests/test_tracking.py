"""``SharpnessTracker``: records against dense ``jax.hessian`` eigenvalues along a
training run, the threshold against ``max_stable_sharpness``, the schedule of
checks, warm against cold products, no compilation after the first check, the
plot's data, and input errors."""

import logging
import re

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stability
from stability import SharpnessTracker, max_stable_sharpness


def _problem(seed=0, n_in=5, hidden=10, n_out=3, n_ex=32):
    rng = np.random.default_rng(seed)  # numpy: no RNG programs to compile
    params = {
        "w1": jnp.asarray(rng.standard_normal((n_in, hidden)) / np.sqrt(n_in)),
        "w2": jnp.asarray(rng.standard_normal((hidden, n_out)) / np.sqrt(hidden)),
    }
    x = jnp.asarray(rng.standard_normal((n_ex, n_in)))
    y = jnp.asarray(rng.standard_normal((n_ex, n_out)))

    def loss(p, batch):
        xb, yb = batch
        out = jnp.tanh(xb @ p["w1"]) @ p["w2"]
        return 0.5 * jnp.mean(jnp.sum((out - yb) ** 2, axis=-1))

    return loss, params, (x, y)


def _dense_eigs(loss, params, batch):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return np.linalg.eigvalsh(np.asarray(_dense_hessian(loss, unravel, flat, batch)))


@jax.jit(static_argnames=("loss", "unravel"))
def _dense_hessian(loss, unravel, flat, batch):
    return jax.hessian(lambda f: loss(unravel(f), batch))(flat)


def _train(loss, params, batch, steps, lr, callback):
    """A plain optax loop, as a user writes it."""
    opt = optax.sgd(lr)
    state = opt.init(params)
    grad = jax.jit(jax.grad(loss))
    for step in range(steps):
        updates, state = opt.update(grad(params, batch), state)
        params = optax.apply_updates(params, updates)
        callback(params, step)
    return params


def test_records_match_dense_eigenvalues_along_an_optax_run():
    loss, p0, batch = _problem()
    lr, tau = 0.2, 4
    tracker = SharpnessTracker(loss, batch, lr=lr, tau=tau, every=3, tol=1e-8)
    seen = {}

    def cb(params, step):
        rec = tracker(params, step)
        if rec is not None:
            seen[step] = (rec, _dense_eigs(loss, params, batch)[-1])

    _train(loss, p0, batch, steps=10, lr=lr, callback=cb)
    assert sorted(seen) == [0, 3, 6, 9]
    limit = max_stable_sharpness(lr, tau)
    assert tracker.threshold == limit
    for step, (rec, truth) in seen.items():
        assert rec.step == step
        assert abs(rec.sharpness - truth) <= rec.error
        assert rec.sharpness <= truth + 1e-12
        assert rec.threshold == limit
        assert rec.fraction_of_limit == pytest.approx(rec.sharpness / limit, rel=1e-15)
        assert rec.converged
        assert rec.stable is bool(truth < limit)  # far from the limit: decided
    h = tracker.history
    assert h["step"] == [0, 3, 6, 9]
    assert h["warm"] == [False, True, True, True]
    assert h["sharpness"] == [seen[s][0].sharpness for s in (0, 3, 6, 9)]
    arr = tracker.arrays()
    np.testing.assert_array_equal(arr["num_hvps"], h["num_hvps"])
    assert arr["stable"].dtype == np.float64


def test_stable_field_reads_the_residual_certificate():
    from stability.curvature.tracking import _stable

    assert _stable(1.0, 0.1, 1.2) is True
    assert _stable(1.0, 0.3, 1.2) is None  # 1.3 > 1.2: not certified
    assert _stable(1.2, 0.0, 1.2) is False  # a Ritz value at the limit proves it
    assert _stable(1.5, 0.5, 1.2) is False


def test_threshold_for_momentum_and_delay_distribution():
    loss, p0, batch = _problem()
    dist = stability.random_order(3)
    t = SharpnessTracker(loss, batch, lr=0.1, tau=dist, beta=0.5, momentum="shifted")
    assert t.threshold == max_stable_sharpness(0.1, dist, 0.5, momentum="shifted")
    rec = t(p0)
    assert rec.threshold == t.threshold and rec.step == 0
    assert t(p0).step == 1  # step=None counts the calls


def test_warm_checks_use_fewer_products_and_cold_every():
    loss, p0, batch = _problem(seed=1)
    warm = SharpnessTracker(loss, batch, lr=0.1, tol=1e-3, cold_every=4)
    cold = SharpnessTracker(loss, batch, lr=0.1, tol=1e-3, warm_start=False)

    def cb(params, step):
        warm(params, step)
        cold(params, step)

    _train(loss, p0, batch, steps=8, lr=0.1, callback=cb)
    assert warm.history["warm"] == [False, True, True, True, False, True, True, True]
    assert not any(cold.history["warm"])
    w = [r.num_hvps for r in warm.records if r.warm]
    c = [r.num_hvps for r in cold.records]
    assert 2 * np.mean(w) <= np.mean(c), (w, c)
    np.testing.assert_allclose(
        warm.history["sharpness"], cold.history["sharpness"],
        atol=max(warm.history["error"]) + max(cold.history["error"]),
    )  # fmt: skip


def test_a_check_may_stop_after_one_product_within_tol():
    # Slowly moving parameters: the extrapolated start's own residual (the first
    # Lanczos step's ||H v - (v'Hv) v||) already meets tol, and the check stops there.
    loss, p0, batch = _problem(seed=1)
    tol = 1e-3
    tracker = SharpnessTracker(loss, batch, lr=0.01, tol=tol)
    truth = {}

    def cb(params, step):
        if tracker(params, step) is not None:
            truth[step] = _dense_eigs(loss, params, batch)[-1]

    _train(loss, p0, batch, steps=10, lr=0.01, callback=cb)
    one = [r for r in tracker.records if r.num_hvps == 1]
    assert one, [r.num_hvps for r in tracker.records]
    for r in one:
        assert r.warm and r.converged
        assert r.error <= tol * abs(r.sharpness)
        assert abs(r.sharpness - truth[r.step]) <= r.error
        assert r.sharpness <= truth[r.step] + 1e-12


def test_extrapolated_starts_use_fewer_products():
    loss, p0, batch = _problem(seed=3)
    plain = SharpnessTracker(loss, batch, lr=0.05, tol=1e-3, extrapolate=False)
    moved = SharpnessTracker(loss, batch, lr=0.05, tol=1e-3)
    assert moved.extrapolate and moved.cold_every == 20

    def cb(params, step):
        plain(params, step)
        moved(params, step)

    _train(loss, p0, batch, steps=12, lr=0.05, callback=cb)
    p = [r.num_hvps for r in plain.records[1:]]
    m = [r.num_hvps for r in moved.records[1:]]
    assert sum(m) < sum(p), (m, p)
    np.testing.assert_allclose(
        moved.history["sharpness"], plain.history["sharpness"],
        atol=max(moved.history["error"]) + max(plain.history["error"]),
    )  # fmt: skip


def test_a_top_direction_that_overtakes_is_found_by_the_cold_check():
    # H = diag(eigs) + c e_0 e_0' over the leaf "w" ("c" is not differentiated):
    # the top eigenvalue 2 (direction n-1) until c jumps to 3, when direction 0
    # (eigenvalue 3) overtakes it. A warm check started on the old top eigenvector
    # can stop there (a true eigenvalue, within its error bar, a lower bound on the
    # top); the periodic cold check finds the new top.
    n = 60
    eigs = jnp.asarray(np.r_[np.linspace(0.0, 1.0, n - 1), 2.0])

    def loss(p):
        return 0.5 * jnp.sum(eigs * p["w"] ** 2) + 0.5 * p["c"] * p["w"][0] ** 2

    trainable = {"w": True, "c": False}
    tracker = SharpnessTracker(loss, lr=0.8, tol=1e-3, cold_every=4, trainable=trainable)
    for step, c in enumerate([0.0, 0.0, 3.0, 3.0, 3.0]):
        tracker({"w": jnp.zeros(n), "c": jnp.asarray(c)}, step)
    h = tracker.history
    assert h["warm"] == [False, True, True, True, False]
    for lam, err, c in zip(h["sharpness"], h["error"], [0.0, 0.0, 3.0, 3.0, 3.0], strict=True):
        top = 3.0 if c else 2.0
        assert lam <= top + 1e-12
        assert min(abs(lam - 2.0), abs(lam - top)) <= err
    assert abs(h["sharpness"][4] - 3.0) <= h["error"][4]
    assert h["stable"][4] is False  # 3 >= the limit 2 / 0.8 = 2.5


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names = []

    def emit(self, record):
        m = re.match(r"Finished XLA compilation of (.*) in ", record.getMessage())
        if m:
            self.names.append(m.group(1))


def test_a_check_compiles_nothing_after_the_first():
    loss, p0, batch = _problem(seed=2)
    tracker = SharpnessTracker(loss, batch, lr=0.1, tol=1e-6)
    grad = jax.jit(jax.grad(loss))
    params = p0
    tracker(params, 0)
    tracker(params, 1)  # the first warm check (eigenvector path) compiles its bits
    handler = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles(True):
            for step in range(2, 6):
                params = jax.tree_util.tree_map(lambda a, g: a - 0.1 * g, params,
                                                grad(params, batch))  # fmt: skip
                tracker(params, step)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    # Only the user's own update (tree_map's subtraction) may compile; the tracker's
    # checks with differing product counts compile nothing.
    assert len({r.num_hvps for r in tracker.records}) >= 1
    tracker_programs = [n for n in handler.names if "hvp" in n or "lanczos" in n]
    assert tracker_programs == [], handler.names


def test_plot_draws_the_history():
    loss, p0, batch = _problem()
    t = SharpnessTracker(loss, batch, lr=0.1, tol=1e-6)
    t(p0, 0)
    t(jax.tree_util.tree_map(lambda a: 1.01 * a, p0), 5)
    ax = t.plot()
    line = ax.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), [0, 5])
    np.testing.assert_allclose(line.get_ydata(), t.history["sharpness"])
    ys = {tuple(ln.get_ydata()) for ln in ax.lines}
    assert (t.threshold, t.threshold) in ys
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"every": 0}, ValueError, "every"),
        ({"tol": -1.0}, ValueError, "tol"),
        ({"cold_every": 0}, ValueError, "cold_every"),
        ({"lr": "0.1"}, TypeError, "lr"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_arguments_are_named(kwargs, err, match):
    loss, _, batch = _problem()
    args = {"lr": 0.1, **kwargs}
    with pytest.raises(err, match=match):
        SharpnessTracker(loss, batch, **args)


def test_bad_step_and_loss():
    loss, p0, batch = _problem()
    with pytest.raises(TypeError, match="loss must be callable"):
        SharpnessTracker(None, batch, lr=0.1)
    t = SharpnessTracker(loss, batch, lr=0.1)
    with pytest.raises(TypeError, match="step must be an integer"):
        t(p0, 1.5)
    assert "0 checks" in repr(t)
