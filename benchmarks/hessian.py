"""Benchmark: time to the largest Hessian eigenvalue at relative error <= 1e-4.

Compares ``stability.hessian_spectrum`` (JAX, Lanczos) with PyHessian
(power iteration) and hessian-eigenthings 1.0 (power iteration and Lanczos) on the
SAME weights (copied from JAX into equivalent torch models, losses checked to
agree), the same data (one full batch each) and the same thread count
(``torch.set_num_threads`` = the CPU count XLA's CPU client uses).

    python benchmarks/hessian.py            # writes benchmarks/RESULTS-hessian.md

Device-agnostic: JAX runs on its default backend (GPU/TPU if present; the torch
peers then stay on CPU unless ``--torch-device cuda``). Float32 throughout.

Protocol (per model):
- reference: ``hessian_spectrum`` in float64 (MLP) or float32 (CNN) with
  ``tol=1e-7`` (Ritz residual), a long converged Lanczos run;
- ours: ``tol=1e-4`` on the Ritz residual (a guaranteed bound on the error),
  ``converge_smallest=False``; cold = first call (trace + compile + run), warm =
  second call (compiled code reused), compile time = cold - warm;
- PyHessian ``hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(
  maxIter=1000, tol=t, top_n=1)``: its ``tol`` bounds the relative change between
  consecutive power-iteration estimates, not the error, so ``t`` is lowered
  (1e-5, 1e-6, 1e-7) until the achieved error is <= 1e-4; the time reported is that
  of the first sufficient ``t`` (earlier tries are not counted);
- hessian-eigenthings ``power_iteration_one(HessianOperator(...), tol=1e-4)`` (stops
  on relative residual <= tol, a guaranteed bound) and ``lanczos(op, k=1,
  max_iter=m, which="LA")``: it has no stopping test, so (a) "oracle": ``m`` is the
  smallest number of steps whose Ritz value reaches 1e-4 error (found from one
  diagnostic 30-step run, not timed) - a choice in the peer's favour that no user
  can make; (b) "a priori": ``max_iter`` doubled from 4 until its own residual
  test passes, every run timed.
The "best peer" is the fastest run that reached 1e-4, oracle settings included.
Targets: warm >= 3x faster than the best peer; cold no slower than the best peer;
one Hessian-vector product <= 2.5x one gradient (same jitted machinery).

Compile detail: the programs XLA compiled during our cold call, each with its
compile time (``jax_log_compiles``). A separate figure, NOT used for the targets:
"cold, new process with a warm persistent cache" - two fresh subprocesses with
``stability.enable_compilation_cache`` on an empty temporary directory; the first
fills it (its first call is another true cold start), the second's first call loads
the compiled programs from disk. Targets are judged on the true first compile only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 for the MLP reference only

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hessian_models as hm  # noqa: E402

from stability import hessian_spectrum  # noqa: E402
from stability import hvp as H  # noqa: E402

TARGET_ERR = 1e-4


def hvp_vs_grad(loss, p, batch, repeat=15):
    """Warm time (s) of one HVP (the one-batch product the host loop runs) and of one
    gradient, through stability.hvp's jitted code: the fastest of ``repeat`` runs
    each (noise on a shared CPU only adds time), interleaved so that both see the
    same machine state."""
    mask = H.trainable_mask(p)
    main, rem, _ = H.place_batch(batch, None)
    n = H.flatten_params(p, mask).flat.shape[0]
    v = jnp.ones((n,), jnp.float32)
    fns = (
        lambda: H.hvp_sum(loss, mask, p, main, rem, v, None),
        lambda: H.grad_sum(loss, mask, p, main, rem),
    )
    times = [[], []]
    for i in range(repeat + 1):
        for fn, ts in zip(fns, times, strict=True):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            if i:  # the first round compiles
                ts.append(time.perf_counter() - t)
    return min(times[0]), min(times[1])


def hvp_flops(loss, p, batch):
    """Floating-point operations of one Hessian-vector product (XLA's cost analysis
    of the compiled product we time)."""
    mask = H.trainable_mask(p)
    main, rem, _ = H.place_batch(batch, None)
    n = H.flatten_params(p, mask).flat.shape[0]
    v = jnp.ones((n,), jnp.float32)
    cost = H.hvp_sum.lower(loss, mask, p, main, rem, v, None).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def matmul_peak(size=2048):
    """Best float32 matrix-multiply rate (FLOP/s) XLA reaches on this device: the
    ceiling for any product made of matrix multiplies."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    jax.block_until_ready(mm(a))
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(mm(a))
        ts.append(time.perf_counter() - t)
    return 2.0 * size**3 / min(ts)


REPEAT = [1]  # timed runs per measurement; the minimum is reported (noisy shared CPU)


def best(fn):
    """(min wall time over REPEAT runs, result of the last run)."""
    ts = []
    for _ in range(REPEAT[0]):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return min(ts), out


def _ours_kw():
    devs = jax.devices()[:1]
    return dict(k=1, tol=TARGET_ERR, max_hvps=200, converge_smallest=False, devices=devs)


class _CompileLog(logging.Handler):
    """Collects (program, XLA compile seconds) from ``jax_log_compiles``."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.programs = []

    def emit(self, record):
        m = re.match(r"Finished XLA compilation of (.*) in ([0-9.e+-]+) sec", record.getMessage())
        if m:
            self.programs.append((m.group(1), float(m.group(2))))


def run_ours(loss, p, batch):
    kw = _ours_kw()
    jax.block_until_ready((p, batch))
    log = _CompileLog()
    logging.getLogger("jax").addHandler(log)
    jax.config.update("jax_log_compiles", True)
    try:
        t = time.perf_counter()
        r = hessian_spectrum(loss, p, batch, **kw)
        cold = time.perf_counter() - t
    finally:
        jax.config.update("jax_log_compiles", False)
        logging.getLogger("jax").removeHandler(log)
    warm, r = best(lambda: hessian_spectrum(loss, p, batch, **kw))
    return dict(cold=cold, warm=warm, result=r, programs=log.programs)


SETUPS = {
    "mlp": lambda: (hm.mlp_setup(train_steps=100), hm.mlp_loss),
    "cnn": lambda: (hm.cnn_setup(), hm.cnn_loss),
}


def cache_probe(name, cache_dir):
    """In a fresh process: the first call with the persistent cache at ``cache_dir``."""
    import stability

    stability.enable_compilation_cache(cache_dir)
    (p, batch), loss = SETUPS[name]()
    jax.block_until_ready((p, batch))
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None
    )
    n0 = len(hits)
    t = time.perf_counter()
    r = hessian_spectrum(loss, p, batch, **_ours_kw())
    cold = time.perf_counter() - t
    print(json.dumps(dict(cold=cold, hvps=r.num_hvps, hits=len(hits) - n0)))


def run_cache_figure(name):
    """(first process: empty cache, second process: warm cache) first-call times."""
    out = []
    script = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory(prefix="stability-cache-") as d:
        for _ in range(2):
            cmd = [sys.executable, script, "--cache-probe", name, "--cache-dir", d]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def finish_ours(ours, ref):
    r = ours["result"]
    err = abs(r.sharpness - ref) / abs(ref)
    return dict(ours, err=err, hvps=r.num_hvps, bound=r.sharpness_error / ref)


def run_pyhessian(model, batch_t, ref):
    import torch
    from pyhessian import hessian

    crit = torch.nn.CrossEntropyLoss()
    tries = []
    for tol in (1e-5, 1e-6, 1e-7):

        def one(tol=tol):
            torch.manual_seed(0)
            hc = hessian(model, crit, data=batch_t, cuda=False)
            return hc.eigenvalues(maxIter=1000, tol=tol, top_n=1)[0]

        dt, ev = best(one)
        err = abs(ev[0] - ref) / abs(ref)
        tries.append((tol, dt, err))
        if err <= TARGET_ERR:
            break
    tol, dt, err = tries[-1]
    return dict(time=dt, err=err, setting=f"tol={tol:g}", tries=tries)


def _he_operator(model, batch_t):
    import torch
    from hessian_eigenthings import HessianOperator, supervised_loss

    return HessianOperator(
        model, [batch_t], supervised_loss(torch.nn.CrossEntropyLoss()), full_dataset=True
    )


def run_he_power(model, batch_t, ref):
    from hessian_eigenthings import power_iteration_one

    op = _he_operator(model, batch_t)
    dt, (ev, _, _, iters, conv) = best(
        lambda: power_iteration_one(op, max_iter=1000, tol=TARGET_ERR, seed=0)
    )
    return dict(time=dt, err=abs(ev - ref) / abs(ref), setting=f"tol=1e-4, {iters} it")


def run_he_lanczos(model, batch_t, ref):
    import torch
    from hessian_eigenthings import lanczos, lanczos_tridiagonal

    op = _he_operator(model, batch_t)
    # Diagnostic (untimed): smallest step count whose top Ritz value is within 1e-4.
    gen = torch.Generator().manual_seed(0)
    v0 = torch.randn(op.size, dtype=op.dtype, generator=gen)
    td = lanczos_tridiagonal(op, v0, 30, reorthogonalize=True)
    a, b = np.asarray(td.alphas, np.float64), np.asarray(td.betas, np.float64)
    m_min = None
    for m in range(2, len(a) + 1):
        t_m = np.diag(a[:m]) + np.diag(b[: m - 1], 1) + np.diag(b[: m - 1], -1)
        if abs(np.linalg.eigvalsh(t_m)[-1] - ref) / abs(ref) <= TARGET_ERR:
            m_min = m
            break
    m_min = m_min or len(a)
    dt, res = best(
        lambda: lanczos(op, k=1, max_iter=m_min, which="LA", seed=0, reorthogonalize=True)
    )
    ev = float(res.eigenvalues[0])
    return dict(
        time=dt, err=abs(ev - ref) / abs(ref), setting=f"max_iter={m_min} (oracle)", steps=m_min
    )


def run_he_lanczos_apriori(model, batch_t, ref):
    """How a user without the answer runs it: double max_iter (4, 8, 16, ...) until
    its own residual test (``converged``: residual < 1e-4 |lambda|) passes; all runs
    are timed (the library has no restart)."""
    from hessian_eigenthings import lanczos

    op = _he_operator(model, batch_t)

    def doubling():
        m = 4
        while True:
            res = lanczos(
                op, k=1, max_iter=m, tol=TARGET_ERR, which="LA", seed=0, reorthogonalize=True
            )
            if bool(res.converged[0]) or m >= 64:
                return res, m
            m *= 2

    dt, (res, m) = best(doubling)
    ev = float(res.eigenvalues[0])
    return dict(time=dt, err=abs(ev - ref) / abs(ref), setting=f"doubling to max_iter={m}")


def bench(name, key, torch_model, image, log):
    import torch

    (p, batch), loss = SETUPS[key]()
    n = sum(x.size for x in jax.tree_util.tree_leaves(p))
    nex = batch[0].shape[0]
    log(f"\n## {name}: {n:,} parameters, {nex} examples, float32\n")
    tm = torch_model(p)
    bt = hm.torch_data(batch, image=image)
    lj = float(loss(p, batch))
    with torch.no_grad():
        lt = float(torch.nn.functional.cross_entropy(tm(bt[0]), bt[1]))
    log(f"loss JAX {lj:.8g}, torch {lt:.8g} (relative difference {abs(lj - lt) / lj:.1e})")

    # Ours first, so that "cold" really compiles (the reference run below would
    # compile the same float32 product).
    ours = run_ours(loss, p, batch)

    # Reference: long converged Lanczos (float64 for the MLP).
    t = time.perf_counter()
    if name.startswith("MLP"):
        p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), p)
        b64 = (batch[0].astype(jnp.float64), batch[1])
        rr = hessian_spectrum(
            loss, p64, b64, k=1, tol=1e-9, max_hvps=300, devices=jax.devices()[:1]
        )
        how = "float64, tol=1e-9"
    else:
        rr = hessian_spectrum(
            loss, p, batch, k=1, tol=1e-6, max_hvps=150, devices=jax.devices()[:1],
            converge_smallest=False,
        )  # fmt: skip
        how = "float32, tol=1e-6 (gap bound)"
    ref = rr.sharpness
    log(f"reference sharpness {ref:.8g} ({how}, {rr.num_hvps} HVPs, residual "
        f"{rr.sharpness_error:.1e}, {time.perf_counter() - t:.1f} s)")  # fmt: skip

    t_hvp, t_grad = hvp_vs_grad(loss, p, batch)
    cache_runs = run_cache_figure(key)
    ours = finish_ours(ours, ref)
    peers = {}
    peers["PyHessian (power)"] = run_pyhessian(tm, bt, ref)
    peers["hessian-eigenthings power"] = run_he_power(tm, bt, ref)
    peers["hessian-eigenthings lanczos"] = run_he_lanczos(tm, bt, ref)
    peers["hessian-eigenthings lanczos, a priori"] = run_he_lanczos_apriori(tm, bt, ref)

    ok = {k: v for k, v in peers.items() if v["err"] <= TARGET_ERR}
    best_name = min(ok or peers, key=lambda k: (ok or peers)[k]["time"])
    best = peers[best_name]["time"]
    rows = [
        "| tool | setting | time (s) | rel. error | HVPs |",
        "|---|---|---|---|---|",
        f"| stability (warm) | tol=1e-4 (gap bound) | {ours['warm']:.3f} | {ours['err']:.1e} | "
        f"{ours['hvps']} |",
        f"| stability (cold, incl. compile) | same | {ours['cold']:.3f} | {ours['err']:.1e} | "
        f"{ours['hvps']} |",
    ]
    for k, v in peers.items():
        rows.append(f"| {k} | {v['setting']} | {v['time']:.3f} | {v['err']:.1e} | |")
    log("\n".join(rows))
    if "tries" in peers["PyHessian (power)"]:
        tr = ", ".join(
            f"tol={a:g}: {b:.2f} s, err {c:.1e}" for a, b, c in peers["PyHessian (power)"]["tries"]
        )
        log(f"\nPyHessian tries: {tr}")
    progs = ours["programs"]
    log(f"\nXLA compilation during our cold call: {len(progs)} program(s), "
        f"{sum(t for _, t in progs):.2f} s: "
        + ", ".join(f"{nm} {t:.3f} s" for nm, t in progs))  # fmt: skip
    fill, warm_cache = cache_runs
    log(f"\nSeparate figure, not used for the targets: cold in a NEW process with "
        f"`stability.enable_compilation_cache`: empty cache {fill['cold']:.3f} s "
        f"({fill['hits']} cache hits); warm persistent cache {warm_cache['cold']:.3f} s "
        f"({warm_cache['hits']} cache hits, {warm_cache['hvps']} HVPs)")  # fmt: skip
    compile_t = ours["cold"] - ours["warm"]
    r_warm = best / ours["warm"]
    r_cold = best / ours["cold"]
    r_hvp = t_hvp / t_grad
    log(f"\ncompile time (cold - warm): {compile_t:.2f} s; best peer reaching 1e-4: {best_name} "
        f"({best:.3f} s)\n")  # fmt: skip
    fair = {k: v for k, v in ok.items() if "oracle" not in v["setting"]}
    if fair:
        fb = min(fair, key=lambda k: fair[k]["time"])
        log(f"best peer without oracle settings: {fb} ({fair[fb]['time']:.3f} s): warm "
            f"speed-up {fair[fb]['time'] / ours['warm']:.2f}x, cold "
            f"{fair[fb]['time'] / ours['cold']:.2f}x\n")  # fmt: skip
    log("| target | value | goal | result |\n|---|---|---|---|")
    log(
        f"| warm speed-up vs best peer | {r_warm:.2f}x | >= 3x | "
        f"{'PASS' if r_warm >= 3 else 'MISS'} |"
    )
    log(
        f"| cold speed-up vs best peer | {r_cold:.2f}x | >= 1x | "
        f"{'PASS' if r_cold >= 1 else 'MISS'} |"
    )
    log(f"| one HVP / one gradient | {t_hvp * 1e3:.1f} ms / {t_grad * 1e3:.1f} ms = {r_hvp:.2f} | "
        f"<= 2.5 | {'PASS' if r_hvp <= 2.5 else 'MISS'} |")  # fmt: skip
    log(f"| our error <= 1e-4 | {ours['err']:.1e} | <= 1e-4 | "
        f"{'PASS' if ours['err'] <= TARGET_ERR else 'MISS'} |")  # fmt: skip

    # How far can the warm ratio go on this machine? A bound, not a measurement of
    # a faster code: the oracle peer's step count of products, each at the best
    # matrix-multiply rate, and nothing else.
    flops, peak = hvp_flops(loss, p, batch), matmul_peak()
    steps = peers["hessian-eigenthings lanczos"]["steps"]
    floor = steps * flops / peak
    log(f"\nCeiling on this machine: one product is {flops / 1e9:.2f} GFLOP (XLA cost "
        f"analysis), measured {t_hvp * 1e3:.1f} ms = {flops / t_hvp / 1e9:.0f} GFLOP/s; the "
        f"best float32 matrix multiply here runs at {peak / 1e9:.0f} GFLOP/s. {steps} products "
        f"(the oracle peer's step count) at that rate with zero overhead take {floor:.3f} s: "
        f"at most {best / floor:.2f}x faster than the best peer ({best:.3f} s), for any code "
        f"doing these FLOPs.")  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS-hessian.md"))
    ap.add_argument("--only", choices=["mlp", "cnn"], default=None)
    ap.add_argument("--repeat-mlp", type=int, default=3, help="timed runs per tool (min kept)")
    ap.add_argument("--repeat-cnn", type=int, default=1)
    ap.add_argument("--cache-probe", choices=["mlp", "cnn"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--date", default=None, help="date written into the results (YYYY-MM-DD)")
    args = ap.parse_args()
    if args.cache_probe:
        cache_probe(args.cache_probe, args.cache_dir)
        return

    import torch

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    import flax
    import pyhessian  # noqa: F401

    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    dev = jax.devices()[0]
    log("# Hessian spectrum benchmark (benchmarks/hessian.py)\n")
    date = args.date or time.strftime("%Y-%m-%d", time.gmtime())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    log(f"- date: {date}; load average (1, 5, 15 min) at start: {load}")
    log(f"- machine: {platform.processor() or platform.machine()}, {threads} CPU cores visible, "
        f"{platform.platform()}")  # fmt: skip
    log(f"- JAX {jax.__version__} on {dev.platform} ({dev.device_kind}), flax {flax.__version__}; "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"hessian-eigenthings 1.0.0a5, pyhessian 0.1")  # fmt: skip
    log("- one full batch per model for every tool; times are wall-clock, the minimum of "
        f"{args.repeat_mlp} (MLP) / {args.repeat_cnn} (CNN) runs per tool, all measured in this "
        "one process; cold = the very first call (one run)")  # fmt: skip
    t0 = time.perf_counter()
    if args.only in (None, "mlp"):
        REPEAT[0] = args.repeat_mlp
        bench("MLP on digits", "mlp", hm.torch_mlp, False, log)
    if args.only in (None, "cnn"):
        REPEAT[0] = args.repeat_cnn
        bench("CNN on CIFAR-shaped synthetic data", "cnn", hm.torch_cnn, True, log)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    log(
        f"\ntotal benchmark wall time {time.perf_counter() - t0:.0f} s; load average at end: {load}"
    )
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
