"""``python -m benchmarks`` records what its run measured (issue 21, item 17).

The runner is driven on tiny fake benchmark scripts in a temporary folder (its
``HERE`` and tables monkeypatched); no real benchmark runs here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import textwrap

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "benchmarks_runner", pathlib.Path(__file__).parent.parent / "benchmarks" / "__main__.py"
)
runner = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(runner)

COMMITTED = "# Full run, a week ago\n\n" + "".join(
    f"- TARGET figure {i} >= 1 -> PASS\n" for i in range(5)
)


def fake_script(folder, name, body):
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """A benchmarks folder with a committed full-run RESULTS-fake.md (5/5 PASS)."""
    here = tmp_path / "benchmarks"
    here.mkdir()
    (here / "RESULTS-fake.md").write_text(COMMITTED)
    os.utime(here / "RESULTS-fake.md", ns=(1_000_000_000_000_000_000,) * 2)
    monkeypatch.setattr(runner, "HERE", str(here))
    monkeypatch.setattr(runner, "OPTIONAL", {})
    monkeypatch.setattr(
        runner,
        "_environment",
        lambda: {"backend": "cpu", "devices": ["cpu"], "machine": "test", "versions": {}},
    )
    return here


# The quick variant measures 2 of 5 targets met and writes its own results file.
WRITES = """
    import os, sys
    quick = "--quick" in sys.argv
    lines = [f"- TARGET figure {i} >= 1 -> {'PASS' if i < 2 or not quick else 'MISS'}"
             for i in range(5)]
    print("measuring", flush=True)
    print("\\n".join(lines))
    with open(os.path.join(os.path.dirname(__file__), "RESULTS-fake.md"), "w") as f:
        f.write("# this run\\n" + "\\n".join(lines) + "\\n")
"""

# Prints its figures in the thresholds format and writes no results file.
PRINTS_ONLY = """
    print("threshold evaluations/s, shifted (1e+05 pts)   2.1e+06 1/s  target >= 1e+07  MISS")
    print("speed-up over eigenvalue bisection (heavy_ball)  4.7e+05 x  target >= 1000  PASS")
    print("1/2 targets met")
"""


def run(bench, monkeypatch, body, *argv):
    fake_script(bench, "fake.py", body)
    monkeypatch.setattr(
        runner, "BENCHMARKS", {"fake": ("fake.py", [], ["--quick"], "RESULTS-fake.md")}
    )
    status = runner.main(["--only", "fake", *argv])
    record = json.loads((bench / "results" / "fake.json").read_text())
    summary = (bench / "results" / "summary.md").read_text()
    return status, record, summary


def test_quick_run_records_its_own_targets_and_keeps_the_committed_file(bench, monkeypatch):
    before = os.stat(bench / "RESULTS-fake.md")
    status, record, summary = run(bench, monkeypatch, WRITES, "--quick")
    verdicts = [t["verdict"] for t in record["targets"]]
    assert verdicts == ["PASS", "PASS", "MISS", "MISS", "MISS"]
    assert "| fake | 0 |" in summary and "| 2/5 |" in summary
    assert "MISS: figure 2 >= 1" in summary
    assert status == 1  # targets missed
    # The committed full run is untouched (content and modification time) ...
    assert (bench / "RESULTS-fake.md").read_text() == COMMITTED
    assert os.stat(bench / "RESULTS-fake.md").st_mtime_ns == before.st_mtime_ns
    # ... and the quick run's own file is kept beside the records.
    quick = bench / "results" / "RESULTS-fake.md"
    assert quick.read_text().startswith("# this run")
    assert record["results_file"] == os.path.join("benchmarks", "results", "RESULTS-fake.md")
    assert record["results_markdown"] == quick.read_text()
    assert "measuring" in record["output"]


def test_a_script_that_writes_no_results_file_is_not_credited_with_the_committed_one(
    bench, monkeypatch
):
    status, record, summary = run(bench, monkeypatch, PRINTS_ONLY, "--quick")
    assert [t["verdict"] for t in record["targets"]] == ["MISS", "PASS"]
    assert record["targets"][1]["target"].startswith("speed-up over eigenvalue bisection")
    assert record["results_file"] is None and record["results_markdown"] is None
    assert "PASS: figure" not in summary and "| 1/2 |" in summary
    assert "none written" in summary
    assert status == 1
    assert (bench / "RESULTS-fake.md").read_text() == COMMITTED


def test_full_run_records_the_file_it_wrote(bench, monkeypatch):
    status, record, summary = run(bench, monkeypatch, WRITES)
    assert [t["verdict"] for t in record["targets"]] == ["PASS"] * 5
    assert status == 0 and not record["quick"]
    assert (bench / "RESULTS-fake.md").read_text().startswith("# this run")
    assert record["results_file"] == os.path.join("benchmarks", "RESULTS-fake.md")
    assert "Benchmarks (full run)" in summary


def test_no_targets_printed_and_failures_are_not_success(bench, monkeypatch):
    status, record, summary = run(bench, monkeypatch, "print('nothing measured')\n", "--quick")
    assert record["targets"] == [] and "none printed" in summary and status == 1
    failing = """
        import os, sys
        with open(os.path.join(os.path.dirname(__file__), "RESULTS-fake.md"), "w") as f:
            f.write("half a run")
        print("- TARGET figure 0 >= 1 -> PASS", flush=True)
        sys.exit(3)
    """
    status, record, _ = run(bench, monkeypatch, failing, "--quick")
    assert status == 3 and record["exit_status"] == 3
    assert (bench / "RESULTS-fake.md").read_text() == COMMITTED


def test_help_lists_the_benchmarks(capsys):
    with pytest.raises(SystemExit) as exit_:
        runner.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name, entry in runner.available().items():
        assert name in out and entry[0] in out
    assert "verification" in out


def test_unknown_name_is_refused_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_:
        runner.main(["--only", "nope"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "thresholds" in err


def test_new_benchmarks_are_registered(tmp_path, monkeypatch):
    assert runner.BENCHMARKS["verification"][0] == "verification.py"
    assert os.path.exists(os.path.join(runner.HERE, "verification.py"))
    assert runner.OPTIONAL["float32"][0] == "float32_certificates.py"
    # The optional one only when its script exists and defines main (read, not imported).
    monkeypatch.setattr(runner, "HERE", str(tmp_path))
    assert "float32" not in runner.available()
    (tmp_path / "float32_certificates.py").write_text("raise SystemExit('not imported')\n")
    assert "float32" not in runner.available()
    (tmp_path / "float32_certificates.py").write_text(
        "import nothing_here\n\ndef main():\n    pass\n"
    )
    assert "float32" in runner.available()
