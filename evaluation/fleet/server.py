"""OpenAI-compatible HTTP server for the replay fleet (standard library only, no Django).

Endpoints
---------
``GET  /healthz``                 liveness plus a little metadata
``GET  /v1/models``               OpenAI list shape (``x_fleet`` carries the model config)
``GET  /v1/models/{slug}``        one model
``POST /v1/chat/completions``     OpenAI chat completion (``"stream": true``: server-sent
                                  events, the answer in a few chunks spread over its latency)
``GET  /admin/stats``             per-model request counts by HTTP status
``GET  /admin/models``            effective per-model state (``down``, ``fail_rate``)
``POST /admin/models/{slug}``     ``{"fail_rate": 1.0}`` and/or ``{"down": true}``
``POST /admin/reset``             restore configured fail rates, clear outages, stats, attempts

Failure injection (``fail_rate``) is deterministic per ``(model, prompt, attempt)`` where
``attempt`` counts earlier requests for the same pair on this server. The first request for a
pair therefore always behaves the same way, while client retries can eventually succeed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from evaluation.workload import DEFAULT_SEED, workload_index

from .answers import (
    DEFAULT_FLEET,
    FLEET_PROVIDER_ALIASES,
    Answer,
    AnswerEngine,
    FleetModel,
    estimate_tokens,
    gsm8k_load,
    mentions_json,
    normalise_prompt,
    sample_latency_ms,
)
from .stable import stable_int, stable_unit

__all__ = [
    "FleetServer",
    "FleetState",
    "RunningFleet",
    "fleet_start",
]

MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_STALL_S = 20.0
_MAX_TRACKED_ATTEMPTS = 200_000
_MODELS_CREATED = 1_700_000_000  # fixed "created" timestamp for /v1/models entries


class _RequestError(Exception):
    """An error that maps onto an OpenAI-style error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.close = close

    def payload(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "code": self.code,
                "param": self.param,
            }
        }


@dataclass
class _ModelRuntime:
    model: FleetModel
    fail_rate: float
    down: bool = False
    statuses: Counter[int] = field(default_factory=Counter)


class FleetState:
    """Thread-safe mutable state: outages, fail-rate overrides, stats and retry attempts."""

    def __init__(self, models: Sequence[FleetModel]) -> None:
        self._lock = threading.Lock()
        self._runtime: dict[str, _ModelRuntime] = {
            m.slug: _ModelRuntime(model=m, fail_rate=m.fail_rate) for m in models
        }
        self._attempts: OrderedDict[int, int] = OrderedDict()
        self._unknown_model_requests = 0
        self.started_at = time.time()

    @property
    def slugs(self) -> list[str]:
        return list(self._runtime)

    def model(self, slug: str) -> FleetModel | None:
        runtime = self._runtime.get(slug) or self._runtime.get(FLEET_PROVIDER_ALIASES.get(slug, ""))
        return runtime.model if runtime is not None else None

    def models(self) -> list[FleetModel]:
        return [r.model for r in self._runtime.values()]

    def configure(
        self, slug: str, *, fail_rate: float | None, down: bool | None
    ) -> dict[str, object]:
        with self._lock:
            runtime = self._runtime[slug]
            if fail_rate is not None:
                runtime.fail_rate = fail_rate
            if down is not None:
                runtime.down = down
            return self._describe(runtime)

    def reset(self) -> None:
        with self._lock:
            for runtime in self._runtime.values():
                runtime.fail_rate = runtime.model.fail_rate
                runtime.down = False
                runtime.statuses.clear()
            self._attempts.clear()
            self._unknown_model_requests = 0

    def describe(self) -> dict[str, dict[str, object]]:
        with self._lock:
            return {slug: self._describe(r) for slug, r in self._runtime.items()}

    @staticmethod
    def _describe(runtime: _ModelRuntime) -> dict[str, object]:
        return {
            "slug": runtime.model.slug,
            "down": runtime.down,
            "fail_rate": runtime.fail_rate,
            "configured_fail_rate": runtime.model.fail_rate,
        }

    def admit(
        self, slug: str, prompt_key: str, *, base_rate: float = 0.0
    ) -> tuple[bool, float, int]:
        """Return ``(down, fail_rate, attempt)`` for a new request to ``slug``.

        ``base_rate`` is the model's own transient error rate for this request (its skill
        profile on workload items); an admin-set fail rate above it takes precedence.
        """
        with self._lock:
            runtime = self._runtime[slug]
            attempt = 0
            rate = max(runtime.fail_rate, base_rate)
            if rate > 0.0 and not runtime.down:
                digest = stable_int("attempt", slug, prompt_key)
                attempt = self._attempts.pop(digest, 0)
                self._attempts[digest] = attempt + 1
                if len(self._attempts) > _MAX_TRACKED_ATTEMPTS:
                    self._attempts.popitem(last=False)
            return runtime.down, rate, attempt

    def record(self, slug: str | None, status: int) -> None:
        with self._lock:
            runtime = self._runtime.get(slug) if slug is not None else None
            if runtime is None:
                self._unknown_model_requests += 1
            else:
                runtime.statuses[status] += 1

    def stats(self) -> dict[str, object]:
        with self._lock:
            per_model: dict[str, object] = {}
            total = 0
            for slug, runtime in self._runtime.items():
                requests = sum(runtime.statuses.values())
                total += requests
                per_model[slug] = {
                    "requests": requests,
                    "ok": runtime.statuses.get(200, 0),
                    "errors": requests - runtime.statuses.get(200, 0),
                    "by_status": {str(k): v for k, v in sorted(runtime.statuses.items())},
                    "down": runtime.down,
                    "fail_rate": runtime.fail_rate,
                }
            return {
                "total_requests": total,
                "unknown_model_requests": self._unknown_model_requests,
                "uptime_s": round(time.time() - self.started_at, 3),
                "models": per_model,
            }


class FleetServer(ThreadingHTTPServer):
    """Threaded HTTP/1.1 server holding the fleet configuration and state."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        models: Sequence[FleetModel],
        *,
        engine: AnswerEngine,
        latency_scale: float = 1.0,
        access_log: bool = False,
        stall_s: float | None = None,
    ) -> None:
        if latency_scale < 0:
            raise ValueError("latency_scale must be >= 0")
        if stall_s is not None and stall_s < 0:
            raise ValueError("stall_s must be >= 0")
        slugs = [m.slug for m in models]
        duplicates = sorted({s for s in slugs if slugs.count(s) > 1})
        if duplicates:
            raise ValueError(f"duplicate model slug(s): {', '.join(duplicates)}")
        if not models:
            raise ValueError("the fleet needs at least one model")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.engine = engine
        self.state = FleetState(models)
        self.latency_scale = latency_scale
        # A stalled request (a workload item the model's profile times out on) answers this
        # late: past the tier-1 client timeout (15 s) at full scale, never at scale 0.
        self.stall_s = DEFAULT_STALL_S * latency_scale if stall_s is None else stall_s
        self.access_log = access_log
        super().__init__(address, FleetRequestHandler)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        """Stay quiet when a client drops an (idle keep-alive) connection; report the rest."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def _message_text(content: object) -> str:
    """Text of an OpenAI message ``content`` (a string or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(cast(str, part["text"]))
        return "\n".join(parts)
    raise _RequestError(400, "message content must be a string, an array or null", param="messages")


@dataclass(frozen=True, slots=True)
class _ChatRequest:
    model: FleetModel
    messages: list[tuple[str, str]]
    prompt: str
    max_tokens: int | None
    json_mode: bool
    json_schema: Mapping[str, object] | None
    stream: bool = False
    include_usage: bool = False
    tool: Mapping[str, Any] | None = None  # the function the answer calls (``tools``)


class FleetRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SwitchyardFleet/1.0"
    sys_version = ""
    timeout = 120  # seconds an idle keep-alive connection is kept open
    # Headers and body are separate writes: without TCP_NODELAY, Nagle + delayed ACK would add
    # ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True

    @property
    def fleet(self) -> FleetServer:
        return cast(FleetServer, self.server)

    # -- plumbing ---------------------------------------------------------------------------

    def log_message(self, format: str, *args: object) -> None:
        if self.fleet.access_log:
            super().log_message(format, *args)

    def _send_json(
        self, status: int, payload: object, headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, err: _RequestError) -> None:
        if err.close:
            self.close_connection = True
        self._send_json(err.status, err.payload(), err.headers)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            raise _RequestError(400, "invalid Content-Length header", close=True) from None
        if length > MAX_BODY_BYTES:
            raise _RequestError(413, "request body too large", close=True)
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _RequestError(400, "malformed chunked body", close=True) from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # discard trailers
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise _RequestError(413, "request body too large", close=True)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(8)  # CRLF after each chunk

    def _json_body(self) -> dict[str, object]:
        body = self._read_body()
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _RequestError(
                400, f"could not parse JSON body: {exc}", code="invalid_json"
            ) from None
        if not isinstance(data, dict):
            raise _RequestError(400, "JSON body must be an object", code="invalid_json")
        return cast(dict[str, object], data)

    def _route(self) -> tuple[str, list[str]]:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        return path, [unquote(p) for p in path.strip("/").split("/") if p]

    def _dispatch(self, method: str) -> None:
        path, parts = self._route()
        try:
            if method == "GET":
                self._get(path, parts)
            else:
                self._post(path, parts)
        except _RequestError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # pragma: no cover - defensive
            self.close_connection = True
            self._send_error(
                _RequestError(500, f"internal fleet error: {exc!r}", type_="server_error")
            )

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- GET --------------------------------------------------------------------------------

    def _get(self, path: str, parts: list[str]) -> None:
        fleet = self.fleet
        if path == "/healthz":
            self._send_json(
                200,
                {
                    "status": "ok",
                    "models": len(fleet.state.slugs),
                    "gsm8k_rows": len(fleet.engine.gsm8k),
                    "workload_items": len(fleet.engine.workload),
                    "latency_scale": fleet.latency_scale,
                },
            )
        elif path == "/v1/models":
            self._send_json(
                200,
                {"object": "list", "data": [_model_entry(m) for m in fleet.state.models()]},
            )
        elif len(parts) == 3 and parts[:2] == ["v1", "models"]:
            model = fleet.state.model(parts[2])
            if model is None:
                raise _model_not_found(parts[2])
            self._send_json(200, _model_entry(model))
        elif path == "/admin/stats":
            self._send_json(200, fleet.state.stats())
        elif path == "/admin/models":
            self._send_json(200, {"models": fleet.state.describe()})
        else:
            raise _not_found(path)

    # -- POST -------------------------------------------------------------------------------

    def _post(self, path: str, parts: list[str]) -> None:
        if path == "/v1/chat/completions":
            self._chat_completions()
        elif len(parts) == 3 and parts[:2] == ["admin", "models"]:
            self._admin_model(parts[2])
        elif path == "/admin/reset":
            self._read_body()
            self.fleet.state.reset()
            self._send_json(200, {"status": "reset"})
        else:
            self._read_body()  # keep the keep-alive stream in sync
            raise _not_found(path)

    def _admin_model(self, slug: str) -> None:
        data = self._json_body()
        state = self.fleet.state
        model = state.model(slug)
        if model is None:
            raise _model_not_found(slug)
        slug = model.slug  # an alias configures the model it names
        unknown = sorted(set(data) - {"fail_rate", "down"})
        if unknown:
            raise _RequestError(400, f"unknown admin field(s): {', '.join(unknown)}")
        fail_rate = data.get("fail_rate")
        down = data.get("down")
        if fail_rate is not None and (
            isinstance(fail_rate, bool)
            or not isinstance(fail_rate, (int, float))
            or not 0.0 <= float(fail_rate) <= 1.0
        ):
            raise _RequestError(400, "fail_rate must be a number within [0, 1]", param="fail_rate")
        if down is not None and not isinstance(down, bool):
            raise _RequestError(400, "down must be a boolean", param="down")
        described = state.configure(
            slug,
            fail_rate=float(fail_rate) if fail_rate is not None else None,
            down=down,
        )
        self._send_json(200, described)

    def _chat_completions(self) -> None:
        fleet = self.fleet
        slug: str | None = None
        try:
            data = self._json_body()
            raw_model = data.get("model")
            if isinstance(raw_model, str):
                slug = raw_model
            request = _parse_chat_request(data, fleet)
        except _RequestError as err:
            fleet.state.record(slug, err.status)
            raise

        model = request.model
        prompt_key = normalise_prompt(request.prompt)
        item = fleet.engine.workload.get(prompt_key)
        skill = fleet.engine.skill(model) if item is not None else None
        down, fail_rate, attempt = fleet.state.admit(
            model.slug, prompt_key, base_rate=skill.error_rate if skill else 0.0
        )
        failure = _injected_failure(model.slug, prompt_key, down, fail_rate, attempt)
        if failure is not None:
            fleet.state.record(model.slug, failure.status)
            raise failure

        answer = fleet.engine.answer(
            model, request.prompt, json_mode=request.json_mode, json_schema=request.json_schema
        )
        latency_ms = sample_latency_ms(model, request.prompt) * fleet.latency_scale
        stalled = (
            item is not None
            and skill is not None
            and fleet.stall_s > 0
            and stable_unit("stall", model.slug, item.id) < skill.timeout_rate
        )
        if stalled:
            latency_ms = max(latency_ms, fleet.stall_s * 1000.0)
        payload = _completion_payload(request, answer, latency_ms)
        if request.stream:
            fleet.state.record(model.slug, 200)
            self._send_stream(request, payload, latency_ms)
            return
        if latency_ms > 0:
            time.sleep(latency_ms / 1000.0)
        fleet.state.record(model.slug, 200)
        self._send_json(200, payload)

    def _send_stream(
        self, request: _ChatRequest, payload: Mapping[str, Any], latency_ms: float
    ) -> None:
        """The completion as server-sent events: a fifth of the latency before the first
        chunk, the rest spread between the content chunks; then the connection closes."""
        chunks = _stream_chunks(request, payload)
        gap_s = latency_ms * 0.8 / 1000.0 / max(1, len(chunks) - 1)
        if latency_ms > 0:
            time.sleep(latency_ms * 0.2 / 1000.0)
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for i, chunk in enumerate(chunks):
            if i and gap_s > 0:
                time.sleep(gap_s)
            data = json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _not_found(path: str) -> _RequestError:
    return _RequestError(404, f"no route for {path}", code="not_found")


def _model_not_found(slug: str) -> _RequestError:
    return _RequestError(
        404,
        f"The model `{slug}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def _model_entry(model: FleetModel) -> dict[str, object]:
    return {
        "id": model.slug,
        "object": "model",
        "created": _MODELS_CREATED,
        "owned_by": "switchyard-fleet",
        "x_fleet": model.as_dict(),
    }


def _parse_chat_request(data: Mapping[str, object], fleet: FleetServer) -> _ChatRequest:
    raw_model = data.get("model")
    if not isinstance(raw_model, str) or not raw_model:
        raise _RequestError(400, "`model` must be a non-empty string", param="model")
    model = fleet.state.model(raw_model)
    if model is None:
        raise _model_not_found(raw_model)

    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _RequestError(400, "`messages` must be a non-empty array", param="messages")
    messages: list[tuple[str, str]] = []
    for item in raw_messages:
        if not isinstance(item, Mapping) or not isinstance(item.get("role"), str):
            raise _RequestError(
                400, "each message must be an object with a string `role`", param="messages"
            )
        messages.append((cast(str, item["role"]), _message_text(item.get("content"))))

    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _RequestError(400, "`stream` must be a boolean", param="stream")
    options = data.get("stream_options")
    include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise _RequestError(400, "`max_tokens` must be a positive integer", param="max_tokens")
    temperature = data.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, (int, float))
    ):
        raise _RequestError(400, "`temperature` must be a number", param="temperature")

    json_mode = False
    json_schema: Mapping[str, object] | None = None
    response_format = data.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, Mapping):
            raise _RequestError(400, "`response_format` must be an object", param="response_format")
        kind = response_format.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise _RequestError(
                400,
                "`response_format.type` must be one of text, json_object, json_schema",
                param="response_format",
            )
        json_mode = kind != "text"
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            if isinstance(schema, Mapping):
                json_schema = cast(Mapping[str, object], schema)

    tool = _tool_called(data.get("tools"), data.get("tool_choice"))
    user_texts = [text for role, text in messages if role == "user"]
    prompt = user_texts[-1] if user_texts else messages[-1][1]
    if not json_mode:
        json_mode = any(mentions_json(text) for _, text in messages)
    return _ChatRequest(
        model=model,
        messages=messages,
        prompt=prompt,
        max_tokens=max_tokens,
        json_mode=json_mode,
        json_schema=json_schema,
        stream=bool(stream),
        include_usage=include_usage,
        tool=tool,
    )


def _tool_called(tools: object, choice: object) -> Mapping[str, Any] | None:
    """The function a request with ``tools`` gets called: the one ``tool_choice`` names,
    else the first; none for ``tool_choice: "none"`` or without function tools."""
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        raise _RequestError(400, "`tools` must be an array of tool objects", param="tools")
    functions = [
        t["function"]
        for t in tools
        if t.get("type") == "function"
        and isinstance(t.get("function"), Mapping)
        and isinstance(t["function"].get("name"), str)
    ]
    if not functions or choice == "none":
        return None
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        named = choice["function"].get("name")
        chosen = next((f for f in functions if f["name"] == named), None)
        if chosen is None:
            raise _RequestError(400, f"`tool_choice` names no tool {named!r}", param="tool_choice")
        return cast(Mapping[str, Any], chosen)
    return cast(Mapping[str, Any], functions[0])


def _tool_call(request: _ChatRequest) -> dict[str, Any]:
    """A deterministic call of the request's tool: every declared parameter (the first
    required one first) gets the prompt's text; without parameters, ``{}``."""
    assert request.tool is not None
    parameters = request.tool.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
    names = list(properties) if isinstance(properties, Mapping) else []
    arguments = {name: request.prompt[:200] for name in names}
    return {
        "id": f"call_{stable_int('tool', request.model.slug, request.prompt):016x}"[:29],
        "type": "function",
        "function": {
            "name": request.tool["name"],
            "arguments": json.dumps(arguments, ensure_ascii=False, separators=(",", ":")),
        },
    }


def _injected_failure(
    slug: str, prompt_key: str, down: bool, fail_rate: float, attempt: int
) -> _RequestError | None:
    if down:
        return _RequestError(
            503,
            f"The model `{slug}` is currently unavailable (simulated outage).",
            type_="server_error",
            code="model_unavailable",
        )
    if fail_rate <= 0.0:
        return None
    if stable_unit("fail", slug, prompt_key, str(attempt)) >= fail_rate:
        return None
    if stable_int("fail-kind", slug, prompt_key, str(attempt)) % 2 == 0:
        return _RequestError(
            429,
            f"Rate limit reached for `{slug}` (simulated). Please retry.",
            type_="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": "0"},
        )
    return _RequestError(
        500,
        "The server had an error while processing your request (simulated).",
        type_="server_error",
        code="internal_error",
    )


def _completion_payload(
    request: _ChatRequest, answer: Answer, latency_ms: float
) -> dict[str, object]:
    content = answer.content
    finish_reason = "stop"
    if request.max_tokens is not None and estimate_tokens(content) > request.max_tokens:
        content = content[: request.max_tokens * 4]
        finish_reason = "length"
    prompt_tokens = sum(estimate_tokens(text) + 4 for _, text in request.messages) + 2
    completion_tokens = estimate_tokens(content)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if request.tool is not None:
        call = _tool_call(request)
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        finish_reason = "tool_calls"
        completion_tokens = estimate_tokens(call["function"]["arguments"]) + 4
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model.slug,
        "system_fingerprint": f"fleet-{request.model.slug}",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "x_fleet": {
            "source": answer.source,
            "correct": answer.correct,
            "latency_ms": round(latency_ms, 3),
        },
    }


def _stream_chunks(request: _ChatRequest, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``chat.completion.chunk`` objects of a completion: the role, the content in up to four
    pieces, the finish reason, and the usage when ``stream_options.include_usage`` asks."""
    choice = payload["choices"][0]
    calls = choice["message"].get("tool_calls")
    content: str = calls[0]["function"]["arguments"] if calls else choice["message"]["content"]
    size = max(1, -(-len(content) // 4))
    pieces = [content[i : i + size] for i in range(0, len(content), size)] or [""]
    base = {
        "id": payload["id"],
        "object": "chat.completion.chunk",
        "created": payload["created"],
        "model": payload["model"],
        "system_fingerprint": payload["system_fingerprint"],
    }
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": piece} for piece in pieces]
    if calls:  # as OpenAI streams a tool call: id and name first, then the arguments
        call = calls[0]
        head = {**call, "index": 0, "function": {"name": call["function"]["name"], "arguments": ""}}
        deltas = [{"role": "assistant", "content": None, "tool_calls": [head]}]
        deltas += [
            {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces
        ]
    chunks = [
        {**base, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]}
        for d in deltas
    ]
    last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}
    chunks.append({**base, "choices": [last]})
    if request.include_usage:
        chunks.append({**base, "choices": [], "usage": payload["usage"]})
    return chunks


# --------------------------------------------------------------------------------------------
# Programmatic API
# --------------------------------------------------------------------------------------------


class RunningFleet:
    """A fleet serving in a background thread. Use ``.url`` and ``.stop()`` (or ``with``)."""

    def __init__(self, server: FleetServer, thread: threading.Thread) -> None:
        self.server = server
        self._thread = thread
        self._stopped = False
        host, port = server.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        shown = self.host
        if shown in ("0.0.0.0", ""):  # noqa: S104 - display only, not a bind
            shown = "127.0.0.1"
        elif shown == "::":
            shown = "::1"
        if ":" in shown:
            shown = f"[{shown}]"
        self.url = f"http://{shown}:{self.port}"

    @property
    def models(self) -> list[FleetModel]:
        return self.server.state.models()

    @property
    def state(self) -> FleetState:
        return self.server.state

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> RunningFleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningFleet(url={self.url!r}, models={len(self.models)})"


def fleet_start(
    host: str = "127.0.0.1",
    port: int = 0,
    models: Iterable[FleetModel] = DEFAULT_FLEET,
    gsm8k_path: str | os.PathLike[str] | None = None,
    latency_scale: float = 1.0,
    *,
    access_log: bool = False,
    stall_s: float | None = None,
    workload_seed: int = DEFAULT_SEED,
) -> RunningFleet:
    """Start a fleet in a daemon background thread and return once it accepts connections.

    The fleet answers the project's generated workload (``workload_seed``) and, with
    ``gsm8k_path``, replays a RouteLLM GSM8K recording too.
    """
    gsm8k = gsm8k_load(gsm8k_path) if gsm8k_path is not None else None
    server = FleetServer(
        (host, port),
        list(models),
        engine=AnswerEngine(gsm8k, workload_index(seed=workload_seed)),
        latency_scale=latency_scale,
        access_log=access_log,
        stall_s=stall_s,
    )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.2},
        name=f"fleet-{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return RunningFleet(server, thread)
