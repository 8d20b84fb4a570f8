"""stability: can asynchronous training with delay tau, learning rate lr and
momentum beta reach, and stay in, this minimum?

One public namespace, re-exported from small modules (one concept each):

- stability core: `rules` (characteristic polynomials), `delays` (delay
  distributions), `companion` (companion matrix, spectral radius),
  `boundary_locus` (exact thresholds), `tuning` (lr for a new delay, momentum
  advice), `linearize` (optax optimizers as recurrences), `mean_square`
  (mini-batch noise: mean-square thresholds);
- Hessian spectrum engine: `hvp`, `lanczos`, `hessian_spectrum`, `tracking`
  (sharpness along training, warm-started), `compilation_cache` (opt-in: compiled
  programs kept on disk across processes), `nonuniformity` (per-example Hessian
  statistics);
- trained networks: `models` (Flax adapters), `accessibility` (the verdict),
  `simulate` (asynchronous SGD), `training` (training from initialization under
  simulated asynchrony), `examples` (digits), `plotting`.
"""

# Mini-batch noise (issue 13) as modules (st.mean_square.max_stable_lr_minibatch, ...):
# their names join __all__ with their docs/api entries (tests/test_docs_build.py).
from stability import mean_square as mean_square
from stability import nonuniformity as nonuniformity
from stability.accessibility import Accessibility, is_accessible, verdict_from_spectrum
from stability.boundary_locus import (
    Threshold,
    dense_threshold,
    max_stable_lr,
    max_stable_sharpness,
    stability_threshold,
)
from stability.companion import companion_matrix, spectral_radius
from stability.compilation_cache import enable_compilation_cache
from stability.delays import (
    DelayDistribution,
    delay_distribution,
    fixed_delay,
    random_order,
    round_robin,
)
from stability.examples import load_digits, train_to_minimum
from stability.hessian_spectrum import HessianSpectrum, hessian_spectrum
from stability.linearize import LinearizedOptimizer, linearize
from stability.models import loss_from_model, mean_squared_error
from stability.plotting import plot_stability_region, plot_thresholds, plot_trajectories
from stability.rules import CharacteristicPolynomial, characteristic_polynomial
from stability.simulate import AsyncTrajectory, growth_rate, simulate_async, stationary_tilt
from stability.tracking import SharpnessRecord, SharpnessTracker
from stability.training import TrainingRun, batch_indices, train_async
from stability.tuning import (
    MomentumCandidate,
    MomentumRecommendation,
    lr_for_delay,
    recommend_momentum,
)

__version__ = "0.1.0"

__all__ = [
    # stability core
    "CharacteristicPolynomial",
    "characteristic_polynomial",
    "DelayDistribution",
    "delay_distribution",
    "fixed_delay",
    "random_order",
    "round_robin",
    "companion_matrix",
    "spectral_radius",
    "Threshold",
    "stability_threshold",
    "dense_threshold",
    "max_stable_sharpness",
    "max_stable_lr",
    "lr_for_delay",
    "recommend_momentum",
    "MomentumRecommendation",
    "MomentumCandidate",
    "linearize",
    "LinearizedOptimizer",
    # Hessian spectrum engine
    "hessian_spectrum",
    "HessianSpectrum",
    "enable_compilation_cache",
    "SharpnessTracker",
    "SharpnessRecord",
    # trained networks
    "is_accessible",
    "verdict_from_spectrum",
    "Accessibility",
    "loss_from_model",
    "mean_squared_error",
    "simulate_async",
    "AsyncTrajectory",
    "growth_rate",
    "stationary_tilt",
    "train_async",
    "TrainingRun",
    "batch_indices",
    "load_digits",
    "train_to_minimum",
    "plot_stability_region",
    "plot_thresholds",
    "plot_trajectories",
]
