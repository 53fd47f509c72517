"""Benchmarks: ``make bench`` measures rundock beside its baselines and writes BENCHMARKS.md."""
