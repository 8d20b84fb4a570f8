"""Two experiments on the bundled digits: the delayed edge of stability, and the
paper's claims at small scale (``stability experiment eos|paper``).

Delayed edge of stability (`edge_of_stability`)
    Cohen, Kaur, Li, Kolter and Talwalkar (ICLR 2021): full-batch gradient descent
    at step size eta raises the sharpness (largest Hessian eigenvalue of the
    training loss) until it reaches 2 / eta and then hovers there. The linear
    analysis of this library predicts the delayed analogue: the level
    ``max_stable_sharpness(eta, tau, beta, momentum) = q_max(tau, beta) / eta``.
    Each run is full-batch delayed gradient descent (`stability.train_async` with
    ``batch_size=None``) of one tanh MLP from ONE initialization, on the first
    ``n`` digits, with the sharpness tracked (`stability.SharpnessTracker`, warm
    started). The step size of delay tau is ``eta_tau = lr_for_delay(eta_0, tau)``,
    so that every run has the SAME predicted level ``2 / eta_0``, above the
    initial sharpness: each run starts below its line and must climb to it. Had
    the delay no effect on the level, a run would rise to ``2 / eta_tau`` instead
    (21x higher at tau = 16): the two hypotheses are far apart. Runs last the
    same effective time ``sum of step sizes = eta_tau x steps``, so they follow
    the same gradient flow until they meet their edge. A control run (tau = 0
    at ``eta_0 / CONTROL_FACTOR``, its level 8x higher, out of reach) shows where
    that flow goes when no edge stops it: a plateau is the edge's only if the
    control rises past it. Momentum: heavy ball and
    shifted (beta = 0.9) at one delay, at the effective rate ``lr / (1 - beta)``
    of the plain run at that delay; their predicted levels differ
    (``q_max(tau, 0.9) / lr``). Reported per run: the plateau (median of the
    tracked sharpness over the last half of the run), the peak, and each over
    the prediction. Both squared error and cross-entropy.

The paper's claims (`paper_claims`)
    Giladi, Shpigel Nacson, Hoffer and Soudry, "At Stability's Edge", ICLR 2020:
    without re-tuning, delay costs generalization or stability; with the
    learning rate of `stability.lr_for_delay` accuracy stays at the tau = 0
    level; momentum hurts under delay, shifted momentum less. Here: a fixed
    train/test split of the 1797 digits, a tanh MLP with cross-entropy,
    mini-batches, N round-robin workers (tau = N - 1), seeds (initialization
    and batch order; the same initialization for every N and policy of a
    seed). Policies: ``fixed`` (the lr tuned at tau = 0 on a validation split
    of the training set), ``lr_for_delay`` (that lr moved to tau), and
    ``heavy_ball`` / ``shifted`` (beta = 0.9 at the effective rate of
    ``lr_for_delay``, i.e. ``lr = lr_for_delay(lr_0, tau) (1 - beta)``). Every
    run has the same number of epochs. Reported: test accuracy (mean and
    spread over seeds), final training loss, and the sharpness of the point
    reached over the threshold ``max_stable_sharpness(lr, tau, beta,
    momentum)``.

Sizes: ``"quick"`` (the default of the command, minutes on a laptop CPU),
``"full"`` (more data, longer runs), ``"tiny"`` (the test suite's). Every
number goes into the result (``to_dict``) and `write_outputs` writes it as
JSON, a markdown table and PNG figures.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.curvature.tracking import SharpnessTracker
from stability.figures import pyplot
from stability.networks.examples import N_DIGITS, load_digits
from stability.progress import progress_bar
from stability.theory.tuning import lr_for_delay
from stability.training import train_async
from stability.validation import check_option

__all__ = [
    "EOS_SIZES",
    "PAPER_SIZES",
    "EosRun",
    "EosResult",
    "PaperRun",
    "PaperResult",
    "edge_of_stability",
    "paper_claims",
    "write_outputs",
    "json_ready",
    "mlp_init",
    "mlp_apply",
    "squared_error",
    "cross_entropy",
    "classification_metrics",
]

SIZES = ("tiny", "quick", "full")

# Delayed edge of stability. eta0: the tau = 0 step size of each loss (the
# predicted level of every run is 2 / eta0); time: the effective time
# eta_tau x steps of each run; checks: sharpness checks per run; chunk: steps per
# compiled scan (None: one check interval; tiny: 1, so that runs of one loss, delay
# and rule share one compiled program, as the tests want).
EOS_SIZES = {
    "tiny": dict(n=64, width=8, depth=2, taus=(0, 1), momentum_tau=1, time=3.0, checks=4, chunk=1),
    "quick": dict(
        n=500,
        width=64,
        depth=2,
        taus=(0, 1, 2, 4, 8, 16),
        momentum_tau=4,
        time=60.0,
        checks=30,
        chunk=None,
    ),
    "full": dict(
        n=N_DIGITS,
        width=64,
        depth=2,
        taus=(0, 1, 2, 4, 8, 16),
        momentum_tau=4,
        time=200.0,
        checks=60,
        chunk=None,
    ),
}
EOS_ETA0 = {"squared_error": 0.2, "cross_entropy": 0.6}
EOS_OUT_SCALE = 0.3  # the output layer's initial scale (sharpness starts below 2 / eta0)
EOS_BETA = 0.9
PLATEAU_PART = 0.5  # the plateau is the median over this last part of the run
CONTROL_FACTOR = 8.0  # the control run's lr is eta0 / CONTROL_FACTOR (tau = 0)

# The paper's claims.
PAPER_SIZES = {
    "tiny": dict(workers=(1, 2), seeds=(0,), epochs=2, lrs=(0.3,), width=16, test=300),
    "quick": dict(
        workers=(1, 5, 9, 17, 33),
        seeds=(0, 1, 2),
        epochs=30,
        lrs=(0.1, 0.3, 1.0, 3.0),
        width=64,
        test=500,
    ),
    "full": dict(
        workers=(1, 5, 9, 17, 33),
        seeds=(0, 1, 2),
        epochs=100,
        lrs=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
        width=64,
        test=500,
    ),
}
PAPER_BATCH = 32
PAPER_BETA = 0.9
PAPER_POLICIES = ("fixed", "lr_for_delay", "heavy_ball", "shifted")
VALIDATION = 0.25  # part of the training split held out to tune the tau = 0 lr


# ---------------------------------------------------------------- the model


def mlp_init(seed: int, sizes, *, out_scale: float = 1.0, dtype=None) -> list[dict]:
    """A tanh MLP's parameters: ``[{"w": (m, n), "b": (n,)}, ...]`` for ``sizes``.

    LeCun-normal weights (variance 1 / fan-in) from ``numpy.random.default_rng(seed)``
    (no compiled program per layer shape), zero biases; the output layer's weights are
    multiplied by ``out_scale``.
    """
    dtype = dtype or jnp.result_type(float)
    rng = np.random.default_rng(seed)
    params = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        scale = (out_scale if i == len(sizes) - 2 else 1.0) / math.sqrt(m)
        w = rng.standard_normal((m, n)) * scale
        params.append({"w": jnp.asarray(w, dtype), "b": jnp.zeros((n,), dtype)})
    return params


def mlp_apply(params, x):
    """Logits ``W_L tanh(... tanh(x W_1 + b_1) ...) + b_L``."""
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def squared_error(params, batch):
    """``(1 / 2B) sum_i ||f(x_i) - onehot(y_i)||^2`` (Cohen et al.'s squared loss)."""
    x, y = batch
    out = mlp_apply(params, x)
    target = jax.nn.one_hot(y, out.shape[-1], dtype=out.dtype)
    return 0.5 * jnp.mean(jnp.sum(jnp.square(out - target), axis=-1))


def cross_entropy(params, batch):
    """Mean softmax cross-entropy of the logits on integer labels."""
    x, y = batch
    out = mlp_apply(params, x)
    picked = jnp.take_along_axis(out, y[:, None], axis=-1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(out, axis=-1) - picked)


def classification_metrics(params, batch) -> dict:
    """``{"loss": cross-entropy, "accuracy": fraction of argmax == label}``."""
    x, y = batch
    out = mlp_apply(params, x)
    hits = (jnp.argmax(out, axis=-1).astype(y.dtype) == y).astype(out.dtype)
    return {"loss": cross_entropy(params, batch), "accuracy": jnp.mean(hits)}


LOSSES = {"squared_error": squared_error, "cross_entropy": cross_entropy}


# ---------------------------------------------------------------- edge of stability


class EosRun(NamedTuple):
    """One full-batch delayed GD run with its tracked sharpness.

    loss, tau, momentum, beta, lr: the run (``momentum="none"`` for beta = 0).
    predicted: ``max_stable_sharpness(lr, tau, beta, momentum)`` (1 / lr units,
    like the sharpness). no_delay_level: the level the run would reach if the
    delay did not matter, ``2 (1 + beta) / lr`` (Cohen et al.'s). steps: steps
    run; diverged: the loss became non-finite. step, sharpness, error: the
    tracked checks (``error``: the residual bound). loss_step, train_loss: the
    full-data loss at the chunk ends. plateau: median sharpness over the last
    ``PLATEAU_PART`` of the steps; peak: the largest check. num_hvps: products
    per check (mean). seconds: the run's wall-clock time. control: the control
    run (tau = 0 at ``eta_0 / CONTROL_FACTOR``: its level is out of reach, it
    shows the sharpness the flow reaches when no edge stops it).
    """

    loss: str
    tau: int
    momentum: str
    beta: float
    lr: float
    predicted: float
    no_delay_level: float
    steps: int
    diverged: bool
    step: np.ndarray
    sharpness: np.ndarray
    error: np.ndarray
    loss_step: np.ndarray
    train_loss: np.ndarray
    plateau: float
    peak: float
    num_hvps: float
    seconds: float
    control: bool = False

    @property
    def ratio(self) -> float:
        """plateau / predicted."""
        return self.plateau / self.predicted

    @property
    def peak_ratio(self) -> float:
        return self.peak / self.predicted

    @property
    def label(self) -> str:
        if self.control:
            return f"sgd, control (eta0 / {CONTROL_FACTOR:g})"
        return "sgd" if self.momentum == "none" else f"{self.momentum} {self.beta:g}"


class EosResult(NamedTuple):
    """`edge_of_stability`'s runs, configuration and timing."""

    runs: list
    config: dict
    seconds: float

    def table(self) -> str:
        """The markdown table: tau, rule, predicted, plateau, ratio, peak."""
        head = (
            "| loss | tau | rule | lr | predicted q_max/lr | plateau (median, last half) "
            "| plateau / predicted | peak / predicted | 2(1+beta)/lr (no-delay level) "
            "| steps | products/check |\n"
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        rows = [
            f"| {r.loss} | {r.tau} | {r.label} | {r.lr:.4g} | {r.predicted:.4g} | "
            f"{r.plateau:.4g} | {r.ratio:.3f} | {r.peak_ratio:.3f} | {r.no_delay_level:.4g} | "
            f"{r.steps}{' (diverged)' if r.diverged else ''} | {r.num_hvps:.1f} |"
            for r in self.runs
        ]
        return "\n".join([head, *rows])

    def conclusion(self) -> str:
        """What the runs show, in words, from their numbers: where the sharpness settled
        against the delayed limit ``max_stable_sharpness(lr, tau)`` per loss, against the
        no-delay level, and the control run."""
        parts = []
        for loss in dict.fromkeys(r.loss for r in self.runs):
            runs = [r for r in self.runs if r.loss == loss and not r.control and not r.diverged]
            if not runs:
                continue
            ratios = np.array([r.ratio for r in runs])
            low, high = float(ratios.min()), float(ratios.max())
            taus = sorted({r.tau for r in runs})
            if low >= 0.9 and high <= 1.3:
                where = "settled at the delayed limit"
            elif high < 0.9:
                where = "stayed below the delayed limit"
            else:
                where = "ended near or below the delayed limit"
            delayed = [r for r in runs if r.tau > 0]
            gap = min((r.no_delay_level / r.predicted for r in delayed), default=math.nan)
            text = (
                f"With {loss.replace('_', ' ')}, full-batch delayed GD {where}: the plateau is "
                f"{low:.2f} to {high:.2f} times max_stable_sharpness(lr, tau) over {len(runs)} "
                f"runs (tau {taus[0]} to {taus[-1]}, with and without momentum)"
            )
            if math.isfinite(gap):
                text += (
                    f", while the no-delay level 2(1 + beta)/lr is {gap:.1f} times the limit or "
                    "more at tau >= 1: the delay sets where the sharpness stops"
                )
            controls = [r for r in self.runs if r.loss == loss and r.control]
            if controls:
                text += (
                    f"; the control run (lr / {CONTROL_FACTOR:g}, its limit out of reach) "
                    f"stopped at {controls[0].ratio:.2f} of its limit"
                )
            diverged = [r for r in self.runs if r.loss == loss and r.diverged]
            if diverged:
                text += f"; {len(diverged)} run(s) diverged"
            parts.append(text + ".")
        return " ".join(parts)

    def to_dict(self) -> dict:
        runs = []
        for r in self.runs:
            d = {k: json_ready(v) for k, v in r._asdict().items()}
            d.update(ratio=json_ready(r.ratio), peak_ratio=json_ready(r.peak_ratio), label=r.label)
            runs.append(d)
        return {
            "experiment": "eos",
            "config": json_ready(self.config),
            "seconds": self.seconds,
            "runs": runs,
        }


def edge_of_stability(
    size: str = "quick", *, losses=("squared_error", "cross_entropy"), progress: bool = True
) -> EosResult:
    """Run the delayed edge-of-stability experiment (module docstring) at ``size``.

    Returns:
      An `EosResult`; `write_outputs` writes its JSON, table and figures.
    """
    size = check_option("size", size, SIZES)
    if isinstance(losses, str):
        losses = (losses,)
    for name in losses:
        check_option("losses", name, tuple(LOSSES))
    cfg = EOS_SIZES[size]
    start = time.perf_counter()
    with _float64():
        x, y = load_digits(cfg["n"], dtype=jnp.float64)
        sizes = [64] + [cfg["width"]] * cfg["depth"] + [10]
        params0 = mlp_init(0, sizes, out_scale=EOS_OUT_SCALE, dtype=jnp.float64)
        plan = []
        for name in losses:
            eta0 = EOS_ETA0[name]
            for tau in cfg["taus"]:
                plan.append((name, tau, "none", 0.0, float(lr_for_delay(eta0, tau)), False))
            lr_t = float(lr_for_delay(eta0, cfg["momentum_tau"]))
            for rule in ("heavy_ball", "shifted"):
                lr = lr_t * (1 - EOS_BETA)
                plan.append((name, cfg["momentum_tau"], rule, EOS_BETA, lr, False))
            plan.append((name, 0, "none", 0.0, eta0 / CONTROL_FACTOR, True))
        runs = []
        bar = _bar(len(plan), progress, "eos runs")
        for name, tau, rule, beta, lr, control in plan:
            bar.set_postfix_str(f"{name} tau={tau} {rule}{' control' if control else ''}")
            run = _eos_run(name, params0, (x, y), tau, rule, beta, lr, cfg, progress)
            runs.append(run._replace(control=control))
            bar.update(1)
        bar.close()
    config = dict(
        size=size,
        **cfg,
        eta0={k: EOS_ETA0[k] for k in losses},
        out_scale=EOS_OUT_SCALE,
        beta=EOS_BETA,
        control_factor=CONTROL_FACTOR,
        plateau_part=PLATEAU_PART,
        model=f"tanh MLP {sizes}",
        tracker_tol=1e-3,
    )
    return EosResult(runs, config, time.perf_counter() - start)


def _eos_run(name, params0, data, tau, rule, beta, lr, cfg, progress) -> EosRun:
    momentum = "heavy_ball" if rule == "none" else rule
    eff = lr / (1 - beta)
    steps = max(cfg["checks"], math.ceil(cfg["time"] / eff))
    every = max(1, math.ceil(steps / cfg["checks"]))
    steps = every * cfg["checks"]  # the last step is a check
    chunk = cfg["chunk"] or every
    tracker = SharpnessTracker(
        LOSSES[name], data, lr=lr, tau=tau, beta=beta, momentum=momentum, every=every, tol=1e-3
    )
    t0 = time.perf_counter()
    run = train_async(
        LOSSES[name],
        params0,
        data,
        lr=lr,
        tau=tau,
        beta=beta,
        momentum=momentum,
        batch_size=None,
        epochs=steps,
        tracker=tracker,
        chunk=chunk,
        progress=progress,
    )
    h = tracker.arrays()
    sharp = h["sharpness"]
    late = h["step"] >= (1 - PLATEAU_PART) * steps
    plateau = float(np.median(sharp[late])) if np.any(late) else float("nan")
    return EosRun(
        loss=name,
        tau=tau,
        momentum=rule,
        beta=beta,
        lr=lr,
        predicted=float(tracker.threshold),
        no_delay_level=2 * (1 + beta) / lr,
        steps=steps,
        diverged=run.diverged,
        step=h["step"],
        sharpness=sharp,
        error=h["error"],
        loss_step=run.step,
        train_loss=run.train_loss,
        plateau=plateau,
        peak=float(np.max(sharp)) if sharp.size else float("nan"),
        num_hvps=float(np.mean(h["num_hvps"])) if sharp.size else float("nan"),
        seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------- the paper's claims


class PaperRun(NamedTuple):
    """One mini-batch run of `paper_claims`.

    workers: N (round robin, tau = N - 1). policy: one of ``PAPER_POLICIES``.
    seed: initialization and batch order. lr, beta, momentum: the run's.
    test_accuracy, test_loss, train_loss: at the end (NaN when diverged).
    sharpness: the training loss's largest Hessian eigenvalue at the point
    reached (tol 1e-3); threshold: ``max_stable_sharpness(lr, tau, beta,
    momentum)``. diverged: the loss became non-finite. blew_up: the final
    training loss is above the initial one (or non-finite): the run left the
    region it started in. seconds: wall clock.
    """

    workers: int
    policy: str
    seed: int
    lr: float
    beta: float
    momentum: str
    test_accuracy: float
    test_loss: float
    train_loss: float
    sharpness: float
    threshold: float
    diverged: bool
    blew_up: bool
    seconds: float

    @property
    def tau(self) -> int:
        return self.workers - 1

    @property
    def fraction_of_limit(self) -> float:
        return self.sharpness / self.threshold


class PaperResult(NamedTuple):
    """`paper_claims`'s runs, the tuned lr and its tuning runs, configuration, timing."""

    runs: list
    lr0: float
    tuning: dict
    config: dict
    seconds: float

    def summary(self) -> list[dict]:
        """Per (N, policy): accuracy mean, spread (min..max, std), sharpness / threshold."""
        rows = []
        for n in self.config["workers"]:
            for policy in PAPER_POLICIES:
                rs = [r for r in self.runs if r.workers == n and r.policy == policy]
                if not rs:
                    continue
                acc = np.array([r.test_accuracy for r in rs])
                frac = np.array([r.fraction_of_limit for r in rs])
                kept = [r.fraction_of_limit for r in rs if not (r.blew_up or r.diverged)]
                rows.append(
                    dict(
                        workers=n,
                        tau=n - 1,
                        policy=policy,
                        lr=rs[0].lr,
                        beta=rs[0].beta,
                        accuracy_mean=float(np.mean(acc)),
                        accuracy_std=float(np.std(acc)),
                        accuracy_min=float(np.min(acc)),
                        accuracy_max=float(np.max(acc)),
                        train_loss_mean=float(np.mean([r.train_loss for r in rs])),
                        fraction_of_limit_mean=float(np.mean(frac)),
                        fraction_of_limit_max=float(np.max(frac)),
                        # over the runs that stayed (a blown-up run's ratio is not a point
                        # reached by training); NaN when none did
                        fraction_of_limit_stayed=float(np.mean(kept)) if kept else math.nan,
                        diverged=int(sum(r.diverged for r in rs)),
                        blew_up=int(sum(r.blew_up for r in rs)),
                        seeds=len(rs),
                    )
                )
        return rows

    def conclusion(self) -> str:
        """What the runs show, in words, from their numbers: the fixed lr against the
        re-tuned ones as the workers grow, and heavy ball against shifted momentum."""
        rows = {(s["workers"], s["policy"]): s for s in self.summary()}
        workers = self.config["workers"]
        first, last = workers[0], workers[-1]

        def acc(n, policy):
            return rows[(n, policy)]["accuracy_mean"]

        blown = [n for n in workers if rows[(n, "fixed")]["blew_up"] > 0]
        text = (
            f"At the fixed lr_0 = {self.lr0:g} test accuracy goes from {acc(first, 'fixed'):.3f} "
            f"(N = {first}) to {acc(last, 'fixed'):.3f} (N = {last})"
        )
        text += (
            f", and training blows up from N = {blown[0]} on ({len(blown)} of {len(workers)} "
            "worker counts)"
            if blown
            else ", and no run blows up"
        )
        text += (
            f"; with lr_for_delay the accuracy stays between "
            f"{min(acc(n, 'lr_for_delay') for n in workers):.3f} and "
            f"{max(acc(n, 'lr_for_delay') for n in workers):.3f} and no run blows up"
            if all(rows[(n, "lr_for_delay")]["blew_up"] == 0 for n in workers)
            else "; lr_for_delay runs also blew up"
        )
        hb = [acc(n, "heavy_ball") - acc(n, "shifted") for n in workers]
        better = "heavy ball" if np.mean(hb) >= 0 else "shifted momentum"

        def reached(policy):
            return np.nanmean([rows[(n, policy)]["fraction_of_limit_stayed"] for n in workers])

        text += (
            f". At the same effective lr, {better} reaches the higher accuracy on average "
            f"(heavy ball minus shifted: {min(hb):+.3f} to {max(hb):+.3f} over N); "
            f"sharpness / threshold is {reached('shifted'):.2f} for shifted momentum against "
            f"{reached('heavy_ball'):.2f} for heavy ball (mean over N)."
        )
        return text

    def table(self) -> str:
        head = (
            "| N | tau | policy | lr | beta | test accuracy mean +- std [min, max] "
            "| train loss | sharpness / threshold (mean, max) | blew up (loss above start) "
            "|\n|---:|---:|---|---:|---:|---|---:|---|---:|"
        )
        rows = [
            f"| {s['workers']} | {s['tau']} | {s['policy']} | {s['lr']:.4g} | {s['beta']:g} | "
            f"{s['accuracy_mean']:.4f} +- {s['accuracy_std']:.4f} "
            f"[{s['accuracy_min']:.3f}, {s['accuracy_max']:.3f}] | {s['train_loss_mean']:.3g} | "
            f"{s['fraction_of_limit_mean']:.3f}, {s['fraction_of_limit_max']:.3f} | "
            f"{s['blew_up']}/{s['seeds']} |"
            for s in self.summary()
        ]
        return "\n".join([head, *rows])

    def to_dict(self) -> dict:
        runs = []
        for r in self.runs:
            d = {k: json_ready(v) for k, v in r._asdict().items()}
            d.update(tau=r.tau, fraction_of_limit=json_ready(r.fraction_of_limit))
            runs.append(d)
        return {
            "experiment": "paper",
            "config": json_ready(self.config),
            "lr0": self.lr0,
            "tuning": json_ready(self.tuning),
            "seconds": self.seconds,
            "summary": json_ready(self.summary()),
            "runs": runs,
        }


def paper_claims(size: str = "quick", *, progress: bool = True) -> PaperResult:
    """Run the paper-claims experiment (module docstring) at ``size``.

    Returns:
      A `PaperResult`; `write_outputs` writes its JSON, table and figures.
    """
    size = check_option("size", size, SIZES)
    cfg = PAPER_SIZES[size]
    start = time.perf_counter()
    with _float64():
        x, y = load_digits(dtype=jnp.float64)
        perm = np.random.default_rng(0).permutation(N_DIGITS)
        test_idx, train_idx = perm[: cfg["test"]], perm[cfg["test"] :]
        train, test = (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])
        sizes = [64, cfg["width"], 10]
        inits = {s: mlp_init(s, sizes, dtype=jnp.float64) for s in cfg["seeds"]}

        # Tune the tau = 0 lr on a validation part of the training split (first seed;
        # no tuning runs when one lr is given).
        n_val = int(VALIDATION * len(train_idx))
        fit, val = (train[0][n_val:], train[1][n_val:]), (train[0][:n_val], train[1][:n_val])
        tuning = {}
        bar = _bar(len(cfg["lrs"]), progress, "tuning lr at tau=0")
        for lr in cfg["lrs"] if len(cfg["lrs"]) > 1 else ():
            run = train_async(
                cross_entropy,
                inits[cfg["seeds"][0]],
                fit,
                lr=lr,
                num_workers=1,
                batch_size=PAPER_BATCH,
                epochs=cfg["epochs"],
                eval_data=val,
                eval_fn=classification_metrics,
                seed=cfg["seeds"][0],
            )
            acc = run.eval["accuracy"][-1] if not run.diverged else float("nan")
            tuning[lr] = float(acc)
            bar.update(1)
        bar.close()
        lr0 = max(cfg["lrs"], key=lambda lr: (np.nan_to_num(tuning.get(lr, 0.0), nan=-1.0), -lr))

        plan = []
        for n in cfg["workers"]:
            tau = n - 1
            adjusted = float(lr_for_delay(lr0, tau))
            lrs = {"fixed": (lr0, 0.0, "heavy_ball"), "lr_for_delay": (adjusted, 0.0, "heavy_ball")}
            for rule in ("heavy_ball", "shifted"):
                lrs[rule] = (adjusted * (1 - PAPER_BETA), PAPER_BETA, rule)
            for policy in PAPER_POLICIES:
                for seed in cfg["seeds"]:
                    plan.append((n, policy, seed, *lrs[policy]))
        runs, done = [], {}
        bar = _bar(len(plan), progress, "paper runs")
        for n, policy, seed, lr, beta, momentum in plan:
            # N = 1: lr_for_delay is the fixed lr, and one worker's own buffer is the
            # buffer (shifted is heavy ball): those runs are one run.
            key = (n, seed, lr, beta, "heavy_ball" if n == 1 else momentum)
            if key in done:
                runs.append(done[key]._replace(policy=policy, momentum=momentum))
            else:
                done[key] = _paper_run(
                    train, test, inits[seed], n, policy, seed, lr, beta, momentum, cfg
                )
                runs.append(done[key])
            bar.update(1)
        bar.close()
    config = dict(
        size=size,
        **cfg,
        batch_size=PAPER_BATCH,
        beta=PAPER_BETA,
        train_examples=len(train_idx),
        validation=n_val,
        model=f"tanh MLP {sizes}, cross-entropy",
        split_seed=0,
    )
    return PaperResult(runs, float(lr0), tuning, config, time.perf_counter() - start)


def _paper_run(train, test, params0, n, policy, seed, lr, beta, momentum, cfg) -> PaperRun:
    t0 = time.perf_counter()
    run = train_async(
        cross_entropy,
        params0,
        train,
        lr=lr,
        num_workers=n,
        beta=beta,
        momentum=momentum,
        batch_size=PAPER_BATCH,
        epochs=cfg["epochs"],
        eval_data=test,
        eval_fn=classification_metrics,
        seed=seed,
    )
    tracker = SharpnessTracker(
        cross_entropy, train, lr=lr, tau=n - 1, beta=beta, momentum=momentum, tol=1e-3
    )
    if run.diverged:
        acc = test_loss = train_loss = sharp = float("nan")
    else:
        acc, test_loss = float(run.eval["accuracy"][-1]), float(run.eval["loss"][-1])
        train_loss = float(run.train_loss[-1])
        sharp = tracker.check(run.params, int(run.step[-1])).sharpness
    blew_up = run.diverged or not run.train_loss[-1] <= run.train_loss[0]
    return PaperRun(
        n,
        policy,
        seed,
        lr,
        beta,
        momentum,
        acc,
        test_loss,
        train_loss,
        float(sharp),
        tracker.threshold,
        run.diverged,
        bool(blew_up),
        time.perf_counter() - t0,
    )


# ---------------------------------------------------------------- outputs


def write_outputs(result, out_dir: str) -> dict:
    """Write ``<name>.json`` (every number), ``<name>.md`` (the table) and PNG figures.

    Returns:
      ``{"json": path, "markdown": path, "figures": [paths]}``.
    """
    if isinstance(result, (EosResult, PaperResult)):
        name = "eos" if isinstance(result, EosResult) else "paper"
    elif callable(getattr(result, "figures", None)) and isinstance(
        getattr(result, "name", None), str
    ):
        name = result.name  # an experiment of its own module (e.g. adam_eos)
    else:
        raise TypeError(
            "result must be an EosResult, a PaperResult or an experiment result with a name "
            f"and figures(); got {type(result).__name__}"
        )
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "json": os.path.join(out_dir, f"{name}.json"),
        "markdown": os.path.join(out_dir, f"{name}.md"),
    }
    with open(paths["json"], "w") as f:
        json.dump(result.to_dict(), f, indent=1, allow_nan=False)
        f.write("\n")
    if name == "eos":
        figures = _eos_figures(result, out_dir)
    elif name == "paper":
        figures = _paper_figures(result, out_dir)
    else:
        figures = result.figures(out_dir)
    with open(paths["markdown"], "w") as f:
        f.write(_markdown(result, figures, out_dir))
    paths["figures"] = figures
    return paths


def _markdown(result, figures, out_dir) -> str:
    title = getattr(result, "title", None) or (
        "Delayed edge of stability" if isinstance(result, EosResult) else "Paper claims"
    )
    lines = [f"# {title}"]
    lines.append("")
    lines.append(
        f"size `{result.config['size']}`, {result.seconds:.1f} s; config: "
        f"`{json.dumps(json_ready(result.config))}`"
    )
    if isinstance(result, PaperResult):
        tuned = ", ".join(f"{lr:g}: {acc:.4f}" for lr, acc in result.tuning.items())
        how = f"tuned on validation accuracy ({tuned})" if tuned else "given (not tuned)"
        lines.append("")
        lines.append(f"tau = 0 lr: lr_0 = {result.lr0:g}, {how}")
    lines += ["", result.table(), "", "## Conclusion", "", result.conclusion(), ""]
    lines += [f"![{os.path.basename(p)}]({os.path.relpath(p, out_dir)})" for p in figures]
    return "\n".join(lines) + "\n"


def _eos_figures(result: EosResult, out_dir: str) -> list[str]:
    plt = pyplot()
    paths = []
    for name in dict.fromkeys(r.loss for r in result.runs):
        runs = [r for r in result.runs if r.loss == name]
        controls = [r for r in runs if r.control]
        cols = min(3, len(runs))
        rows = -(-len(runs) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.3 * rows), squeeze=False)
        for ax, r in zip(axes.ravel(), runs, strict=False):
            top = 1.6 * max(r.predicted, np.nanmax(r.sharpness, initial=0))
            for c in controls:
                if c is not r:
                    ax.plot(
                        c.step * c.lr,
                        c.sharpness,
                        "-",
                        color="0.6",
                        lw=1,
                        label="control (level out of reach)",
                    )
            t = r.step * r.lr / (1 - r.beta)
            ax.plot(t, r.sharpness, "o-", ms=2.5, lw=1, label="sharpness")
            ax.axhline(r.predicted, color="k", ls="--", lw=1.2, label="q_max(tau, beta) / lr")
            if r.no_delay_level < top:
                ax.axhline(
                    r.no_delay_level, color="tab:red", ls=":", lw=1, label="2 (1 + beta) / lr"
                )
            ax.set_title(
                f"tau = {r.tau}, {r.label}, lr {r.lr:.3g}: ratio {r.ratio:.2f}", fontsize=8
            )
            ax.set_xlabel("effective time (lr / (1 - beta)) x step")
            ax.set_ylabel("sharpness")
            ax.set_ylim(0, top)
            ax.legend(fontsize=6)
        for ax in axes.ravel()[len(runs) :]:
            ax.axis("off")
        fig.suptitle(f"delayed GD on digits, {name}: sharpness vs the predicted level")
        fig.tight_layout()
        path = os.path.join(out_dir, f"eos_{name}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r.loss for r in result.runs):
        plain = [r for r in result.runs if r.loss == name and r.momentum == "none"]
        plain = [r for r in plain if not r.control]
        taus = np.maximum([r.tau for r in plain], 0.5)
        ax.plot(taus, [r.ratio for r in plain], "o-", label=f"{name}: plateau / predicted")
        ax.plot(taus, [r.peak_ratio for r in plain], "x:", label=f"{name}: peak / predicted")
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("delay tau (0 drawn at 0.5)")
    ax.set_ylabel("measured / predicted sharpness")
    ax.set_title("delayed edge of stability: 1 = the predicted level")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "eos_summary.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [*paths, path]


def _paper_figures(result: PaperResult, out_dir: str) -> list[str]:
    plt = pyplot()
    summary = result.summary()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    for i, policy in enumerate(PAPER_POLICIES):
        rows = [s for s in summary if s["policy"] == policy]
        n = np.array([s["workers"] for s in rows])
        mean = np.array([s["accuracy_mean"] for s in rows])
        lo = mean - np.array([s["accuracy_min"] for s in rows])
        hi = np.array([s["accuracy_max"] for s in rows]) - mean
        spread = np.maximum(np.nan_to_num(np.stack([lo, hi])), 0.0)  # rounding, NaN: 0
        for ax in axes[:2] if policy != "fixed" else axes[:1]:
            ax.errorbar(n, mean, yerr=spread, fmt="o-", capsize=3, color=f"C{i}", label=policy)
        # Runs that blew up are left out: their ratio is not a point training reached.
        frac = np.array([s["fraction_of_limit_stayed"] for s in rows])
        ok = np.isfinite(frac)
        axes[2].plot(n[ok], np.maximum(frac[ok], 1e-3), "o-", color=f"C{i}", label=policy)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers N (round robin, tau = N - 1)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test accuracy (mean, min..max over seeds)")
    axes[0].set_title(f"digits, {result.config['epochs']} epochs, lr_0 = {result.lr0:g}")
    axes[1].set_title("the same without the fixed lr (zoom)")
    axes[2].axhline(1.0, color="k", ls="--", lw=1)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("sharpness / threshold (mean over seeds that stayed)")
    axes[2].set_title("the point reached against the threshold (1 = the edge)")
    fig.tight_layout()
    path = os.path.join(out_dir, "paper_claims.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


# ---------------------------------------------------------------- helpers


class _float64:
    """Run inside ``jax_enable_x64`` (restored on exit), as the demo does."""

    def __enter__(self):
        self._old = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)

    def __exit__(self, *exc):
        jax.config.update("jax_enable_x64", self._old)


def json_ready(x) -> Any:
    """JSON-ready: numpy to Python, NaN / inf to None (dicts, lists and tuples walked)."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_ready(x.tolist())
    if isinstance(x, (np.generic,)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _bar(total, progress, desc):
    """The experiments' bar over runs: drawn only when stderr is a terminal."""
    return progress_bar(progress, total=total, desc=desc)
