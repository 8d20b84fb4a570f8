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
  recurrences), `mean_square` (mini-batch noise: mean-square thresholds),
  `local_sgd` (local SGD / DiLoCo outer loops);
- `curvature/`, the Hessian spectrum engine: `hvp`, `lanczos`, `hessian_spectrum`,
  `tracking` (sharpness along training, warm-started), `nonuniformity` (per-example
  Hessian statistics), `backend` (which code path runs on which device);
- `networks/`, trained networks: `models` (Flax adapters), `checkpoints` (Orbax),
  `examples` (digits);
- on top: `accessibility` (the verdict), `simulate` (asynchronous SGD around a
  minimum), `training` (training from initialization under simulated asynchrony),
  `local_sgd_training` (local SGD / DiLoCo simulated on a network);
  `validation` (argument checks) and `compilation_cache` (opt-in: compiled programs
  kept on disk across processes) serve all of them;
- `app/`: `cli`, `demo`, `plotting`, `experiments`.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the re-exports as plain imports, for type checkers and doc tools
    from stability.accessibility import (
        Accessibility,
        AdaptiveAccessibility,
        LocalSGDAccessibility,
        MinibatchAccessibility,
        is_accessible,
        verdict_from_spectrum,
    )
    from stability.app.plotting import plot_stability_region, plot_thresholds, plot_trajectories
    from stability.compilation_cache import enable_compilation_cache
    from stability.curvature import nonuniformity as nonuniformity
    from stability.curvature.block_spectrum import (
        BlockDelayMaxLR,
        BlockDelayRadius,
        block_delay_max_lr,
        block_delay_radius,
    )
    from stability.curvature.blocks import BlockDelays, Stages, block_delays
    from stability.curvature.hessian_spectrum import HessianSpectrum, hessian_spectrum
    from stability.curvature.nonuniformity import (
        DirectionalNonuniformity,
        NonuniformitySpectrum,
        WuMaESpectrum,
        directional_nonuniformity,
        nonuniformity_spectrum,
        wu_ma_e_spectrum,
    )
    from stability.curvature.preconditioner import (
        Preconditioner,
        preconditioner_from_optax,
        weight_space_direction,
    )
    from stability.curvature.tracking import SharpnessRecord, SharpnessTracker
    from stability.delayed_optax import OptaxTrajectory, frozen_adam, simulate_optax
    from stability.local_sgd_training import DiLoCoTrajectory, shard_data, simulate_diloco
    from stability.networks.examples import load_digits, train_to_minimum
    from stability.networks.models import loss_from_model, mean_squared_error
    from stability.report import PipelineAccessibility
    from stability.simulate import AsyncTrajectory, growth_rate, simulate_async, stationary_tilt
    from stability.theory import mean_square as mean_square
    from stability.theory.block_delays import (
        BlockPolynomial,
        BlockThreshold,
        block_companion_matrix,
        block_curvatures,
        block_max_stable_lr,
        block_polynomial,
        block_spectral_radius,
        block_threshold,
    )
    from stability.theory.boundary_locus import (
        Threshold,
        dense_threshold,
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
    from stability.theory.hyperparameters import (  # noqa: F401 (lazy, not in __all__)
        Hyperparameters,
        check_hyperparameters,
    )
    from stability.theory.linearize import LinearizedOptimizer, linearize
    from stability.theory.local_sgd import (
        LocalSGD,
        OuterStabilityRegion,
        max_stable_outer_lr,
        outer_delay,
        outer_polynomial,
        outer_stability_region,
        pseudo_gradient_factor,
        round_spectral_radius,
    )
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
    from stability.theory.pipeline import pipeline_delays
    from stability.theory.rules import (  # noqa: F401 (the rule classes: lazy, not in __all__)
        GD,
        CharacteristicPolynomial,
        HeavyBall,
        Nesterov,
        Rule,
        Shifted,
        as_rule,
        characteristic_polynomial,
    )
    from stability.theory.rules.optax_rule import OptaxRule  # noqa: F401 (lazy, not in __all__)
    from stability.theory.tuning import (
        MomentumCandidate,
        MomentumRecommendation,
        lr_for_delay,
        max_stable_lr,
        recommend_momentum,
    )
    from stability.training import TrainingRun, batch_indices, train_async

# Public name -> the module that defines it. Imported on first use (PEP 562), so that
# `import stability` and the command line's `stability --help` cost no JAX import until
# a name is used.
_EXPORTS = {
    "PipelineAccessibility": "stability.report",
    "pipeline_delays": "stability.theory.pipeline",
    "Stages": "stability.curvature.blocks",
    "BlockDelays": "stability.curvature.blocks",
    "block_delays": "stability.curvature.blocks",
    "block_polynomial": "stability.theory.block_delays",
    "BlockPolynomial": "stability.theory.block_delays",
    "block_curvatures": "stability.theory.block_delays",
    "block_companion_matrix": "stability.theory.block_delays",
    "block_spectral_radius": "stability.theory.block_delays",
    "block_threshold": "stability.theory.block_delays",
    "BlockThreshold": "stability.theory.block_delays",
    "block_max_stable_lr": "stability.theory.block_delays",
    "block_delay_radius": "stability.curvature.block_spectrum",
    "BlockDelayRadius": "stability.curvature.block_spectrum",
    "block_delay_max_lr": "stability.curvature.block_spectrum",
    "BlockDelayMaxLR": "stability.curvature.block_spectrum",
    "Accessibility": "stability.accessibility",
    "AdaptiveAccessibility": "stability.accessibility",
    "LocalSGDAccessibility": "stability.accessibility",
    "MinibatchAccessibility": "stability.accessibility",
    "is_accessible": "stability.accessibility",
    "verdict_from_spectrum": "stability.accessibility",
    "plot_stability_region": "stability.app.plotting",
    "plot_thresholds": "stability.app.plotting",
    "plot_trajectories": "stability.app.plotting",
    "enable_compilation_cache": "stability.compilation_cache",
    "HessianSpectrum": "stability.curvature.hessian_spectrum",
    "hessian_spectrum": "stability.curvature.hessian_spectrum",
    "DirectionalNonuniformity": "stability.curvature.nonuniformity",
    "NonuniformitySpectrum": "stability.curvature.nonuniformity",
    "WuMaESpectrum": "stability.curvature.nonuniformity",
    "directional_nonuniformity": "stability.curvature.nonuniformity",
    "nonuniformity_spectrum": "stability.curvature.nonuniformity",
    "wu_ma_e_spectrum": "stability.curvature.nonuniformity",
    "Preconditioner": "stability.curvature.preconditioner",
    "preconditioner_from_optax": "stability.curvature.preconditioner",
    "weight_space_direction": "stability.curvature.preconditioner",
    "SharpnessRecord": "stability.curvature.tracking",
    "SharpnessTracker": "stability.curvature.tracking",
    "load_digits": "stability.networks.examples",
    "train_to_minimum": "stability.networks.examples",
    "loss_from_model": "stability.networks.models",
    "mean_squared_error": "stability.networks.models",
    "OptaxTrajectory": "stability.delayed_optax",
    "frozen_adam": "stability.delayed_optax",
    "simulate_optax": "stability.delayed_optax",
    "DiLoCoTrajectory": "stability.local_sgd_training",
    "shard_data": "stability.local_sgd_training",
    "simulate_diloco": "stability.local_sgd_training",
    "AsyncTrajectory": "stability.simulate",
    "growth_rate": "stability.simulate",
    "simulate_async": "stability.simulate",
    "stationary_tilt": "stability.simulate",
    "Threshold": "stability.theory.boundary_locus",
    "dense_threshold": "stability.theory.boundary_locus",
    "max_stable_sharpness": "stability.theory.boundary_locus",
    "stability_threshold": "stability.theory.boundary_locus",
    "companion_matrix": "stability.theory.companion",
    "spectral_radius": "stability.theory.companion",
    "DelayDistribution": "stability.theory.delays",
    "delay_distribution": "stability.theory.delays",
    "fixed_delay": "stability.theory.delays",
    "random_order": "stability.theory.delays",
    "round_robin": "stability.theory.delays",
    "LinearizedOptimizer": "stability.theory.linearize",
    "LocalSGD": "stability.theory.local_sgd",
    "OuterStabilityRegion": "stability.theory.local_sgd",
    "max_stable_outer_lr": "stability.theory.local_sgd",
    "outer_delay": "stability.theory.local_sgd",
    "outer_polynomial": "stability.theory.local_sgd",
    "outer_stability_region": "stability.theory.local_sgd",
    "pseudo_gradient_factor": "stability.theory.local_sgd",
    "round_spectral_radius": "stability.theory.local_sgd",
    "linearize": "stability.theory.linearize",
    "MeanSquareStability": "stability.theory.mean_square",
    "MeanSquareThreshold": "stability.theory.mean_square",
    "lr_for_delay_minibatch": "stability.theory.mean_square",
    "max_stable_lr_minibatch": "stability.theory.mean_square",
    "mean_square_stability": "stability.theory.mean_square",
    "mean_square_threshold": "stability.theory.mean_square",
    "noise_gain": "stability.theory.mean_square",
    "second_moment_growth": "stability.theory.mean_square",
    "variance_factor": "stability.theory.mean_square",
    "CharacteristicPolynomial": "stability.theory.rules",
    "Hyperparameters": "stability.theory.hyperparameters",
    "check_hyperparameters": "stability.theory.hyperparameters",
    "GD": "stability.theory.rules",
    "HeavyBall": "stability.theory.rules",
    "OptaxRule": "stability.theory.rules.optax_rule",
    "Nesterov": "stability.theory.rules",
    "Rule": "stability.theory.rules",
    "Shifted": "stability.theory.rules",
    "as_rule": "stability.theory.rules",
    "characteristic_polynomial": "stability.theory.rules",
    "MomentumCandidate": "stability.theory.tuning",
    "MomentumRecommendation": "stability.theory.tuning",
    "lr_for_delay": "stability.theory.tuning",
    "max_stable_lr": "stability.theory.tuning",
    "recommend_momentum": "stability.theory.tuning",
    "TrainingRun": "stability.training",
    "batch_indices": "stability.training",
    "train_async": "stability.training",
}


# Submodules re-exported as names.
_SUBMODULES = {
    "nonuniformity": "stability.curvature.nonuniformity",
    "mean_square": "stability.theory.mean_square",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'stability' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))


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
    # local SGD / DiLoCo outer loops
    "LocalSGD",
    "pseudo_gradient_factor",
    "outer_delay",
    "outer_polynomial",
    "round_spectral_radius",
    "max_stable_outer_lr",
    "outer_stability_region",
    "OuterStabilityRegion",
    # pipelines: a delay per block of parameters
    "pipeline_delays",
    "Stages",
    "BlockDelays",
    "block_delays",
    "block_polynomial",
    "BlockPolynomial",
    "block_curvatures",
    "block_companion_matrix",
    "block_spectral_radius",
    "block_threshold",
    "BlockThreshold",
    "block_max_stable_lr",
    "block_delay_radius",
    "BlockDelayRadius",
    "block_delay_max_lr",
    "BlockDelayMaxLR",
    "PipelineAccessibility",
    # Hessian spectrum engine
    "hessian_spectrum",
    "HessianSpectrum",
    "enable_compilation_cache",
    "SharpnessTracker",
    "SharpnessRecord",
    "Preconditioner",
    "preconditioner_from_optax",
    "weight_space_direction",
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
    "AdaptiveAccessibility",
    "LocalSGDAccessibility",
    "MinibatchAccessibility",
    "loss_from_model",
    "mean_squared_error",
    "simulate_async",
    "AsyncTrajectory",
    "growth_rate",
    "stationary_tilt",
    "simulate_optax",
    "OptaxTrajectory",
    "frozen_adam",
    "simulate_diloco",
    "DiLoCoTrajectory",
    "shard_data",
    "train_async",
    "TrainingRun",
    "batch_indices",
    "load_digits",
    "train_to_minimum",
    "plot_stability_region",
    "plot_thresholds",
    "plot_trajectories",
]
