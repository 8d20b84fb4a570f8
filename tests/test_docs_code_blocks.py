"""Every Python code block of the README and docs/ runs, as written (issue 21, item 12).

Each page's blocks run in order in one fresh interpreter (one namespace, as a reader
pastes them one after the other), in an empty temporary folder, with JAX's defaults
(float32: the conftest's x64 does not reach the subprocess) and a headless matplotlib.
A block whose first line is a file name comment (``# mypkg/models.py``) is also
written to that file, so that later blocks can import it. A block may be left out
only with a comment right above it, ``<!-- not run in the tests: REASON -->``; the
test checks that every such comment gives a reason and that few blocks use it.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!-- not run in the tests: (?P<reason>[^>]*?)\s*-->\s*$")
FENCE = re.compile(r"^```python[ \t]*\n(?P<code>.*?)^```", re.S | re.M)

RUNNER = textwrap.dedent("""
    import json, os, sys, traceback
    blocks = json.load(open(sys.argv[1]))
    sys.path.insert(0, os.getcwd())
    namespace = {"__name__": "__main__"}
    for i, (code, path) in enumerate(blocks):
        if path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            folder = os.path.dirname(path)
            while folder:  # the folders of a module path are packages
                open(os.path.join(folder, "__init__.py"), "a").close()
                folder = os.path.dirname(folder)
            with open(path, "w") as f:
                f.write(code)
        try:
            exec(compile(code, f"<block {i + 1}>", "exec"), namespace)
        except BaseException:
            traceback.print_exc()
            print(f"BLOCK {i + 1} FAILED", file=sys.stderr)
            sys.exit(1)
        print(f"block {i + 1} ran", flush=True)
""")


def blocks_of(page: Path):
    """``(code, file name or None, skip reason or None)`` for each Python block."""
    text = page.read_text()
    out = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        skip = SKIP.search(before[-1]) if before else None
        code = match.group("code")
        first = code.splitlines()[0] if code.strip() else ""
        name = re.fullmatch(r"#\s*([\w/]+\.py)\s*", first)
        out.append((code, name.group(1) if name else None, skip and skip.group("reason")))
    return out


def test_every_page_has_blocks_and_few_are_left_out():
    every = [b for page in PAGES for b in blocks_of(page)]
    skipped = [b for b in every if b[2] is not None]
    assert len(every) >= 15
    assert len(skipped) <= 2 and all(reason.strip() for *_, reason in skipped)


@pytest.mark.parametrize("page", [p for p in PAGES if blocks_of(p)], ids=lambda p: p.name)
def test_the_code_blocks_of_a_page_run_as_written(page, tmp_path):
    runnable = [(code, name) for code, name, skip in blocks_of(page) if skip is None]
    (tmp_path / "blocks.json").write_text(json.dumps(runnable))
    (tmp_path / "runner.py").write_text(RUNNER)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, MPLBACKEND="Agg", HOME=str(tmp_path))
    env.pop("JAX_ENABLE_X64", None)
    argv = [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "blocks.json")]
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count(" ran") == len(runnable)
