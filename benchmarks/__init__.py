"""Benchmarks and measurement scripts; not part of the installed package (run from the repository root)."""
