"""The circuit breakers of this process (routing/circuits.py), shared through Redis.

- The gateway asks ``allow(slug)`` before each upstream attempt and reports ``success`` or
  ``failure`` after it. A transition is written at once to the Redis hash
  ``sy:circuit:<slug>`` (state, until, reason, when) and shown to this process's engine.
- Every process (gateway and web workers alike) reads those hashes with the registry
  refresh, every ``SWITCHYARD_SNAPSHOT_CHECK_S``: a newer transition made elsewhere is
  adopted, so a circuit another worker opened is routed around here within half a second,
  and the decision API routes around it too.
- The engine sees open circuits through the registry snapshot (``ModelInfo.circuit_open``,
  ``RegistryCache.circuits_set``); a half-open circuit is routable again, and the gateway
  lets one probe at a time through to it.
- ``switchyard_model_circuit_state{model}`` (0 closed, 1 half-open, 2 open) on /metrics;
  the model page reads the shared state (``circuit_view``).

Redis being unreachable never fails a call: the process keeps its own breakers and logs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings

from routing import metrics
from routing.circuits import Circuit, CircuitPolicy, State

__all__ = ["CircuitView", "board", "circuit_view"]

logger = logging.getLogger(__name__)

_PREFIX = "sy:circuit:"
_KEEP_S = 7 * 86400  # a hash nobody touched for a week is forgotten
_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}


def _policy() -> CircuitPolicy:
    return CircuitPolicy(
        failures=int(settings.SWITCHYARD_CIRCUIT_FAILURES),
        cooldown_s=float(settings.SWITCHYARD_CIRCUIT_COOLDOWN_S),
        probe_timeout_s=float(settings.SWITCHYARD_CIRCUIT_PROBE_TIMEOUT_S),
    )


def _redis() -> redis.Redis:
    return redis.Redis.from_url(
        settings.SWITCHYARD_ANSWER_CACHE_URL, socket_timeout=0.2, socket_connect_timeout=0.2
    )


@dataclass(frozen=True, slots=True)
class CircuitView:
    model: str
    state: State
    reason: str
    opened_at: float
    until: float


class CircuitBoard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._circuits: dict[str, Circuit] = {}
        self._client: redis.Redis | None = None

    def _circuit(self, slug: str) -> Circuit:
        circuit = self._circuits.get(slug)
        if circuit is None:
            circuit = self._circuits[slug] = Circuit(_policy())
        return circuit

    def _store(self) -> redis.Redis:
        if self._client is None:
            self._client = _redis()
        return self._client

    # -- the gateway's calls -------------------------------------------------------------------

    def allow(self, slug: str) -> bool:
        now = time.time()
        with self._lock:
            circuit = self._circuit(slug)
            before = circuit.state
            allowed = circuit.allow(now)
            moved = circuit.state != before
        if moved:
            self._publish(slug, circuit)
        return allowed

    def success(self, slug: str) -> None:
        with self._lock:
            circuit = self._circuit(slug)
            moved = circuit.success(time.time())
        if moved:
            logger.info("circuit of %s closed", slug)
            self._publish(slug, circuit)

    def failure(self, slug: str, reason: str) -> None:
        with self._lock:
            circuit = self._circuit(slug)
            moved = circuit.failure(time.time(), reason)
        if moved:
            logger.warning("circuit of %s opened: %s", slug, reason)
            metrics.CIRCUIT_OPENED.labels(slug).inc()
            self._publish(slug, circuit)

    # -- sharing ---------------------------------------------------------------------------------

    def _publish(self, slug: str, circuit: Circuit) -> None:
        """Write a transition for the other processes, then show it to this one's engine."""
        mapping: dict[Any, Any] = {
            "state": circuit.state,
            "until": circuit.until,
            "opened_at": circuit.opened_at,
            "reason": circuit.reason[:200],
            "changed_at": circuit.changed_at,
        }
        try:
            store = self._store()
            pipe = store.pipeline(transaction=False)
            pipe.hset(_PREFIX + slug, mapping=mapping)
            pipe.expire(_PREFIX + slug, _KEEP_S)
            pipe.execute()
        except redis.RedisError:
            logger.warning("circuit of %s not shared (Redis unavailable)", slug, exc_info=True)
        self.show()

    def sync(self) -> None:
        """Adopt transitions other processes made since ours (the registry refresh calls
        this), then show the open circuits to the engine."""
        try:
            store = self._store()
            keys = list(store.scan_iter(_PREFIX + "*", count=500))
            pipe = store.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            shared = pipe.execute()
        except redis.RedisError:
            logger.warning("circuits not synchronised (Redis unavailable)", exc_info=True)
            shared = []
            keys = []
        with self._lock:
            for key, fields in zip(keys, shared, strict=True):
                view = _view(key, fields)
                if view is None:
                    continue
                circuit = self._circuit(view.model)
                changed_at = float(fields.get(b"changed_at", 0) or 0)
                if changed_at > circuit.changed_at:
                    circuit.state = "half_open" if view.state == "half_open" else view.state
                    circuit.until = view.until
                    circuit.opened_at = view.opened_at
                    circuit.reason = view.reason
                    circuit.changed_at = changed_at
                    circuit.failures = 0
        self.show()

    def show(self) -> None:
        """Show the circuits open now to this process's engine and /metrics."""
        from routing.snapshot import registry_cache

        now = time.time()
        with self._lock:
            states = {slug: c.current(now) for slug, c in self._circuits.items()}
            untils = [c.until for slug, c in self._circuits.items() if states[slug] == "open"]
        for slug, state in states.items():
            metrics.CIRCUIT_STATE.labels(slug).set(_STATE_VALUE[state])
        open_now = frozenset(slug for slug, state in states.items() if state == "open")
        registry_cache.circuits_set(open_now, min(untils, default=float("inf")))

    def reset(self) -> None:
        """Forget every breaker (tests; an operator's 'close all')."""
        with self._lock:
            self._circuits.clear()
        try:
            store = self._store()
            for key in store.scan_iter(_PREFIX + "*"):
                store.delete(key)
        except redis.RedisError:
            logger.warning("circuits not reset in Redis", exc_info=True)
        self.show()


def _view(key: bytes, fields: dict[bytes, bytes]) -> CircuitView | None:
    try:
        state = fields[b"state"].decode()
        if state not in _STATE_VALUE:
            return None
        until = float(fields.get(b"until", 0) or 0)
        if state == "open" and time.time() >= until:
            state = "half_open"
        return CircuitView(
            model=key.decode()[len(_PREFIX) :],
            state=state,  # type: ignore[arg-type]
            reason=fields.get(b"reason", b"").decode(),
            opened_at=float(fields.get(b"opened_at", 0) or 0),
            until=until,
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def circuit_view(slug: str) -> CircuitView | None:
    """The shared state of a model's circuit (None: closed, or never seen failing)."""
    try:
        fields = _redis().hgetall(_PREFIX + slug)
    except redis.RedisError:
        logger.warning("circuit of %s unknown (Redis unavailable)", slug, exc_info=True)
        return None
    if not fields:
        return None
    return _view((_PREFIX + slug).encode(), fields)  # type: ignore[arg-type]


board = CircuitBoard()
