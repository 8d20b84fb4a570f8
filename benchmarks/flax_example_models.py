"""Three google/flax examples, shrunk, trained in float32, with their float64 Hessian.

Issue 20 asks whether the verdict holds on networks written and trained as Flax
users write and train them: in float32 (JAX's default), to near-100 % training
accuracy, where the softmax saturates and ReLU / max-pool pieces meet. These are
our own copies, in the examples' style, of

- ``examples/mnist/train.py``: `CNN`, an nnx module (Conv, BatchNorm, Dropout,
  avg_pool, Linear) called as ``model(x, rngs)``;
- ``examples/imagenet/models.py``: `ResNet` V1.5 in linen (conv stem with
  BatchNorm, ReLU and a 3x3 stride-2 max_pool; `ResNetBlock` basic blocks with a
  zero-initialised last BatchNorm scale and a projection shortcut; mean pooling;
  Dense), called as ``model.apply(variables, x, train=...)``;
- ``examples/lm1b/models.py``: `TransformerLM` in linen (`TransformerConfig`,
  token embedding of the right-shifted inputs, fixed sinusoidal position
  embeddings, pre-LayerNorm causal self-attention and a ReLU `MlpBlock`, a final
  LayerNorm and a logits Dense; padding token 0 masked from attention).

The widths are shrunk so that each model has 500 - 2,000 parameters: the dense
float64 Hessian (`dense_truth`) is then the truth against which float32 estimates
are judged, computed in seconds on two CPU cores. Data: the bundled 8x8 digits as
Flax-example dict batches for the CNN and the ResNet (`digits_batch`), and a
synthetic next-token task for the transformer (`alternating_sequences`).

Training (`train_cnn`, `train_resnet`, `train_transformer`) runs in float32 with
JAX's x64 mode off (``jax.enable_x64(False)``, whatever the caller's setting) and
standard dtype promotion, with optax as the examples use it (SGD with momentum on
shuffled minibatches for the CNN and the ResNet, in train mode: batch statistics,
dropout; Adam for the transformer), on the examples' loss, the steps in one
``lax.scan``. The CNN and the ResNet train for 600 epochs at 100 % accuracy, well
into saturation: about a third of their float32 softmax maxima round to 1.0 and
the old float32 products were ~1e-4 off (benchmarks/RESULTS-float32.md). The float64
truth needs the computation in float64: the modules take ``dtype=None`` (the params'
dtype) where the examples write ``dtype=jnp.float32``, which would cast float64
params to float32 inside every layer; `dense_truth` refuses a loss that computes in
lower precision. Each returns ``TrainedModel``: the module (in eval mode), its float32
parameters (linen: the variables dict; nnx: the module's state), the float32 batch
the Hessian is taken over and the training accuracy in eval mode. The loss whose
Hessian is judged is the library's: ``stability.loss_from_model(model, params,
data=batch)`` (eval mode, mean softmax cross-entropy). Everything is
deterministic in the seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx, struct

import stability

__all__ = [
    "CNN",
    "ResNet",
    "ResNetBlock",
    "TransformerConfig",
    "TransformerLM",
    "TrainedModel",
    "DenseTruth",
    "digits_batch",
    "alternating_sequences",
    "train_cnn",
    "train_resnet",
    "train_transformer",
    "train_all",
    "accuracy",
    "dense_truth",
    "num_trainable",
    "to_float64",
    "eval_logits",
    "labels_of",
    "float32_defaults",
]

ModuleDef = Any


def float32_defaults():
    """JAX as a user has it: x64 off (float32 default) and standard dtype promotion.

    The test session turns x64 and strict promotion on globally; every float32
    build, training and estimate here runs inside this context instead.
    """
    from contextlib import ExitStack

    stack = ExitStack()
    stack.enter_context(jax.enable_x64(False))
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    return stack


# --------------------------------------------------------------------------- data


def digits_batch(n: int = 128) -> dict:
    """The first ``n`` bundled digits as ``{"image": (n, 8, 8, 1), "label": (n,)}``, float32."""
    x, y = stability.load_digits(n, dtype=np.float32)
    return {"image": np.asarray(x).reshape(n, 8, 8, 1), "label": np.asarray(y, np.int32)}


def alternating_sequences(vocab_size: int = 8, length: int = 8) -> np.ndarray:
    """Every sequence ``a b a b ...`` with ``a, b`` in ``1..vocab_size - 1``, int32.

    A deterministic next-token pattern: from position 2 on each token is the one two
    places back, so a one-layer causal transformer must attend by position to predict
    it (positions 0 and 1 are free and cannot be predicted). Token 0 is lm1b's
    padding id and never occurs. Shape ``((vocab_size - 1)**2, length)``.
    """
    tokens = np.arange(1, vocab_size)
    a, b = np.meshgrid(tokens, tokens, indexing="ij")
    pairs = np.stack([a.ravel(), b.ravel()], axis=1)
    return np.tile(pairs, (1, (length + 1) // 2))[:, :length].astype(np.int32)


# ------------------------------------------------------ examples/mnist: nnx CNN


class CNN(nnx.Module):
    """A simple CNN model (examples/mnist's, 4 and 8 channels, 8 hidden units)."""

    def __init__(self, rngs: nnx.Rngs, channels=(4, 8), hidden=8):
        c1, c2 = channels
        self.conv1 = nnx.Conv(1, c1, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(c1, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.025)
        self.conv2 = nnx.Conv(c1, c2, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(c2, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(2 * 2 * c2, hidden, rngs=rngs)  # 8x8 -> 4x4 -> 2x2
        self.dropout2 = nnx.Dropout(rate=0.025)
        self.linear2 = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs):
        x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)  # flatten
        x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
        return self.linear2(x)


# ------------------------------------------- examples/imagenet: linen ResNet V1.5


class ResNetBlock(nn.Module):
    """The basic ResNet block: two 3x3 convs, the second BatchNorm scale starts at 0."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:  # projection shortcut
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """ResNet V1.5 (examples/imagenet), shrunk: 4 filters, one stage of one block
    (the example's test model ``_ResNet1``), 8x8 inputs.

    BatchNorm averages its batch statistics over the named axis ``"batch"`` in train
    mode, as in the example (which trains under ``pmap``); `train_resnet` maps the
    training step over a device axis of that name. Eval mode needs no axis.
    """

    stage_sizes: tuple[int, ...] = (1,)
    block_cls: ModuleDef = ResNetBlock
    num_classes: int = 10
    num_filters: int = 4
    dtype: Any = None  # the example's float32 would pin the float64 truth to float32
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            axis_name="batch",
        )
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(
                    self.num_filters * 2**i, strides=strides, conv=conv, norm=norm, act=self.act
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return x


# ---------------------------------------------- examples/lm1b: linen TransformerLM


@struct.dataclass
class TransformerConfig:
    """Global hyperparameters (lm1b's, shrunk: vocabulary 8, width 8, one layer)."""

    vocab_size: int = 8
    dtype: Any = None  # None: the params' dtype (lm1b's float32 would pin the truth to float32)
    emb_dim: int = 8
    num_heads: int = 2
    num_layers: int = 1
    qkv_dim: int = 8
    mlp_dim: int = 16
    max_len: int = 16
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    deterministic: bool = True
    kernel_init: Callable = nn.initializers.xavier_uniform()
    bias_init: Callable = nn.initializers.normal(stddev=1e-6)


def shift_right(x, axis=1):
    """Shift the tokens one place right along ``axis``, filling with 0 (lm1b's BOS)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 0)
    padded = jnp.pad(x, pad, constant_values=x.dtype.type(0))
    return jax.lax.slice_in_dim(padded, 0, x.shape[axis], axis=axis)


def sinusoidal_table(max_len: int, features: int) -> np.ndarray:
    """The fixed sine / cosine position table, shape ``(1, max_len, features)``."""
    position = np.arange(max_len)[:, None]
    half = features // 2
    rates = np.exp(-np.log(10000.0) * np.arange(half) / max(half - 1, 1))
    table = np.zeros((max_len, features), np.float32)
    table[:, :half] = np.sin(position * rates)
    table[:, half : 2 * half] = np.cos(position * rates)
    return table[None]


class AddPositionEmbs(nn.Module):
    """Adds the fixed sinusoidal position embeddings (not learned)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, inputs):
        length, features = inputs.shape[1], inputs.shape[2]
        table = sinusoidal_table(self.config.max_len, features)
        return inputs + jnp.asarray(table[:, :length], inputs.dtype)


class MlpBlock(nn.Module):
    """The feed-forward block: Dense, ReLU, Dropout, Dense, Dropout."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, inputs):
        cfg = self.config
        x = nn.Dense(cfg.mlp_dim, dtype=cfg.dtype, kernel_init=cfg.kernel_init,
                     bias_init=cfg.bias_init)(inputs)  # fmt: skip
        x = nn.relu(x)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=cfg.deterministic)
        out = nn.Dense(inputs.shape[-1], dtype=cfg.dtype, kernel_init=cfg.kernel_init,
                       bias_init=cfg.bias_init)(x)  # fmt: skip
        return nn.Dropout(rate=cfg.dropout_rate)(out, deterministic=cfg.deterministic)


class DecoderBlock(nn.Module):
    """One pre-LayerNorm decoder layer: causal self-attention, then the MLP block."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, inputs, decoder_mask=None):
        cfg = self.config
        x = nn.LayerNorm(dtype=cfg.dtype)(inputs)
        x = nn.MultiHeadDotProductAttention(
            num_heads=cfg.num_heads,
            dtype=cfg.dtype,
            qkv_features=cfg.qkv_dim,
            kernel_init=cfg.kernel_init,
            use_bias=False,
            broadcast_dropout=False,
            dropout_rate=cfg.attention_dropout_rate,
            deterministic=cfg.deterministic,
        )(x, mask=decoder_mask)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=cfg.deterministic)
        x = x + inputs
        z = MlpBlock(config=cfg)(nn.LayerNorm(dtype=cfg.dtype)(x))
        return x + z


class TransformerLM(nn.Module):
    """Decoder-only language model (lm1b's ``TransformerLM``): logits ``(B, L, vocab)``.

    ``inputs`` are the target tokens; the model embeds them shifted one place right,
    so position ``t`` predicts ``inputs[:, t]`` from ``inputs[:, :t]``. Token 0 is
    padding: masked from attention.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, inputs):
        cfg = self.config
        decoder_mask = nn.combine_masks(
            nn.make_attention_mask(inputs > 0, inputs > 0, dtype=jnp.bool_),
            nn.make_causal_mask(inputs, dtype=jnp.bool_),
        )
        embed = nn.Embed(cfg.vocab_size, cfg.emb_dim,
                         embedding_init=nn.initializers.normal(stddev=1.0))  # fmt: skip
        y = embed(shift_right(inputs.astype("int32")))
        y = AddPositionEmbs(config=cfg, name="posembed_output")(y)
        y = nn.Dropout(rate=cfg.dropout_rate)(y, deterministic=cfg.deterministic)
        for layer in range(cfg.num_layers):
            y = DecoderBlock(config=cfg, name=f"decoderblock_{layer}")(y, decoder_mask)
        y = nn.LayerNorm(dtype=cfg.dtype, name="decoder_norm")(y)
        logits = nn.Dense(cfg.vocab_size, dtype=cfg.dtype, kernel_init=cfg.kernel_init,
                          bias_init=cfg.bias_init, name="logitdense")(y)  # fmt: skip
        return logits


# ----------------------------------------------------------------------- training


class TrainedModel(NamedTuple):
    """A model trained in float32.

    name: "cnn", "resnet" or "transformer". model: the module (nnx: in eval mode).
    params: float32 parameters as `stability.loss_from_model` takes them (linen: the
    variables dict with ``batch_stats``; nnx: ``nnx.state(model)``). batch: the
    float32 training batch, the data of the Hessian. accuracy: training accuracy in
    eval mode (the transformer: over the predictable positions 2.., see
    `alternating_sequences`). steps: optimiser steps taken.
    """

    name: str
    model: Any
    params: Any
    batch: Any
    accuracy: float
    steps: int


def _minibatches(n: int, batch_size: int, epochs: int, seed: int):
    """Index arrays of shuffled minibatches (the last incomplete one dropped), per epoch."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def accuracy(logits, labels, mask=None) -> float:
    """Fraction of argmax predictions equal to the labels (over ``mask`` if given)."""
    hit = np.asarray(jnp.argmax(logits, -1) == labels)
    return float(hit[np.asarray(mask)].mean() if mask is not None else hit.mean())


def _cnn_loss(model, batch, rngs):
    logits = model(batch["image"], rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()


def _schedule(n: int, batch_size: int, epochs: int, seed: int) -> np.ndarray:
    """The minibatch index arrays of all epochs, shape ``(steps, batch_size)``."""
    return np.stack(list(_minibatches(n, batch_size, epochs, seed)))


def train_cnn(n: int = 128, *, epochs: int = 600, batch_size: int = 32, lr: float = 0.2,
              momentum: float = 0.9, seed: int = 0) -> TrainedModel:  # fmt: skip
    """examples/mnist's training: nnx CNN in train mode (batch statistics, dropout),
    ``optax.sgd`` with momentum on shuffled minibatches, softmax cross-entropy, float32.

    The example's ``nnx.Optimizer`` loop is written functionally (``nnx.split`` into
    the ``nnx.Param`` state and the rest, one ``lax.scan`` over the steps) so that
    hundreds of steps take about a second; the updates are the same. Trained well
    past 100 % accuracy, so that many float32 softmax maxima round to 1.0.
    """
    with float32_defaults(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = jax.tree.map(jnp.asarray, digits_batch(n))
        model = CNN(rngs=nnx.Rngs(seed))
        model.train()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tx = optax.sgd(lr, momentum)
        order = _schedule(n, batch_size, epochs, seed)
        key = jax.random.key(seed)

        def body(carry, xs):
            params, rest, opt = carry
            idx, i = xs
            part = jax.tree.map(lambda a: a[idx], batch)

            model = nnx.merge(graphdef, params, rest)
            rngs = nnx.Rngs(dropout=jax.random.fold_in(key, i))
            grads = nnx.grad(_cnn_loss)(model, part, rngs)
            _, params, rest = nnx.split(model, nnx.Param, ...)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), rest, opt), None

        run = jax.jit(lambda c, o: jax.lax.scan(body, c, (o, jnp.arange(o.shape[0])))[0])
        params, rest, _ = run((params, rest, tx.init(params)), jnp.asarray(order))
        model = nnx.merge(graphdef, params, rest)
        model.eval()
        acc = accuracy(model(batch["image"], None), batch["label"])
        return TrainedModel("cnn", model, nnx.state(model), batch, acc, len(order))


def train_resnet(n: int = 128, *, epochs: int = 600, batch_size: int = 32, lr: float = 0.2,
                 momentum: float = 0.9, seed: int = 0) -> TrainedModel:  # fmt: skip
    """examples/imagenet's training: linen ResNet in train mode, SGD with Nesterov
    momentum on shuffled minibatches, softmax cross-entropy on one-hot labels, float32.

    The step is mapped over a leading device axis named ``"batch"`` of size 1 (the
    example ``pmap``s it over devices and averages the gradients over that axis), so
    that BatchNorm's ``axis_name`` resolves; the steps run in one ``lax.scan``. No
    weight decay: the loss judged is the plain cross-entropy.
    """
    with float32_defaults(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = jax.tree.map(jnp.asarray, digits_batch(n))
        model = ResNet()
        variables = model.init(jax.random.key(seed), batch["image"][:1], train=False)
        tx = optax.sgd(lr, momentum, nesterov=True)

        def step(carry, idx):
            params, stats, opt = carry
            images, labels = batch["image"][idx], batch["label"][idx]

            def loss_fn(p):
                logits, new = model.apply(
                    {"params": p, "batch_stats": stats}, images, mutable=["batch_stats"]
                )
                ce = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, 10)).mean()
                return ce, new["batch_stats"]

            (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            grads = jax.lax.pmean(grads, "batch")
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), stats, opt), None

        def run(carry, order):
            return jax.lax.scan(step, carry, order)[0]

        order = _schedule(n, batch_size, epochs, seed)
        params, stats = variables["params"], variables["batch_stats"]
        carry = jax.tree.map(lambda a: a[None], (params, stats, tx.init(params)))
        carry = jax.jit(jax.vmap(run, axis_name="batch"))(carry, jnp.asarray(order)[None])
        params, stats, _ = jax.tree.map(lambda a: a[0], carry)
        variables = {"params": params, "batch_stats": stats}
        logits = model.apply(variables, batch["image"], train=False)
        return TrainedModel("resnet", model, variables, batch,
                            accuracy(logits, batch["label"]), len(order))  # fmt: skip


def train_transformer(*, steps: int = 1500, lr: float = 0.03, seed: int = 0) -> TrainedModel:
    """examples/lm1b's training: linen TransformerLM, optax Adam, float32.

    Data: `alternating_sequences` (49 sequences of 8 tokens, one full batch per
    step, the steps in one ``lax.scan``), as an ``(inputs, labels)`` batch with
    labels = inputs (the model shifts them). The loss is lm1b's per-token
    cross-entropy, averaged over all positions (no padding occurs), which the
    library's default loss computes from logits ``(B, L, V)`` and labels ``(B, L)``.
    Positions 0 and 1 cannot be predicted: their optimal loss is log(7) each, so the
    mean loss stays near 2 log(7) / 8 = 0.49 while the other positions saturate.
    """
    with float32_defaults(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = TransformerConfig()
        tokens = jnp.asarray(alternating_sequences(cfg.vocab_size))
        model = TransformerLM(cfg)
        variables = model.init(jax.random.key(seed), tokens[:1])
        tx = optax.adam(lr)

        def step(carry, _):
            variables, opt = carry

            def loss_fn(v):
                logits = model.apply(v, tokens)
                return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

            grads = jax.grad(loss_fn)(variables)
            updates, opt = tx.update(grads, opt, variables)
            return (optax.apply_updates(variables, updates), opt), None

        run = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps)[0])
        variables, _ = run((variables, tx.init(variables)))
        logits = model.apply(variables, tokens)
        predictable = np.zeros(tokens.shape, bool)
        predictable[:, 2:] = True
        acc = accuracy(logits, tokens, predictable)
        return TrainedModel("transformer", model, variables, (tokens, tokens), acc, steps)


def labels_of(trained: TrainedModel):
    """The integer labels of the trained model's batch."""
    return trained.batch["label"] if isinstance(trained.batch, dict) else trained.batch[1]


def eval_logits(trained: TrainedModel):
    """The model's float32 logits on its batch in eval mode (x64 off)."""
    with float32_defaults():
        if isinstance(trained.model, nnx.Module):
            return trained.model(trained.batch["image"], None)
        inputs = trained.batch["image"] if isinstance(trained.batch, dict) else trained.batch[0]
        kwargs = {"train": False} if isinstance(trained.model, ResNet) else {}
        return trained.model.apply(trained.params, inputs, **kwargs)


def train_all() -> list[TrainedModel]:
    """The three models, trained in float32 with their default settings."""
    return [train_cnn(), train_resnet(), train_transformer()]


# ------------------------------------------------------------------ float64 truth


class DenseTruth(NamedTuple):
    """The float64 Hessian of the mean loss w.r.t. the trainable parameters.

    hessian: (n, n) float64 numpy array; eigenvalues: ascending (``numpy.linalg.eigvalsh``);
    lambda_max: the largest; num_params: n.
    """

    hessian: np.ndarray
    eigenvalues: np.ndarray
    lambda_max: float
    num_params: int


def _split_trainable(params):
    """``(trainable, rest, join)``: the differentiated part (linen ``"params"``, nnx
    ``nnx.Param``), the rest (batch statistics), and ``join(trainable, rest)``."""
    if isinstance(params, nnx.State):
        trained, rest = nnx.split_state(params, nnx.Param, ...)
        return trained, rest, lambda t, r: nnx.merge_state(t, r)
    if isinstance(params, dict) and "params" in params:
        rest = {k: v for k, v in params.items() if k != "params"}
        return params["params"], rest, lambda t, r: {"params": t, **r}
    return params, None, lambda t, r: t


def to_float64(tree):
    """``tree`` with its floating leaves cast to float64 (call with x64 on)."""

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def _narrow_ops(jaxpr) -> set[str]:
    """Names of the primitives in ``jaxpr`` (and its sub-jaxprs) with a float output
    narrower than float64 (a conversion from bool or int, e.g. an attention mask, is
    exact and allowed)."""
    found = set()
    for eqn in jaxpr.eqns:
        exact = eqn.primitive.name == "convert_element_type" and not any(
            jnp.issubdtype(v.aval.dtype, jnp.floating) for v in eqn.invars
        )
        for var in () if exact else eqn.outvars:
            dtype = getattr(var.aval, "dtype", None)
            if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 8:
                found.add(f"{eqn.primitive.name} -> {dtype}")
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found |= _narrow_ops(inner)
    return found


def num_trainable(params) -> int:
    """Number of differentiated parameters (what the Hessian's order is)."""
    trained, _, _ = _split_trainable(params)
    return int(sum(np.size(x) for x in jax.tree.leaves(trained)))


def dense_truth(loss_fn, params, batch) -> DenseTruth:
    """The float64 Hessian of ``loss_fn(params, batch)`` and its eigenvalues.

    The parameters and the float leaves of the batch are cast to float64 and the
    Hessian is taken by ``jax.hessian`` of the flattened trainable parameters with
    x64 on, whatever the caller's mode. This is the truth the float32 estimates are
    judged against: the Hessian of the same loss at the same (float32-trained)
    point, in arithmetic ~1e-16 accurate. At a non-smooth point (a ReLU input or a
    max-pool tie exactly where float64 lands) it is one piece's Hessian.
    """
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        trained, rest, join = _split_trainable(to_float64(params))
        data = to_float64(batch)
        flat, unravel = jax.flatten_util.ravel_pytree(trained)

        def f(w):
            return loss_fn(join(unravel(w), rest), data)

        narrow = _narrow_ops(jax.make_jaxpr(f)(flat).jaxpr)
        if narrow:
            raise ValueError(
                f"dense_truth: the loss computes in lower precision at float64 params "
                f"({', '.join(sorted(narrow))}): a module with dtype=float32 casts its "
                f"inputs; build it with dtype=None"
            )
        hessian = np.asarray(jax.jit(jax.hessian(f))(flat), np.float64)
    hessian = 0.5 * (hessian + hessian.T)
    eigenvalues = np.linalg.eigvalsh(hessian)
    return DenseTruth(hessian, eigenvalues, float(eigenvalues[-1]), hessian.shape[0])
