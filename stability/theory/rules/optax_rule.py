"""Any optax optimizer as the simulator's update rule: ``OptaxRule(optimizer)``.

The gradient that arrives at step t (computed at stale weights) goes to the
optimizer's own ``update`` with its live state, and the weights move by ``lr``
times the update it returns:

    updates, state = optimizer.update(g_{t-tau}, state, w_t)
    w_{t+1} = w_t + lr * updates

so ``lr=1`` applies the optimizer as it is (its learning rate is inside it); the
buffer of `stability.simulate_async` / `stability.train_async` is the optimizer's
state (``optimizer.init(w_0)``). Decoupled weight decay (``optax.adamw``) acts on
the current weights w_t, as in real training. With ``optax.sgd(lr, momentum=beta)``
and ``lr=1`` this is the heavy ball at that lr.

The rule has no characteristic polynomial (Adam's update is not linear in its
state): thresholds come from `stability.theory.rules.adam` with the optimizer's
frozen preconditioner, or `stability.linearize` for linear optimizers. It is not
registered by name: pass the object.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from stability.theory.rules.base import Rule


@dataclasses.dataclass(frozen=True)
class OptaxRule(Rule):
    """The simulator step of an optax ``GradientTransformation`` (a field, hashed by
    identity: keep the same optimizer object to reuse compiled programs)."""

    optimizer: Any = None

    def __post_init__(self):
        if not (hasattr(self.optimizer, "init") and hasattr(self.optimizer, "update")):
            raise TypeError(
                "optimizer must be an optax GradientTransformation (with init and update); "
                f"got {type(self.optimizer).__name__}"
            )

    def __str__(self) -> str:
        return "optax"

    def check_beta(self, beta, name: str = "beta") -> None:
        super().check_beta(beta, name)
        if isinstance(beta, (int, float)) and beta != 0:
            raise ValueError(
                f"{name} must be 0 for an optax optimizer (its momentum is inside it); got {beta!r}"
            )

    def polynomial(self, d, beta, xp=None):
        raise NotImplementedError(
            "an optax optimizer has no characteristic polynomial here: use "
            "stability.linearize (linear optimizers) or is_accessible(..., optimizer_state=) "
            "(Adam, AdamW, RMSprop)"
        )

    def init_buffer(self, w0):
        return self.optimizer.init(w0)

    def update(self, w, v, g, lr, beta):
        with jax.numpy_dtype_promotion("standard"):  # optax mixes its int count with floats
            updates, v = self.optimizer.update(g, v, w)
        w_new = jax.tree_util.tree_map(
            lambda wi, ui: wi + lr.astype(wi.dtype) * ui.astype(wi.dtype), w, updates
        )
        return w_new, v
