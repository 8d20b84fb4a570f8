"""Plots of stability regions, thresholds and simulated trajectories.

matplotlib is imported lazily (the Agg backend when no display is set;
`stability.figures`), so importing `stability` stays cheap. Every function takes
an optional ``ax`` and returns the matplotlib ``Axes`` it drew on.
"""

from __future__ import annotations

import numpy as np

from stability.figures import axes
from stability.validation import MOMENTUM_RULES

__all__ = ["plot_stability_region", "plot_thresholds", "plot_trajectories"]


def plot_stability_region(
    tau: int,
    *,
    momentum: str = "heavy_ball",
    betas=None,
    q_max: float | None = None,
    resolution: int = 200,
    ax=None,
):
    """Spectral radius over the (beta, q = lr * sharpness) plane at delay tau.

    The stable region (spectral radius < 1) is outlined (black) by the exact
    threshold q_max(tau, beta) from the boundary locus, drawn on top of the
    spectral radius computed from the companion-matrix eigenvalues: the two
    are independent computations, so the figure is also a visual check.
    """
    from stability.theory.boundary_locus import max_stable_sharpness
    from stability.theory.companion import spectral_radius

    ax = axes(ax)
    betas = np.linspace(0.0, 0.95, resolution) if betas is None else np.asarray(betas)
    edge = np.asarray(max_stable_sharpness(1.0, tau, betas, momentum=momentum), dtype=float)
    top = float(q_max) if q_max is not None else 1.3 * float(np.max(edge))
    qs = np.linspace(top / resolution, top, resolution)
    rho = np.asarray(
        spectral_radius(qs[:, None], 1.0, tau, betas[None, :], momentum=momentum), dtype=float
    )
    from matplotlib.colors import TwoSlopeNorm

    # Near a minimum rho is close to 1 everywhere at large tau: a diverging map
    # centred on 1 shows stable (blue) and unstable (red) at any contrast.
    lo, hi = float(np.min(rho)), float(np.max(rho))
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 1.0 - 1e-6), vmax=max(hi, 1.0 + 1e-6))
    mesh = ax.pcolormesh(betas, qs, rho, shading="auto", cmap="coolwarm", norm=norm)
    ax.figure.colorbar(mesh, ax=ax, label="spectral radius (1 = edge of stability)")
    ax.plot(betas, edge, color="black", lw=2, label="q_max (boundary locus)")
    ax.set_xlabel("momentum beta")
    ax.set_ylabel("q = lr x sharpness")
    ax.set_ylim(qs[0], qs[-1])
    ax.set_title(f"{momentum}, tau = {tau}: stable below the black line")
    ax.legend(loc="upper right")
    return ax


def plot_thresholds(
    taus=(0, 1, 2, 4, 8, 16, 32, 64),
    *,
    beta: float = 0.9,
    momenta=MOMENTUM_RULES,
    effective: bool = True,
    ax=None,
):
    """Max stable q against the delay, one line per momentum rule and plain SGD.

    With ``effective=True`` the momentum curves are scaled by 1 / (1 - beta):
    they compare rules at the same effective learning rate lr / (1 - beta),
    the comparison in which the paper recommends shifted momentum or none.
    """
    from stability.theory.boundary_locus import max_stable_sharpness

    ax = axes(ax)
    taus = np.asarray(taus)
    ax.plot(
        np.maximum(taus, 0.5),
        np.asarray(max_stable_sharpness(1.0, taus, 0.0), dtype=float),
        "k-o",
        ms=3,
        label="plain SGD (beta = 0)",
    )
    scale = 1.0 / (1.0 - beta) if effective else 1.0
    for rule in momenta:
        q = np.asarray(max_stable_sharpness(1.0, taus, beta, momentum=rule), dtype=float)
        ax.plot(np.maximum(taus, 0.5), q * scale, "-o", ms=3, label=f"{rule}, beta = {beta:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("delay tau (0 drawn at 0.5)")
    ax.set_ylabel("max stable q x (1 - beta)^-1" if effective else "max stable q")
    ax.set_title("threshold vs delay" + (" at equal effective lr" if effective else ""))
    ax.legend()
    return ax


def plot_trajectories(trajectories: dict, *, quantity: str = "loss", styles=None, ax=None):
    """Per-step loss (or distance) of simulated runs, one line per label.

    ``trajectories`` maps a label to an `AsyncTrajectory` (from
    `simulate_async`) or to a 1-D array. ``styles`` optionally maps a label to
    matplotlib line keywords (``color``, ``linestyle``, ``zorder``, ...), e.g. one
    colour per configuration with a solid line for its stable run and a dashed one
    for its unstable run.
    """
    ax = axes(ax)
    styles = styles or {}
    for label, traj in trajectories.items():
        y = np.asarray(getattr(traj, quantity, traj), dtype=float)
        steps = np.asarray(getattr(traj, "step", np.arange(y.size)))
        y = np.where(y > 0, y, np.nan)  # a log axis cannot show the zero at the start
        ax.plot(steps, y, label=label, **styles.get(label, {}))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(quantity)
    ax.legend()
    return ax
