"""The preconditioned Hessian spectrum of Adam, AdamW and RMSProp (issue 22, part 2a).

Oracles: the dense float64 ``P^-1/2 H P^-1/2`` (``jax.hessian`` of the raveled loss,
``numpy.linalg.eigvalsh``) with ``P`` read from a real optax state after real training
steps, and optax's own update: ``-jax.jacfwd`` of one optax step with its second
moment and count frozen is ``lr (1 - b1) c P^-1 H (+ lr wd I)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from stability import (
    Preconditioner,
    hessian_spectrum,
    preconditioner_from_optax,
    weight_space_direction,
)
from stability.curvature.preconditioner import change_of_variables
from tests.compile_speed import xla_optimizations

SIZES = (6, 16, 16, 3)  # 435 parameters


def _init(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    p = {}
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        p[f"w{i}"] = jnp.asarray(rng.normal(size=(a, b)) / np.sqrt(a), dtype)
        p[f"b{i}"] = jnp.asarray(0.1 * rng.normal(size=(b,)), dtype)
    return p


def _data(n=64, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZES[0]))
    y = rng.integers(0, SIZES[-1], size=n)
    return jnp.asarray(x, dtype), jnp.asarray(y)


def loss(p, batch):
    x, y = batch
    h = x
    for i in range(len(SIZES) - 1):
        h = h @ p[f"w{i}"] + p[f"b{i}"]
        if i < len(SIZES) - 2:
            h = jnp.tanh(h)
    logp = jax.nn.log_softmax(h)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _train(optimizer, steps=60, dtype=np.float64):
    """Real training steps of ``optimizer`` from ``_init``: (params, state)."""
    p, batch = _init(dtype=dtype), _data(dtype=dtype)
    state = optimizer.init(p)

    @jax.jit
    def step(p, state):
        g = jax.grad(loss)(p, batch)
        u, state = optimizer.update(g, state, p)
        return optax.apply_updates(p, u), state

    with jax.numpy_dtype_promotion("standard"), xla_optimizations():  # optax's own code
        for _ in range(steps):
            p, state = step(p, state)
    return p, state


_DENSE = {}


def _dense_hessian(p, batch):
    """The dense float64 Hessian of the raveled loss (jitted once per shapes)."""
    flat, unravel = ravel_pytree(p)
    if "h" not in _DENSE:
        with xla_optimizations():
            _DENSE["h"] = jax.jit(jax.hessian(lambda f, p0, b: loss(ravel_pytree(p0)[1](f), b)))
    with xla_optimizations():
        return np.asarray(_DENSE["h"](flat, p, batch))


def _dense_preconditioned(p, batch, diagonal):
    h = _dense_hessian(p, batch)
    s = 1.0 / np.sqrt(np.asarray(ravel_pytree(diagonal)[0], np.float64))
    return s[:, None] * h * s[None, :], h, s


@pytest.fixture(scope="module")
def adam_run():
    return _train(optax.adam(1e-2))


@pytest.fixture(scope="module")
def adamw_run():
    return _train(optax.adamw(1e-2, weight_decay=1e-2))


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_extreme_eigenvalues_match_the_dense_preconditioned_hessian(name, adam_run, adamw_run):
    p, state = adam_run if name == "adam" else adamw_run
    batch = _data()
    pre = preconditioner_from_optax(state, p, weight_decay=1e-2 if name == "adamw" else None)
    assert pre.kind == name and pre.count == 60
    a, h, s = _dense_preconditioned(p, batch, pre.diagonal)
    truth = np.linalg.eigvalsh(a)
    spec = hessian_spectrum(loss, p, batch, k=2, tol=1e-11, converge_smallest=True,
                            return_vectors=True, preconditioner=pre, progress=False)  # fmt: skip
    scale = np.abs(truth).max()
    assert spec.converged.all() and spec.smallest_converged
    np.testing.assert_allclose(spec.eigenvalues, truth[::-1][:2], rtol=0, atol=1e-8 * scale)
    assert abs(spec.smallest - truth[0]) <= 1e-8 * scale
    assert spec.num_params == a.shape[0]
    # Not the plain Hessian's spectrum: the preconditioning changes it.
    assert abs(np.linalg.eigvalsh(h)[-1] - truth[-1]) > 1e-3 * scale
    # The eigenvectors are in u; s * u is an eigenvector of P^-1 H in weight space.
    u = ravel_pytree(jax.tree.map(lambda x: x[0], spec.eigenvectors))[0]
    np.testing.assert_allclose(a @ u, spec.eigenvalues[0] * u, atol=1e-7 * scale)
    d = ravel_pytree(jax.tree.map(lambda x: x[0], weight_space_direction(spec.eigenvectors, pre)))[
        0
    ]
    np.testing.assert_allclose(d, s * u, rtol=1e-14)
    np.testing.assert_allclose((s * s) * (h @ d), spec.eigenvalues[0] * d,
                               atol=1e-7 * scale * np.abs(d).max())  # fmt: skip


def test_the_scale_is_an_argument_not_a_constant(adam_run):
    """Two preconditioners, the same loss object (compiled code reused): each run
    has its own spectrum, so ``s`` reaches the product as data."""
    p, state = adam_run
    batch = _data()
    pre = preconditioner_from_optax(state, p)

    def spread(d):  # P times 1, 2, 3, 1, 2, ...
        return d * (jnp.arange(d.size) % 3 + 1).reshape(d.shape).astype(d.dtype)

    other = jax.tree.map(spread, pre.diagonal)
    for diag in (pre.diagonal, other, pre):
        a = _dense_preconditioned(p, batch, getattr(diag, "diagonal", diag))[0]
        truth = np.linalg.eigvalsh(a)
        spec = hessian_spectrum(loss, p, batch, tol=1e-11, preconditioner=diag, progress=False)
        assert abs(spec.sharpness - truth[-1]) <= 1e-8 * truth[-1]


def _frozen_step_jacobian(optimizer, state, moment_index, decay, p, batch):
    """``-d(update)/dw`` of one optax step at ``p`` with the second moment and the
    count frozen at ``state``'s: the gradient is fed as ``g(w) - g(p)`` (zero at ``p``,
    so the second moment's own derivative vanishes), the state rewound one step with
    ``nu / decay`` so that optax's step recomputes exactly the state's ``nu`` and
    count."""
    inner = state[moment_index]
    fields = {"nu": jax.tree.map(lambda n: n / decay, inner.nu)}
    if "count" in inner._fields:
        fields["count"] = inner.count - 1
    rewound = list(state)
    rewound[moment_index] = inner._replace(**fields)
    rewound = tuple(rewound)
    g0 = jax.grad(loss)(p, batch)
    flat, unravel = ravel_pytree(p)

    def update(f):
        w = unravel(f)
        g = jax.tree.map(jnp.subtract, jax.grad(loss)(w, batch), g0)
        u, _ = optimizer.update(g, rewound, w)
        return ravel_pytree(u)[0]

    with jax.numpy_dtype_promotion("standard"), xla_optimizations():
        return -np.asarray(jax.jit(jax.jacfwd(update))(flat))


@pytest.mark.parametrize(
    "make, kwargs, decay",
    [
        (
            lambda: optax.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-9),
            {"b1": 0.8, "b2": 0.99, "eps": 1e-6, "eps_root": 1e-9},
            0.99,
        ),  # noqa: E501
        (lambda: optax.adamw(3e-3, weight_decay=0.05), {"weight_decay": 0.05}, 0.999),
        (
            lambda: optax.rmsprop(3e-3, decay=0.95, momentum=0.7),
            {"b2": 0.95, "momentum": 0.7},
            0.95,
        ),  # noqa: E501
        (
            lambda: optax.rmsprop(3e-3, eps_in_sqrt=False, bias_correction=True),
            {"eps_in_sqrt": False},
            0.9,
        ),  # noqa: E501
    ],
    ids=["adam-eps_root", "adamw", "rmsprop-momentum", "rmsprop-bias-corrected"],
)
def test_the_step_of_optax_is_lr_gain_p_inverse_h(make, kwargs, decay):
    optimizer = make()
    p, state = _train(optimizer, steps=25)
    batch = _data()
    pre = preconditioner_from_optax(state, p, learning_rate=3e-3, **kwargs)
    jac = _frozen_step_jacobian(optimizer, state, 0, decay, p, batch)
    h = _dense_hessian(p, batch)
    inv = 1.0 / np.asarray(ravel_pytree(pre.diagonal)[0])
    expected = pre.lr * (1 - pre.b1) * pre.bias_correction * inv[:, None] * h
    expected += pre.lr * pre.weight_decay * np.eye(h.shape[0])
    assert pre.gain == pytest.approx(pre.lr * (1 - pre.b1) * pre.bias_correction)
    np.testing.assert_allclose(jac, expected, rtol=0, atol=1e-9 * np.abs(expected).max())
    if pre.kind == "adam":
        assert pre.bias_correction == pytest.approx(1 / (1 - 0.8**25))
    if pre.kind == "rmsprop" and pre.b1:
        assert pre.gain == pytest.approx(pre.lr)  # heavy ball: c = 1 / (1 - momentum)


def _one_step(optimizer, params=None):
    p = _init() if params is None else params
    state = optimizer.init(p)
    g = jax.grad(loss)(p, _data())
    with jax.numpy_dtype_promotion("standard"):
        _, state = optimizer.update(g, state, p)
    return p, state


def test_reads_chains_injected_hyperparameters_and_rmsprop():
    p, chained = _one_step(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)))
    _, plain = _one_step(optax.adam(1e-3))
    a, b = preconditioner_from_optax(chained, p), preconditioner_from_optax(plain, p)
    assert a.kind == "adam" and a.lr is None and a.count == 1 and a.weight_decay == 0.0
    for x, y in zip(jax.tree.leaves(a.diagonal), jax.tree.leaves(b.diagonal), strict=True):
        np.testing.assert_array_equal(x, y)

    inject = optax.inject_hyperparams(optax.adamw)(
        learning_rate=0.02, b1=0.85, b2=0.95, eps=1e-7, weight_decay=0.3
    )
    _, state = _one_step(inject)
    pre = preconditioner_from_optax(state, p)
    assert pre.kind == "adamw"
    assert (pre.lr, pre.b1, pre.b2, pre.eps, pre.weight_decay) == pytest.approx(
        (0.02, 0.85, 0.95, 1e-7, 0.3)
    )
    assert pre.bias_correction == pytest.approx(1 / (1 - 0.85))
    g = jax.grad(loss)(p, _data())
    # After one step nu = (1 - b2) g^2 and v_hat = g^2: P = |g| + eps.
    for d, gi in zip(jax.tree.leaves(pre.diagonal), jax.tree.leaves(g), strict=True):
        np.testing.assert_allclose(d, np.abs(gi) + 1e-7, rtol=1e-12)
    with pytest.raises(ValueError, match="b1=0.9 contradicts"):
        preconditioner_from_optax(state, p, b1=0.9)

    masked = optax.adamw(1e-3, mask=jax.tree.map(lambda x: x.ndim > 1, p))
    _, state = _one_step(masked)
    pre = preconditioner_from_optax(state, p, kind="adamw")
    assert pre.weight_decay == 1e-4  # optax's default

    _, state = _one_step(optax.inject_hyperparams(optax.rmsprop)(learning_rate=0.1, momentum=0.5))
    pre = preconditioner_from_optax(state, p)
    assert (pre.kind, pre.lr, pre.b1, pre.count, pre.eps, pre.eps_root) == (
        "rmsprop", pytest.approx(0.1), pytest.approx(0.5), None, 0.0, pytest.approx(1e-8)
    )  # fmt: skip
    # rmsprop's defaults: decay 0.9, eps inside the root; nu = 0.1 g^2.
    for d, gi in zip(jax.tree.leaves(pre.diagonal), jax.tree.leaves(g), strict=True):
        np.testing.assert_allclose(d, np.sqrt(0.1 * gi**2 + 1e-8), rtol=1e-12)
    _, state = _one_step(optax.rmsprop(0.1, momentum=0.5))
    with pytest.raises(ValueError, match="momentum"):
        preconditioner_from_optax(state, p)
    _, state = _one_step(optax.rmsprop(0.1, centered=True))
    pre = preconditioner_from_optax(state, p)  # nu - mu^2 = 0.1 g^2 - 0.01 g^2
    for d, gi in zip(jax.tree.leaves(pre.diagonal), jax.tree.leaves(g), strict=True):
        np.testing.assert_allclose(d, np.sqrt(0.09 * gi**2 + 1e-8), rtol=1e-12)


def test_bad_states_and_arguments_are_refused(adam_run):
    p, state = adam_run
    _, sgd = _one_step(optax.sgd(0.1, momentum=0.9))
    with pytest.raises(ValueError, match="opt_state must hold an Adam or RMSProp state"):
        preconditioner_from_optax(sgd, p)
    _, ams = _one_step(optax.amsgrad(0.1))
    with pytest.raises(ValueError, match="ScaleByAmsgradState"):
        preconditioner_from_optax(ams, p)
    with pytest.raises(ValueError, match="opt_state has taken no update"):
        preconditioner_from_optax(optax.adam(1e-3).init(p), p)
    with pytest.raises(ValueError, match="params must have the structure"):
        preconditioner_from_optax(state, {"w0": p["w0"]})
    bad = dict(p, w0=p["w0"][:2])
    with pytest.raises(ValueError, match=r"params must have the shapes.*\['w0'\]"):
        preconditioner_from_optax(state, bad)
    with pytest.raises(ValueError, match="kind must be one of"):
        preconditioner_from_optax(state, p, kind="sgd")
    with pytest.raises(ValueError, match="weight_decay must be 0 for kind='adam'"):
        preconditioner_from_optax(state, p, kind="adam", weight_decay=0.1)
    with pytest.raises(ValueError, match="b1 must be in"):
        preconditioner_from_optax(state, p, b1=1.0)
    two = (state, state)
    with pytest.raises(ValueError, match="got 2"):
        preconditioner_from_optax(two, p)

    pre = preconditioner_from_optax(state, p)
    batch = _data()
    with pytest.raises(ValueError, match="preconditioner must be a Preconditioner"):
        hessian_spectrum(loss, p, batch, preconditioner={"w0": pre.diagonal["w0"]})
    wrong = dict(pre.diagonal, b0=pre.diagonal["b0"][:3])
    with pytest.raises(ValueError, match=r"preconditioner must have the shapes.*\['b0'\]"):
        hessian_spectrum(loss, p, batch, preconditioner=wrong)
    negative = dict(pre.diagonal, b1=-pre.diagonal["b1"])
    with pytest.raises(ValueError, match=r"finite and positive.*\['b1'\]"):
        hessian_spectrum(loss, p, batch, preconditioner=negative)
    with pytest.raises(ValueError, match="params must be finite"):
        hessian_spectrum(loss, dict(p, b0=p["b0"] * np.nan), batch, preconditioner=pre)
    with pytest.raises(TypeError, match="loss must be callable"):
        hessian_spectrum(3, p, batch, preconditioner=pre)


def test_untrained_leaves_pass_through(adam_run):
    """Linen-style variables: ``batch_stats`` beside ``params``, differentiated only
    through ``params`` (``trainable``); ``P`` from an optimizer over ``params``: one
    leaf per differentiated leaf, or the structure of the whole variables."""
    p, state = adam_run
    batch = _data()
    pre = preconditioner_from_optax(state, p)
    stats = {"mean": jnp.ones((3,)), "count": jnp.asarray(7)}

    def var_loss(v, b):
        return loss(v["params"], b) + 0.0 * jnp.sum(v["batch_stats"]["mean"])

    variables = {"params": p, "batch_stats": stats}
    only = lambda path, x: path[0].key == "params"  # noqa: E731
    ref = hessian_spectrum(loss, p, batch, tol=1e-10, preconditioner=pre, progress=False)
    full = {"params": pre.diagonal, "batch_stats": {"mean": jnp.ones((3,)), "count": 1.0}}
    for diag in (pre, full):
        spec = hessian_spectrum(var_loss, variables, batch, tol=1e-10, trainable=only,
                                preconditioner=diag, return_vectors=True,
                                progress=False)  # fmt: skip
        assert spec.num_params == ref.num_params
        assert spec.sharpness == pytest.approx(ref.sharpness, rel=1e-9)
        np.testing.assert_array_equal(spec.eigenvectors["batch_stats"]["count"], 7)
    with pytest.raises(ValueError, match="one leaf per differentiated leaf"):
        hessian_spectrum(var_loss, variables, batch, preconditioner=pre)  # stats too


def test_warm_start_batches_and_loops(adam_run):
    """A warm start in ``u`` (the previous eigenvectors), several batches, the device
    loop and power iteration give the same preconditioned spectrum."""
    p, state = adam_run
    batch = _data()
    pre = preconditioner_from_optax(state, p)
    cold = hessian_spectrum(loss, p, batch, tol=1e-9, return_vectors=True,
                            preconditioner=pre, progress=False)  # fmt: skip
    warm = hessian_spectrum(loss, p, batch, tol=1e-9, start=cold, preconditioner=pre,
                            progress=False)  # fmt: skip
    assert warm.num_hvps < cold.num_hvps
    assert warm.sharpness == pytest.approx(cold.sharpness, rel=1e-8)
    halves = [jax.tree.map(lambda x: x[:40], batch), jax.tree.map(lambda x: x[40:], batch)]
    split = hessian_spectrum(loss, p, halves, tol=1e-9, preconditioner=pre, progress=False)
    assert split.sharpness == pytest.approx(cold.sharpness, rel=1e-8)
    fused = hessian_spectrum(loss, p, batch, tol=1e-9, preconditioner=pre, loop="device",
                             return_vectors=True)  # fmt: skip
    assert fused.sharpness == pytest.approx(cold.sharpness, rel=1e-8)
    np.testing.assert_allclose(np.abs(fused.eigenvectors["w1"]), np.abs(cold.eigenvectors["w1"]),
                               atol=1e-6)  # fmt: skip
    power = hessian_spectrum(loss, p, batch, tol=1e-6, max_hvps=400, method="power",
                             preconditioner=pre, progress=False)  # fmt: skip
    assert power.sharpness == pytest.approx(cold.sharpness, rel=1e-5)
    problem = change_of_variables(loss, p, pre)
    assert problem.loss is change_of_variables(loss, p, pre.diagonal).loss  # compiled once


def test_float32_bar_contains_the_float64_truth():
    with jax.enable_x64(False):
        p32, state = _train(optax.adam(1e-2), steps=60, dtype=np.float32)
        pre = preconditioner_from_optax(state, p32)
        x, y = _data(dtype=np.float32)
        assert isinstance(pre, Preconditioner)
        assert jax.tree.leaves(pre.diagonal)[0].dtype == np.float32
        spec = hessian_spectrum(loss, p32, (x, y), k=1, tol=1e-5, converge_smallest=True,
                                preconditioner=pre, progress=False)  # fmt: skip
    p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), p32)
    diag64 = jax.tree.map(lambda a: np.asarray(a, np.float64), pre.diagonal)
    batch64 = (jnp.asarray(np.asarray(x), jnp.float64), jnp.asarray(np.asarray(y)))
    truth = np.linalg.eigvalsh(_dense_preconditioned(p64, batch64, diag64)[0])
    assert spec.converged[0]
    assert abs(spec.sharpness - truth[-1]) <= spec.sharpness_error
    if spec.smallest_converged:
        assert abs(spec.smallest - truth[0]) <= spec.smallest_error


def test_nnx_state():
    """An nnx model with batch statistics: params its ``nnx.Param`` state, ``P`` from
    ``optax.adam`` over that state."""
    from flax import nnx

    from stability import loss_from_model

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(6, 16, rngs=rngs, param_dtype=jnp.float64)
            self.bn = nnx.BatchNorm(16, use_running_average=True, param_dtype=jnp.float64,
                                    rngs=rngs)  # fmt: skip
            self.l2 = nnx.Linear(16, 3, rngs=rngs, param_dtype=jnp.float64)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.bn(self.l1(x))))

    model = Net(nnx.Rngs(0))
    batch = _data()
    model_loss, params = loss_from_model(model, params=nnx.state(model, nnx.Param))
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.grad(model_loss)(params, batch), state)
        return optax.apply_updates(params, updates), state

    with jax.numpy_dtype_promotion("standard"):
        for _ in range(20):
            params, state = step(params, state)
    pre = preconditioner_from_optax(state, params)
    spec = hessian_spectrum(model_loss, params, batch, tol=1e-11, converge_smallest=True,
                            return_vectors=True, preconditioner=pre, progress=False)  # fmt: skip
    # The state holds the float32 batch statistics too (zero Hessian rows); the dense
    # oracle casts them up.
    wide = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)  # noqa: E731
    flat, unravel = ravel_pytree(wide(params))
    with xla_optimizations(), jax.numpy_dtype_promotion("standard"):
        h = np.asarray(jax.jit(jax.hessian(lambda f: model_loss(unravel(f), batch)))(flat))
    s = 1.0 / np.sqrt(np.asarray(ravel_pytree(wide(pre.diagonal))[0]))
    truth = np.linalg.eigvalsh(s[:, None] * h * s[None, :])
    scale = np.abs(truth).max()
    assert abs(spec.sharpness - truth[-1]) <= 1e-8 * scale
    assert abs(spec.smallest - truth[0]) <= 1e-8 * scale
    assert type(spec.eigenvectors) is type(params)
