"""Calling OpenAI-compatible chat-completion endpoints (providers, local servers, the fleet).

Calls go through the official ``openai`` package (``OpenAI`` clients kept per base URL and
key, with the SDK's own retries off: the loop below retries). Every one of them sends through
one pooled ``httpx.Client`` per process (created lazily, re-created after a fork) that never
follows redirects and ignores proxy settings of the environment. Each call:

1. checks the model's base URL against the allowlist, resolving the host name
   (``model_url_validate(resolve=True)``): an allowlisted name pointed at a metadata or
   link-local address is refused at call time, not only when the model was registered;
2. posts the chat completion with the model's timeout (a redirect is an error);
3. retries 429 and 5xx answers (and connection failures) with exponential backoff, waiting
   at least as long as a ``Retry-After`` header asks, within a cap;
4. maps the result to an attempt status — ok | error | timeout | invalid_output |
   low_confidence — and reads token usage from the response.

Nothing here touches the database: model targets are plain values, so sweeps can call models
from worker threads.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, cast

import httpx
import openai
from django.conf import settings
from django.core.exceptions import ValidationError

from controlplane.services import model_url_validate

AttemptStatus = Literal["ok", "error", "timeout", "invalid_output", "low_confidence"]
ATTEMPT_STATUSES: tuple[AttemptStatus, ...] = (
    "ok",
    "error",
    "timeout",
    "invalid_output",
    "low_confidence",
)
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """Where and how to call one model (built from a ModelEndpoint by a selector)."""

    slug: str
    base_url: str
    provider_model: str
    tier: int = 1
    locality: str = "local"
    timeout_s: float = 30.0
    max_output_tokens: int = 4096
    api_key: str = field(default="", repr=False)

    @property
    def completions_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclass(frozen=True, slots=True)
class ChatResult:
    status: AttemptStatus
    content: str = ""
    latency_ms: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    http_status: int | None = None
    attempts: int = 1
    finish_reason: str = ""
    error: str = ""


def model_timeout_s(slug: str, tier: int) -> float:
    """Per-model timeout: SWITCHYARD_MODEL_TIMEOUTS[slug], else the tier's default."""
    per_model: Mapping[str, float] = settings.SWITCHYARD_MODEL_TIMEOUTS
    if slug in per_model:
        return float(per_model[slug])
    per_tier: Mapping[int, float] = settings.SWITCHYARD_TIER_TIMEOUTS
    return float(per_tier.get(int(tier), 30.0))


# --- the pooled client --------------------------------------------------------------------

_client: httpx.Client | None = None
_client_pid = 0
_client_lock = threading.Lock()
_sdk_clients: dict[tuple[str, str], openai.OpenAI] = {}


def http_client() -> httpx.Client:
    """The process's pooled client (a forked Celery child gets its own)."""
    global _client, _client_pid
    pid = os.getpid()
    if _client is None or _client_pid != pid:
        with _client_lock:
            if _client is None or _client_pid != pid:
                size = int(settings.SWITCHYARD_EVAL_HTTP_POOL)
                _client = httpx.Client(
                    follow_redirects=False,
                    limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                    headers={"User-Agent": "switchyard-evaluation/1"},
                    trust_env=False,
                )
                _client_pid = pid
                _sdk_clients.clear()  # they sent through the old client
    return _client


def http_client_close() -> None:
    global _client
    with _client_lock:
        if _client is not None:
            _client.close()
            _client = None
        _sdk_clients.clear()


def sdk_client(target: ModelTarget) -> openai.OpenAI:
    """The ``openai`` client for a target's base URL and key, over the pooled HTTP client
    (no SDK retries: ``chat_complete`` retries with its own backoff and Retry-After)."""
    http = http_client()
    key = (target.base_url, target.api_key)
    with _client_lock:
        client = _sdk_clients.get(key)
        if client is None:
            client = openai.OpenAI(
                base_url=target.base_url,
                api_key=target.api_key or "switchyard-no-key",
                # The SDK takes an httpx client as well as its own httpx2 (typed for the latter).
                http_client=cast(Any, http),
                max_retries=0,
            )
            _sdk_clients[key] = client
    return client


# --- one call -----------------------------------------------------------------------------


def _retry_after_s(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _backoff_s(attempt: int, retry_after: float | None) -> float:
    base = float(settings.SWITCHYARD_EVAL_BACKOFF_S) * (2**attempt)
    wait = base * (0.5 + random.random() / 2)  # jitter: spread retries of parallel calls
    if retry_after is not None:
        wait = max(wait, retry_after)
    return min(wait, float(settings.SWITCHYARD_EVAL_MAX_BACKOFF_S))


def _confidence(content: str) -> float | None:
    """A ``confidence`` field of a JSON answer, when the model reports one."""
    text = content.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    value = data.get("confidence") if isinstance(data, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _parse(
    response: httpx.Response, started: float, attempts: int, min_confidence: float | None
) -> ChatResult:
    latency_ms = (time.perf_counter() - started) * 1000
    try:
        data = response.json()
        choice = data["choices"][0]
        content = choice["message"]["content"]
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise TypeError("content is not a string")
        usage = data.get("usage") or {}
        input_tokens = int(usage.get("prompt_tokens") or 0)
        output_tokens = int(usage.get("completion_tokens") or 0)
        finish_reason = str(choice.get("finish_reason") or "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        return ChatResult(
            "invalid_output",
            latency_ms=latency_ms,
            http_status=response.status_code,
            attempts=attempts,
            error=f"unreadable completion: {exc.__class__.__name__}",
        )
    status: AttemptStatus = "ok"
    if min_confidence is not None:
        confidence = _confidence(content)
        if confidence is not None and confidence < min_confidence:
            status = "low_confidence"
    return ChatResult(
        status,
        content=content,
        latency_ms=latency_ms,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        http_status=response.status_code,
        attempts=attempts,
        finish_reason=finish_reason,
    )


def chat_complete(
    target: ModelTarget,
    messages: Sequence[Mapping[str, Any]],
    *,
    max_tokens: int | None = None,
    response_format: Mapping[str, Any] | None = None,
    temperature: float | None = 0.0,
    retries: int | None = None,
    min_confidence: float | None = None,
) -> ChatResult:
    """One chat completion with retries; never raises for model or network failures."""
    started = time.perf_counter()
    try:
        model_url_validate(target.base_url, resolve=True)
    except ValidationError as exc:
        return ChatResult("error", error="; ".join(exc.messages), attempts=0)
    body: dict[str, Any] = {"model": target.provider_model, "messages": list(messages)}
    if max_tokens is not None:
        body["max_tokens"] = min(max_tokens, target.max_output_tokens)
    if response_format is not None:
        body["response_format"] = dict(response_format)
    if temperature is not None:
        body["temperature"] = temperature
    max_retries = int(settings.SWITCHYARD_EVAL_RETRIES) if retries is None else retries
    completions = sdk_client(target).chat.completions.with_raw_response
    # No key for this model (a local server): no Authorization header at all.
    no_key = {} if target.api_key else {"Authorization": openai.Omit()}
    attempt = 0
    while True:
        attempt += 1
        try:
            # The raw response, parsed below: an unreadable answer is an attempt status
            # (invalid_output), not an exception.
            raw = completions.create(timeout=target.timeout_s, extra_headers=no_key, **body)
            # The SDK sends through our (httpx) client, so the response is httpx's.
            response = cast(httpx.Response, raw.http_response)
        except openai.APITimeoutError:
            return ChatResult(
                "timeout",
                latency_ms=(time.perf_counter() - started) * 1000,
                attempts=attempt,
                error=f"no answer within {target.timeout_s:g} s",
            )
        except openai.APIConnectionError as exc:
            if attempt <= max_retries:
                time.sleep(_backoff_s(attempt - 1, None))
                continue
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            return ChatResult(
                "error",
                latency_ms=(time.perf_counter() - started) * 1000,
                attempts=attempt,
                error=f"connection failed: {cause.__class__.__name__}",
            )
        except openai.APIStatusError as exc:
            response = cast(httpx.Response, exc.response)
        if response.status_code == 200:
            return _parse(response, started, attempt, min_confidence)
        if response.status_code in RETRYABLE_STATUS and attempt <= max_retries:
            time.sleep(_backoff_s(attempt - 1, _retry_after_s(response)))
            continue
        reason = "redirect refused" if response.is_redirect else f"HTTP {response.status_code}"
        return ChatResult(
            "error",
            latency_ms=(time.perf_counter() - started) * 1000,
            http_status=response.status_code,
            attempts=attempt,
            error=reason,
        )
