"""``stability experiment pipeline`` (stability/app/pipeline_experiment.py), tiny size.

The experiment runs once through the command line; its JSON is checked against
the stage layout written out by hand, the uniform models against the closed form
of delayed GD (q_max(tau) = 2 sin(pi / (4 tau + 2)), docs/theory.md section 7), and
the block prediction against the boundary measured by simulation (within a few
percent, the task's acceptance). The conclusion's wording is checked on results
built by hand.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stability.app.cli import main
from stability.app.pipeline_experiment import (
    PipelineBoundary,
    PipelineResult,
    growth_per_step,
    pipeline_stability,
)
from stability.curvature.blocks import Stages, block_delays
from stability.networks.examples import DigitsMLP, train_to_minimum

# ---------------------------------------------------------------- the network's depth


def _shapes(depth=None, hidden=32):
    model = DigitsMLP(hidden=hidden) if depth is None else DigitsMLP(hidden=hidden, depth=depth)
    params = model.init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
    return {name: tuple(layer["kernel"].shape) for name, layer in params.items()}


def test_depth_default_is_the_original_model():
    assert _shapes() == {"Dense_0": (64, 32), "Dense_1": (32, 10)}
    assert _shapes(1) == _shapes()


def test_depth_three_has_four_dense_layers():
    assert _shapes(3, hidden=16) == {
        "Dense_0": (64, 16),
        "Dense_1": (16, 16),
        "Dense_2": (16, 16),
        "Dense_3": (16, 10),
    }


def test_train_to_minimum_checks_depth():
    with pytest.raises(ValueError, match=r"depth must be an integer >= 1; got 0"):
        train_to_minimum(8, hidden=2, depth=0)


# ---------------------------------------------------------------- the tiny run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    code = main(["experiment", "pipeline", "--size", "tiny", "--out", str(out), "--quiet"])
    assert code == 0
    with open(out / "pipeline.json") as f:
        return out, json.load(f)


def test_outputs_written(tiny):
    out, record = tiny
    assert record["experiment"] == "pipeline"
    md = (out / "pipeline.md").read_text()
    assert "## Conclusion" in md
    assert "| P | beta |" in md
    assert "![pipeline_lr.png](pipeline_lr.png)" in md
    assert os.path.getsize(out / "pipeline_lr.png") > 1000


def test_stage_layout(tiny):
    _, record = tiny
    net = record["network"]
    assert net["parameters"] == 64 * 10 + 10 + 2 * (10 * 10 + 10) + 10 * 10 + 10  # 980
    assert net["layers"] == 4
    by_p = {b["stages"]: b for b in record["boundaries"]}
    assert sorted(by_p) == [4]  # the tiny size runs P = 4 only (the suite's time)
    # P = 2 (not run here): the first layer (650) alone balances the other three (330)
    params = DigitsMLP(hidden=10, depth=3).init(jax.random.key(0), jnp.zeros((1, 64)))
    two = block_delays(params["params"], Stages(2))
    assert two.stages == (("Dense_0",), ("Dense_1", "Dense_2", "Dense_3"))
    assert two.delays == (0, 1) and two.sizes == (330, 650)
    # P = 4: one layer per stage, delays 3, 2, 1, 0 from the input.
    assert by_p[4]["delays"] == [0, 1, 2, 3] and by_p[4]["sizes"] == [110, 110, 110, 650]
    for b in by_p.values():
        mean = np.dot(b["delays"], b["sizes"]) / 980
        assert b["mean_delay"] == pytest.approx(mean, rel=1e-12)


def test_uniform_models_are_delayed_gd_closed_forms(tiny):
    _, record = tiny
    lam = record["network"]["sharpness"]
    for b in record["boundaries"]:
        tau = b["stages"] - 1
        q = 2 * math.sin(math.pi / (4 * tau + 2))
        assert b["uniform_max"] * lam == pytest.approx(q, rel=1e-9)
        lo, hi = math.floor(b["mean_delay"]), math.ceil(b["mean_delay"])
        assert b["uniform_mean_floor"] * lam == pytest.approx(
            2 * math.sin(math.pi / (4 * lo + 2)), rel=1e-9
        )
        assert b["uniform_mean_ceil"] * lam == pytest.approx(
            2 * math.sin(math.pi / (4 * hi + 2)), rel=1e-9
        )


def test_prediction_within_a_few_percent_of_the_measured_boundary(tiny):
    _, record = tiny
    for b in record["boundaries"]:
        assert b["lo"] is not None and b["hi"] is not None, b
        assert b["lo"] < b["hi"]
        assert abs(b["gap_predicted"]) < 0.03, b
        # and far from what the uniform tau = P - 1 model says
        assert b["gap_uniform_max"] < -0.3, b
        gap = (b["predicted"] - b["measured"]) / b["measured"]
        assert b["gap_predicted"] == pytest.approx(gap, rel=1e-9)
        assert b["runs"] >= 2 + record["config"]["iters"]


def test_dense_linear_recurrence_confirms_the_measurement(tiny):
    _, record = tiny
    for b in record["boundaries"]:
        assert b["dense_below"] < 1.0 < b["dense_above"], b
        assert b["dense_confirms"] is True


# ---------------------------------------------------------------- the pieces


def test_growth_per_step():
    t = np.arange(400)
    for rate in (0.99, 1.0, 1.01):
        x = rate**t * (1.5 + np.cos(0.7 * t))
        assert growth_per_step(x) == pytest.approx(rate, abs=2e-4)
    assert growth_per_step(np.r_[1.0, 2.0, np.inf, 1.0, 1.0]) == math.inf
    assert math.isnan(growth_per_step(np.r_[1.0, 1.0, 0.0, 1.0, 1.0]))


def _boundary(p, measured, **models):
    base = dict(
        predicted=measured,
        uniform_max=measured / 2,
        uniform_mean_floor=measured,
        uniform_mean_ceil=measured / 2,
        distribution=measured / 1.5,
    )
    base.update(models)
    lo, hi = (measured * 0.999, measured * 1.001) if math.isfinite(measured) else (math.nan,) * 2
    return PipelineBoundary(
        stages=p,
        momentum=0.0,
        delays=(0, 1),
        sizes=(3, 7),
        layers=(("a",), ("b",)),
        mean_delay=0.7,
        k=8,
        lr_change=0.0,
        lo=lo,
        hi=hi,
        measured=measured,
        half_width=0.001,
        inside=True,
        rate_lo=0.99,
        rate_hi=1.01,
        runs=10,
        predict_seconds=1.0,
        measure_seconds=1.0,
        **base,
        **{f"gap_{k}": (v - measured) / measured for k, v in base.items()},
    )


def test_conclusion_words_follow_the_numbers():
    network = dict(parameters=10, layers=2, sharpness=4.0)
    result = PipelineResult(
        [
            _boundary(2, 1.0, predicted=1.01, distribution=1.2),
            _boundary(3, 0.5, predicted=0.49, distribution=0.4),
            _boundary(4, math.nan),
        ],
        network,
        dict(size="tiny"),
        1.0,
    )
    text = result.conclusion()
    assert (
        "For plain delayed SGD the block prediction's gap to the measured boundary is "
        "P = 2: +1.00%, P = 3: -2.00% (inside the final bracket at 2 of 2): within 2.00% at "
        "every P." in text
    )
    assert "The uniform tau = P - 1 model underestimates it by 50.0%." in text
    assert "The delay-distribution (first-moment) model misses it by -20.0% to +20.0%." in text
    assert "1 point(s) had no boundary" in text and "P = 4" in text
    assert "is 2.00 times the uniform tau = P - 1 one: the pipeline is more stable" in text
    over = PipelineResult([_boundary(2, 1.0, uniform_max=1.5, predicted=1.2)], network, {}, 1.0)
    text = over.conclusion()
    assert "The uniform tau = P - 1 model overestimates it by 50.0%." in text
    assert (
        "P = 2: +20.00% (inside the final bracket at 1 of 1): it misses by more than 3% at "
        "P = 2 (Ritz pairs k = 8, the lr's change from the previous k 0.0e+00)." in text
    )
    assert len(result.table().splitlines()) == 2 + 3


def test_bad_size():
    with pytest.raises(ValueError, match=r"size"):
        pipeline_stability("huge")
