"""Stable identifiers: hashes of what a row is, never row numbers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

_SEP = "\x1f"


def stable_id(prefix: str, *parts: object) -> str:
    """Return ``<prefix>_<16 hex>`` from a BLAKE2b hash of the parts.

    The same parts give the same id in every run and on every machine, so re-ingesting a
    source or adding a batch never renumbers existing rows.
    """
    digest = hashlib.blake2b(
        _SEP.join(str(p) for p in parts).encode("utf-8"), digest_size=8
    ).hexdigest()
    return f"{prefix}_{digest}"


def text_hash(text: str) -> str:
    """Hash of a text, used as a cache key for embeddings and as an exact-duplicate key."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def stable_ids(prefix: str, first: str, values: Iterable[object]) -> list[str]:
    """``stable_id(prefix, first, v)`` for many values, hashing the shared part once."""
    base = hashlib.blake2b(f"{first}{_SEP}".encode(), digest_size=8)
    head = f"{prefix}_"

    def one(value: object) -> str:
        h = base.copy()
        h.update(str(value).encode())
        return head + h.hexdigest()

    return list(map(one, values))
