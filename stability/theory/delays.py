"""Delay distributions for asynchronous SGD, and the first-moment model.

A :class:`DelayDistribution` holds ``probabilities[k] = P(delay = k)`` for
``k = 0..K``. The stability functions (``spectral_radius``,
``max_stable_sharpness``, ...) accept one wherever they accept an integer delay.

Model (first-moment, expected-iterate stability): if the delay at each step is
drawn independently of the iterate, the expected iterate of delayed SGD obeys

    E[w_{t+1}] = E[w_t] - lr H sum_k p_k E[w_{t-k}],

so in every rule's characteristic polynomial the delay factor ``z^-tau`` is
replaced by ``S(z) = sum_k p_k z^-k`` and the denominators are cleared with
``z^K`` (see ``stability.theory.rules``). A fixed delay ``tau`` is ``p = e_tau`` and
gives back the fixed-delay polynomial. This is stability of the mean only: it
is necessary, not sufficient, for mean-square stability of the random
recurrence.

Schedules of N workers:

- ``round_robin(N)``: each worker pulls the weights right after its own push,
  so with N workers in a fixed order every gradient is ``N - 1`` updates old.
- ``random_order(N)``: each round of N consecutive updates is a fresh uniformly
  random permutation of the workers; a worker's gradient is applied when it
  pushes and was computed at the weights it pulled right after its previous
  push, so its delay is (gap between its two pushes) - 1. The gap is
  ``N - i + j`` with ``i, j`` its (independent, uniform) positions in two
  consecutive rounds, so ``P(gap = d) = (N - |N - d|) / N^2`` for
  ``d = 1..2N-1``: delays ``0..2N-2`` with mean ``N - 1``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from stability.validation import check_int, check_probabilities, check_tau, is_concrete


class DelayDistribution(NamedTuple):
    """``probabilities[k] = P(delay = k)``, ``k = 0..K`` (a 1-D float64 numpy array)."""

    probabilities: np.ndarray

    @property
    def max_delay(self) -> int:
        """K, the largest delay with an entry (the polynomial degree grows with it)."""
        return len(self.probabilities) - 1

    @property
    def mean(self) -> float:
        """The mean delay ``sum_k k p_k``."""
        p = np.asarray(self.probabilities, dtype=np.float64)
        return float(np.arange(len(p)) @ p)


# Most workers of the named schedules: their distributions are vectors of 2N - 1
# probabilities (random order), held in memory.
MAX_WORKERS = 10**7


def delay_distribution(probabilities) -> DelayDistribution:
    """A delay distribution from explicit probabilities ``p_k``, ``k = 0..K``.

    Raises ``ValueError`` if they are not a finite, non-negative 1-D vector
    summing to 1 (within 1e-9).
    """
    return DelayDistribution(check_probabilities(probabilities, "probabilities"))


def fixed_delay(tau) -> DelayDistribution:
    """The constant delay ``tau``: ``p = e_tau``."""
    check_tau(tau, "tau")
    tau = check_int("tau", tau)
    p = np.zeros(tau + 1)
    p[tau] = 1.0
    return DelayDistribution(p)


def round_robin(num_workers) -> DelayDistribution:
    """N workers in a fixed cyclic order: the constant delay ``N - 1``."""
    n = check_int("num_workers", num_workers, minimum=1, maximum=MAX_WORKERS)
    return fixed_delay(n - 1)


def random_order(num_workers) -> DelayDistribution:
    """N workers, each round a fresh uniformly random permutation.

    ``P(delay = k) = (N - |N - 1 - k|) / N^2`` for ``k = 0..2N-2`` (mean N-1);
    see the module docstring for the derivation.
    """
    n = check_int("num_workers", num_workers, minimum=1, maximum=MAX_WORKERS)
    k = np.arange(2 * n - 1)
    p = (n - np.abs(n - 1 - k)) / float(n * n)
    return DelayDistribution(p)


def as_delay_distribution(tau) -> DelayDistribution:
    """``tau`` itself if it is a distribution, else ``fixed_delay(tau)``."""
    if isinstance(tau, DelayDistribution):
        return tau
    return fixed_delay(tau)


def check_delay(tau, name: str = "tau") -> None:
    """An integer delay (scalar or array) or a :class:`DelayDistribution`."""
    if isinstance(tau, DelayDistribution):
        if is_concrete(tau.probabilities):
            check_probabilities(tau.probabilities, f"{name}.probabilities")
        return
    check_tau(tau, name)


def static_delay(tau, name: str = "tau"):
    """A delay that fixes a polynomial's size: a Python int or a DelayDistribution."""
    if isinstance(tau, DelayDistribution):
        check_delay(tau, name)
        return tau
    if not is_concrete(tau):
        raise TypeError(
            f"{name} fixes the size of the companion matrix, so it must be a concrete "
            f"integer (mark it static under jax.jit); got a traced value {tau!r}"
        )
    check_tau(tau, name)
    if np.ndim(tau) != 0:
        raise ValueError(f"{name} must be a scalar integer here; got shape {np.shape(tau)}")
    return check_int(name, tau)
