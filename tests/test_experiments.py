"""The experiments (``stability experiment eos|paper``) at their tiny size.

Oracles: the closed-form thresholds of THEORY.md section 3 (gd: 2 sin(pi /
(2 (2 tau + 1))); heavy ball at tau = 1: 1 - beta; shifted at tau = 1:
1 - beta^2) and the lr rule of section 5 (lr_0 sin(pi / (4 tau + 2))); the
first tracked sharpness against numpy's eigenvalues of the dense Hessian
(jax.hessian on the flattened parameters); numpy medians of the returned checks.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from stability.app import experiments
from stability.app.cli import main
from stability.networks.examples import load_digits


def gd_q(tau):
    return 2 * math.sin(math.pi / (2 * (2 * tau + 1)))


@pytest.fixture(scope="module")
def eos():
    return experiments.edge_of_stability("tiny", losses=("squared_error",), progress=False)


def test_eos_levels_follow_the_closed_forms(eos):
    cfg = experiments.EOS_SIZES["tiny"]
    eta0 = experiments.EOS_ETA0["squared_error"]
    beta = experiments.EOS_BETA
    plain = [r for r in eos.runs if r.momentum == "none" and not r.control]
    assert [r.tau for r in plain] == list(cfg["taus"])
    (control,) = [r for r in eos.runs if r.control]  # tau = 0, its level 8x higher
    assert control.tau == 0 and control.lr == eta0 / experiments.CONTROL_FACTOR
    np.testing.assert_allclose(control.predicted, 2 * experiments.CONTROL_FACTOR / eta0)
    for r in plain:  # lr_tau = lr_for_delay(eta0, tau): every plain run aims at 2 / eta0
        np.testing.assert_allclose(r.lr, eta0 * math.sin(math.pi / (4 * r.tau + 2)), rtol=1e-12)
        np.testing.assert_allclose(r.predicted, gd_q(r.tau) / r.lr, rtol=1e-10)
        np.testing.assert_allclose(r.predicted, 2 / eta0, rtol=1e-10)
        np.testing.assert_allclose(r.no_delay_level, 2 / r.lr, rtol=1e-12)
    tau = cfg["momentum_tau"]
    assert tau == 1  # the tiny size uses the delay with closed forms for both rules
    lr = eta0 * math.sin(math.pi / 6) * (1 - beta)  # same effective rate as plain tau = 1
    (hb,) = [r for r in eos.runs if r.momentum == "heavy_ball"]
    (sh,) = [r for r in eos.runs if r.momentum == "shifted"]
    for r, q in ((hb, 1 - beta), (sh, 1 - beta**2)):
        assert r.tau == tau and r.beta == beta
        np.testing.assert_allclose(r.lr, lr, rtol=1e-12)
        np.testing.assert_allclose(r.predicted, q / lr, rtol=1e-10)


def test_eos_records(eos):
    cfg = experiments.EOS_SIZES["tiny"]
    for r in eos.runs:
        assert len(r.sharpness) == cfg["checks"] + 1 and r.step[-1] == r.steps
        every = r.steps // cfg["checks"]
        assert r.steps == every * cfg["checks"]
        np.testing.assert_array_equal(r.step, np.arange(0, r.steps + 1, every))
        late = r.sharpness[r.step >= r.steps / 2]
        assert r.plateau == np.median(late) and r.peak == np.max(r.sharpness)
        assert r.ratio == r.plateau / r.predicted
        assert np.all(np.isfinite(r.train_loss)) and not r.diverged
        # effective time eta x steps at least the configured one, short of one more check
        eff = r.lr / (1 - r.beta)
        assert cfg["time"] <= eff * r.steps < cfg["time"] + eff * cfg["checks"]
    # every run starts from the same initialization: the same first check
    np.testing.assert_allclose(
        [r.sharpness[0] for r in eos.runs], eos.runs[0].sharpness[0], rtol=1e-3
    )


def test_eos_first_check_is_the_dense_top_eigenvalue(eos):
    cfg = experiments.EOS_SIZES["tiny"]
    data = load_digits(cfg["n"], dtype=jnp.float64)
    sizes = [64] + [cfg["width"]] * cfg["depth"] + [10]
    params = experiments.mlp_init(0, sizes, out_scale=experiments.EOS_OUT_SCALE, dtype=jnp.float64)
    flat, unravel = ravel_pytree(params)
    hess = jax.jit(jax.hessian(lambda v: experiments.squared_error(unravel(v), data)))(flat)
    top = np.linalg.eigvalsh(np.asarray(hess))[-1]
    r = eos.runs[0]
    assert abs(r.sharpness[0] - top) <= max(r.error[0], 1e-3 * top)


def test_eos_outputs(eos, tmp_path):
    paths = experiments.write_outputs(eos, str(tmp_path))
    data = json.loads((tmp_path / "eos.json").read_text())
    assert data["experiment"] == "eos" and len(data["runs"]) == len(eos.runs)
    assert data["runs"][0]["sharpness"] == pytest.approx(list(eos.runs[0].sharpness))
    assert data["runs"][1]["ratio"] == pytest.approx(eos.runs[1].ratio)
    table = (tmp_path / "eos.md").read_text()
    assert "| squared_error | 1 | shifted 0.9 |" in table
    # A conclusion in words, its numbers those of the runs (issue 21, item 20).
    runs = [r for r in eos.runs if r.loss == "squared_error" and not r.control and not r.diverged]
    ratios = [r.ratio for r in runs]
    conclusion = eos.conclusion()
    assert "## Conclusion\n\n" + conclusion in table
    assert f"{min(ratios):.2f} to {max(ratios):.2f} times max_stable_sharpness" in conclusion
    assert len(paths["figures"]) == 2  # one loss panel and the summary
    for fig in paths["figures"]:
        assert open(fig, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_paper_command(tmp_path, capsys):
    assert main(["experiment", "paper", "--size", "tiny", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| N | tau | policy |" in out and "stability experiment paper (tiny)" in out
    assert "At the fixed lr_0" in out and "## Conclusion" in (tmp_path / "paper.md").read_text()
    data = json.loads((tmp_path / "paper.json").read_text())
    cfg = experiments.PAPER_SIZES["tiny"]
    beta = experiments.PAPER_BETA
    assert data["lr0"] == cfg["lrs"][0] and data["tuning"] == {}  # tiny: one lr, no tuning
    lr0 = data["lr0"]
    runs = data["runs"]
    assert len(runs) == len(cfg["workers"]) * len(cfg["seeds"]) * 4
    for r in runs:
        tau = r["workers"] - 1
        assert r["tau"] == tau and 0 <= r["test_accuracy"] <= 1
        moved = lr0 * math.sin(math.pi / (4 * tau + 2))
        if r["policy"] == "fixed":
            expected_lr, q = lr0, gd_q(tau)
        elif r["policy"] == "lr_for_delay":
            expected_lr, q = moved, gd_q(tau)
        else:
            assert r["beta"] == beta and r["momentum"] == r["policy"]
            expected_lr = moved * (1 - beta)
            q = {0: 2 * (1 + beta), 1: 1 - beta if r["policy"] == "heavy_ball" else 1 - beta**2}[
                tau
            ]
        assert r["lr"] == pytest.approx(expected_lr, rel=1e-12)
        assert r["threshold"] == pytest.approx(q / expected_lr, rel=1e-10)
        assert r["fraction_of_limit"] == pytest.approx(r["sharpness"] / r["threshold"])
    # N = 1 trains above chance; its fixed and lr_for_delay runs are one run
    one = {r["policy"]: r for r in runs if r["workers"] == 1}
    assert one["fixed"]["test_accuracy"] > 0.5
    assert one["fixed"]["test_accuracy"] == one["lr_for_delay"]["test_accuracy"]
    # and one worker's own buffer is the buffer: shifted is heavy ball
    assert one["shifted"]["test_accuracy"] == one["heavy_ball"]["test_accuracy"]
    rows = [s for s in data["summary"] if s["workers"] == cfg["workers"][-1]]
    assert {s["policy"] for s in rows} == set(experiments.PAPER_POLICIES)
    # The plotted sharpness / threshold leaves out runs that blew up (issue 21, item 20).
    for s in data["summary"]:
        same = [r for r in runs if (r["workers"], r["policy"]) == (s["workers"], s["policy"])]
        stayed = [r["fraction_of_limit"] for r in same if not (r["blew_up"] or r["diverged"])]
        if stayed:
            assert s["fraction_of_limit_stayed"] == pytest.approx(sum(stayed) / len(stayed))
        else:
            assert s["fraction_of_limit_stayed"] is None
    assert (tmp_path / "paper_claims.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["experiment", "paper", "--full", "--size", "tiny"]) == 2
    assert "--full contradicts --size tiny" in capsys.readouterr().err
