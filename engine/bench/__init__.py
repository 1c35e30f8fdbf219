"""Benchmarks: the engine beside a baseline in one run, as ratios (`symphony bench ...`)."""
