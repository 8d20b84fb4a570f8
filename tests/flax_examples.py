"""Models written as the Flax examples write them, shrunk for the 8x8 digits.

Shared by the tests of the Flax user's path (test_flax_path, test_cli):

- `NnxCNN`: the nnx MNIST tutorial's CNN (Conv, BatchNorm, Dropout with
  call-time ``rngs: nnx.Rngs | None = None``), 4 and 8 channels, 16 hidden.
- `NnxCNNRequiredRngs`: the same with ``__call__(self, x, rngs)`` as in
  ``examples/mnist/train.py`` (the argument has no default).
- `LinenCNN`: a linen CNN with BatchNorm and Dropout switched by ``train``.
- `digits_images`: the bundled digits as a Flax-example dict batch
  ``{"image": (n, 8, 8, 1), "label": (n,)}``.
- `train_nnx`, `train_linen`: optax SGD in the examples' style.
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import nnx

from stability import load_digits

F64 = jnp.float64


class NnxCNN(nnx.Module):
    """A simple CNN model (the Flax nnx MNIST tutorial's, fewer channels)."""

    def __init__(self, *, rngs: nnx.Rngs, channels=(4, 8), hidden=16):
        c1, c2 = channels
        self.conv1 = nnx.Conv(1, c1, kernel_size=(3, 3), param_dtype=F64, rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(c1, param_dtype=F64, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.025)
        self.conv2 = nnx.Conv(c1, c2, kernel_size=(3, 3), param_dtype=F64, rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(c2, param_dtype=F64, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(2 * 2 * c2, hidden, param_dtype=F64, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=0.025)
        self.linear2 = nnx.Linear(hidden, 10, param_dtype=F64, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)  # flatten
        x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
        return self.linear2(x)


class NnxCNNRequiredRngs(NnxCNN):
    """``examples/mnist/train.py``'s signature: ``rngs`` is required."""

    def __call__(self, x, rngs: nnx.Rngs):
        return super().__call__(x, rngs)


class LinenCNN(nn.Module):
    """A linen CNN with BatchNorm and Dropout, switched by ``train``."""

    channels: int = 4
    hidden: int = 16

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(self.channels, (3, 3), param_dtype=F64)(x)
        x = nn.BatchNorm(use_running_average=not train, param_dtype=F64)(x)
        x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(0.025, deterministic=not train)(
            nn.relu(nn.Dense(self.hidden, param_dtype=F64)(x))
        )
        return nn.Dense(10, param_dtype=F64)(x)


def digits_images(n: int) -> dict:
    """The first ``n`` digits as a Flax-example batch ``{"image", "label"}``."""
    x, y = load_digits(n, dtype=F64)
    return {"image": x.reshape(n, 8, 8, 1), "label": y}


def _loss(model, batch, rngs):
    logits = model(batch["image"], rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()


@nnx.jit
def _nnx_step(model, optimizer, rngs, batch):
    grads = nnx.grad(_loss)(model, batch, rngs)
    optimizer.update(model, grads)


def train_nnx(model, batch, *, steps=300, lr=0.3, batch_size=64):
    """SGD on minibatches, as the Flax example trains (the model is updated in place)."""
    optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
    rngs = nnx.Rngs(1)
    n = batch["label"].shape[0]
    model.train()
    with jax.numpy_dtype_promotion("standard"), warnings.catch_warnings():
        # BatchNorm's float32 running statistics take float64 batch statistics
        warnings.filterwarnings("ignore", message="scatter inputs have incompatible types")
        for step in range(steps):
            start = (step * batch_size) % (n - batch_size + 1)
            part = jax.tree.map(lambda a, s=start: a[s : s + batch_size], batch)
            _nnx_step(model, optimizer, rngs, part)
    model.eval()
    return model


def train_linen(model, batch, *, steps=300, lr=0.3, batch_size=64):
    """SGD on minibatches of a linen model; returns the variables dict."""
    x, y = batch["image"], batch["label"]
    with jax.numpy_dtype_promotion("standard"):
        variables = model.init(jax.random.key(0), x[:1], train=False)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.sgd(lr)
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt, xb, yb, key):
        def loss(p):
            logits, new = model.apply(
                {"params": p, "batch_stats": stats},
                xb,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": key},
            )
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
            return ce, new["batch_stats"]

        (_, new_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), new_stats, opt

    n = y.shape[0]
    with jax.numpy_dtype_promotion("standard"):
        for i in range(steps):
            s = (i * batch_size) % (n - batch_size + 1)
            params, stats, opt = step(
                params,
                stats,
                opt,
                x[s : s + batch_size],
                y[s : s + batch_size],
                jax.random.key(i),
            )
    return {"params": params, "batch_stats": stats}
