"""simulate_async and train_async with a sharpness tracker: a run that diverges
keeps its record, and the record ends at the final weights (issue 21, items 6
and 20).

Oracles: the untracked run (the same steps, compiled in one scan), and the
quadratic's Hessian diag(a), whose top eigenvalue max(a) every check must find.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from stability import SharpnessTracker
from stability.simulate import simulate_async
from stability.training import train_async

A = jnp.asarray([1.0, 3.0])  # curvatures: the Hessian is diag(A), top eigenvalue 3


def quadratic(w):
    """0.5 * sum_i A_i w_i^2."""
    return 0.5 * jnp.sum(A * jnp.square(w["w"]))


def quadratic_batch(w, batch):
    """`quadratic` as a loss(params, batch); the batch only scales it by 1."""
    return quadratic(w) * jnp.mean(batch)


W0 = {"w": jnp.asarray([1.0, 1.0])}


def test_simulate_with_a_tracker_keeps_a_diverged_run():
    # lr 1, tau 2: the stable limit 2 sin(pi / 10) = 0.618 is far below the
    # curvature 3, so the loss overflows within the run (after about 300 steps).
    kw = dict(lr=1.0, tau=2, steps=1000)
    plain = simulate_async(quadratic, W0, **kw)
    assert plain.diverged and not np.isfinite(plain.loss[-1])
    tracker = SharpnessTracker(quadratic, None, lr=1.0, tau=2, every=50, tol=1e-8)
    tracked = simulate_async(quadratic, W0, tracker=tracker, **kw)  # raised before
    assert tracked.diverged
    np.testing.assert_array_equal(tracked.step, plain.step)
    np.testing.assert_array_equal(tracked.delays, plain.delays)
    finite = np.isfinite(np.asarray(plain.loss))
    np.testing.assert_array_equal(np.isfinite(np.asarray(tracked.loss)), finite)
    np.testing.assert_allclose(tracked.loss[finite], plain.loss[finite], rtol=1e-13)
    # checks at every chunk end while the loss is finite, none after
    steps = tracker.history["step"]
    first_bad = int(plain.step[~finite][0])
    assert steps == list(range(0, first_bad, 50))[: len(steps)]
    assert steps[-1] + 50 >= first_bad
    np.testing.assert_allclose(tracker.history["sharpness"], 3.0, rtol=1e-7)


def test_simulate_with_a_tracker_checks_the_last_step():
    tracker = SharpnessTracker(quadratic, None, lr=0.1, tau=1, every=5, tol=1e-8)
    run = simulate_async(quadratic, W0, lr=0.1, tau=1, steps=23, tracker=tracker)
    assert not run.diverged
    assert tracker.history["step"] == [0, 5, 10, 15, 20, 23]
    np.testing.assert_allclose(tracker.history["sharpness"], 3.0, rtol=1e-7)


def least_squares(w, batch):
    """0.5 * mean over examples of (x . w - y)^2: the Hessian is x^T x / n everywhere."""
    x, y = batch
    return 0.5 * jnp.mean(jnp.square(x @ w["w"] - y))


def test_train_async_with_a_tracker_checks_the_last_step():
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(32, 12))), jnp.asarray(rng.normal(size=32))
    top = np.linalg.eigvalsh(np.asarray(x).T @ np.asarray(x) / 32)[-1]
    w0 = {"w": jnp.zeros(12)}
    tracker = SharpnessTracker(least_squares, (x, y), lr=0.1, tau=1, every=5, tol=1e-8)
    run = train_async(
        least_squares, w0, (x, y), lr=0.1, tau=1, batch_size=None, epochs=13, tracker=tracker
    )
    assert list(run.step) == [0, 5, 10, 13]
    assert run.sharpness["step"] == [0, 5, 10, 13]  # [0, 5, 10] before: no check at the end
    np.testing.assert_allclose(run.sharpness["sharpness"], top, rtol=1e-7)


def test_a_plain_callable_tracker_is_still_called_at_every_chunk_end():
    """A tracker without a ``check`` method decides for itself at the last step."""

    class Recorder:
        every = 5

        def __init__(self):
            self.steps = []

        def __call__(self, params, step):
            self.steps.append(step)

    tracker = Recorder()
    simulate_async(quadratic, W0, lr=0.1, tau=1, steps=12, tracker=tracker)
    assert tracker.steps == [0, 5, 10, 12]


def test_training_run_repr_is_one_short_line():
    data = jnp.ones((4, 1))
    big = {"w": jnp.zeros(2), "unused": jnp.arange(5000.0)}

    def loss(w, batch):
        return quadratic(w) * jnp.mean(batch) + 0.0 * jnp.sum(w["unused"])

    run = train_async(loss, big, data, lr=0.1, tau=0, batch_size=None, epochs=3)
    text = repr(run)
    assert text.startswith("TrainingRun(") and "\n" not in text
    assert len(text) < 300, text  # printed every parameter value before
    assert "5002 values" in text and "diverged=False" in text


def test_train_async_draws_no_bar_when_stderr_is_not_a_terminal(capsys):
    """Redirected (pytest's capture is not a TTY), progress=True writes nothing:
    a log file would get every carriage-return redraw of the bar."""
    data = jnp.ones((4, 1))
    train_async(quadratic_batch, W0, data, lr=0.1, tau=0, batch_size=None, epochs=3, progress=True)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("progress", [True, False])
def test_experiment_bars_are_off_when_stderr_is_not_a_terminal(capsys, progress):
    from stability.app.experiments import _bar

    bar = _bar(3, progress, "runs")
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert capsys.readouterr().err == ""
