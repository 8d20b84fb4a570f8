"""The notebooks run top to bottom (widgets render headless, each callback runs once)."""

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, monkeypatch, tmp_path):
    pytest.importorskip("ipywidgets")
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    import ipywidgets

    # Each interactive cell first calls its function with the defaults (the figure a
    # reader of the saved notebook sees); interact then only builds the controls
    # (manual mode: no second run of the same computation).
    interacted = []

    def interact(f, **kw):
        interacted.append(f.__name__)
        return ipywidgets.interactive(f, {"manual": True}, **kw)

    monkeypatch.setattr(ipywidgets, "interact", interact)
    monkeypatch.chdir(tmp_path)
    cells = json.loads(path.read_text())["cells"]
    code = [("".join(c["source"])) for c in cells if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code"
    namespace = {"__name__": "__notebook__"}
    # Notebooks run with standard dtype promotion, as users' kernels do.
    with jax.numpy_dtype_promotion("standard"):
        for i, source in enumerate(code):
            try:
                exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
            finally:
                plt.close("all")
    for name in interacted:
        assert any(f"\n{name}()" in "\n" + c for c in code), f"{name} is never run by itself"
