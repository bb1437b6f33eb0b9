"""Scored stage (quality control): per-conversation metrics, embeddings and near-duplicates."""
