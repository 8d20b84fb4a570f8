"""Test configuration, modelled on lineax: float64 everywhere and strict dtype
promotion, so a silent float32 downcast or mixed-precision bug fails loudly.

Eight simulated CPU devices make the sharding tests real (data split over a
mesh axis) on a machine with one CPU device. This must run before any JAX
backend is initialised, hence at import time of the conftest.

Hypothesis runs derandomized by default (profile "ci": the same examples on every
run, so a failure is reproducible and CI is deterministic); failures ever found are
pinned with ``@example``. ``HYPOTHESIS_PROFILE=explore python -m pytest`` draws
fresh random examples, 20 times as many per test, to look for new ones.
"""

import os

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
