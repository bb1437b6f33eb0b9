"""Helpers shared by tests and benchmarks: planted defects, a fake LLM server, run harnesses."""
