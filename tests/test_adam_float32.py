"""The Adam verdict as users run it: float32 (JAX's default), a linen model written
as the Flax examples write one (dict batches {"image", "label"}, optax's
cross-entropy), trained with optax.adamw through inject_hyperparams. The certified
bar of the preconditioned sharpness contains the float64 truth (the dense
P^-1/2 H P^-1/2 of the same weights and second moment), and the verdicts at 0.9x
and 1.1x the reported max_stable_lr agree with the truth's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import stability as st


class MLP(nn.Module):  # as the Flax examples write a classifier
    features: int = 24

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = nn.gelu(nn.Dense(self.features)(x))
        return nn.Dense(10)(x)


@pytest.fixture(scope="module")
def trained():
    with jax.enable_x64(False), jax.numpy_dtype_promotion("standard"):
        x, y = st.load_digits(96)
        batch = {"image": x.reshape(-1, 8, 8, 1), "label": y}
        model = MLP()
        variables = model.init(jax.random.key(0), batch["image"][:1])
        tx = optax.inject_hyperparams(optax.adamw)(learning_rate=3e-3, weight_decay=1e-4)
        state = tx.init(variables["params"])

        @jax.jit
        def step(params, state):
            def loss(p):
                logits = model.apply({"params": p}, batch["image"])
                return optax.softmax_cross_entropy_with_integer_labels(
                    logits, batch["label"]
                ).mean()

            grads = jax.grad(loss)(params)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        params = variables["params"]
        for _ in range(200):
            params, state = step(params, state)
    return model, {"params": params}, state, batch


def _truth(model, variables, state, batch):
    """The float64 top eigenvalue of P^-1/2 H P^-1/2 (dense), same weights and P."""
    with jax.enable_x64(True):
        pre = st.preconditioner_from_optax(state)
        f64 = lambda t: jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), t)  # noqa: E731
        params, diag = f64(variables["params"]), f64(pre.diagonal)
        flat, unravel = ravel_pytree(params)
        s = ravel_pytree(jax.tree_util.tree_map(lambda d: d**-0.5, diag))[0]
        image, label = jnp.asarray(batch["image"], jnp.float64), batch["label"]

        def loss(w):
            logits = model.apply({"params": unravel(w)}, image)
            return optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()

        h = jax.hessian(loss)(flat)
        return float(np.linalg.eigvalsh(np.asarray(s[:, None] * h * s[None, :]))[-1]), pre


@pytest.mark.parametrize("tau", [0, 4])
def test_float32_adam_verdict_contains_the_float64_truth(trained, tau):
    model, variables, state, batch = trained
    truth, pre = _truth(model, variables, state, batch)
    with jax.enable_x64(False), jax.numpy_dtype_promotion("standard"):
        report = st.is_accessible(model, variables, tau, data=batch, optimizer_state=state,
                                  tol=1e-4, progress=False)  # fmt: skip
    assert report.adaptive.optimizer == "adamw" and report.lr == pytest.approx(3e-3)
    bar = report.sharpness_error
    # a Ritz value (a float64 Rayleigh quotient after the check) is a lower bound ...
    assert report.sharpness <= truth * (1 + 1e-9), (report.sharpness, truth)
    # ... and a converged one's bar contains the truth
    if report.spectrum.converged[0]:
        assert abs(report.sharpness - truth) <= bar, (report.sharpness, bar, truth)
    # a converged float32 spectrum (verdicts reuse it): its max_stable_lr is the prediction
    with jax.enable_x64(False), jax.numpy_dtype_promotion("standard"):
        loss_fn, flat = st.loss_from_model(model, variables, data=batch)
        spectrum = st.hessian_spectrum(loss_fn, flat, batch, preconditioner=pre, tol=1e-5,
                                       progress=False)  # fmt: skip
        predicted = st.is_accessible(model, variables, tau, data=batch, optimizer_state=state,
                                     spectrum=spectrum, progress=False).max_stable_lr  # fmt: skip
    assert abs(float(spectrum.eigenvalues[0]) - truth) <= float(spectrum.errors[0])
    for f, want in ((0.9, True), (1.1, False)):
        lr = f * predicted
        with jax.enable_x64(False), jax.numpy_dtype_promotion("standard"):
            r = st.is_accessible(model, variables, tau, lr, data=batch, optimizer_state=state,
                                 spectrum=spectrum, progress=False)  # fmt: skip
        truly_stable = truth < r.max_stable_sharpness
        assert truly_stable is want
        assert r.verdict in (want, None)  # a certified verdict is never wrong
        if abs(truth / r.max_stable_sharpness - 1) > 3 * r.sharpness_error / truth:
            assert r.verdict is want  # decided when the bar is clear of the limit
