"""One process of the multi-process test (tests/test_multiprocess.py): 2 CPU devices,
``jax.distributed`` on a localhost coordinator, gloo collectives. Runs every
scenario on this process's own share of the data and prints one JSON line.

    python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT MODE
"""

import json
import os
import sys

pid, nproc, port, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
    f"localhost:{port}", nproc, pid, initialization_timeout=60, heartbeat_timeout_seconds=5
)


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import multiprocess_problem as P  # noqa: E402

import stability  # noqa: E402

out = {"pid": pid, "local_devices": jax.local_device_count(), "devices": jax.device_count()}
params = P.params()


def spectrum(data):
    r = stability.hessian_spectrum(P.loss, params, data, k=2, tol=1e-12, progress=False)
    return {"eigenvalues": [float(v) for v in r.eigenvalues], "num_hvps": r.num_hvps}


if mode == "scenarios":
    x, y = P.data()
    even = P.shares(P.EVEN)[pid]
    uneven = P.shares(P.UNEVEN)[pid]
    out["even"] = spectrum((x[even], y[even]))
    out["uneven"] = spectrum((x[uneven], y[uneven]))
    out["batches"] = spectrum([(x[b], y[b]) for b in P.batches()[pid]])
    acc = stability.is_accessible(
        P.loss, params, tau=4, lr=P.LR, data=(x[uneven], y[uneven]), tol=1e-9, progress=False
    )
    out["accessible"] = {
        "verdict": acc.verdict,
        "sharpness": acc.sharpness,
        "limit": acc.max_stable_sharpness,
        "num_hvps": acc.num_hvps,
    }
    # A bad shard on process 1 (the wrong number of features): every process raises.
    bad = (x[uneven][:, :3], y[uneven]) if pid == 1 else (x[uneven], y[uneven])
    try:
        spectrum(bad)
        out["bad_shard"] = None
    except Exception as err:  # reported to the test
        out["bad_shard"] = f"{type(err).__name__}: {err}"
    # ... and the processes go on together afterwards.
    out["after_bad_shard"] = spectrum((x[uneven], y[uneven]))
elif mode == "dies":
    if pid == 1:
        os._exit(3)  # dies without raising: only the heartbeat can tell
    x, y = P.data()
    spectrum((x[P.shares(P.EVEN)[pid]], y[P.shares(P.EVEN)[pid]]))
    out["finished"] = True
print("RESULT " + json.dumps(out), flush=True)
jax.distributed.shutdown()
