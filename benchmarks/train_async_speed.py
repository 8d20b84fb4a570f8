"""Seconds per `stability.train_async` run on the bundled digits (CPU).

The Flax `DigitsMLP` (64-32-10, 2410 parameters, cross-entropy through
`stability.loss_from_model`) trained from initialization on 1297 digits, batch 32
(40 steps per epoch), 100 epochs = 4000 steps, evaluated on the other 500 after
every epoch (one compiled scan per epoch). Each configuration runs twice in one
process: the first call includes compilation, the second is warm. Prints one
line per configuration and the machine's load average.

    python benchmarks/train_async_speed.py
"""

import os
import time

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import stability as st  # noqa: E402
from stability.networks.examples import DigitsMLP  # noqa: E402
from stability.networks.models import cross_entropy  # noqa: E402


def main():
    x, y = st.load_digits()
    train, test = (x[:1297], y[:1297]), (x[1297:], y[1297:])
    model = DigitsMLP(hidden=32, param_dtype=jnp.float64)
    variables = model.init(jax.random.key(0), train[0][:1])
    loss, params = st.loss_from_model(model, variables, loss=cross_entropy)

    def metrics(p, batch):
        logits = model.apply(p, batch[0])
        hits = jnp.argmax(logits, -1).astype(batch[1].dtype) == batch[1]
        return {"loss": cross_entropy(logits, batch[1]), "accuracy": jnp.mean(hits)}

    configs = [
        ("tau=0", dict(tau=0)),
        ("N=17 round robin", dict(num_workers=17)),
        (
            "N=17 random order, shifted 0.9",
            dict(num_workers=17, schedule="random", beta=0.9, momentum="shifted"),
        ),
    ]
    print(f"load average before: {os.getloadavg()}")
    for label, kw in configs:
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            run = st.train_async(
                loss,
                params,
                train,
                lr=0.3 if "tau=0" in label else 0.02,
                batch_size=32,
                epochs=100,
                eval_data=test,
                eval_fn=metrics,
                **kw,
            )
            times.append(time.perf_counter() - t0)
        steps = len(run.batch_loss)
        print(
            f"{label:34s} {steps} steps: first call {times[0]:.2f} s (with compilation), "
            f"warm {times[1]:.2f} s ({1e6 * times[1] / steps:.0f} us/step); "
            f"test accuracy {run.eval['accuracy'][-1]:.3f}"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
