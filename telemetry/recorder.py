"""Durable decision recording with group commit.

Every decision is in PostgreSQL before its response is sent. Committing each decision on
its own would cost one fsync per request; instead, request threads hand their rows to one
writer thread per process and wait. The writer takes everything waiting (up to a batch),
writes it, commits, and only then wakes the waiters. Under light load a batch holds one row
and nothing waits; under heavy load one commit serves hundreds.

1. ``recorder.record(row)`` enqueues the row (``RecordingBusy`` when the bounded queue is
   full) and waits up to its deadline.
2. Rows that carry budget reservations first pass the admission hook (telemetry.budgets:
   holds carved in memory out of this process's budget leases, so usually no statement at
   all); refused rows are answered at once. Then a small batch without idempotency keys is
   one autocommit INSERT. Any other batch is one transaction: idempotency keys first (a
   live key already taken makes the row a "duplicate", an expired one is taken over), then
   COPY, then COMMIT. A row keeps its holds across attempts; a row certainly not stored
   gives them back.
   ``recorder.submit`` (the gateway) hands over a row whose holds the hook could take at
   once in memory (``admit_now``) and returns without waiting: the caller overlaps its own
   work with the COMMIT and acknowledges nothing before the row's future says "stored".
3. Outcomes are decided only after COMMIT returns. A failure before or during COMMIT leaves
   every row of the attempt uncertain: the next attempt first reads which of their ids are
   stored (and which keys they own) and writes only the rest, so nothing acknowledged is
   lost and nothing is written twice.
4. If PostgreSQL rejects a batch's data (a NUL, a value too long), the batch is split in
   halves and each retried, so only the offending row fails (``RecordingInvalid``).
5. If PostgreSQL is unreachable, the writer reconnects and retries until each row's
   deadline; a row whose deadline passes is released with an error (503). The connection
   has connect, statement and TCP keep-alive timeouts; a writer stuck in one attempt longer
   than ``hang_s`` is abandoned (its backend terminated, its results discarded) and a new
   writer re-checks and writes its rows.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypedDict

import orjson
import psycopg
from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

DECISION_COLUMNS = (
    "id", "created_at", "request_id", "application_id", "application", "team", "task_class",
    "model", "provider_model", "tier", "locality", "strategy", "confidence", "reason",
    "routing_table_version", "handoff_required", "data_classification", "pii_types",
    "input_tokens", "context_tokens", "max_output_tokens", "latency_budget_ms", "max_cost_usd",
    "decision_us", "end_user", "prompt", "prompt_expires_at", "prompt_template_id",
    "prompt_template_version", "retrieval_query", "retrieval_document_ids", "metadata", "path",
    "response", "budget_holds",
)  # fmt: skip
_JSON_COLUMNS = {"metadata", "path", "response", "budget_holds"}
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
    # What the admission hook held for the row against budgets, written with it.
    budget_holds: list[list[Any]]
    # Not columns. The worst cases the admission hook must hold before the row is written,
    # and the sha256 of the canonical request body, stored with the idempotency key.
    reservations: list[Reservation]
    request_sha256: str


class Admission(Protocol):
    """The admission hook (telemetry.budgets.BudgetLeases): holds budget for rows before
    the writer writes them, outside any transaction, on the writer's connection."""

    def admit(
        self, conn: psycopg.Connection[Any], rows: Sequence[DecisionRow]
    ) -> dict[uuid.UUID, dict[str, Any]]:
        """Set the holds of rows carrying reservations and no holds yet; return {row id:
        refusal detail} for the rows it refuses (those are not written)."""
        ...

    def admit_now(self, row: DecisionRow) -> bool:
        """Set the holds of ``row`` from what is open in memory, on no connection, if that
        covers every budget it reserves against; False (nothing held) otherwise."""
        ...

    def give_back(self, rows: Iterable[DecisionRow]) -> None:
        """Rows that are certainly not stored (rejected, or another row took their key)."""
        ...

    def tick(self, conn: psycopg.Connection[Any], *, close_all: bool = False) -> None:
        """Housekeeping between batches and when idle (close leases past their time)."""
        ...

    def has_open(self) -> bool:
        """Whether ``tick`` has anything to do later (the writer wakes up for it)."""
        ...


class RecordingFailed(Exception):
    """The decision could not be stored before its deadline."""


class RecordingBusy(RecordingFailed):
    """The recorder's queue is full: the request is refused at once (503, retry)."""


class RecordingInvalid(RecordingFailed):
    """PostgreSQL rejected this row's data (the rest of its batch was stored).

    ``field`` names the request field at fault when it can be told, else it is None."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class RecordingRefused(Exception):
    """The admission hook refused the decision; ``detail`` says why (from the hook)."""

    def __init__(self, detail: dict[str, Any]) -> None:
        super().__init__(str(detail))
        self.detail = detail


# The batch as one JSON document, one parameter: the statement is the same for every batch
# size, so psycopg converts it once (it re-parses statements of more than 50 parameters on
# every call) and PostgreSQL prepares it once; orjson writes the whole batch in one call
# instead of psycopg adapting 35 values a row. Measured in process: about a fifth less CPU
# per decision than the multi-row VALUES statement.
def document_insert_sql(table: str, columns: Sequence[str]) -> str:
    """INSERT of the rows of one JSON array (its only parameter) into ``table`` — constant
    names only, never anything from a request."""
    names = ", ".join(columns)
    return (
        f"INSERT INTO {table} ({names}) SELECT {names} "  # noqa: S608 (constant names)
        f"FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb)"
    )


_JSON_INSERT_SQL = document_insert_sql("telemetry_decision", DECISION_COLUMNS)


def _rows_insert(cursor: psycopg.Cursor[Any], rows: Sequence[DecisionRow]) -> None:
    """INSERT the rows in one statement (no idempotency handling)."""
    try:
        document = orjson.dumps(
            [{column: row[column] for column in DECISION_COLUMNS} for row in rows],  # type: ignore[literal-required]
            option=orjson.OPT_NAIVE_UTC,
        )
    except orjson.JSONEncodeError:  # a value JSON cannot carry: psycopg adapts it
        values: list[Any] = []
        for row in rows:
            values.extend(_copy_values(row))
        cursor.execute(_insert_sql(len(rows)), values)
        return
    cursor.execute(_JSON_INSERT_SQL, (document.decode(),))


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
    }
    options = {k: v for k, v in settings_dict.get("OPTIONS", {}).items() if isinstance(v, str)}
    params.update(options)
    params["application_name"] = "switchyard-recorder"
    return {k: v for k, v in params.items() if v is not None}


def recorder_connection_params() -> dict[str, Any]:
    """The writer's connection: the default database with every wait bounded.

    A statement (and an idle transaction) may take at most SWITCHYARD_RECORD_STATEMENT_TIMEOUT_MS;
    TCP keep-alives and a TCP user timeout notice a peer that vanished without closing."""
    params = connection_params()
    timeout_ms = int(settings.SWITCHYARD_RECORD_STATEMENT_TIMEOUT_MS)
    server_options = (
        f"-c statement_timeout={timeout_ms} -c idle_in_transaction_session_timeout={timeout_ms}"
    )
    params["options"] = f"{params.get('options', '')} {server_options}".strip()
    params.update(
        {
            "connect_timeout": max(1, int(settings.SWITCHYARD_RECORD_CONNECT_TIMEOUT_S)),
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": timeout_ms + 2000,
        }
    )
    return params


# Outcomes of one pending row.
STORED, DUPLICATE, REFUSED, INVALID, FAILED = "stored", "duplicate", "refused", "invalid", "failed"


@dataclass(eq=False)
class _Pending:
    row: DecisionRow | None  # None: a close request
    deadline: float
    enqueued: float = 0.0  # time.monotonic() when handed over
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str = ""
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    field_name: str | None = None
    # An earlier attempt may have committed this row: look before writing it again.
    uncertain: bool = False
    # ``submit``: resolved with the outcome (or its exception) once it is decided.
    future: Future[str] | None = None

    @property
    def r(self) -> DecisionRow:
        assert self.row is not None
        return self.row


@dataclass
class _Result:
    outcome: str
    error: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    field_name: str | None = None


class _Retry(Exception):
    """The attempt found a row already stored under its id: re-check, then write the rest."""


class _AdmissionFailed(Exception):
    """The admission hook failed (not for a lost connection): its rows fail, unstored."""


# Request fields behind the stored columns, to name the field at fault in a 400.
_REQUEST_FIELDS = {
    "request_id": "request_id",
    "team": "team",
    "task_class": "task_class",
    "data_classification": "data_classification",
    "end_user": "end_user",
    "prompt": "prompt",
    "prompt_template_id": "prompt_template.id",
    "prompt_template_version": "prompt_template.version",
    "retrieval_query": "retrieval.query",
    "retrieval_document_ids": "retrieval.document_ids",
    "metadata": "metadata",
}
FAST_PATH_MAX_ROWS = 100


def _outcome(pending: _Pending) -> str:
    """A released row's outcome: "stored" / "duplicate", or the exception it stands for."""
    if pending.outcome == FAILED:
        raise RecordingFailed(pending.error or "the decision could not be stored")
    if pending.outcome == INVALID:
        raise RecordingInvalid(pending.error, pending.field_name)
    if pending.outcome == REFUSED:
        raise RecordingRefused(pending.detail)
    return pending.outcome


@dataclass(frozen=True)
class Committing:
    """A row ``submit`` handed to the writer: ``future`` resolves to "stored" once its
    COMMIT returned, or fails with the recorder's exception (``RecordingFailed`` and its
    subclasses). A waiter calls ``DecisionRecorder.watch`` every 0.25 s and gives up at
    ``give_up`` (monotonic), as ``record`` does."""

    future: Future[str]
    give_up: float


class DecisionRecorder:
    def __init__(
        self,
        *,
        max_batch: int | None = None,
        queue_max: int | None = None,
        hang_s: float | None = None,
    ) -> None:
        self.max_batch = max_batch or int(settings.SWITCHYARD_RECORD_MAX_BATCH)
        self.queue_max = queue_max or int(settings.SWITCHYARD_RECORD_QUEUE_MAX)
        self.hang_s = hang_s or float(settings.SWITCHYARD_RECORD_HANG_S)
        self.admission: Admission | None = None
        # Told of the rows just committed (each with the seconds from its decision's start
        # to its COMMIT) by the writer thread, before their waiters are released: the
        # decision metrics are kept there, by one thread per batch, instead of by every
        # request thread contending for the metrics' lock (routing.services).
        self.on_stored: Callable[[list[tuple[DecisionRow, float]]], None] | None = None
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._queued = 0
        self._lock = threading.Lock()
        self._writer: _Writer | None = None
        self._params: dict[str, Any] | None = None
        self.batches = 0
        self.rows = 0
        self.isolated = 0
        self.writers_replaced = 0

    # -- request side ------------------------------------------------------------------

    def record(self, row: DecisionRow, *, timeout_s: float = 5.0) -> str:
        """Store ``row`` durably; returns "stored" or "duplicate" (its idempotency key is taken
        by another decision), only once the row (or the other one) is committed.

        Raises RecordingBusy (queue full), RecordingInvalid (the database rejects this row),
        RecordingRefused (the admission hook refused it) or RecordingFailed (not stored in
        time)."""
        pending = self._enqueue(row, timeout_s, None)
        give_up = pending.deadline + 1.0
        while not pending.done.wait(0.25):
            if time.monotonic() > give_up:
                raise RecordingFailed("timed out waiting for the decision to be stored")
            self.watch()
        return _outcome(pending)

    def submit(self, row: DecisionRow, *, timeout_s: float = 5.0) -> Committing | None:
        """Hand ``row`` to the writer without waiting for its COMMIT — only if nothing but
        the COMMIT can still refuse it: no idempotency key, and no budget hold to take or
        the admission hook holds its worst case at once from what this process has open
        (``Admission.admit_now``, in memory). Then returns what to wait on (``Committing``):
        the caller must not acknowledge anything that depends on the row before it resolved
        to "stored". None: the row was not handed over (use ``record``, which may take a
        lease, refuse, or answer "duplicate")."""
        if row["request_id"]:
            return None
        if (
            row["reservations"]
            and not row["budget_holds"]
            and (self.admission is None or not self.admission.admit_now(row))
        ):
            return None
        pending = self._enqueue(row, timeout_s, Future())
        assert pending.future is not None
        return Committing(pending.future, pending.deadline + 1.0)

    def _enqueue(self, row: DecisionRow, timeout_s: float, future: Future[str] | None) -> _Pending:
        self._ensure_writer()
        now = time.monotonic()
        pending = _Pending(row=row, deadline=now + timeout_s, enqueued=now, future=future)
        with self._lock:
            if self._queued >= self.queue_max:
                if row["budget_holds"] and future is not None and self.admission is not None:
                    self.admission.give_back([row])  # held by admit_now, never written
                raise RecordingBusy("the decision recorder's queue is full")
            self._queued += 1
        self._queue.put(pending)
        return pending

    def close(self) -> None:
        """Close the writer's connection (it reopens on the next record)."""
        writer = self._writer
        if writer is None or not writer.thread.is_alive():
            return
        marker = _Pending(row=None, deadline=time.monotonic() + 5)
        self._queue.put(marker)
        marker.done.wait(5)

    def _ensure_writer(self) -> None:
        writer = self._writer
        if writer is not None and writer.thread.is_alive():
            return
        with self._lock:
            writer = self._writer
            if writer is None or not writer.thread.is_alive():
                # Read connection settings on the request thread (the test database's name
                # is only set there), then write from a dedicated thread and connection.
                self._params = recorder_connection_params()
                self._writer = _Writer(self, self._params, terminate_pid=None)
                self._writer.thread.start()

    def watch(self) -> None:
        """Replace a writer stuck in one attempt for longer than ``hang_s`` (waiters call this
        every 0.25 s, those of ``submit`` included)."""
        writer = self._writer
        if writer is None or writer.busy_since is None:
            return
        if time.monotonic() - writer.busy_since <= self.hang_s:
            return
        with self._lock:
            if self._writer is not writer or writer.busy_since is None:
                return
            if time.monotonic() - writer.busy_since <= self.hang_s:
                return
            writer.abandoned = True
            stuck = [p for p in writer.batch if not p.done.is_set()]
            assert self._params is not None
            replacement = _Writer(self, self._params, terminate_pid=writer.backend_pid)
            self.writers_replaced += 1
            self._queued += len(stuck)
            for item in stuck:
                item.uncertain = True  # the abandoned attempt may still have committed it
                self._queue.put(item)
            # Started under the lock: _ensure_writer never sees a writer not yet running.
            replacement.thread.start()
            self._writer = replacement
        logger.error(
            "decision recorder: writer stuck for over %.1fs; replaced (%d rows re-checked)",
            self.hang_s,
            len(stuck),
        )

    def _taken(self, count: int) -> None:
        with self._lock:
            self._queued -= count


class _Writer:
    """One writer thread and its connection. Abandoned writers never release a waiter."""

    def __init__(
        self, recorder: DecisionRecorder, params: dict[str, Any], *, terminate_pid: int | None
    ) -> None:
        self.recorder = recorder
        self.params = params
        self.terminate_pid = terminate_pid
        self.conn: psycopg.Connection[Any] | None = None
        self.backend_pid: int | None = None
        self.busy_since: float | None = None
        self.batch: list[_Pending] = []
        self.abandoned = False
        self.thread = threading.Thread(target=self._run, name="decision-recorder", daemon=True)

    def _run(self) -> None:
        rec = self.recorder
        while not self.abandoned:
            admission = rec.admission
            idle_s = None
            if admission is not None and admission.has_open():
                idle_s = float(settings.SWITCHYARD_BUDGET_LEASE_S)
            try:
                first = rec._queue.get(timeout=idle_s)
            except queue.Empty:
                self._tick()  # idle: close leases past their time
                continue
            if first.row is None:  # close request
                self._tick(close_all=True)
                self._drop_connection()
                first.done.set()
                continue
            batch = [first]
            while len(batch) < rec.max_batch:
                try:
                    item = rec._queue.get_nowait()
                except queue.Empty:
                    break
                if item.row is None:
                    item.done.set()  # a close request during a batch: the batch needs it open
                    continue
                batch.append(item)
            rec._taken(len(batch))
            self.batch = batch
            try:
                self._write_with_retry(batch)
            except Exception as exc:  # never let the writer thread die
                logger.exception("decision recorder failed a batch")
                self._finish({p: _Result(FAILED, str(exc)) for p in batch})
            finally:
                self.busy_since = None
                self.batch = []
            if admission is not None and admission.has_open():
                self._tick()
        self._drop_connection()

    def _tick(self, *, close_all: bool = False) -> None:
        admission = self.recorder.admission
        if admission is None or not admission.has_open() or self.abandoned:
            return
        try:
            admission.tick(self._connect(), close_all=close_all)
        except psycopg.Error:
            # What a lease did not give back stays held until it expires (fail closed).
            logger.warning("recorder: closing budget leases failed", exc_info=True)
            self._drop_connection()

    # -- releasing waiters -------------------------------------------------------------

    def _finish(self, results: dict[_Pending, _Result]) -> None:
        """Release waiters with their outcomes, unless this writer was abandoned meanwhile
        (then its replacement owns the rows)."""
        rec = self.recorder
        released: list[_Pending] = []
        with rec._lock:
            if self.abandoned:
                return
            if rec.on_stored is not None:
                now = time.monotonic()
                stored = [
                    (item.r, now - item.enqueued + item.r["decision_us"] / 1e6)
                    for item, result in results.items()
                    if result.outcome == STORED and not item.done.is_set()
                ]
                if stored:
                    try:
                        rec.on_stored(stored)
                    except Exception:  # a hook's failure never holds a waiter back
                        logger.exception("recorder: the on_stored hook failed")
            unstored = []
            for item, result in results.items():
                if item.done.is_set():
                    continue
                item.outcome, item.error = result.outcome, result.error
                item.detail, item.field_name = result.detail, result.field_name
                if result.outcome == STORED:
                    rec.rows += 1
                elif result.outcome in (DUPLICATE, INVALID) and item.r["budget_holds"]:
                    unstored.append(item.r)
                item.done.set()
                if item.future is not None:
                    released.append(item)
        if unstored and rec.admission is not None:
            rec.admission.give_back(unstored)
        for item in released:
            assert item.future is not None
            try:
                item.future.set_result(_outcome(item))
            except (RecordingFailed, RecordingRefused) as exc:
                item.future.set_exception(exc)

    # -- connection --------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            # Autocommit: a small batch without idempotency keys is one INSERT statement,
            # i.e. one round trip and one commit.
            conn = psycopg.connect(**self.params, autocommit=True)
            if self.terminate_pid is not None:
                # The abandoned writer's backend: end it, so its transaction either has
                # committed already or never will, before its rows are re-checked.
                conn.execute("SELECT pg_terminate_backend(%s)", [self.terminate_pid])
                self.terminate_pid = None
            self.conn = conn
            self.backend_pid = conn.info.backend_pid
        return self.conn

    def _drop_connection(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # already broken
                logger.debug("closing a broken recorder connection failed", exc_info=True)
        self.conn = None

    # -- writing -----------------------------------------------------------------------

    def _write_with_retry(self, batch: list[_Pending]) -> None:
        attempt = 0
        while batch and not self.abandoned:
            now = time.monotonic()
            expired = [p for p in batch if p.deadline <= now]
            if expired:
                self._finish({p: _Result(FAILED, "database unavailable") for p in expired})
            batch = [p for p in batch if p.deadline > now]
            if not batch:
                return
            self.busy_since = time.monotonic()
            try:
                conn = self._connect()
                batch = self._admit(conn, batch)
                if not batch:
                    return
                results = self._write(conn, batch)
            except _Retry:
                for item in batch:
                    item.uncertain = True
                attempt += 1
                continue
            except _AdmissionFailed as exc:
                logger.error("recorder: budget admission failed: %s", exc.__cause__)
                self.busy_since = None
                if self.conn is not None and self.conn.info.transaction_status not in (
                    psycopg.pq.TransactionStatus.IDLE,
                ):
                    self._drop_connection()
                failed = _Result(FAILED, "budget admission failed")
                self._finish({p: failed for p in batch})
                if self.recorder.admission is not None:
                    self.recorder.admission.give_back([p.r for p in batch if not p.uncertain])
                return
            except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.InternalError) as exc:
                # The commit may or may not have happened: check before writing again.
                for item in batch:
                    item.uncertain = True
                attempt += 1
                logger.warning("recorder: database unavailable (%s); retry %d", exc, attempt)
                self._drop_connection()
                self.busy_since = None
                time.sleep(min(0.05 * 2**attempt, 0.5))
                continue
            except _REJECTIONS as exc:
                # The database rejected the data (nothing was committed): isolate the row(s).
                self.busy_since = None
                if self.conn is not None and self.conn.info.transaction_status not in (
                    psycopg.pq.TransactionStatus.IDLE,
                ):
                    self._drop_connection()
                if len(batch) == 1:
                    item = batch[0]
                    column = _offending_column(item.r, exc)
                    message = _rejection_message(column, exc)
                    logger.warning("recorder: row %s rejected: %s", item.r["id"], exc)
                    self.recorder.isolated += 1
                    self._finish(
                        {
                            item: _Result(
                                INVALID, message, field_name=_REQUEST_FIELDS.get(column or "")
                            )
                        }
                    )
                    return
                middle = len(batch) // 2
                self._write_with_retry(batch[:middle])
                self._write_with_retry(batch[middle:])
                return
            self.busy_since = None
            self.recorder.batches += 1
            self._finish(results)
            return

    def _admit(self, conn: psycopg.Connection[Any], batch: list[_Pending]) -> list[_Pending]:
        """Hold budget for the rows that need it (the admission hook); release refused rows
        at once and return the rest. A row keeps its holds across attempts."""
        admission = self.recorder.admission
        if admission is None:
            return batch
        todo = [p for p in batch if p.r["reservations"] and not p.r["budget_holds"]]
        if not todo:
            return batch
        try:
            refused = admission.admit(conn, [p.r for p in todo])
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the connection: retried like a write
        except Exception as exc:
            raise _AdmissionFailed from exc
        if not refused:
            return batch
        self._finish(
            {p: _Result(REFUSED, detail=refused[p.r["id"]]) for p in batch if p.r["id"] in refused}
        )
        return [p for p in batch if p.r["id"] not in refused]

    def _write(
        self, conn: psycopg.Connection[Any], batch: list[_Pending]
    ) -> dict[_Pending, _Result]:
        """One attempt. Returns each row's outcome; returns only once they are committed."""
        if len(batch) <= FAST_PATH_MAX_ROWS and not any(
            p.uncertain or p.r["request_id"] for p in batch
        ):
            with conn.cursor() as cursor:
                try:
                    _rows_insert(cursor, [item.r for item in batch])  # autocommit: committed
                except psycopg.errors.UniqueViolation as exc:
                    if _decision_id_taken(exc):
                        raise _Retry from exc
                    raise
            return {p: _Result(STORED) for p in batch}

        results: dict[_Pending, _Result] = {}
        try:
            with conn.transaction(), conn.cursor() as cursor:
                results = self._write_transaction(cursor, batch)
        except psycopg.errors.UniqueViolation as exc:
            if _decision_id_taken(exc):
                # A decision id already stored: an earlier attempt committed after all.
                raise _Retry from exc
            raise
        return results  # the transaction has committed

    def _write_transaction(
        self, cursor: psycopg.Cursor[Any], batch: list[_Pending]
    ) -> dict[_Pending, _Result]:
        results: dict[_Pending, _Result] = {}
        uncertain = [p.r for p in batch if p.uncertain]
        stored = _stored_ids(cursor, uncertain) if uncertain else set()
        todo = []
        for item in batch:
            if item.r["id"] in stored:
                results[item] = _Result(STORED)
            else:
                todo.append(item)

        # Idempotency keys: take each key (or take over an expired one); a live key owned by
        # another decision makes the row a duplicate, one owned by this very row means an
        # earlier attempt committed it.
        keyed = [p for p in todo if p.r["request_id"]]
        if keyed:
            first_of: dict[tuple[int, str], _Pending] = {}
            for item in keyed:
                first_of.setdefault(_key(item.r), item)
            owners, taken = _keys_take(cursor, [p.r for p in first_of.values()])
            for item in keyed:
                key = _key(item.r)
                if owners.get(key) != item.r["id"]:
                    results[item] = _Result(DUPLICATE)
                elif key not in taken:
                    # This row's own key, from an earlier attempt that did commit (after the
                    # check above): key and row commit together, so the row is stored.
                    results[item] = _Result(STORED)
        to_write = [p for p in todo if p not in results]
        if to_write:
            decision_rows_copy(cursor, [p.r for p in to_write])
        for item in to_write:
            results[item] = _Result(STORED)
        return results


# Errors that mean "this data cannot be stored" (isolate the row); any other database error
# is treated like a lost connection (retry, re-checking what committed).
_REJECTIONS = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.ProgrammingError,
    psycopg.NotSupportedError,
)


def _decision_id_taken(exc: psycopg.errors.UniqueViolation) -> bool:
    """A unique violation on a decision's own primary key (a partition of telemetry_decision),
    not on some other table (the idempotency keys, or the admission hook's)."""
    table = exc.diag.table_name or ""
    return table.startswith("telemetry_decision") and table != "telemetry_decision_idempotency"


def _key(row: DecisionRow) -> tuple[int, str]:
    return (row["application_id"], row["request_id"])


def _keys_take(
    cursor: psycopg.Cursor[Any], rows: Sequence[DecisionRow]
) -> tuple[dict[tuple[int, str], uuid.UUID], set[tuple[int, str]]]:
    """Insert the rows' idempotency keys (one row per key). Returns each key's owning decision
    and the keys this statement took. A key past the idempotency window is taken over."""
    cursor.execute(
        "INSERT INTO telemetry_decision_idempotency "
        "(application_id, request_id, decision_id, created_at, body_sha256) "
        "SELECT * FROM unnest(%s::bigint[], %s::text[], %s::uuid[], %s::timestamptz[], "
        "%s::text[]) "
        "ON CONFLICT (application_id, request_id) DO UPDATE SET "
        "decision_id = EXCLUDED.decision_id, created_at = EXCLUDED.created_at, "
        "body_sha256 = EXCLUDED.body_sha256 "
        "WHERE telemetry_decision_idempotency.created_at < EXCLUDED.created_at - %s::interval "
        "RETURNING application_id, request_id, decision_id",
        [
            [r["application_id"] for r in rows],
            [r["request_id"] for r in rows],
            [r["id"] for r in rows],
            [r["created_at"] for r in rows],
            [r["request_sha256"] for r in rows],
            idempotency_window(),
        ],
    )
    owners: dict[tuple[int, str], uuid.UUID] = {(a, k): d for a, k, d in cursor.fetchall()}
    taken = set(owners)
    missing = [r for r in rows if _key(r) not in owners]
    if missing:
        cursor.execute(
            "SELECT k.application_id, k.request_id, k.decision_id "
            "FROM telemetry_decision_idempotency k "
            "JOIN unnest(%s::bigint[], %s::text[]) AS u(application_id, request_id) "
            "ON k.application_id = u.application_id AND k.request_id = u.request_id",
            [[r["application_id"] for r in missing], [r["request_id"] for r in missing]],
        )
        owners.update({(a, k): d for a, k, d in cursor.fetchall()})
    return owners, taken


def idempotency_window() -> timedelta:
    """How long a request_id keeps answering with its decision (never past retention)."""
    return timedelta(hours=float(settings.SWITCHYARD_IDEMPOTENCY_WINDOW_HOURS))


def _stored_ids(cursor: psycopg.Cursor[Any], rows: Sequence[DecisionRow]) -> set[uuid.UUID]:
    cursor.execute(
        "SELECT id FROM telemetry_decision WHERE id = ANY(%s) AND created_at = ANY(%s)",
        [[r["id"] for r in rows], list({r["created_at"] for r in rows})],
    )
    return {row[0] for row in cursor.fetchall()}


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


def _offending_column(row: DecisionRow, exc: Exception) -> str | None:
    """The column whose value the database rejected, when it can be told."""
    from telemetry.models import DecisionRecord

    for column in DECISION_COLUMNS:
        if _has_nul(row[column]):  # type: ignore[literal-required]
            return column
    for column in DECISION_COLUMNS:
        value = row[column]  # type: ignore[literal-required]
        limit = getattr(DecisionRecord._meta.get_field(column), "max_length", None)
        if limit and isinstance(value, str) and len(value) > limit:
            return column
    diag = getattr(exc, "diag", None)
    column_name = getattr(diag, "column_name", None)
    if column_name in DECISION_COLUMNS:
        return str(column_name)
    context = getattr(diag, "context", None) or ""
    if ", column " in context:
        name = context.split(", column ", 1)[1].split(":", 1)[0].strip()
        if name in DECISION_COLUMNS:
            return name
    return None


def _rejection_message(column: str | None, exc: Exception) -> str:
    if column is not None and column in _REQUEST_FIELDS:
        return "contains a character or value the store cannot hold (e.g. a NUL character)"
    primary = getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc)
    return f"the decision record was rejected: {primary}"


recorder = DecisionRecorder()
