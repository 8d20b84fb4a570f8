"""`stability experiment diloco` at its tiny size: the map and the predicted boundary
are the library's (`round_spectral_radius`, `max_stable_outer_lr`, and for inner GD
the closed form kappa = 1 - (1 - lr a)^H with Nesterov's q_max = 2 (1 + mu) /
(1 + 2 mu)), every measured bracket is a real bisection bracket (stable at lo,
unstable at hi), the outputs are written and the CLI runs it."""

import json
import math

import jax
import numpy as np
import pytest

from stability import LocalSGD, max_stable_outer_lr, round_spectral_radius
from stability.app.cli import main
from stability.app.diloco_experiment import (
    BRACKET,
    DILOCO_SIZES,
    INNER_LR,
    INNER_STEPS,
    diloco_stability_map,
)
from stability.app.experiments import write_outputs


@pytest.fixture(scope="module")
def tiny():
    return diloco_stability_map("tiny", progress=False)


def test_map_and_predicted_boundary_are_the_librarys(tiny):
    lam = tiny.network["sharpness"]
    assert INNER_LR * lam < 1 and tiny.network["converged"]
    kappa = 1 - (1 - INNER_LR * lam) ** INNER_STEPS  # closed form, inner GD
    assert tiny.network["kappa"] == pytest.approx(kappa, rel=1e-12)
    (m,) = tiny.maps
    assert m.schedule == "diloco" and m.radius.shape == (m.outer_momentum.size, m.outer_lr.size)
    config = LocalSGD(INNER_LR, INNER_STEPS, outer="nesterov")
    with jax.enable_x64(True):
        for i in (0, m.outer_momentum.size // 2, m.outer_momentum.size - 1):
            mu = float(m.outer_momentum[i])
            for j in (0, m.outer_lr.size // 2, m.outer_lr.size - 1):
                expect = round_spectral_radius(config, lam, float(m.outer_lr[j]), mu)
                assert m.radius[i, j] == pytest.approx(expect, rel=1e-9)
            q_max = 2 * (1 + mu) / (1 + 2 * mu)  # Nesterov, no delay
            assert m.max_outer_lr[i] == pytest.approx(q_max / kappa, rel=1e-8)
            assert max_stable_outer_lr(config, lam, mu) == pytest.approx(m.max_outer_lr[i])


def test_measured_brackets(tiny):
    cfg = DILOCO_SIZES["tiny"]
    assert [b.momentum for b in tiny.boundaries] == list(cfg["momenta"])
    for b in tiny.boundaries:
        q_max = 2 * (1 + b.momentum) / (1 + 2 * b.momentum)
        assert b.predicted == pytest.approx(q_max / tiny.network["kappa"], rel=1e-8)
        assert math.isfinite(b.measured), b
        width = (BRACKET[1] - BRACKET[0]) / 2 ** cfg["iters"]
        assert (b.hi - b.lo) / b.predicted == pytest.approx(width, rel=1e-9)
        assert b.measured == pytest.approx(0.5 * (b.lo + b.hi))
        assert b.gap == pytest.approx((b.measured - b.predicted) / b.predicted)
        assert b.inside == (b.lo <= b.predicted <= b.hi)
        assert b.runs == 2 + cfg["iters"]
        # the starting bracket straddles the boundary in theory and in the simulation
        assert b.radius_lo < 1 < b.radius_hi and b.rate_hi > 1


def test_outputs_and_conclusion(tiny, tmp_path):
    paths = write_outputs(tiny, str(tmp_path))
    data = json.loads(open(paths["json"]).read())
    assert data["experiment"] == "diloco" and len(data["boundaries"]) == 2
    assert np.asarray(data["maps"][0]["radius"]).shape == tiny.maps[0].radius.shape
    text = open(paths["markdown"]).read()
    assert "## Conclusion" in text and tiny.conclusion() in text
    assert paths["figures"] == [str(tmp_path / "diloco_map.png")]
    worst = max(abs(b.gap) for b in tiny.boundaries)
    assert f"within {worst:.2%}" in tiny.conclusion()


def test_cli_runs_the_experiment(tmp_path, capsys):
    code = main(["experiment", "diloco", "--size", "tiny", "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "predicted max outer lr" in out
    assert (tmp_path / "diloco.json").exists() and (tmp_path / "diloco_map.png").exists()
