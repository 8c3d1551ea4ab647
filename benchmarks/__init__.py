"""Benchmarks; loadgen and canaries are shared with the end-to-end tests."""
