"""Tests of core/scored: per-row metrics, figures, embeddings, near duplicates, scoring."""
