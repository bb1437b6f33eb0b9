"""OpenAI-compatible LLM access for self-instruct and verification, split by concern.

Modules: ``settings`` (settings, budgets, request and result records, the request hash),
``cache`` (``llm__cache``), ``pacing`` (failure causes, backoff, adaptive concurrency, run
stats, the progress line) and ``client`` (``run_requests`` and its synchronous wrapper).
"""
