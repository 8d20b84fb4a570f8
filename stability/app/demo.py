"""``stability demo``: the whole product on an embedded default.

1. The threshold table: max stable q = lr * sharpness for common delays and
   momentum rules (boundary locus, no eigenvalues).
2. A tanh MLP trained on the bundled 8x8 digits to a true minimum
   (squared error, interpolating its data, L-BFGS in float64).
3. Its Hessian's extreme eigenvalues (Lanczos), then the verdict for delays
   0..64 and each rule at the learning rate that is 0.9x the tau = 0 limit of
   plain SGD (momentum rules at the same effective rate lr / (1 - beta)),
   with the lr that the paper's rule (`lr_for_delay`) recommends instead.
4. Asynchronous SGD simulated from the minimum (plus 1e-6 along the top
   eigenvector, so the unstable direction is excited) at 0.8x and 1.25x the
   max stable lr: the first stays, the second leaves, and the measured growth
   per step is compared with the predicted spectral radius.
5. A PNG with the stability region, the thresholds, the margins and the runs.
"""

from __future__ import annotations

import math
import os
import textwrap
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.figures import pyplot

__all__ = ["DemoResult", "run_demo"]

DEMO_TAUS = (0, 1, 2, 4, 8, 16, 32, 64)
DEMO_BETA = 0.9
# (label, momentum rule, beta): plain SGD plus each momentum rule.
CONFIGS = (
    ("sgd", "heavy_ball", 0.0),
    ("heavy_ball", "heavy_ball", DEMO_BETA),
    ("nesterov", "nesterov", DEMO_BETA),
    ("shifted", "shifted", DEMO_BETA),
)


class SimulationCheck(NamedTuple):
    """One simulated run against its prediction."""

    tau: int
    momentum: str
    beta: float
    factor: float
    lr: float
    steps: int
    loss_start: float
    loss_end: float
    predicted_radius: float
    measured_growth: float
    verdict: bool | None
    stayed: bool


class DemoResult(NamedTuple):
    """What the demo computed (also printed)."""

    sharpness: float
    sharpness_error: float
    lr0: float
    reports: dict
    simulations: list
    figure_path: str
    seconds: float


def _perturb(params, vector, eps):
    """params + eps * unit vector (both pytrees of the same structure)."""
    return jax.tree_util.tree_map(lambda p, v: p + eps * v.astype(p.dtype), params, vector)


def _steps_for(rho: float, eps: float, lo: int, hi: int) -> int:
    """Steps for growth by 1/eps at rate rho (docs/theory.md section 14), clipped."""
    if rho <= 1.0:
        return lo
    return int(min(hi, max(lo, math.ceil(1.5 * math.log(1.0 / eps) / math.log(rho)))))


def run_demo(out_dir: str = "stability-demo", *, quick: bool = False, echo=print) -> DemoResult:
    """Run the demo, print its report, write ``out_dir/demo.png``."""
    import stability as st
    from stability import simulate
    from stability.curvature.hessian_spectrum import hessian_spectrum
    from stability.networks import examples

    start = time.perf_counter()
    jax.config.update("jax_enable_x64", True)
    taus = DEMO_TAUS if not quick else (0, 1, 4, 16)

    # 1. Thresholds.
    echo("== Max stable q = lr x sharpness (boundary locus) ==")
    header = f"{'tau':>4}  {'sgd':>10}" + "".join(
        f"  {f'{rule} {DEMO_BETA:g}':>15}" for _, rule, b in CONFIGS if b
    )
    echo(header)
    tau_arr = np.asarray(taus)
    q_table = {
        label: np.asarray(st.max_stable_sharpness(1.0, tau_arr, beta, momentum=rule))
        for label, rule, beta in CONFIGS
    }
    for i, tau in enumerate(taus):
        echo(
            f"{tau:>4}  "
            + "  ".join(
                f"{q_table[label][i]:>10.6f}" if not beta else f"{q_table[label][i]:>15.6f}"
                for label, _, beta in CONFIGS
            )
        )

    # 2. A true minimum.
    echo("\n== Training a tanh MLP on 256 bundled digits to a minimum (L-BFGS, float64) ==")
    minimum = examples.train_to_minimum(n=256, dtype=jnp.float64)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(minimum.params))
    echo(
        f"{n_params} parameters, loss {minimum.loss:.3g}, gradient norm {minimum.grad_norm:.3g}, "
        f"{minimum.steps} L-BFGS steps, minimum reached: {minimum.converged}"
    )

    # 3. Spectrum and verdicts.
    spectrum = hessian_spectrum(
        minimum.loss_fn,
        minimum.params,
        minimum.data,
        k=1,
        tol=1e-7,
        return_vectors=True,
    )
    echo(f"Hessian: {spectrum}")
    sharp = spectrum.sharpness
    lr0 = 0.9 * float(st.max_stable_lr(sharp, 0))
    echo(
        f"\n== Verdicts at effective lr {lr0:.5g} (0.9x the tau = 0 limit of plain SGD); "
        f"momentum rules use lr = {lr0:.4g} x (1 - {DEMO_BETA:g}) =="
    )
    echo(
        f"{'tau':>4} {'rule':>11} {'verdict':>8} {'% of limit':>10} {'max stable lr':>14} "
        f"{'paper-rule lr':>14}"
    )
    reports = {}
    for tau in taus:
        for label, rule, beta in CONFIGS:
            lr = lr0 * (1.0 - beta)
            rep = st.verdict_from_spectrum(spectrum, tau, lr, beta=beta, momentum=rule)
            paper_lr = float(st.lr_for_delay(lr, tau, from_tau=0, beta=beta, momentum=rule))
            reports[(tau, label)] = rep
            word = {True: "yes", False: "no", None: "undecided"}[rep.verdict]
            echo(
                f"{tau:>4} {label:>11} {word:>8} {100 * rep.fraction_of_limit:>9.1f}% "
                f"{rep.max_stable_lr:>14.6g} {paper_lr:>14.6g}"
            )

    # 4. Simulations from the minimum.
    echo("\n== Simulated asynchronous SGD from the minimum (+1e-6 along the top eigenvector) ==")
    echo(
        "(the loss is tilted by -<g*, w - w*> so that the L-BFGS point, gradient g* ~ 1e-6, is an\n"
        " exact stationary point; the Hessian is unchanged.)"
    )
    eps = 1e-6
    top_vec = jax.tree_util.tree_map(lambda v: v[0], spectrum.eigenvectors)
    start_params = _perturb(minimum.params, top_vec, eps)
    sim_loss = simulate.stationary_tilt(minimum.loss_fn, minimum.params, minimum.data)
    sim_cases = [
        (1, "heavy_ball", 0.0),
        (4, "heavy_ball", 0.0),
        (16, "heavy_ball", 0.0),
        (4, "shifted", DEMO_BETA),
    ]
    if quick:
        sim_cases = [(1, "heavy_ball", 0.0), (4, "shifted", DEMO_BETA)]
    echo(simulation_columns_note())
    echo(
        f"{'tau':>4} {'rule':>11} {'lr/lr_max':>9} {'steps':>6} {'loss start':>11} "
        f"{'loss end':>11} {'max dev':>9} {'verdict':>8} {'stayed':>7} {'rho pred':>10} "
        f"{'growth':>10}"
    )
    sims, runs = [], []
    for tau, rule, beta in sim_cases:
        lr_max = float(st.max_stable_lr(sharp, tau, beta, momentum=rule))
        rho_hi = float(st.spectral_radius(sharp, 1.25 * lr_max, tau, beta, momentum=rule))
        # Long enough for a 1000-fold growth at the predicted rate.
        steps = _steps_for(rho_hi, 1e-3, 300, 20000)
        for factor in (0.8, 1.25):
            lr = factor * lr_max
            rep = st.verdict_from_spectrum(spectrum, tau, lr, beta=beta, momentum=rule)
            traj = simulate.simulate_async(
                sim_loss,
                start_params,
                minimum.data,
                lr=lr,
                tau=tau,
                beta=beta,
                momentum=rule,
                steps=steps,
            )
            loss = np.asarray(traj.loss)
            dist = np.asarray(traj.distance)
            rho = float(st.spectral_radius(sharp, lr, tau, beta, momentum=rule))
            stayed = bool(np.all(np.isfinite(dist)) and np.max(dist) < 100 * eps)
            linear = dist[: int(np.argmax(dist > 1e-3))] if np.any(dist > 1e-3) else dist
            # Growth is measured on runs that leave; a decaying run converges to a
            # point eps away from its start, so its distance says nothing of rho.
            growth = (
                simulate.growth_rate(linear) if not stayed and linear.size >= 20 else float("nan")
            )
            name = "sgd" if beta == 0 else rule
            sims.append(
                SimulationCheck(
                    tau,
                    rule,
                    beta,
                    factor,
                    lr,
                    steps,
                    float(loss[0]),
                    float(loss[-1]),
                    rho,
                    growth,
                    rep.verdict,
                    stayed,
                )
            )
            runs.append((sims[-1], traj))
            word = {True: "yes", False: "no", None: "undecided"}[rep.verdict]
            echo(
                f"{tau:>4} {name:>11} {factor:>9.2f} {steps:>6} {loss[0]:>11.3e} {loss[-1]:>11.3e} "
                f"{np.max(dist):>9.2e} {word:>8} {str(stayed):>7} {rho:>10.6f} "
                + (f"{growth:>10.6f}" if np.isfinite(growth) else f"{'-':>10}")
            )
    agree = sum(s.stayed == bool(s.verdict) for s in sims)
    echo(f"verdict and simulation agree in {agree} of {len(sims)} runs")
    echo("\n" + verdict_sentence(sharp, lr0, reports, taus, sims))

    # 5. The figure.
    figure_path = _figure(out_dir, sharp, reports, taus, runs, lr0)
    seconds = time.perf_counter() - start
    echo(f"\nwrote {figure_path}  ({seconds:.1f} s)")
    return DemoResult(sharp, spectrum.sharpness_error, lr0, reports, sims, figure_path, seconds)


def _taus_phrase(taus) -> str:
    taus = list(taus)
    if len(taus) == 1:
        return f"tau = {taus[0]}"
    return f"tau = {', '.join(str(t) for t in taus[:-1])} and {taus[-1]}"


def verdict_sentence(sharpness, lr0, reports, taus, sims) -> str:
    """The demo's verdict in one sentence: which rules keep the minimum at which delays."""
    labels = [label for label, _, _ in CONFIGS]
    groups = []  # (rules that keep the minimum, taus), consecutive taus merged
    for tau in taus:
        keep = tuple(label for label in labels if reports[(tau, label)].verdict is True)
        if groups and groups[-1][0] == keep:
            groups[-1][1].append(tau)
        else:
            groups.append((keep, [tau]))
    parts = []
    for keep, group in groups:
        who = (
            "every rule"
            if len(keep) == len(labels)
            else "no rule"
            if not keep
            else " and ".join(keep) + " only"
        )
        parts.append(f"{who} at {_taus_phrase(group)}")
    undecided = [key for key, rep in reports.items() if rep.verdict is None]
    agree = sum(s.stayed == bool(s.verdict) for s in sims)
    return (
        f"Verdict: the digits MLP's minimum (sharpness {sharpness:.3g}) stays accessible at "
        f"effective lr {lr0:.3g} for {'; '.join(parts)}"
        + (f" ({len(undecided)} verdicts undecided)" if undecided else "")
        + f"; the simulations agree in {agree} of {len(sims)} runs."
    )


SIMULATION_COLUMNS = (
    ("tau", "the delay"),
    ("rule", "momentum rule (sgd: no momentum)"),
    (
        "lr/lr_max",
        "the run's lr over the max stable lr for its delay and rule (0.8: predicted "
        "stable, 1.25: predicted unstable)",
    ),  # fmt: skip
    ("steps", "steps simulated"),
    ("loss start/end", "the loss at the first and the last step"),
    ("max dev", "largest distance from the minimum"),
    ("verdict", "is_accessible's verdict at that lr"),
    ("stayed", "True when the distance never grew 100-fold"),
    (
        "rho pred",
        "predicted growth factor per step: the spectral radius of the linearised "
        "update (below 1 the deviation shrinks, above 1 it grows)",
    ),  # fmt: skip
    (
        "growth",
        "measured growth factor per step of a run that leaves, while its distance is below 1e-3",
    ),  # fmt: skip
)


def simulation_columns_note() -> str:
    """What each column of the simulation table means."""
    width = max(len(name) for name, _ in SIMULATION_COLUMNS)
    indent = " " * (width + 4)
    return "\n".join(
        textwrap.fill(f"  {name:<{width}}  {what}", 96, subsequent_indent=indent)
        for name, what in SIMULATION_COLUMNS
    )


FONT_SIZE = 9  # every text of the figure
STABLE_STYLE = "-"  # runs at 0.8x lr_max
UNSTABLE_STYLE = "--"  # runs at 1.25x lr_max


def demo_figure(sharpness, reports, taus, runs, lr0):
    """The demo's 2 x 2 figure; ``runs`` is a list of (SimulationCheck, trajectory)."""
    import matplotlib.text

    from stability.app import plotting

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    plotting.plot_stability_region(8, momentum="shifted", resolution=120, ax=axes[0, 0])
    plotting.plot_thresholds(taus=(0, 1, 2, 4, 8, 16, 32, 64), beta=DEMO_BETA, ax=axes[0, 1])
    ax = axes[1, 0]
    for label, _, _ in CONFIGS:
        margins = [reports[(tau, label)].fraction_of_limit for tau in taus]
        ax.plot(np.maximum(taus, 0.5), margins, "-o", ms=3, label=label)
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("delay tau (0 drawn at 0.5)")
    ax.set_ylabel("sharpness / max stable sharpness")
    ax.set_title(
        f"digits MLP, sharpness {sharpness:.3g}, effective lr {lr0:.3g}: accessible below 1"
    )
    ax.legend()

    # One colour per (rule, tau); solid: the run below lr_max, dashed: above. The
    # stable runs are drawn on top: they stay near 1e-6, inside the band of the
    # unstable runs' oscillations.
    cases = list(dict.fromkeys((s.tau, s.momentum, s.beta) for s, _ in runs))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    curves, styles = {}, {}
    for check, traj in runs:
        name = "sgd" if check.beta == 0 else check.momentum
        stable = check.factor < 1
        label = (
            f"{name}, tau = {check.tau}: {check.factor:g}x lr_max, "
            f"{'stays' if check.stayed else 'leaves'}"
        )
        curves[label] = traj
        styles[label] = {
            "color": colours[cases.index((check.tau, check.momentum, check.beta)) % len(colours)],
            "linestyle": STABLE_STYLE if stable else UNSTABLE_STYLE,
            "linewidth": 2.0 if stable else 1.0,
            "zorder": 3 if stable else 2,
        }
    ax = plotting.plot_trajectories(curves, quantity="distance", styles=styles, ax=axes[1, 1])
    # Log steps: the short runs (a few hundred steps) are not squeezed against the axis.
    ax.set_xscale("log")
    ax.set_xlabel("step (log scale)")
    ax.set_ylabel("distance from the minimum")
    ax.set_title(
        "simulated async SGD from the minimum: solid 0.8x lr_max (stays), dashed 1.25x (leaves)"
    )
    sentence = verdict_sentence(sharpness, lr0, reports, taus, [s for s, _ in runs])
    verdict, simulations = sentence.split("; the simulations")
    # Lines break between phrases, never inside "tau = 1".
    verdict = verdict.replace("tau = ", "tau\u00a0=\u00a0")
    lines = textwrap.wrap(verdict + ";", 125) + [f"the simulations{simulations}"]
    fig.suptitle("\n".join(lines).replace("\u00a0", " "), fontweight="bold")
    fig.tight_layout()
    # One font size: titles, labels, ticks (also those made when drawing), legends.
    for axis in fig.axes:
        axis.tick_params(which="both", labelsize=FONT_SIZE)
    for text in fig.findobj(matplotlib.text.Text):
        text.set_fontsize(FONT_SIZE)
    fig.tight_layout()
    return fig


def _figure(out_dir, sharpness, reports, taus, runs, lr0) -> str:

    plt = pyplot()
    os.makedirs(out_dir, exist_ok=True)
    fig = demo_figure(sharpness, reports, taus, runs, lr0)
    path = os.path.join(out_dir, "demo.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
