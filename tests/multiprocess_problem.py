"""The model, data and shares of the multi-process test, shared by the test process
(one-process reference over the global data) and the workers."""

import jax.numpy as jnp
import numpy as np

LR = 0.1
N = 48
EVEN = (24, 24)
UNEVEN = (18, 30)  # not a multiple of anything in particular: 18 = 2 x 9, 30 = 2 x 15


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, 5)), rng.standard_normal((N, 2))


def params():
    rng = np.random.default_rng(1)
    return {
        "w1": jnp.asarray(rng.standard_normal((5, 8)) / 2),
        "w2": jnp.asarray(rng.standard_normal((8, 2)) / 3),
    }


def loss(p, batch):
    x, y = batch
    return 0.5 * jnp.mean(jnp.sum((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2, axis=-1))


def shares(sizes):
    """Index arrays of each process's examples (consecutive blocks)."""
    ends = np.cumsum(sizes)
    return [np.arange(e - s, e) for s, e in zip(sizes, ends, strict=True)]


def batches():
    """Each process's list of index batches: 3 batches on process 0, 2 on process 1,
    of unequal sizes (7 + 5 + 9 = 21 and 13 + 14 = 27 examples)."""
    cuts = [[0, 7, 12, 21], [21, 34, 48]]
    return [[np.arange(a, b) for a, b in zip(c[:-1], c[1:], strict=True)] for c in cuts]
