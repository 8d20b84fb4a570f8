"""Delay distributions at scale (issue 11, item 1): thresholds and spectral radii for
supports 0..K with K = 10 .. 10,000 against independent references.

Nothing here uses the library's evaluation code. The characteristic polynomials are
written out from ``stability.theory.rules``' docstring with ``np.polymul`` (full dense
coefficients); the references are

- thresholds: the boundary locus ``q = -A/B`` of those polynomials sampled on a grid
  of 16 (K + 2) angles (this file's own FFT of the coefficient vectors), every sign
  change of ``Im(-A conj B)`` with positive real part refined by Newton in mpmath at
  30 digits (Horner on the coefficients), the smallest kept; for K <= 400 also the
  companion eigenvalues on both sides of it;
- spectral radii: companion eigenvalues polished by Newton (K <= 400); beyond, the
  returned root polished in mpmath (it is a root: a lower bound) and this file's own
  argument-principle count of the dense polynomial (FFT samples, refined by Horner
  where the phase moves fast) on circles 1e-9 outside and 1e-5 inside it.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from stability_oracles import roots

import stability as st
from stability.theory import delay_locus
from stability.theory.boundary_locus import dense_threshold
from stability.theory.companion import spectral_radius_from_coefficients
from stability.theory.rules import characteristic_polynomial

RULES = ("heavy_ball", "nesterov", "shifted")


# ----------------------------------------------------------------------------
# Independent polynomials and references


def parts(p, beta, rule):
    """(A, B) of P = A + q B for delay probabilities p (descending, equal length), from
    the docstring of stability.theory.rules: D(z) = sum_k p_k z^(K-k),
    heavy_ball z^K (z-1)(z-beta) + q z D; nesterov z^K (z-1)(z-beta) + q ((1+beta) z - beta) D;
    shifted (z-1)(z^(K+1) - beta D) + q z D."""
    p = np.asarray(p, dtype=float)
    k = len(p) - 1
    zk = np.zeros(k + 1)
    zk[0] = 1.0
    if rule == "shifted":
        zk1 = np.zeros(k + 2)
        zk1[0] = 1.0
        a = np.polymul([1.0, -1.0], np.polysub(zk1, beta * p))
        b = np.polymul([1.0, 0.0], p)
    else:
        a = np.polymul(zk, np.polymul([1.0, -1.0], [1.0, -beta]))
        b = np.polymul([1.0, 0.0] if rule == "heavy_ball" else [1.0 + beta, -beta], p)
    b = np.concatenate([np.zeros(len(a) - len(b)), b])
    return a, b


def on_circle(c, radius, n_angles):
    """c (descending) at radius e^{2 pi i j / n_angles}, j = 0..n_angles-1 (FFT)."""
    deg = len(c) - 1
    # sum_j c_j z^(deg - j) = sum_m c_{deg-m} z^m: an inverse DFT of the ascending coefficients
    asc = c[::-1] * np.exp(np.arange(deg + 1) * math.log(radius))
    return np.fft.ifft(asc, n_angles) * n_angles


def horner(c, z):
    out = np.zeros_like(z)
    for coef in c:
        out = out * z + coef
    return out


def mp_locus_refine(a, b, lo, hi):
    """The crossing of Im(-A/B) = 0 in [lo, hi]: zoomed in float64 (Horner on 65
    sub-samples per round, keeping the sign change), then Newton in mpmath at 30 digits;
    returns (q = Re(-A/B) there, theta)."""
    for _ in range(9):
        t = np.linspace(lo, hi, 65)
        z = np.exp(1j * t)
        h = (-horner(a, z) / horner(b, z)).imag
        s = np.flatnonzero(np.sign(h[:-1]) * np.sign(h[1:]) <= 0)
        if s.size == 0:
            break
        lo, hi = t[s[0]], t[s[0] + 1]
    mpmath.mp.dps = 30
    am = [mpmath.mpf(float(x)) for x in a]
    bm = [mpmath.mpf(float(x)) for x in b]

    def locus(theta):
        """-A/B at e^{i theta} and its theta-derivative."""
        z = mpmath.expj(theta)
        av = bv = da = db = mpmath.mpc(0)
        for ca, cb in zip(am, bm, strict=True):
            da, db = da * z + av, db * z + bv
            av, bv = av * z + ca, bv * z + cb
        q = -av / bv
        dq = -(da * bv - av * db) / (bv * bv) * 1j * z
        return q, dq

    x = mpmath.mpf((lo + hi) / 2)
    for _ in range(3):
        q, dq = locus(x)
        x = x - q.imag / dq.imag
    q, _ = locus(x)
    if not (q.real > 0 and abs(q.imag) < 1e-20 * abs(q)):
        # Im(-A/B) also changes sign through a pole of -A/B (B = 0); that is no crossing.
        # A true crossing lost here would make the reference larger: the test would fail.
        return math.inf, math.nan
    return float(q.real), float(x)


def reference_threshold(p, beta, rule):
    """Smallest positive real value of -A/B on the unit circle (module docstring)."""
    a, b = parts(p, beta, rule)
    n = len(a) - 1
    m = 16 * (n + 1)  # angles 2 pi j / (2m): j = 0..m covers [0, pi]
    av, bv = on_circle(a, 1.0, 2 * m)[: m + 1], on_circle(b, 1.0, 2 * m)[: m + 1]
    theta = np.pi * np.arange(m + 1) / m
    q = -av / bv
    h = q.imag
    change = np.flatnonzero((np.sign(h[1:-1]) * np.sign(h[2:]) <= 0) & (h[1:-1] != 0)) + 1
    w = h[change] / (h[change] - h[change + 1])
    est = q.real[change] + w * (q.real[change + 1] - q.real[change])
    pos = est > 0
    change, est = change[pos], est[pos]
    best = (math.inf, math.nan)
    if q.real[-1] > 0 and abs(q.imag[-1]) < 1e-9 * abs(q[-1]):  # a root at z = -1
        best = (float(q.real[-1]), math.pi)
    if est.size:
        # the grid is 16x finer than the angle between roots: its linear estimates are
        # within a few percent; every candidate within 5 % of the best one is refined
        for j in change[est <= 1.05 * est.min()][:4]:
            best = min(best, mp_locus_refine(a, b, theta[j], theta[j + 1]))
    return best


def eig_rho(c):
    """Companion eigenvalues with three Newton steps (tests/stability_oracles.py)."""
    return float(np.abs(roots(c, steps=3)).max())


def winding_count(c, radius, n_angles=2**18):
    """Roots of c inside |z| < radius: the change of arg P around the circle / 2 pi,
    FFT samples, refined by Horner on 512 sub-samples wherever the phase moves by more
    than pi/8 between samples (repeatedly); asserts every final step is below pi/4."""
    vals = on_circle(c, radius, n_angles)
    theta = 2 * np.pi * np.arange(n_angles + 1) / n_angles
    vals = np.append(vals, vals[0])
    total = 0.0
    pieces = [(theta, vals)]
    for _ in range(6):
        nxt = []
        for t, v in pieces:
            d = np.angle(v[1:] / v[:-1])
            fast = np.abs(d) > np.pi / 8
            total += float(d[~fast].sum())
            for j in np.flatnonzero(fast):
                sub = np.linspace(t[j], t[j + 1], 513)
                sv = horner(c, radius * np.exp(1j * sub))
                sv[0], sv[-1] = v[j], v[j + 1]
                nxt.append((sub, sv))
        pieces = nxt
        if not pieces:
            break
    for _t, v in pieces:  # last level: accepted only if resolved
        d = np.angle(v[1:] / v[:-1])
        assert np.abs(d).max() < np.pi / 4, "reference count not resolved"
        total += float(d.sum())
    count = total / (2 * np.pi)
    assert abs(count - round(count)) < 1e-6
    return round(count)


def mp_polish(c, z0):
    """The root of c near z0 at 30 digits (mpmath Newton), and |P| there."""
    mpmath.mp.dps = 30
    cm = [mpmath.mpf(float(x)) for x in c]
    z = mpmath.mpc(z0)
    for _ in range(3):
        v = d = mpmath.mpc(0)
        for x in cm:
            d = d * z + v
            v = v * z + x
        z = z - v / d
    return z


def families(k, seed=0):
    """Delay distributions with support 0..k of several shapes."""
    rng = np.random.default_rng(seed)
    out = {}
    if k % 2 == 0:
        out["random_order"] = st.random_order(k // 2 + 1).probabilities
    u = np.ones(k + 1)
    out["uniform"] = u / u.sum()
    two = np.zeros(k + 1)
    two[0] = two[k] = 0.5
    out["two_point"] = two
    near = np.zeros(k + 1)
    near[0], near[k] = 0.01, 0.99
    out["near_fixed"] = near
    g = 0.9 ** np.arange(k + 1)
    out["geometric"] = g / g.sum()
    d = rng.dirichlet(np.full(k + 1, 0.3))
    out["dirichlet"] = d
    return out


# ----------------------------------------------------------------------------
# Agreement with the previous (eigenvalue / dense locus) implementation


@pytest.mark.parametrize("rule", RULES)
def test_small_supports_agree_with_dense_locus_and_eigenvalues(rule):
    dists = [
        st.random_order(3).probabilities,
        np.array([0.5, 0.0, 0.2, 0.3]),
        st.random_order(8).probabilities,
        families(40)["dirichlet"],
    ]
    for p in dists:
        for beta in (0.0, 0.5, 0.9):
            poly = characteristic_polynomial(st.delay_distribution(p), beta, momentum=rule)
            old = dense_threshold(poly.a, poly.b)
            new = st.stability_threshold(st.delay_distribution(p), beta, momentum=rule)
            assert new.reliable and bool(old.reliable)
            assert new.q_max == pytest.approx(float(old.q_max), rel=1e-10)
            for f in (0.1, 1.0, 3.0):
                q = f * new.q_max
                want = float(spectral_radius_from_coefficients(poly.coefficients(q)))
                got = delay_locus.distribution_spectral_radius(p, q, beta, rule)
                assert got.certified
                assert got.rho == pytest.approx(want, rel=1e-10)
                public = st.spectral_radius(q, 1.0, st.delay_distribution(p), beta, momentum=rule)
                assert public == pytest.approx(want, rel=1e-10)


# ----------------------------------------------------------------------------
# Thresholds against the independent mpmath locus


def _check_threshold(p, beta, rule, eig_check):
    got = st.stability_threshold(st.delay_distribution(p), beta, momentum=rule)
    want, theta = reference_threshold(p, beta, rule)
    assert got.reliable, (rule, beta)
    assert got.q_max == pytest.approx(want, rel=1e-9), (rule, beta)
    # theta: the angle of a crossing at q_max (with ties, e.g. a two-point distribution,
    # any of them): the locus there, from this file's own polynomials, is q_max.
    a, b = parts(p, beta, rule)
    z = complex(math.cos(got.theta), math.sin(got.theta))
    at = -np.polyval(a, z) / np.polyval(b, z)
    assert at.real == pytest.approx(got.q_max, rel=1e-7) and abs(at.imag) < 1e-7 * got.q_max
    if eig_check:  # the stable set ends there: companion eigenvalues on both sides
        a, b = parts(p, beta, rule)
        assert eig_rho(a + got.q_max * (1 - 1e-9) * b) < 1
        assert eig_rho(a + got.q_max * (1 + 1e-9) * b) > 1
    return got


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("rule", RULES)
def test_thresholds_small_and_medium_supports(k, rule):
    for p in families(k).values():
        for beta in (0.0, 0.9):
            _check_threshold(p, beta, rule, eig_check=True)


@pytest.mark.parametrize("rule", RULES)
def test_thresholds_support_1000(rule):
    fam = families(1000)
    for name in ("random_order", "two_point", "dirichlet"):
        _check_threshold(fam[name], 0.9, rule, eig_check=False)
    _check_threshold(fam["random_order"], 0.0, rule, eig_check=False)


@pytest.mark.parametrize("rule", RULES)
def test_thresholds_support_10000(rule):
    # random order with 5,001 workers: delays 0..10,000
    p = st.random_order(5001).probabilities
    _check_threshold(p, 0.9, rule, eig_check=False)


def test_threshold_beta_zero_is_plain_delayed_sgd_for_every_rule():
    p = st.random_order(5001).probabilities
    got = [st.max_stable_sharpness(1.0, st.delay_distribution(p), 0.0, momentum=r) for r in RULES]
    want, _ = reference_threshold(p, 0.0, "heavy_ball")
    for g in got:
        assert g == pytest.approx(want, rel=1e-9)


# ----------------------------------------------------------------------------
# Spectral radii against independent references


@pytest.mark.parametrize("k", [10, 100, 200])
@pytest.mark.parametrize("rule", RULES)
def test_spectral_radius_against_polished_eigenvalues(k, rule):
    fam = families(k, seed=k)
    names = list(fam) if k <= 100 else ["random_order", "geometric", "near_fixed"]
    for name in names:
        p = fam[name]
        for beta in (0.0, 0.9):
            qm = st.max_stable_sharpness(1.0, st.delay_distribution(p), beta, momentum=rule)
            a, b = parts(p, beta, rule)
            for f in (0.02, 0.7, 1.0, 1.3, 5.0):
                q = f * qm
                got = delay_locus.distribution_spectral_radius(p, q, beta, rule)
                assert got.certified, (name, beta, f)
                assert got.rho == pytest.approx(eig_rho(a + q * b), rel=1e-10), (name, beta, f)


def _check_large_radius(p, q, beta, rule):
    got = delay_locus.distribution_spectral_radius(p, q, beta, rule)
    assert got.certified
    a, b = parts(p, beta, rule)
    c = a + q * b
    z = mp_polish(c, got.root)  # a root: rho >= |z|
    assert float(abs(z)) == pytest.approx(got.rho, rel=1e-12)
    n = len(c) - 1
    assert winding_count(c, got.rho * (1 + 1e-9)) == n  # no root outside
    assert winding_count(c, got.rho * (1 - 1e-5)) < n
    public = st.spectral_radius(q, 1.0, st.delay_distribution(p), beta, momentum=rule)
    assert public == pytest.approx(got.rho, rel=1e-15)
    return got.rho


@pytest.mark.parametrize("rule", RULES)
def test_spectral_radius_support_1000(rule):
    p = st.random_order(501).probabilities
    qm, _ = reference_threshold(p, 0.9, rule)
    for f in (0.5, 2.0):
        _check_large_radius(p, f * qm, 0.9, rule)
    # at the threshold the dominant root is on the unit circle
    got = st.spectral_radius(qm, 1.0, st.delay_distribution(p), 0.9, momentum=rule)
    assert got == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("rule", RULES)
def test_spectral_radius_support_10000(rule):
    p = st.random_order(5001).probabilities
    qm, _ = reference_threshold(p, 0.9, rule)
    rho_below = _check_large_radius(p, 0.5 * qm, 0.9, rule)
    assert rho_below < 1
    got = st.spectral_radius(qm, 1.0, st.delay_distribution(p), 0.9, momentum=rule)
    assert got == pytest.approx(1.0, abs=1e-10)


# ----------------------------------------------------------------------------
# Flags, fallbacks and the JAX interface


def test_unreliable_threshold_is_nan_not_a_guess(monkeypatch):
    # no refinement allowed: the grid alone certifies nothing here
    p = families(100)["dirichlet"]
    delay_locus._cached_threshold.cache_clear()
    monkeypatch.setattr(delay_locus, "_MAX_LEVELS", 0)
    t = st.stability_threshold(st.delay_distribution(p), 0.9, momentum="shifted")
    assert t.reliable is False
    assert math.isnan(st.max_stable_sharpness(1.0, st.delay_distribution(p), 0.9))
    delay_locus._cached_threshold.cache_clear()


def test_uncertified_radius_falls_back_to_eigenvalues_then_nan(monkeypatch):
    p = st.random_order(40).probabilities
    dist = st.delay_distribution(p)
    q = 0.01
    a, b = parts(p, 0.5, "nesterov")
    want = eig_rho(a + q * b)
    monkeypatch.setattr(delay_locus, "_MIN_POINTS", 0)
    monkeypatch.setattr(delay_locus, "_MAX_WORK", 0.0)
    monkeypatch.setattr(delay_locus, "_MAX_LEVELS", 0)
    assert not delay_locus.distribution_spectral_radius(p, q, 0.5, "nesterov").certified
    assert st.spectral_radius(q, 1.0, dist, 0.5, momentum="nesterov") == pytest.approx(
        want, rel=1e-10
    )
    monkeypatch.setattr(delay_locus, "EIGENVALUE_FALLBACK", 10)
    assert math.isnan(st.spectral_radius(q, 1.0, dist, 0.5, momentum="nesterov"))


def test_jit_vmap_grad_and_python_scalars():
    import jax
    import jax.numpy as jnp

    dist = st.random_order(40)
    betas = jnp.array([0.0, 0.5, 0.9])
    jitted = jax.jit(lambda b: st.stability_threshold(dist, b, momentum="shifted").q_max)(betas)
    direct = st.stability_threshold(dist, np.asarray(betas), momentum="shifted").q_max
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(direct))
    s = jnp.array([0.01, 0.02, 0.05])
    vm = jax.vmap(lambda x: st.spectral_radius(x, 1.0, dist, 0.5))(s)
    np.testing.assert_allclose(vm, st.spectral_radius(np.asarray(s), 1.0, dist, 0.5), rtol=1e-15)
    # derivative from the companion eigenvalues (central difference of the radius)
    g = float(jax.grad(lambda x: st.spectral_radius(x, 1.0, dist, 0.5))(0.02))
    eps = 1e-6
    fd = (
        st.spectral_radius(0.02 + eps, 1.0, dist, 0.5)
        - st.spectral_radius(0.02 - eps, 1.0, dist, 0.5)
    ) / (2 * eps)
    assert g == pytest.approx(fd, rel=1e-5)
    assert isinstance(st.max_stable_sharpness(0.1, dist, 0.5), float)
    assert isinstance(st.spectral_radius(0.7, 0.1, dist), float)
