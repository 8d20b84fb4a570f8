"""Which code path a computation takes: the host's (XLA:CPU, where device memory is
host memory) or an accelerator's (GPU/TPU: everything stays on the device).

On CPU the library runs some steps in numpy or through ``jax.pure_callback``
(LAPACK's tridiagonal eigensolver, the Lanczos step, a host-driven loop), since
there the host is the device and XLA:CPU is slower at them; on GPU/TPU the same
steps run as compiled device code. :func:`accelerator_code_paths` forces the
accelerator paths on CPU, so that the test suite runs them on a machine without
an accelerator.
"""

from __future__ import annotations

import contextlib

import jax

__all__ = ["host_is_device", "accelerator_code_paths"]

_FORCED = [False]


def host_is_device() -> bool:
    """True on the CPU backend (unless :func:`accelerator_code_paths` is active)."""
    return jax.default_backend() == "cpu" and not _FORCED[0]


@contextlib.contextmanager
def accelerator_code_paths():
    """Within the block, take the GPU/TPU code paths even on CPU: the device-resident
    Lanczos loop (``loop="auto"``), compiled Lanczos steps, and the tridiagonal
    eigensolver in XLA (bisection and inverse iteration). Not thread-safe."""
    old = _FORCED[0]
    _FORCED[0] = True
    try:
        yield
    finally:
        _FORCED[0] = old
