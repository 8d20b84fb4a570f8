"""Issue 20: float32 certificates on networks written and trained as the Flax examples.

Three shrunk copies of the google/flax examples (`flax_example_models`: the nnx MNIST
CNN, the linen ImageNet ResNet V1.5, the linen lm1b TransformerLM), trained in
float32 with x64 off, as users train them, to (near) 100 % training accuracy with
saturated softmaxes. The truth is the dense float64 Hessian of the library's loss
(``loss_from_model``, eval mode) at the float32-trained parameters.

- the models train: >= 98 % training accuracy in float32;
- the truth is the truth: ``hessian_spectrum`` in float64 (the session's x64 mode)
  brackets the dense top eigenvalue within its bar;
- the acceptance test of issue 20: in JAX's default float32, at learning rates where
  truth / limit is 0.5, 0.97, 0.999, 1.001, 1.03 and 2, no verdict is certified on
  the wrong side, and a converged float32 top value's bar contains the float64 truth.

Each model is trained and its truth computed once (module-scoped fixture).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from compile_speed import xla_optimizations
from flax_example_models import (
    dense_truth,
    float32_defaults,
    to_float64,
    train_cnn,
    train_resnet,
    train_transformer,
)

import stability

RATIOS = (0.5, 0.97, 0.999, 1.001, 1.03, 2.0)
TAU = 4
MAX_HVPS = 60
TRAINERS = {"cnn": train_cnn, "resnet": train_resnet, "transformer": train_transformer}


@pytest.fixture(scope="module", params=list(TRAINERS))
def case(request):
    """(trained model, its float32 loss_fn and params, the float64 dense truth)."""
    with xla_optimizations():
        trained = TRAINERS[request.param]()
        with float32_defaults():
            loss_fn, params = stability.loss_from_model(trained.model, trained.params,
                                                        data=trained.batch)  # fmt: skip
        truth = dense_truth(loss_fn, params, trained.batch)
    return trained, loss_fn, params, truth


def test_trained_in_float32_to_full_accuracy(case):
    trained, _, params, truth = case
    assert trained.accuracy >= 0.98, (trained.name, trained.accuracy)
    dtypes = {x.dtype for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype("float32")}, dtypes
    assert 500 <= truth.num_params <= 2000, truth.num_params
    assert truth.lambda_max > 0


def test_float64_spectrum_matches_dense_truth(case):
    trained, loss_fn, params, truth = case
    with jax.numpy_dtype_promotion("standard"):
        spec = stability.hessian_spectrum(loss_fn, to_float64(params), to_float64(trained.batch),
                                          max_hvps=MAX_HVPS, progress=False)  # fmt: skip
    assert spec.converged[0], (trained.name, spec)
    assert abs(spec.sharpness - truth.lambda_max) <= spec.sharpness_error, (
        trained.name, spec.sharpness, spec.sharpness_error, truth.lambda_max,
    )  # fmt: skip


def test_float32_certificates_hold(case):
    """No wrong certificate in float32; every converged float32 bar holds the truth."""
    trained, loss_fn, params, truth = case
    problems = []
    with float32_defaults():
        spec = stability.hessian_spectrum(loss_fn, params, trained.batch, max_hvps=MAX_HVPS,
                                          progress=False)  # fmt: skip
        if spec.converged[0] and abs(spec.sharpness - truth.lambda_max) > spec.sharpness_error:
            problems.append(f"bar {spec.sharpness!r} +- {spec.sharpness_error:.3g} misses "
                            f"the float64 truth {truth.lambda_max!r}")  # fmt: skip
        for ratio in RATIOS:
            lr = float(stability.max_stable_lr(truth.lambda_max / ratio, TAU))
            res = stability.is_accessible(loss_fn, params, TAU, lr, data=trained.batch,
                                          max_hvps=MAX_HVPS, progress=False)  # fmt: skip
            if (res.verdict is True and ratio >= 1) or (res.verdict is False and ratio <= 1):
                problems.append(f"truth/limit {ratio}: verdict {res.verdict} certified by "
                                f"{res.certified_by} ({res.reason})")  # fmt: skip
            converged = res.spectrum is not None and bool(res.spectrum.converged[0])
            if converged and abs(res.sharpness - truth.lambda_max) > res.sharpness_error:
                problems.append(f"truth/limit {ratio}: converged bar {res.sharpness!r} +- "
                                f"{res.sharpness_error:.3g} misses the truth")  # fmt: skip
    assert not problems, (trained.name, truth.lambda_max, problems)
