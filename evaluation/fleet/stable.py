"""Stable hashing: draws that are the same in every process and on every machine."""

from __future__ import annotations

import hashlib

__all__ = ["stable_int", "stable_unit"]


def stable_int(*parts: str) -> int:
    """A 64-bit integer derived from ``parts`` with blake2b (stable across processes)."""
    h = hashlib.blake2b(digest_size=8, person=b"swyd-fleet")
    for part in parts:
        encoded = part.encode("utf-8", "surrogatepass")
        h.update(len(encoded).to_bytes(8, "big"))
        h.update(encoded)
    return int.from_bytes(h.digest(), "big")


def stable_unit(*parts: str) -> float:
    """A float uniformly distributed in ``[0, 1)`` derived from ``parts``."""
    return (stable_int(*parts) >> 11) / float(1 << 53)
