"""Example counts of the property tests: ``examples(n)`` is ``n`` in the default,
derandomized profile (CI) and ``20 n`` under ``HYPOTHESIS_PROFILE=explore``
(profiles registered in conftest.py)."""

import os


def examples(n: int) -> int:
    return n * (20 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else 1)
