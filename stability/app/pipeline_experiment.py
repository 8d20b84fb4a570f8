"""A pipeline's largest stable lr, per block and measured (``stability experiment pipeline``).

Asynchronous 1F1B (PipeDream with weight stashing, PipeMare) on P stages applies to
stage s's parameters the gradient of step ``t - tau_s``, ``tau_s = P - 1 - s``
(`stability.theory.pipeline.pipeline_delays`; `stability.curvature.blocks.Stages`).
Near a minimum with Hessian H the error obeys ``e_{t+1} = e_t - lr sum_b P_b H
e_{t - tau_b}`` (plain delayed SGD; heavy ball adds its buffer), and since the
stage projections P_b do not commute with H no single delay describes it
(docs/theory.md section 18). This experiment puts three answers side by side on
the bundled digits, at a true minimum of a tanh MLP with 4 Dense layers
(`stability.train_to_minimum` with ``depth=3``, float64), for P = 2, 3, 4 stages
(each stage whole layers, cut to balance the parameter counts):

- PREDICTED per block: `stability.curvature.block_spectrum.block_delay_max_lr`
  (the Ritz reduction of ``det(A(z) I + lr sum_b B_b(z) P_b H)``);
  with its default choice of k (doubled from 8 until the lr stops changing), and in
  the full size also at a fixed ``k = 128`` Ritz pairs (``predicted_fixed_k``);
- the UNIFORM models of the same result: every block at the largest delay
  ``tau = P - 1`` (`lr_uniform_max_delay`), at the parameter-weighted mean delay
  rounded down and up (`lr_uniform_mean_delay`), and the first-moment model of the
  delay distribution ``p(tau_b) = n_b / n`` (`lr_delay_distribution`);
- MEASURED: `stability.simulate_async` with ``block_delays=Stages(P)``, full batch,
  on the loss tilted to be exactly stationary at the minimum
  (`stability.stationary_tilt`), from the minimum plus a random perturbation of
  norm 1e-5 (a random direction excites every mode, whatever the critical one is).
  The growth per step of ``sqrt(loss - loss at the minimum)`` (which, unlike the
  distance, does not see the flat directions a pipeline's coupling pushes the
  weights along) is fitted over the second half of the steps (log-linear least
  squares on its RMS envelope). A run is unstable when the measure ever grew past
  1e3 times its start (it left the linear regime: above the boundary the weights
  are thrown out of the minimum and may settle in a flatter region, an edge-of-
  stability catapult, so a late decay proves nothing) or was not finite; else
  stable when that growth is below 1 or the measure fell below 1e-3 of its start.
  Bisection on lr inside ``[0.8, 1.25] x predicted`` (widened when it does not
  straddle) finds where stability is lost. The final bracket ``[lo, hi]`` is
  reported: its width is the measurement's resolution.
- CHECKED: the exact linear recurrence ``e_{t+1} = e_t - lr v_{t+1}``, ``v_{t+1} =
  beta v_t + sum_b P_b H e_{t - tau_b}`` on the dense Hessian (``jax.hessian`` of
  the flattened parameters, independent of the simulator and of the prediction),
  run from a random start at 0.98 and 1.02 times the measured boundary; the growth
  per step of ``||H e_t||`` (blind to the flat directions) must be below 1 at the
  first and above 1 at the second.

Every gap is ``(model - measured) / measured``. Sizes: ``"tiny"`` (the tests: 980
parameters, P = 4, plain SGD, short runs), ``"quick"`` (the command's default:
the same network, P = 2, 3, 4, plain SGD and heavy ball 0.9; about a minute on a
2-core CPU), ``"full"`` (``train_to_minimum(256, hidden=16, depth=3)``, 1754
parameters, longer runs and more halvings).
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from stability.app.experiments import json_ready
from stability.curvature.block_spectrum import block_delay_max_lr
from stability.curvature.blocks import Stages, block_delays
from stability.networks.examples import train_to_minimum
from stability.simulate import simulate_async, stationary_tilt
from stability.validation import check_option

__all__ = [
    "PIPELINE_SIZES",
    "PipelineBoundary",
    "PipelineResult",
    "growth_per_step",
    "pipeline_stability",
]

SIZES = ("tiny", "quick", "full")
SCHEDULE = "1f1b"
PERTURBATION = 1e-5
ENVELOPE = 32  # steps in the RMS envelope of the fitted growth
DECAYED = 1e-3  # the measure fell below this fraction of its start: stable
ESCAPED = 1e3  # the measure grew past this multiple of its start: unstable (nonlinear)
AGREE = 0.03  # a prediction within this relative gap of the measurement agrees with it
DENSE_MARGIN = 0.02  # the dense check runs at (1 -/+ this) x the measured boundary
DENSE_STEPS = 4  # the dense check's steps, times the simulations' steps
BRACKET = (0.8, 1.25)  # times the prediction; asymmetric so that no bisection point is 1
WIDEN = 4  # at most this many widenings (x 1.25) of a bracket that does not straddle
PIPELINE_SIZES = {
    "tiny": dict(n=64, hidden=10, depth=3, stages=(4,), momenta=(0.0,), steps=600, iters=5),
    "quick": dict(
        n=64, hidden=10, depth=3, stages=(2, 3, 4), momenta=(0.0, 0.9), steps=1500, iters=9
    ),
    "full": dict(
        n=256,
        hidden=16,
        depth=3,
        stages=(2, 3, 4),
        momenta=(0.0, 0.9),
        steps=3000,
        iters=12,
        k_fixed=128,
    ),
}


class PipelineBoundary(NamedTuple):
    """One (P, momentum) point.

    stages: P. momentum: the heavy-ball beta (0: plain delayed SGD). delays, sizes:
    the distinct delays and their parameter counts; layers: the layer names of each
    stage. mean_delay: ``sum_b n_b tau_b / n``. predicted: `block_delay_max_lr`'s lr;
    k, lr_change: its Ritz pairs and convergence in k. uniform_max: every block at
    ``tau = P - 1``; uniform_mean_floor, uniform_mean_ceil: at the mean delay rounded
    down and up; distribution: the first-moment delay-distribution model. lo, hi:
    the final bisection bracket of the measured boundary (NaN when none was found);
    measured: its midpoint; half_width: ``(hi - lo) / (2 measured)``. gap_*:
    ``(model - measured) / measured`` of each model. inside: the prediction lies in
    ``[lo, hi]``. rate_lo, rate_hi: the fitted growth per step at the final bracket's
    ends. runs: simulations. predict_seconds, measure_seconds: wall clock.
    dense_below, dense_above: the growth per step of the dense linear recurrence
    at ``(1 -/+ DENSE_MARGIN) x measured``; dense_confirms: below 1, then above 1.
    k_fixed, predicted_fixed_k, gap_predicted_fixed_k: `block_delay_max_lr` at that
    fixed number of Ritz pairs and its gap (0, NaN, NaN when not asked for).
    """

    stages: int
    momentum: float
    delays: tuple
    sizes: tuple
    layers: tuple
    mean_delay: float
    predicted: float
    k: int
    lr_change: float
    uniform_max: float
    uniform_mean_floor: float
    uniform_mean_ceil: float
    distribution: float
    lo: float
    hi: float
    measured: float
    half_width: float
    gap_predicted: float
    gap_uniform_max: float
    gap_uniform_mean_floor: float
    gap_uniform_mean_ceil: float
    gap_distribution: float
    inside: bool
    rate_lo: float
    rate_hi: float
    runs: int
    predict_seconds: float
    measure_seconds: float
    dense_below: float = math.nan
    dense_above: float = math.nan
    dense_confirms: bool = False
    k_fixed: int = 0
    predicted_fixed_k: float = math.nan
    gap_predicted_fixed_k: float = math.nan


MODELS = (
    ("predicted", "block prediction"),
    ("uniform_max", "uniform tau = P - 1"),
    ("uniform_mean_floor", "uniform tau = floor(mean)"),
    ("uniform_mean_ceil", "uniform tau = ceil(mean)"),
    ("distribution", "delay-distribution (first-moment)"),
)


def _pct(x: float) -> str:
    """A signed percentage, with more digits below 0.1 %."""
    return f"{x:+.2%}" if abs(x) >= 1e-3 else f"{x:+.4%}"


def _span(values) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:+.1%}" if math.isclose(lo, hi, abs_tol=5e-4) else f"{lo:+.1%} to {hi:+.1%}"


class PipelineResult(NamedTuple):
    """`pipeline_stability`'s points, network and timing."""

    boundaries: list
    network: dict
    config: dict
    seconds: float

    name = "pipeline"
    title = "Pipeline (asynchronous 1F1B): largest stable lr per block, uniform models, measured"

    def table(self) -> str:
        """The markdown table: per (P, momentum) every model, the measured bracket, gaps."""
        head = (
            "| P | beta | delays: parameters | mean delay | block prediction (gap) "
            "| uniform tau = P - 1 (gap) | uniform floor(mean) (gap) | uniform ceil(mean) "
            "(gap) | distribution model (gap) | measured bracket [lo, hi] | measured "
            "| half-width | prediction in bracket | runs | dense recurrence at 0.98x / 1.02x "
            "|\n|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---|"
        )
        fixed = [b for b in self.boundaries if math.isfinite(b.predicted_fixed_k)]
        if fixed:
            head = head.replace(
                "| block prediction (gap) ",
                f"| block prediction (gap) | at k = {fixed[0].k_fixed} (gap) ",
            ).replace("|---:|---:|---|---:|---:|", "|---:|---:|---|---:|---:|---:|", 1)
        rows = []
        for b in self.boundaries:
            layout = ", ".join(f"{d}: {n}" for d, n in zip(b.delays, b.sizes, strict=True))
            cells = [
                f"{getattr(b, key):.5f} ({getattr(b, 'gap_' + key):+.2%})" for key, _ in MODELS
            ]
            if fixed:
                cells.insert(1, f"{b.predicted_fixed_k:.5f} ({b.gap_predicted_fixed_k:+.2%})")
            rows.append(
                f"| {b.stages} | {b.momentum:g} | {layout} | {b.mean_delay:.3f} | "
                + " | ".join(cells)
                + f" | [{b.lo:.5f}, {b.hi:.5f}] | {b.measured:.5f} | {b.half_width:.2%} | "
                f"{'yes' if b.inside else 'no'} | {b.runs} | {b.dense_below:.6f} / "
                f"{b.dense_above:.6f} ({'confirms' if b.dense_confirms else 'does not confirm'}) |"
            )
        return "\n".join([head, *rows])

    def conclusion(self) -> str:
        """The models against the measured boundary, in words, from the numbers."""
        net = self.network
        found = [b for b in self.boundaries if math.isfinite(b.measured)]
        missing = [b for b in self.boundaries if not math.isfinite(b.measured)]
        stages = ", ".join(str(p) for p in dict.fromkeys(b.stages for b in self.boundaries))
        momenta = " and ".join(
            "plain delayed SGD" if mu == 0 else f"heavy ball {mu:g}"
            for mu in dict.fromkeys(b.momentum for b in self.boundaries)
        )
        parts = [
            f"At the digits minimum ({net['parameters']} parameters in {net['layers']} Dense "
            f"layers, top Hessian eigenvalue {net['sharpness']:.4g}), asynchronous 1F1B on "
            f"P = {stages} stages ({momenta}; stage s delayed P - 1 - s steps):"
        ]
        if not found:
            parts.append("no boundary was measured.")
            return " ".join(parts)
        res = max(b.half_width for b in found)
        for mu in dict.fromkeys(b.momentum for b in found):
            pts = [b for b in found if b.momentum == mu]
            rule = "plain delayed SGD" if mu == 0 else f"heavy ball {mu:g}"
            worst = max(abs(b.gap_predicted) for b in pts)
            inside = sum(b.inside for b in pts)
            gaps = ", ".join(f"P = {b.stages}: {_pct(b.gap_predicted)}" for b in pts)
            text = (
                f"For {rule} the block prediction's gap to the measured boundary is {gaps} "
                f"(inside the final bracket at {inside} of {len(pts)})"
            )
            if worst <= AGREE:
                text += f": within {_pct(worst)[1:]} at every P."
            else:
                off = [b for b in pts if abs(b.gap_predicted) > AGREE]
                text += (
                    f": it misses by more than {AGREE:.0%} at P = "
                    + ", ".join(str(b.stages) for b in off)
                    + " (Ritz pairs k = "
                    + ", ".join(str(b.k) for b in off)
                    + ", the lr's change from the previous k "
                    + ", ".join(f"{b.lr_change:.1e}" for b in off)
                    + ")."
                )
            parts.append(text)
            pk = [b for b in pts if math.isfinite(b.predicted_fixed_k)]
            if pk:
                worst_k = max(abs(b.gap_predicted_fixed_k) for b in pk)
                parts.append(
                    f"At a fixed k = {pk[0].k_fixed} Ritz pairs the gap is "
                    + ", ".join(f"P = {b.stages}: {_pct(b.gap_predicted_fixed_k)}" for b in pk)
                    + (
                        f": within {_pct(worst_k)[1:]} at every P."
                        if worst_k <= AGREE
                        else f": it misses by up to {_pct(worst_k)[1:]}."
                    )
                )
        confirmed = sum(b.dense_confirms for b in found)
        parts.append(
            f"The bisection's resolution is +-{_pct(res)[1:]}; the exact linear recurrence on the "
            f"dense Hessian decays at {1 - DENSE_MARGIN:g}x and grows at {1 + DENSE_MARGIN:g}x "
            f"the measured boundary at {confirmed} of {len(found)} points."
        )
        for key, label in MODELS[1:]:
            gaps = [getattr(b, "gap_" + key) for b in found]
            if all(g < 0 for g in gaps):
                verb = f"underestimates it by {_span([-g for g in gaps]).replace('+', '')}"
            elif all(g > 0 for g in gaps):
                verb = f"overestimates it by {_span(gaps).replace('+', '')}"
            else:
                verb = f"misses it by {_span(gaps)}"
            parts.append(f"The {label} model {verb}.")
        ratios = [b.measured / b.uniform_max for b in found]
        lo_r, hi_r = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
        span = lo_r if lo_r == hi_r else f"{lo_r} to {hi_r}"
        if min(ratios) > 1:
            verdict = ": the pipeline is more stable than its most delayed stage alone predicts"
        elif max(ratios) < 1:
            verdict = ": the pipeline is less stable than its most delayed stage alone predicts"
        else:
            verdict = ""
        parts.append(
            f"The measured largest stable lr is {span} times the uniform tau = P - 1 one{verdict}."
        )
        if missing:
            parts.append(
                f"{len(missing)} point(s) had no boundary inside the widened bracket: "
                + ", ".join(f"P = {b.stages}, beta {b.momentum:g}" for b in missing)
                + "."
            )
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {
            "experiment": self.name,
            "config": json_ready(self.config),
            "seconds": self.seconds,
            "network": json_ready(self.network),
            "boundaries": [
                {k: json_ready(v) for k, v in b._asdict().items()} for b in self.boundaries
            ],
        }

    def figures(self, out_dir: str) -> list[str]:
        """``pipeline_lr.png``: per momentum, lr against P for every model and the
        measured boundary (its final bracket as an error bar)."""
        from stability.figures import pyplot

        plt = pyplot()
        momenta = list(dict.fromkeys(b.momentum for b in self.boundaries))
        fig, axes = plt.subplots(1, len(momenta), figsize=(5.6 * len(momenta), 4.2), squeeze=False)
        styles = {
            "predicted": ("k", "s-", "block prediction (default k)"),
            "predicted_fixed_k": ("tab:purple", "x--", "block prediction, fixed k"),
            "uniform_max": ("tab:red", "v--", "uniform tau = P - 1"),
            "uniform_mean_floor": ("tab:blue", "^:", "uniform tau = floor(mean)"),
            "uniform_mean_ceil": ("tab:cyan", "v:", "uniform tau = ceil(mean)"),
            "distribution": ("tab:green", "d-.", "delay distribution (first moment)"),
        }
        for ax, mu in zip(axes[0], momenta, strict=True):
            pts = [b for b in self.boundaries if b.momentum == mu]
            p = np.array([b.stages for b in pts])
            for key, (color, fmt, label) in styles.items():
                if not any(math.isfinite(getattr(b, key)) for b in pts):
                    continue
                if key == "predicted_fixed_k":
                    label = f"block prediction, k = {pts[0].k_fixed}"
                ax.plot(
                    p, [getattr(b, key) for b in pts], fmt, color=color, lw=1.2, ms=5, label=label
                )
            ok = [b for b in pts if math.isfinite(b.measured)]
            if ok:
                mid = np.array([b.measured for b in ok])
                err = np.array([[b.measured - b.lo for b in ok], [b.hi - b.measured for b in ok]])
                ax.errorbar(
                    [b.stages for b in ok],
                    mid,
                    yerr=err,
                    fmt="o",
                    color="gold",
                    mec="k",
                    ms=8,
                    capsize=3,
                    zorder=5,
                    label="measured (simulate_async, bisection)",
                )
            ax.set_xticks(p)
            ax.set_xlabel("pipeline stages P (asynchronous 1F1B)")
            ax.set_yscale("log")  # the models span two decades with momentum
            ax.set_ylabel("largest stable lr (log scale)")
            rule = "plain delayed SGD" if mu == 0 else f"heavy ball beta = {mu:g}"
            ax.set_title(f"digits MLP, {rule}", fontsize=9)
            ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = os.path.join(out_dir, "pipeline_lr.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return [path]


def growth_per_step(values) -> float:
    """The growth per step of ``values`` over the second half: exp of the
    least-squares slope of the log of their RMS envelope over a sliding ``ENVELOPE``
    window (which spans the oscillation of a complex dominant pair); inf when a value
    is not finite, nan when one is not positive."""
    x = np.asarray(values, dtype=np.float64)[1:]
    if not np.all(np.isfinite(x)):
        return math.inf
    if np.any(x <= 0):
        return math.nan
    half = x[x.size // 2 :]
    window = min(ENVELOPE, max(1, half.size // 2))
    envelope = np.sqrt(np.convolve(half**2, np.ones(window) / window, mode="valid"))
    slope = np.polyfit(np.arange(envelope.size), np.log(envelope), 1)[0]
    return float(np.exp(slope))


def _random_direction(params, seed: int):
    """A unit-norm Gaussian direction with the structure of ``params``."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noise = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    norm = jnp.sqrt(sum(jnp.sum(v**2) for v in noise))
    return jax.tree_util.tree_unflatten(treedef, [v / norm for v in noise])


def pipeline_stability(size: str = "quick", *, progress: bool = True) -> PipelineResult:
    """Run the pipeline experiment (module docstring).

    Returns:
      A `PipelineResult`; ``stability.app.experiments.write_outputs`` writes its JSON,
      table and figure.
    """
    from stability.progress import progress_bar

    size = check_option("size", size, SIZES)
    cfg = PIPELINE_SIZES[size]
    start_time = time.perf_counter()
    with jax.enable_x64(True):  # the experiment's numbers in float64, restored after
        t = time.perf_counter()
        m = train_to_minimum(cfg["n"], hidden=cfg["hidden"], depth=cfg["depth"], dtype=jnp.float64)
        train_s = time.perf_counter() - t
        loss = stationary_tilt(m.loss_fn, m.params, m.data)
        direction = _random_direction(m.params, 0)
        start = jax.tree_util.tree_map(lambda w, v: w + PERTURBATION * v, m.params, direction)
        loss_star = float(loss(m.params, m.data))
        flat, unravel = ravel_pytree(m.params)
        hessian = jax.hessian(lambda f: m.loss_fn(unravel(f), m.data))(flat)
        hessian = 0.5 * (hessian + hessian.T)
        points = [(p, mu) for mu in cfg["momenta"] for p in cfg["stages"]]
        bar = progress_bar(progress, total=len(points), desc="pipeline boundaries")
        boundaries, sharpness = [], math.nan
        for p, mu in points:
            b, sharpness = _point(m, loss, start, loss_star, p, mu, cfg)
            b = _dense_check(b, hessian, m.params, cfg)
            boundaries.append(b)
            bar.update(1)
        bar.close()
        network = dict(
            examples=cfg["n"],
            hidden=cfg["hidden"],
            depth=cfg["depth"],
            layers=cfg["depth"] + 1,
            parameters=int(sum(x.size for x in jax.tree_util.tree_leaves(m.params))),
            loss=float(m.loss),
            grad_norm=float(m.grad_norm),
            converged=bool(m.converged),
            train_seconds=train_s,
            sharpness=sharpness,
        )
    config = dict(
        size=size,
        **cfg,
        schedule=SCHEDULE,
        perturbation=PERTURBATION,
        envelope=ENVELOPE,
        decayed=DECAYED,
        escaped=ESCAPED,
        dense_margin=DENSE_MARGIN,
        dense_steps=DENSE_STEPS * cfg["steps"],
        bracket=BRACKET,
        model=(
            f"train_to_minimum({cfg['n']}, hidden={cfg['hidden']}, depth={cfg['depth']}), "
            "float64, squared error"
        ),
    )
    return PipelineResult(boundaries, network, config, time.perf_counter() - start_time)


def _point(m, loss, start, loss_star, p, mu, cfg):
    """Predict and measure one (P, momentum) point: ``(PipelineBoundary, sharpness)``."""
    spec = Stages(p, SCHEDULE)
    blocks = block_delays(m.params, spec)
    t0 = time.perf_counter()
    pred = block_delay_max_lr(
        m.loss_fn, m.params, m.data, delays=spec, beta=mu, momentum="heavy_ball"
    )
    fixed = {}
    if cfg.get("k_fixed"):
        pred_k = block_delay_max_lr(
            m.loss_fn,
            m.params,
            m.data,
            delays=spec,
            beta=mu,
            momentum="heavy_ball",
            k=cfg["k_fixed"],
        )
        fixed = dict(k_fixed=int(cfg["k_fixed"]), predicted_fixed_k=float(pred_k.lr))
    predict_s = time.perf_counter() - t0
    predicted = float(pred.lr)
    t0 = time.perf_counter()
    count = 0

    def rate(lr):
        nonlocal count
        count += 1
        run = simulate_async(
            loss,
            start,
            m.data,
            lr=float(lr),
            beta=mu,
            momentum="heavy_ball",
            block_delays=spec,
            steps=cfg["steps"],
        )
        excess = np.asarray(run.loss, np.float64) - loss_star
        measure = np.sqrt(np.maximum(excess, 0.0))
        r = growth_per_step(measure)
        if not np.all(np.isfinite(measure)) or np.max(measure) > ESCAPED * measure[0]:
            return r, False  # left the linear regime (a late decay is a catapult's)
        decayed = bool(measure[-1] < DECAYED * measure[0])
        return r, decayed or (math.isfinite(r) and r < 1.0)

    lo, hi = BRACKET[0] * predicted, BRACKET[1] * predicted
    (r_lo, stable_lo), (r_hi, stable_hi) = rate(lo), rate(hi)
    for _ in range(WIDEN):  # a prediction off by more than the bracket: widen it
        if stable_lo and not stable_hi:
            break
        if not stable_lo:
            hi, r_hi, stable_hi = lo, r_lo, stable_lo
            lo = lo / 1.25
            r_lo, stable_lo = rate(lo)
        else:
            lo, r_lo, stable_lo = hi, r_hi, stable_hi
            hi = hi * 1.25
            r_hi, stable_hi = rate(hi)
    if stable_lo and not stable_hi:
        for _ in range(cfg["iters"]):
            mid = 0.5 * (lo + hi)
            r_mid, stable_mid = rate(mid)
            if stable_mid:
                lo, r_lo = mid, r_mid
            else:
                hi, r_hi = mid, r_mid
    else:
        lo = hi = math.nan
    measured = 0.5 * (lo + hi)
    models = dict(
        predicted=predicted,
        uniform_max=float(pred.lr_uniform_max_delay),
        uniform_mean_floor=float(pred.lr_uniform_mean_delay[0]),
        uniform_mean_ceil=float(pred.lr_uniform_mean_delay[1]),
        distribution=float(pred.lr_delay_distribution),
    )
    gaps = {f"gap_{k}": (v - measured) / measured for k, v in models.items()}
    boundary = PipelineBoundary(
        stages=p,
        momentum=float(mu),
        delays=tuple(blocks.delays),
        sizes=tuple(blocks.sizes),
        layers=tuple(blocks.stages),
        mean_delay=float(blocks.mean_delay),
        k=int(pred.k),
        lr_change=float(pred.lr_change),
        lo=lo,
        hi=hi,
        measured=measured,
        half_width=(hi - lo) / (2 * measured),
        inside=bool(lo <= predicted <= hi),
        rate_lo=float(r_lo),
        rate_hi=float(r_hi),
        runs=count,
        predict_seconds=predict_s,
        measure_seconds=time.perf_counter() - t0,
        **models,
        **gaps,
        **fixed,
    )
    if fixed:
        boundary = boundary._replace(
            gap_predicted_fixed_k=(boundary.predicted_fixed_k - measured) / measured
        )
    return boundary, float(pred.sharpness)


@functools.partial(jax.jit, static_argnames=("max_delay", "steps"))
def _linear_run(hessian, tau, e0, lr, beta, *, max_delay: int, steps: int):
    """``||H e_t||`` along the linear block-delay recurrence (heavy ball): ``hist[d]`` is
    ``g_{t-d} = H e_{t-d}`` (``g_0`` while ``t < d``, as the simulator's ``w_0``)."""
    g0 = hessian @ e0
    hist0 = jnp.broadcast_to(g0, (max_delay + 1, g0.shape[0]))

    def step(carry, _):
        e, v, hist = carry
        g_now = hessian @ e
        hist = jnp.concatenate([g_now[None], hist[:-1]])
        g = jnp.take_along_axis(hist, tau[None], axis=0)[0]
        v = beta * v + g
        return (e - lr * v, v, hist), jnp.linalg.norm(g_now)

    _, norms = jax.lax.scan(step, (e0, jnp.zeros_like(e0), hist0), None, length=steps)
    return norms


def _dense_check(b: PipelineBoundary, hessian, params, cfg) -> PipelineBoundary:
    """The measured boundary checked on the dense linear recurrence (module docstring)."""
    if not math.isfinite(b.measured):
        return b
    blocks = block_delays(params, Stages(b.stages, SCHEDULE))
    tau = np.concatenate(
        [
            np.full(int(np.size(x)), d, np.int32)
            for x, d in zip(
                jax.tree_util.tree_leaves(params),
                jax.tree_util.tree_leaves(blocks.leaf_delays),
                strict=True,
            )
        ]
    )  # ravel_pytree's order is tree_leaves'
    e0 = jax.random.normal(jax.random.key(1), (tau.size,), hessian.dtype)
    rates = []
    for factor in (1 - DENSE_MARGIN, 1 + DENSE_MARGIN):
        norms = _linear_run(
            hessian,
            jnp.asarray(tau),
            e0,
            jnp.asarray(factor * b.measured, hessian.dtype),
            jnp.asarray(b.momentum, hessian.dtype),
            max_delay=int(tau.max()),
            steps=DENSE_STEPS * cfg["steps"],
        )
        x = np.asarray(norms, np.float64)
        ok = np.isfinite(x) & (x < 1e250)
        if not ok.all():  # it overflowed: the growth over the steps before
            x = x[: int(np.argmin(ok))]
        rates.append(growth_per_step(x) if x.size >= 8 else math.inf)
    below, above = rates
    return b._replace(
        dense_below=below, dense_above=above, dense_confirms=bool(below < 1.0 < above)
    )
