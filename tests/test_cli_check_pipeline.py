"""`stability check --stages / --block-delays`: a user's model judged with a delay per
block of parameters (`is_accessible(..., block_delays=)`; docs/theory.md section 18).

The user's model is a quadratic loss with a known dense, non-diagonal Hessian over
three top-level blocks ``a``, ``b``, ``c``; its checkpoint the exact minimum w = 0.
The oracle is the dense block threshold of ``K_b = P_b H``
(`stability.theory.block_delays`), independent of the matrix-free reduction.
"""

import json
import textwrap

import numpy as np
import pytest

from stability.app.cli import main
from stability.theory.block_delays import block_curvatures, block_max_stable_lr

RNG = np.random.default_rng(3)
_Q = np.linalg.qr(RNG.normal(size=(6, 6)))[0]
HESSIAN = _Q @ np.diag([0.2, 0.4, 0.7, 1.0, 1.6, 2.5]) @ _Q.T  # couples the blocks
LABELS = np.repeat([0, 1, 2], 2)  # a: 0-1, b: 2-3, c: 4-5


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from stability.networks.checkpoints import save_npz

    root = tmp_path_factory.mktemp("pipelineuser")
    save_npz(root / "minimum.npz", {k: np.zeros(2) for k in "abc"})
    (root / "pipeline_user_model.py").write_text(
        textwrap.dedent(f"""
        import jax.numpy as jnp

        H = jnp.asarray({HESSIAN.tolist()!r})

        def quadratic(params, batch):  # Hessian H, minimum at w = 0
            w = jnp.concatenate([params["a"], params["b"], params["c"]])
            return 0.5 * w @ H @ w * jnp.mean(batch)

        def make_model():
            return quadratic

        def ones():
            return [jnp.ones(4)]
    """)
    )
    return root


def _run(capsys, monkeypatch, root, *extra):
    monkeypatch.syspath_prepend(str(root))
    argv = ["check", "--model", "pipeline_user_model:make_model", "--params"]
    argv += [str(root / "minimum.npz"), "--data", "pipeline_user_model:ones", "--quiet"]
    code = main([*argv, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _truth(delays, momentum, beta):
    k = block_curvatures(HESSIAN, LABELS)
    return block_max_stable_lr(k, delays, beta, momentum=momentum)


@pytest.mark.parametrize(
    "flags, delays, momentum, beta",
    [
        (["--stages", "3"], (2, 1, 0), "gd", 0.0),
        (["--block-delays", '{"a": 1, "b": 3, "c": 0}'], (1, 3, 0), "heavy_ball", 0.5),
    ],
)
def test_verdict_across_the_dense_threshold(capsys, monkeypatch, project, flags, delays,
                                            momentum, beta):  # fmt: skip
    exact = _truth(delays, momentum, beta)
    rule = ["--momentum", "heavy_ball", "--beta", str(beta)] if beta else []
    for factor, expected in ((0.95, True), (1.05, False)):
        code, out, err = _run(
            capsys, monkeypatch, project, *flags, *rule, "--lr", repr(factor * exact), "--json"
        )
        assert code == 0, err
        report = json.loads(out)
        assert report["verdict"] is expected
        assert report["max_stable_lr"] == pytest.approx(exact, rel=1e-6)
        assert report["pipeline"]["delays"] == sorted(set(delays))


def test_text_report_names_the_blocks(capsys, monkeypatch, project):
    exact = _truth((2, 1, 0), "gd", 0.0)
    code, out, _ = _run(capsys, monkeypatch, project, "--stages", "3", "--lr", repr(0.9 * exact))
    assert code == 0
    assert "ACCESSIBLE" in out and "block delays      delay 0: 2 parameters" in out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--stages", "3", "--tau", "1", "--lr", "0.1"], "--tau cannot go with --stages"),
        (["--pipeline-schedule", "gpipe", "--tau", "1", "--lr", "0.1"], "needs --stages"),
        (["--stages", "3", "--pipeline-schedule", "x", "--lr", "0.1"], "--pipeline-schedule"),
        (["--block-delays", "{a: 1}", "--lr", "0.1"], "--block-delays must be JSON"),
        (["--block-delays", '{"a": -1, "b": 0, "c": 0}', "--lr", "0.1"], "--block-delays"),
        (["--block-delays", '{"a": 1, "b": 0}', "--lr", "0.1"], "matches the leaf 'c'"),
        (["--stages", "4", "--lr", "0.1"], "4 stages need at least 4"),
        (["--stages", "3", "--block-delays", '{"a": 1}', "--lr", "0.1"], "one of --stages"),
    ],
)
def test_bad_flags_exit_2_with_one_line(capsys, monkeypatch, project, flags, message):
    code, out, err = _run(capsys, monkeypatch, project, *flags)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
