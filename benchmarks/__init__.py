"""Benchmarks of stability against its peers and its targets; run all with
``python -m benchmarks`` (see benchmarks/README.md)."""
