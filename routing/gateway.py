"""The OpenAI-compatible gateway: decide, call the model, escalate, record — in one hop.

An ASGI application (served by gunicorn with uvicorn workers beside the WSGI web server,
``controlplane/asgi.py``; ``make run`` starts it on ``GATEWAY_PORT``):

``POST /v1/chat/completions``  OpenAI wire format, plain or ``"stream": true`` (SSE)
``GET  /v1/models``            what the key may name as ``model``: ``auto``, task classes,
                               active models
``GET  /healthz``              liveness

One request:

1. Authenticate the Switchyard key (``Authorization: Bearer``, scope ``decide``) and read the
   body (size limit; JSON; messages checked: no control characters, 400 naming the field).
2. ``model`` selects: ``auto`` (task class from ``X-Switchyard-Task-Class`` or
   ``metadata.task_class``), a task-class slug, or a model slug (pinned: the task class as
   for ``auto``, else ``SWITCHYARD_GATEWAY_DEFAULT_TASK_CLASS``). Anything else: 404
   ``model_not_found``.
3. The decision pipeline of ``POST /api/v1/decisions`` (``routing.services.decision_make``:
   PII gate on every message, engine — which routes around models whose circuit is open
   (``routing.circuit_board``) — recorder with budget holds) runs in a thread pool; the
   prompt it scans and retains is the messages' text. The decision row is handed to the
   recorder with its budget holds taken (``wait_commit=False``) and its COMMIT runs while
   the model is called; nothing is sent to the client before that COMMIT returned
   (``_committed``; if it fails: 503 ``recording_unavailable``, the answer dropped). For a
   cacheable class the answer cache is looked up (``routing.answer_cache``): a hit is
   answered from it.
4. For a frontier model and a class that condenses, a long context is condensed by a local
   model first (``routing.condense``).
5. The chosen model's ``base_url`` (allowlisted, ``model_url_validate(resolve=True)``,
   cached briefly) is called through ``routing.upstream_http`` (pooled keep-alive HTTP/1.1),
   no retries of its own, the model's timeout, and the output cap (``max_tokens`` ≤ the
   decision's ``max_output_tokens``); a model whose circuit is open is skipped.
6. A 5xx, 429, timeout or connection failure escalates to the decision's next fallback,
   carrying the context: the original messages plus a system note naming the failed model
   and why. A stream that already reached the client cannot be re-sent: a failure after the
   first chunk ends it with an OpenAI error event (the client raises; it never hangs).
   Every result goes to the model's circuit.
7. The upstream's body is answered unchanged, with ``x-switchyard-decision-id``, ``-model``,
   ``-tier``, ``-cost-usd`` (plain answers; a stream's cost is on its decision record),
   ``-escalations`` and ``-cache`` (``hit`` / ``miss``).
8. Every attempt (status, tokens, latency, time to first token for streams) and the final
   status are recorded through ``telemetry.services.outcome_report_batch`` — which settles
   the decision's budget holds and charges the real cost — group-committed right after the
   answer was sent (``SWITCHYARD_GATEWAY_RECORD_BEFORE_ANSWER``: before it, after the
   decision's COMMIT). Order: decision row queued (holds taken) → model call ∥ decision
   COMMIT → [outcome COMMIT if before] → answer → [outcome COMMIT].

Extension points left for the cascade and output-check work (issue 12): see
``_output_check`` (JSON Schema, output checks, logprob confidence, cascade decision).
Errors on /v1 routes use OpenAI's error shape ``{"error": {"message", "type", "param",
"code"}}``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import orjson
import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, close_old_connections, connections

from controlplane.db import pooled_connection_release
from controlplane.errors import ApiError
from controlplane.services import model_url_validate
from routing import metrics
from routing.answer_cache import AnswerCache, CachedAnswer, cache_key, cacheable
from routing.circuit_board import board as circuits
from routing.condense import (
    condense_output_cap,
    condense_saving_usd,
    condensed_messages,
    condensing_body,
    context_split,
    estimate_tokens,
    transcript_line,
)
from routing.engine import CIRCUIT_OPEN, ModelInfo
from routing.pricing import DatedPrice, price_cost_usd, price_in_force
from routing.schemas import decision_input_decode
from routing.services import (
    RECORD_FOR_OUTCOME,
    Decided,
    api_key_authenticate,
    decision_make,
    recording_error,
)
from routing.snapshot import registry_cache
from routing.upstream_http import (
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)
from telemetry.recorder import RecordingFailed, recorder

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TASK_CLASS_HEADER = "x-switchyard-task-class"
TEAM_HEADER = "x-switchyard-team"
CLASSIFICATION_HEADER = "x-switchyard-data-classification"
_CONTROL = frozenset(chr(c) for c in range(32) if chr(c) not in "\t\n\r")
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
# Upstream credentials are not in the registry yet: a placeholder, as before.
_UPSTREAM_HEADERS = {"Authorization": "Bearer switchyard"}
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]


# --- errors ------------------------------------------------------------------------------


def openai_error_body(exc: ApiError) -> dict[str, Any]:
    """OpenAI's error shape, with Switchyard's code and the first field named as ``param``."""
    param = next(iter(exc.fields), None) if exc.fields else None
    error: dict[str, Any] = {
        "message": exc.message,
        "type": _ERROR_TYPES.get(exc.status_code, "api_error"),
        "param": param,
        "code": exc.error_code,
    }
    for name, value in exc.extra.items():
        error.setdefault(name, value)
    return {"error": error}


# --- request parsing ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A chat-completion request, decided and recorded: what the upstream attempts need."""

    decided: Decided
    body: dict[str, Any]  # the client's body (``model`` and Switchyard fields removed)
    stream: bool
    include_usage: bool  # the client asked for the usage chunk
    pinned: bool
    # Every dated price per model (the snapshot's): the cost header without a query.
    schedules: Mapping[str, Sequence[DatedPrice]] = field(default_factory=dict)
    cache: CacheLookup | None = None  # the class is cacheable (routing.answer_cache)
    # Context condensing (routing.condense): the local model and the threshold, when the
    # class enables it and the decision chose a frontier model; what it did, once done.
    condenser: ModelInfo | None = None
    condense_above: int = 0
    condensed: Mapping[str, Any] | None = None
    # The condensing call itself, recorded (and charged) as an attempt made for the answer.
    condensing: Attempt | None = None


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """A cacheable call: where its answer is (or goes) and, on a hit, the answer."""

    key: str
    ttl_s: int
    lookup_ms: float
    hit: CachedAnswer | None = None
    hit_model: ModelInfo | None = None


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif not isinstance(part, dict):
                raise _invalid(f"{where}[{i}]", "a content part must be an object")
        return "\n".join(parts)
    raise _invalid(where, "content must be a string, an array of parts or null")


def _invalid(field_name: str, message: str) -> ApiError:
    return ApiError(400, "invalid", f"{field_name}: {message}", {field_name: [message]})


def _check_text(value: str, where: str) -> None:
    if not _CONTROL.isdisjoint(value):
        raise _invalid(
            where,
            "control characters (U+0000–U+001F other than tab, line feed and carriage "
            "return) are not allowed",
        )


def _prompt_of(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "must be a non-empty array of messages")
    texts = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _invalid(f"messages[{i}]", "each message needs a string 'role'")
        _check_text(message["role"], f"messages[{i}].role")
        text = _text_of(message.get("content"), f"messages[{i}].content")
        _check_text(text, f"messages[{i}].content")
        texts.append(transcript_line(message["role"], text))
    return "\n".join(texts)


def _decide(authorization: str, raw: bytes, headers: dict[str, str], started: int) -> ChatCall:
    """Steps 1-3 (runs in the gateway's thread pool: the recorder and the ORM block)."""
    key = api_key_authenticate(authorization, "decide")
    if len(raw) > settings.SWITCHYARD_MAX_BODY_BYTES:
        raise ApiError(413, "too_large", "The request body is too large.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", "The body must be a JSON object.")
    model = body.pop("model", None)
    if not isinstance(model, str) or not model:
        raise _invalid("model", "must be 'auto', a task class or a model")
    _check_text(model, "model")
    prompt = _prompt_of(body.get("messages"))
    metadata = body.pop("metadata", None)
    if metadata is not None and not isinstance(metadata, dict):
        raise _invalid("metadata", "must be an object")
    metadata = dict(metadata or {})
    header_class = headers.get(TASK_CLASS_HEADER) or None
    meta_class = metadata.pop("task_class", None)
    asked_class = header_class or (meta_class if isinstance(meta_class, str) else None)
    snapshot = registry_cache.snapshot()
    pinned: str | None = None
    if model == "auto":
        if not asked_class:
            raise _invalid(
                "model",
                "model 'auto' needs a task class: send the X-Switchyard-Task-Class header "
                "or metadata.task_class",
            )
        task_class = asked_class
    elif model in snapshot.task_classes:
        if asked_class and asked_class != model:
            raise _invalid("model", f"names task class {model!r}, the request {asked_class!r}")
        task_class = model
    elif model in snapshot.models:
        pinned = model
        task_class = asked_class or settings.SWITCHYARD_GATEWAY_DEFAULT_TASK_CLASS
        if not task_class:
            raise _invalid(
                "model",
                f"a pinned model ({model!r}) needs a task class: send the "
                "X-Switchyard-Task-Class header or metadata.task_class",
            )
    else:
        raise ApiError(
            404,
            "model_not_found",
            f"The model {model!r} does not exist: use 'auto', a task class or a model "
            "(GET /v1/models).",
            {"model": ["unknown model"]},
        )
    decision_body: dict[str, Any] = {"task_class": task_class, "prompt": prompt}
    if metadata:
        decision_body["metadata"] = metadata
    user = body.get("user")
    if isinstance(user, str) and user:
        decision_body["end_user"] = user
    if headers.get(TEAM_HEADER):
        decision_body["team"] = headers[TEAM_HEADER]
    if headers.get(CLASSIFICATION_HEADER):
        decision_body["data_classification"] = headers[CLASSIFICATION_HEADER]
    data = decision_input_decode(orjson.dumps(decision_body))
    made = decision_make(
        key, data, started=started, pinned_model=pinned, wait_commit=False, condense=True
    )
    assert isinstance(made, Decided)  # no request_id: never a replay
    stream = body.get("stream") is True
    options = body.pop("stream_options", None)
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    cache = _cache_lookup(made, task_class, pinned, body)
    extras = registry_cache.extras(task_class)
    # The local model the decision held the condensing call's worst case for; a cache hit
    # calls no model at all.
    condenser = made.condenser if cache is None or cache.hit is None else None
    return ChatCall(
        made,
        body,
        stream,
        include_usage,
        pinned is not None,
        registry_cache.schedules(),
        cache,
        condenser,
        extras.condense_above_tokens if extras is not None else 0,
    )


answer_cache = AnswerCache(settings.SWITCHYARD_ANSWER_CACHE_URL)


def _cache_lookup(
    made: Decided, task_class: str, pinned: str | None, body: dict[str, Any]
) -> CacheLookup | None:
    """For a cacheable class (and a request it may cache): the key and what the cache holds.
    Plain and streamed requests share entries (``stream`` is not part of the key). A cache
    that fails to answer is a miss."""
    extras = registry_cache.extras(task_class)
    if extras is None or not cacheable(
        extras.answer_cache_ttl_s, extras.answer_cache_personal_data, made.sensitive
    ):
        return None
    key = cache_key(
        team=made.team,
        task_class=task_class,
        routing_version=made.decision.routing_table_version,
        pinned=pinned,
        body=body,
    )
    began = time.perf_counter()
    try:
        hit = answer_cache.get(key)
    except redis.RedisError:
        metrics.GATEWAY_CACHE.labels("error").inc()
        logger.warning("gateway: answer cache unavailable", exc_info=True)
        hit = None
    lookup_ms = (time.perf_counter() - began) * 1000
    model = registry_cache.snapshot().models.get(hit.model) if hit is not None else None
    if model is None:  # a miss, or the model that answered left the registry
        metrics.GATEWAY_CACHE.labels("miss").inc()
        return CacheLookup(key, extras.answer_cache_ttl_s, lookup_ms)
    metrics.GATEWAY_CACHE.labels("hit").inc()
    return CacheLookup(key, extras.answer_cache_ttl_s, lookup_ms, hit, model)


def _cache_store(cache: CacheLookup, answer: CachedAnswer) -> None:
    try:
        answer_cache.put(cache.key, answer, cache.ttl_s)
    except redis.RedisError:
        metrics.GATEWAY_CACHE.labels("error").inc()
        logger.warning("gateway: answer not cached", exc_info=True)


# --- upstream calls ----------------------------------------------------------------------


@dataclass(slots=True)
class Attempt:
    model: ModelInfo
    status: str = "ok"  # ok | error | timeout
    latency_ms: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    escalation_reason: str = ""
    ttft_ms: int | None = None
    error: str = ""
    streamed_chars: int = 0
    purpose: str = ""  # "condense": a call made for the answer, not an attempt at it

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model.slug,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "escalation_reason": self.escalation_reason[:200],
        }
        if self.ttft_ms is not None:
            out["ttft_ms"] = self.ttft_ms
        if self.purpose:
            out["purpose"] = self.purpose
        return out


class UpstreamFailed(Exception):
    """An attempt failed: ``retryable`` ones escalate to the next fallback."""

    def __init__(self, status: str, reason: str, *, retryable: bool, http_status: int = 0):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retryable = retryable
        self.http_status = http_status


@dataclass
class _Upstreams:
    """The process's pooled upstream HTTP client (``routing.upstream_http``, one per event
    loop); allowlist checks cached for ``SWITCHYARD_GATEWAY_URL_CHECK_S``."""

    http: UpstreamClient | None = None
    loop: asyncio.AbstractEventLoop | None = None
    checked: dict[str, tuple[float, str]] = field(default_factory=dict)

    def client(self) -> UpstreamClient:
        loop = asyncio.get_running_loop()
        if self.http is None or self.loop is not loop:
            self.http = UpstreamClient(limit=int(settings.SWITCHYARD_GATEWAY_HTTP_POOL))
            self.loop = loop
        return self.http

    async def url_refusal(self, base_url: str) -> str:
        """'' if the URL passes the allowlist (resolving its host), else why not."""
        now = time.monotonic()
        cached = self.checked.get(base_url)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            await asyncio.to_thread(model_url_validate, base_url, resolve=True)
            refusal = ""
        except ValidationError as exc:
            refusal = "; ".join(exc.messages)
        self.checked[base_url] = (now + settings.SWITCHYARD_GATEWAY_URL_CHECK_S, refusal)
        return refusal

    async def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None


upstreams = _Upstreams()


def _timeout_s(model: ModelInfo) -> float:
    per_model: dict[str, float] = settings.SWITCHYARD_MODEL_TIMEOUTS
    if model.slug in per_model:
        return float(per_model[model.slug])
    return float(settings.SWITCHYARD_TIER_TIMEOUTS.get(int(model.tier), 30.0))


def _upstream_body(call: ChatCall, model: ModelInfo, failed: list[Attempt]) -> dict[str, Any]:
    body = dict(call.body)
    body["model"] = model.provider_model
    cap = call.decided.decision.max_output_tokens
    capped = False
    for name in ("max_tokens", "max_completion_tokens"):
        if name in body:  # null, 0 or garbage must not lift the cap either
            asked = body[name]
            valid = isinstance(asked, int) and not isinstance(asked, bool) and asked > 0
            body[name] = min(asked, cap) if valid else cap
            capped = True
    if not capped:
        body["max_tokens"] = cap
    if call.stream:
        body["stream_options"] = {"include_usage": True}
    if failed:
        # Escalation carries the context: the original request and what went wrong.
        account = "; ".join(f"{a.model.slug}: {a.escalation_reason}" for a in failed)
        note = {
            "role": "system",
            "content": f"[switchyard] Escalated after failed attempt(s) ({account}). "
            "Answer the request below in full.",
        }
        body["messages"] = [note, *body["messages"]]
    return body


def _failure(exc: UpstreamError) -> UpstreamFailed:
    if isinstance(exc, UpstreamTimeout):
        return UpstreamFailed("timeout", "timeout", retryable=True)
    return UpstreamFailed("error", f"connection failed: {exc}", retryable=True)


def _status_failure(status: int) -> UpstreamFailed:
    return UpstreamFailed(
        "error", f"HTTP {status}", retryable=status in _RETRYABLE_STATUS, http_status=status
    )


async def _upstream_post(
    call: ChatCall, attempt: Attempt, failed: list[Attempt]
) -> UpstreamResponse:
    """Send the attempt's request; the response once its headers arrived (2xx only)."""
    model = attempt.model
    refusal = await upstreams.url_refusal(model.base_url)
    if refusal:
        raise UpstreamFailed("error", f"URL refused: {refusal}", retryable=True)
    body = orjson.dumps(_upstream_body(call, model, failed))
    url = model.base_url.rstrip("/") + "/chat/completions"
    try:
        response = await upstreams.client().post(
            url, body, timeout=_timeout_s(model), headers=_UPSTREAM_HEADERS
        )
    except UpstreamError as exc:
        raise _failure(exc) from exc
    if not 200 <= response.status < 300:
        response.close()
        raise _status_failure(response.status)
    return response


def _usage(data: Any) -> tuple[int, int]:
    """(prompt, completion) tokens an upstream reports; anything but a sane count is 0."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10_000_000:
        return value
    return 0


def _output_check(call: ChatCall, attempt: Attempt, payload: Any) -> str:
    """EXTENSION POINT (issue 12, cascade and output checks): '' to accept the answer, else
    the escalation reason (the attempt is then recorded as ``invalid_output`` and escalates
    if the route's triggers say so). Here go the class's JSON Schema, the reviewers' output
    checks, and the cascade decision (``routing.cascade.cascade_judge`` with the decision's
    confidence as prior and the upstream's logprobs); until then every well-formed answer
    is accepted. Streams would need it on the assembled answer before their last chunk."""
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
        return "invalid output: no choices"
    return ""


async def _attempt_plain(call: ChatCall, attempt: Attempt, failed: list[Attempt]) -> bytes:
    response = await _upstream_post(call, attempt, failed)
    try:
        raw = await response.read()
    except UpstreamError as exc:
        raise _failure(exc) from exc
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamFailed("invalid_output", "unreadable JSON", retryable=True) from exc
    attempt.input_tokens, attempt.output_tokens = _usage(payload)
    reason = _output_check(call, attempt, payload)
    if reason:
        raise UpstreamFailed("invalid_output", reason, retryable=True)
    return raw


async def _condensed(call: ChatCall, local: ModelInfo) -> ChatCall:
    """The call with its long context condensed by ``local`` (routing.condense), or as it
    was: context under the threshold, not condensable, or the local call failed (which is
    recorded too)."""
    messages = call.body.get("messages")
    if not isinstance(messages, list):
        return call
    context, last, transcript = context_split(messages)
    before = estimate_tokens(transcript)
    if not context or before <= call.condense_above:
        return call
    record: dict[str, Any] = {"model": local.slug, "input_tokens_before": before}
    began = time.perf_counter()
    summary = ""
    usage = (0, 0)
    attempt: Attempt | None = None
    if not circuits.allow(local.slug):
        record["error"] = CIRCUIT_OPEN
    else:
        attempt = Attempt(local, purpose="condense")
        cap = condense_output_cap(local.max_output_tokens, call.condense_above)
        request = orjson.dumps(condensing_body(local.provider_model, transcript, cap))
        failure: UpstreamFailed | None = None
        try:
            refusal = await upstreams.url_refusal(local.base_url)
            if refusal:
                raise UpstreamFailed("error", f"URL refused: {refusal}", retryable=True)
            response = await upstreams.client().post(
                local.base_url.rstrip("/") + "/chat/completions",
                request,
                timeout=_timeout_s(local),
                headers=_UPSTREAM_HEADERS,
            )
            if not 200 <= response.status < 300:
                response.close()
                raise _status_failure(response.status)
            payload = orjson.loads(await response.read())
            usage = _usage(payload)
            summary = payload["choices"][0]["message"]["content"] or ""
        except UpstreamError as exc:
            failure = _failure(exc)
        except UpstreamFailed as exc:
            failure = exc
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            failure = UpstreamFailed("invalid_output", "unreadable answer", retryable=True)
        _circuit_report(local, failure)
        attempt.input_tokens, attempt.output_tokens = usage
        if failure is not None:
            record["error"] = failure.reason
            attempt.status, attempt.escalation_reason = failure.status, failure.reason
    record["latency_ms"] = round((time.perf_counter() - began) * 1000)
    if attempt is not None:
        attempt.latency_ms = record["latency_ms"]
    after = estimate_tokens(summary)
    if not summary.strip() or after >= before:
        record.setdefault("error", "no shorter context")
        metrics.GATEWAY_CONDENSED.labels("failed").inc()
        return replace(call, condensed=record, condensing=attempt)
    frontier = call.decided.decision.model
    at = call.decided.created_at
    spent, saved = condense_saving_usd(
        price_in_force(call.schedules.get(frontier.slug, ()), at),
        price_in_force(call.schedules.get(local.slug, ()), at),
        before,
        after,
        *usage,
    )
    record.update(
        input_tokens_after=after,
        condense_input_tokens=usage[0],
        condense_output_tokens=usage[1],
        condense_cost_usd=f"{spent:.6f}",
        saved_usd=f"{saved:.6f}",
    )
    metrics.GATEWAY_CONDENSED.labels("ok").inc()
    body = {**call.body, "messages": condensed_messages(summary, last)}
    return replace(call, body=body, condensed=record, condensing=attempt)


async def _committed(call: ChatCall) -> None:
    """Wait for the decision's COMMIT, which ran while the model was called: nothing — an
    answer, an error naming the decision, a cached answer — reaches the client before it.
    A decision that could not be stored raises ``ApiError`` (503 ``recording_unavailable``):
    the upstream's answer is dropped, never sent without its record."""
    committing = call.decided.committing
    if committing is None:
        return  # committed before decision_make returned
    future = committing.future
    if not future.done():
        waiting = asyncio.wrap_future(future)
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=0.25)
            if done:
                waiting.exception()  # retrieved here, raised below from ``future``
                break
            if time.monotonic() > committing.give_up:
                failed = RecordingFailed("timed out waiting for the decision to be stored")
                raise recording_error(failed)
            recorder.watch()  # a writer stuck past its limit is replaced, as record() does
    try:
        future.result()
    except RecordingFailed as exc:
        logger.warning("gateway: decision %s not stored: %s", call.decided.decision_id, exc)
        raise recording_error(exc) from exc


def _skipped(attempt: Attempt) -> UpstreamFailed:
    """The model's circuit is open: not called, recorded as a failed attempt (no tokens,
    no cost) so the call escalates as for an outage."""
    attempt.status, attempt.escalation_reason = "error", CIRCUIT_OPEN
    return UpstreamFailed("error", CIRCUIT_OPEN, retryable=True)


def _circuit_report(model: ModelInfo, failure: UpstreamFailed | None) -> None:
    """Tell the model's circuit how the call went: an answer — even an unusable one, or a
    refusal of the request itself (a 4xx other than 429) — shows the upstream alive."""
    if failure is None or failure.status == "invalid_output" or not failure.retryable:
        circuits.success(model.slug)
    else:
        circuits.failure(model.slug, failure.reason)


def _chain(call: ChatCall) -> list[ModelInfo]:
    decision = call.decided.decision
    return [decision.model, *(f.model for f in decision.fallbacks)]


def _cost(call: ChatCall, attempts: list[Attempt]) -> str:
    """What the attempts — and the condensing call made for them — cost at the prices in
    force at decision time (the same rule and prices the outcome is charged with),
    formatted for ``x-switchyard-cost-usd``."""
    at = call.decided.created_at
    made = [call.condensing, *attempts] if call.condensing is not None else attempts
    total = sum(
        (
            price_cost_usd(
                price_in_force(call.schedules.get(a.model.slug, ()), at),
                a.input_tokens,
                a.output_tokens,
            )
            for a in made
        ),
        Decimal(0),
    )
    return f"{total:.6f}"


def _escalates(call: ChatCall, index: int, failure: UpstreamFailed | None) -> bool:
    """Whether the failure of attempt ``index`` hands the request to the next fallback: it
    must be one worth retrying elsewhere, a next fallback must exist, and the route's
    escalation triggers must name it (``error_timeout``, ``invalid_output``)."""
    if failure is None or not failure.retryable:
        return False
    fallbacks = call.decided.decision.fallbacks
    if index >= len(fallbacks):
        return False
    trigger = "invalid_output" if failure.status == "invalid_output" else "error_timeout"
    return trigger in fallbacks[index].triggers


class OutcomeWriter:
    """Group commit of the gateway's outcomes: one writer thread per process takes every
    outcome waiting and stores them with ``telemetry.services.outcome_report_batch`` (the
    same pricing, charging and hold settlement as ``outcome_report``, for many first
    reports in one transaction). A request waits for its batch's COMMIT; a batch that fails
    is retried one outcome at a time with ``outcome_report``."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(
        self, call: ChatCall, attempts: list[Attempt], final_status: str
    ) -> asyncio.Future[None]:
        """Queue the outcome (from the event loop); the future resolves after its batch's
        COMMIT (or with the error that kept it out)."""
        made = [call.condensing, *attempts] if call.condensing is not None else attempts
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = _Pending(call, [a.report() for a in made], final_status, future)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="gateway-outcomes", daemon=True
                )
                self._thread.start()
        self._queue.put(pending)
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Write what is waiting, close the writer's connection, stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < 500:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                _attempts_counted(batch)
                self._write(batch)
            except Exception as exc:  # never let the writer die
                logger.exception("gateway outcomes: batch failed")
                connections["default"].close()
                for p in batch:
                    p.error = p.error or exc
            _settled(batch)
        connections.close_all()

    def _write(self, batch: list[_Pending]) -> None:
        from telemetry.models import DecisionRecord
        from telemetry.services import (
            OutcomeInput,
            charging_registry,
            decision_record_unsaved,
            outcome_report,
            outcome_report_batch,
        )

        # The writer keeps its connection from batch to batch (handing it back to the pool
        # would cost a check query per batch); one that failed is closed (below) and the
        # next batch connects afresh.
        # The generation the routing snapshot follows (no query), else one for the batch.
        registry = charging_registry(registry_cache.generation_tracked())
        # The decisions as stored (decision_make kept the columns charging reads, their
        # budget holds included); only a call made without them is read back.
        missing = [p for p in batch if p.call.decided.stored is None]
        records = {}
        if missing:
            times = [p.call.decided.created_at for p in missing]
            records = {
                r.id: r
                for r in DecisionRecord.objects.filter(
                    id__in=[p.call.decided.decision_id for p in missing],
                    created_at__gte=min(times),
                    created_at__lte=max(times),
                ).only(*RECORD_FOR_OUTCOME)
            }
        items = []
        for p in batch:
            stored = p.call.decided.stored
            record = (
                decision_record_unsaved(**stored)
                if stored is not None
                else records.get(p.call.decided.decision_id)
            )
            if record is None:
                p.error = RuntimeError("decision record not found")
                continue
            items.append(
                (
                    p,
                    OutcomeInput(
                        decision=record,
                        attempts=p.attempts,  # type: ignore[arg-type]
                        final_status=p.final_status,
                        validation=_validation(p.call),
                    ),
                )
            )
        try:
            # Written after the answer (the default): its COMMIT need not wait for its own
            # fsync (the next decision's flushes it); before the answer it must.
            flush = bool(settings.SWITCHYARD_GATEWAY_RECORD_BEFORE_ANSWER)
            outcome_report_batch([item for _, item in items], flush=flush, registry=registry)
        except DatabaseError:
            logger.warning("gateway outcomes: batch refused, one by one", exc_info=True)
            connections["default"].close()
            for p, item in items:
                try:
                    outcome_report(item)
                except Exception as exc:
                    p.error = exc
                    connections["default"].close()


def _attempts_counted(batch: list[_Pending]) -> None:
    """The gateway's attempt metrics for a batch of calls, kept by the outcome writer's
    thread (one update per label set; the event loop and the request threads never wait
    for the metrics' lock)."""
    attempts: dict[tuple[str, str], int] = {}
    escalations: dict[str, int] = {}
    for p in batch:
        made = p.attempts[1:] if p.call.condensing is not None else p.attempts
        for i, attempt in enumerate(made):
            labels = (attempt["model"], attempt["status"])
            attempts[labels] = attempts.get(labels, 0) + 1
            metrics.GATEWAY_UPSTREAM_SECONDS.observe(attempt["latency_ms"] / 1000)
            if "ttft_ms" in attempt:
                metrics.GATEWAY_TTFT_SECONDS.observe(attempt["ttft_ms"] / 1000)
            if i < len(made) - 1:
                escalations[attempt["model"]] = escalations.get(attempt["model"], 0) + 1
    for labels, count in attempts.items():
        metrics.GATEWAY_ATTEMPTS.labels(*labels).inc(count)
    for model, count in escalations.items():
        metrics.GATEWAY_ESCALATIONS.labels(model).inc(count)


def _validation(call: ChatCall) -> dict[str, Any]:
    """What the outcome records about how the gateway answered (a cache hit: the spend the
    cached answer saved, read by the dashboards)."""
    validation: dict[str, Any] = {"gateway": "stream" if call.stream else "plain"}
    if call.cache is not None:
        validation["cache"] = "hit" if call.cache.hit is not None else "miss"
        if call.cache.hit is not None:
            validation["saved_usd"] = call.cache.hit.cost_usd
    if call.condensed is not None:
        validation["condensed"] = dict(call.condensed)
    return validation


@dataclass(slots=True, eq=False)
class _Pending:
    call: ChatCall
    attempts: list[dict[str, Any]]
    final_status: str
    future: asyncio.Future[None] | None = None  # on the requesting event loop
    error: BaseException | None = None  # set by the writer: this outcome is not stored


# (future, its result, or the error it fails with)
_Answer = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _deliver(loop: asyncio.AbstractEventLoop, answers: list[_Answer]) -> None:
    """Resolve futures of ``loop`` from another thread: one wake-up for all of them."""
    try:
        loop.call_soon_threadsafe(_answered, answers)
    except RuntimeError:  # the loop closed meanwhile: nobody waits
        pass


def _answered(answers: list[_Answer]) -> None:
    for future, result, error in answers:
        if future.done():
            continue  # the request was cancelled meanwhile
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _settled(batch: list[_Pending]) -> None:
    """Resolve a written batch's futures: one wake-up per event loop, not one per call."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
    for p in batch:
        if p.future is not None:
            by_loop.setdefault(p.future.get_loop(), []).append((p.future, None, p.error))
    for loop, answers in by_loop.items():
        _deliver(loop, answers)


outcome_writer = OutcomeWriter()


def _models_list(authorization: str) -> dict[str, Any]:
    """GET /v1/models: ``auto``, the routed task classes, the active models."""
    api_key_authenticate(authorization, "decide")
    snapshot = registry_cache.snapshot()
    data: list[dict[str, Any]] = [
        {"id": "auto", "object": "model", "created": 0, "owned_by": "switchyard"}
    ]
    data += [
        {"id": slug, "object": "model", "created": 0, "owned_by": "switchyard:task-class"}
        for slug in sorted(snapshot.task_classes)
        if slug in snapshot.routes
    ]
    data += [
        {
            "id": m.slug,
            "object": "model",
            "created": 0,
            "owned_by": m.provider,
            "x_switchyard": {"tier": m.tier, "locality": m.locality},
        }
        for m in sorted(snapshot.models.values(), key=lambda m: (m.tier, m.slug))
        if m.status == "active"
    ]
    return {"object": "list", "data": data}


# --- the ASGI application ----------------------------------------------------------------


class _Jobs:
    """The gateway's blocking work (deciding: the ORM, the recorder's hand-over) on a fixed
    set of threads, each job answered on the event loop that asked it: one asyncio future
    and one ``call_soon_threadsafe`` per job. ``loop.run_in_executor`` does the same with a
    concurrent future chained to an asyncio one, a work item, a condition and a semaphore
    per job — a tenth of the event loop's time under load, profiled."""

    def __init__(self, run: Callable[..., Any]) -> None:
        self._run = run  # run(fn, *args): the job's wrapper (database connection handling)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._threads:
            self._start()
        self._queue.put((future, fn, args))
        return future

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            for i in range(int(settings.SWITCHYARD_GATEWAY_THREADS)):
                thread = threading.Thread(target=self._work, name=f"gateway_{i}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            future, fn, args = job
            if future.cancelled():
                continue  # the request went away while the job waited
            try:
                answer: _Answer = (future, self._run(fn, *args), None)
            except BaseException as exc:
                answer = (future, None, exc)
            _deliver(future.get_loop(), [answer])

    def shutdown(self) -> None:
        """Let the queued jobs finish, then stop the threads."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join()


_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class Gateway:
    def __init__(self) -> None:
        self._pool_lock = threading.Lock()
        self._connections: list[Any] = []  # the job threads' database connections
        self._jobs = _Jobs(self._job)

    def _connections_close(self) -> None:
        with self._pool_lock:
            shared, self._connections = self._connections, []
        for connection in shared:
            connection.close()

    def _job(self, fn: Callable[..., Any], *args: Any) -> Any:
        connection = connections["default"]
        if not getattr(connection, "_gateway_shared", False):
            # Closed at shutdown from the event loop's thread (see _lifespan).
            connection.inc_thread_sharing()
            connection._gateway_shared = True  # type: ignore[attr-defined]
            with self._pool_lock:
                self._connections.append(connection)
        try:
            if connection.connection is not None:
                # Kept from an earlier job (persistent connections, no pool): Django's
                # per-request check (broken, past CONN_MAX_AGE). A pooled one was handed
                # back after its job; most decisions open none.
                close_old_connections()
            return fn(*args)
        finally:
            if connection.connection is not None:
                pooled_connection_release()

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._jobs.submit(fn, *args)

    async def _recorded(self, call: ChatCall, attempts: list[Attempt], final: str) -> None:
        """Record the outcome (settles the holds, charges the cost); one that could not be
        stored is logged and counted (its holds are released when they expire).

        Awaited after the answer was sent unless ``SWITCHYARD_GATEWAY_RECORD_BEFORE_ANSWER``:
        the decision itself was committed before anything was sent (``_committed``), so
        every answered call is on record; its outcome follows by one group commit (a
        process killed in between leaves the decision without outcome, its holds released
        after the reservation TTL, as for a caller of the decision API that never
        reports)."""
        try:
            await outcome_writer.submit(call, attempts, final)
        except Exception:
            metrics.GATEWAY_OUTCOME_FAILURES.inc()
            logger.exception("gateway: outcome of %s not recorded", call.decided.decision_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = scope["method"]
        try:
            if path == "/v1/chat/completions":
                if method != "POST":
                    raise ApiError(405, "method_not_allowed", "Use POST.")
                await self._chat(scope, receive, send)
            elif path == "/v1/models":
                if method != "GET":
                    raise ApiError(405, "method_not_allowed", "Use GET.")
                await self._models(scope, send)
            elif path == "/healthz":
                await _json(send, 200, {"status": "ok"})
            else:
                raise ApiError(404, "not_found", f"No route for {path}.")
        except ApiError as exc:
            await _json(send, exc.status_code, openai_error_body(exc))
        except DatabaseError:
            logger.warning("gateway: database unavailable", exc_info=True)
            error = ApiError(503, "database_unavailable", "The database is unreachable; retry.")
            await _json(send, 503, openai_error_body(error), [(b"retry-after", b"1")])
        except Exception:
            logger.exception("gateway request failed")
            error = ApiError(500, "server_error", "Internal error; it has been logged.")
            await _json(send, 500, openai_error_body(error))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await upstreams.close()
                await asyncio.to_thread(self._jobs.shutdown)
                await asyncio.to_thread(self._connections_close)
                await asyncio.to_thread(outcome_writer.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _models(self, scope: Scope, send: Send) -> None:
        authorization = _headers(scope).get("authorization", "")
        await _json(send, 200, await self._in_thread(_models_list, authorization))

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter_ns()
        headers = _headers(scope)
        raw = await _read_body(receive, int(settings.SWITCHYARD_MAX_BODY_BYTES))
        call: ChatCall = await self._in_thread(
            _decide, headers.get("authorization", ""), raw, headers, started
        )
        if call.condenser is not None:
            call = await _condensed(call, call.condenser)
        if call.cache is not None and call.cache.hit is not None:
            await self._chat_cached(call, call.cache, send)
        elif call.stream:
            await self._chat_stream(call, receive, send)
        else:
            await self._chat_plain(call, send)

    async def _chat_cached(self, call: ChatCall, cache: CacheLookup, send: Send) -> None:
        """A cache hit: the stored answer (for a stream, as the SSE events of that answer),
        recorded as one attempt of the model that produced it with no tokens (cost 0) and
        the lookup's latency (also its time to first token, for a stream)."""
        assert cache.hit is not None and cache.hit_model is not None
        attempt = Attempt(cache.hit_model, latency_ms=round(cache.lookup_ms))
        if call.stream:
            attempt.ttft_ms = attempt.latency_ms
        attempts = [attempt]
        await _committed(call)
        before = bool(settings.SWITCHYARD_GATEWAY_RECORD_BEFORE_ANSWER)
        if before:
            await self._recorded(call, attempts, "ok")
        extra = _switchyard_headers(call, cache.hit_model, 0, _cost(call, attempts), cache="hit")
        try:
            if call.stream:
                events = completion_events(cache.hit.body, include_usage=call.include_usage)
                await _respond(send, 200, events, extra, content_type=b"text/event-stream")
            else:
                await _respond(send, 200, cache.hit.body, extra)
        finally:
            if not before:
                await self._recorded(call, attempts, "ok")

    async def _chat_plain(self, call: ChatCall, send: Send) -> None:
        attempts: list[Attempt] = []
        answer: bytes | None = None
        last: UpstreamFailed | None = None
        for index, model in enumerate(_chain(call)):
            attempt = Attempt(model)
            attempts.append(attempt)
            if not circuits.allow(model.slug):
                last = _skipped(attempt)
            else:
                began = time.perf_counter()
                last = None
                try:
                    answer = await _attempt_plain(call, attempt, attempts[:-1])
                except UpstreamFailed as exc:
                    attempt.status, attempt.escalation_reason, last = exc.status, exc.reason, exc
                finally:
                    attempt.latency_ms = round((time.perf_counter() - began) * 1000)
                _circuit_report(model, last)
            if answer is not None or not _escalates(call, index, last):
                break
        final = "ok" if answer is not None else attempts[-1].status
        await _committed(call)
        before = bool(settings.SWITCHYARD_GATEWAY_RECORD_BEFORE_ANSWER)
        if before:
            await self._recorded(call, attempts, final)
        extra = _switchyard_headers(
            call, attempts[-1].model, len(attempts) - 1, _cost(call, attempts)
        )
        stored = None
        if answer is not None and call.cache is not None:
            # Stored while the answer is sent (not after the outcome's COMMIT): the client's
            # next identical request rarely arrives before it.
            stored = self._cache_put(call, call.cache, answer, attempts)
        try:
            if answer is not None:
                await _respond(send, 200, answer, extra)
            else:
                assert last is not None
                await _json(send, *_upstream_error(last, attempts), extra)
        finally:
            if not before:
                await self._recorded(call, attempts, final)
            if stored is not None:
                await stored

    def _cache_put(
        self, call: ChatCall, cache: CacheLookup, answer: bytes, attempts: list[Attempt]
    ) -> asyncio.Future[Any]:
        """Store an answer in the cache (in the thread pool; awaited by the caller)."""
        model = attempts[-1].model
        cached = CachedAnswer(answer, model.slug, int(model.tier), _cost(call, attempts))
        return asyncio.ensure_future(self._in_thread(_cache_store, cache, cached))

    async def _chat_stream(self, call: ChatCall, receive: Receive, send: Send) -> None:
        attempts: list[Attempt] = []
        for index, model in enumerate(_chain(call)):
            attempt = Attempt(model)
            attempts.append(attempt)
            began = time.perf_counter()
            try:
                if not circuits.allow(model.slug):
                    raise _skipped(attempt)
                try:
                    lines = await self._open_stream(call, attempt, attempts[:-1])
                except UpstreamFailed as failed:
                    _circuit_report(model, failed)
                    raise
            except UpstreamFailed as exc:
                attempt.status, attempt.escalation_reason = exc.status, exc.reason
                attempt.latency_ms = round((time.perf_counter() - began) * 1000)
                if _escalates(call, index, exc):
                    continue
                await _committed(call)
                before = bool(settings.SWITCHYARD_GATEWAY_RECORD_BEFORE_ANSWER)
                if before:
                    await self._recorded(call, attempts, attempt.status)
                extra = _switchyard_headers(call, model, len(attempts) - 1, _cost(call, attempts))
                try:
                    await _json(send, *_upstream_error(exc, attempts), extra)
                finally:
                    if not before:
                        await self._recorded(call, attempts, attempt.status)
                return
            await self._relay(call, attempts, began, lines, receive, send)
            return
        raise AssertionError("the last model never escalates")  # pragma: no cover

    async def _open_stream(self, call: ChatCall, attempt: Attempt, failed: list[Attempt]) -> _Lines:
        """The upstream's SSE lines, once its first data line has arrived (a failure before
        it can still escalate invisibly to the client)."""
        response = await _upstream_post(call, attempt, failed)
        lines = _Lines(response)
        try:
            await lines.peek()
        except UpstreamError as exc:
            response.close()
            raise _failure(exc) from exc
        if lines.first is None:
            response.close()
            raise UpstreamFailed("error", "empty stream", retryable=True)
        return lines

    async def _pump(
        self,
        call: ChatCall,
        attempt: Attempt,
        began: float,
        lines: _Lines,
        send: Send,
        assembled: StreamedAnswer | None,
    ) -> str:
        """Relay the upstream's chunks; '' when it finished, else what went wrong. With
        ``assembled``, the chunks are also put back together (for the answer cache)."""
        try:
            async for line in lines:
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return ""
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    return "unreadable stream chunk"
                content = _content_chars(chunk)
                if assembled is not None:
                    assembled.add(chunk)
                if content and attempt.ttft_ms is None:
                    attempt.ttft_ms = round((time.perf_counter() - began) * 1000)
                attempt.streamed_chars += content
                if isinstance(chunk, dict) and chunk.get("usage"):
                    attempt.input_tokens, attempt.output_tokens = _usage(chunk)
                    if not call.include_usage and not chunk.get("choices"):
                        continue  # the usage chunk the gateway asked for itself
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                        "more_body": True,
                    }
                )
        except UpstreamError as exc:
            return _failure(exc).reason
        except OSError:
            return "client disconnected"
        return "stream ended without [DONE]"

    async def _relay(
        self,
        call: ChatCall,
        attempts: list[Attempt],
        began: float,
        lines: _Lines,
        receive: Receive,
        send: Send,
    ) -> None:
        attempt = attempts[-1]
        try:
            await _committed(call)
        except BaseException:
            lines.response.close()
            raise
        extra = _switchyard_headers(call, attempt.model, len(attempts) - 1, None)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    *_SECURITY_HEADERS,
                    *extra,
                ],
            }
        )
        # A client that goes away stops the upstream call too (its tokens cost money).
        assembled = StreamedAnswer() if call.cache is not None else None
        pump = asyncio.ensure_future(self._pump(call, attempt, began, lines, send, assembled))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not pump.done():
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
            gone.cancel()
            lines.response.close()
        failure = "client disconnected" if pump.cancelled() else pump.result()
        if failure and not attempt.output_tokens:
            # No usage chunk came: estimate what was produced (as the decision API does).
            attempt.input_tokens = call.decided.input_tokens
            attempt.output_tokens = -(-attempt.streamed_chars // 4)
        attempt.latency_ms = round((time.perf_counter() - began) * 1000)
        if failure:
            attempt.status = "error"
            attempt.escalation_reason = f"mid-stream: {failure}"
        if failure != "client disconnected":
            reason = UpstreamFailed("error", attempt.escalation_reason, retryable=True)
            _circuit_report(attempt.model, reason if failure else None)
        before = bool(settings.SWITCHYARD_GATEWAY_RECORD_BEFORE_ANSWER)
        if before:
            await self._recorded(call, attempts, attempt.status)
        tail = b"data: [DONE]\n\n"
        if failure:
            error = ApiError(
                502,
                "upstream_failed",
                f"The model {attempt.model.slug} failed mid-stream ({failure}); the answer "
                f"is incomplete (decision {call.decided.decision_id}).",
            )
            tail = b"data: " + orjson.dumps(openai_error_body(error)) + b"\n\n"
        answer = assembled.body() if assembled is not None and not failure else None
        stored = None
        if answer is not None and call.cache is not None:
            stored = self._cache_put(call, call.cache, answer, attempts)
        try:
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except OSError:
            pass
        finally:
            if not before:
                await self._recorded(call, attempts, attempt.status)
            if stored is not None:
                await stored


class _Lines:
    """An upstream SSE response, line by line, with the first data line read ahead."""

    def __init__(self, response: UpstreamResponse) -> None:
        self.response = response
        self._lines = response.iter_lines()
        self.first: str | None = None

    async def peek(self) -> None:
        async for line in self._lines:
            if line.startswith("data:"):
                self.first = line
                return

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        if self.first is not None:
            yield self.first
        async for line in self._lines:
            yield line


class _Choice:
    """One choice of a stream, put back together."""

    __slots__ = ("calls", "content", "finish", "function", "refusal", "role")

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] | None = None  # None: no content chunk (a tool call)
        self.refusal: list[str] | None = None
        self.calls: dict[int, dict[str, Any]] = {}  # tool call index: the call so far
        self.function: dict[str, str] | None = None  # a legacy ``function_call``
        self.finish = ""

    def add(self, delta: Mapping[str, Any]) -> bool:
        """Fold one delta in; False if it cannot be told how to."""
        if isinstance(delta.get("role"), str):
            self.role = delta["role"]
        for name in ("content", "refusal"):
            text = delta.get(name)
            if isinstance(text, str):
                parts = getattr(self, name)
                if parts is None:
                    parts = []
                    setattr(self, name, parts)
                parts.append(text)
        calls = delta.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                return False
            for part in calls:
                if not isinstance(part, dict) or not isinstance(part.get("index"), int):
                    return False
                call = self.calls.setdefault(
                    part["index"], {"id": "", "type": "function", "name": "", "arguments": ""}
                )
                for key in ("id", "type"):
                    if isinstance(part.get(key), str):
                        call[key] = part[key]
                if not _function_add(call, part.get("function")):
                    return False
        if delta.get("function_call"):
            self.function = self.function or {"name": "", "arguments": ""}
            if not _function_add(self.function, delta["function_call"]):
                return False
        return True

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": self.role,
            "content": "".join(self.content) if self.content is not None else None,
        }
        if self.refusal is not None:
            message["refusal"] = "".join(self.refusal)
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": c["type"],
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for _, c in sorted(self.calls.items())
            ]
        if self.function is not None:
            message["function_call"] = dict(self.function)
        return message


def _function_add(into: dict[str, Any], function: Any) -> bool:
    """Fold a streamed ``function`` part (name and arguments arrive in pieces) in."""
    if function is None:
        return True
    if not isinstance(function, dict):
        return False
    for key in ("name", "arguments"):
        if isinstance(function.get(key), str):
            into[key] += function[key]
    return True


class StreamedAnswer:
    """A streamed answer put back together as the chat completion a plain call returns, so
    a stream can fill the answer cache: text, refusals, tool calls (each call's id, type,
    name and arguments joined from their pieces by the call's index) and legacy function
    calls. A stream with a chunk it cannot read, or a choice that never finished, gives
    nothing."""

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}
        self._usage: Any = None
        self._usable = True

    def add(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            self._usable = False
            return
        if not self._head:
            self._head = {
                k: chunk[k] for k in ("id", "created", "model", "system_fingerprint") if k in chunk
            }
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            index = choice.get("index", 0) if isinstance(choice, dict) else None
            if not isinstance(delta, dict) or not isinstance(index, int):
                self._usable = False
                continue
            state = self._choices.setdefault(index, _Choice())
            if not state.add(delta):
                self._usable = False
            if isinstance(choice.get("finish_reason"), str):
                state.finish = choice["finish_reason"]

    def body(self) -> bytes | None:
        """The assembled ``chat.completion`` (JSON), or None if it cannot be told."""
        if (
            not self._usable
            or not self._choices
            or not all(c.finish for c in self._choices.values())
        ):
            return None
        completion: dict[str, Any] = {
            "id": self._head.get("id", ""),
            "object": "chat.completion",
            "created": self._head.get("created", 0),
            "model": self._head.get("model", ""),
            "choices": [
                {"index": index, "message": choice.message(), "finish_reason": choice.finish}
                for index, choice in sorted(self._choices.items())
            ],
        }
        if "system_fingerprint" in self._head:
            completion["system_fingerprint"] = self._head["system_fingerprint"]
        if self._usage is not None:
            completion["usage"] = self._usage
        return orjson.dumps(completion)


def completion_events(body: bytes, *, include_usage: bool) -> bytes:
    """A stored ``chat.completion`` as the SSE events of a stream (a cache hit asked for
    with ``stream: true``), as OpenAI streams one: per choice its role with its content (or
    ``null`` content for a tool call) and any refusal; then each tool call whole (index, id,
    type, name and arguments) or the legacy function call; then its finish reason; the
    usage chunk if the client asked for it; ``[DONE]``."""
    completion = orjson.loads(body)
    head = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    if completion.get("system_fingerprint"):
        head["system_fingerprint"] = completion["system_fingerprint"]
    events: list[dict[str, Any]] = []
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        index = choice.get("index", 0)
        delta: dict[str, Any] = {"role": message.get("role") or "assistant"}
        delta["content"] = message.get("content")
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        events.append({**head, "choices": [{"index": index, "delta": delta}]})
        for i, call in enumerate(message.get("tool_calls") or ()):
            part = {"index": i, **call}
            events.append({**head, "choices": [{"index": index, "delta": {"tool_calls": [part]}}]})
        if message.get("function_call"):
            delta = {"function_call": message["function_call"]}
            events.append({**head, "choices": [{"index": index, "delta": delta}]})
        end = {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}
        events.append({**head, "choices": [end]})
    if include_usage and completion.get("usage") is not None:
        events.append({**head, "choices": [], "usage": completion["usage"]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def _content_chars(chunk: Any) -> int:
    """Characters of output a stream chunk carries: content, and the names and arguments of
    tool and function calls."""
    if not isinstance(chunk, dict):
        return 0
    total = 0
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        content = delta.get("content")
        if isinstance(content, str):
            total += len(content)
        calls = delta.get("tool_calls")
        functions = (
            [c.get("function") for c in calls if isinstance(c, dict)]
            if isinstance(calls, list)
            else []
        )
        functions.append(delta.get("function_call"))
        for function in functions:
            if isinstance(function, dict):
                total += sum(
                    len(function[k])
                    for k in ("name", "arguments")
                    if isinstance(function.get(k), str)
                )
    return total


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _upstream_error(failure: UpstreamFailed, attempts: list[Attempt]) -> tuple[int, Any]:
    account = "; ".join(f"{a.model.slug}: {a.escalation_reason}" for a in attempts)
    if not failure.retryable and failure.http_status in (400, 422):
        error = ApiError(400, "upstream_rejected", f"The model refused the request ({account}).")
        return 400, openai_error_body(error)
    status = 504 if failure.status == "timeout" else 502
    error = ApiError(
        status, "upstream_failed", f"Every model the decision allows failed ({account})."
    )
    return status, openai_error_body(error)


def _switchyard_headers(
    call: ChatCall, model: ModelInfo, escalations: int, cost: str | None, cache: str = "miss"
) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"x-switchyard-decision-id", str(call.decided.decision_id).encode()),
        (b"x-switchyard-model", model.slug.encode()),
        (b"x-switchyard-tier", str(model.tier).encode()),
        (b"x-switchyard-escalations", str(escalations).encode()),
        (b"x-switchyard-cache", cache.encode()),
    ]
    if cost is not None:
        headers.append((b"x-switchyard-cost-usd", cost.encode()))
    return headers


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def _read_body(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "bad_request", "The client went away.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", "The request body is too large.")
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *_SECURITY_HEADERS,
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(
    send: Send, status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _respond(send, status, orjson.dumps(payload), extra)


application = Gateway()
