"""Benchmarks: each suite measures a goal beside a baseline taken in the same run."""
