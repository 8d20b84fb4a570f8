"""Independent oracles for the stability-core tests.

Written from the update rules in docs/theory.md (not from the library's code):
polynomials built with ``np.polymul``, roots from ``np.linalg.eigvals`` of the
companion matrix polished by Newton on P, direct simulation of the recurrences;
the rules' state-space matrices; and, for 1 - beta down to 1e-6 and tau up to 1e6,
high-precision oracles (the Schur-Cohn test in exact integer arithmetic, the
locus -A/B evaluated with mpmath).
"""

from __future__ import annotations

import mpmath
import numpy as np
from threadpoolctl import threadpool_limits


def zpow(k):
    """z^k as descending coefficients."""
    c = np.zeros(k + 1)
    c[0] = 1.0
    return c


def poly(tau, beta, q, rule):
    """P(z) (descending) of a rule with a fixed delay, straight from docs/theory.md's table."""
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
    """First-moment polynomial for delay probabilities p (docs/theory.md section 10 style)."""
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


def roots(c, steps=2):
    """Roots of a polynomial: companion eigenvalues, then ``steps`` Newton polishing
    steps."""
    c = np.trim_zeros(np.asarray(c, float), "f")
    c = c / c[0]
    m = len(c) - 1
    comp = np.zeros((m, m))
    comp[0] = -c[1:]
    comp[np.arange(1, m), np.arange(m - 1)] = 1.0
    with threadpool_limits(1):  # the machine is shared; threads only contend
        z = np.linalg.eigvals(comp).astype(complex)
    dc = np.polyder(c)
    for _ in range(steps):
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


# ----------------------------------------------------------------------------
# High-precision oracles (mpmath). Nothing here calls the library: the polynomials
# are written out from docs/theory.md's update rules (and checked against the state-space
# recurrence by the tests), stability is decided by the Schur-Cohn test, and the
# locus is evaluated from the polynomials themselves.


def transition_matrix(rule, tau, beta, q):
    """The one-step map of an update rule (lr = 1, curvature q) on its full state.

    State ``(w_t, w_{t-1}, ..., w_{t-tau}, v...)``: heavy_ball and nesterov carry one
    buffer ``v_t``, shifted the buffers ``v_t, ..., v_{t-tau}`` (each worker's own),
    gd none. Rows are the update equations themselves, so the eigenvalues are the
    recurrence's characteristic roots (plus zeros) without any polynomial algebra.
    """
    nw = tau + 1
    nv = {"gd": 0, "heavy_ball": 1, "nesterov": 1, "shifted": tau + 1}[rule]
    m = np.zeros((nw + nv, nw + nv))
    old = tau  # column of w_{t-tau}
    m[np.arange(1, nw), np.arange(nw - 1)] = 1.0  # w history shifts down
    if rule == "gd":  # w+ = w - q w_{t-tau}
        m[0, 0] += 1.0
        m[0, old] -= q
    elif rule == "heavy_ball":  # v+ = beta v + q w_{t-tau}; w+ = w - v+
        m[nw, nw], m[nw, old] = beta, q
        m[0] = -m[nw]
        m[0, 0] += 1.0
    elif rule == "nesterov":  # v+ = beta v + q w_{t-tau}; w+ = w - (q w_{t-tau} + beta v+)
        m[nw, nw], m[nw, old] = beta, q
        m[0] = -beta * m[nw]
        m[0, old] -= q
        m[0, 0] += 1.0
    elif rule == "shifted":  # v+ = beta v_{t-tau} + q w_{t-tau}; w+ = w - v+
        m[nw, nw + tau], m[nw, old] = beta, q
        m[nw + 1 + np.arange(tau), nw + np.arange(tau)] = 1.0  # v history shifts down
        m[0] = -m[nw]
        m[0, 0] += 1.0
    else:
        raise ValueError(rule)
    return m


def transition_rho(rule, tau, beta, q):
    """Spectral radius of :func:`transition_matrix` (numpy eigenvalues; small matrices,
    so no thread limit here: entering one costs more than the eigenvalues)."""
    return float(np.max(np.abs(np.linalg.eigvals(transition_matrix(rule, tau, beta, q)))))


def transition_threshold(rule, tau, beta, rtol=1e-13, hi=4.5):
    """Smallest q with :func:`transition_rho` >= 1, by bisection (stable set (0, q_max))."""
    lo = 0.0
    with threadpool_limits(1):  # the machine is shared; threads only contend
        while hi - lo > rtol * hi:
            mid = 0.5 * (lo + hi)
            if transition_rho(rule, tau, beta, mid) < 1.0:
                lo = mid
            else:
                hi = mid
    return 0.5 * (lo + hi)


def mp_poly(tau, beta, q, rule):
    """P(z) of a fixed-delay rule, descending mpmath coefficients (q, beta exact).

    gd: z^(tau+1) - z^tau + q; heavy_ball: z^tau (z-1)(z-beta) + q z; nesterov:
    z^tau (z-1)(z-beta) + q ((1+beta) z - beta); shifted: (z-1)(z^(tau+1) - beta) + q z.
    """
    beta, q = mpmath.mpf(beta), mpmath.mpf(q)
    n = tau + 1 if rule == "gd" else tau + 2
    c = [mpmath.mpf(0)] * (n + 1)
    c[0] = mpmath.mpf(1)
    if rule == "gd":
        c[1] -= 1
        c[n] += q
    elif rule in ("heavy_ball", "nesterov"):
        c[1] -= 1 + beta
        c[2] += beta
        if rule == "heavy_ball":
            c[n - 1] += q
        else:
            c[n - 1] += q * (1 + beta)
            c[n] -= q * beta
    elif rule == "shifted":
        c[1] -= 1
        c[n - 1] += q - beta
        c[n] += beta
    else:
        raise ValueError(rule)
    return c


def _exact_integers(c):
    """Integers proportional to the mpmath numbers ``c`` (exactly: a common power of 2)."""
    parts = [mpmath.mpf(x)._mpf_[:3] for x in c]  # (sign, mantissa, exponent)
    e0 = min(e for _, m, e in parts if m)
    return [(-1) ** s * (int(m) << (e - e0)) for s, m, e in parts]


def schur_stable(c, bits=256):
    """True iff every root of the real polynomial ``c`` (descending) has |z| < 1.

    The Schur-Cohn test: ``p`` (leading coefficient a, constant term k) has all its
    roots in the open unit disk iff |k| < |a| and ``(a p - k p*) / z`` has, ``p*`` the
    reversed polynomial (Rouche on |z| = 1, where |p*| = |p|). Run on exact integers
    (the coefficients times a power of 2), each step rounded back to ``bits`` bits
    relative to its largest coefficient: the only rounding (the tests check that
    doubling ``bits`` changes no answer).
    """
    c = _exact_integers(c)
    if c[0] < 0:
        c = [-x for x in c]
    while len(c) > 1:
        a, k = c[0], c[-1]
        if abs(k) >= a:
            return False
        n = len(c) - 1
        c = [a * c[j] - k * c[n - j] for j in range(n)]
        shift = max(abs(x) for x in c).bit_length() - bits
        if shift > 0:
            c = [x >> shift for x in c]
    return True


def mp_bisect_threshold(tau, beta, rule, rtol=1e-13, dps=60):
    """Largest q whose polynomial passes :func:`schur_stable`: bisection in log q.

    Starts from q = 4.5 (unstable for every rule here) and halves until stable, so
    it assumes, as the library does, that the stable set is an interval (0, q_max).
    """
    with mpmath.workdps(dps):
        hi = mpmath.mpf(4.5)
        assert not schur_stable(mp_poly(tau, beta, hi, rule))
        lo = hi / 2
        while not schur_stable(mp_poly(tau, beta, lo, rule)):
            hi, lo = lo, lo / 2
        while hi / lo - 1 > rtol:
            mid = mpmath.sqrt(lo * hi)
            if schur_stable(mp_poly(tau, beta, mid, rule)):
                lo = mid
            else:
                hi = mid
        return mpmath.sqrt(lo * hi)


def mp_locus(theta, tau, beta, rule):
    """-A(z) / B(z) at z = e^{i theta}, evaluated directly from the polynomials' factors."""
    z, zt = mpmath.expj(theta), mpmath.expj(tau * theta)
    if rule == "gd":
        return -zt * (z - 1)
    if rule == "heavy_ball":
        return -zt * (z - 1) * (z - beta) / z
    if rule == "nesterov":
        return -zt * (z - 1) * (z - beta) / ((1 + beta) * z - beta)
    if rule == "shifted":
        return -(z - 1) * (z * zt - beta) / z
    raise ValueError(rule)


def _arg_one_minus(b, x):
    """arg(1 - b e^{-ix}) for 0 <= b < 1, in (-pi/2, pi/2) (no cancellation at x ~ 0)."""
    return mpmath.atan2(b * mpmath.sin(x), (1 - b) + 2 * b * mpmath.sin(x / 2) ** 2)


def mp_phase(theta, tau, beta, rule):
    """The continuous argument of -A/B at e^{i theta} minus 3 pi / 2.

    With z - 1 = 2 sin(theta/2) e^{i(theta + pi)/2} and z - b = e^{i theta}(1 - b e^{-i theta}):
    gd (tau + 1/2) theta; heavy_ball adds arg(1 - beta e^{-i theta}); nesterov adds that
    minus arg(1 - gamma e^{-i theta}), gamma = beta / (1 + beta) (from (1 + beta) z - beta);
    shifted adds arg(1 - beta e^{-i psi}), psi = (tau + 1) theta (from z^(tau+1) - beta).
    -A/B is real and positive where this equals pi/2 + 2 pi k. Each added term lies in
    (-pi/2, pi/2), and the phase increases for tau >= 2 (its slope is at least tau - 1).
    """
    base = (tau + mpmath.mpf(0.5)) * theta
    if rule == "gd":
        return base
    if rule == "heavy_ball":
        return base + _arg_one_minus(beta, theta)
    if rule == "nesterov":
        return base + _arg_one_minus(beta, theta) - _arg_one_minus(beta / (1 + beta), theta)
    if rule == "shifted":
        return base + _arg_one_minus(beta, (tau + 1) * theta)
    raise ValueError(rule)


def _min_modulus(beta, rule):
    """A lower bound on |A/B| / (2 sin(theta/2)) at every crossing."""
    if rule == "gd":
        return mpmath.mpf(1)
    if rule == "heavy_ball":
        return 1 - beta  # |z - beta|
    if rule == "nesterov":
        return (1 - beta) / (1 + 2 * beta)  # |z - beta| / |(1 + beta) z - beta|
    # shifted: at a crossing arg(e^{i psi} - beta) = pi/2 + theta/2 (mod 2 pi) lies in
    # (pi/2, pi], where the circle |w + beta| = 1 is at least sqrt(1 - beta^2) from 0
    return mpmath.sqrt(1 - beta * beta)


def mp_locus_threshold(tau, beta, rule, dps=40):
    """(q_max, theta) from the crossings of the locus, at ``dps`` digits (tau >= 2).

    Crossing k solves phase = pi/2 + 2 pi k (unique: the phase increases) in
    [2 pi k, 2 pi k + pi] / (tau + 1/2) by bisection; q there is -A/B evaluated
    directly, which must come out real and positive (a check on the phase formula).
    Crossings are visited until the lower bound 2 sin(theta/2) * _min_modulus exceeds
    the smallest q found, so the result is the minimum over all of them.
    """
    assert tau >= 2
    with mpmath.workdps(dps):
        beta = mpmath.mpf(beta)
        t = tau + mpmath.mpf(0.5)
        pi = mpmath.pi
        best = None
        k = 0
        while True:
            lo, hi = 2 * pi * k / t, (2 * pi * k + pi) / t
            if (
                best is not None
                and 2 * mpmath.sin(min(lo, pi) / 2) * _min_modulus(beta, rule) > best[0]
            ):
                break
            if lo >= pi:
                break
            target = pi / 2 + 2 * pi * k
            hi = min(hi, pi)
            if mp_phase(hi, tau, beta, rule) >= target:
                for _ in range(int(3.4 * dps) + 20):
                    mid = (lo + hi) / 2
                    if mp_phase(mid, tau, beta, rule) < target:
                        lo = mid
                    else:
                        hi = mid
                theta = (lo + hi) / 2
                q = mp_locus(theta, tau, beta, rule)
                assert q.real > 0 and abs(q.imag) <= mpmath.mpf(10) ** (15 - dps) * abs(q)
                if best is None or q.real < best[0]:
                    best = (q.real, theta, k)
            k += 1
            assert k < 50, "too many crossings below the bound"
        return best


def np_locus_threshold(tau, beta, rule):
    """Vectorised float64 version of :func:`mp_locus_threshold` for the first crossing.

    Bisection of the phase equation (k = 0) on [0, pi / (tau + 1/2)], then -A/B
    evaluated directly from its factors, with cos x - b written (1 - b) - 2 sin^2(x/2)
    so that 1 - beta down to 1e-6 and theta ~ 1e-6 keep full relative accuracy.
    The phase equation is solved as (tau + 1/2) theta = pi/2 - arg(...) + ..., with
    pi/2 - atan2(y, x) = atan2(x, y) (x > 0): both sides are then sums of positive
    terms, where theta can be far below 1 / tau (shifted, 1 - beta ~ 1e-6: the
    argument term is most of pi/2 and the difference would cancel).
    Returns (q, theta, imaginary part of -A/B relative to q).
    """
    tau, beta = np.broadcast_arrays(np.asarray(tau, float), np.asarray(beta, float))

    def x_y(b, x):  # 1 - b e^{-ix} = X + i Y, X > 0
        return (1 - b) + 2 * b * np.sin(x / 2) ** 2, b * np.sin(x)

    def excess(th):
        """(tau + 1/2) theta minus the rest of the phase equation (increasing)."""
        lhs = (tau + 0.5) * th
        if rule == "heavy_ball":
            return lhs - np.arctan2(*x_y(beta, th))
        if rule == "nesterov":
            x2, y2 = x_y(beta / (1 + beta), th)
            return lhs - np.arctan2(*x_y(beta, th)) - np.arctan2(y2, x2)
        return lhs - np.arctan2(*x_y(beta, (tau + 1) * th))

    lo = np.zeros_like(tau)
    hi = np.minimum(np.pi, np.pi / (tau + 0.5))
    for _ in range(110):
        mid = 0.5 * (lo + hi)
        below = excess(mid) < 0
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    th = 0.5 * (lo + hi)

    def minus_b(x, b):  # e^{ix} - b
        return ((1 - b) - 2 * np.sin(x / 2) ** 2) + 1j * np.sin(x)

    z, zt = np.exp(1j * th), np.exp(1j * tau * th)
    if rule == "heavy_ball":
        val = -zt * minus_b(th, 1.0) * minus_b(th, beta) / z
    elif rule == "nesterov":
        den = (1 - 2 * (1 + beta) * np.sin(th / 2) ** 2) + 1j * (1 + beta) * np.sin(th)
        val = -zt * minus_b(th, 1.0) * minus_b(th, beta) / den
    else:
        val = -minus_b(th, 1.0) * minus_b((tau + 1) * th, beta) / z
    return val.real, th, val.imag / val.real
