"""What every benchmark script records beside its numbers: how long a call took and
which commit of the library it measured."""

from __future__ import annotations

import os
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(fn):
    """``(fn(), seconds)``: one call's result and its wall-clock time."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def library_commit() -> str:
    """The short hash of the checked-out commit, or "?" outside a git checkout."""
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                       text=True).strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "?"
