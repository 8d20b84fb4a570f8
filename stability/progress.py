"""Progress bars: a tqdm bar when asked, a do-nothing bar otherwise.

The lowest layer of the package (it imports nothing from it). tqdm is imported only
when a bar is shown: the import costs tens of milliseconds on the first call of a
process, which a run with ``progress=False`` should not pay.
"""

from __future__ import annotations

__all__ = ["SilentBar", "progress_bar"]


class SilentBar:
    """The bar when progress is off: the methods of a tqdm bar that the package calls,
    doing nothing."""

    def update(self, n=1):
        """Nothing (tqdm: advance the count by ``n``)."""

    def set_postfix(self, **kwargs):
        """Nothing (tqdm: show ``kwargs`` after the bar)."""

    def set_postfix_str(self, s):
        """Nothing (tqdm: show ``s`` after the bar)."""

    def close(self):
        """Nothing (tqdm: close the bar)."""


def progress_bar(
    show: bool,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    leave: bool = True,
    terminal_only: bool = True,
):
    """A ``tqdm.auto`` bar, or a `SilentBar` when ``show`` is false.

    Args:
      show: whether a bar is wanted at all (a function's ``progress`` argument).
      total, desc, unit, leave: tqdm's (``total=None``: a count and a rate, no ETA;
        ``leave=False``: the bar is erased when done, so an enclosing bar keeps its
        line).
      terminal_only: tqdm's ``disable=None``: no bar when stderr is not a terminal (a
        redirected log would get every carriage-return redraw, and the redraws of bars
        nested in an outer bar interleave). False: drawn wherever stderr goes.
    """
    if not show:
        return SilentBar()
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, leave=leave, disable=None if terminal_only else False
    )
