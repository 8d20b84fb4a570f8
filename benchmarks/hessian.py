"""Benchmark: the largest Hessian eigenvalue at relative error <= 1e-4, with the
README's call, against PyHessian and hessian-eigenthings run as their users run them.

Compares ``stability.hessian_spectrum`` (JAX, Lanczos) with PyHessian (power
iteration) and hessian-eigenthings 1.0.0a5 (Lanczos, power iteration) on the SAME
weights (copied from JAX into equivalent torch models, losses checked to agree), the
same data (one full batch each) and the same thread count (``torch.set_num_threads``
= the CPU count XLA's CPU client uses).

    python benchmarks/hessian.py [--only mlp]   # writes benchmarks/RESULTS-hessian.md

Device-agnostic: JAX runs on its default backend; the torch peers stay on CPU.
Float32 throughout (the MLP reference is float64).

Protocol (per model):
- reference: ``hessian_spectrum`` in float64 (MLP, ``tol=1e-9``) or float32 (CNN,
  ``tol=1e-5``), a long run, its Ritz residual printed; every error below is
  measured against it.
- ours, exactly the README's call and nothing else:
  ``hessian_spectrum(loss, params, (x, y), k=1, tol=1e-4)`` (no ``devices``,
  ``max_hvps``, ``converge_smallest`` or other switch). First call = the very first
  call in this process (trace + compile + run); warm = later calls (minimum of the
  repeats); fresh process = the first call in a NEW Python process that imports
  stability, loads the same weights and data (``jnp.asarray``), and times only the
  call (import and model-building times are printed separately). Products =
  ``num_hvps`` of the result.
- peers as their users run them:
  - PyHessian ``hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(
    maxIter=1000, tol=t, top_n=1)``: its ``tol`` bounds the relative change between
    consecutive power-iteration estimates, not the error, so ``t`` is lowered
    (1e-4, 1e-5, 1e-6, 1e-7) until the achieved error is <= 1e-4; the time reported
    is that of the first sufficient ``t`` (earlier tries are not counted: in the
    peer's favour). Its documented default ``eigenvalues()`` (maxIter=100,
    tol=1e-3) is a row of its own.
  - hessian-eigenthings 1.0.0a5 has no ``compute_hessian_eigenthings`` (the 0.x API
    was removed); its README's call is ``lanczos(HessianOperator(model, data,
    supervised_loss(loss_fn)), k=..., seed=0)`` with every other default: for k=1
    that is ``max_iter = 2 * k = 2`` Lanczos steps (no stopping test; ``tol`` only
    sets the ``converged`` flag). Run so, with one full-batch dataloader.
  The "best peer" of the targets is the fastest of these user-run peers whose
  error is <= 1e-4. Extra rows, information only and never the best peer:
  hessian-eigenthings ``power_iteration_one(op, tol=1e-4)``, ``lanczos`` with the
  "oracle" step count (the smallest whose Ritz value reaches 1e-4, found from an
  untimed 30-step run: no user can choose it) and "a priori" (``max_iter`` doubled
  from 4 until its own residual test passes, every run timed).
  Each user-run peer's first call is also timed in a fresh process (imports torch
  and the peer, loads the same weights, times only the call).

Targets (85k MLP; the CNN prints the same lines, for information):
- products of the default call <= 10;
- warm: best peer time / our warm time >= 1.8;
- FLOP ceiling: ceiling time / our warm time >= 0.8, where ceiling time = OUR
  product count x FLOPs of one product (XLA cost analysis of the compiled product)
  / the best float32 matrix-multiply rate measured here (2048^3 matmul);
- fresh process: best peer's fresh-process first call / ours >= 0.6 (the fastest
  fresh-process first call among the user-run peers that reach 1e-4).

Information lines (no target; added at 11:55 UTC on 2026-11-30 after the misses
above, the targets' method unchanged): the loop floor, i.e. our product count run
back to back with nothing between (each product's result read on the host, as the
loop reads it), fastest of 5, which bounds what any host-driven loop making our
products can reach; and, for the MLP, the product count of the README call over
start seeds 0-29.
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
import jax.numpy as jnp
import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import hessian_models as hm  # noqa: E402

from stability import hessian_spectrum  # noqa: E402
from stability.curvature import hvp as H  # noqa: E402

TARGET_ERR = 1e-4
PYH_TOLS = (1e-4, 1e-5, 1e-6, 1e-7)


def users_call(loss, p, batch):
    """The README's call, verbatim: no other argument."""
    return hessian_spectrum(loss, p, batch, k=1, tol=1e-4)


def hvp_vs_grad(loss, p, batch, repeat=15):
    """Warm time (s) of one HVP (the one-batch product the host loop runs) and of one
    gradient, through stability.curvature.hvp's jitted code: the fastest of ``repeat`` runs
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


def products_in_sequence(loss, p, batch, count, repeat=5):
    """Wall time (s) of ``count`` products run one after another as a loop runs them
    (each waits for the previous one's result on the host; no Lanczos work between
    them): the fastest of ``repeat`` runs. This is the time of any host-driven loop
    that makes our number of products with this product, i.e. the floor below which
    only fewer or faster products can take ours."""
    mask = H.trainable_mask(p)
    main, rem, _ = H.place_batch(batch, None)
    n = H.flatten_params(p, mask).flat.shape[0]
    v = np.ones((n,), np.float32) / np.sqrt(n)
    best = float("inf")
    for _ in range(repeat + 1):
        t = time.perf_counter()
        w = v
        for _ in range(count):
            hv = np.asarray(H.hvp_sum(loss, mask, p, main, rem, w, None)[0])
            w = hv / np.linalg.norm(hv)
        best = min(best, time.perf_counter() - t)
    return best


def products_over_seeds(loss, p, batch, seeds=30):
    """Products of the README call for start-vector seeds ``0..seeds-1``."""
    return [hessian_spectrum(loss, p, batch, k=1, tol=1e-4, seed=s).num_hvps
            for s in range(seeds)]  # fmt: skip


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
FRESH = [1]  # fresh processes per tool; the minimum is reported, all are printed


def best(fn):
    """(min wall time over REPEAT runs, result of the last run)."""
    ts = []
    for _ in range(REPEAT[0]):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return min(ts), out


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
    jax.block_until_ready((p, batch))
    log = _CompileLog()
    logging.getLogger("jax").addHandler(log)
    jax.config.update("jax_log_compiles", True)
    try:
        t = time.perf_counter()
        r = users_call(loss, p, batch)
        first = time.perf_counter() - t
    finally:
        jax.config.update("jax_log_compiles", False)
        logging.getLogger("jax").removeHandler(log)
    warm, rw = best(lambda: users_call(loss, p, batch))
    return dict(first=first, warm=warm, result=rw, first_hvps=r.num_hvps, programs=log.programs)


SETUPS = {
    "mlp": lambda: (hm.mlp_setup(train_steps=100), hm.mlp_loss),
    "cnn": lambda: (hm.cnn_setup(), hm.cnn_loss),
}

# ------------------------------------------------------------ fresh-process probes

_PROBE = """\
import json, sys, time
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
import numpy as np
sys.path.insert(0, {bench_dir!r})
import hessian_models as hm
d = np.load({npz!r})
p = {{k[2:]: d[k] for k in d.files if k.startswith("p_")}}
x, y = d["x"], d["y"]
{build}
t2 = time.perf_counter()
{call}
t3 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, build_s=t2 - t1, call_s=t3 - t2, value=value,
                      hvps=hvps)))
"""

_TORCH_BUILD = """\
torch.set_num_threads({threads})
model = hm.torch_{key}(p)
bt = hm.torch_data((x, y), image={image})
"""

PROBES = {
    "ours": dict(
        imports="import jax\nfrom stability import hessian_spectrum",
        build="p = jax.tree_util.tree_map(jax.numpy.asarray, p)\n"
        "batch = (jax.numpy.asarray(x), jax.numpy.asarray(y))\n"
        "jax.block_until_ready((p, batch))\nloss = hm.{key}_loss",
        call="r = hessian_spectrum(loss, p, batch, k=1, tol=1e-4)\n"
        "value, hvps = r.sharpness, r.num_hvps",
    ),
    "pyhessian": dict(
        imports="import torch\nfrom pyhessian import hessian",
        build=_TORCH_BUILD,
        call="torch.manual_seed(0)\n"
        "hc = hessian(model, torch.nn.CrossEntropyLoss(), data=bt, cuda=False)\n"
        "value, hvps = float(hc.eigenvalues(maxIter=1000, tol={tol!r}, top_n=1)[0][0]), None",
    ),
    "he": dict(
        imports="import torch\n"
        "from hessian_eigenthings import HessianOperator, lanczos, supervised_loss",
        build=_TORCH_BUILD,
        call="op = HessianOperator(model, [bt], supervised_loss(torch.nn.CrossEntropyLoss()))\n"
        "res = lanczos(op, k=1, seed=0)\nvalue, hvps = float(res.eigenvalues[0]), None",
    ),
}


def fresh_first_calls(tool, key, npz, tol=None):
    """First call of ``tool`` in FRESH processes (FRESH[0] of them), timing only the
    call; returns the list of probe results."""
    spec = PROBES[tool]
    fmt = dict(key=key, threads=os.cpu_count(), image=key == "cnn", tol=tol)
    code = _PROBE.format(
        imports=spec["imports"], bench_dir=BENCH_DIR, npz=npz,
        build=spec["build"].format(**fmt), call=spec["call"].format(**fmt),
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    out = []
    for _ in range(FRESH[0]):
        res = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
        )
        if res.returncode:
            raise RuntimeError(f"fresh-process probe {tool} failed:\n{res.stderr[-3000:]}")
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def fresh_summary(runs):
    calls = [r["call_s"] for r in runs]
    return dict(
        first=min(calls), all=calls, imp=min(r["import_s"] for r in runs),
        build=min(r["build_s"] for r in runs), value=runs[0]["value"], hvps=runs[0]["hvps"],
    )  # fmt: skip


# ------------------------------------------------------------------------ peers


def run_pyhessian_default(model, batch_t, ref):
    import torch
    from pyhessian import hessian

    def one():
        torch.manual_seed(0)
        return hessian(model, torch.nn.CrossEntropyLoss(), data=batch_t, cuda=False).eigenvalues()

    dt, (ev, _) = best(one)
    return dict(time=dt, err=abs(ev[0] - ref) / abs(ref), setting="eigenvalues() defaults: "
                "maxIter=100, tol=1e-3")  # fmt: skip


def run_pyhessian(model, batch_t, ref):
    import torch
    from pyhessian import hessian

    crit = torch.nn.CrossEntropyLoss()
    tries = []
    for tol in PYH_TOLS:

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
    return dict(time=dt, err=err, setting=f"maxIter=1000, tol={tol:g}", tries=tries, tol=tol)


def _he_operator(model, batch_t):
    import torch
    from hessian_eigenthings import HessianOperator, supervised_loss

    return HessianOperator(model, [batch_t], supervised_loss(torch.nn.CrossEntropyLoss()))


def run_he_default(model, batch_t, ref):
    """The README's call: lanczos(op, k=1, seed=0), everything else default."""
    from hessian_eigenthings import lanczos

    def one():
        return lanczos(_he_operator(model, batch_t), k=1, seed=0)

    dt, res = best(one)
    ev = float(res.eigenvalues[0])
    conv = bool(res.converged[0]) if getattr(res, "converged", None) is not None else None
    setting = f"lanczos(op, k=1, seed=0): max_iter=2; own converged flag {conv}"
    return dict(time=dt, err=abs(ev - ref) / abs(ref), hvps=2, setting=setting)


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
    return dict(time=dt, err=abs(ev - ref) / abs(ref), hvps=m_min,
                setting=f"max_iter={m_min} (oracle)")  # fmt: skip


def run_he_lanczos_apriori(model, batch_t, ref):
    """Double max_iter (4, 8, 16, ...) until its own residual test (``converged``:
    residual < 1e-4 |lambda|) passes; all runs are timed (the library has no restart)."""
    from hessian_eigenthings import lanczos

    op = _he_operator(model, batch_t)

    def doubling():
        m, total = 4, 0
        while True:
            res = lanczos(
                op, k=1, max_iter=m, tol=TARGET_ERR, which="LA", seed=0, reorthogonalize=True
            )
            total += m
            if bool(res.converged[0]) or m >= 64:
                return res, m, total
            m *= 2

    dt, (res, m, total) = best(doubling)
    ev = float(res.eigenvalues[0])
    return dict(time=dt, err=abs(ev - ref) / abs(ref), hvps=total,
                setting=f"doubling to max_iter={m}")  # fmt: skip


def user_best_time(user):
    """Warm time of the fastest user-run peer within 1e-4 (inf if none)."""
    return min((v["time"] for v in user.values() if v["err"] <= TARGET_ERR), default=np.inf)


def verdict(ok):
    return "PASS" if ok else "MISS"


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

    # Ours first, so that the first call really compiles.
    ours = run_ours(loss, p, batch)

    # Reference: a long Lanczos run (float64 for the MLP).
    t = time.perf_counter()
    if key == "mlp":
        with jax.enable_x64(True):
            p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), p)
            b64 = (jnp.asarray(batch[0], jnp.float64), batch[1])
            rr = hessian_spectrum(loss, p64, b64, k=1, tol=1e-9, max_hvps=300)
        how = "float64, tol=1e-9"
    else:
        rr = hessian_spectrum(loss, p, batch, k=1, tol=1e-5, max_hvps=60)
        how = "float32, tol=1e-5"
    ref = rr.sharpness
    log(f"reference sharpness {ref:.8g} ({how}, {rr.num_hvps} HVPs, Ritz residual "
        f"{rr.sharpness_error:.1e}, converged {bool(rr.converged[0])}, "
        f"{time.perf_counter() - t:.1f} s)")  # fmt: skip

    t_hvp, t_grad = hvp_vs_grad(loss, p, batch)
    flops, peak = hvp_flops(loss, p, batch), matmul_peak()

    r = ours["result"]
    ours.update(err=abs(r.sharpness - ref) / abs(ref), hvps=r.num_hvps,
                bound=r.sharpness_error / abs(ref))  # fmt: skip
    t_seq = products_in_sequence(loss, p, batch, ours["hvps"])
    per_seed = products_over_seeds(loss, p, batch) if key == "mlp" else None

    user = {}  # peers as their users run them
    user["PyHessian, tol lowered to 1e-4 error"] = run_pyhessian(tm, bt, ref)
    user["hessian-eigenthings, README call (defaults)"] = run_he_default(tm, bt, ref)
    extra = {}  # information only
    extra["PyHessian, documented defaults"] = run_pyhessian_default(tm, bt, ref)
    extra["hessian-eigenthings power"] = run_he_power(tm, bt, ref)
    extra["hessian-eigenthings lanczos, oracle"] = run_he_lanczos(tm, bt, ref)
    extra["hessian-eigenthings lanczos, a priori"] = run_he_lanczos_apriori(tm, bt, ref)

    # Fresh processes: ours and each user-run peer, the same weights from one file.
    with tempfile.TemporaryDirectory(prefix="stability-bench-") as d:
        npz = os.path.join(d, f"{key}.npz")
        np.savez(npz, x=np.asarray(batch[0]), y=np.asarray(batch[1]),
                 **{f"p_{k}": np.asarray(v) for k, v in p.items()})  # fmt: skip
        fresh = {"ours": fresh_summary(fresh_first_calls("ours", key, npz))}
        pyh_tol = user["PyHessian, tol lowered to 1e-4 error"]["tol"]
        fresh["PyHessian, tol lowered to 1e-4 error"] = fresh_summary(
            fresh_first_calls("pyhessian", key, npz, tol=pyh_tol)
        )
        fresh["hessian-eigenthings, README call (defaults)"] = fresh_summary(
            fresh_first_calls("he", key, npz)
        )

    def fmt_err(v):
        return f"{v:.1e}" + ("" if v <= TARGET_ERR else " (> 1e-4)")

    rows = [
        "| tool | setting | time (s) | rel. error | products |",
        "|---|---|---|---|---|",
        f"| stability, warm | README call: k=1, tol=1e-4 | {ours['warm']:.3f} | "
        f"{fmt_err(ours['err'])} (bound {ours['bound']:.1e}) | {ours['hvps']} |",
        f"| stability, first call in this process | same | {ours['first']:.3f} | same | "
        f"{ours['first_hvps']} |",
    ]
    fo = fresh["ours"]
    rows.append(f"| stability, first call in a fresh process | same | {fo['first']:.3f} | "
                f"{fmt_err(abs(fo['value'] - ref) / abs(ref))} | {fo['hvps']} |")  # fmt: skip
    for k, v in user.items():
        rows.append(f"| {k} (user-run), warm | {v['setting']} | {v['time']:.3f} | "
                    f"{fmt_err(v['err'])} | {v.get('hvps', '')} |")  # fmt: skip
        f = fresh[k]
        fe = fmt_err(abs(f["value"] - ref) / abs(ref))
        rows.append(f"| {k} (user-run), first call in a fresh process | same | "
                    f"{f['first']:.3f} | {fe} | |")  # fmt: skip
    for k, v in extra.items():
        rows.append(f"| {k} (extra, not a target peer) | {v['setting']} | {v['time']:.3f} | "
                    f"{fmt_err(v['err'])} | {v.get('hvps', '')} |")  # fmt: skip
    log("\n".join(rows))
    tries = user["PyHessian, tol lowered to 1e-4 error"]["tries"]
    tr = ", ".join(f"tol={a:g}: {b:.3f} s, err {c:.1e}" for a, b, c in tries)
    log(f"\nPyHessian tries (only the last is counted): {tr}")
    log("\nFresh processes (each line: the call only; import and model/data building timed "
        "apart, minimum over processes):")  # fmt: skip
    for k, f in fresh.items():
        log(f"- {k}: first call {f['first']:.3f} s (all: "
            f"{', '.join(f'{c:.3f}' for c in f['all'])}); import {f['imp']:.2f} s; "
            f"loading weights and data {f['build']:.2f} s")  # fmt: skip
    progs = ours["programs"]
    log(f"\nXLA compilation during our first call in this process: {len(progs)} program(s), "
        f"{sum(t for _, t in progs):.2f} s: "
        + ", ".join(f"{nm} {t:.3f} s" for nm, t in progs)
        + f"; first call - warm = {ours['first'] - ours['warm']:.2f} s")  # fmt: skip
    log(f"\nOne product: {flops / 1e9:.2f} GFLOP (XLA cost analysis), measured "
        f"{t_hvp * 1e3:.1f} ms = {flops / t_hvp / 1e9:.0f} GFLOP/s (one gradient "
        f"{t_grad * 1e3:.1f} ms, ratio {t_hvp / t_grad:.2f}); best float32 matmul here "
        f"{peak / 1e9:.0f} GFLOP/s. Our {ours['hvps']} products x one product's time = "
        f"{ours['hvps'] * t_hvp:.3f} s of our warm {ours['warm']:.3f} s; the rest "
        f"({ours['warm'] - ours['hvps'] * t_hvp:.3f} s) is the numpy Lanczos steps plus "
        f"the products running slower inside the loop than the fastest isolated one "
        f"(not separated here).")  # fmt: skip
    log(
        f"\nLoop floor: our {ours['hvps']} products run one after another with nothing "
        f"between them take {t_seq:.3f} s (fastest of 5), so our Lanczos work costs "
        f"{ours['warm'] - t_seq:.3f} s of the warm {ours['warm']:.3f} s "
        f"({(ours['warm'] - t_seq) / ours['warm']:.0%}); any loop making these products "
        f"reaches at most ceiling / floor = {ours['hvps'] * flops / peak / t_seq:.2f} of "
        f"the FLOP ceiling, and at most {user_best_time(user) / t_seq:.2f}x the best peer."
    )
    if per_seed is not None:
        counts = {c: per_seed.count(c) for c in sorted(set(per_seed))}
        log(f"\nProducts of the README call over start seeds 0-{len(per_seed) - 1} (the "
            f"benchmark uses the default seed 0): "
            + ", ".join(f"{c} products: {m} seeds" for c, m in counts.items())
            + f"; median {float(np.median(per_seed)):g}.")  # fmt: skip

    # Targets.
    ok = {k: v for k, v in user.items() if v["err"] <= TARGET_ERR}
    ceiling = ours["hvps"] * flops / peak
    frac = ceiling / ours["warm"]
    lines = [f"\nTargets ({name}; best peer = fastest user-run peer with error <= 1e-4):"]
    lines.append(f"- TARGET default call products <= 10: {ours['hvps']} -> "
                 f"{verdict(ours['hvps'] <= 10)}")  # fmt: skip
    if ok:
        bn = min(ok, key=lambda k: ok[k]["time"])
        bw = ok[bn]["time"]
        lines.append(f"- TARGET warm >= 1.8x best peer: {bn} {bw:.3f} s / ours "
                     f"{ours['warm']:.3f} s = {bw / ours['warm']:.2f}x -> "
                     f"{verdict(bw / ours['warm'] >= 1.8)}")  # fmt: skip
        fn = min(ok, key=lambda k: fresh[k]["first"])
        bf = fresh[fn]["first"]
        lines.append(f"- TARGET fresh-process first call >= 0.6x best peer's: {fn} "
                     f"{bf:.3f} s / ours {fo['first']:.3f} s = {bf / fo['first']:.2f}x -> "
                     f"{verdict(bf / fo['first'] >= 0.6)}")  # fmt: skip
    else:
        lines.append("- TARGET warm >= 1.8x best peer: no user-run peer reached 1e-4 -> MISS "
                     "(no comparison)")  # fmt: skip
        lines.append("- TARGET fresh-process first call >= 0.6x best peer's: no user-run peer "
                     "reached 1e-4 -> MISS (no comparison)")  # fmt: skip
    lines.append(f"- TARGET warm >= 80 % of the FLOP ceiling: ceiling = our {ours['hvps']} "
                 f"products x {flops / 1e9:.2f} GFLOP / {peak / 1e9:.0f} GFLOP/s = "
                 f"{ceiling:.3f} s; ceiling / our warm {ours['warm']:.3f} s = "
                 f"{frac:.2f} -> {verdict(frac >= 0.8)}")  # fmt: skip
    lines.append(f"- check: our error <= 1e-4: {ours['err']:.1e} -> "
                 f"{verdict(ours['err'] <= TARGET_ERR)}")  # fmt: skip
    for k, v in user.items():
        if k not in ok:
            lines.append(f"- note: {k} returns in {v['time']:.3f} s warm / "
                         f"{fresh[k]['first']:.3f} s fresh but with error {v['err']:.1e} > "
                         f"1e-4, so it is not the best peer (ours is "
                         f"{v['time'] / ours['warm']:.2f}x its warm speed)")  # fmt: skip
    log("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(BENCH_DIR, "RESULTS-hessian.md"))
    ap.add_argument("--only", choices=["mlp", "cnn"], default=None)
    ap.add_argument("--repeat-mlp", type=int, default=3, help="timed runs per tool (min kept)")
    ap.add_argument("--repeat-cnn", type=int, default=1)
    ap.add_argument("--fresh-mlp", type=int, default=3, help="fresh processes per tool")
    ap.add_argument("--fresh-cnn", type=int, default=1)
    ap.add_argument("--date", default=None, help="date written into the results (YYYY-MM-DD)")
    args = ap.parse_args()

    import torch

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    import flax
    import pyhessian  # noqa: F401

    lines = []

    def log(s):  # the results file is rewritten after every line: a killed run keeps its part
        print(s, flush=True)
        lines.append(s)
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")

    dev = jax.devices()[0]
    log("# Hessian spectrum benchmark (benchmarks/hessian.py)\n")
    date = args.date or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    log(f"- command: python benchmarks/hessian.py {' '.join(sys.argv[1:])}".rstrip())
    log(f"- date: {date}; load average (1, 5, 15 min) at start: {load}")
    log(f"- machine: {platform.processor() or platform.machine()}, {threads} CPU cores visible, "
        f"{platform.platform()}")  # fmt: skip
    log(f"- JAX {jax.__version__} on {dev.platform} ({dev.device_kind}), flax {flax.__version__}; "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"hessian-eigenthings 1.0.0a5, pyhessian 0.1")  # fmt: skip
    log("- one full batch per model for every tool; warm times are wall-clock, the minimum of "
        f"{args.repeat_mlp} (MLP) / {args.repeat_cnn} (CNN) runs per tool in this process; "
        f"fresh-process first calls: the minimum over {args.fresh_mlp} (MLP) / "
        f"{args.fresh_cnn} (CNN) new processes per tool")  # fmt: skip
    t0 = time.perf_counter()
    if args.only in (None, "mlp"):
        REPEAT[0], FRESH[0] = args.repeat_mlp, args.fresh_mlp
        bench("MLP on digits", "mlp", hm.torch_mlp, False, log)
    if args.only in (None, "cnn"):
        REPEAT[0], FRESH[0] = args.repeat_cnn, args.fresh_cnn
        bench("CNN on CIFAR-shaped synthetic data", "cnn", hm.torch_cnn, True, log)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    log(
        f"\ntotal benchmark wall time {time.perf_counter() - t0:.0f} s; load average at end: {load}"
    )


if __name__ == "__main__":
    main()
