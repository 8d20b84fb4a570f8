"""Benchmark: products per sharpness check along a real training run, warm-started
(``SharpnessTracker`` default) against cold starts.

    python benchmarks/tracking.py        # writes benchmarks/RESULTS-tracking.md

Protocol (fixed before measuring): a tanh MLP 64 -> 256 -> 10 (float32, 19,210
parameters) on all 1,797 bundled digits, trained from a fixed initialization with
``optax.sgd(lr=0.5)``, cross-entropy, full-batch gradient steps, for 2,000 steps.
Two trackers watch the same run, with the same loss object, data and tolerance
(``tol=1e-3``, relative residual), a check every 50 steps (41 checks):
``SharpnessTracker(..., warm_start=True)`` (the default: warm, extrapolated
starts, a cold start every 20th check) and ``SharpnessTracker(...,
warm_start=False)`` (every check cold).
Reported: the mean products per check after the first, warm against cold, with
and without the periodic cold checks; the wall time of the checks of each
tracker (all, the first, which compiles, and the median of the others; the
parameters are made ready before each timed check, so that the asynchronous
training step is not counted); the largest difference between the two trackers' sharpness against
their error bars. Target (issue 10): warm at least 3x fewer products than cold
after the first check.
"""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import stability

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS-tracking.md")
STEPS, EVERY, LR, TOL, HIDDEN = 2000, 50, 0.5, 1e-3, 256


def loss(p, batch):
    x, y = batch
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def init(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w1": jnp.asarray(rng.standard_normal((64, HIDDEN)) / 8.0, jnp.float32),
        "b1": jnp.zeros((HIDDEN,), jnp.float32),
        "w2": jnp.asarray(rng.standard_normal((HIDDEN, 10)) / np.sqrt(HIDDEN), jnp.float32),
        "b2": jnp.zeros((10,), jnp.float32),
    }


def main():
    x, y = stability.load_digits(dtype=jnp.float32)
    batch = (x, y)
    params = init()
    opt = optax.sgd(LR)
    state = opt.init(params)

    @jax.jit
    def update(params, state, batch):
        g = jax.grad(loss)(params, batch)
        updates, state = opt.update(g, state)
        return optax.apply_updates(params, updates), state

    warm = stability.SharpnessTracker(loss, batch, lr=LR, every=EVERY, tol=TOL)
    cold = stability.SharpnessTracker(loss, batch, lr=LR, every=EVERY, tol=TOL, warm_start=False)
    tw, tc = [], []  # wall time of each check
    t0 = time.perf_counter()
    for step in range(STEPS + 1):
        # The update runs asynchronously: wait for it, so that a check's time is
        # the check's own (otherwise the first tracker called absorbs the update).
        params = jax.block_until_ready(params)
        t = time.perf_counter()
        if warm(params, step) is not None:
            tw.append(time.perf_counter() - t)
        t = time.perf_counter()
        if cold(params, step) is not None:
            tc.append(time.perf_counter() - t)
        params, state = update(params, state, batch)
    t_warm, t_cold = sum(tw), sum(tc)
    total = time.perf_counter() - t0

    hw, hc = warm.arrays(), cold.arrays()
    w_all = hw["num_hvps"][1:].mean()
    w_warm = hw["num_hvps"][1:][hw["warm"][1:].astype(bool)].mean()
    c_all = hc["num_hvps"][1:].mean()
    diff = np.abs(hw["sharpness"] - hc["sharpness"])
    bar = hw["error"] + hc["error"]
    lines = [
        "# Sharpness tracking benchmark (benchmarks/tracking.py)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average at "
        f"start of write: {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores; JAX {jax.__version__} "
        f"on {jax.default_backend()}",
        f"- run: MLP 64-{HIDDEN}-10 float32 "
        f"({sum(v.size for v in jax.tree_util.tree_leaves(params)):,} parameters), 1,797 "
        f"digits, optax.sgd({LR}) full batch, {STEPS} steps, a check every {EVERY} steps "
        f"({len(hw['step'])} checks), tol={TOL:g}; whole run {total:.1f} s",
        "",
        "| tracker | mean products per check after the first | all checks (s) | first "
        "check (s) | median check after the first (s) |",
        "|---|---|---|---|---|",
        f"| warm (default: warm, extrapolated, cold every {warm.cold_every}th check) | "
        f"{w_all:.2f} | {t_warm:.2f} | "
        f"{tw[0]:.2f} | {np.median(tw[1:]):.3f} |",
        f"| warm checks only | {w_warm:.2f} | | | |",
        f"| cold (warm_start=False) | {c_all:.2f} | {t_cold:.2f} | {tc[0]:.2f} | "
        f"{np.median(tc[1:]):.3f} |",
        "",
        f"sharpness at the first and last check: {hw['sharpness'][0]:.4f} -> "
        f"{hw['sharpness'][-1]:.4f} (stable limit 2 / lr = {warm.threshold:.4f}); largest "
        f"|warm - cold| = {diff.max():.2e}, {int((diff <= bar).sum())} of {len(diff)} checks "
        f"within the sum of the two error bars",
        "",
        f"- TARGET warm >= 3x fewer products than cold after the first check (default "
        f"tracker): {c_all:.2f} / {w_all:.2f} = {c_all / w_all:.2f}x -> "
        f"{'PASS' if c_all / w_all >= 3 else 'MISS'}",
        f"- warm checks only: {c_all / w_warm:.2f}x; warm checks that stopped after one "
        f"product: {int((hw['num_hvps'][hw['warm'].astype(bool)] == 1).sum())} of "
        f"{int(hw['warm'].sum())}",
        "",
        "Products per check (warm): " + " ".join(str(int(v)) for v in hw["num_hvps"]),
        "",
        "Products per check (cold): " + " ".join(str(int(v)) for v in hc["num_hvps"]),
    ]
    text = "\n".join(lines) + "\n"
    with open(OUT, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
