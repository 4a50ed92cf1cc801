"""Benchmarks behind docs/benchmarks.md (`make bench`, SPEC §10)."""
