"""`stability check --diloco`: a user's model judged under local SGD / DiLoCo rounds
(`is_accessible(..., local_sgd=)`; docs/theory.md section 17).

The user's model is a quadratic loss with a known diagonal Hessian, its checkpoint the
exact minimum w = 0: the oracle is `round_spectral_radius` at every eigenvalue.
"""

import json
import textwrap

import numpy as np
import pytest

import stability as st
from stability.app.cli import main
from stability.theory.local_sgd import LocalSGD, max_stable_outer_lr, round_spectral_radius

CURVATURES = (0.1, 0.3, 0.6, 1.0, 1.5, 2.0)  # the Hessian's eigenvalues
MU = 0.9


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from stability.networks.checkpoints import save_npz

    root = tmp_path_factory.mktemp("dilocouser")
    save_npz(root / "minimum.npz", {"w": np.zeros(len(CURVATURES))})
    (root / "diloco_user_model.py").write_text(
        textwrap.dedent(f"""
        import jax.numpy as jnp

        CURVATURES = jnp.asarray({list(CURVATURES)!r})

        def quadratic(params, batch):  # Hessian diag(CURVATURES), minimum at w = 0
            return 0.5 * jnp.sum(CURVATURES * params["w"] ** 2) * jnp.mean(batch)

        def make_model():
            return quadratic

        def ones():
            return [jnp.ones(4)]
    """)
    )
    return root


def _run(capsys, monkeypatch, root, *extra):
    monkeypatch.syspath_prepend(str(root))
    argv = ["check", "--model", "diloco_user_model:make_model", "--params"]
    argv += [str(root / "minimum.npz"), "--data", "diloco_user_model:ones", "--quiet"]
    code = main([*argv, *extra])
    out, err = capsys.readouterr()
    return code, out, err


CASES = [  # (flags, LocalSGD fields)
    (["--inner-lr", "0.25", "--inner-steps", "5"], dict(inner_lr=0.25, inner_steps=5)),
    (
        "--inner-lr 0.02 --inner-steps 5 --inner-rule nesterov --inner-momentum 0.5 "
        "--schedule eager --workers 4".split(),
        dict(
            inner_lr=0.02,
            inner_steps=5,
            inner="nesterov",
            inner_beta=0.5,
            schedule="eager",
            workers=4,
        ),
    ),  # fmt: skip
    (
        "--inner-lr 0.02 --inner-steps 5 --inner-momentum 0.9 --schedule streaming "
        "--overlap 1".split(),
        dict(
            inner_lr=0.02,
            inner_steps=5,
            inner="heavy_ball",
            inner_beta=0.9,
            schedule="streaming",
            overlap=1,
        ),
    ),  # fmt: skip
]


@pytest.mark.parametrize("flags, fields", CASES)
def test_verdict_across_the_predicted_boundary(project, capsys, monkeypatch, flags, fields):
    """True at 0.95x and False at 1.05x the largest stable outer lr at the top
    eigenvalue (inner lr x 2 <= 0.5: kappa increases up to it), as the dense truth
    and `is_accessible` called directly say."""
    config = LocalSGD(**fields)
    top = max(CURVATURES)
    boundary = float(max_stable_outer_lr(config, top, MU))
    for factor, stable in ((0.95, True), (1.05, False)):
        outer_lr = factor * boundary
        code, out, err = _run(capsys, monkeypatch, project, "--diloco", *flags, "--outer-lr",
                              repr(outer_lr), "--json")  # fmt: skip
        assert code == 0, err
        report = json.loads(out)
        assert report["verdict"] is stable, report["reason"]
        radii = np.asarray(round_spectral_radius(config, np.asarray(CURVATURES), outer_lr, MU))
        assert bool(np.all(radii < 1)) is stable
        part = report["local_sgd"]
        assert part["config"]["inner"] == fields.get("inner", "gd")
        assert part["config"]["schedule"] == fields.get("schedule", "diloco")
        assert part["outer_momentum"] == MU and report["lr"] == pytest.approx(outer_lr)
        # at the top Ritz value (the run stops once the verdict is decided)
        at_ritz = float(max_stable_outer_lr(config, report["sharpness"], MU))
        assert part["max_stable_outer_lr"] == pytest.approx(at_ritz, rel=1e-9)
        assert report["sharpness"] <= top * (1 + 1e-12)
        import diloco_user_model  # the user's loss, compiled once for the CLI and here

        direct = st.is_accessible(
            diloco_user_model.quadratic, {"w": np.zeros(len(CURVATURES))}, None,
            data=diloco_user_model.ones(), local_sgd=config, outer_lr=outer_lr,
            outer_momentum=MU, progress=False,
        )  # fmt: skip
        assert direct.verdict is stable
        assert report["sharpness"] == pytest.approx(direct.sharpness, rel=1e-9)


def test_text_report_and_undecided_exit_code(project, capsys, monkeypatch):
    base = ["--diloco", "--inner-lr", "0.25", "--inner-steps", "5", "--outer-lr", "0.5"]
    code, out, err = _run(capsys, monkeypatch, project, *base)
    assert code == 0, err
    assert "local SGD" in out and "round radius" in out
    # a kept inner buffer is outside the certificate: undecided, exit status 3
    kept = ["--inner-momentum", "0.5", "--keep-inner-state"]
    code, out, err = _run(capsys, monkeypatch, project, *base, *kept, "--json")
    assert code == 3, err
    report = json.loads(out)
    assert report["verdict"] is None and "kept across rounds" in report["reason"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--diloco", "--tau", "2"], "--tau cannot go with --diloco"),
        (["--diloco", "--lr", "0.1"], "--lr cannot go with --diloco"),
        (["--diloco", "--batch-size", "2"], "--batch-size cannot go with --diloco"),
        (["--diloco", "--inner-steps", "5", "--outer-lr", "0.5"], "--inner-lr is required"),
        (["--diloco", "--inner-lr", "0.1", "--inner-steps", "5"], "--outer-lr is required"),
        (["--diloco", "--inner-lr", "-0.1", "--inner-steps", "5", "--outer-lr", "0.5"],
         "--inner-lr must be > 0"),
        (["--diloco", "--inner-lr", "0.1", "--inner-steps", "0", "--outer-lr", "0.5"],
         "--inner-steps must be an integer >= 1"),
        (["--diloco", "--inner-lr", "0.1", "--inner-steps", "5", "--outer-lr", "0"],
         "--outer-lr must be > 0"),
        (["--diloco", "--inner-lr", "0.1", "--inner-steps", "5", "--outer-lr", "0.5",
          "--outer-momentum", "1.2"], "--outer-momentum"),
        (["--diloco", "--inner-lr", "0.1", "--inner-steps", "5", "--outer-lr", "0.5",
          "--workers", "3"], "--workers matters only with --schedule eager"),
        (["--diloco", "--inner-lr", "0.1", "--inner-steps", "5", "--outer-lr", "0.5",
          "--schedule", "streaming"], "--overlap must be >= 1"),
        (["--diloco", "--inner-lr", "0.1", "--inner-steps", "5", "--outer-lr", "0.5",
          "--inner-rule", "gd", "--inner-momentum", "0.5"], "--inner-momentum must be 0"),
        (["--tau", "2", "--lr", "0.1", "--outer-lr", "0.5"],
         "--outer-lr belongs to local SGD / DiLoCo rounds: add --diloco"),
        (["--lr", "0.1"], "--tau is required"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line(project, capsys, monkeypatch, flags, message):
    code, out, err = _run(capsys, monkeypatch, project, *flags)
    assert code == 2 and out == ""
    assert err.startswith("stability check: error: ") and len(err.splitlines()) == 1
    assert message in err, err
