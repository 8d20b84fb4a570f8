"""The verdict with a delay per block (`is_accessible(..., block_delays=)`), against
the dense truth: a 4-layer linen network (as the Flax examples write one) at a true
minimum of cross-entropy with weight decay, its dense float64 Hessian, and the exact
block threshold of `stability.theory.block_delays` on ``K_b = P_b H``. The band the
report gives must contain the truth; the verdicts on both sides of it must be right,
in float64 and in float32 (JAX's default, as users run it)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import stability as st
from stability.curvature.blocks import Stages, block_delays
from stability.theory.block_delays import block_curvatures, block_max_stable_lr

WEIGHT_DECAY = 5e-2


class Pipe(nn.Module):  # four layers: one per pipeline stage
    @nn.compact
    def __call__(self, x):
        for width in (3, 3, 3):
            x = jnp.tanh(nn.Dense(width)(x))
        return nn.Dense(3)(x)


def _loss(params, batch):
    logits = Pipe().apply({"params": params}, batch["image"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    sq = sum(jnp.sum(p * p) for p in jax.tree_util.tree_leaves(params))
    return ce + 0.5 * WEIGHT_DECAY * sq


@pytest.fixture(scope="module")
def minimum():
    """A minimum (gradient < 1e-9) in float64 and the exact block thresholds."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
    params = Pipe().init(jax.random.key(0), batch["image"][:1].astype(jnp.float32))["params"]
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
    solver = optax.lbfgs()
    state = solver.init(params)
    value_and_grad = optax.value_and_grad_from_state(_loss)

    @jax.jit
    def step(params, state):
        value, grad = value_and_grad(params, batch, state=state)
        updates, state = solver.update(
            grad, state, params, value=value, grad=grad, value_fn=_loss, batch=batch
        )
        return optax.apply_updates(params, updates), state

    with jax.numpy_dtype_promotion("standard"):  # optax's line search mixes int widths
        for _ in range(150):
            params, state = step(params, state)
    flat, unravel = ravel_pytree(params)
    f = jax.jit(lambda v: _loss(unravel(v), batch))
    for _ in range(6):  # Newton on the dense Hessian: quadratic convergence
        flat = flat - jnp.linalg.solve(jax.hessian(f)(flat), jax.grad(f)(flat))
    params = unravel(flat)
    assert float(jnp.linalg.norm(jax.grad(f)(flat))) < 1e-12
    hessian = np.asarray(jax.hessian(f)(flat))
    assert np.linalg.eigvalsh(hessian)[0] > 0  # a minimum: the dense threshold applies
    blocks = block_delays(params, Stages(4))
    labels = np.concatenate(
        [
            np.full(np.size(leaf), blocks.delays.index(d))
            for leaf, d in zip(
                jax.tree_util.tree_leaves(params),
                jax.tree_util.tree_leaves(blocks.leaf_delays),
                strict=True,
            )
        ]
    )
    k = block_curvatures(hessian, labels)
    # heavy ball's reduction against the dense truth: tests/test_block_spectrum.py
    truth = {("gd", 0.0): block_max_stable_lr(k, blocks.delays, 0.0, momentum="gd")}
    return params, batch, truth, float(np.linalg.eigvalsh(hessian)[-1])


def test_float64_band_holds_the_truth_and_verdicts_are_right(minimum):
    params, batch, truth, _ = minimum
    momentum, beta = "gd", 0.0
    exact = truth[(momentum, beta)]
    kw = dict(data=batch, block_delays=Stages(4), momentum=momentum, beta=beta, progress=False)
    below = st.is_accessible(_loss, params, lr=0.97 * exact, **kw)
    above = st.is_accessible(_loss, params, lr=1.03 * exact, **kw)
    for report in (below, above):
        part = report.pipeline
        assert abs(part.max_stable_lr - exact) <= part.margin * exact
        assert abs(part.max_stable_lr - exact) <= 1e-5 * exact  # the reduction converged
        assert report.max_stable_lr == part.max_stable_lr
    assert below.verdict is True and below.certified_by == "block_estimate"
    assert above.verdict is False
    assert above.certified_by == "full_operator"  # an eigenvalue outside, on the full map
    assert above.pipeline.radius > 1 and above.spectral_radius == above.pipeline.radius


def test_the_report_names_blocks_and_uniform_models(minimum):
    params, batch, truth, sharpness = minimum
    exact = truth[("gd", 0.0)]
    report = st.is_accessible(
        _loss, params, lr=0.9 * exact, data=batch, block_delays=Stages(4), momentum="gd",
        progress=False,
    )  # fmt: skip
    text = repr(report)
    assert "block delays      delay 0:" in text and "uniform models" in text
    part = report.pipeline
    assert part.blocks.stages == (("Dense_0",), ("Dense_1",), ("Dense_2",), ("Dense_3",))
    # every block at the largest delay: the scalar theory on lambda_max
    assert part.lr_uniform_max_delay == pytest.approx(
        st.max_stable_lr(sharpness, 3, momentum="gd"), rel=1e-6
    )
    assert report.tau == 3
    out = report.to_dict()
    json.dumps(out, allow_nan=False)
    assert out["pipeline"]["delays"] == [0, 1, 2, 3]


def test_float32_as_users_run_it_is_never_wrong(minimum):
    params64, batch64, truth, _ = minimum
    exact = truth[("gd", 0.0)]
    with jax.enable_x64(False), jax.numpy_dtype_promotion("standard"):
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float32), params64)
        batch = {"image": jnp.asarray(batch64["image"], jnp.float32), "label": batch64["label"]}
        kw = dict(data=batch, block_delays=Stages(4), momentum="gd", progress=False)
        below = st.is_accessible(_loss, params, lr=0.9 * exact, **kw)
        above = st.is_accessible(_loss, params, lr=1.1 * exact, **kw)
    for report in (below, above):
        part = report.pipeline
        assert part.margin >= 1e-2  # the float32 floor
        assert abs(part.max_stable_lr - exact) <= part.margin * exact
    assert below.verdict is True
    assert above.verdict is False


@pytest.mark.parametrize(
    "extra, match",
    [
        (dict(tau=2), "tau must be None"),
        (dict(batch_size=8), "batch_size cannot go with block_delays"),
        (dict(require_minimum=True), "require_minimum"),
        (dict(momentum="shifted"), "momentum='shifted'"),
        (dict(lr=-1.0), "lr"),
        (dict(block_delays={"Dense_9": 1}), "block_delays"),
    ],
)
def test_bad_arguments_name_themselves(minimum, extra, match):
    params, batch, _, _ = minimum
    kw = dict(lr=0.1, data=batch, block_delays=Stages(4), progress=False)
    kw.update(extra)
    with pytest.raises((ValueError, TypeError), match=match):
        st.is_accessible(_loss, params, **kw)
