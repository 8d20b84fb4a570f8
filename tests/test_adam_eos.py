"""`stability experiment adam-eos` at its tiny size: full-batch delayed Adam with the
preconditioned sharpness tracked from the live state; each check's level is (45) at
that step's bias correction, the JSON/markdown/figure are written, and the
conclusion is computed from the numbers."""

import json
import math

import jax
import numpy as np
import pytest

from stability import max_stable_sharpness
from stability.app.adam_eos import ADAM_B1, ADAM_LR, adaptive_edge_of_stability
from stability.app.cli import main
from stability.app.experiments import write_outputs
from stability.theory.rules.adam import Adam


@pytest.fixture(scope="module")
def tiny():
    return adaptive_edge_of_stability("tiny", progress=False)


def test_levels_are_the_delayed_adam_limit_at_each_checks_bias_correction(tiny):
    assert [r.tau for r in tiny.runs] == [0, 2]
    for r in tiny.runs:
        assert r.step.size >= 2 and np.all(r.step > 0)
        c = 1 / (1 - ADAM_B1 ** r.step.astype(float))
        with jax.enable_x64(True):
            limit = float(max_stable_sharpness(1.0, r.tau, ADAM_B1, momentum=Adam()))
        np.testing.assert_allclose(r.level, limit / (ADAM_LR * c), rtol=1e-9)
        np.testing.assert_allclose(r.ratio, r.sharpness / r.level, rtol=1e-12)
        late = r.step >= 0.5 * r.step[-1]
        assert r.plateau == pytest.approx(float(np.median(r.ratio[late])))
        assert r.no_delay_level == pytest.approx(2 * 1.9 / (ADAM_LR * 0.1))
    # the delay lowers the level: tau = 2's is far below tau = 0's
    assert tiny.runs[1].level[-1] < tiny.runs[0].level[-1] / 10


def test_outputs_and_conclusion(tiny, tmp_path):
    paths = write_outputs(tiny, str(tmp_path))
    data = json.loads(open(paths["json"]).read())
    assert data["experiment"] == "adam-eos" and len(data["runs"]) == 2
    text = open(paths["markdown"]).read()
    assert "## Conclusion" in text and tiny.conclusion() in text
    assert paths["figures"] and all(p.endswith(".png") for p in paths["figures"])
    for r in tiny.runs:  # every run's plateau is named in the conclusion
        assert f"tau {r.tau} ({r.plateau:.2f})" in tiny.conclusion() or (
            r.tau == 0 and f"{r.plateau:.2f} times" in tiny.conclusion()
        )
    assert all(math.isfinite(r.plateau) for r in tiny.runs)


def test_cli_runs_the_experiment(tmp_path, capsys):
    code = main(["experiment", "adam-eos", "--size", "tiny", "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "plateau / level" in out
    assert (tmp_path / "adam-eos.json").exists() and (tmp_path / "adam_eos.png").exists()
