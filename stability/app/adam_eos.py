"""The adaptive edge of stability under delay: ``stability experiment adam-eos``.

Cohen et al. (2022, "Adaptive gradient methods at the edge of stability")
observed that full-batch Adam raises the *preconditioned* sharpness, the largest
eigenvalue of ``P^-1/2 H P^-1/2`` with ``P = diag(sqrt(v_hat) + eps)`` read from
Adam's state, until it reaches ``2 (1 + beta1) / (lr (1 - beta1))`` (38 / lr at
beta1 = 0.9) and then hovers there. The frozen-preconditioner analysis of this
library (docs/theory.md section 16) predicts the level for a gradient delayed by
tau steps:

    level(tau) = q_max(tau, beta1) / (lr c (1 - beta1)),

``q_max`` the heavy ball's threshold and ``c = 1 / (1 - beta1^t)`` Adam's
bias correction at step t. Nobody has measured whether delayed Adam settles
there. Each run here is full-batch ``optax.adam`` with gradients delayed by tau
(`stability.simulate_optax`), from ONE initialization of a tanh MLP on the
first ``n`` bundled digits with the squared error, at the same learning rate
for every tau; every ``steps / checks`` steps the preconditioned sharpness is
computed from the live optimizer state (`stability.SharpnessTracker` called with
``opt_state=``: `stability.preconditioner_from_optax` and
`stability.hessian_spectrum(..., preconditioner=)`, warm-started). Reported
per run: the ratio sharpness / level over time, the plateau (median ratio over
the last half of the run), the final loss, and whether it diverged.

Sizes: ``"tiny"`` (tests), ``"quick"`` (the command's default, a few minutes on
a laptop CPU), ``"full"`` (all the digits, longer runs).
"""

from __future__ import annotations

import math
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.app.experiments import json_ready, mlp_init, squared_error
from stability.curvature.tracking import SharpnessTracker
from stability.delayed_optax import simulate_optax
from stability.networks.examples import N_DIGITS, load_digits
from stability.validation import check_option

__all__ = ["ADAM_EOS_SIZES", "AdamEosRun", "AdamEosResult", "adaptive_edge_of_stability"]

SIZES = ("tiny", "quick", "full")
ADAM_EOS_SIZES = {
    "tiny": dict(n=64, width=8, depth=2, taus=(0, 2), steps=60, checks=3),
    "quick": dict(n=500, width=64, depth=2, taus=(0, 1, 2, 4, 8, 16), steps=2000, checks=20),
    "full": dict(n=N_DIGITS, width=64, depth=2, taus=(0, 1, 2, 4, 8, 16), steps=6000, checks=60),
}
ADAM_LR = 3e-3
ADAM_B1 = 0.9
ADAM_B2 = 0.999
ADAM_EPS = 1e-8
OUT_SCALE = 0.3  # the output layer's initial scale, as in the eos experiment
PLATEAU_PART = 0.5  # the plateau is the median ratio over this last part of the run
TRACKER_TOL = 1e-3


class AdamEosRun(NamedTuple):
    """One full-batch delayed Adam run with its preconditioned sharpness.

    tau, lr, b1: the run. step: the checked steps. sharpness, error: the largest
    eigenvalue of ``P^-1/2 H P^-1/2`` and its residual bound at each check (1 / lr
    units). level: the predicted level at each check (``c`` moves with the step
    count). ratio: sharpness / level. loss_step, loss: the full-data loss at the
    checks. plateau: median ratio over the last ``PLATEAU_PART`` of the checks.
    no_delay_level: the tau = 0 level ``2 (1 + b1) / (lr (1 - b1))`` (c = 1).
    diverged: the loss became non-finite. seconds: wall-clock time of the run.
    """

    tau: int
    lr: float
    b1: float
    step: np.ndarray
    sharpness: np.ndarray
    error: np.ndarray
    level: np.ndarray
    ratio: np.ndarray
    loss: np.ndarray
    plateau: float
    no_delay_level: float
    diverged: bool
    seconds: float


class AdamEosResult(NamedTuple):
    """`adaptive_edge_of_stability`'s runs, configuration and timing."""

    runs: list
    config: dict
    seconds: float

    name = "adam-eos"
    title = "Delayed Adam at the adaptive edge of stability"

    def table(self) -> str:
        """The markdown table: tau, level, plateau ratio, final loss."""
        head = (
            "| tau | lr | predicted level q_max(tau, b1) / (lr (1 - b1)) | preconditioned "
            "sharpness (median, last half) | plateau / level | max ratio | final loss | steps |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        rows = []
        for r in self.runs:
            late = _late(r)
            rows.append(
                f"| {r.tau} | {r.lr:.3g} | {r.level[-1]:.4g} | "
                f"{float(np.median(r.sharpness[late])) if late.any() else math.nan:.4g} | "
                f"{r.plateau:.3f} | {float(np.max(r.ratio)) if r.ratio.size else math.nan:.3f} | "
                f"{r.loss[-1]:.3g} | {int(r.step[-1])}{' (diverged)' if r.diverged else ''} |"
            )
        return "\n".join([head, *rows])

    def conclusion(self) -> str:
        """Where the preconditioned sharpness settled against the predicted level, in
        words, from the runs' numbers."""
        runs = [r for r in self.runs if not r.diverged and math.isfinite(r.plateau)]
        if not runs:
            return "Every run diverged: no plateau to compare with the prediction."
        at = [r for r in runs if 0.9 <= r.plateau <= 1.1]
        above = [r for r in runs if r.plateau > 1.1]
        below = [r for r in runs if r.plateau < 0.9]
        parts = []
        zero = [r for r in runs if r.tau == 0]
        if zero:
            verb = "settled at" if 0.9 <= zero[0].plateau <= 1.1 else "reached"
            parts.append(
                f"Without delay, full-batch Adam's preconditioned sharpness {verb} "
                f"{zero[0].plateau:.2f} times 2(1 + b1)/(lr (1 - b1)) (Cohen et al.'s adaptive "
                "edge of stability)."
            )
        if at:
            parts.append(
                "Within 10 % of the delayed level q_max(tau, b1)/(lr c (1 - b1)): tau "
                + ", ".join(f"{r.tau} ({r.plateau:.2f})" for r in at)
                + "."
            )
        if above:
            parts.append(
                "Above it (states the frozen-preconditioner model calls unstable, where "
                "training nevertheless went on: the live second moment is not frozen): tau "
                + ", ".join(f"{r.tau} ({r.plateau:.2f})" for r in above)
                + "."
            )
        if below:
            parts.append(
                "Below it (the run had not reached its edge): tau "
                + ", ".join(f"{r.tau} ({r.plateau:.2f})" for r in below)
                + "."
            )
        delayed = [r for r in runs if r.tau > 0]
        if delayed:
            gap = min(r.no_delay_level / r.level[-1] for r in delayed)
            parts.append(
                f"The no-delay level is {gap:.1f} times the delayed level or more at tau >= 1, "
                "so the delay, not Adam's tau = 0 edge, sets where the sharpness stops."
            )
        rising = [r for r in runs if r.loss.size > 1 and r.loss[-1] > 2 * np.min(r.loss)]
        if rising:
            parts.append(
                "The loss rose at the end of tau "
                + ", ".join(str(r.tau) for r in rising)
                + " (the edge is not a stable state there)."
            )
        diverged = [r for r in self.runs if r.diverged]
        if diverged:
            parts.append(f"{len(diverged)} run(s) diverged.")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {
            "experiment": self.name,
            "config": json_ready(self.config),
            "seconds": self.seconds,
            "runs": [{k: json_ready(v) for k, v in r._asdict().items()} for r in self.runs],
        }

    def figures(self, out_dir: str) -> list[str]:
        """``adam_eos.png``: the ratio over steps per tau, and the plateau per tau."""
        from stability.figures import pyplot

        plt = pyplot()
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for i, r in enumerate(self.runs):
            ax.plot(r.step, r.ratio, "o-", ms=2.5, lw=1, color=f"C{i}", label=f"tau = {r.tau}")
        ax.axhline(1.0, color="k", ls="--", lw=1.2, label="predicted level")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("preconditioned sharpness / predicted level")
        ax.set_title(f"full-batch delayed Adam on digits, lr {self.config['lr']:g}", fontsize=10)
        ax.legend(fontsize=8)
        taus = np.maximum([r.tau for r in self.runs], 0.5)
        ax2.plot(taus, [r.plateau for r in self.runs], "o-", label="plateau / level")
        ax2.axhline(1.0, color="k", ls="--", lw=1)
        ax2.set_xscale("log")
        ax2.set_xlabel("delay tau (0 drawn at 0.5)")
        ax2.set_ylabel("median ratio, last half")
        ax2.set_title("1 = the frozen-preconditioner prediction", fontsize=10)
        ax2.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, "adam_eos.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return [path]


def adaptive_edge_of_stability(size: str = "quick", *, progress: bool = True) -> AdamEosResult:
    """Run the delayed adaptive edge-of-stability experiment (module docstring).

    Returns:
      An `AdamEosResult`; ``stability.app.experiments.write_outputs`` writes its
      JSON, table and figure.
    """
    import optax

    from stability.progress import progress_bar

    size = check_option("size", size, SIZES)
    cfg = ADAM_EOS_SIZES[size]
    start = time.perf_counter()
    with jax.enable_x64(True):  # the experiment's numbers in float64, restored after
        x, y = load_digits(cfg["n"], dtype=jnp.float64)
        sizes = [64] + [cfg["width"]] * cfg["depth"] + [10]
        params0 = mlp_init(0, sizes, out_scale=OUT_SCALE, dtype=jnp.float64)
        optimizer = optax.adam(ADAM_LR, b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS)
        bar = progress_bar(progress, total=len(cfg["taus"]), desc="adam-eos runs")
        runs = []
        for tau in cfg["taus"]:
            runs.append(_run(squared_error, params0, (x, y), optimizer, tau, cfg))
            bar.update(1)
        bar.close()
    config = dict(
        size=size,
        **cfg,
        lr=ADAM_LR,
        b1=ADAM_B1,
        b2=ADAM_B2,
        eps=ADAM_EPS,
        loss="squared_error",
        out_scale=OUT_SCALE,
        plateau_part=PLATEAU_PART,
        tracker_tol=TRACKER_TOL,
        model=f"tanh MLP {sizes}",
    )
    return AdamEosResult(runs, config, time.perf_counter() - start)


def _run(loss, params0, data, optimizer, tau, cfg) -> AdamEosRun:
    every = max(1, cfg["steps"] // cfg["checks"])
    tracker = SharpnessTracker(loss, data, lr=ADAM_LR, tau=tau, every=every, tol=TRACKER_TOL)
    t0 = time.perf_counter()
    run = simulate_optax(
        loss,
        params0,
        data,
        optimizer,
        tau=tau,
        steps=cfg["steps"],
        record_every=every,
        tracker=tracker,
    )
    h = {k: np.asarray(v, float) for k, v in tracker.history.items()}
    h["level"] = h["threshold"]  # the limit at each check's bias correction
    ratio = h["sharpness"] / h["level"]
    late = h["step"] >= (1 - PLATEAU_PART) * cfg["steps"]
    return AdamEosRun(
        tau=tau,
        lr=ADAM_LR,
        b1=ADAM_B1,
        step=h["step"].astype(int),
        sharpness=h["sharpness"],
        error=h["error"],
        level=h["level"],
        ratio=ratio,
        loss=run.loss[1:][: len(ratio)],
        plateau=float(np.median(ratio[late])) if late.any() else math.nan,
        no_delay_level=2 * (1 + ADAM_B1) / (ADAM_LR * (1 - ADAM_B1)),
        diverged=run.diverged,
        seconds=time.perf_counter() - t0,
    )


def _late(r: AdamEosRun) -> np.ndarray:
    return r.step >= (1 - PLATEAU_PART) * (r.step[-1] if r.step.size else 0)
