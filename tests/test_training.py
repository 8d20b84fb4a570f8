"""train_async (training from initialization under simulated asynchrony) and
simulate_async's tracker option, against independent oracles.

Oracles: optax's own SGD (``optax.sgd`` with momentum / Nesterov) stepped in a
Python loop over the same mini-batches, for tau = 0; a plain-numpy replay of the
delayed update rules (history lists, hand-written gradient of a linear
least-squares model, per-worker momentum buffers in a dict), for delays; numpy
for the batch order's without-replacement property.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stability.simulate import simulate_async
from stability.training import TrainingRun, batch_indices, train_async

N, D, K = 23, 3, 2  # examples, inputs, outputs


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D))
    y = x @ rng.normal(size=(D, K)) + 0.1 * rng.normal(size=(n, K))
    return jnp.asarray(x), jnp.asarray(y)


def _params(seed=1):
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(D, K))), "b": jnp.asarray(rng.normal(size=(K,)))}


def linear_loss(p, batch):
    """0.5 * mean over examples of ||x W + b - y||^2."""
    x, y = batch
    return 0.5 * jnp.mean(jnp.sum(jnp.square(x @ p["w"] + p["b"] - y), axis=-1))


def tanh_loss(p, batch):
    """A small nonlinear model (a tanh layer) for the optax comparison."""
    x, y = batch
    return 0.5 * jnp.mean(jnp.sum(jnp.square(jnp.tanh(x @ p["w"]) + p["b"] - y), axis=-1))


def numpy_grad(w, b, x, y):
    """Gradient of `linear_loss` written out: r = x W + b - y, dW = x^T r / B, db = mean r."""
    r = x @ w + b - y
    return x.T @ r / x.shape[0], r.mean(axis=0)


def numpy_replay(params, data, *, lr, beta, rule, delays, workers, batches):
    """The delayed rules on `linear_loss` with explicit history lists.

    The gradient applied at step t is taken at w_{t - delays[t]} on batch
    ``batches[t]`` (None: all data). heavy_ball / nesterov keep one buffer;
    shifted keeps one per worker (``workers[t]`` pushes at step t).
    """
    x, y = (np.asarray(a) for a in data)
    ws = [(np.asarray(params["w"]), np.asarray(params["b"]))]
    v = (np.zeros_like(ws[0][0]), np.zeros_like(ws[0][1]))
    per_worker = {}
    for t, d in enumerate(delays):
        idx = slice(None) if batches is None else batches[t]
        g = numpy_grad(*ws[t - d], x[idx], y[idx])
        if rule == "shifted":
            vk = per_worker.get(workers[t], (0.0 * g[0], 0.0 * g[1]))
            vk = (beta * vk[0] + g[0], beta * vk[1] + g[1])
            per_worker[workers[t]] = vk
            step = vk
        else:
            v = (beta * v[0] + g[0], beta * v[1] + g[1])
            step = v if rule == "heavy_ball" else (g[0] + beta * v[0], g[1] + beta * v[1])
        w, b = ws[t]
        ws.append((w - lr * step[0], b - lr * step[1]))
    return ws


# ---------------------------------------------------------------- batch order


def test_batch_indices_sample_without_replacement_per_epoch():
    n, bs, epochs = 23, 5, 4
    order = batch_indices(n, bs, epochs, seed=3)
    per_epoch = n // bs
    assert order.shape == (epochs * per_epoch, bs) and order.dtype == np.int32
    for e in range(epochs):
        block = order[e * per_epoch : (e + 1) * per_epoch].ravel()
        assert len(np.unique(block)) == block.size  # no example twice in an epoch
        assert block.min() >= 0 and block.max() < n
    # each epoch is a fresh order, and the seed decides it
    assert not np.array_equal(order[:per_epoch], order[per_epoch : 2 * per_epoch])
    np.testing.assert_array_equal(order, batch_indices(n, bs, epochs, seed=3))
    assert not np.array_equal(order, batch_indices(n, bs, epochs, seed=4))


# ---------------------------------------------------------------- train_async


def test_reproducible_from_seed():
    data, p0 = _data(), _params()
    # the configuration of a replay test below (one compiled program for both)
    kw = dict(lr=0.1, beta=0.6, momentum="nesterov", num_workers=4, schedule="random")
    kw |= dict(batch_size=5, epochs=4, chunk=5)
    a = train_async(linear_loss, p0, data, seed=7, **kw)
    b = train_async(linear_loss, p0, data, seed=7, **kw)
    c = train_async(linear_loss, p0, data, seed=8, **kw)
    assert isinstance(a, TrainingRun)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.batch_loss, b.batch_loss)
    np.testing.assert_array_equal(a.delays, b.delays)
    assert not np.allclose(a.params["w"], c.params["w"])  # another batch and worker order
    assert not np.array_equal(a.delays, c.delays)


@pytest.mark.parametrize(
    "momentum,beta,delay",
    [
        ("heavy_ball", 0.9, {"tau": 0}),
        ("nesterov", 0.9, {"num_workers": 1}),
        ("shifted", 0.9, {"num_workers": 1}),  # one worker: its own buffer is the buffer
    ],
)
def test_no_delay_equals_optax_minibatch_sgd(momentum, beta, delay):
    data, p0 = _data(), _params()
    lr, bs, epochs, seed = 0.05, 4, 3, 2
    run = train_async(
        tanh_loss,
        p0,
        data,
        lr=lr,
        batch_size=bs,
        epochs=epochs,
        beta=beta,
        momentum=momentum,
        seed=seed,
        chunk=2,
        **delay,
    )
    opt = optax.sgd(lr, momentum=beta or None, nesterov=momentum == "nesterov")

    @jax.jit
    def optax_step(p, state, batch):
        updates, state = opt.update(jax.grad(tanh_loss)(p, batch), state, p)
        return optax.apply_updates(p, updates), state

    p, state = p0, opt.init(p0)
    losses = [tanh_loss(p, data)]
    for t, idx in enumerate(batch_indices(N, bs, epochs, seed)):
        p, state = optax_step(p, state, (data[0][idx], data[1][idx]))
        if (t + 1) % 2 == 0 or t + 1 == len(run.batch_loss):
            losses.append(tanh_loss(p, data))
    np.testing.assert_allclose(run.train_loss, np.asarray(losses), rtol=1e-12)
    for x, y in zip(jax.tree.leaves(run.params), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(run.delays, 0)
    assert list(run.step) == [0, *range(2, len(run.batch_loss), 2), len(run.batch_loss)]


@pytest.mark.parametrize(
    "momentum,delay,batch_size",
    [
        ("heavy_ball", {"tau": 3}, 4),
        ("nesterov", {"num_workers": 4, "schedule": "random"}, 5),
        ("shifted", {"tau": 2}, None),  # full-batch delayed GD
        ("shifted", {"num_workers": 3}, 4),
    ],
)
def test_delayed_run_equals_numpy_replay(momentum, delay, batch_size):
    data, p0 = _data(), _params()
    lr, beta, epochs, seed = 0.1, 0.6, 4, 5
    if batch_size is None:
        epochs = 12  # full batch: one step per epoch
    run = train_async(
        linear_loss,
        p0,
        data,
        lr=lr,
        beta=beta,
        momentum=momentum,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
        chunk=5,
        **delay,
    )
    steps = len(run.delays)
    assert steps == epochs * (1 if batch_size is None else N // batch_size)
    tau = delay.get("tau")
    n_workers = delay.get("num_workers")
    if tau is not None:
        expected = np.minimum(np.arange(steps), tau)
        np.testing.assert_array_equal(run.delays, expected)
        workers = np.arange(steps) % (tau + 1)  # the buffer a constant delay cycles through
    elif delay.get("schedule") != "random":
        np.testing.assert_array_equal(run.delays, np.minimum(np.arange(steps), n_workers - 1))
        workers = np.arange(steps) % n_workers
    else:  # random order: delays in 0..2N-2, and not constant
        assert run.delays.max() <= 2 * n_workers - 2 and len(set(run.delays[n_workers:])) > 1
        workers = None  # not needed by nesterov
    batches = None if batch_size is None else batch_indices(N, batch_size, epochs, seed)
    ws = numpy_replay(
        p0,
        data,
        lr=lr,
        beta=beta,
        rule=momentum,
        delays=run.delays,
        workers=workers,
        batches=batches,
    )
    np.testing.assert_allclose(run.params["w"], ws[-1][0], rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(run.params["b"], ws[-1][1], rtol=1e-11, atol=1e-13)
    expected_loss = [float(linear_loss({"w": w, "b": b}, data)) for w, b in ws]
    np.testing.assert_allclose(run.train_loss, np.asarray(expected_loss)[run.step], rtol=1e-11)
    # the mini-batch loss of step t is taken at the stale weights, on batch t
    t = steps - 1
    w, b = ws[t - run.delays[t]]
    idx = slice(None) if batches is None else batches[t]
    stale = float(linear_loss({"w": w, "b": b}, (data[0][idx], data[1][idx])))
    np.testing.assert_allclose(run.batch_loss[t], stale, rtol=1e-11)


def test_eval_records_tracker_and_divergence():
    data, held_out, p0 = _data(0), _data(9, n=11), _params()

    class Recorder:
        every = 5

        def __init__(self):
            self.history = {"step": [], "w": []}

        def __call__(self, params, step):
            self.history["step"].append(step)
            self.history["w"].append(np.asarray(params["w"]))

    def eval_fn(p, d):
        return {"loss": linear_loss(p, d), "norm": jnp.sum(jnp.square(p["w"]))}

    tracker = Recorder()
    run = train_async(
        linear_loss,
        p0,
        data,
        lr=0.1,
        batch_size=4,
        epochs=3,
        tau=3,
        eval_data=held_out,
        eval_fn=eval_fn,
        tracker=tracker,
    )
    # chunk defaults to tracker.every; records and tracker calls at 0 and chunk ends
    assert list(run.step) == [0, 5, 10, 15]
    assert tracker.history["step"] == [0, 5, 10, 15] and run.sharpness is tracker.history
    np.testing.assert_array_equal(tracker.history["w"][-1], run.params["w"])
    np.testing.assert_allclose(run.epoch, run.step / 5)
    np.testing.assert_allclose(run.eval["loss"][-1], linear_loss(run.params, held_out), rtol=1e-13)
    np.testing.assert_allclose(run.eval["norm"][0], jnp.sum(jnp.square(p0["w"])), rtol=1e-13)
    np.testing.assert_allclose(run.train_loss[-1], linear_loss(run.params, data), rtol=1e-13)
    assert not run.diverged
    # default eval: the loss on the held-out data; none without it
    same = dict(batch_size=4, tau=3, chunk=5)  # the compiled chunk of a replay test
    plain = train_async(linear_loss, p0, data, lr=0.1, epochs=1, eval_data=held_out, **same)
    assert set(plain.eval) == {"loss"}
    assert train_async(linear_loss, p0, data, lr=0.1, epochs=1, **same).eval == {}
    # far above the stable lr: the run stops at the first non-finite chunk
    bad = train_async(linear_loss, p0, data, lr=1e3, epochs=300, **same)
    assert bad.diverged and bad.step[-1] < 1500 and len(bad.batch_loss) == bad.step[-1]
    assert not np.isfinite(bad.train_loss[-1])
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(bad.params))


def test_with_sharpness_tracker():
    """The linear model's Hessian is I_K (x) X1^T X1 / n (X1 = [x, 1]) at every point:
    each check equals its top eigenvalue (numpy), the limit is the run's threshold.
    (Full-batch tau = 2 shifted in chunks of 5: the program of the replay test.)"""
    from stability import SharpnessTracker, max_stable_sharpness

    data, p0 = _data(), _params()
    x1 = np.hstack([np.asarray(data[0]), np.ones((N, 1))])
    top = np.linalg.eigvalsh(x1.T @ x1 / N)[-1]
    tracker = SharpnessTracker(
        linear_loss, data, lr=0.05, tau=2, beta=0.5, momentum="shifted", every=5, tol=1e-8
    )
    run = train_async(
        linear_loss,
        p0,
        data,
        lr=0.05,
        tau=2,
        beta=0.5,
        momentum="shifted",
        batch_size=None,
        epochs=15,
        tracker=tracker,
    )
    assert run.sharpness["step"] == [0, 5, 10, 15]
    np.testing.assert_allclose(run.sharpness["sharpness"], top, rtol=1e-7)
    limit = max_stable_sharpness(0.05, 2, 0.5, momentum="shifted")
    np.testing.assert_allclose(run.sharpness["threshold"], limit, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"tau": 1, "num_workers": 2}, ValueError, "exactly one of tau and num_workers"),
        ({"tau": 1, "batch_size": 24}, ValueError, "batch_size must be in 1..23"),
        ({"tau": 1, "epochs": 0}, ValueError, "epochs must be an integer >= 1"),
        ({"tau": 1, "lr": "0.1"}, TypeError, "lr must be a real number"),
        ({"tau": 1, "beta": 1.0}, ValueError, "beta must be in"),
        ({"tau": 1, "momentum": "adam"}, ValueError, "momentum must be one of"),
        ({"tau": 1, "schedule": "random"}, ValueError, "needs num_workers"),
        ({"tau": 1, "eval_fn": len}, ValueError, "eval_fn needs eval_data"),
        ({"tau": 1, "tracker": 3}, TypeError, "tracker must be callable"),
        ({"tau": 1, "chunk": 0}, ValueError, "chunk must be an integer >= 1"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, match):
    args = {"lr": 0.1, "batch_size": 4, "epochs": 1} | kwargs
    with pytest.raises(error, match=match):
        train_async(linear_loss, _params(), _data(), **args)


def test_integer_params_rejected():
    with pytest.raises(TypeError, match="params must be floating-point"):
        train_async(
            linear_loss,
            {"w": jnp.ones((D, K), jnp.int32)},
            _data(),
            lr=0.1,
            batch_size=4,
            epochs=1,
            tau=0,
        )


# ---------------------------------------------------------------- simulate_async(tracker=...)


def test_simulate_with_tracker_is_the_same_run():
    """Chunked for a tracker, the run is step for step the untracked one."""
    data, p0 = _data(), _params()

    class Recorder:
        every = 4

        def __init__(self):
            self.calls = []

        def __call__(self, params, step):
            self.calls.append((step, np.asarray(params["w"])))

    kw = dict(
        lr=0.1,
        num_workers=3,
        schedule="random",
        beta=0.8,
        momentum="shifted",
        batch_size=5,
        steps=16,
        seed=3,
        record_every=2,
    )
    plain = simulate_async(linear_loss, p0, data, **kw)
    tracker = Recorder()
    tracked = simulate_async(linear_loss, p0, data, tracker=tracker, **kw)
    np.testing.assert_array_equal(tracked.step, plain.step)
    np.testing.assert_array_equal(tracked.delays, plain.delays)
    np.testing.assert_allclose(tracked.loss, plain.loss, rtol=1e-13)
    np.testing.assert_allclose(tracked.distance, plain.distance, rtol=1e-13)
    for x, y in zip(jax.tree.leaves(tracked.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-13)
    assert [s for s, _ in tracker.calls] == [0, 4, 8, 12, 16]
    np.testing.assert_array_equal(tracker.calls[0][1], p0["w"])
    np.testing.assert_array_equal(tracker.calls[-1][1], tracked.params["w"])
    with pytest.raises(ValueError, match="record_every must divide tracker.every=4"):
        simulate_async(linear_loss, p0, data, tracker=tracker, **(kw | {"record_every": 3}))
    with pytest.raises(TypeError, match="tracker must be callable"):
        simulate_async(linear_loss, p0, data, tracker=object(), **kw)
