"""The user-facing application: command line, demo, plots and experiments."""
