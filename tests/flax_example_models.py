"""The shrunk google/flax example models, trained in float32, and their float64 truth.

Defined in ``benchmarks/flax_example_models.py`` (the benchmark
``benchmarks/float32_certificates.py`` and the tests share them; see its docstring)
and re-exported here for the tests: the repository root is put on ``sys.path``
because pytest imports test modules from ``tests/`` only.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks.flax_example_models import *  # noqa: E402, F403
from benchmarks.flax_example_models import __all__  # noqa: E402, F401
