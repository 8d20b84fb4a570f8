"""The cost of the preconditioned spectrum (Adam's ``P^-1/2 H P^-1/2``, issue 22).

``hessian_spectrum(..., preconditioner=P)`` runs the engine on the loss
``loss(w + P^-1/2 u)`` (a change of variables; ``w`` and ``P^-1/2`` travel as
arguments). On each network, trained with ``optax.adam`` whose state gives ``P``
(:func:`stability.preconditioner_from_optax`), float32 (JAX's default):

1. time per product: one preconditioned Hessian-vector product against one plain
   product of the same network and data (the jitted product of the engine,
   ``stability.curvature.hvp.hvp_sum``; minimum over interleaved warm repeats);
2. products per spectrum: ``hessian_spectrum(..., preconditioner=P)`` against the
   plain engine run on the same spectrum written by hand (the loss of ``s * u`` at
   ``u = w / s``, ``s`` passed as a non-differentiated leaf), at the same ``tol`` and
   seed: the same Krylov process, so the same number of products; with the warm
   time of each call (minimum of the repeats).

Networks: ``mlp``, the 85,002-parameter digits tanh MLP of ``benchmarks/hessian.py``
(1797 examples); ``cnn``, its 0.47M-parameter CIFAR-shaped CNN (synthetic data,
512 examples here).

Targets (issue 22): a preconditioned product costs at most 1.1x a plain product; the
same number of products at the same tolerance for a given spectrum.

    python benchmarks/preconditioned_products.py [--models mlp cnn] [--repeat 10]
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

TOL = 1e-4
TIME_TARGET = 1.1


def _adam_trained(loss, p, batch, steps, lr=1e-3):
    """``p`` after ``steps`` full-batch ``optax.adam`` steps, and the optimizer state."""
    import jax
    import optax

    opt = optax.adam(lr)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p, batch)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    s = opt.init(p)
    for _ in range(steps):
        p, s = step(p, s)
    return p, s


def _setup(name):
    import jax

    from benchmarks.hessian_models import cnn_loss, cnn_setup, mlp_loss, mlp_setup

    if name == "mlp":
        p, batch = mlp_setup(train_steps=0)
        p, state = _adam_trained(mlp_loss, p, batch, 300)
        return mlp_loss, p, batch, state
    p, batch = cnn_setup(n=512)
    p, state = _adam_trained(cnn_loss, p, batch, 30)
    jax.block_until_ready(p)
    return cnn_loss, p, batch, state


def _by_hand(loss):
    """The preconditioned problem written by hand: ``loss(s * u)`` with
    ``params = {"u": u, "s": s}`` (``s`` not differentiated)."""
    import jax
    import jax.numpy as jnp

    def loss_u(q, batch):
        return loss(jax.tree_util.tree_map(jnp.multiply, q["s"], q["u"]), batch)

    return loss_u


def measure(name, repeat):
    import jax
    import jax.numpy as jnp

    from stability import hessian_spectrum, preconditioner_from_optax
    from stability.curvature import hvp as _hvp
    from stability.curvature.preconditioner import change_of_variables

    loss, p, batch, state = _setup(name)
    pre = preconditioner_from_optax(state, p)
    n = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(p))

    # 1. One product, plain and preconditioned (the engine's jitted product).
    problem = change_of_variables(loss, p, pre)
    products = {
        "plain": (loss, _hvp.trainable_mask(p), p),
        "preconditioned": (
            problem.loss,
            _hvp.trainable_mask(problem.params, problem.trainable),
            problem.params,
        ),
    }
    v = jnp.asarray(np.random.default_rng(0).standard_normal(n), jnp.float32)

    def product(which):
        f, mask, params = products[which]
        jax.block_until_ready(_hvp.hvp_sum(f, mask, params, batch, None, v))

    for which in products:
        product(which)
    per = dict.fromkeys(products, np.inf)
    for _ in range(repeat):  # interleaved: a change in the machine's load hits both
        for which in products:
            per[which] = min(per[which], timed(lambda w=which: product(w))[1])

    # 2. Whole spectra on the same spectrum: preconditioned, and written by hand.
    s = jax.tree_util.tree_map(lambda d: 1 / jnp.sqrt(d), pre.diagonal)
    hand = {"u": jax.tree_util.tree_map(jnp.divide, p, s), "s": s}
    only_u = lambda path, x: path[0].key == "u"  # noqa: E731
    loss_hand = _by_hand(loss)
    calls = {
        "preconditioner=P": lambda: hessian_spectrum(
            loss, p, batch, tol=TOL, preconditioner=pre, progress=False
        ),
        "by hand": lambda: hessian_spectrum(
            loss_hand, hand, batch, tol=TOL, trainable=only_u, progress=False
        ),
        "plain H (other spectrum)": lambda: hessian_spectrum(
            loss, p, batch, tol=TOL, progress=False
        ),  # fmt: skip
    }
    spectra = {k: f() for k, f in calls.items()}
    warm = dict.fromkeys(calls, np.inf)
    for _ in range(max(1, repeat // 2)):
        for k, f in calls.items():
            warm[k] = min(warm[k], timed(f)[1])
    return {"n": n, "per": per, "spectra": spectra, "warm": warm, "count": pre.count}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--repeat", type=int, default=10, help="warm repeats (default 10)")
    parser.add_argument("--out", default=os.path.join(HERE, "RESULTS-preconditioned.md"))
    args = parser.parse_args(argv)

    import jax

    results = {name: measure(name, args.repeat) for name in args.models}
    lines = [
        "# Cost of the preconditioned spectrum (issue 22)",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores), library {library_commit()}, "
        f"load {os.getloadavg()[0]:.1f}. float32; `P` from `optax.adam(1e-3)` after "
        f"training (mlp: 300 steps, cnn: 30), `tol={TOL:g}`, seed 0; times are minima "
        f"of interleaved warm repeats ({args.repeat} per product, "
        f"{max(1, args.repeat // 2)} per spectrum).",
        "",
        "| network | parameters | plain product (ms) | preconditioned product (ms) | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    worst_time, same_count = 0.0, True
    for name, r in results.items():
        plain, pre = r["per"]["plain"], r["per"]["preconditioned"]
        worst_time = max(worst_time, pre / plain)
        lines.append(f"| {name} | {r['n']:,} | {plain * 1e3:.2f} | {pre * 1e3:.2f} | "
                     f"{pre / plain:.3f} |")  # fmt: skip
    lines += [
        "",
        "| network | call | products | top eigenvalue | bar | warm (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    count_ratios = []
    for name, r in results.items():
        for call, spec in r["spectra"].items():
            lines.append(
                f"| {name} | {call} | {spec.num_hvps} | {spec.sharpness:.7g} | "
                f"{spec.sharpness_error:.2g} | {r['warm'][call]:.3f} |"
            )
        a, b = r["spectra"]["preconditioner=P"], r["spectra"]["by hand"]
        count_ratios.append(a.num_hvps / b.num_hvps)
        same_count &= a.num_hvps == b.num_hvps
        same_count &= abs(a.sharpness - b.sharpness) <= a.sharpness_error + b.sharpness_error
    lines += [
        "",
        "Products ratio (preconditioner=P / by hand, the same spectrum): "
        + ", ".join(f"{name} {q:.2f}" for name, q in zip(results, count_ratios, strict=True))
        + ".",
        "",
        f"TARGET preconditioned product at most {TIME_TARGET}x a plain product: "
        f"{'PASS' if worst_time <= TIME_TARGET else 'FAIL'} (worst {worst_time:.3f})",
        "TARGET same number of products at the same tolerance for the same spectrum: "
        f"{'PASS' if same_count else 'FAIL'} (ratios "
        f"{', '.join(f'{q:.2f}' for q in count_ratios)})",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
