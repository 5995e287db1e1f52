"""The gateway's answer cache: the rules (plain Python) and the store (Redis).

A task class is cacheable when its ``answer_cache_ttl_s`` > 0. For such a class a chat
completion that was answered ``ok`` — plain, or a stream that finished cleanly, put back
together as the plain answer (text, refusals, tool and function calls) — is kept for that
many seconds under the hash of its *normalised request* (:func:`cache_key`), and an
identical request within the TTL, plain or streamed, is answered from the cache (a stream
as the SSE events of the stored answer, its tool calls included) — still decided,
policy-checked and recorded like every call, its outcome recorded as a cache hit (no
tokens, cost 0, latency of the lookup, the spend it saved).

Never cached, unless the class allows it (``answer_cache_personal_data``): requests with
personal data — detected, declared (``personal`` / ``confidential`` / an unknown
classification) or where detection failed (``routing.pii.request_sensitive``).

The key covers everything that shapes the answer and who may see it: the team the call is
charged to (answers are never shared across teams), the task class, the routing-table version
(a new version starts a fresh cache) and the model when pinned, and the request body minus
what does not change the answer (``stream``, ``stream_options``, ``user``, ``metadata``),
with text NFC-normalised and trimmed and keys sorted.

Why Redis: the cache is shared by every gateway worker and process, expiry is Redis's own
(``SET … EX``, no purge job), a lookup is one round trip well under a millisecond, and its
memory is bounded by Redis's eviction policy. Nothing in it must survive a crash — a lost
entry costs one upstream call — so PostgreSQL's durability would only add write load to the
database the decision path depends on.
"""

from __future__ import annotations

import hashlib
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any

import orjson
import redis

__all__ = ["AnswerCache", "CachedAnswer", "cache_key", "cacheable"]

_IGNORED = frozenset({"stream", "stream_options", "user", "metadata"})
_PREFIX = "sy:answer:"


def cacheable(ttl_s: int, allow_personal: bool, is_sensitive: bool) -> bool:
    return ttl_s > 0 and (allow_personal or not is_sensitive)


def _normalised(value: Any) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value).strip()
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    return value


def cache_key(
    *, team: str, task_class: str, routing_version: int, pinned: str | None, body: dict[str, Any]
) -> str:
    """The normalised request's hash (``body``: the client's body, ``model`` removed)."""
    request = {k: _normalised(v) for k, v in body.items() if k not in _IGNORED}
    scope = [team, task_class, routing_version, pinned or ""]
    blob = orjson.dumps([scope, request], option=orjson.OPT_SORT_KEYS)
    return _PREFIX + hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    body: bytes  # the upstream's answer as it was sent to the first caller
    model: str  # the model that produced it
    tier: int
    cost_usd: str  # what producing it cost: the spend a hit saves


class AnswerCache:
    """Redis get/set with a short socket timeout: a cache that does not answer is a miss
    (logged by the caller), never an error for the client."""

    def __init__(self, url: str, timeout_s: float = 0.05) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    def _redis(self) -> redis.Redis:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = redis.Redis.from_url(
                        self._url,
                        socket_timeout=self._timeout_s,
                        socket_connect_timeout=self._timeout_s,
                        health_check_interval=30,
                    )
        return self._client

    def get(self, key: str) -> CachedAnswer | None:
        raw = self._redis().get(key)
        if not isinstance(raw, bytes):
            return None
        try:
            data = orjson.loads(raw)
            return CachedAnswer(
                body=data["body"].encode(),
                model=str(data["model"]),
                tier=int(data["tier"]),
                cost_usd=str(data["cost_usd"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None  # not ours or damaged: a miss (overwritten by the next answer)

    def put(self, key: str, answer: CachedAnswer, ttl_s: int) -> None:
        value = orjson.dumps(
            {
                "body": answer.body.decode(),
                "model": answer.model,
                "tier": answer.tier,
                "cost_usd": answer.cost_usd,
            }
        )
        self._redis().set(key, value, ex=ttl_s)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
