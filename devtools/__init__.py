"""Development helpers for tests, the demo and benchmarks (not installed with the product)."""
