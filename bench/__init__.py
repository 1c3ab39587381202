"""Benchmarks: `python -m bench [--quick]` (make bench). Prints one JSON object per scenario, then a table."""
