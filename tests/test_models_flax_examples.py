"""The Flax adapter on models written as google/flax's examples write them.

Each model is this file's own shrunk copy of the example's structure (issue 20,
item 5), float64 parameters:

- `Tagger`: ``examples/nlp_seq``'s Transformer, keyword-only inputs
  ``__call__(self, *, inputs, train)``, batches ``{"inputs", "targets"}``;
- `TextClassifier`: ``examples/sst2``'s embedding + bidirectional LSTM +
  attention classifier, ``__call__(self, token_ids, lengths, deterministic)``,
  batches ``{"token_ids", "length", "label"}``: a second per-example input;
- `ResNet`: ``examples/imagenet``'s ResNet V1.5 (7x7 stem, BatchNorm with
  ``axis_name="batch"``, max-pool, basic blocks), with its stage sizes a list
  as the example's ``partial(ResNet, stage_sizes=[...])`` writes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx, struct
from flax_example_models import ResNetBlock  # the imagenet example's basic block

import stability as st
from stability.networks.models import batch_entry, cross_entropy

F64 = jnp.float64

# ------------------------------------------------------------- nlp_seq


@struct.dataclass
class TaggerConfig:
    vocab_size: int = 12
    output_vocab_size: int = 5
    emb_dim: int = 8
    num_heads: int = 2
    qkv_dim: int = 8
    mlp_dim: int = 16
    max_len: int = 16
    dropout_rate: float = 0.1


def sinusoidal(max_len, features):
    position = np.arange(max_len)[:, None]
    freq = np.exp(np.arange(0, features, 2) * -(np.log(10000.0) / features))
    table = np.zeros((max_len, features))
    table[:, 0::2] = np.sin(position * freq)
    table[:, 1::2] = np.cos(position * freq)
    return jnp.asarray(table[None])


class EncoderBlock(nn.Module):
    config: TaggerConfig

    @nn.compact
    def __call__(self, inputs, deterministic):
        cfg = self.config
        x = nn.LayerNorm(param_dtype=F64)(inputs)
        x = nn.MultiHeadDotProductAttention(
            num_heads=cfg.num_heads,
            qkv_features=cfg.qkv_dim,
            use_bias=False,
            dropout_rate=cfg.dropout_rate,
            deterministic=deterministic,
            param_dtype=F64,
        )(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic) + inputs
        y = nn.LayerNorm(param_dtype=F64)(x)
        y = nn.elu(nn.Dense(cfg.mlp_dim, param_dtype=F64)(y))
        y = nn.Dense(x.shape[-1], param_dtype=F64)(y)
        return x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)


class Tagger(nn.Module):
    """Sequence tagging: the nlp_seq example's keyword-only ``__call__``."""

    config: TaggerConfig

    @nn.compact
    def __call__(self, *, inputs, train):
        assert inputs.ndim == 2  # (batch, len)
        cfg = self.config
        x = nn.Embed(cfg.vocab_size, cfg.emb_dim, param_dtype=F64, name="embed")(
            inputs.astype("int32")
        )
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=not train)
        x = x + sinusoidal(cfg.max_len, cfg.emb_dim)[:, : x.shape[1]]
        x = EncoderBlock(cfg)(x, deterministic=not train)
        x = nn.LayerNorm(param_dtype=F64)(x)
        return nn.Dense(cfg.output_vocab_size, param_dtype=F64)(x)


def tagging_batch(n=12, length=6, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    tokens = jax.random.randint(k1, (n, length), 1, TaggerConfig.vocab_size)
    tags = (tokens + jax.random.randint(k2, (n, length), 0, 2)) % TaggerConfig.output_vocab_size
    return {"inputs": tokens, "targets": tags}


# ---------------------------------------------------------------- sst2


def sequence_mask(lengths, max_length):
    return jnp.arange(max_length)[None] < lengths[:, None]


@jax.vmap
def flip_sequences(inputs, lengths):
    """Reverse each sequence's first ``length`` steps, padding kept at the end."""
    return jnp.flip(jnp.roll(inputs, inputs.shape[0] - lengths, axis=0), axis=0)


class LSTM(nn.Module):
    hidden_size: int

    @partial(
        nn.transforms.scan,
        variable_broadcast="params",
        in_axes=1,
        out_axes=1,
        split_rngs={"params": False},
    )
    @nn.compact
    def __call__(self, carry, x):
        return nn.OptimizedLSTMCell(self.hidden_size, param_dtype=F64)(carry, x)

    def initialize_carry(self, shape):
        cell = nn.OptimizedLSTMCell(self.hidden_size, param_dtype=F64, parent=None)
        return cell.initialize_carry(jax.random.key(0), shape)


class BiLSTM(nn.Module):
    hidden_size: int

    def setup(self):
        self.forward_lstm = LSTM(self.hidden_size)
        self.backward_lstm = LSTM(self.hidden_size)

    def __call__(self, embedded, lengths):
        _, forward = self.forward_lstm(
            self.forward_lstm.initialize_carry(embedded[:, 0].shape), embedded
        )
        reversed_inputs = flip_sequences(embedded, lengths)
        _, backward = self.backward_lstm(
            self.backward_lstm.initialize_carry(reversed_inputs[:, 0].shape), reversed_inputs
        )
        return jnp.concatenate([forward, flip_sequences(backward, lengths)], -1)


class AttentionClassifier(nn.Module):
    hidden_size: int
    output_size: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, encoded, lengths, deterministic=None):
        encoded = nn.Dropout(self.dropout_rate)(encoded, deterministic=deterministic)
        energy = nn.tanh(nn.Dense(self.hidden_size, use_bias=False, param_dtype=F64)(encoded))
        scores = nn.Dense(1, use_bias=False, param_dtype=F64)(energy).squeeze(-1)
        scores = jnp.where(sequence_mask(lengths, encoded.shape[1]), scores, -jnp.inf)
        context = (nn.softmax(scores, axis=-1)[:, None] @ encoded).squeeze(1)
        hidden = nn.tanh(nn.Dense(self.hidden_size, param_dtype=F64)(context))
        return nn.Dense(self.output_size, use_bias=False, param_dtype=F64)(hidden)


class TextClassifier(nn.Module):
    """The sst2 example's model: ``__call__(self, token_ids, lengths, deterministic)``."""

    embedding_size: int = 4
    hidden_size: int = 4
    vocab_size: int = 10
    output_size: int = 2
    dropout_rate: float = 0.1

    def setup(self):
        init = nn.initializers.normal(stddev=0.1)
        self.embedding = self.param("embedding", init, (self.vocab_size, self.embedding_size), F64)
        self.encoder = BiLSTM(self.hidden_size)
        self.dropout_layer = nn.Dropout(self.dropout_rate)
        self.classifier = AttentionClassifier(
            self.hidden_size, self.output_size, dropout_rate=self.dropout_rate
        )

    def __call__(self, token_ids, lengths, deterministic: bool | None = None):
        embedded = self.dropout_layer(self.embedding[token_ids], deterministic=deterministic)
        return self.classifier(
            self.encoder(embedded, lengths), lengths, deterministic=deterministic
        )


def sentences(n=8, length=5, seed=0):
    """``{"token_ids", "length", "label"}`` as the sst2 input pipeline names them."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    lengths = jax.random.randint(k1, (n,), 2, length + 1)
    tokens = jax.random.randint(k2, (n, length), 2, TextClassifier.vocab_size)
    tokens = jnp.where(sequence_mask(lengths, length), tokens, 0)  # padding id 0
    return {"token_ids": tokens, "length": lengths, "label": jnp.arange(n) % 2}


def sst2_model():
    model = TextClassifier()
    batch = sentences()
    init = jax.jit(lambda key, x, n: model.init(key, x, n, deterministic=True))
    variables = init(jax.random.key(0), batch["token_ids"][:2], batch["length"][:2])
    return model, variables, batch


def sst2_loss(model, variables, batch):
    @jax.jit
    def loss(variables, batch):
        logits = model.apply(variables, batch["token_ids"], batch["length"], deterministic=True)
        return cross_entropy(logits, batch["label"])

    return float(loss(variables, batch))


# ------------------------------------------------------------ imagenet


class ResNet(nn.Module):
    """ResNet V1.5 as the imagenet example writes it (stem, BatchNorm over ``axis_name``)."""

    stage_sizes: Sequence[int]
    block_cls: Any
    num_classes: int = 3
    num_filters: int = 4
    act: Callable = nn.relu
    axis_name: str | None = "batch"

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(nn.Conv, use_bias=False, param_dtype=F64)
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            param_dtype=F64,
            axis_name=self.axis_name,
        )
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(
                    self.num_filters * 2**i, conv=conv, norm=norm, act=self.act, strides=strides
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, param_dtype=F64)(x)


ResNet1 = partial(ResNet, stage_sizes=[1], block_cls=ResNetBlock)


def images(n=8, side=12, seed=0):
    x = jax.random.normal(jax.random.key(seed), (n, side, side, 3), F64)
    return {"image": x, "label": jnp.arange(n) % 3}


def resnet():
    model = ResNet1()
    batch = images()
    with jax.numpy_dtype_promotion("standard"):
        variables = model.init(jax.random.key(0), batch["image"][:1], train=False)
    # as after an optax update: jax.tree.map returns the dicts' keys sorted
    return model, jax.tree.map(lambda a: a, variables), batch


def _compiled(caplog):
    return [r.getMessage()[:80] for r in caplog.records if "Compiling" in r.getMessage()]


# ------------------------------------------------------------------- (a)


def test_a_linen_module_compiles_once_across_is_accessible_calls(caplog):
    """ResNet's ``stage_sizes=[1]`` (a list) made the module unhashable: every call
    built a new loss function, and jit(hvp_sum) compiled again each time."""
    model, variables, batch = resnet()
    args = dict(tau=0, lr=0.05, data=batch, progress=False)
    first = st.is_accessible(model, variables, **args)
    assert first.verdict is not None
    rebuilt = ResNet1()  # an equal module, made afresh as a script would
    f1, _ = st.loss_from_model(model, variables)
    f2, _ = st.loss_from_model(rebuilt, variables)
    assert f1 is f2
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        again = st.is_accessible(model, variables, **args)
        third = st.is_accessible(rebuilt, variables, **args)
    assert _compiled(caplog) == []
    assert again.sharpness == first.sharpness == third.sharpness
    # a different list is a different module: its own function
    other = ResNet(stage_sizes=[2], block_cls=ResNetBlock)
    assert st.loss_from_model(other, variables)[0] is not f1


# ------------------------------------------------------------------- (b)


def test_b_keyword_only_inputs_as_nlp_seq_writes_them():
    model = Tagger(TaggerConfig())
    batch = tagging_batch()
    with jax.numpy_dtype_promotion("standard"):  # LayerNorm's float32 epsilon
        variables = jax.jit(lambda x: model.init(jax.random.key(0), inputs=x, train=False))(
            batch["inputs"][:1]
        )
        logits = jax.jit(lambda v, x: model.apply(v, inputs=x, train=False))(
            variables, batch["inputs"]
        )
        dropped = jax.jit(
            lambda v, x: model.apply(v, inputs=x, train=True, rngs={"dropout": jax.random.key(0)})
        )(variables, batch["inputs"])
    loss_fn, params = st.loss_from_model(model, variables, data=batch)
    expected = float(cross_entropy(logits, batch["targets"]))
    assert float(loss_fn(params, batch)) == pytest.approx(expected, rel=1e-13)
    # train mode: dropout with the fixed key, as the example's train_step applies it
    train_fn, _ = st.loss_from_model(model, variables, train=True, data=batch)
    assert float(train_fn(params, batch)) == pytest.approx(
        float(cross_entropy(dropped, batch["targets"])), rel=1e-13
    )
    report = st.is_accessible(model, variables, tau=0, lr=0.05, data=batch, progress=False)
    assert report.verdict is not None


# ------------------------------------------------------------------- (c)


def test_c_a_second_per_example_input_from_the_batch_as_sst2_names_it():
    model, variables, batch = sst2_model()
    # the pipeline's key "length" for __call__'s "lengths"
    loss_fn, params = st.loss_from_model(
        model, variables, data=batch, call_kwargs={"lengths": batch_entry("length")}
    )
    loss_fn = jax.jit(loss_fn)
    assert float(loss_fn(params, batch)) == pytest.approx(
        sst2_loss(model, variables, batch), rel=1e-13
    )
    # per batch: each batch's own lengths, sliced with it
    half = jax.tree.map(lambda a: a[:3], batch)
    assert float(loss_fn(params, half)) == pytest.approx(
        sst2_loss(model, variables, half), rel=1e-13
    )
    # an entry named as the parameter needs no declaration
    named = {"token_ids": batch["token_ids"], "lengths": batch["length"], "label": batch["label"]}
    by_name, _ = st.loss_from_model(model, variables, data=named)
    assert float(jax.jit(by_name)(params, named)) == float(loss_fn(params, batch))
    # one batch or its split: the same Hessian
    args = dict(tau=0, lr=0.05, progress=False, tol=1e-7, call_kwargs={"lengths":
                batch_entry("length")})  # fmt: skip
    whole = st.is_accessible(model, variables, data=batch, **args)
    parts = [jax.tree.map(lambda a, s=s: a[s : s + 4], batch) for s in (0, 4)]
    split = st.is_accessible(model, variables, data=parts, **args)
    assert whole.verdict is not None
    # (the same Krylov process from the same start: equal to rounding, not only to tol)
    assert split.sharpness == pytest.approx(whole.sharpness, rel=1e-8)


def test_c_whole_data_lengths_in_call_kwargs_are_diagnosed_as_such():
    model, variables, batch = sst2_model()
    with pytest.raises(ValueError) as err:
        st.loss_from_model(
            model,
            variables,
            data=(batch["token_ids"], batch["label"]),
            call_kwargs={"lengths": batch["length"]},
        )
    text = str(err.value)
    assert "first layer" not in text
    assert "call_kwargs['lengths']" in text and "batch_entry" in text, text
    # nothing given: the parameter is named with both ways to give it
    with pytest.raises(TypeError, match=r"requires lengths.*dict batch.*call_kwargs"):
        st.loss_from_model(model, variables, data=(batch["token_ids"], batch["label"]))
    # batches from an iterator are not looked at: the entry is declared
    named = {"token_ids": batch["token_ids"], "lengths": batch["length"], "label": batch["label"]}
    with pytest.raises(TypeError, match=r"requires lengths.*batch_entry"):
        st.loss_from_model(model, variables, data=iter([named]))
    declared = {"lengths": batch_entry("lengths")}
    loss_fn, params = st.loss_from_model(model, variables, data=iter([named]), call_kwargs=declared)
    with pytest.raises(ValueError, match=r"batch_entry\('lengths'\).*no entry 'lengths'"):
        loss_fn(params, batch)


# ------------------------------------------------------------------- (d)


def test_d_batchnorm_over_a_named_axis_in_train_mode():
    model, variables, batch = resnet()
    loss_fn, params = st.loss_from_model(model, variables, train=True, data=batch)
    value = float(loss_fn(params, batch))
    # the batch statistics of the whole batch: the same module without the axis
    twin_fn, _ = st.loss_from_model(ResNet1(axis_name=None), variables, train=True)
    assert value == pytest.approx(float(twin_fn(params, batch)), rel=1e-13)
    # the imagenet example's own step: pmap over 'batch' on one device
    with jax.numpy_dtype_promotion("standard"):
        logits, _ = jax.pmap(
            lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
            in_axes=(None, 0),
            axis_name="batch",
        )(variables, batch["image"][None])
    assert value == pytest.approx(float(cross_entropy(logits[0], batch["label"])), rel=1e-12)
    report = st.is_accessible(
        model, variables, tau=0, lr=0.05, data=batch, train=True, progress=False
    )
    assert report.verdict is not None


def test_d_input_shape_is_blamed_only_when_it_is_the_cause():
    model, variables, batch = resnet()  # params keys sorted: Dense_0 before conv_init
    flat = (batch["image"].reshape(len(batch["label"]), -1), batch["label"])
    with pytest.raises(ValueError, match=r"3 channel\(s\).*reshape\(-1, 12, 12, 3\)"):
        st.loss_from_model(model, variables, data=flat)
    # right inputs, failing for another reason: the model's own error, not a shape hint
    bad = jax.tree.map(lambda a: a, variables)
    bad["params"]["conv_init"]["kernel"] = bad["params"]["conv_init"]["kernel"][..., :2]
    with pytest.raises(Exception) as err:  # noqa: PT011
        loss_fn, p = st.loss_from_model(model, bad)
        loss_fn(p, batch)
    assert "first layer" not in str(err.value)


class NnxNormed(nnx.Module):
    """An nnx conv net whose BatchNorm averages over a pmap axis."""

    def __init__(self, axis_name, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), param_dtype=F64, rngs=rngs)
        self.norm = nnx.BatchNorm(4, axis_name=axis_name, param_dtype=F64, rngs=rngs)
        self.head = nnx.Linear(4, 3, param_dtype=F64, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.norm(self.conv(x))).mean((1, 2)))


def test_d_nnx_batchnorm_over_a_named_axis_in_train_mode():
    batch = images()
    model = NnxNormed("batch", nnx.Rngs(0))
    loss_fn, params = st.loss_from_model(model, train=True, data=batch)
    twin_fn, _ = st.loss_from_model(NnxNormed(None, nnx.Rngs(0)), train=True)
    value = float(jax.jit(loss_fn)(params, batch))
    assert value == pytest.approx(float(twin_fn(params, batch)), rel=1e-13)
    np.testing.assert_array_equal(model.norm.mean[...], 0.0)  # the user's module is left alone
