"""The two benchmark models in JAX (plain pytrees) and PyTorch, with weight copying.

- ``mlp``: 64 -> 256 -> 256 -> 10 tanh MLP (85,002 parameters) on the digits
  bundled with stability (1797 examples, standardised), trained briefly with Adam so the
  Hessian is that of a (partly) trained network.
- ``cnn``: CIFAR-shaped (32x32x3) synthetic inputs, three 3x3 stride-2 convolutions
  (3->8->16->64, padding 1, tanh) and a 1024 -> 448 -> 10 head (about 0.47M
  parameters), random init.

Both use the mean cross-entropy. The torch models compute the same function on the
same weights (conv kernels HWIO -> OIHW, dense (in, out) -> (out, in), flatten in
NHWC order), checked by comparing the losses.
"""

from __future__ import annotations

import numpy as np

# JAX is imported inside the JAX functions only, so that a fresh process that runs a
# torch peer (benchmarks/hessian.py's fresh-process probes) never imports it.

DN = ("NHWC", "HWIO", "NHWC")


def cross_entropy(logits, y):
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def mlp_apply(p, x):
    import jax.numpy as jnp

    h = jnp.tanh(x @ p["w1"] + p["b1"])
    h = jnp.tanh(h @ p["w2"] + p["b2"])
    return h @ p["w3"] + p["b3"]


def mlp_loss(p, batch):
    x, y = batch
    return cross_entropy(mlp_apply(p, x), y)


def cnn_apply(p, x):
    import jax
    import jax.numpy as jnp

    h = x
    for i in (1, 2, 3):
        h = jax.lax.conv_general_dilated(
            h, p[f"c{i}"], (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN
        )
        h = jnp.tanh(h + p[f"cb{i}"])
    h = h.reshape(h.shape[0], -1)
    h = jnp.tanh(h @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


def cnn_loss(p, batch):
    x, y = batch
    return cross_entropy(cnn_apply(p, x), y)


def _glorot(rng, shape, fan_in, fan_out):
    return (rng.normal(size=shape) * np.sqrt(2.0 / (fan_in + fan_out))).astype(np.float32)


def mlp_setup(train_steps=300, seed=0):
    """Digits data and MLP weights (float32), briefly trained with Adam."""
    import jax
    import jax.numpy as jnp
    import optax

    from stability import load_digits

    x, y = load_digits()
    pixels = np.asarray(x, np.float64) * 16  # the integer pixels 0..16 (exact)
    x = (pixels - pixels.mean(0)) / (pixels.std(0) + 1e-6)
    x = jnp.asarray(x, jnp.float32)
    rng = np.random.default_rng(seed)
    p = {
        "w1": _glorot(rng, (64, 256), 64, 256),
        "b1": np.zeros(256, np.float32),
        "w2": _glorot(rng, (256, 256), 256, 256),
        "b2": np.zeros(256, np.float32),
        "w3": _glorot(rng, (256, 10), 256, 10),
        "b3": np.zeros(10, np.float32),
    }
    p = jax.tree_util.tree_map(jnp.asarray, p)
    opt = optax.adam(1e-3)

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(mlp_loss)(p, (x, y))
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    s = opt.init(p)
    for _ in range(train_steps):
        p, s = step(p, s, x, y)
    return p, (x, y)


def cnn_setup(n=2048, seed=0):
    """Synthetic CIFAR-shaped data (labels from a random linear teacher) and CNN
    weights (float32, Glorot init)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    teacher = rng.normal(size=(32 * 32 * 3, 10))
    y = np.argmax(x.reshape(n, -1) @ teacher, axis=1).astype(np.int32)
    p = {}
    chans = [3, 8, 16, 64]
    for i in (1, 2, 3):
        cin, cout = chans[i - 1], chans[i]
        p[f"c{i}"] = _glorot(rng, (3, 3, cin, cout), 9 * cin, 9 * cout)
        p[f"cb{i}"] = np.zeros(cout, np.float32)
    p["w1"] = _glorot(rng, (1024, 448), 1024, 448)
    p["b1"] = np.zeros(448, np.float32)
    p["w2"] = _glorot(rng, (448, 10), 448, 10)
    p["b2"] = np.zeros(10, np.float32)
    p = jax.tree_util.tree_map(jnp.asarray, p)
    return p, (jnp.asarray(x), jnp.asarray(y))


# ----------------------------------------------------------------------- torch


def torch_mlp(p):
    import torch

    m = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256), torch.nn.Tanh(),
        torch.nn.Linear(256, 10),
    )  # fmt: skip
    with torch.no_grad():
        for layer, i in zip((m[0], m[2], m[4]), (1, 2, 3), strict=True):
            layer.weight.copy_(torch.from_numpy(np.asarray(p[f"w{i}"]).T.copy()))
            layer.bias.copy_(torch.from_numpy(np.array(p[f"b{i}"])))
    return m.eval()


def torch_cnn(p):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.c3 = torch.nn.Conv2d(16, 64, 3, stride=2, padding=1)
            self.l1 = torch.nn.Linear(1024, 448)
            self.l2 = torch.nn.Linear(448, 10)

        def forward(self, x):  # x: NCHW
            h = torch.tanh(self.c1(x))
            h = torch.tanh(self.c2(h))
            h = torch.tanh(self.c3(h))
            h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)  # JAX's NHWC flatten order
            return self.l2(torch.tanh(self.l1(h)))

    m = Net()
    with torch.no_grad():
        for i in (1, 2, 3):
            conv = getattr(m, f"c{i}")
            conv.weight.copy_(torch.from_numpy(np.asarray(p[f"c{i}"]).transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(np.array(p[f"cb{i}"])))
        m.l1.weight.copy_(torch.from_numpy(np.asarray(p["w1"]).T.copy()))
        m.l1.bias.copy_(torch.from_numpy(np.array(p["b1"])))
        m.l2.weight.copy_(torch.from_numpy(np.asarray(p["w2"]).T.copy()))
        m.l2.bias.copy_(torch.from_numpy(np.array(p["b2"])))
    return m.eval()


def torch_data(batch, image=False):
    import torch

    x, y = batch
    x = np.array(x)
    if image:
        x = x.transpose(0, 3, 1, 2).copy()  # NHWC -> NCHW
    return torch.from_numpy(x), torch.from_numpy(np.asarray(y).astype(np.int64))
