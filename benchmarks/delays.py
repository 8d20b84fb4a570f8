"""Delay distributions at scale (issue 11, item 1): `python benchmarks/delays.py`.

For random worker order with N workers (delays 0..K, K = 2N - 2) at K = 10, 100,
1,000 and 10,000, each momentum rule and beta in {0, 0.9}, it measures

- the time of ``max_stable_sharpness(1.0, random_order(N), beta)`` (the threshold;
  the threshold cache is cleared before every call) and of ``spectral_radius`` at
  q = 0.5, 0.9 and 2 q_max (the largest of the three is reported), each the minimum
  of several calls (the 2 cores are shared: load averages are printed);
- the error against independent references (tests/test_delay_distributions_at_scale.py):
  thresholds against the mpmath boundary locus of the dense polynomial; spectral radii
  against polished numpy companion eigenvalues (K <= 1,000) or, at K = 10,000, the
  returned root polished in mpmath plus that file's own argument-principle counts 1e-9
  outside and 1e-5 inside it;
- for K <= 1,000 the previous implementation's times (dense locus with companion
  eigenvalues near the circle, O(K^3); companion eigenvalues for the radius).

Targets (issue 11): under 1 s per call at K = 10,000 and 1e-9 relative error.
Writes benchmarks/RESULTS-delays.md (the table and the run's environment).
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from test_delay_distributions_at_scale import (  # noqa: E402
    eig_rho,
    mp_polish,
    parts,
    reference_threshold,
    winding_count,
)

import stability as st  # noqa: E402
from stability.theory import delay_locus  # noqa: E402
from stability.theory.boundary_locus import dense_threshold  # noqa: E402
from stability.theory.companion import spectral_radius_from_coefficients  # noqa: E402
from stability.theory.rules import characteristic_polynomial  # noqa: E402

SUPPORTS = (10, 100, 1000, 10000)
RULES = ("heavy_ball", "nesterov", "shifted")
BETAS = (0.0, 0.9)
FACTORS = (0.5, 0.9, 2.0)
OUT = os.path.join(os.path.dirname(__file__), "RESULTS-delays.md")


def best(fn, repeat):
    """Minimum wall time of ``repeat`` calls (after one warm-up call) and the last value."""
    value = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return min(times), value


def threshold_call(dist, beta, rule):
    delay_locus._cached_threshold.cache_clear()
    return st.max_stable_sharpness(1.0, dist, beta, momentum=rule)


def radius_error(p, q, beta, rule, rho):
    a, b = parts(p, beta, rule)
    c = a + q * b
    if len(p) <= 1001:
        return abs(rho / eig_rho(c) - 1), "eigenvalues"
    got = delay_locus.distribution_spectral_radius(p, q, beta, rule)
    z = mp_polish(c, got.root)
    n = len(c) - 1
    outside = winding_count(c, rho * (1 + 1e-9)) == n
    inside = winding_count(c, rho * (1 - 1e-5)) < n
    err = abs(float(abs(z)) / rho - 1)
    return (err if outside and inside else math.inf), "mpmath root + counts"


def previous(dist, beta, rule, q):
    """The implementation before this change: dense locus and companion eigenvalues."""
    poly = characteristic_polynomial(dist, beta, momentum=rule)
    t_thr, _ = best(lambda: float(dense_threshold(poly.a, poly.b).q_max), 1)
    coeffs = poly.coefficients(q)
    t_rad, _ = best(lambda: float(spectral_radius_from_coefficients(coeffs)), 1)
    return t_thr, t_rad


def main():
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    load0 = os.getloadavg()
    log(f"jax {jax.__version__}, numpy {np.__version__}, {platform.machine()}")
    log(f"cpus {os.cpu_count()}")
    log(f"date {datetime.datetime.now().isoformat(timespec='minutes')}, load average {load0}")
    rows = []
    for k in SUPPORTS:
        n_workers = k // 2 + 1
        dist = st.random_order(n_workers)
        p = dist.probabilities
        repeat = 5 if k < 10000 else 3
        for rule in RULES:
            for beta in BETAS:
                t_thr, qm = best(lambda d=dist, b=beta, r=rule: threshold_call(d, b, r), repeat)
                want, _ = reference_threshold(p, beta, rule)
                thr_err = abs(qm / want - 1)
                t_rad, rad_err = 0.0, 0.0
                for f in FACTORS:
                    q = f * qm
                    t, rho = best(
                        lambda q=q, d=dist, b=beta, r=rule: st.spectral_radius(
                            q, 1.0, d, b, momentum=r
                        ),
                        repeat,
                    )
                    t_rad = max(t_rad, t)
                    e, how = radius_error(p, q, beta, rule, rho)
                    rad_err = max(rad_err, e)
                old = previous(dist, beta, rule, 0.9 * qm) if k <= 1000 else (math.nan, math.nan)
                rows.append((k, rule, beta, t_thr, thr_err, t_rad, rad_err, how, *old))
                log(
                    f"K={k:>5} {rule:>10} beta={beta}: threshold {t_thr * 1e3:8.1f} ms "
                    f"(err {thr_err:.1e}), radius {t_rad * 1e3:8.1f} ms (err {rad_err:.1e}, {how})"
                    + (f"; previous {old[0]:.3f} s / {old[1]:.3f} s" if k <= 1000 else "")
                )
    load1 = os.getloadavg()
    log(f"load average after {load1}")

    # growth of the cost with the support (worst case over rules and betas)
    def worst(col, k):
        return max(r[col] for r in rows if r[0] == k)

    slopes = []
    for col, name in ((3, "threshold"), (5, "spectral radius")):
        s = math.log(worst(col, 10000) / worst(col, 1000)) / math.log(10)
        ratio = worst(col, 10000) / worst(col, 1000)
        slopes.append(f"{name}: time x{ratio:.1f} from K = 1,000 to 10,000 (log-log slope {s:.2f})")

    met_time = all(r[3] < 1 and r[5] < 1 for r in rows)
    met_err = all(r[4] <= 1e-9 and r[6] <= 1e-9 for r in rows)
    verdict = (
        f"- TARGET every call < 1 s up to K = 10,000 -> {'PASS' if met_time else 'MISS'}\n"
        f"- TARGET every error <= 1e-9 relative -> {'PASS' if met_err else 'MISS'}"
    )
    table = [
        "| support K | rule | beta | threshold time | threshold error | radius time "
        "(worst of 3 q) | radius error | radius reference | previous threshold / radius |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for k, rule, beta, tt, te, tr, re, how, ot, orad in rows:
        prev = "not run (O(K^3))" if k > 1000 else f"{ot:.3f} s / {orad:.3f} s"
        table.append(
            f"| {k:,} | {rule} | {beta} | {tt * 1e3:.1f} ms | {te:.1e} | "
            f"{tr * 1e3:.1f} ms | {re:.1e} | {how} | {prev} |"
        )
    with open(OUT, "w") as fh:
        fh.write("# Delay distributions at scale (benchmarks/delays.py)\n\n")
        fh.write(
            "Random worker order with N workers, delays 0..K (K = 2N - 2); times are the "
            "minimum of 5 calls (3 at K = 10,000) on this shared 2-core CPU machine, "
            "float64; errors are relative, against the independent references of "
            "tests/test_delay_distributions_at_scale.py. Targets: < 1 s per call at "
            "K = 10,000, error <= 1e-9.\n\n"
        )
        fh.write("```\n" + "\n".join(lines) + "\n```\n\n")
        fh.write("\n".join(table) + "\n\n")
        fh.write("Growth with the support: " + "; ".join(slopes) + ".\n\n")
        fh.write(verdict + "\n")
    print("\n".join(table))
    print("\n".join(slopes))
    print(verdict)


if __name__ == "__main__":
    main()
