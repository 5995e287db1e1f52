"""Durable decision recording with group commit.

Every decision is in PostgreSQL before its response is sent. Committing each decision on
its own would cost one fsync per request; instead, request threads hand their rows to one
writer thread per process and wait. The writer takes everything waiting (up to a batch),
writes it with COPY in one transaction, commits, and wakes the waiters. Under light load a
batch holds one row and nothing waits; under heavy load one commit serves hundreds.

1. ``decision_record(row)`` enqueues the row and waits up to its deadline.
2. The writer inserts idempotency keys first (ON CONFLICT DO NOTHING): a row whose
   (application, request_id) is already taken is not written and its waiter is told
   "duplicate", so it can answer with the stored decision instead.
3. The rows are COPied and committed. Only then are the waiters released with "stored".
4. If PostgreSQL is unreachable, the writer reconnects and retries until each row's
   deadline; a row whose deadline passes is released with an error and its request answers
   503 — so a response never carries a decision that was not recorded. After a lost
   connection the writer first checks which rows did commit, so none is written twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict

import orjson
import psycopg
from django.db import connections

logger = logging.getLogger(__name__)

DECISION_COLUMNS = (
    "id", "created_at", "request_id", "application_id", "application", "team", "task_class",
    "model", "provider_model", "tier", "locality", "strategy", "confidence", "reason",
    "routing_table_version", "handoff_required", "data_classification", "pii_types",
    "input_tokens", "context_tokens", "max_output_tokens", "latency_budget_ms", "max_cost_usd",
    "decision_us", "end_user", "prompt", "prompt_expires_at", "prompt_template_id",
    "prompt_template_version", "retrieval_query", "retrieval_document_ids", "metadata", "path",
    "response",
)  # fmt: skip
_JSON_COLUMNS = {"metadata", "path", "response"}
_COPY_SQL = f"COPY telemetry_decision ({', '.join(DECISION_COLUMNS)}) FROM STDIN"
_ROW_PLACEHOLDER = "(" + ", ".join(["%s"] * len(DECISION_COLUMNS)) + ")"
_INSERT_SQL: dict[int, str] = {}


def _insert_sql(count: int) -> str:
    sql = _INSERT_SQL.get(count)
    if sql is None:
        columns = ", ".join(DECISION_COLUMNS)  # constants: nothing from the request
        sql = f"INSERT INTO telemetry_decision ({columns}) VALUES " + ", ".join(  # noqa: S608
            [_ROW_PLACEHOLDER] * count
        )
        if len(_INSERT_SQL) < 64:
            _INSERT_SQL[count] = sql
    return sql


class Reservation(TypedDict):
    """A worst-case amount to reserve against one budget when the decision is written."""

    budget_id: int
    amount_usd: float


class DecisionRow(TypedDict):
    id: uuid.UUID
    created_at: datetime
    request_id: str
    application_id: int
    application: str
    team: str
    task_class: str
    model: str
    provider_model: str
    tier: int
    locality: str
    strategy: str
    confidence: float
    reason: str
    routing_table_version: int
    handoff_required: bool
    data_classification: str
    pii_types: list[str]
    input_tokens: int
    context_tokens: int
    max_output_tokens: int
    latency_budget_ms: int | None
    max_cost_usd: float | None
    decision_us: int
    end_user: str
    prompt: str | None
    prompt_expires_at: datetime | None
    prompt_template_id: str
    prompt_template_version: str
    retrieval_query: str
    retrieval_document_ids: list[str]
    metadata: dict[str, Any]
    path: dict[str, Any]
    response: dict[str, Any]
    # Not a column: budget reservations the admission hook applies with the row's batch.
    reservations: list[Reservation]


# The admission hook: called inside the transaction that writes the rows, before they are
# written, with the rows about to be written (only when one of them carries reservations).
# Returns {row id: refusal detail} for the rows it refuses; those are not written.
AdmitHook = Callable[[psycopg.Cursor[Any], list[DecisionRow]], dict[uuid.UUID, dict[str, Any]]]


class RecordingFailed(Exception):
    """The decision could not be stored before its deadline."""


class RecordingRefused(Exception):
    """The admission hook refused the decision; ``detail`` says why (from the hook)."""

    def __init__(self, detail: dict[str, Any]) -> None:
        super().__init__(str(detail))
        self.detail = detail


def _copy_values(row: DecisionRow) -> tuple[Any, ...]:
    values = []
    for column in DECISION_COLUMNS:
        value = row[column]  # type: ignore[literal-required]
        if column in _JSON_COLUMNS:
            value = orjson.dumps(value).decode()
        values.append(value)
    return tuple(values)


def decision_rows_copy(cursor: psycopg.Cursor[Any], rows: Iterable[DecisionRow]) -> int:
    """COPY decision rows (no idempotency handling): the writer's and the bulk loaders' path."""
    count = 0
    with cursor.copy(_COPY_SQL) as copy:
        for row in rows:
            copy.write_row(_copy_values(row))
            count += 1
    return count


def connection_params() -> dict[str, Any]:
    """psycopg connection arguments for Django's default database (test database included)."""
    settings_dict = connections["default"].settings_dict
    params: dict[str, Any] = {
        "dbname": settings_dict["NAME"],
        "user": settings_dict.get("USER") or None,
        "password": settings_dict.get("PASSWORD") or None,
        "host": settings_dict.get("HOST") or None,
        "port": settings_dict.get("PORT") or None,
        "connect_timeout": 2,
        "application_name": "switchyard-recorder",
    }
    options = {k: v for k, v in settings_dict.get("OPTIONS", {}).items() if isinstance(v, str)}
    params.update(options)
    return {k: v for k, v in params.items() if v is not None}


@dataclass
class _Pending:
    row: DecisionRow
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str = ""  # "stored" | "duplicate" | "refused" | "failed"
    error: str = ""
    refusal: dict[str, Any] = field(default_factory=dict)


class DecisionRecorder:
    def __init__(self, *, max_batch: int = 500) -> None:
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._params: dict[str, Any] | None = None
        self.batches = 0
        self.rows = 0
        self.admit: AdmitHook | None = None

    # -- request side ------------------------------------------------------------------

    def record(self, row: DecisionRow, *, timeout_s: float = 5.0) -> str:
        """Store ``row`` durably; returns "stored" or "duplicate", or raises RecordingFailed."""
        self._ensure_thread()
        pending = _Pending(row=row, deadline=time.monotonic() + timeout_s)
        self._queue.put(pending)
        if not pending.done.wait(timeout_s + 1.0):
            raise RecordingFailed("timed out waiting for the decision to be stored")
        if pending.outcome == "failed":
            raise RecordingFailed(pending.error or "the decision could not be stored")
        if pending.outcome == "refused":
            raise RecordingRefused(pending.refusal)
        return pending.outcome

    def close(self) -> None:
        """Close the writer's connection (it reopens on the next record)."""
        if self._thread is None or not self._thread.is_alive():
            return
        marker = _Pending(row=None, deadline=time.monotonic() + 5)  # type: ignore[arg-type]
        self._queue.put(marker)
        marker.done.wait(5)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                # Read connection settings on the request thread (the test database's name
                # is only set there), then write from a dedicated thread and connection.
                self._params = connection_params()
                self._thread = threading.Thread(
                    target=self._run, name="decision-recorder", daemon=True
                )
                self._thread.start()

    # -- writer side -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first.row is None:  # close request
                self._drop_connection()
                first.done.set()
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item.row is None:
                    item.done.set()  # a close request during a batch: the batch needs it open
                    continue
                batch.append(item)
            try:
                self._write_with_retry(batch)
            except Exception as exc:  # never let the writer thread die
                logger.exception("decision recorder failed a batch")
                for item in batch:
                    if not item.done.is_set():
                        item.outcome, item.error = "failed", str(exc)
                        item.done.set()

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            assert self._params is not None
            # Autocommit: a batch without idempotency keys is one INSERT statement, i.e. one
            # round trip and one commit.
            self._conn = psycopg.connect(**self._params, autocommit=True)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken
                logger.debug("closing a broken recorder connection failed", exc_info=True)
        self._conn = None

    def _write_with_retry(self, batch: list[_Pending]) -> None:
        attempt = 0
        maybe_written = False
        while batch:
            now = time.monotonic()
            expired = [p for p in batch if p.deadline <= now]
            for item in expired:
                item.outcome, item.error = "failed", "database unavailable"
                item.done.set()
            batch = [p for p in batch if p.deadline > now]
            if not batch:
                return
            try:
                conn = self._connect()
                self._write(conn, batch, maybe_written=maybe_written)
                return
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                # The commit may or may not have happened: check before writing again.
                maybe_written = True
                attempt += 1
                logger.warning("recorder: database unavailable (%s); retry %d", exc, attempt)
                self._drop_connection()
                time.sleep(min(0.05 * 2**attempt, 0.5))

    def _write(
        self, conn: psycopg.Connection[Any], batch: list[_Pending], *, maybe_written: bool
    ) -> None:
        if (
            not maybe_written
            and len(batch) <= 100
            and not any(p.row["request_id"] or p.row["reservations"] for p in batch)
        ):
            with conn.cursor() as cursor:
                values: list[Any] = []
                for item in batch:
                    values.extend(_copy_values(item.row))
                cursor.execute(_insert_sql(len(batch)), values)
            for item in batch:
                item.outcome = "stored"
            self.batches += 1
            self.rows += len(batch)
            for item in batch:
                item.done.set()
            return
        with conn.transaction(), conn.cursor() as cursor:
            if maybe_written:
                already = _stored_ids(cursor, [p.row for p in batch])
                for item in batch:
                    if item.row["id"] in already:
                        item.outcome = "stored"
                todo = [p for p in batch if not item_done(p)]
            else:
                todo = batch
            keyed = [p for p in todo if p.row["request_id"]]
            duplicates: set[uuid.UUID] = set()
            if keyed:
                cursor.executemany(
                    "INSERT INTO telemetry_decision_idempotency "
                    "(application_id, request_id, decision_id, created_at) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING decision_id",
                    [
                        (
                            p.row["application_id"],
                            p.row["request_id"],
                            p.row["id"],
                            p.row["created_at"],
                        )
                        for p in keyed
                    ],
                    returning=True,
                )
                inserted: set[uuid.UUID] = set()
                while True:
                    fetched = cursor.fetchone()
                    if fetched is not None:
                        inserted.add(fetched[0])
                    if not cursor.nextset():
                        break
                duplicates = {p.row["id"] for p in keyed} - inserted
            to_write = [p for p in todo if p.row["id"] not in duplicates]
            refused: dict[uuid.UUID, dict[str, Any]] = {}
            if self.admit is not None and any(p.row["reservations"] for p in to_write):
                refused = self.admit(cursor, [p.row for p in to_write])
                refused_keyed = [
                    p for p in to_write if p.row["id"] in refused and p.row["request_id"]
                ]
                if refused_keyed:
                    cursor.execute(
                        "DELETE FROM telemetry_decision_idempotency WHERE decision_id = ANY(%s)",
                        [[p.row["id"] for p in refused_keyed]],
                    )
            decision_rows_copy(cursor, (p.row for p in to_write if p.row["id"] not in refused))
            for item in todo:
                if item.row["id"] in duplicates:
                    item.outcome = "duplicate"
                elif item.row["id"] in refused:
                    item.outcome, item.refusal = "refused", refused[item.row["id"]]
                else:
                    item.outcome = "stored"
        self.batches += 1
        self.rows += len(batch)
        for item in batch:
            item.done.set()


def item_done(pending: _Pending) -> bool:
    return pending.outcome != ""


def _stored_ids(cursor: psycopg.Cursor[Any], rows: Sequence[DecisionRow]) -> set[uuid.UUID]:
    cursor.execute(
        "SELECT id FROM telemetry_decision WHERE id = ANY(%s) AND created_at = ANY(%s)",
        [[r["id"] for r in rows], list({r["created_at"] for r in rows})],
    )
    return {row[0] for row in cursor.fetchall()}


recorder = DecisionRecorder()
