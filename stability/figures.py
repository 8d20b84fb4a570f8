"""Matplotlib for the package's plots: pyplot imported lazily, and the Axes to draw on.

A low layer (it imports nothing from the package), shared by the plots of
`stability.app.plotting` and by `stability.SharpnessTracker.plot`. matplotlib is
imported only when a plot is drawn, so importing `stability` stays cheap.
"""

from __future__ import annotations

import os

__all__ = ["axes", "pyplot"]


def pyplot():
    """``matplotlib.pyplot``, switched to the Agg backend when no display is set (a
    script or a test draws to files without a window)."""
    import matplotlib

    if not os.environ.get("DISPLAY") and matplotlib.get_backend().lower() not in ("agg",):
        try:
            matplotlib.use("Agg")
        except Exception:  # an interactive backend already in use (notebooks)
            pass
    import matplotlib.pyplot as plt

    return plt


def axes(ax=None):
    """``ax`` when given, else the Axes of a new 6 x 4.5 inch figure."""
    if ax is not None:
        return ax
    _, ax = pyplot().subplots(figsize=(6, 4.5))
    return ax
