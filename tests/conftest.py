"""Test configuration, modelled on lineax: float64 everywhere and strict dtype
promotion, so a silent float32 downcast or mixed-precision bug fails loudly.

Eight simulated CPU devices make the sharding tests real (data split over a
mesh axis) on a machine with one CPU device. This must run before any JAX
backend is initialised, hence at import time of the conftest.

XLA's backend optimisations are off (``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` unless set):
the suite's time is mostly compilation.

Hypothesis runs derandomized by default (profile "ci": the same examples on every
run, so a failure is reproducible and CI is deterministic); failures ever found are
pinned with ``@example``. ``HYPOTHESIS_PROFILE=explore python -m pytest`` draws
fresh random examples, 20 times as many per test, to look for new ones.
"""

import os

# Compile with XLA's backend optimisations off (JAX's documented
# jax_disable_most_optimizations: "useful if the cost of optimization is greater than
# that of running a less-optimized program"). Most tests compile many small programs
# and run each a few times: measured 72 -> 53 s for tests/test_dominant_root.py and
# 118 -> 98 s for test_hessian_spectrum.py + test_flax_path.py. The HLO the library
# builds is the same; only the machine code is less optimised. Set in the environment
# so that the tests' subprocesses (CLI, several processes) inherit it;
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the suite with XLA's default optimisations.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", derandomize=False, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
