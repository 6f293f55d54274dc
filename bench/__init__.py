"""Benchmarks: scripts run as `python -m bench.<name>` that print a table and a final ratio line."""
