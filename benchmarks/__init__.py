"""Benchmarks of bpo-integrations: ``python -m benchmarks`` writes ``BENCHMARKS.md``."""
