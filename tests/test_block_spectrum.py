"""Block delays on a network, matrix-free (stability/curvature/block_spectrum.py and
history_operator.py) against dense oracles built here from ``jax.hessian``.

The network: a tanh MLP 3 -> 4 -> 4 -> 2 (46 parameters, small so that the dense
threshold of ``P_b H`` stays well under a second) at an exact minimum by
construction (a teacher-student fit: the targets are the network's own outputs, so
the residual is 0), plus weight decay centred at that point, so the Hessian is
``J^T J / N + wd I``: positive definite, known exactly (dense ``jax.hessian``).

Oracles: the one-step transition matrix of ``(e, v, g_{t-1}, ..., g_{t-T})`` written
from the update equations on the dense H (not from the library's operator), its
eigenvalues against the roots of ``det M(z)`` (`block_companion_matrix` of ``P_b H``),
and the dense ``block_max_stable_lr(P_b H)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stability.curvature.block_spectrum import block_delay_max_lr, block_delay_radius
from stability.curvature.blocks import block_delays
from stability.curvature.history_operator import (
    history_operator,
    history_power_iteration,
)
from stability.curvature.hvp import flatten_params, trainable_mask
from stability.theory.block_delays import (
    block_companion_matrix,
    block_curvatures,
    block_max_stable_lr,
)
from stability.theory.companion import spectral_radius
from stability.theory.tuning import max_stable_lr

SPEC = {"l0/w": 4, "l0/b": 2, "l1": 1, "l2": 0}  # four blocks, delays up to 4
WD = 0.05


def _mlp(p, x):
    h = jnp.tanh(x @ p["l0"]["w"] + p["l0"]["b"])
    h = jnp.tanh(h @ p["l1"]["w"] + p["l1"]["b"])
    return h @ p["l2"]["w"] + p["l2"]["b"]


def _init():
    rng = np.random.default_rng(0)
    shapes = {"l0": (3, 4), "l1": (4, 4), "l2": (4, 2)}
    params = {
        name: {"w": rng.standard_normal(s) / np.sqrt(s[0]), "b": 0.3 * rng.standard_normal(s[1])}
        for name, s in shapes.items()
    }
    return jax.tree_util.tree_map(jnp.asarray, params), rng


def _make_problem():
    params, rng = _init()
    x = jnp.asarray(rng.standard_normal((30, 3)))
    y = _mlp(params, x)  # the teacher's outputs: params is an exact minimum
    centre = params

    def loss(p, batch):
        xb, yb = batch
        fit = 0.5 * jnp.mean(jnp.sum((_mlp(p, xb) - yb) ** 2, axis=-1))
        diff = jax.tree_util.tree_map(lambda a, c: a - c, p, centre)
        return fit + 0.5 * WD * sum(jnp.sum(d**2) for d in jax.tree_util.tree_leaves(diff))

    return loss, params, (x, y)


LOSS, PARAMS, DATA = _make_problem()


@pytest.fixture(scope="module")
def dense():
    """The dense Hessian, the per-entry delays and the block labels."""
    mask = trainable_mask(PARAMS)
    fp = flatten_params(PARAMS, mask)
    h = np.asarray(jax.hessian(lambda w: LOSS(fp.unravel(w), DATA))(fp.flat))
    blocks = block_delays(PARAMS, SPEC)
    per_entry = np.concatenate(
        [
            np.full(np.size(leaf), d)
            for leaf, d in zip(
                jax.tree_util.tree_leaves(PARAMS),
                jax.tree_util.tree_leaves(blocks.leaf_delays),
                strict=True,
            )
        ]
    )
    labels = np.searchsorted(blocks.delays, per_entry)
    return h, per_entry, labels, blocks.delays


_THRESHOLDS = {}


def dense_threshold(dense, momentum, beta):
    """``block_max_stable_lr(P_b H)``, computed once per rule."""
    if (momentum, beta) not in _THRESHOLDS:
        h, _, labels, delays = dense
        _THRESHOLDS[momentum, beta] = block_max_stable_lr(
            block_curvatures(h, labels), delays, beta, momentum=momentum
        )
    return _THRESHOLDS[momentum, beta]


def transition(h, per_entry, lr, beta, rule):
    """The one-step map of (e, v, g_{t-1}, ..., g_{t-T}) from the update equations:
    stale = S_0 H e + sum_{d>=1} S_d g_{t-d}; v+ = beta v + stale; e+ = e - lr v+
    (Nesterov: e - lr (stale + beta v+)); g+_1 = H e, g+_d = g_{d-1}."""
    n, t = h.shape[0], int(per_entry.max())
    s = [np.diag((per_entry == d).astype(float)) for d in range(t + 1)]
    eye = np.eye(n)
    m = np.zeros((n * (t + 2), n * (t + 2)))

    def put(i, j, block):
        m[i * n : (i + 1) * n, j * n : (j + 1) * n] += block

    # v+ in terms of (e, v, g_{t-1}, ...)
    v_rows = [s[0] @ h, beta * eye] + [s[d] for d in range(1, t + 1)]
    for j, block in enumerate(v_rows):
        put(1, j, block)
        if rule == "nesterov":  # step = stale + beta v+ = (1 + beta) stale + beta^2 v
            stale_j = block if j != 1 else 0 * eye
            put(0, j, -lr * ((1 + beta) * stale_j + (beta * beta * eye if j == 1 else 0)))
        else:
            put(0, j, -lr * block)
    put(0, 0, eye)
    if t >= 1:
        put(2, 0, h)
    for d in range(2, t + 1):
        put(1 + d, d, eye)
    return m


RULES = [("gd", 0.0), ("heavy_ball", 0.7), ("nesterov", 0.5)]


@pytest.mark.parametrize("momentum,beta", RULES)
def test_operator_is_the_transition_matrix(dense, momentum, beta):
    h, per_entry, _, _ = dense
    op = history_operator(LOSS, PARAMS, DATA, delays=SPEC, lr=0.3, beta=beta, momentum=momentum)
    m = transition(h, per_entry, 0.3, beta, momentum)
    assert op.size == m.shape[0] == h.shape[0] * 6
    x = np.random.default_rng(1).standard_normal((3, op.size))
    got = np.stack([np.asarray(op.apply(xi)) for xi in x])
    np.testing.assert_allclose(got, x @ m.T, rtol=0, atol=1e-12 * np.abs(m).max())


@pytest.mark.parametrize("momentum,beta", RULES[:2])
def test_eigenvalues_are_roots_of_det_m(dense, momentum, beta):
    h, per_entry, labels, delays = dense
    lr = 0.2
    ev = np.linalg.eigvals(transition(h, per_entry, lr, beta, momentum))
    roots = np.linalg.eigvals(
        block_companion_matrix(block_curvatures(h, labels), delays, lr, beta, momentum=momentum)
    )
    big = ev[np.abs(ev) > 1e-3]  # zero eigenvalues are defective: compared elsewhere
    assert big.size > h.shape[0]
    dist = np.min(np.abs(big[:, None] - roots[None, :]), axis=1)
    assert dist.max() < 1e-8


@pytest.mark.parametrize("momentum,beta", RULES[:2])
@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_radius_matches_dense(dense, momentum, beta, factor):
    h, per_entry, _, _ = dense
    lr = factor * dense_threshold(dense, momentum, beta)
    truth = np.max(np.abs(np.linalg.eigvals(transition(h, per_entry, lr, beta, momentum))))
    assert (truth > 1) == (factor > 1)
    got = block_delay_radius(LOSS, PARAMS, DATA, delays=SPEC, lr=lr, beta=beta,
                             momentum=momentum, max_products=4000)  # fmt: skip
    assert got.converged
    assert abs(got.radius - truth) < 1e-8
    assert got.stable == (factor < 1)
    assert got.products <= 4000


def test_power_iteration_baseline(dense):
    h, per_entry, _, _ = dense
    lr = 1.3 * dense_threshold(dense, "heavy_ball", 0.7)
    truth = np.max(np.abs(np.linalg.eigvals(transition(h, per_entry, lr, 0.7, "heavy_ball"))))
    op = history_operator(LOSS, PARAMS, DATA, delays=SPEC, lr=lr, beta=0.7)
    est = history_power_iteration(op.apply, op.size, tol=1e-9, max_products=1500)
    assert abs(est.radius - truth) < 1e-3 * truth
    assert est.estimates.shape == (est.products,)


@pytest.mark.parametrize("momentum,beta", RULES[:2])
def test_max_lr_full_k_is_the_dense_threshold(dense, momentum, beta):
    h = dense[0]
    n = h.shape[0]
    truth = dense_threshold(dense, momentum, beta)
    got = block_delay_max_lr(LOSS, PARAMS, DATA, delays=SPEC, beta=beta, momentum=momentum,
                             k=n, tol=1e-10)  # fmt: skip
    assert got.k == n
    assert abs(got.lr - truth) <= 1e-6 * truth
    assert got.backward_error < 1e-7  # nothing dropped: the lifted pair is exact
    assert abs(abs(got.z) - 1) < 1e-12
    assert got.lr_by_k[-1] == (n, got.lr) and got.lr_by_k[0][0] == n // 2
    lam = np.linalg.eigvalsh(h)[-1]
    assert abs(got.sharpness - lam) < 1e-8 * lam
    assert got.lr_uniform_max_delay == pytest.approx(
        float(max_stable_lr(lam, 4, beta, momentum=momentum)), rel=1e-8
    )
    # above the uniform answer at the largest delay (here even above the synchronous
    # one for gd: at z = -1 the blocks of even and odd delays act with opposite signs)
    assert got.lr_uniform_max_delay < got.lr


def test_max_lr_exact_for_a_rank_k_hessian():
    """Sylvester: with H of rank k the reduction at k is exact (a quadratic loss)."""
    rng = np.random.default_rng(3)
    n, rank = 30, 4
    q, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    h = q @ np.diag([5.0, 3.0, 2.0, 1.0]) @ q.T
    params = {"a": jnp.zeros(12), "b": jnp.zeros(10), "c": jnp.zeros(8)}
    hj = jnp.asarray(h)

    def loss(p):
        w = jnp.concatenate([p["a"], p["b"], p["c"]])
        return 0.5 * w @ hj @ w

    spec = {"a": 3, "b": 1, "c": 0}
    labels = np.repeat([2, 1, 0], [12, 10, 8])
    truth = block_max_stable_lr(block_curvatures(h, labels), (0, 1, 3), 0.5)
    got = block_delay_max_lr(loss, params, delays=spec, beta=0.5, k=rank, tol=1e-12)
    assert abs(got.lr - truth) <= 1e-9 * truth
    assert got.backward_error < 1e-9


@pytest.mark.parametrize("momentum,beta", RULES)
def test_uniform_delay_is_the_scalar_theory(dense, momentum, beta):
    h, _, _, _ = dense
    lam = np.linalg.eigvalsh(h)
    got = block_delay_max_lr(LOSS, PARAMS, DATA, delays=lambda path: 2, beta=beta,
                             momentum=momentum, k=8, tol=1e-10)  # fmt: skip
    scalar = float(max_stable_lr(lam[-1], 2, beta, momentum=momentum))
    assert got.lr == pytest.approx(scalar, rel=1e-8)
    assert got.lr_uniform_max_delay == pytest.approx(scalar, rel=1e-12)
    assert got.lr_change < 1e-8  # one delay: the top eigenvalue alone decides
    lr = 1.05 * scalar
    radius = block_delay_radius(LOSS, PARAMS, DATA, delays={"l0": 2, "l1": 2, "l2": 2},
                                lr=lr, beta=beta, momentum=momentum)  # fmt: skip
    per_eigenvalue = float(np.max(spectral_radius(lam, lr, 2, beta, momentum=momentum)))
    assert radius.converged
    assert abs(radius.radius - per_eigenvalue) < 1e-8


def test_adaptive_k_and_verification(dense):
    truth = dense_threshold(dense, "heavy_ball", 0.7)
    got = block_delay_max_lr(LOSS, PARAMS, DATA, delays=SPEC, beta=0.7, k_start=4, k_max=32,
                             verify=0.05, tol=1e-10)  # fmt: skip
    # the truncated reduction's error lies inside the band the verdict uses
    band = 3 * max(got.lr_change, got.backward_error)
    assert abs(got.lr - truth) <= band * truth
    ks = [k for k, _ in got.lr_by_k]
    assert ks[0] == 4 and ks == sorted(ks) and got.k == ks[-1] <= 32
    last_two = [abs(got.lr - lr_k) for _, lr_k in got.lr_by_k[-3:-1]]
    assert got.lr_change == pytest.approx(max(last_two) / got.lr, rel=1e-12)
    lower, upper = got.lr_bracket
    assert lower <= truth <= upper  # the full operator brackets the dense threshold
    assert upper == pytest.approx(1.05 * got.lr) and lower == pytest.approx(0.95 * got.lr)
    below, above = got.verification
    assert above.radius > 1 and above.converged
    assert got.products >= below.products + above.products


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=-0.1), "lr"),
        (dict(lr=0.1, beta=1.5), "beta"),
        (dict(lr=0.1, momentum="shifted"), "momentum"),
        (dict(lr=0.1, momentum="sgd"), "momentum"),
        (dict(lr=0.1, delays={"l0": 1}), "delays"),
        (dict(lr=0.1, delays={"l0": -1, "l1": 0, "l2": 0}), "delays"),
        (dict(lr=0.1, k=0), "k"),
        (dict(lr=0.1, tol=0.0), "tol"),
        (dict(lr=0.1, max_products=0), "max_products"),
    ],
)
def test_radius_argument_errors(kwargs, match):
    kwargs = {"delays": SPEC, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        block_delay_radius(LOSS, PARAMS, DATA, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(beta=-0.5), "beta"),
        (dict(momentum="gd", beta=0.5), "beta"),
        (dict(k=0), "k"),
        (dict(k=10_000), "k"),
        (dict(k_max=0), "k_max"),
        (dict(verify=1.5), "verify"),
        (dict(tol=-1.0), "tol"),
        (dict(delays=lambda path: "x"), "delays"),
    ],
)
def test_max_lr_argument_errors(kwargs, match):
    kwargs = {"delays": SPEC, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        block_delay_max_lr(LOSS, PARAMS, DATA, **kwargs)
