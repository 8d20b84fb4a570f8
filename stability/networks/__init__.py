"""Trained networks: Flax adapters, checkpoints and the bundled digits example."""
