"""Benchmark: product time, top-eigenvalue time and peak memory from 1e4 to 1e7
parameters, with and without the Krylov basis, against one training step.

    python benchmarks/large_model.py [--sizes 1e4 1e5 1e6 1e7]
    # writes benchmarks/RESULTS-large-model.md

Protocol (fixed before measuring): a float32 tanh MLP 256 -> h -> h -> 10 with h
chosen for about 1e4, 1e5, 1e6 and 1e7 parameters, 512 examples (one batch;
inputs uniform in [0, 1) like pixel intensities, random labels), cross-entropy.
Every measurement runs in a NEW Python process, whose peak resident memory
(``ru_maxrss``) is read at its end:

- ``idle``: imports, model and data built, nothing computed (the baseline);
- ``train``: one jitted SGD step (value_and_grad + update), run twice;
- ``basis``: the README call ``hessian_spectrum(loss, params, (x, y), k=1,
  tol=1e-3)`` (Krylov basis kept; the default), run twice: first and warm time;
- ``free``: the same with ``reorthogonalize=False`` (three vectors, no basis).

Also one product's warm time (the fastest of 3, in the ``basis`` process).
Memory is reported as peak RSS and as a multiple of the training step's peak;
the issue's target: basis-free peak <= 3x the training step's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS-large-model.md")
N_EX, N_IN, N_OUT = 512, 256, 10


def hidden_for(params: float) -> int:
    """h with 256 h + h^2 + 10 h (+ biases) closest to ``params``."""
    import math

    b = N_IN + N_OUT + 2
    return max(4, round((-b + math.sqrt(b * b + 4 * params)) / 2))


def child(mode: str, hidden: int) -> dict:
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from stability import hessian_spectrum
    from stability.curvature import hvp as H

    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.standard_normal((N_IN, hidden)) / 16, jnp.float32),
        "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": jnp.asarray(rng.standard_normal((hidden, hidden)) / np.sqrt(hidden), jnp.float32),
        "b2": jnp.zeros((hidden,), jnp.float32),
        "w3": jnp.asarray(rng.standard_normal((hidden, N_OUT)) / np.sqrt(hidden), jnp.float32),
    }
    x = jnp.asarray(rng.random((N_EX, N_IN)), jnp.float32)  # in [0, 1), like pixels
    y = jnp.asarray(rng.integers(0, N_OUT, N_EX), jnp.int32)

    def loss(p, batch):
        xb, yb = batch
        h = jnp.tanh(xb @ p["w1"] + p["b1"])
        h = jnp.tanh(h @ p["w2"] + p["b2"])
        return optax.softmax_cross_entropy_with_integer_labels(h @ p["w3"], yb).mean()

    out = {"params": int(sum(v.size for v in params.values()))}
    if mode == "train":

        @jax.jit
        def step(p, batch):
            val, g = jax.value_and_grad(loss)(p, batch)
            return jax.tree_util.tree_map(lambda a, b: a - 0.1 * b, p, g), val

        for _ in range(2):
            t = time.perf_counter()
            p2, val = jax.block_until_ready(step(params, (x, y)))
            out["step_s"] = time.perf_counter() - t
    elif mode in ("basis", "free"):
        kw = {} if mode == "basis" else {"reorthogonalize": False}
        for key in ("first_s", "warm_s"):
            t = time.perf_counter()
            r = hessian_spectrum(loss, params, (x, y), k=1, tol=1e-3, **kw)
            out[key] = time.perf_counter() - t
        out["sharpness"], out["hvps"] = r.sharpness, r.num_hvps
        if mode == "basis":
            mask = H.trainable_mask(params)
            main, rem, _ = H.place_batch((x, y), H.make_mesh(None))
            v = jnp.ones((out["params"],), jnp.float32)
            ts = []
            for _ in range(4):
                t = time.perf_counter()
                jax.block_until_ready(H.hvp_sum(loss, mask, params, main, rem, v, None))
                ts.append(time.perf_counter() - t)
            out["product_s"] = min(ts[1:])
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(mode: str, hidden: int) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(hidden)],
        capture_output=True,
        text=True,
        check=True,
    )
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="*", type=float, default=[1e4, 1e5, 1e6, 1e7])
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], int(args.child[1]))), flush=True)
        return
    import jax

    lines = [
        "# Large-model benchmark (benchmarks/large_model.py)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average at start: "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores; JAX {jax.__version__} on "
        f"{jax.default_backend()}",
        f"- model: float32 tanh MLP {N_IN}-h-h-{N_OUT}, {N_EX} examples, cross-entropy; "
        "README call hessian_spectrum(loss, params, (x, y), k=1, tol=1e-3); every column "
        "from its own process",
        "",
        "| parameters | one product (s) | top eigenvalue, first / warm (s), products | "
        "basis-free first / warm (s), products | peak RSS (MiB): idle / train step / basis / "
        "basis-free | over the training step's peak: basis / basis-free |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    rows = []
    for size in args.sizes:
        h = hidden_for(size)
        r = {m: run_child(m, h) for m in ("idle", "train", "basis", "free")}
        rows.append(r)
        tr = r["train"]["peak_mib"]
        line = (
            f"| {r['idle']['params']:,} | {r['basis']['product_s']:.3f} | "
            f"{r['basis']['first_s']:.2f} / {r['basis']['warm_s']:.2f}, {r['basis']['hvps']} | "
            f"{r['free']['first_s']:.2f} / {r['free']['warm_s']:.2f}, {r['free']['hvps']} | "
            f"{r['idle']['peak_mib']:.0f} / {tr:.0f} / {r['basis']['peak_mib']:.0f} / "
            f"{r['free']['peak_mib']:.0f} | {r['basis']['peak_mib'] / tr:.2f}x / "
            f"{r['free']['peak_mib'] / tr:.2f}x |"
        )
        lines.append(line)
        print(line, flush=True)
    big = rows[-1]
    ratio = big["free"]["peak_mib"] / big["train"]["peak_mib"]
    lines += [
        "",
        f"- TARGET basis-free peak <= 3x the training step's peak at "
        f"{big['idle']['params']:,} parameters: {ratio:.2f}x -> "
        f"{'PASS' if ratio <= 3 else 'MISS'}",
        f"- sharpness agreement basis vs basis-free at the largest size: "
        f"{big['basis']['sharpness']:.6g} vs {big['free']['sharpness']:.6g}",
    ]
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[-3:]))


if __name__ == "__main__":
    main()
