"""Time-ordered decision ids (UUID version 7, RFC 9562).

The id carries its creation time in milliseconds, and a decision's ``created_at`` is set
from it: looking a decision up by id therefore also names its time partition.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime


def uuid7(unix_ms: int | None = None) -> uuid.UUID:
    ms = int(time.time() * 1000) if unix_ms is None else unix_ms
    rand = int.from_bytes(os.urandom(10), "big")
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
