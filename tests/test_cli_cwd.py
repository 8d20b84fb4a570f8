"""`stability check --model mypkg.models:make` finds the user's own package in the
folder the command runs from (no PYTHONPATH needed), as `python -m` would."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest


def test_check_imports_the_users_package_from_the_working_directory(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text(
        textwrap.dedent("""
        import jax.numpy as jnp

        def make():
            def loss(p, batch):
                return 0.5 * jnp.sum(p["w"] ** 2 * jnp.asarray([1.0, 4.0]))
            return loss

        def data():
            return jnp.zeros((4, 1))
    """)
    )
    np.savez(tmp_path / "p.npz", w=np.ones(2))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # The installed console script (as users run it): unlike `python -c`, it does not
    # put the working directory on the import path by itself.
    script = os.path.join(os.path.dirname(sys.executable), "stability")
    if not os.path.exists(script):
        pytest.skip(f"the console script is not installed next to {sys.executable}")
    args = ["check", "--model", "mypkg.m:make", "--params", "p.npz", "--data", "mypkg.m:data",
            "--tau", "0", "--lr", "0.1", "--json"]  # fmt: skip
    res = subprocess.run([script, *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    import json

    out = json.loads(res.stdout)
    assert abs(out["sharpness"] - 4.0) <= 1e-5  # the Hessian is diag(1, 4)


def test_a_data_factory_returning_one_array_is_one_batch():
    import types

    import jax.numpy as jnp

    from stability.app.cli import _load_data

    mod = types.ModuleType("one_array_data")
    mod.data = lambda: jnp.ones((5, 2))
    sys.modules["one_array_data"] = mod
    try:
        out = _load_data("one_array_data:data")
    finally:
        del sys.modules["one_array_data"]
    assert out.shape == (5, 2)  # the array itself, not rows of it
