"""XLA's backend optimisations back on for a block of a test.

The suite compiles with them off (``tests/conftest.py``: its time is mostly
compilation); a fixture that trains a network for hundreds of steps or builds a dense
Hessian runs 2-3x faster optimised. The library calls under test compile as the rest
of the suite does.
"""

from contextlib import contextmanager

import jax


@contextmanager
def xla_optimizations():
    name = "jax_disable_most_optimizations"
    before = jax.config.values[name]
    jax.config.update(name, False)
    try:
        yield
    finally:
        jax.config.update(name, before)
