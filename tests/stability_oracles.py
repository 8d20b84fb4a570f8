"""Independent numpy oracles for the stability-core tests.

Written from the update rules in THEORY.md (not from the library's code):
polynomials built with ``np.polymul``, roots from ``np.linalg.eigvals`` of the
companion matrix polished by Newton on P, direct simulation of the recurrences.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits


def zpow(k):
    """z^k as descending coefficients."""
    c = np.zeros(k + 1)
    c[0] = 1.0
    return c


def poly(tau, beta, q, rule):
    """P(z) (descending) of a rule with a fixed delay, straight from THEORY.md's table."""
    if rule == "gd":
        return np.polyadd(np.polymul(zpow(tau), [1.0, -1.0]), [q])
    if rule == "heavy_ball":
        a = np.polymul(zpow(tau), np.polymul([1.0, -1.0], [1.0, -beta]))
        return np.polyadd(a, [q, 0.0])
    if rule == "nesterov":
        a = np.polymul(zpow(tau), np.polymul([1.0, -1.0], [1.0, -beta]))
        return np.polyadd(a, [q * (1 + beta), -q * beta])
    if rule == "shifted":
        a = np.polymul([1.0, -1.0], np.polyadd(zpow(tau + 1), [-beta]))
        return np.polyadd(a, [q, 0.0])
    raise ValueError(rule)


def dist_poly(p, beta, q, rule):
    """First-moment polynomial for delay probabilities p (THEORY.md section 6 style)."""
    p = np.asarray(p, float)
    k = len(p) - 1
    d = p  # D(z) = sum_k p_k z^(K-k)
    if rule == "gd":
        return np.polyadd(np.polymul(zpow(k), [1.0, -1.0]), q * d)
    if rule == "heavy_ball":
        a = np.polymul(zpow(k), np.polymul([1.0, -1.0], [1.0, -beta]))
        return np.polyadd(a, q * np.polymul([1.0, 0.0], d))
    if rule == "nesterov":
        a = np.polymul(zpow(k), np.polymul([1.0, -1.0], [1.0, -beta]))
        return np.polyadd(a, q * np.polymul([1.0 + beta, -beta], d))
    if rule == "shifted":
        a = np.polymul([1.0, -1.0], np.polysub(zpow(k + 1), beta * d))
        return np.polyadd(a, q * np.polymul([1.0, 0.0], d))
    raise ValueError(rule)


def roots(c):
    """Roots of a polynomial: companion eigenvalues, then two Newton polishing steps."""
    c = np.trim_zeros(np.asarray(c, float), "f")
    c = c / c[0]
    m = len(c) - 1
    comp = np.zeros((m, m))
    comp[0] = -c[1:]
    comp[np.arange(1, m), np.arange(m - 1)] = 1.0
    with threadpool_limits(1):  # the machine is shared; threads only contend
        z = np.linalg.eigvals(comp).astype(complex)
    dc = np.polyder(c)
    for _ in range(2):
        d = np.polyval(dc, z)
        step = np.where(np.abs(d) > 0, np.polyval(c, z) / np.where(d == 0, 1, d), 0)
        z = np.where(np.abs(step) < 1e-6, z - step, z)
    return z


def rho(c):
    return float(np.max(np.abs(roots(c))))


def bisect_threshold(make_poly, hi=4.5, rtol=1e-13):
    """Smallest q > 0 with rho(P_q) >= 1, by bisection on numpy eigenvalues.

    Assumes the stable set is (0, q_max) and q_max < hi.
    """
    lo = 0.0
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if rho(make_poly(mid)) < 1.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def simulate(rule, tau, beta, q, steps, w0=1.0):
    """Scalar recurrence of the update rule itself (lr = 1, curvature q), from w_0 = w0.

    Weights before t = 0 equal w0 and buffers are zero (the state just after
    arriving at w0). Returns |w_t| for t = 0..steps.
    """
    hist_w = [w0] * (tau + 1)  # w_{t-tau}, ..., w_t
    hist_v = [0.0] * (tau + 1)  # for shifted: v_{t-tau}, ..., v_t
    v = 0.0
    out = np.empty(steps + 1)
    out[0] = abs(w0)
    for t in range(steps):
        w = hist_w[-1]
        g_delayed = q * hist_w[0]  # gradient at w_{t-tau}, lr = 1
        if rule == "gd":
            w_new = w - g_delayed
        elif rule == "heavy_ball":
            v = beta * v + g_delayed
            w_new = w - v
        elif rule == "nesterov":
            v = beta * v + g_delayed
            w_new = w - (g_delayed + beta * v)
        elif rule == "shifted":
            v_new = beta * hist_v[0] + g_delayed
            hist_v = hist_v[1:] + [v_new]
            w_new = w - v_new
        else:
            raise ValueError(rule)
        hist_w = hist_w[1:] + [w_new]
        out[t + 1] = abs(w_new)
    return out
