"""The stability core: linear recurrences of delayed momentum methods, their companion
matrices, spectral radii, exact thresholds and tuning rules."""
