"""`stability check --optimizer-state`: Adam/AdamW/RMSprop verdicts from a training
checkpoint (issue 22), and `preconditioner_from_optax` on the restored dict form.

Oracle: `is_accessible` called directly with the live optax state
(`preconditioner_from_optax` of the real `ScaleByAdamState`), on the same linen model,
params and data; the checkpoints are written the way users write them (`save_npz` of a
training-state dict, Orbax's `StandardCheckpointer` of the same dict, restored without a
template).
"""

from __future__ import annotations

import json
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stability import is_accessible, preconditioner_from_optax
from stability.app.cli import main
from stability.networks.checkpoints import (
    load_params,
    restore_params,
    restore_training_state,
    save_npz,
    split_training_state,
)
from stability.networks.examples import DigitsMLP, load_digits

LR, WD, STEPS = 3e-3, 1e-3, 300

MODEL = textwrap.dedent("""
    import jax.numpy as jnp
    from stability.networks import examples

    def make_model():
        return examples.DigitsMLP(hidden=16, param_dtype=jnp.float64)

    def batches():
        return examples.load_digits(256, dtype=jnp.float64)
""")


def _train(tx, steps):
    """Full-batch optax training of the digits MLP (16 hidden, float64): (params, state)."""
    model = DigitsMLP(hidden=16, param_dtype=jnp.float64)
    x, y = load_digits(256, dtype=jnp.float64)
    params = model.init(jax.random.key(0), x[:1])["params"]

    def loss(p):
        logp = jax.nn.log_softmax(model.apply({"params": p}, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def step(p, s):
        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    with jax.numpy_dtype_promotion("standard"):  # optax's own code
        state = tx.init(params)
        for _ in range(steps):
            params, state = step(params, state)
    return params, state


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An AdamW-trained minimum saved as users save it: training-state .npz and Orbax
    folder, a params-only .npz and the optimizer state alone."""
    import orbax.checkpoint as ocp

    root = tmp_path_factory.mktemp("adam")
    (root / "adammodel.py").write_text(MODEL)
    params, state = _train(optax.adamw(LR, weight_decay=WD), STEPS)
    train_state = {"step": STEPS, "params": params, "opt_state": state}
    save_npz(root / "state.npz", train_state)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.abspath(root / "orbax"), train_state)
    save_npz(root / "params.npz", {"params": params})
    save_npz(root / "opt.npz", state)
    return root, params, state


@pytest.fixture
def project(trained, monkeypatch):
    monkeypatch.chdir(trained[0])
    return trained


def _check(capsys, *argv):
    code = main(["check", "--model", "adammodel:make_model", "--data", "adammodel:batches",
                 *argv])  # fmt: skip
    out, err = capsys.readouterr()
    return code, out, err


def _direct(params, state, tau):
    """The oracle: is_accessible with the live optax state."""
    pre = preconditioner_from_optax(state, weight_decay=WD, learning_rate=LR)
    x, y = load_digits(256, dtype=jnp.float64)
    model = DigitsMLP(hidden=16, param_dtype=jnp.float64)
    return is_accessible(model, {"params": params}, tau, data=(x, y), optimizer_state=pre,
                         progress=False)  # fmt: skip


@pytest.mark.parametrize("tau, word", [(0, "ACCESSIBLE"), (4, "NOT ACCESSIBLE")])
def test_training_checkpoint_verdict_matches_is_accessible(project, capsys, tau, word):
    _, params, state = project
    want = _direct(params, state, tau)
    assert want.verdict is (tau == 0)
    for checkpoint in ("state.npz", "orbax"):
        argv = ["--params", checkpoint, "--optimizer-state", "--tau", str(tau), "--lr", str(LR),
                "--weight-decay", str(WD)]  # fmt: skip
        code, out, _ = _check(capsys, *argv, "--json")
        assert code == 0, out
        got = json.loads(out)
        assert got["verdict"] is want.verdict
        assert got["sharpness"] == pytest.approx(want.sharpness, rel=1e-6)
        assert got["max_stable_sharpness"] == pytest.approx(want.max_stable_sharpness, rel=1e-9)
        assert got["lr"] == pytest.approx(LR, rel=1e-12)
        assert got["momentum"] == "preconditioned_adam"
        adaptive = got["adaptive"]
        assert adaptive["optimizer"] == "adamw" and adaptive["count"] == STEPS
        assert adaptive["weight_decay"] == pytest.approx(WD) and adaptive["b1"] == 0.9
        code, out, _ = _check(capsys, *argv, "--quiet")
        assert code == 0
        assert out.startswith(f"Accessibility: {word}\n")
        assert "\n  optimizer         adamw (b1=0.9, step 300" in out


def test_separate_optimizer_state_file(project, capsys):
    _, params, state = project
    want = _direct(params, state, 0)
    for opt in ("opt.npz", "state.npz"):  # the optax state alone, or a training state
        code, out, _ = _check(capsys, "--params", "params.npz", "--optimizer-state", opt,
                              "--tau", "0", "--lr", str(LR), "--weight-decay", str(WD),
                              "--json")  # fmt: skip
        assert code == 0
        assert json.loads(out)["sharpness"] == pytest.approx(want.sharpness, rel=1e-6)


def test_inject_hyperparams_state_gives_the_lr(project, capsys, tmp_path):
    root = project[0]
    params, state = _train(optax.inject_hyperparams(optax.adam)(learning_rate=2e-3), 20)
    save_npz(root / "inject.npz", {"params": params, "opt_state": state})
    code, out, err = _check(capsys, "--params", "inject.npz", "--optimizer-state", "--tau",
                            "2", "--json")  # fmt: skip
    assert code in (0, 3), err
    got = json.loads(out)
    assert got["lr"] == pytest.approx(2e-3, rel=1e-6)  # stored as float32
    assert got["adaptive"]["optimizer"] == "adam" and got["adaptive"]["count"] == 20
    want = 1 / (1 - 0.9**20)
    assert got["adaptive"]["bias_correction"] == pytest.approx(want, rel=1e-12)
    code, _, err = _check(capsys, "--params", "inject.npz", "--optimizer-state", "--tau", "2",
                          "--b1", "0.95")  # fmt: skip
    assert code == 2 and "--b1 0.95 contradicts" in err and len(err.strip().splitlines()) == 1


def test_a_training_checkpoint_without_optimizer_state_judges_its_params(project, capsys):
    root, params, _ = project
    model = DigitsMLP(hidden=16, param_dtype=jnp.float64)
    variables = restore_params(root / "state.npz", model)
    assert set(variables) == {"params"}
    np.testing.assert_array_equal(variables["params"]["Dense_0"]["kernel"],
                                  params["Dense_0"]["kernel"])  # fmt: skip
    _, opt_state = restore_training_state(root / "orbax", model)
    assert int(opt_state[0]["count"]) == STEPS
    code, out, _ = _check(capsys, "--params", "state.npz", "--tau", "0", "--lr", "0.1", "--quiet")
    assert code == 0 and "optimizer" not in out


BAD = [
    (["--optimizer-state", "--beta", "0.9"], "--beta"),
    (["--optimizer-state", "--momentum", "nesterov"], "--momentum"),
    (["--optimizer-state", "--b1", "1.5"], "--b1"),
    (["--optimizer-state", "--b2", "-0.1"], "--b2"),
    (["--optimizer-state", "--eps", "-1"], "--eps"),
    (["--optimizer-state", "--eps-root", "inf"], "--eps-root"),
    (["--optimizer-state", "--weight-decay", "nan"], "--weight-decay"),
    (["--optimizer-state", "--optimizer", "sgd"], "--optimizer"),
    (["--optimizer-state", "--optimizer", "rmsprop"], "--optimizer"),
    (["--optimizer-state", "--optimizer", "adam", "--weight-decay", "0.01"], "--weight-decay"),
    (["--optimizer-state", "--batch-size", "32"], "--batch-size"),
    (["--b1", "0.9"], "--optimizer-state"),
    (["--optimizer-state", "missing.npz"], "--optimizer-state"),
    (["--optimizer-state", "params.npz"], "--optimizer-state"),
]


@pytest.mark.parametrize("extra, flag", BAD)
def test_bad_input_exits_2_naming_the_flag(project, capsys, extra, flag):
    code, out, err = _check(capsys, "--params", "state.npz", "--tau", "1", "--lr", "0.01",
                            *extra)  # fmt: skip
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert flag in err, err


def test_missing_optimizer_state_or_lr_exits_2(project, capsys):
    cases = [
        (["--optimizer-state", "--tau", "1"], "--params"),  # no checkpoint to read it from
        (["--params", "params.npz", "--optimizer-state", "--tau", "1"], "holds no 'opt_state'"),
        (["--params", "state.npz", "--tau", "1"], "--lr is required"),
        (["--params", "state.npz", "--optimizer-state", "--tau", "1"], "--lr is required"),
    ]
    for argv, needle in cases:
        code, _, err = _check(capsys, *argv)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------- preconditioner_from_optax, restored dicts


def _tiny():
    return {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
            "Dense_1": {"kernel": jnp.full((2, 2), 0.5), "bias": jnp.zeros(2)}}  # fmt: skip


@pytest.mark.parametrize(
    "tx, kwargs",
    [
        (optax.adamw(1e-3, weight_decay=0.01), {"weight_decay": 0.01}),
        (optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)), {}),
        (optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.02), {}),
        (optax.rmsprop(1e-3, momentum=0.9), {"momentum": 0.9}),
        (optax.rmsprop(1e-3, centered=True, bias_correction=True), {"kind": "rmsprop"}),
        (optax.MultiSteps(optax.adam(1e-3), 2), {}),
    ],
)
def test_restored_dicts_give_the_optax_states_preconditioner(tmp_path, tx, kwargs):
    params = _tiny()
    with jax.numpy_dtype_promotion("standard"):  # optax's own code
        state = tx.init(params)
        for i in range(3):
            grads = jax.tree_util.tree_map(lambda x, i=i: x * (0.5 + i) + 0.1, params)
            _, state = tx.update(grads, state, params)
    want = preconditioner_from_optax(state, params, **kwargs)
    save_npz(tmp_path / "s.npz", {"params": params, "opt_state": state})
    variables, raw = split_training_state(load_params(tmp_path / "s.npz"))
    assert isinstance(raw, dict)  # no optax class left
    for like in (variables, {"params": variables}):  # plain, or linen variables
        got = preconditioner_from_optax(raw, like, **kwargs)
        assert got._replace(diagonal=None) == want._replace(diagonal=None)
        for a, b in zip(jax.tree_util.tree_leaves(got.diagonal),
                        jax.tree_util.tree_leaves(want.diagonal), strict=True):  # fmt: skip
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


def test_restored_dicts_refused_like_the_states():
    params = _tiny()
    amsgrad = optax.amsgrad(1e-3).init(params)
    raw = [{"count": np.int32(1), "mu": params, "nu": params, "nu_max": params}]
    assert type(amsgrad[0]).__name__ == "ScaleByAmsgradState"
    with pytest.raises(ValueError, match="ScaleByAmsgradState"):
        preconditioner_from_optax(raw)
    with pytest.raises(ValueError, match="no update yet"):
        preconditioner_from_optax({"count": np.int32(0), "mu": params, "nu": params})
    bigger = dict(params, Dense_2={"bias": jnp.zeros(2)})
    raw = {"count": np.int32(3), "mu": params, "nu": params}
    with pytest.raises(ValueError, match="structure"):
        preconditioner_from_optax(raw, {"params": bigger})


def test_rmsprop_state_takes_its_momentum_from_b1(project, capsys):
    root = project[0]
    params, state = _train(optax.rmsprop(1e-3, momentum=0.9), 20)
    save_npz(root / "rms.npz", {"params": params, "opt_state": state})
    argv = ["--params", "rms.npz", "--optimizer-state", "--tau", "1", "--lr", "1e-3"]
    code, _, err = _check(capsys, *argv)
    assert code == 2 and "--b1" in err and len(err.strip().splitlines()) == 1, err
    want = preconditioner_from_optax(state, learning_rate=1e-3, momentum=0.9)
    for extra in ([], ["--optimizer", "rmsprop"]):
        code, out, err = _check(capsys, *argv, "--b1", "0.9", *extra, "--json")
        assert code in (0, 3), err
        adaptive = json.loads(out)["adaptive"]
        assert adaptive["optimizer"] == "rmsprop" and adaptive["b1"] == 0.9
        assert adaptive["bias_correction"] == pytest.approx(want.bias_correction, rel=1e-12)
