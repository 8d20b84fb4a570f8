"""The cost of the float64 check of float32 spectra, on the digits benchmark network.

``hessian_spectrum(loss, p, batch, k=1, tol=1e-4)`` on the 85,002-parameter tanh MLP
of ``benchmarks/hessian.py`` (float32, JAX's default, the digits' 1797 examples):
with ``verify=False`` (the engine as it was before the check existed: the same
products, the float32 bar) and with the default (``verify=None``: the top and smallest
Ritz vectors multiplied once more in float64). Reports the products, the warm time
(minimum of the repeats) and the first call's time (compilation of the float64
product included), the time of one float32 and one float64 product, and the values.

Target (issue 20): the check costs at most two products' time (warm).

    python benchmarks/verification.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.run_info import library_commit, timed  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="warm repeats (default 10)")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS-verification.md"))
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from benchmarks.hessian_models import mlp_loss, mlp_setup
    from stability import hessian_spectrum
    from stability.curvature import hvp as _hvp
    from stability.curvature.verification import to_float64

    p, batch = mlp_setup()
    calls = {"verify=False (before)": False, "default (after)": None}

    def run(verify):
        return hessian_spectrum(mlp_loss, p, batch, k=1, tol=1e-4, progress=False,
                                verify=verify)  # fmt: skip

    firsts = {name: timed(lambda v=verify: run(v)) for name, verify in calls.items()}
    # Interleaved, so that a change in the machine's load hits both alike.
    warm = {name: np.inf for name in calls}
    for _ in range(args.repeat):
        for name, verify in calls.items():
            warm[name] = min(warm[name], timed(lambda v=verify: run(v))[1])
    results = {name: (*firsts[name], warm[name]) for name in calls}

    mask = _hvp.trainable_mask(p)
    n = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(p))
    v32 = jnp.ones((n,), jnp.float32)

    def product(params, data, v):
        out = _hvp.hvp_sum(mlp_loss, mask, params, data, None, v)
        jax.block_until_ready(out)

    product(p, batch, v32)
    t32 = min(timed(lambda: product(p, batch, v32))[1] for _ in range(args.repeat))
    with jax.enable_x64(True):
        p64, b64 = to_float64(p), to_float64(batch)
        v64 = jnp.ones((n,), jnp.float64)  # the check: the top vector
        product(p64, b64, v64)
        t64 = min(timed(lambda: product(p64, b64, v64))[1] for _ in range(args.repeat))

    before, after = results["verify=False (before)"], results["default (after)"]
    extra = after[2] - before[2]
    lines = [
        "# Cost of the float64 check (issue 20)",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores), library "
        f"{library_commit()}, load {os.getloadavg()[0]:.1f}. The 85,002-parameter digits MLP of "
        "`benchmarks/hessian.py`, float32, `hessian_spectrum(loss, p, batch, k=1, tol=1e-4)`.",
        "",
        "| call | products | sharpness | bar | product error | first call (s) | warm (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (spec, t_first, warm) in results.items():
        lines.append(
            f"| {name} | {spec.num_hvps} | {spec.sharpness:.7g} | {spec.sharpness_error:.2g} | "
            f"{spec.product_error:.2g} | {t_first:.3f} | {warm:.3f} |"
        )
    ratio = extra / t32
    ceiling = t64 / t32
    lines += [
        "",
        f"One float32 product: {t32 * 1e3:.1f} ms; one float64 product of the "
        f"checked vector: {t64 * 1e3:.1f} ms ({ceiling:.2f} float32 products: the least "
        "the check can cost here, since it is one float64 product).",
        f"The check adds {extra * 1e3:.1f} ms warm = {ratio:.2f} float32 products' time "
        f"(warm: minimum of {args.repeat} interleaved repeats).",
        "",
        f"TARGET check costs at most two products' time (warm): "
        f"{'PASS' if ratio <= 2 else 'FAIL'} ({ratio:.2f}; floor {ceiling:.2f})",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
