"""The Flax user's path: models, data and checkpoints as the Flax examples write them.

A CNN written as the Flax nnx MNIST example writes it (Conv, BatchNorm,
Dropout, call-time ``rngs``) and a linen CNN with BatchNorm, trained with optax
on the bundled digits, judged in memory and through `stability check` on
their Orbax / npz checkpoints; and one clear sentence for each likely mistake.
"""

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax_examples import (
    LinenCNN,
    NnxCNN,
    NnxCNNRequiredRngs,
    digits_images,
    train_linen,
    train_nnx,
)
from jax.flatten_util import ravel_pytree
from scipy.sparse.linalg import LinearOperator, eigsh

import stability as st
from stability.app.cli import main
from stability.networks.checkpoints import restore_params, save_npz
from stability.networks.examples import NnxDigitsMLP

N_TRAIN, N_JUDGE = 256, 64  # N_JUDGE: a multiple of the 8 test devices (one batch, no remainder)


def standard():
    return jax.numpy_dtype_promotion("standard")


@pytest.fixture(scope="module")
def nnx_cnn():
    model = train_nnx(NnxCNN(rngs=nnx.Rngs(0)), digits_images(N_TRAIN), steps=300)
    return model


@pytest.fixture(scope="module")
def linen_cnn():
    model = LinenCNN()
    return model, train_linen(model, digits_images(N_TRAIN), steps=300)


def _ce(logits, y):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _reference(model, batch, train):
    """Hand-written loss of the Param vector and its top Hessian eigenvalue by an
    independent eigensolver: ARPACK (``scipy.sparse.linalg.eigsh``, tol 1e-13) on
    forward-over-reverse products of that loss (a dense ``jax.hessian`` of these
    1,034 parameters took half a minute per mode)."""
    copy = nnx.merge(*nnx.split(model))
    copy.train() if train else copy.eval()
    graphdef, p, rest = nnx.split(copy, nnx.Param, ...)
    flat, unravel = ravel_pytree(p)

    def f(w):
        m = nnx.merge(graphdef, unravel(w), jax.tree.map(lambda a: a, rest))
        with standard():
            logits = m(batch["image"], nnx.Rngs(0)) if train else m(batch["image"])
        return _ce(logits, batch["label"])

    hvp = jax.jit(lambda w, v: jax.jvp(jax.grad(f), (w,), (v,))[1])
    op = LinearOperator(
        (flat.size, flat.size),
        matvec=lambda v: np.asarray(hvp(flat, jnp.asarray(v.ravel(), jnp.float64))),
        dtype=np.float64,
    )
    top = eigsh(op, k=1, which="LA", tol=1e-13, v0=np.ones(flat.size))[0][0]
    return f, flat, top


@pytest.mark.parametrize("train", [False, True])
def test_nnx_example_cnn_verdict_and_sharpness_against_an_independent_eigensolver(nnx_cnn, train):
    batch = digits_images(N_JUDGE)
    f, flat, top = _reference(nnx_cnn, batch, train)
    loss_fn, params = st.loss_from_model(nnx_cnn, train=train, data=batch)
    assert float(loss_fn(params, batch)) == pytest.approx(float(f(flat)), rel=1e-12)
    spectrum = st.hessian_spectrum(loss_fn, params, batch, k=1, tol=1e-9, progress=False)
    assert spectrum.eigenvalues[0] == pytest.approx(top, rel=1e-7)

    limit = float(st.max_stable_sharpness(0.3, 0))
    report = st.is_accessible(nnx_cnn, None, tau=0, lr=0.3, data=batch, train=train, progress=False)
    assert report.verdict is not None
    assert report.verdict == bool(top < limit)
    assert report.sharpness <= top * (1 + 1e-9)
    # 4x over the limit: certainly unstable
    lr = 4 * 2 / top
    over = st.is_accessible(nnx_cnn, None, 0, lr, data=batch, train=train, progress=False)
    assert over.verdict is False


def test_train_mode_is_a_pure_function_of_params(nnx_cnn):
    batch = digits_images(N_JUDGE)
    before = jax.tree.map(np.asarray, nnx.state(nnx_cnn))
    loss_fn, params = st.loss_from_model(nnx_cnn, train=True)
    eager = float(loss_fn(params, batch))
    assert float(loss_fn(params, batch)) == eager  # the same dropout key every time
    assert float(jax.jit(loss_fn)(params, batch)) == pytest.approx(eager, rel=1e-13)
    eval_fn, _ = st.loss_from_model(nnx_cnn)
    assert abs(float(eval_fn(params, batch)) - eager) > 1e-6  # batch vs running statistics
    # nothing of the user's module changed; statistics have a zero gradient
    after = jax.tree.map(np.asarray, nnx.state(nnx_cnn))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    assert nnx_cnn.batch_norm1.use_running_average is True
    grads = jax.grad(loss_fn)(params, batch)
    np.testing.assert_array_equal(np.asarray(grads["batch_norm1"]["mean"][...]), 0.0)
    # the statistics are an argument of the loss, not a compiled-in constant
    shifted = jax.tree.map(lambda a: a, params)
    shifted["batch_norm1"]["mean"][...] = shifted["batch_norm1"]["mean"][...] + 1.0
    assert float(jax.jit(eval_fn)(shifted, batch)) != pytest.approx(
        float(jax.jit(eval_fn)(params, batch))
    )


def test_required_call_time_rngs_and_call_kwargs(nnx_cnn):
    """`examples/mnist/train.py`'s `__call__(self, x, rngs)` works unedited."""
    batch = digits_images(N_JUDGE)
    twin = NnxCNNRequiredRngs(rngs=nnx.Rngs(0))
    nnx.update(twin, nnx.state(nnx_cnn))
    for train in (False, True):
        a, pa = st.loss_from_model(nnx_cnn, train=train)
        b, pb = st.loss_from_model(twin, train=train)
        assert float(b(pb, batch)) == pytest.approx(float(a(pa, batch)), rel=1e-14)
    # call_kwargs wins: rngs given explicitly (copied at each evaluation)
    c, pc = st.loss_from_model(twin, train=True, call_kwargs={"rngs": nnx.Rngs(0)})
    assert float(c(pc, batch)) == pytest.approx(float(a(pa, batch)), rel=1e-14)
    assert float(c(pc, batch)) == float(c(pc, batch))

    class Masked(nnx.Module):
        def __init__(self):
            self.lin = nnx.Linear(64, 10, param_dtype=jnp.float64, rngs=nnx.Rngs(0))

        def __call__(self, x, mask, *, deterministic: bool = False):
            assert deterministic is True
            return self.lin(x) * mask

    x, y = st.load_digits(16)
    with pytest.raises(TypeError, match=r"requires mask.*call_kwargs=\{'mask': \.\.\.\}"):
        st.loss_from_model(Masked())
    f, p = st.loss_from_model(Masked(), call_kwargs={"mask": 1.0}, data=(x, y))
    assert np.isfinite(float(f(p, (x, y))))


@pytest.mark.parametrize(
    "batch",
    [
        lambda x, y: {"image": x, "label": y},
        lambda x, y: {"x": x, "y": y, "id": jnp.arange(len(y))},
        lambda x, y: {"inputs": x, "labels": y},
        lambda x, y: {"input": x, "target": y},
        lambda x, y: [x, y],
    ],
)
def test_dict_batches_by_common_names(batch):
    model = NnxDigitsMLP(hidden=4, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    x, y = st.load_digits(16)
    loss_fn, params = st.loss_from_model(model, data=batch(x, y))
    assert float(loss_fn(params, batch(x, y))) == pytest.approx(
        float(loss_fn(params, (x, y))), rel=1e-15
    )


def test_dict_batches_with_named_keys():
    model = NnxDigitsMLP(hidden=4, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    x, y = st.load_digits(16)
    odd = {"pixels": x, "digit": y}
    with pytest.raises(ValueError, match=r"keys \['digit', 'pixels'\].*batch_keys"):
        st.loss_from_model(model, data=odd)
    loss_fn, params = st.loss_from_model(model, data=odd, batch_keys=("pixels", "digit"))
    assert float(loss_fn(params, odd)) == pytest.approx(float(loss_fn(params, (x, y))))
    with pytest.raises(ValueError, match="batch_keys.*'label'"):
        st.loss_from_model(model, data=odd, batch_keys=("pixels", "label"))
    with pytest.raises(TypeError, match="batch_keys must be a pair"):
        st.loss_from_model(model, batch_keys="pixels")


def test_each_likely_mistake_gets_one_sentence(nnx_cnn):
    batch = digits_images(N_JUDGE)
    x, y = batch["image"], batch["label"]

    def one_sentence(err):
        text = str(err.value)
        assert "\n" not in text and len(text) < 400, text
        return text

    with pytest.raises(TypeError, match=r"labels must be integer.*float64") as err:
        st.loss_from_model(nnx_cnn, data=(x, y.astype(jnp.float64)))
    one_sentence(err)
    with pytest.raises(ValueError, match=r"labels look one-hot.*argmax") as err:
        st.loss_from_model(nnx_cnn, data=(x, jax.nn.one_hot(y, 10)))
    one_sentence(err)
    with pytest.raises(ValueError, match=r"inputs of shape \(2, 64\).*reshape\(-1, 8, 8, 1\)"):
        st.loss_from_model(nnx_cnn, data=(x.reshape(-1, 64), y))
    with pytest.raises(TypeError, match=r"labels.*single float64 array of shape \(64, 8, 8, 1\)"):
        st.loss_from_model(nnx_cnn, data=x)
    with pytest.raises(TypeError, match=r"^lr must be a real number; got '0\.3'"):
        st.is_accessible(nnx_cnn, None, tau=0, lr="0.3", data=batch, progress=False)
    with pytest.raises(ValueError, match=r"same number of examples"):
        st.loss_from_model(nnx_cnn, data=(x, y[:10]))
    other = NnxCNN(rngs=nnx.Rngs(0), channels=(4, 6))
    with pytest.raises(ValueError, match=r"another model.*conv2/kernel has shape \(3, 3, 4, 6\)"):
        st.loss_from_model(nnx_cnn, nnx.state(other), data=batch)
    # an MLP given images
    mlp = NnxDigitsMLP(hidden=4, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    with pytest.raises(ValueError, match=r"64 input features.*reshape\(len\(inputs\), -1\)"):
        st.loss_from_model(mlp, data=batch)


def _user_module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


def _check(capsys, *argv):
    code = main(["check", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code in (0, 3) else err)


def test_nnx_orbax_checkpoint_round_trip_and_cli(nnx_cnn, tmp_path, capsys, monkeypatch):
    ocp = pytest.importorskip("orbax.checkpoint")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", nnx.state(nnx_cnn))
    checkpointer.wait_until_finished()
    params_only = tmp_path / "params_only"
    checkpointer.save(params_only, nnx.state(nnx_cnn, nnx.Param))
    checkpointer.wait_until_finished()
    _user_module(
        tmp_path,
        "nnx_cnn_user",
        f"""
        from flax import nnx
        from flax_examples import NnxCNN, digits_images

        def make_model():
            return NnxCNN(rngs=nnx.Rngs(5))  # a fresh init: the checkpoint must win

        def batches():
            return digits_images({N_JUDGE})
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    batch = digits_images(N_JUDGE)

    # the restored model's loss equals the in-memory one, batch statistics included
    fresh = NnxCNN(rngs=nnx.Rngs(5))
    restored = restore_params(tmp_path / "state", fresh)
    ref_fn, ref_params = st.loss_from_model(nnx_cnn)
    fn, params = st.loss_from_model(fresh, restored)
    assert float(fn(params, batch)) == float(ref_fn(ref_params, batch))
    assert fresh.batch_norm1.mean[...].sum() == 0  # the fresh module was not modified

    argv = ["--model", "nnx_cnn_user:make_model", "--data", "nnx_cnn_user:batches"]
    argv += ["--tau", "0", "--lr", "0.3"]
    for train in (False, True):
        code, report = _check(
            capsys, *argv, "--params", str(tmp_path / "state"), *(["--train"] if train else [])
        )
        assert code == 0, report
        memory = st.is_accessible(nnx_cnn, None, 0, 0.3, data=batch, train=train, progress=False)
        assert report["verdict"] == memory.verdict
        assert report["sharpness"] == pytest.approx(memory.sharpness, rel=1e-9)

    # a Param-only checkpoint would silently drop the running statistics
    code, err = _check(capsys, *argv, "--params", str(params_only))
    assert code == 2 and "save nnx.state(model)" in err and "batch_norm1/mean" in err
    assert len(err.strip().splitlines()) == 1
    # in train mode the running statistics are not used: accepted
    code, _ = _check(capsys, *argv, "--params", str(params_only), "--train")
    assert code == 0

    # npz of the same state
    save_npz(tmp_path / "state.npz", nnx.state(nnx_cnn))
    code, report = _check(capsys, *argv, "--params", str(tmp_path / "state.npz"))
    assert code == 0
    memory = st.is_accessible(nnx_cnn, None, 0, 0.3, data=batch, progress=False)
    assert report["sharpness"] == pytest.approx(memory.sharpness, rel=1e-9)

    # --require-minimum reaches is_accessible
    code, report = _check(capsys, *argv, "--params", str(tmp_path / "state"), "--require-minimum")
    assert code in (0, 3) and report["require_minimum"] is True


def test_linen_npz_checkpoint_round_trip_and_cli(linen_cnn, tmp_path, capsys, monkeypatch):
    model, variables = linen_cnn
    save_npz(tmp_path / "vars.npz", variables)
    save_npz(tmp_path / "no_stats.npz", {"params": variables["params"]})
    _user_module(
        tmp_path,
        "linen_cnn_user",
        f"""
        from flax_examples import LinenCNN, digits_images

        def make_model():
            return LinenCNN()

        def batches():
            b = digits_images({N_JUDGE})
            return {{"pixels": b["image"], "digit": b["label"]}}
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    batch = digits_images(N_JUDGE)
    restored = restore_params(tmp_path / "vars.npz", model)
    ref_fn, ref_params = st.loss_from_model(model, variables, data=batch)
    fn, params = st.loss_from_model(model, restored, data=batch)
    assert float(fn(params, batch)) == float(ref_fn(ref_params, batch))
    # the running statistics matter: default ones give another loss
    zero = {
        "params": variables["params"],
        "batch_stats": jax.tree.map(lambda s: jnp.zeros_like(s), variables["batch_stats"]),
    }
    assert float(fn(zero, batch)) != pytest.approx(float(fn(params, batch)), rel=1e-6)

    argv = ["--model", "linen_cnn_user:make_model", "--data", "linen_cnn_user:batches"]
    argv += ["--tau", "2", "--lr", "0.1", "--batch-keys", "pixels", "digit"]
    code, report = _check(capsys, *argv, "--params", str(tmp_path / "vars.npz"))
    assert code == 0, report
    memory = st.is_accessible(model, variables, 2, 0.1, data=batch, progress=False)
    assert report["verdict"] == memory.verdict
    assert report["sharpness"] == pytest.approx(memory.sharpness, rel=1e-9)

    code, err = _check(capsys, *argv, "--params", str(tmp_path / "no_stats.npz"))
    assert code == 2 and "missing ['batch_stats']['BatchNorm_0']['mean']" in err
    code, err = _check(
        capsys,
        *[a if a != "digit" else "label" for a in argv],
        "--params",
        str(tmp_path / "vars.npz"),
    )
    assert code == 2 and "'label'" in err
