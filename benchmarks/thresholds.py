"""Speed of the stability core (a script, not a test): `python benchmarks/thresholds.py`.

Measured in one run, float64, jit, on this machine's CPU:

1. threshold evaluations per second: ``max_stable_sharpness`` on ~1e6 (tau, beta)
   points (tau in 1..1000, beta in [0, 0.99]), per rule; target >= 1e7 / s. The
   points are split over ``--cpu-devices`` CPU devices (default: one per core; a
   sharded input makes the jitted library function run SPMD over them); the rate
   on one device is printed too.
2. speed-up over the oracle (bisection on the spectral radius from numpy
   eigenvalues of the companion matrix, to 1e-12 relative, per point); target >= 1000x.
3. spectral radius over a 256 x 256 (sharpness, beta) grid at tau = 32 (lr 0.05,
   sharpness in [0, 2], beta in [0, 0.99], heavy_ball) against a per-point numpy
   loop (``np.linalg.eigvals`` of the companion per point); target >= 20x. The
   grid is timed on one device; the fraction of points certified by
   ``stability.theory.dominant_root`` (the rest use eigenvalues) is printed per rule.

Each figure is printed with its target and PASS/MISS, with the CPU share the process
got during the timed call (CPU seconds per wall second; the 2 cores are shared) and, for
(1), the rate per CPU-second, which is what a busy machine leaves comparable.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import stability as st  # noqa: E402
from stability.theory import dominant_root  # noqa: E402

CPU_SHARE = []  # process CPU seconds per wall second of each best timed call (2 cores, shared)


def best_time(fn, repeat=3):
    """Shortest wall time of ``repeat`` calls; appends that call's CPU share to CPU_SHARE."""
    fn()  # warm up / compile
    runs = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = time.perf_counter() - t0
        runs.append((wall, (time.process_time() - c0) / wall))
    wall, share = min(runs)
    CPU_SHARE.append(share)
    return wall


def companion_np(c):
    m = len(c) - 1
    comp = np.zeros((m, m))
    comp[0] = -c[1:] / c[0]
    comp[np.arange(1, m), np.arange(m - 1)] = 1.0
    return comp


def poly_np(tau, beta, q, rule):
    a = np.zeros(tau + 3)
    a[0], a[1], a[2] = 1.0, -(1 + beta), beta
    if rule == "heavy_ball":
        a[-2] += q
    elif rule == "nesterov":
        a[-2] += q * (1 + beta)
        a[-1] -= q * beta
    else:  # shifted: (z - 1)(z^(tau+1) - beta) + q z
        a = np.zeros(tau + 3)
        a[0], a[1] = 1.0, -1.0
        a[-2] += -beta + q
        a[-1] += beta
    return a


def rho_np(tau, beta, q, rule):
    return np.max(np.abs(np.linalg.eigvals(companion_np(poly_np(tau, beta, q, rule)))))


def oracle_threshold(tau, beta, rule, rtol=1e-12):
    lo, hi = 0.0, 4.5
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if rho_np(tau, beta, mid, rule) < 1:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def report(name, value, unit, target, higher=True):
    ok = value >= target if higher else value <= target
    print(f"{name:<58} {value:>12.4g} {unit:<8} target >= {target:<8g} {'PASS' if ok else 'MISS'}")
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--oracle-points", type=int, default=12)
    parser.add_argument("--loop-points", type=int, default=4096)
    parser.add_argument("--cpu-devices", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    # must precede the first use of the backend
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    print(f"jax {jax.__version__}, devices {jax.devices()}, cpus {os.cpu_count()}, float64")
    print(f"load average {os.getloadavg()}")

    rng = np.random.default_rng(0)
    n = args.points
    tau = jnp.asarray(rng.integers(1, 1001, n))
    beta = jnp.asarray(rng.uniform(0.0, 0.99, n))
    lr = jnp.asarray(1.0)
    results = []
    rates = {}
    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("points",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("points"))
    n_split = n - n % len(devices)
    tau_s = jax.device_put(tau[:n_split], split)
    beta_s = jax.device_put(beta[:n_split], split)
    for rule in ("heavy_ball", "nesterov", "shifted"):
        f = jax.jit(lambda lr, t, b, rule=rule: st.max_stable_sharpness(lr, t, b, momentum=rule))
        sec1 = best_time(lambda f=f: f(lr, tau, beta).block_until_ready(), repeat=5)
        share1 = CPU_SHARE[-1]
        sec = best_time(lambda f=f: f(lr, tau_s, beta_s).block_until_ready(), repeat=5)
        share = CPU_SHARE[-1]
        rates[rule] = n_split / sec
        print(
            f"  {rule}: one device {n / sec1:.3g}/s (CPU share {share1:.2f}), "
            f"{len(devices)} devices {n_split / sec:.3g}/s (CPU share {share:.2f}); "
            f"per CPU-second {n_split / (sec * share):.3g}"
        )
        results.append(
            report(
                f"threshold evaluations/s, {rule} ({n_split:.0e} pts, {len(devices)} dev)",
                n_split / sec,
                "1/s",
                1e7,
            )
        )

    # 2. oracle: bisection on numpy eigenvalues, per point
    pts = [
        (int(t), float(b))
        for t, b in zip(
            rng.integers(1, 129, args.oracle_points),
            rng.uniform(0, 0.99, args.oracle_points),
            strict=True,
        )
    ]
    t0 = time.perf_counter()
    # numpy loops on one BLAS thread: on these small matrices threads only contend
    # (with each other and with XLA's pool); set once, the context itself costs ~1 ms
    with threadpool_limits(1):
        want = [oracle_threshold(t, b, "heavy_ball") for t, b in pts]
    per_oracle = (time.perf_counter() - t0) / len(pts)
    got = np.asarray(
        st.max_stable_sharpness(1.0, np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    )
    err = float(np.max(np.abs(got / np.array(want) - 1)))
    print(f"oracle: {per_oracle * 1e3:.1f} ms per point (tau in 1..128), max rel diff {err:.2e}")
    speedup = per_oracle * rates["heavy_ball"]
    results.append(report("speed-up over eigenvalue bisection (heavy_ball)", speedup, "x", 1000))

    # 3. spectral radius on a 256 x 256 grid at tau = 32
    tau32 = 32
    sharp = jnp.linspace(0.0, 2.0, 256)[:, None]
    betas = jnp.linspace(0.0, 0.99, 256)[None, :]
    s_np = np.asarray(sharp).ravel()
    b_np = np.asarray(betas).ravel()
    idx = rng.integers(0, 256, (args.loop_points, 2))
    t0 = time.perf_counter()
    with threadpool_limits(1):
        loop = [rho_np(tau32, b_np[j], 0.05 * s_np[i], "heavy_ball") for i, j in idx]
    per_np = (time.perf_counter() - t0) / len(idx)
    for rule in ("heavy_ball", "nesterov", "shifted"):
        g = jax.jit(lambda s, b, rule=rule: st.spectral_radius(s, 0.05, tau32, b, momentum=rule))
        sec_grid = best_time(lambda g=g: g(sharp, betas).block_until_ready(), repeat=3)
        q, b = jnp.broadcast_arrays(0.05 * sharp, betas)
        _, certified = dominant_root.certified_spectral_radius(q, b, tau32, rule)
        print(
            f"  {rule}: {sec_grid / 65536 * 1e6:.2f} us/pt (one device); "
            f"{float(certified.mean()) * 100:.2f}% of points certified without eigenvalues"
        )
        if rule == "heavy_ball":
            per_jax = sec_grid / (256 * 256)
            grid_vals = np.asarray(g(sharp, betas))
    err = float(np.max(np.abs(grid_vals[idx[:, 0], idx[:, 1]] / np.array(loop) - 1)))
    print(
        f"spectral radius: {per_jax * 1e6:.2f} us/pt (jit, 256x256 grid, tau=32, heavy_ball) vs "
        f"{per_np * 1e6:.1f} us/pt (numpy eigvals loop, {len(idx)} points); "
        f"max rel diff {err:.1e}"
    )
    results.append(
        report("spectral radius grid speed-up over numpy loop", per_np / per_jax, "x", 20)
    )
    print(
        f"process CPU / wall during the best timed jax calls: "
        f"{min(CPU_SHARE):.2f}..{max(CPU_SHARE):.2f}"
    )
    print(f"load average {os.getloadavg()}")
    print(f"{sum(results)}/{len(results)} targets met")


if __name__ == "__main__":
    main()
