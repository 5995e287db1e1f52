"""Per-model circuit breakers (plain Python: no Django, no I/O; the clock is passed in).

A model's circuit is

- **closed**: calls go through; ``failures`` consecutive failed calls (5xx, 429, timeouts,
  connection errors, broken streams) *open* it;
- **open** for ``cooldown_s``: no call goes to the model — the engine routes around it (the
  model is rejected with "circuit open") and the gateway skips it in a decision's fallback
  chain;
- **half-open** once the cool-down is over: one call at a time is let through as a *probe*
  (``allow`` answers True to exactly one caller until its result is in); its success closes
  the circuit, its failure opens it for another cool-down. A probe that never reports (its
  request was cancelled) is forgotten after ``probe_timeout_s``.

``routing/circuit_board.py`` keeps one breaker per model in each gateway process, shares the
state between processes through Redis and shows it to the engine, /metrics and the model
page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Circuit", "CircuitPolicy", "State"]

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    failures: int = 5  # consecutive failures that open the circuit
    cooldown_s: float = 30.0  # how long it stays open before a probe
    probe_timeout_s: float = 60.0  # a probe that never reported no longer blocks others


@dataclass(slots=True)
class Circuit:
    policy: CircuitPolicy
    state: State = "closed"
    failures: int = 0  # consecutive, while closed
    opened_at: float = 0.0  # wall-clock seconds
    until: float = 0.0  # end of the cool-down
    reason: str = ""  # the last failure's
    probe_since: float | None = None  # a half-open probe is out
    changed_at: float = 0.0  # last transition (for sharing between processes)

    def current(self, now: float) -> State:
        """The state at ``now`` (an open circuit whose cool-down is over is half-open)."""
        if self.state == "open" and now >= self.until:
            return "half_open"
        return self.state

    def allow(self, now: float) -> bool:
        """Whether a call may go to the model now. In half-open state only one caller at a
        time gets True: the probe, who must report ``success`` or ``failure``."""
        state = self.current(now)
        if state == "closed":
            return True
        if state == "open":
            return False
        if self.state == "open":  # the cool-down just ended
            self.state = "half_open"
            self.changed_at = now
        if self.probe_since is not None and now - self.probe_since < self.policy.probe_timeout_s:
            return False
        self.probe_since = now
        return True

    def success(self, now: float) -> bool:
        """A call succeeded; True if that closed the circuit."""
        self.failures = 0
        self.probe_since = None
        if self.state == "closed":
            return False
        self.state = "closed"
        self.reason = ""
        self.changed_at = now
        return True

    def failure(self, now: float, reason: str) -> bool:
        """A call failed; True if that opened the circuit."""
        self.reason = reason
        self.probe_since = None
        if self.state == "closed":
            self.failures += 1
            if self.failures < self.policy.failures:
                return False
        elif self.state == "open" and now < self.until:
            return False  # a call let through before it opened: already open
        self.state = "open"
        self.failures = 0
        self.opened_at = now
        self.until = now + self.policy.cooldown_s
        self.changed_at = now
        return True
