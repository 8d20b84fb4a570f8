"""enable_compilation_cache: a second process loads the compiled programs of the
first from disk (JAX's persistent cache) and computes the same spectrum."""

import json
import os
import subprocess
import sys

import pytest

import stability as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import stability as st
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None
)
path = st.enable_compilation_cache(sys.argv[1] if len(sys.argv) > 1 else None)
d = jnp.asarray([4.0, 1.0, -2.0, 0.5])
def loss(p, b):
    return 0.5 * jnp.sum(d * p["x"] ** 2) * jnp.mean(b)
r = st.hessian_spectrum(loss, {"x": jnp.ones(4)}, jnp.ones(3), k=2, tol=1e-12,
                        devices=jax.devices()[:1], loop="host", progress=False)
print(json.dumps(dict(hits=len(hits), top=r.eigenvalues.tolist(), smallest=r.smallest,
                      path=path)))
"""


def _run(cache_dir=None, env_dir=None):
    """The probe in a new process: the cache directory as the argument, or none and
    the environment variable STABILITY_COMPILATION_CACHE set to ``env_dir``."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = ""  # one CPU device, as a user's script would have
    env.pop("STABILITY_COMPILATION_CACHE", None)
    if env_dir is not None:
        env["STABILITY_COMPILATION_CACHE"] = str(env_dir)
    argv = [] if cache_dir is None else [str(cache_dir)]
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], env=env, capture_output=True, text=True,
        timeout=300, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_compiled_programs(tmp_path):
    # Observable behaviour only (no JAX cache file names): the first process finds
    # nothing and writes entries; a second one, given the same directory through the
    # environment variable, loads programs from it (JAX's public monitoring events
    # count the cache hits) and computes the same spectrum.
    cache = tmp_path / "cache"
    first = _run(cache)
    assert first["path"] == str(cache) and first["hits"] == 0
    assert os.listdir(cache)
    second = _run(env_dir=cache)
    assert second["path"] == str(cache)
    assert second["hits"] >= 1
    assert second["top"] == first["top"] and second["smallest"] == first["smallest"]
    assert first["top"] == pytest.approx([4.0, 1.0], abs=1e-12)
    assert first["smallest"] == pytest.approx(-2.0, abs=1e-12)


def test_bad_input(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="path must be a directory"):
        st.enable_compilation_cache(f)
    with pytest.raises(ValueError, match="min_compile_time_secs must be >= 0"):
        st.enable_compilation_cache(tmp_path, min_compile_time_secs=-1.0)
    with pytest.raises(TypeError, match="min_compile_time_secs must be a number"):
        st.enable_compilation_cache(tmp_path, min_compile_time_secs="0")
