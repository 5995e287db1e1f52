"""Time-ordered decision ids (UUID version 7, RFC 9562).

The id carries its creation time in milliseconds, and a decision's ``created_at`` is set
from it: looking a decision up by id therefore also names its time partition.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime

_RANDOM_CHUNK = 80 * 64  # bytes: 64 ids' random bits per os.urandom call
_random = threading.local()


def _random80() -> int:
    """80 bits from os.urandom, read in chunks per thread: one system call per 64 ids
    instead of one per id (each call also gives up the GIL and waits to take it back,
    which a busy server pays for on every decision)."""
    state = _random.__dict__
    chunk: bytes | None = state.get("chunk")
    at: int = state.get("at", _RANDOM_CHUNK)
    if chunk is None or at >= _RANDOM_CHUNK:
        chunk, at = os.urandom(_RANDOM_CHUNK), 0
        state["chunk"] = chunk
    state["at"] = at + 10
    return int.from_bytes(chunk[at : at + 10], "big")


if hasattr(os, "register_at_fork"):  # a forked worker must not reuse its parent's bytes
    os.register_at_fork(after_in_child=lambda: _random.__dict__.clear())


def uuid7(unix_ms: int | None = None) -> uuid.UUID:
    ms = int(time.time() * 1000) if unix_ms is None else unix_ms
    rand = _random80()
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= (rand >> 68) << 64 & (0xFFF << 64)  # rand_a: 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b: 62 bits
    return uuid.UUID(int=value)


def uuid7_ms(value: uuid.UUID) -> int:
    return value.int >> 80


def uuid7_time(value: uuid.UUID) -> datetime:
    return datetime.fromtimestamp(uuid7_ms(value) / 1000, tz=UTC)


def is_uuid7(value: uuid.UUID) -> bool:
    return value.version == 7
