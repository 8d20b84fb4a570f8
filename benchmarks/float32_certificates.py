"""Benchmark (issue 20): do float32 certificates hold on networks trained as Flax users train?

    python benchmarks/float32_certificates.py [--quick]   # writes benchmarks/RESULTS-float32.md

Protocol (fixed before measuring). Three shrunk copies of the google/flax examples
(`benchmarks/flax_example_models.py`: the nnx MNIST CNN, the linen ImageNet ResNet
V1.5, the linen lm1b TransformerLM; 720 - 1,542 parameters), each trained in float32
(x64 off) to near-100 % training accuracy. The loss judged is the library's,
``stability.loss_from_model(model, params, data=batch)`` (eval mode, mean softmax
cross-entropy), on the training batch. Per model:

- the truth: the float64 dense Hessian of that loss at the float32-trained
  parameters (params and data cast to float64), its top eigenvalue;
- ``hessian_spectrum`` in JAX's default float32 (x64 off, float32 params and data,
  ``max_hvps=100``, default ``tol``): sharpness +- error bar, converged flag, and
  whether the bar ``[s - e, s + e]`` contains the truth (its distance to the truth
  in bar widths);
- ``is_accessible`` in float32 at learning rates set from the truth so that
  truth / limit is each of 0.5, 0.97, 0.999, 1.001, 1.03, 2 (``lr =
  max_stable_lr(truth / ratio, tau)``), tau = 0 and 4 (``--quick``: tau = 4 only):
  the verdict, what certified it, and whether it is right (True is right only for
  ratio < 1, False only for ratio > 1; None is undecided, never wrong);
- the cross-entropy's own curvature: the relative error of the float32 product
  ``H_z v`` of ``z -> mean CE(z, y)`` (Hessian w.r.t. the LOGITS at the trained
  network's float32 logits, a random tangent ``v``) against float64 at the same
  ``z`` and ``v``, for the library's default loss (``cross_entropy``) and for plain
  optax; and how many float32 softmax maxima round to exactly 1.0.

The models are passed to ``is_accessible`` as the ``loss_fn`` that ``loss_from_model``
returns (what ``is_accessible`` builds from a module itself), so a linen model
compiles once per run rather than once per call (issue 20, item 5).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from functools import partial

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import stability  # noqa: E402
from benchmarks import flax_example_models as fm  # noqa: E402
from stability.networks.models import cross_entropy  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS-float32.md")
RATIOS = (0.5, 0.97, 0.999, 1.001, 1.03, 2.0)
MAX_HVPS = 100


def verdict_is_wrong(verdict, ratio: float) -> bool:
    """A certified verdict on the wrong side of the limit (None is never wrong)."""
    return (verdict is True and ratio >= 1) or (verdict is False and ratio <= 1)


def bar_contains(value: float, error: float, truth: float) -> bool:
    """Whether ``[value - error, value + error]`` contains ``truth``."""
    return abs(value - truth) <= error


def _optax_ce(z, y):
    return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()


def loss_part_error(logits, labels, loss=cross_entropy, seed: int = 0) -> float:
    """Relative error of the float32 product ``H_z v`` of ``z -> loss(z, labels)``.

    ``H_z`` is the Hessian w.r.t. the logits ``z`` (the loss part of a network's
    Hessian, ``J^T H_z J``); ``v`` a standard normal tangent. The float32 product
    (x64 off) is compared with the float64 product at the same ``z`` and ``v``:
    ``||p32 - p64|| / ||p64||``.
    """
    z32 = np.asarray(logits, np.float32)
    v32 = np.random.default_rng(seed).standard_normal(z32.shape).astype(np.float32)
    y = np.asarray(labels)

    def product(z, v):
        return jax.jvp(jax.grad(lambda t: loss(t, y)), (z,), (v,))[1]

    with fm.float32_defaults():
        p32 = np.asarray(product(jnp.asarray(z32), jnp.asarray(v32)), np.float64)
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        z64, v64 = jnp.asarray(z32, jnp.float64), jnp.asarray(v32, jnp.float64)
        p64 = np.asarray(product(z64, v64), np.float64)
    return float(np.linalg.norm(p32 - p64) / np.linalg.norm(p64))


def saturated_count(logits) -> tuple[int, int]:
    """(number of float32 softmax maxima equal to 1.0, number of softmax rows)."""
    with fm.float32_defaults():
        top = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1).max(-1))
    return int((top == 1.0).sum()), int(top.size)


def measure(trained: fm.TrainedModel, taus) -> dict:
    """Every number of the protocol for one trained model."""
    with fm.float32_defaults():
        loss_fn, params = stability.loss_from_model(trained.model, trained.params,
                                                    data=trained.batch)  # fmt: skip
    t = time.perf_counter()
    truth = fm.dense_truth(loss_fn, params, trained.batch)
    t_truth = time.perf_counter() - t
    with fm.float32_defaults():
        t = time.perf_counter()
        spec = stability.hessian_spectrum(loss_fn, params, trained.batch, max_hvps=MAX_HVPS,
                                          progress=False)  # fmt: skip
        t_spec = time.perf_counter() - t
        verdicts = []
        for tau in taus:
            for ratio in RATIOS:
                lr = float(stability.max_stable_lr(truth.lambda_max / ratio, tau))
                res = stability.is_accessible(loss_fn, params, tau, lr, data=trained.batch,
                                              progress=False, max_hvps=MAX_HVPS)  # fmt: skip
                verdicts.append(dict(tau=tau, ratio=ratio, verdict=res.verdict,
                                     certified_by=res.certified_by, sharpness=res.sharpness,
                                     error=res.sharpness_error, hvps=res.num_hvps,
                                     wrong=verdict_is_wrong(res.verdict, ratio)))  # fmt: skip
    logits = fm.eval_logits(trained)
    labels = fm.labels_of(trained)
    sat, rows = saturated_count(logits)
    return dict(
        name=trained.name, n=truth.num_params, accuracy=trained.accuracy, truth=truth.lambda_max,
        second=float(truth.eigenvalues[-2]), t_truth=t_truth,
        sharpness=spec.sharpness, error=spec.sharpness_error,
        converged=bool(spec.converged[0]), hvps=spec.num_hvps, t_spec=t_spec,
        contains=bar_contains(spec.sharpness, spec.sharpness_error, truth.lambda_max),
        verdicts=verdicts, saturated=sat, rows=rows,
        ce_lib=loss_part_error(logits, labels, cross_entropy),
        ce_optax=loss_part_error(logits, labels, _optax_ce),
    )  # fmt: skip


def _fmt_verdict(v) -> str:
    word = {True: "True", False: "False", None: "None"}[v["verdict"]]
    mark = "WRONG" if v["wrong"] else ("undecided" if v["verdict"] is None else "right")
    by = f" ({v['certified_by']})" if v["certified_by"] else ""
    return f"{word}{by} {mark}"


def report(rows, *, quick: bool, total: float, commit: str | None = None) -> str:
    """The results markdown (``commit``: the library's, default ``git rev-parse`` here)."""
    if commit is None:
        git = partial(subprocess.run, cwd=ROOT, capture_output=True, text=True)
        commit = git(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
        if commit and git(["git", "status", "--porcelain", "stability"]).stdout.strip():
            commit += " with uncommitted changes under stability/"
    lines = [
        "# Float32 certificates on the Flax examples (benchmarks/float32_certificates.py)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; library commit "
        f"{commit or '?'}; {'quick' if quick else 'full'} run, {total:.0f} s; load average "
        f"at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores; JAX {jax.__version__} "
        f"on {jax.default_backend()}",
        f"- float32 = JAX's default (x64 off); truth = float64 dense Hessian at the same "
        f"float32-trained params; max_hvps={MAX_HVPS}",
        "",
        "## Top eigenvalue: float32 `hessian_spectrum` against the float64 truth",
        "",
        "| model | params | train acc | float64 truth (2nd) | float32 sharpness +- bar "
        "| converged | rel. error | bar contains truth (|s - truth| / bar) | products |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dist = abs(r["sharpness"] - r["truth"]) / r["error"]
        lines.append(
            f"| {r['name']} | {r['n']} | {r['accuracy']:.3f} | {r['truth']:.7g} "
            f"({r['second']:.4g}) | {r['sharpness']:.7g} +- {r['error']:.2g} | "
            f"{r['converged']} | {(r['sharpness'] - r['truth']) / r['truth']:+.2e} | "
            f"{r['contains']} ({dist:.3g}) | {r['hvps']} |"
        )
    lines += [
        "",
        "## `is_accessible` in float32 at truth / limit = ratio",
        "",
        "| model | tau | " + " | ".join(f"{q:g}" for q in RATIOS) + " |",
        "|---|---|" + "---|" * len(RATIOS),
    ]
    for r in rows:
        for tau in sorted({v["tau"] for v in r["verdicts"]}):
            cells = [_fmt_verdict(v) for v in r["verdicts"] if v["tau"] == tau]
            lines.append(f"| {r['name']} | {tau} | " + " | ".join(cells) + " |")
    wrong = sum(v["wrong"] for r in rows for v in r["verdicts"])
    undecided = sum(v["verdict"] is None for r in rows for v in r["verdicts"])
    count = sum(len(r["verdicts"]) for r in rows)
    lines += [
        "",
        f"{wrong} of {count} verdicts certified wrong, {undecided} undecided.",
        "",
        "## Cross-entropy loss part: float32 against float64 product w.r.t. the logits",
        "",
        "| model | softmax maxima == 1.0 in float32 | rel. error, library `cross_entropy` "
        "| rel. error, optax |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['saturated']} of {r['rows']} | {r['ce_lib']:.2e} | "
                     f"{r['ce_optax']:.2e} |")  # fmt: skip
    contained = sum(r["contains"] for r in rows if r["converged"])
    converged = sum(r["converged"] for r in rows)
    lines += [
        "",
        "Timings (s): "
        + "; ".join(
            f"{r['name']}: dense truth {r['t_truth']:.1f}, float32 spectrum {r['t_spec']:.1f}"
            for r in rows
        ),
        "",
        f"- TARGET no float32 verdict certified wrong: {wrong} wrong -> "
        f"{'PASS' if wrong == 0 else 'MISS'}",
        f"- TARGET every converged float32 bar contains the float64 truth: {contained} of "
        f"{converged} -> {'PASS' if contained == converged else 'MISS'}",
        f"- TARGET library cross-entropy loss part within 1e-6 of float64: worst "
        f"{max(r['ce_lib'] for r in rows):.2e} -> "
        f"{'PASS' if max(r['ce_lib'] for r in rows) <= 1e-6 else 'MISS'}",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tau = 4 only")
    ap.add_argument("--commit", help="the library commit to record (default: git rev-parse)")
    ap.add_argument("--out", default=OUT, help="results file (default: RESULTS-float32.md)")
    args = ap.parse_args(argv)
    taus = (4,) if args.quick else (0, 4)
    t0 = time.perf_counter()
    rows = []
    for train in (fm.train_cnn, fm.train_resnet, fm.train_transformer):
        trained = train()
        rows.append(measure(trained, taus))
        print(f"{trained.name}: done at {time.perf_counter() - t0:.0f} s", flush=True)
    text = report(rows, quick=args.quick, total=time.perf_counter() - t0, commit=args.commit)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
