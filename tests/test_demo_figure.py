"""The demo's figure and simulation table (issue 21, item 18), read from the matplotlib
objects (Agg backend), on made-up verdicts and trajectories: no training here."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.text  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from stability.app import demo  # noqa: E402
from stability.app.demo import SimulationCheck  # noqa: E402

TAUS = (0, 1, 4, 16)


class Report:
    def __init__(self, verdict, fraction):
        self.verdict, self.fraction_of_limit = verdict, fraction


def _reports():
    keep = {0: {"sgd", "heavy_ball", "nesterov", "shifted"}, 1: {"nesterov", "shifted"}}
    return {
        (tau, label): Report(label in keep.get(tau, ()), 0.5 if label in keep.get(tau, ()) else 2)
        for tau in TAUS
        for label, _, _ in demo.CONFIGS
    }


def _runs():
    """Two cases, each at 0.8x (stays, flat near 1e-6) and 1.25x (leaves)."""
    runs = []
    for tau, rule, beta, steps in ((1, "heavy_ball", 0.0, 300), (4, "shifted", 0.9, 4000)):
        for factor in (0.8, 1.25):
            stays = factor < 1
            check = SimulationCheck(
                tau, rule, beta, factor, 0.1, steps, 1e-9, 1e-9, 0.9, 1.01, stays, stays
            )
            t = np.arange(steps)
            dist = 1e-6 * (np.ones(steps) if stays else 1.01**t)
            runs.append((check, dist))
    return runs


@pytest.fixture(scope="module")
def fig():
    fig = demo.demo_figure(4.67, _reports(), TAUS, _runs(), 0.385)
    fig.canvas.draw()  # ticks and their labels as they are drawn
    yield fig
    plt.close(fig)


def test_the_verdict_is_a_sentence_in_the_figure(fig):
    title = fig._suptitle.get_text().replace("\n", " ")
    assert title.startswith("Verdict: the digits MLP's minimum (sharpness 4.67)")
    assert "every rule at tau = 0" in title
    assert "nesterov and shifted only at tau = 1" in title
    assert "no rule at tau = 4 and 16" in title
    assert "agree in 4 of 4 runs" in title


def test_runs_paired_by_colour_and_told_apart_by_line_style(fig):
    ax = fig.axes[3]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert len(lines) == 4
    pairs = {}
    for label, line in lines.items():
        case = label.split(":")[0]  # "sgd, tau = 1"
        stable = "0.8x lr_max" in label
        assert ("stays" in label) is stable
        assert line.get_linestyle() == ("-" if stable else "--"), label
        pairs.setdefault(case, {})[stable] = line
    assert set(pairs) == {"sgd, tau = 1", "shifted, tau = 4"}
    colours = []
    for case, pair in pairs.items():
        assert set(pair) == {True, False}, case
        assert pair[True].get_color() == pair[False].get_color(), case
        # The stable run is drawn over the unstable one, not hidden under it.
        assert pair[True].get_zorder() > pair[False].get_zorder()
        colours.append(pair[True].get_color())
    assert len(set(colours)) == 2
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(legend) == sorted(lines)
    assert "solid" in ax.get_title() and "dashed" in ax.get_title()


def test_one_font_size(fig):
    sizes = {
        t.get_fontsize()
        for t in fig.findobj(matplotlib.text.Text)
        if t.get_visible() and t.get_text().strip()
    }
    assert sizes == {demo.FONT_SIZE}
    # Tick labels made later (another draw, other limits) keep it.
    fig.axes[3].set_xlim(0, 123)
    fig.canvas.draw()
    labels = fig.axes[3].get_xticklabels()
    assert labels and {t.get_fontsize() for t in labels} == {demo.FONT_SIZE}


def test_the_simulation_table_explains_its_columns():
    note = demo.simulation_columns_note()
    explained = {line.split("  ")[1].strip(): line for line in note.splitlines()}
    for name in ("lr/lr_max", "rho pred", "growth", "max dev", "stayed"):
        assert name in explained, name
    assert "max stable lr" in explained["lr/lr_max"]
    assert "spectral radius" in explained["rho pred"] and "per step" in explained["rho pred"]
