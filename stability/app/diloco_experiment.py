"""DiLoCo's stability map over (outer lr, outer momentum): ``stability experiment diloco``.

Near a minimum with top Hessian eigenvalue lambda, one round of DiLoCo (H inner
steps of GD per worker, then an outer Nesterov step on the pseudo-gradient) is
linear along the top eigenvector, with the one-round characteristic polynomial of
docs/theory.md (47): the outer rule at ``q = outer_lr kappa(lambda)``,
``kappa(a) = 1 - (1 - inner_lr a)^H``. This experiment draws, for H = 30:

- the PREDICTED map: the one-round spectral radius over a grid of (outer lr,
  outer momentum) at the network's sharpness (`stability.outer_stability_region`,
  i.e. `stability.round_spectral_radius`), and the predicted boundary
  ``max_stable_outer_lr(momentum)`` (docs/theory.md (49));
- the MEASURED boundary at a few momenta: `stability.simulate_diloco` on the
  bundled digits network at a true minimum (`stability.train_to_minimum`, float64),
  started at the minimum + 1e-5 x the top eigenvector (`stability.hessian_spectrum`)
  on the loss tilted to be exactly stationary there (`stability.stationary_tilt`);
  the per-round growth of the distance from the minimum is fitted over the second
  half of the rounds (log-linear least squares on its 16-round RMS envelope) and
  bisection on the outer lr, inside ``[0.8, 1.25] x predicted``, finds where it
  crosses 1 (a run whose distance fell below 1e-3 of its start counts as stable).
  The final bracket ``[lo, hi]`` is reported as it is: its width is the
  resolution of the measurement.

The inner lr is 0.1 with ``inner_lr lambda < 1`` (checked), so ``kappa`` increases
on ``[0, lambda]``: the top eigenvalue has the largest kappa and alone sets the
threshold. The method is benchmarks/diloco_boundary.py's, with fewer rounds and
halvings to fit a few minutes. Besides the DiLoCo schedule, the quick and full
sizes add the eager schedule (M = 4 workers, Kale et al. 2025) and streaming with
overlap 1 round, each with its own map and measured boundary at every momentum.

Sizes: ``"tiny"`` (tests: a small network, two momenta, short runs), ``"quick"``
(the command's default, a few minutes on a 2-core CPU), ``"full"`` (the
benchmark's 400 rounds and more halvings).
"""

from __future__ import annotations

import math
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stability.app.experiments import json_ready
from stability.curvature.hessian_spectrum import hessian_spectrum
from stability.local_sgd_training import simulate_diloco
from stability.networks.examples import train_to_minimum
from stability.simulate import stationary_tilt
from stability.theory.local_sgd import (
    LocalSGD,
    max_stable_outer_lr,
    outer_stability_region,
    pseudo_gradient_factor,
    round_spectral_radius,
)
from stability.validation import check_option

__all__ = ["DILOCO_SIZES", "DiLoCoBoundary", "DiLoCoMap", "DiLoCoResult", "diloco_stability_map"]

SIZES = ("tiny", "quick", "full")
INNER_STEPS = 30
INNER_LR = 0.1
OUTER = "nesterov"
PERTURBATION = 1e-5
ENVELOPE = 16  # rounds in the RMS envelope of the fitted growth
DECAYED = 1e-3  # the distance fell below this fraction of its start: stable
BRACKET = (0.8, 1.25)  # times the prediction; asymmetric so that no bisection point is 1
SCHEDULES = {
    "diloco": {},
    "eager M=4": {"schedule": "eager", "workers": 4},
    "streaming overlap 1": {"schedule": "streaming", "overlap": 1},
}
DILOCO_SIZES = {
    "tiny": dict(
        n=64, hidden=8, momenta=(0.0, 0.9), rounds=64, iters=2, grid=(24, 12),
        schedules=("diloco",), extra_momenta=(),
    ),
    "quick": dict(
        n=256, hidden=32, momenta=(0.0, 0.5, 0.8, 0.9, 0.95), rounds=300, iters=8,
        grid=(100, 50), schedules=tuple(SCHEDULES), extra_momenta=(0.0, 0.5, 0.8, 0.9, 0.95),
    ),
    "full": dict(
        n=256, hidden=32, momenta=(0.0, 0.5, 0.8, 0.9, 0.95, 0.99), rounds=400, iters=12,
        grid=(150, 75), schedules=tuple(SCHEDULES),
        extra_momenta=(0.0, 0.5, 0.8, 0.9, 0.95, 0.99),
    ),
}  # fmt: skip


class DiLoCoMap(NamedTuple):
    """The predicted one-round spectral radius of one schedule on the grid:
    ``radius[i, j]`` at ``outer_momentum[i]``, ``outer_lr[j]``; ``max_outer_lr[i]``
    the predicted boundary (`stability.max_stable_outer_lr`) at each momentum."""

    schedule: str
    outer_lr: np.ndarray
    outer_momentum: np.ndarray
    radius: np.ndarray
    max_outer_lr: np.ndarray


class DiLoCoBoundary(NamedTuple):
    """One measured boundary point.

    schedule, momentum: the configuration. predicted: `max_stable_outer_lr`.
    lo, hi: the final bisection bracket (stable at lo, unstable at hi; NaN when the
    starting bracket did not straddle the boundary). measured: its midpoint.
    gap: (measured - predicted) / predicted. half_width: (hi - lo) / (2 predicted),
    the measurement's resolution. inside: the prediction lies in [lo, hi].
    rate_lo, rate_hi: the fitted growth per round at the starting bracket's ends,
    with the theory's radius there (radius_lo, radius_hi). runs: simulations done.
    seconds: wall-clock time.
    """

    schedule: str
    momentum: float
    predicted: float
    lo: float
    hi: float
    measured: float
    gap: float
    half_width: float
    inside: bool
    rate_lo: float
    rate_hi: float
    radius_lo: float
    radius_hi: float
    runs: int
    seconds: float


class DiLoCoResult(NamedTuple):
    """`diloco_stability_map`'s maps, measured boundary, network and timing."""

    maps: list
    boundaries: list
    network: dict
    config: dict
    seconds: float

    name = "diloco"
    title = f"DiLoCo stability map over (outer lr, outer momentum), H = {INNER_STEPS}"

    def table(self) -> str:
        """The markdown table: schedule, momentum, predicted, measured bracket, gap."""
        head = (
            "| schedule | outer momentum | predicted max outer lr | measured bracket [lo, hi] "
            "| measured (midpoint) | relative gap | bracket half-width | prediction in bracket "
            "| runs | time |\n|---|---:|---:|---|---:|---:|---:|---|---:|---:|"
        )
        rows = [
            f"| {b.schedule} | {b.momentum:g} | {b.predicted:.5f} | [{b.lo:.5f}, {b.hi:.5f}] | "
            f"{b.measured:.5f} | {b.gap:+.2%} | {b.half_width:.2%} | "
            f"{'yes' if b.inside else 'no'} | {b.runs} | {b.seconds:.0f} s |"
            for b in self.boundaries
        ]
        return "\n".join([head, *rows])

    def conclusion(self) -> str:
        """The measured against the predicted boundary, in words, from the numbers."""
        net = self.network
        parts = [
            f"At the digits minimum (top Hessian eigenvalue {net['sharpness']:.4g}, inner GD "
            f"lr {self.config['inner_lr']:g}, H = {INNER_STEPS}, kappa = "
            f"{net['kappa']:.6f})"
        ]
        found = [b for b in self.boundaries if math.isfinite(b.measured)]
        missing = [b for b in self.boundaries if not math.isfinite(b.measured)]
        if found:
            worst = max(abs(b.gap) for b in found)
            res = max(b.half_width for b in found)
            inside = sum(b.inside for b in found)
            parts[0] += (
                f", the measured boundary lies within {worst:.2%} of the predicted "
                f"max_stable_outer_lr at every one of the {len(found)} measured (schedule, "
                f"momentum) points; the bisection's resolution is +-{res:.2%}, and the "
                f"prediction lies inside the final bracket at {inside} of {len(found)}."
            )
        else:
            parts[0] += ", no boundary was measured."
        dil = [b for b in found if b.schedule == "diloco"]
        if len(dil) >= 2:
            a, z = dil[0], dil[-1]
            parts.append(
                f"For DiLoCo with outer Nesterov the largest stable outer lr falls from "
                f"{a.measured:.3f} (predicted {a.predicted:.3f}) at momentum {a.momentum:g} "
                f"to {z.measured:.3f} (predicted {z.predicted:.3f}) at momentum "
                f"{z.momentum:g}: the outer momentum, not the inner loop, sets the limit "
                f"(kappa = {net['kappa']:.4f} is saturated at H = {INNER_STEPS})."
            )
        for sched in self.config["schedules"]:
            if sched == "diloco":
                continue
            pts = [b for b in found if b.schedule == sched]
            base = {b.momentum: b for b in dil}
            pairs = [(b, base[b.momentum]) for b in pts if b.momentum in base]
            if pairs:
                ratios = [b.measured / d.measured for b, d in pairs]
                mus = [b.momentum for b, _ in pairs]
                span = (
                    f"{ratios[0]:.3f}"
                    if len(pairs) == 1
                    else f"{min(ratios):.3f} to {max(ratios):.3f}"
                )
                parts.append(
                    f"The {sched} schedule's measured boundary is {span} times DiLoCo's "
                    f"(momentum {', '.join(f'{mu:g}' for mu in mus)}; the predicted ratios "
                    f"{min(b.predicted / d.predicted for b, d in pairs):.3f} to "
                    f"{max(b.predicted / d.predicted for b, d in pairs):.3f}), its largest "
                    f"stable outer lr {max(b.measured for b, _ in pairs):.3f} to "
                    f"{min(b.measured for b, _ in pairs):.3f}."
                )
        if missing:
            parts.append(
                f"{len(missing)} point(s) had no boundary inside the starting bracket "
                f"{list(BRACKET)} x predicted: "
                + ", ".join(f"{b.schedule} momentum {b.momentum:g}" for b in missing)
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
            # The map's radius to 4 significant digits: it is a closed function of the
            # config and the sharpness (`outer_stability_region`), and full digits
            # would make the file megabytes.
            "maps": [
                {
                    k: json_ready(_significant(v) if k == "radius" else v)
                    for k, v in m._asdict().items()
                }
                for m in self.maps
            ],
        }

    def figures(self, out_dir: str) -> list[str]:
        """``diloco_map.png``: per schedule, the predicted radius map with the
        predicted boundary line and the measured brackets drawn on it."""
        from matplotlib.colors import TwoSlopeNorm

        from stability.figures import pyplot

        plt = pyplot()
        n = len(self.maps)
        fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.3), squeeze=False)
        for ax, m in zip(axes[0], self.maps, strict=True):
            r = np.clip(np.asarray(m.radius, float), 1e-3, 10.0)
            norm = TwoSlopeNorm(
                vmin=float(np.min(r)), vcenter=1.0, vmax=max(float(np.max(r)), 1.01)
            )
            mesh = ax.pcolormesh(
                m.outer_lr, m.outer_momentum, r, cmap="RdBu_r", norm=norm, shading="auto"
            )
            ax.contour(m.outer_lr, m.outer_momentum, r, levels=[1.0], colors="k", linewidths=0.6)
            ax.plot(m.max_outer_lr, m.outer_momentum, "k--", lw=1.4, label="predicted boundary")
            pts = [
                b for b in self.boundaries if b.schedule == m.schedule and math.isfinite(b.measured)
            ]
            if pts:
                mu = np.array([b.momentum for b in pts])
                mid = np.array([b.measured for b in pts])
                err = np.array([[b.measured - b.lo for b in pts], [b.hi - b.measured for b in pts]])
                ax.errorbar(mid, mu, xerr=err, fmt="o", color="gold", mec="k", ms=6, capsize=3,
                            label="measured: final bisection bracket")  # fmt: skip
            ax.set_xlabel("outer lr")
            ax.set_ylabel("outer momentum (Nesterov)")
            ax.set_title(f"{m.schedule}, H = {INNER_STEPS}: one-round spectral radius", fontsize=9)
            ax.legend(fontsize=7, loc="lower left")
            fig.colorbar(mesh, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        path = os.path.join(out_dir, "diloco_map.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return [path]


def _significant(x, digits: int = 4) -> np.ndarray:
    """``x`` rounded to ``digits`` significant digits (finite entries)."""
    x = np.asarray(x, dtype=np.float64)
    scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.where(x > 0, np.abs(x), 1.0))))
    return np.where(np.isfinite(x) & (x != 0), np.round(x * scale) / scale, x)


def fitted_rate(distance) -> float:
    """Per-round growth over the last half of the rounds: exp of the least-squares
    slope of the log of the distance's RMS envelope over a sliding ``ENVELOPE``-round
    window (which spans the oscillation of a complex dominant pair); inf when the
    distance is not finite and positive."""
    d = np.asarray(distance, dtype=np.float64)[1:]
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        return math.inf
    half = d[d.size // 2 :]
    window = min(ENVELOPE, max(1, half.size // 2))
    envelope = np.sqrt(np.convolve(half**2, np.ones(window) / window, mode="valid"))
    slope = np.polyfit(np.arange(envelope.size), np.log(envelope), 1)[0]
    return float(np.exp(slope))


def diloco_stability_map(size: str = "quick", *, progress: bool = True) -> DiLoCoResult:
    """Run the DiLoCo stability-map experiment (module docstring).

    Returns:
      A `DiLoCoResult`; ``stability.app.experiments.write_outputs`` writes its JSON,
      table and figure.
    """
    from stability.progress import progress_bar

    size = check_option("size", size, SIZES)
    cfg = DILOCO_SIZES[size]
    start_time = time.perf_counter()
    with jax.enable_x64(True):  # the experiment's numbers in float64, restored after
        t = time.perf_counter()
        m = train_to_minimum(cfg["n"], hidden=cfg["hidden"], dtype=jnp.float64)
        train_s = time.perf_counter() - t
        spec = hessian_spectrum(
            m.loss_fn, m.params, m.data, k=1, tol=1e-10, max_hvps=600, return_vectors=True,
            progress=False,
        )  # fmt: skip
        lam = float(spec.eigenvalues[0])
        if not INNER_LR * lam < 1.0:
            raise RuntimeError(
                f"inner_lr * lambda_max = {INNER_LR * lam:.3f} >= 1: kappa would not be "
                "increasing on [0, lambda] and the top eigenvalue might not set the threshold"
            )
        vec = jax.tree_util.tree_map(lambda x: x[0], spec.eigenvectors)
        norm = float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(vec))))
        start = jax.tree_util.tree_map(lambda w, v: w + PERTURBATION / norm * v, m.params, vec)
        loss = stationary_tilt(m.loss_fn, m.params, m.data)
        base = LocalSGD(INNER_LR, INNER_STEPS, outer=OUTER)
        kappa = float(pseudo_gradient_factor(base, lam))
        network = dict(
            examples=cfg["n"],
            hidden=cfg["hidden"],
            parameters=int(sum(x.size for x in jax.tree_util.tree_leaves(m.params))),
            loss=float(m.loss),
            grad_norm=float(m.grad_norm),
            converged=bool(m.converged),
            train_seconds=train_s,
            sharpness=lam,
            sharpness_error=float(spec.errors[0]),
            inner_lr_times_sharpness=INNER_LR * lam,
            kappa=kappa,
        )

        n_lr, n_mu = cfg["grid"]
        lr_top = 1.3 * float(max_stable_outer_lr(base, lam, 0.0))
        lr_grid = np.linspace(lr_top / n_lr, lr_top, n_lr)
        mu_grid = np.linspace(0.0, max(0.99, max(cfg["momenta"])), n_mu)
        maps = []
        for sched in cfg["schedules"]:
            config = base._replace(**SCHEDULES[sched])
            region = outer_stability_region(config, lam, lr_grid, mu_grid)
            maps.append(DiLoCoMap(sched, lr_grid, mu_grid, region.radius, region.max_outer_lr))

        points = [("diloco", mu) for mu in cfg["momenta"]]
        points += [
            (s, mu) for s in cfg["schedules"] if s != "diloco" for mu in cfg["extra_momenta"]
        ]
        bar = progress_bar(progress, total=len(points), desc="diloco boundaries")
        boundaries = []
        for sched, mu in points:
            config = base._replace(**SCHEDULES[sched])
            boundaries.append(_measure(loss, start, m, config, sched, mu, lam, cfg))
            bar.update(1)
        bar.close()
    config = dict(
        size=size,
        **cfg,
        inner_steps=INNER_STEPS,
        inner_rule="gd",
        inner_lr=INNER_LR,
        outer_rule=OUTER,
        perturbation=PERTURBATION,
        envelope=ENVELOPE,
        decayed=DECAYED,
        bracket=BRACKET,
        model=f"train_to_minimum({cfg['n']}, hidden={cfg['hidden']}), float64, squared error",
    )
    return DiLoCoResult(maps, boundaries, network, config, time.perf_counter() - start_time)


def _measure(loss, start, m, config, sched, mu, lam, cfg) -> DiLoCoBoundary:
    """Bisection on the outer lr for where the fitted growth per round crosses 1."""
    t0 = time.perf_counter()
    predicted = float(max_stable_outer_lr(config, lam, mu))
    count = 0

    def rate(lr):
        nonlocal count
        count += 1
        run = simulate_diloco(
            loss, start, m.data, config, rounds=cfg["rounds"], outer_lr=float(lr),
            outer_momentum=float(mu), reference=m.params,
        )  # fmt: skip
        d = np.asarray(run.distance, float)
        decayed = bool(np.isfinite(d[-1]) and d[-1] < DECAYED * d[0])
        r = fitted_rate(d)
        return r, r < 1.0 or decayed

    lo, hi = BRACKET[0] * predicted, BRACKET[1] * predicted
    (r_lo, stable_lo), (r_hi, stable_hi) = rate(lo), rate(hi)
    if stable_lo and not stable_hi:
        for _ in range(cfg["iters"]):
            mid = 0.5 * (lo + hi)
            if rate(mid)[1]:
                lo = mid
            else:
                hi = mid
    else:
        lo = hi = math.nan
    measured = 0.5 * (lo + hi)
    return DiLoCoBoundary(
        schedule=sched,
        momentum=float(mu),
        predicted=predicted,
        lo=lo,
        hi=hi,
        measured=measured,
        gap=(measured - predicted) / predicted,
        half_width=(hi - lo) / (2 * predicted),
        inside=bool(lo <= predicted <= hi),
        rate_lo=r_lo,
        rate_hi=r_hi,
        radius_lo=float(round_spectral_radius(config, lam, BRACKET[0] * predicted, mu)),
        radius_hi=float(round_spectral_radius(config, lam, BRACKET[1] * predicted, mu)),
        runs=count,
        seconds=time.perf_counter() - t0,
    )
