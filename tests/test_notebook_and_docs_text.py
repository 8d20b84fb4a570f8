"""Notebook and docs prose says what their outputs show (issue 21, item 19).

The numbers are computed here with the library (x64 on, as in every test; the
thresholds of Python scalars are float64 whatever the mode), the figures' colours
read from the matplotlib objects, and the saved notebook outputs compared with a
fresh run of the same cells.
"""

import contextlib
import io
import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import QuadMesh  # noqa: E402

import stability as st  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REGIONS = ROOT / "notebooks" / "stability_regions.ipynb"


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _markdown_after_heading(path, heading):
    for cell in _cells(path):
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and text.startswith(f"## {heading}"):
            return " ".join(text.split())
    raise AssertionError(f"no section {heading!r} in {path.name}")


def test_region_colours_are_the_figures():
    text = _markdown_after_heading(REGIONS, "The region at one delay").lower()
    fig, ax = plt.subplots()
    try:
        st.plot_stability_region(8, momentum="shifted", resolution=20, ax=ax)
        (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
        below, above = mesh.cmap(0.0), mesh.cmap(1.0)  # radius under 1, over 1
        (edge,) = [line for line in ax.get_lines() if "q_max" in line.get_label()]
        edge_colour = matplotlib.colors.to_hex(edge.get_color())
    finally:
        plt.close(fig)
    assert above[0] > above[2] and "red" in text  # over 1: red
    assert below[2] > below[0] and "blue" in text  # under 1: blue
    assert edge_colour == "#000000" and "black line" in text
    for absent in ("yellow", "white line", "dark"):
        assert absent not in text, absent


def test_random_order_is_described_as_the_numbers_order_it():
    text = _markdown_after_heading(REGIONS, "Random delays")
    for n in (2, 4, 8, 16):
        q_rr = float(st.max_stable_sharpness(1.0, st.round_robin(n)))
        q_rand = float(st.max_stable_sharpness(1.0, st.random_order(n)))
        q_worst = float(st.max_stable_sharpness(1.0, 2 * n - 2))
        assert q_rand > q_rr > q_worst, n
        assert 1.6 <= q_rr / q_worst <= 2.0
    assert "between" not in text
    assert "*above* the round-robin one" in text
    assert f"{1.0 / 0.75:.2f}x at N = 2" in text  # round robin 1, random order 4/3
    q16 = [float(st.max_stable_sharpness(1.0, f(16))) for f in (st.random_order, st.round_robin)]
    assert f"{q16[0] / q16[1]:.2f}x at N = 16" in text
    assert "1.6x to 2x that of the worst delay" in text


def test_saved_notebook_outputs_are_what_the_cells_print(monkeypatch, tmp_path):
    """A fresh run prints what the saved notebook shows (no stale numbers)."""
    pytest.importorskip("ipywidgets")
    import ipywidgets
    import jax

    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    monkeypatch.setattr(ipywidgets, "interact", lambda f, **kw: None)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__notebook__"}
    checked = 0
    with jax.numpy_dtype_promotion("standard"), jax.enable_x64(False):
        for cell in _cells(REGIONS):
            if cell["cell_type"] != "code":
                continue
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec("".join(cell["source"]), namespace)
            plt.close("all")
            saved = "".join(
                "".join(o["text"]) for o in cell["outputs"] if o.get("name") == "stdout"
            )
            assert saved == out.getvalue(), "".join(cell["source"])[:80]
            checked += bool(saved)
    assert checked >= 3


def test_howto_momentum_gain_is_the_printed_one():
    """The how-to's sentence under the recommend_momentum block names the gain that
    block prints (1.31x at tau = 15) and calls 4/pi the large-delay limit, which the
    gain approaches from above."""
    text = " ".join((ROOT / "docs" / "how-to.md").read_text().split())
    lr0, n = 0.1, 16
    tau = n - 1
    lr = st.lr_for_delay(lr0, tau)
    rec = st.recommend_momentum(tau, effective_lr=lr)
    gain = rec.max_stable_sharpness / rec.max_stable_sharpness_no_momentum
    assert rec.momentum == "shifted" and rec.beta == 0.99
    assert gain > 4 / math.pi
    sentence = re.search(r"the shifted form does:.*?rescale only the learning rate", text)
    assert sentence, "the sentence after the recommend_momentum block"
    sentence = sentence.group(0)
    assert f"{gain:.2f}x here" in sentence and "at most" not in sentence
    assert "4/\\pi \\approx 1.27" in sentence
    at_4 = st.recommend_momentum(4, effective_lr=0.01)
    gain_4 = at_4.max_stable_sharpness / at_4.max_stable_sharpness_no_momentum
    assert f"{gain_4:.2f}x at `tau = 4`" in sentence
    # Shrinking with the delay, towards 4/pi (beta near 1) at large delays.
    gains = [
        float(st.max_stable_sharpness(1.0, t, 0.9999, momentum="shifted"))
        / (1 - 0.9999)
        / float(st.max_stable_sharpness(1.0, t, 0.0))
        for t in (4, 15, 64, 1024)
    ]
    assert np.all(np.diff(gains) < 0) and gains[-1] == pytest.approx(4 / math.pi, rel=2e-3)


def test_readme_says_how_to_install_the_notebooks_extra():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[notebooks]"' in readme
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^notebooks = \[.*"ipywidgets', pyproject, re.M)
