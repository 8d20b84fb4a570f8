"""The documentation site builds strictly, and its checks can fail.

``mkdocs build --strict`` (mkdocs.yml) turns every warning into an error: a broken
link or cross-reference, a public name without a docstring or missing from the API
pages, a docstring documenting a parameter the function lacks (docs/hooks.py). The
build reads the package statically (griffe), so it needs no JAX.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TOOLS = ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python", "pymdownx", "griffe")


def _missing_tools() -> list[str]:
    missing = []
    for name in TOOLS:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


needs_tools = pytest.mark.skipif(
    bool(_missing_tools()),
    reason=f"documentation tools not installed ({', '.join(_missing_tools())}): "
    'python -m pip install -e ".[docs]"',
)


def _hooks():
    spec = importlib.util.spec_from_file_location("stability_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_tools
def test_strict_build(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index", "getting-started/index", "theory/index", "how-to/index",
                 "architecture/index", "api/thresholds/index", "api/spectrum/index",
                 "api/verdict/index", "api/simulation/index"):  # fmt: skip
        assert (site / f"{page}.html").is_file(), page
    api = (site / "api" / "verdict" / "index.html").read_text(encoding="utf-8")
    assert 'id="stability.is_accessible"' in api
    assert "certificates" in api or "certified" in api  # the docstring's text is rendered
    theory = (site / "theory" / "index.html").read_text(encoding="utf-8")
    assert theory.count(r"\tag{") >= 40  # the numbered formulas reach the page
    # cross-references between pages resolved into links
    architecture = (site / "architecture" / "index.html").read_text(encoding="utf-8")
    assert "../api/verdict/#stability.is_accessible" in architecture


@needs_tools
def test_the_public_api_is_documented():
    """Every name in stability.__all__ has a docstring and an API entry (the check the
    strict build runs), and every entry names something that exists."""
    import stability

    assert _hooks().problems(DOCS) == []
    entries = "".join(p.read_text(encoding="utf-8") for p in (DOCS / "api").glob("*.md"))
    for name in stability.__all__:
        assert f"::: stability.{name}\n" in entries, name


@needs_tools
def test_the_checks_catch_what_they_claim(tmp_path):
    """The hook reports a missing docstring (a name and a method), a public name missing
    from the API pages, a stale documented parameter and an entry naming nothing."""
    pkg = tmp_path / "src" / "fakepkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            '''
            """A package for the test."""

            __all__ = ["documented", "bare", "Thing", "stale"]


            def documented(x):
                """Fine.

                Args:
                  x: a number.
                """


            def bare(x):
                return x


            class Thing:
                """A class."""

                def method(self):
                    return 1


            def stale(a, b):
                """Old names.

                Args:
                  a, c: numbers.
                """
            '''
        )
    )
    docs = tmp_path / "docs"
    (docs / "api").mkdir(parents=True)
    (docs / "api" / "ref.md").write_text(
        "::: fakepkg.documented\n::: fakepkg.bare\n::: fakepkg.stale\n::: fakepkg.ghost\n"
    )
    found = _hooks().problems(docs, package="fakepkg", search_paths=[str(tmp_path / "src")])
    assert sorted(found) == sorted(
        [
            "fakepkg.bare has no docstring",
            "fakepkg.Thing is public but has no '::: fakepkg.Thing' on an API page",
            "fakepkg.Thing.method (a public method) has no docstring",
            "fakepkg.stale: the docstring documents 'c', not a parameter",
            "'::: fakepkg.ghost' names nothing in fakepkg",
        ]
    )


def test_sphinx_roles_become_links():
    """The package's docstrings use Sphinx roles; the site renders them as code that
    links where the target is documented (an optional autoref)."""
    html = "see :func:<code>stability.hessian_spectrum</code> and :mod:<code>x.y</code>"
    out = _hooks().on_page_content(html, page=None, config=None, files=None)
    assert ":func:" not in out and ":mod:" not in out
    assert (
        '<autoref identifier="stability.hessian_spectrum" optional>'
        "<code>stability.hessian_spectrum</code></autoref>" in out
    )
