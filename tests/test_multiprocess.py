"""Two processes x 2 CPU devices under ``jax.distributed`` (localhost coordinator,
gloo collectives), each holding only its share of the data: ``hessian_spectrum`` and
``is_accessible`` agree with one process over the global data (float64, 1e-10
relative) for even and uneven shares and for iterators of batches; a bad shard makes
every process raise (no hang); a process that dies ends the other one."""

import json
import os
import socket
import subprocess
import sys

import multiprocess_problem as P
import numpy as np
import pytest

import stability

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multiprocess_worker.py")
# Bounds on the subprocesses (a hang fails the test instead of the suite).
LAUNCH_TIMEOUT = 240


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(mode):
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, str(i), "2", port, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=LAUNCH_TIMEOUT)
            outs.append(out)
    finally:
        for p in procs:
            p.kill()
    results = []
    for out in outs:
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        results.append(json.loads(lines[-1][7:]) if lines else {"output": out[-3000:]})
    return [p.returncode for p in procs], results


@pytest.fixture(scope="module")
def scenarios():
    codes, results = _launch("scenarios")
    assert codes == [0, 0], results
    return results


def _reference(data):
    return stability.hessian_spectrum(P.loss, P.params(), data, k=2, tol=1e-12, progress=False)


def test_each_process_has_two_local_devices(scenarios):
    for r in scenarios:
        assert r["local_devices"] == 2 and r["devices"] == 4


@pytest.mark.parametrize("case", ["even", "uneven", "batches"])
def test_spectrum_equals_one_process_over_the_global_data(scenarios, case):
    ref = _reference(P.data())
    for r in scenarios:
        np.testing.assert_allclose(r[case]["eigenvalues"], ref.eigenvalues, rtol=1e-10)
    # Both processes took the same decisions: the same number of products.
    assert scenarios[0][case]["num_hvps"] == scenarios[1][case]["num_hvps"]


def test_is_accessible_equals_one_process(scenarios):
    ref = stability.is_accessible(
        P.loss, P.params(), tau=4, lr=P.LR, data=P.data(), tol=1e-9, progress=False
    )
    for r in scenarios:
        acc = r["accessible"]
        assert acc["verdict"] == ref.verdict
        assert acc["limit"] == pytest.approx(ref.max_stable_sharpness, rel=1e-12)
        assert acc["sharpness"] == pytest.approx(ref.sharpness, rel=1e-10)


def test_a_bad_shard_makes_every_process_raise(scenarios):
    own, other = scenarios[1]["bad_shard"], scenarios[0]["bad_shard"]
    assert own is not None and own.startswith(("ValueError", "TypeError"))
    assert other is not None and other.startswith("RuntimeError")
    assert "process 1 of 2 failed" in other
    # ... and they carry on together.
    ref = _reference(P.data())
    for r in scenarios:
        np.testing.assert_allclose(r["after_bad_shard"]["eigenvalues"], ref.eigenvalues,
                                   rtol=1e-10)  # fmt: skip


def test_a_process_that_dies_ends_the_other():
    codes, results = _launch("dies")
    assert codes[1] == 3
    assert codes[0] != 0, results[0]  # ended by the heartbeat, not hung or finished
    assert "finished" not in results[0]
