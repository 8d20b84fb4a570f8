"""stability: can asynchronous training with delay tau, learning rate lr and
momentum beta reach, and stay in, this minimum?

One public namespace, re-exported from small modules (one concept each). The
folders follow the data path (model -> loss -> Hessian-vector product -> Lanczos ->
spectrum -> threshold -> verdict):

- `theory/`, the stability core: `rules` (characteristic polynomials), `delays`
  (delay distributions), `companion` (companion matrix, spectral radius),
  `dominant_root` (certified spectral radius for fixed delays), `boundary_locus`
  (exact thresholds), `delay_locus` (thresholds and radii of delay distributions),
  `tuning` (lr for a new delay, momentum advice), `linearize` (optax optimizers as
  recurrences), `mean_square` (mini-batch noise: mean-square thresholds);
- `curvature/`, the Hessian spectrum engine: `hvp`, `lanczos`, `hessian_spectrum`,
  `tracking` (sharpness along training, warm-started), `nonuniformity` (per-example
  Hessian statistics), `backend` (which code path runs on which device);
- `networks/`, trained networks: `models` (Flax adapters), `checkpoints` (Orbax),
  `examples` (digits);
- on top: `accessibility` (the verdict), `simulate` (asynchronous SGD around a
  minimum), `training` (training from initialization under simulated asynchrony);
  `validation` (argument checks) and `compilation_cache` (opt-in: compiled programs
  kept on disk across processes) serve all of them;
- `app/`: `cli`, `demo`, `plotting`, `experiments`.
"""

from stability.accessibility import Accessibility, is_accessible, verdict_from_spectrum
from stability.app.plotting import plot_stability_region, plot_thresholds, plot_trajectories
from stability.compilation_cache import enable_compilation_cache
from stability.curvature import nonuniformity as nonuniformity
from stability.curvature.hessian_spectrum import HessianSpectrum, hessian_spectrum
from stability.curvature.nonuniformity import (
    DirectionalNonuniformity,
    NonuniformitySpectrum,
    WuMaESpectrum,
    directional_nonuniformity,
    nonuniformity_spectrum,
    wu_ma_e_spectrum,
)
from stability.curvature.tracking import SharpnessRecord, SharpnessTracker
from stability.networks.examples import load_digits, train_to_minimum
from stability.networks.models import loss_from_model, mean_squared_error
from stability.simulate import AsyncTrajectory, growth_rate, simulate_async, stationary_tilt
from stability.theory import mean_square as mean_square
from stability.theory.boundary_locus import (
    Threshold,
    dense_threshold,
    max_stable_lr,
    max_stable_sharpness,
    stability_threshold,
)
from stability.theory.companion import companion_matrix, spectral_radius
from stability.theory.delays import (
    DelayDistribution,
    delay_distribution,
    fixed_delay,
    random_order,
    round_robin,
)
from stability.theory.linearize import LinearizedOptimizer, linearize
from stability.theory.mean_square import (
    MeanSquareStability,
    MeanSquareThreshold,
    lr_for_delay_minibatch,
    max_stable_lr_minibatch,
    mean_square_stability,
    mean_square_threshold,
    noise_gain,
    second_moment_growth,
    variance_factor,
)
from stability.theory.rules import CharacteristicPolynomial, characteristic_polynomial
from stability.theory.tuning import (
    MomentumCandidate,
    MomentumRecommendation,
    lr_for_delay,
    recommend_momentum,
)
from stability.training import TrainingRun, batch_indices, train_async

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
    # mini-batch noise: mean-square stability and per-example Hessian statistics
    "variance_factor",
    "noise_gain",
    "mean_square_threshold",
    "MeanSquareThreshold",
    "second_moment_growth",
    "mean_square_stability",
    "MeanSquareStability",
    "max_stable_lr_minibatch",
    "lr_for_delay_minibatch",
    "directional_nonuniformity",
    "DirectionalNonuniformity",
    "nonuniformity_spectrum",
    "NonuniformitySpectrum",
    "wu_ma_e_spectrum",
    "WuMaESpectrum",
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
