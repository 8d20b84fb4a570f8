"""The per-stage delay profiles of the pipeline schedules (stability.theory.pipeline).

The 1F1B profile is checked against a direct count on the steady-state timeline:
the staleness of stage s is the number of updates of stage s (one per backward)
between a micro-batch's forward and its own backward there.
"""

from __future__ import annotations

import pytest

from stability.theory.pipeline import PIPELINE_SCHEDULES, pipeline_delays


def _one_f_one_b_staleness(num_stages: int, stage: int) -> int:
    """Count on a timeline of forward/backward slots: in steady state every stage
    alternates one forward and one backward, so micro-batches enter every 2 slots;
    micro-batch m does its forward at stage s at slot 2m + s, reaches the loss at
    stage P - 1, and does its backward at stage s at slot 2m + 2P - 1 - s (one slot per
    stage on the way back). Every backward at stage s is one update of stage s: count
    the updates that land strictly between m's forward and m's backward there."""
    p, s, m = num_stages, stage, 10 * num_stages  # a micro-batch deep in steady state
    forward = 2 * m + s
    backward = lambda j: 2 * j + 2 * p - 1 - s  # noqa: E731
    return sum(1 for j in range(m) if forward < backward(j) < backward(m))


@pytest.mark.parametrize("p", [1, 2, 3, 4, 8])
def test_one_f_one_b_profile(p):
    """``"1f1b"`` (the default): tau_s = P - 1 - s, the timeline count; stage P - 1
    (the loss) is never stale."""
    got = pipeline_delays(p)
    assert got == pipeline_delays(p, "1f1b") == tuple(p - 1 - s for s in range(p))
    assert got == tuple(_one_f_one_b_staleness(p, s) for s in range(p))
    assert got[-1] == 0 and all(isinstance(d, int) for d in got)


def test_other_profiles():
    """GPipe (flush): 0 everywhere; PipeDream-2BW: 1 everywhere; uniform: tau."""
    assert pipeline_delays(4) == (3, 2, 1, 0)
    assert pipeline_delays(3, "gpipe") == (0, 0, 0)
    assert pipeline_delays(5, "pipedream_2bw") == (1,) * 5
    assert pipeline_delays(2, "uniform", tau=7) == (7, 7)
    assert pipeline_delays(1, "uniform", tau=0) == (0,)
    assert pipeline_delays(3, "uniform", tau=2.0) == (2, 2, 2)
    assert set(PIPELINE_SCHEDULES) == {"gpipe", "pipedream_2bw", "1f1b", "uniform"}


def test_bad_arguments():
    """Bad values raise, naming the argument."""
    with pytest.raises(ValueError, match="num_stages"):
        pipeline_delays(0)
    with pytest.raises(TypeError, match="num_stages"):
        pipeline_delays(2.5)
    with pytest.raises(TypeError, match="num_stages"):
        pipeline_delays(True)
    with pytest.raises(ValueError, match="schedule"):
        pipeline_delays(4, "pipemare2")
    with pytest.raises(ValueError, match="tau"):
        pipeline_delays(4, "uniform")
    with pytest.raises(ValueError, match="tau"):
        pipeline_delays(4, "uniform", tau=-1)
    with pytest.raises(TypeError, match="tau"):
        pipeline_delays(4, "uniform", tau="1")
    with pytest.raises(ValueError, match="tau"):
        pipeline_delays(4, "gpipe", tau=1)
