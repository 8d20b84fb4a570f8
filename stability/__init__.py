"""stability: can asynchronous training with delay tau, learning rate lr and
momentum beta reach, and stay in, this minimum?

One public namespace, re-exported from small modules (one concept each).
"""

__version__ = "0.1.0"

# --- stability core (rules, delays, companion matrices, thresholds, tuning) ---
# (names are added here by the modules that define them)
from stability.boundary_locus import (  # noqa: E402
    Threshold,
    dense_threshold,
    max_stable_lr,
    max_stable_sharpness,
    stability_threshold,
)
from stability.companion import companion_matrix, spectral_radius  # noqa: E402
from stability.delays import (  # noqa: E402
    DelayDistribution,
    delay_distribution,
    fixed_delay,
    random_order,
    round_robin,
)
from stability.rules import CharacteristicPolynomial, characteristic_polynomial  # noqa: E402
from stability.tuning import (  # noqa: E402
    MomentumCandidate,
    MomentumRecommendation,
    lr_for_delay,
    recommend_momentum,
)
from stability.linearize import LinearizedOptimizer, linearize  # noqa: E402

# --- Hessian spectrum engine ---
from .hessian_spectrum import HessianSpectrum, hessian_spectrum  # noqa: E402,F401

# --- trained networks: verdicts and simulation ---
from stability.accessibility import (  # noqa: E402
    Accessibility,
    is_accessible,
    verdict_from_spectrum,
)
from stability.plotting import (  # noqa: E402
    plot_stability_region,
    plot_thresholds,
    plot_trajectories,
)
from stability.simulate import (  # noqa: E402
    AsyncTrajectory,
    growth_rate,
    simulate_async,
    stationary_tilt,
)
from stability.models import loss_from_model, mean_squared_error  # noqa: E402
from stability.examples import load_digits, train_to_minimum  # noqa: E402
