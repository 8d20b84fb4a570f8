"""Per-stage delay profiles of the common pipeline-parallel schedules.

A pipeline of P stages (stage 0 takes the input, stage P - 1 computes the loss)
applies to stage s's parameters, at step t, a gradient computed with stage s's
weights of step ``t - tau_s``. The profile ``(tau_0, ..., tau_{P-1})`` of each
schedule (docs/theory.md section 18 derives them):

==================  ==========================  =========================================
``"gpipe"``         ``tau_s = 0``               synchronous with a flush (GPipe, 1F1B
                                                with a flush): no staleness
``"pipedream_2bw"`` ``tau_s = 1``               PipeDream-2BW: double-buffered weights,
                                                every stage one version behind
``"1f1b"``          ``tau_s = P - 1 - s``       asynchronous 1F1B (PipeDream with weight
                                                stashing, PipeMare): a micro-batch
                                                enters stage s while P - 1 - s updates
                                                of that stage are still in flight
``"uniform"``       ``tau_s = tau``             one delay for every stage (the uniform
                                                model the block answer is compared with)
==================  ==========================  =========================================
"""

from __future__ import annotations

from stability.validation import check_int, check_option

__all__ = ["PIPELINE_SCHEDULES", "pipeline_delays"]

PIPELINE_SCHEDULES = ("gpipe", "pipedream_2bw", "1f1b", "uniform")


def pipeline_delays(num_stages: int, schedule: str = "1f1b", *, tau: int | None = None):
    """The delay of each stage, ``(tau_0, ..., tau_{P-1})`` (Python ints).

    Args:
      num_stages: P >= 1.
      schedule: one of ``PIPELINE_SCHEDULES`` (see the module docstring).
      tau: the delay of ``"uniform"`` (an integer >= 0); only with ``"uniform"``.

    Example: ``pipeline_delays(4)`` is ``(3, 2, 1, 0)``.
    """
    num_stages = check_int("num_stages", num_stages, 1)
    schedule = check_option("schedule", schedule, PIPELINE_SCHEDULES)
    if schedule == "uniform":
        if tau is None:
            raise ValueError("schedule='uniform' needs tau (an integer >= 0); got tau=None")
        tau = check_int("tau", tau, 0)
        return (tau,) * num_stages
    if tau is not None:
        raise ValueError(f"tau goes only with schedule='uniform'; got tau={tau!r}, {schedule!r}")
    if schedule == "gpipe":
        return (0,) * num_stages
    if schedule == "pipedream_2bw":
        return (1,) * num_stages
    return tuple(num_stages - 1 - s for s in range(num_stages))
