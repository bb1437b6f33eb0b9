"""Distributed mode: the heavy per-row work of the stages as Ray tasks (needs the `[ray]` extra)."""
