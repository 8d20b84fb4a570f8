"""stability: can asynchronous training with delay tau, learning rate lr and
momentum beta reach, and stay in, this minimum?

One public namespace, re-exported from small modules (one concept each).
"""

__version__ = "0.1.0"

# --- stability core (rules, delays, companion matrices, thresholds, tuning) ---
# (names are added here by the modules that define them)

# --- Hessian spectrum engine ---

# --- trained networks: verdicts and simulation ---
