"""The figures' data, read back from the matplotlib artists (Agg backend), against
closed forms (docs/theory.md section 7) and numpy eigenvalues of docs/theory.md's polynomials."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import QuadMesh  # noqa: E402
from stability_oracles import bisect_threshold, poly, rho  # noqa: E402

from stability.app import plotting  # noqa: E402
from stability.simulate import AsyncTrajectory  # noqa: E402


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def _line(ax, label):
    (line,) = [line for line in ax.get_lines() if line.get_label() == label]
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def _mesh(ax):
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    return mesh


def test_stability_region_is_the_spectral_radius_under_the_exact_edge(ax):
    # heavy ball, tau = 1: the edge is q_max = 1 - beta (beta = 0: 2 sin(pi / 6) = 1)
    betas = np.array([0.0, 0.3, 0.6, 0.9])
    res = 7
    assert plotting.plot_stability_region(1, betas=betas, resolution=res, ax=ax) is ax
    x, edge = _line(ax, "q_max (boundary locus)")
    np.testing.assert_array_equal(x, betas)
    np.testing.assert_allclose(edge, 1 - betas, rtol=1e-12)
    # the q axis: res values up to 1.3 x the largest edge value
    qs = np.linspace(1.3 / res, 1.3, res)
    assert ax.get_ylim() == pytest.approx((qs[0], qs[-1]), rel=1e-12)
    mesh = _mesh(ax)
    shown = np.asarray(mesh.get_array(), float).reshape(res, betas.size)
    want = np.array([[rho(poly(1, b, q, "heavy_ball")) for b in betas] for q in qs])
    np.testing.assert_allclose(shown, want, rtol=1e-9)
    # stable exactly below the edge, and the colour scale is centred on radius 1
    np.testing.assert_array_equal(want < 1, qs[:, None] < (1 - betas)[None, :])
    assert mesh.norm.vcenter == 1.0
    assert (mesh.norm.vmin, mesh.norm.vmax) == pytest.approx((want.min(), want.max()))


def test_stability_region_with_a_given_q_range(ax):
    # nesterov, tau = 1, q up to 0.9: the edge solves beta^2 q^2 + (1 - beta^2) q
    # = 1 - beta (docs/theory.md section 7); checked here against eigenvalue bisection
    betas = np.array([0.0, 0.4, 0.7, 0.95])
    res = 5
    kw = dict(momentum="nesterov", betas=betas, q_max=0.9, resolution=res)
    plotting.plot_stability_region(1, **kw, ax=ax)
    _, edge = _line(ax, "q_max (boundary locus)")
    oracle = [bisect_threshold(lambda q, b=b: poly(1, b, q, "nesterov")) for b in betas]
    np.testing.assert_allclose(edge, oracle, rtol=1e-10)
    qs = np.linspace(0.9 / res, 0.9, res)
    assert ax.get_ylim() == pytest.approx((qs[0], qs[-1]), rel=1e-12)
    shown = np.asarray(_mesh(ax).get_array(), float).reshape(res, betas.size)
    want = np.array([[rho(poly(1, b, q, "nesterov")) for b in betas] for q in qs])
    np.testing.assert_allclose(shown, want, rtol=1e-9)
    np.testing.assert_array_equal(want < 1, qs[:, None] < np.array(oracle)[None, :])
    assert "nesterov, tau = 1" in ax.get_title()


@pytest.mark.parametrize("effective", [True, False])
def test_thresholds_are_the_closed_forms_and_eigenvalue_thresholds(ax, effective):
    taus = (0, 1, 2, 4)
    beta = 0.5
    assert plotting.plot_thresholds(taus, beta=beta, effective=effective, ax=ax) is ax
    x, sgd = _line(ax, "plain SGD (beta = 0)")
    np.testing.assert_array_equal(x, [0.5, 1, 2, 4])  # tau = 0 drawn at 0.5 on the log axis
    np.testing.assert_allclose(sgd, [2 * math.sin(math.pi / (4 * t + 2)) for t in taus], rtol=1e-12)
    scale = 1 / (1 - beta) if effective else 1.0
    closed = {  # docs/theory.md section 7, beta = 0.5
        "heavy_ball": {0: 3.0, 1: 0.5},
        "shifted": {0: 3.0, 1: 0.75},
        "nesterov": {0: 3.0 / 2.0},
    }
    for rule in ("heavy_ball", "nesterov", "shifted"):
        x, y = _line(ax, f"{rule}, beta = 0.5")
        np.testing.assert_array_equal(x, [0.5, 1, 2, 4])
        want = [
            closed[rule].get(t) or bisect_threshold(lambda q, t=t, r=rule: poly(t, beta, q, r))
            for t in taus
        ]
        np.testing.assert_allclose(y, np.array(want) * scale, rtol=1e-10)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ("(1 - beta)" in ax.get_ylabel()) is effective


def test_trajectories_plot_the_records_and_hide_nonpositive_values(ax):
    # An AsyncTrajectory is drawn at its recorded steps; a plain array at 0..n-1.
    # A log axis cannot show 0 (the distance at the start) or less: NaN there.
    traj = AsyncTrajectory(
        loss=np.array([2.0, 1.0, 0.25, 4.0]),
        distance=np.array([0.0, 0.5, 1.5, 3.0]),
        params=None,
        delays=np.zeros(12, np.int32),
        step=np.array([0, 5, 10, 12]),
        diverged=False,
    )
    raw = np.array([1.0, -1.0, 0.0, 3.0])
    plotting.plot_trajectories({"run": traj, "raw": raw}, ax=ax)
    x, y = _line(ax, "run")
    np.testing.assert_array_equal(x, [0, 5, 10, 12])
    np.testing.assert_array_equal(y, [2.0, 1.0, 0.25, 4.0])
    x, y = _line(ax, "raw")
    np.testing.assert_array_equal(x, [0, 1, 2, 3])
    np.testing.assert_array_equal(y, [1.0, np.nan, np.nan, 3.0])
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "loss"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["run", "raw"]

    fig, other = plt.subplots()
    try:
        plotting.plot_trajectories({"run": traj}, quantity="distance", ax=other)
        x, y = _line(other, "run")
        np.testing.assert_array_equal(y, [np.nan, 0.5, 1.5, 3.0])
        assert other.get_ylabel() == "distance"
    finally:
        plt.close(fig)


def test_new_axes_when_none_is_given():
    ax = plotting.plot_trajectories({"a": np.array([1.0, 2.0])})
    try:
        assert ax.figure.get_size_inches() == pytest.approx((6, 4.5))
        assert matplotlib.get_backend().lower() == "agg"
    finally:
        plt.close(ax.figure)
