"""Run the benchmarks, each in its own process, and record what this run measured.

``python -m benchmarks [--quick] [--only NAME ...]`` (``--help`` lists the names).

Each benchmark script prints its figures and its ``TARGET`` verdicts and (most of
them) writes a ``RESULTS-<name>.md``. The runner shows the script's output as it
comes and keeps it; the targets it records are parsed from THAT output, never from
a results file this run did not write. Into ``benchmarks/results/`` (git-ignored)
it writes:

- ``<name>.json``: the device (JAX backend and device kinds), package versions,
  command, date, load average, wall time, exit status, the targets this run printed
  (``{"target", "verdict"}``), the script's whole output, and the results file this
  run wrote (its path and text; ``null`` when the script wrote none in this run);
- ``summary.md``: one row per benchmark with its targets met and their verdicts.

Full runs (the default) leave each script's ``benchmarks/RESULTS-<name>.md`` where
the script writes it: commit it only if you mean to record it. ``--quick`` runs the
CPU-sized variant of each benchmark (fewer sizes and repeats): its results file is
moved to ``benchmarks/results/RESULTS-<name>.md`` and the committed full-run file is
put back as it was, so a quick run never replaces a recorded full run.

Exit status: the first failing script's exit status; otherwise 1 when a target was
missed or a benchmark printed no target; otherwise 0.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (script, full arguments, quick arguments, results file)
BENCHMARKS = {
    "thresholds": (
        "thresholds.py",
        [],
        ["--points", "100000"],
        "RESULTS-thresholds.md",
    ),
    "hessian": (
        "hessian.py",
        [],
        ["--only", "mlp", "--repeat-mlp", "2", "--fresh-mlp", "1"],
        "RESULTS-hessian.md",
    ),
    "tracking": (
        "tracking.py",
        [],
        [],
        "RESULTS-tracking.md",
    ),
    "large-model": (
        "large_model.py",
        [],
        ["--sizes", "1e4", "1e5", "1e6"],
        "RESULTS-large-model.md",
    ),
    "delays": (
        "delays.py",
        [],
        [],
        "RESULTS-delays.md",
    ),
    "verification": (
        "verification.py",
        [],
        ["--repeat", "3"],
        "RESULTS-verification.md",
    ),
    "preconditioned": (
        "preconditioned_products.py",
        [],
        ["--models", "mlp", "--repeat", "3"],
        "RESULTS-preconditioned.md",
    ),
    "adam-verdicts": (
        "adam_verdicts.py",
        [],
        [],
        "RESULTS-adam-verdicts.md",
    ),
    "diloco": (
        "diloco_boundary.py",
        [],
        ["--hs", "5", "--outers", "nesterov 0.9", "--iters", "10"],
        "RESULTS-diloco.md",
    ),
    "block-radius": (
        "block_radius.py",
        [],
        ["--power-cap", "1000", "--width", "300", "--no-write"],
        "RESULTS-block-radius.md",
    ),
    "block-dense": (
        "block_dense_check.py",
        [],
        ["--quick"],
        "RESULTS-block-dense.md",
    ),
}
DESCRIPTIONS = {
    "thresholds": "threshold evaluations per second, speed-up over eigenvalue bisection, "
    "spectral radius grid",
    "hessian": "hessian_spectrum against PyHessian and hessian-eigenthings (needs .[bench])",
    "tracking": "SharpnessTracker: products per check, warm against cold",
    "large-model": "time and peak memory from 1e4 to 1e7 parameters",
    "delays": "delay distributions with support 10 .. 10,000: time and error",
    "verification": "cost of the float64 check of float32 spectra",
    "preconditioned": "Adam's preconditioned spectrum: time per product and products per "
    "spectrum against the plain engine",
    "adam-verdicts": "Adam(W) verdicts at 0.9x and 1.1x max_stable_lr against the frozen "
    "model and live delayed AdamW from a trained minimum",
    "diloco": "DiLoCo / local SGD: predicted largest stable outer lr against the "
    "divergence boundary of simulate_diloco from a digits minimum",
    "block-radius": "a delay per block: Arnoldi against power iteration on the history "
    "operator (products to 1e-6), block_delay_max_lr on a 1e6-parameter 4-stage model",
    "block-dense": "a delay per block on a 259-parameter digits minimum against the dense "
    "transition matrix: max stable lr (k=n) to 1e-6, radius at 0.9x/1.1x to 1e-8",
    "float32": "float32 certificates on Flax-example networks against float64 truths",
}
# Benchmarks whose script may not exist in every checkout: registered only when the
# script is there and defines ``main``.
OPTIONAL = {
    "float32": (
        "float32_certificates.py",
        [],
        ["--quick"],
        "RESULTS-float32.md",
    ),
}

# "- TARGET <what> -> PASS" (and "TARGET <what>: FAIL (...)")
_TARGET = re.compile(r"^-?\s*TARGET\s+(?P<target>.*?)\s*(?:->|:)\s*(?P<verdict>PASS|MISS|FAIL)\b")
# "<figure>   <value> <unit>   target >= 1e+07   PASS" (benchmarks/thresholds.py)
_FIGURE = re.compile(r"^(?P<target>\S.*?\btarget\s*[<>]=?\s*\S+)\s+(?P<verdict>PASS|MISS|FAIL)\s*$")


def _has_main(path: str) -> bool:
    """Whether the script at ``path`` defines a top-level ``main`` (read, not imported)."""
    try:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return False
    return any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


def available() -> dict:
    """The benchmarks this checkout can run: ``BENCHMARKS`` and the present ``OPTIONAL``."""
    table = dict(BENCHMARKS)
    for name, entry in OPTIONAL.items():
        if _has_main(os.path.join(HERE, entry[0])):
            table[name] = entry
    return table


def _environment() -> dict:
    import jax

    versions = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "numpy", "scipy"):
        try:
            versions[pkg] = __import__(pkg).__version__
        except Exception:  # not installed: recorded as such
            versions[pkg] = None
    return {
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
        "versions": versions,
    }


def _targets(text: str) -> list[dict]:
    """The target verdicts printed in ``text`` (a script's output), in order."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        m = _TARGET.match(line) or _FIGURE.match(line)
        if m:
            target = re.sub(r"\s{2,}", " ", m.group("target"))
            out.append({"target": target, "verdict": m.group("verdict")})
    return out


def _run(cmd: list[str], cwd: str) -> tuple[int, str]:
    """Run ``cmd``; its stdout is echoed line by line as it comes and returned."""
    lines = []
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
        proc.wait()
    return proc.returncode, "".join(lines)


def _stat(path: str):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def run_one(name: str, entry: tuple, quick: bool, env: dict) -> dict:
    """Run one benchmark; returns its record (what this run printed and wrote)."""
    script, full, quick_args, results = entry
    root = os.path.dirname(HERE)
    cmd = [sys.executable, os.path.join(HERE, script), *(quick_args if quick else full)]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    path = os.path.join(HERE, results)
    kept, kept_stat = _read(path), _stat(path)  # the committed file, put back after a quick run
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    quick_path = os.path.join(HERE, "results", results)
    load = os.getloadavg()
    t = time.perf_counter()
    written = None
    try:
        status, output = _run(cmd, root)
        wall = time.perf_counter() - t
        new = _read(path)
        if new is not None and (_stat(path) != kept_stat or new != kept):
            written = path  # the script wrote its results file in this run
            if quick:
                with open(quick_path, "wb") as f:
                    f.write(new)
                written = quick_path
    finally:
        if quick and _stat(path) != kept_stat:
            if kept is None:
                os.remove(path)
            else:
                with open(path, "wb") as f:
                    f.write(kept)
                os.utime(path, ns=(kept_stat[0], kept_stat[0]))
    text = _read(written).decode(errors="replace") if written else None
    return {
        "name": name,
        "command": " ".join(["python", os.path.relpath(cmd[1], root), *cmd[2:]]),
        "quick": quick,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_at_start": load,
        "wall_s": wall,
        "exit_status": status,
        **env,
        "targets": _targets(output),
        "output": output,
        "results_file": os.path.relpath(written, root) if written else None,
        "results_markdown": text,
    }


def _row(record: dict) -> str:
    targets = record["targets"]
    met = sum(t["verdict"] == "PASS" for t in targets)
    verdicts = "; ".join(f"{t['verdict']}: {t['target']}" for t in targets)
    return (
        f"| {record['name']} | {record['exit_status']} | {record['wall_s']:.0f} | "
        f"{f'{met}/{len(targets)}' if targets else 'none printed'} | {verdicts or '-'} | "
        f"{record['results_file'] or 'none written'} |"
    )


def _parser(table: dict) -> argparse.ArgumentParser:
    width = max(len(n) for n in table)
    listing = "\n".join(
        f"  {name:<{width}}  {entry[0]}: {DESCRIPTIONS.get(name, '')}"
        for name, entry in table.items()
    )
    return argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n")[0],
        epilog=f"benchmarks:\n{listing}\n\n" + __doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv=None) -> int:
    table = available()
    ap = _parser(table)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="CPU-sized variants; results go to benchmarks/results/, the committed "
        "RESULTS-*.md files are left as they were",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help=f"benchmarks to run (default: all): {', '.join(table)}",
    )
    args = ap.parse_args(argv)
    names = args.only or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    env = _environment()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    rows, status, missed = [], 0, False
    for name in names:
        record = run_one(name, table[name], args.quick, env)
        with open(os.path.join(HERE, "results", f"{name}.json"), "w") as f:
            json.dump(record, f, indent=1)
        rows.append(_row(record))
        status = status or record["exit_status"]
        missed = missed or not record["targets"]
        missed = missed or any(t["verdict"] != "PASS" for t in record["targets"])
    summary = [
        f"# Benchmarks ({'quick' if args.quick else 'full'} run)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; backend "
        f"{env['backend']} ({', '.join(sorted(set(env['devices'])))}); {env['machine']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}",
        "- targets: those this run printed, parsed from its output",
        "",
        "| benchmark | exit | wall (s) | targets met | verdicts | results file of this run |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    with open(os.path.join(HERE, "results", "summary.md"), "w") as f:
        f.write("\n".join(summary) + "\n")
    print("\n".join(summary))
    return status or int(missed)


if __name__ == "__main__":
    sys.exit(main())
