"""Run every benchmark: ``python -m benchmarks [--quick] [--only NAME ...]``.

Each benchmark script runs in its own process (the command, its wall time and its
exit status are recorded) and writes its own ``benchmarks/RESULTS-<name>.md``.
This runner then writes, into ``benchmarks/results/``:

- ``<name>.json``: the device (JAX backend and device kinds), package versions,
  command, date, load average, wall time, exit status, every ``TARGET`` line of the
  script's results parsed into ``{"target", "verdict"}``, and the results markdown
  itself (every figure the script measured, first-call/compile and warm times in
  their own rows as each script reports them);
- ``summary.md``: one row per benchmark with its targets' verdicts.

``--quick`` runs the CPU-sized variant of each benchmark (fewer sizes and repeats);
the recorded ``RESULTS-*.md`` files in ``benchmarks/`` come from full runs, and a
quick run overwrites them, so commit only what you mean to record.
"""

from __future__ import annotations

import argparse
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
    "thresholds": ("thresholds.py", [], ["--points", "100000"], "RESULTS-thresholds.md"),
    "hessian": (
        "hessian.py",
        [],
        ["--only", "mlp", "--repeat-mlp", "2", "--fresh-mlp", "1"],
        "RESULTS-hessian.md",
    ),  # fmt: skip
    "tracking": ("tracking.py", [], [], "RESULTS-tracking.md"),
    "large-model": (
        "large_model.py",
        [],
        ["--sizes", "1e4", "1e5", "1e6"],
        "RESULTS-large-model.md",
    ),  # fmt: skip
    "delays": ("delays.py", [], [], "RESULTS-delays.md"),
    "float32": ("float32_certificates.py", [], ["--quick"], "RESULTS-float32.md"),
}
OPTIONAL = {}  # benchmarks whose script may not exist in every checkout


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
    out = []
    for line in text.splitlines():
        m = re.match(r"- TARGET (.*?) -> (PASS|MISS)\b", line.strip())
        if m:
            out.append({"target": m.group(1), "verdict": m.group(2)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized variants")
    ap.add_argument("--only", nargs="*", help="benchmark names (default: all)")
    args = ap.parse_args(argv)
    table = {**BENCHMARKS, **{k: v for k, v in OPTIONAL.items() if os.path.exists(
        os.path.join(HERE, v[0]))}}  # fmt: skip
    names = args.only or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {sorted(table)}")
    env = _environment()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    rows, status = [], 0
    for name in names:
        script, full, quick, results = table[name]
        cmd = [sys.executable, os.path.join(HERE, script), *(quick if args.quick else full)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        load = os.getloadavg()
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=os.path.dirname(HERE))
        wall = time.perf_counter() - t
        path = os.path.join(HERE, results)
        text = open(path).read() if os.path.exists(path) else ""
        record = {
            "name": name,
            "command": " ".join(
                ["python", os.path.relpath(cmd[1], os.path.dirname(HERE)), *cmd[2:]]
            ),  # fmt: skip
            "quick": args.quick,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_at_start": load,
            "wall_s": wall,
            "exit_status": proc.returncode,
            **env,
            "targets": _targets(text),
            "results_markdown": text,
        }
        with open(os.path.join(HERE, "results", f"{name}.json"), "w") as f:
            json.dump(record, f, indent=1)
        verdicts = ", ".join(f"{t['verdict']}: {t['target']}" for t in record["targets"]) or "-"
        rows.append(f"| {name} | {proc.returncode} | {wall:.0f} | {verdicts} |")
        status = status or proc.returncode
    summary = [
        f"# Benchmarks ({'quick' if args.quick else 'full'} run)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; backend "
        f"{env['backend']} ({', '.join(sorted(set(env['devices'])))}); {env['machine']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}",
        "",
        "| benchmark | exit | wall (s) | targets |",
        "|---|---|---|---|",
        *rows,
    ]
    with open(os.path.join(HERE, "results", "summary.md"), "w") as f:
        f.write("\n".join(summary) + "\n")
    print("\n".join(summary))
    return status


if __name__ == "__main__":
    sys.exit(main())
