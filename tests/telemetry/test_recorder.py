"""The decision recorder against the real test database: admission hook, isolation, bounds."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
import pytest

from telemetry.ids import uuid7, uuid7_time
from telemetry.models import DecisionIdempotency, DecisionRecord
from telemetry.recorder import (
    DecisionRecorder,
    DecisionRow,
    RecordingBusy,
    RecordingFailed,
    RecordingInvalid,
    RecordingRefused,
    Reservation,
    connection_params,
)
from tests import commit_faults

pytestmark = pytest.mark.django_db(transaction=True)


def make_row(
    *, request_id: str = "", reservations: list[Reservation] | None = None, **fields: Any
) -> DecisionRow:
    decision_id = uuid7()
    row: DecisionRow = {
        "id": decision_id,
        "created_at": uuid7_time(decision_id),
        "request_id": request_id,
        "application_id": 1,
        "application": "app-a",
        "team": "team-a",
        "task_class": "triage",
        "model": "small-local",
        "provider_model": "small",
        "tier": 1,
        "locality": "local",
        "strategy": "rule",
        "confidence": 1.0,
        "reason": "route",
        "routing_table_version": 1,
        "handoff_required": False,
        "data_classification": "",
        "pii_types": [],
        "input_tokens": 10,
        "context_tokens": 10,
        "max_output_tokens": 64,
        "latency_budget_ms": None,
        "max_cost_usd": None,
        "decision_us": 100,
        "end_user": "",
        "prompt": None,
        "prompt_expires_at": None,
        "prompt_template_id": "",
        "prompt_template_version": "",
        "retrieval_query": "",
        "retrieval_document_ids": [],
        "metadata": {},
        "path": {},
        "response": {"decision_id": str(decision_id)},
        "budget_holds": [],
        "reservations": reservations or [],
        "request_sha256": "",
    }
    row.update(fields)  # type: ignore[typeddict-item]
    return row


@pytest.fixture
def rec() -> Iterator[DecisionRecorder]:
    recorder = DecisionRecorder()
    yield recorder
    recorder.close()


def _params() -> dict[str, Any]:
    params = connection_params()
    params.pop("application_name", None)
    return params


def _record_into(
    recorder: DecisionRecorder, row: DecisionRow, results: dict[uuid.UUID, Any], timeout_s: float
) -> None:
    try:
        results[row["id"]] = recorder.record(row, timeout_s=timeout_s)
    except (RecordingFailed, RecordingRefused) as exc:
        results[row["id"]] = exc


def record_all(
    recorder: DecisionRecorder, rows: list[DecisionRow], timeout_s: float = 5
) -> dict[uuid.UUID, Any]:
    """Record rows from concurrent threads (so they share batches); returns id → result."""
    results: dict[uuid.UUID, Any] = {}
    threads = [
        threading.Thread(target=_record_into, args=(recorder, r, results, timeout_s)) for r in rows
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


class WriterGate:
    """Holds the writer inside the admission hook while a gate row is being written, so the
    rows recorded meanwhile all wait in the queue and form the next batch together. The
    hook then refuses the gate row: it writes no decision and commits nothing of its own."""

    def __init__(self, recorder: DecisionRecorder) -> None:
        self.recorder = recorder
        self.row = make_row(reservations=[{"budget_id": 0, "amount_usd": 0.0}])
        self.entered = threading.Event()
        self.release = threading.Event()
        self.results: dict[uuid.UUID, Any] = {}
        recorder.admission = self
        self.thread = threading.Thread(
            target=_record_into, args=(recorder, self.row, self.results, 10)
        )

    def admit(
        self, conn: psycopg.Connection[Any], rows: Sequence[DecisionRow]
    ) -> dict[uuid.UUID, dict[str, Any]]:
        if any(r["id"] == self.row["id"] for r in rows):
            self.entered.set()
            assert self.release.wait(10)
            return {self.row["id"]: {"gate": True}}
        return {}

    def give_back(self, rows: Iterable[DecisionRow]) -> None:
        pass

    def tick(self, conn: psycopg.Connection[Any], *, close_all: bool = False) -> None:
        pass

    def has_open(self) -> bool:
        return False

    def close(self) -> None:
        self.thread.start()
        assert self.entered.wait(5)

    def queue_then_open(
        self, rows: list[DecisionRow], timeout_s: float = 5
    ) -> dict[uuid.UUID, Any]:
        results: dict[uuid.UUID, Any] = {}
        threads = [
            threading.Thread(target=_record_into, args=(self.recorder, r, results, timeout_s))
            for r in rows
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while self.recorder._queue.qsize() < len(rows):
            assert time.monotonic() < deadline, "rows did not queue"
            time.sleep(0.01)
        self.release.set()
        for t in threads:
            t.join(30)
        self.thread.join(10)
        assert isinstance(self.results[self.row["id"]], RecordingRefused)
        return results


AdmitFn = Callable[[psycopg.Connection[Any], list[DecisionRow]], dict[uuid.UUID, Any]]


class FnAdmission:
    """A test admission hook around ``fn(conn, rows) -> refusals``: admitted rows get one
    hold per reservation (lease 0); rows given back are noted."""

    def __init__(self, fn: AdmitFn) -> None:
        self.fn = fn
        self.given_back: list[uuid.UUID] = []

    def admit(
        self, conn: psycopg.Connection[Any], rows: Sequence[DecisionRow]
    ) -> dict[uuid.UUID, dict[str, Any]]:
        refused = self.fn(conn, list(rows))
        for r in rows:
            if r["id"] not in refused:
                r["budget_holds"] = [[0, str(res["amount_usd"])] for res in r["reservations"]]
        return refused

    def give_back(self, rows: Iterable[DecisionRow]) -> None:
        self.given_back.extend(r["id"] for r in rows)

    def tick(self, conn: psycopg.Connection[Any], *, close_all: bool = False) -> None:
        pass

    def has_open(self) -> bool:
        return False


class LimitHook:
    """Refuses rows whose reservation exceeds ``limit`` and notes what it could see."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self, conn: psycopg.Connection[Any], rows: list[DecisionRow]
    ) -> dict[uuid.UUID, dict[str, Any]]:
        row = conn.execute(
            "SELECT count(*) FROM telemetry_decision WHERE id = ANY(%s)", [[r["id"] for r in rows]]
        ).fetchone()
        assert row is not None
        self.calls.append({"ids": [r["id"] for r in rows], "visible": row[0]})
        return {
            r["id"]: {"budget_id": res["budget_id"], "amount_usd": res["amount_usd"]}
            for r in rows
            for res in r["reservations"]
            if res["amount_usd"] > self.limit
        }


def test_admission_holds_rows_before_they_are_written_and_refused_rows_are_not(
    rec: DecisionRecorder,
) -> None:
    hook = LimitHook(limit=1.0)
    admission = FnAdmission(hook)
    rec.admission = admission
    ok = [make_row(reservations=[{"budget_id": 7, "amount_usd": 0.5}]) for _ in range(4)]
    plain = [make_row() for _ in range(3)]
    too_much = make_row(reservations=[{"budget_id": 7, "amount_usd": 2.5}])
    too_much_keyed = make_row(
        request_id="hook-1", reservations=[{"budget_id": 9, "amount_usd": 3.0}]
    )
    results = record_all(rec, [*ok, *plain, too_much, too_much_keyed])

    for row in ok + plain:
        assert results[row["id"]] == "stored"
    for row, budget in ((too_much, 7), (too_much_keyed, 9)):
        refusal = results[row["id"]]
        assert isinstance(refusal, RecordingRefused)
        assert refusal.detail["budget_id"] == budget
    stored = set(DecisionRecord.objects.values_list("id", flat=True))
    assert stored == {r["id"] for r in ok + plain}
    # A refused keyed row leaves no idempotency key behind: a retry decides afresh.
    assert not DecisionIdempotency.objects.filter(request_id="hook-1").exists()
    # The hook ran before the rows were written; the holds are written with the rows.
    assert hook.calls and all(call["visible"] == 0 for call in hook.calls)
    seen = {i for call in hook.calls for i in call["ids"]}
    assert {r["id"] for r in ok} | {too_much["id"], too_much_keyed["id"]} <= seen
    assert not {r["id"] for r in plain} & seen  # rows without reservations skip the hook
    holds = dict(DecisionRecord.objects.values_list("id", "budget_holds"))
    assert all(holds[r["id"]] == [[0, "0.5"]] for r in ok)
    assert all(holds[r["id"]] == [] for r in plain)

    # A row that loses its request_id to a stored decision gives its holds back.
    first = make_row(request_id="dup-1", reservations=[{"budget_id": 7, "amount_usd": 0.5}])
    assert rec.record(first) == "stored"
    second = make_row(request_id="dup-1", reservations=[{"budget_id": 7, "amount_usd": 0.5}])
    assert rec.record(second) == "duplicate"
    assert admission.given_back == [second["id"]]


def test_admission_hook_is_not_called_without_reservations(rec: DecisionRecorder) -> None:
    hook = LimitHook(limit=0.0)
    rec.admission = FnAdmission(hook)
    rows = [make_row() for _ in range(3)] + [make_row(request_id="no-res")]
    results = record_all(rec, rows)
    assert all(results[r["id"]] == "stored" for r in rows)
    assert hook.calls == []


def test_admission_hook_database_error_fails_its_batch_only(rec: DecisionRecorder) -> None:
    def broken(conn: psycopg.Connection[Any], rows: list[DecisionRow]) -> dict[uuid.UUID, Any]:
        conn.execute("SELECT 1 / 0")
        return {}

    rec.admission = FnAdmission(broken)
    bad = make_row(reservations=[{"budget_id": 1, "amount_usd": 0.1}])
    with pytest.raises(RecordingFailed) as failed:
        rec.record(bad, timeout_s=2)
    assert not isinstance(failed.value, RecordingInvalid)  # not the row's fault
    rec.admission = None
    good = make_row()
    assert rec.record(good, timeout_s=5) == "stored"
    assert set(DecisionRecord.objects.values_list("id", flat=True)) == {good["id"]}


def _stored_ids() -> set[uuid.UUID]:
    return set(DecisionRecord.objects.values_list("id", flat=True))


@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed-insert", "keyed-copy"])
def test_a_rejected_row_fails_alone_and_its_batch_is_stored(
    rec: DecisionRecorder, keyed: bool
) -> None:
    gate = WriterGate(rec)
    gate.close()
    good = [make_row(request_id=f"good-{i}" if keyed else "") for i in range(30)]
    bad_team = make_row(team="ops\x00team")  # psycopg refuses NUL in text (client side)
    bad_metadata = make_row(metadata={"note": "a\x00b"})  # jsonb refuses \u0000 (server)
    bad_retrieval = make_row(retrieval_query="printer\x00")
    too_long = make_row(team="t" * 65)  # varchar(64): the server rejects it
    bad_key = make_row(request_id="key\x00")
    bad = [bad_team, bad_metadata, bad_retrieval, too_long, bad_key]
    rows = good[:10] + bad[:2] + good[10:20] + bad[2:] + good[20:]
    results = gate.queue_then_open(rows)

    assert [results[r["id"]] for r in good] == ["stored"] * len(good)
    fields = {}
    for row in bad:
        error = results[row["id"]]
        assert isinstance(error, RecordingInvalid), error
        fields[row["id"]] = error.field
    assert fields == {
        bad_team["id"]: "team",
        bad_metadata["id"]: "metadata",
        bad_retrieval["id"]: "retrieval.query",
        too_long["id"]: "team",
        bad_key["id"]: "request_id",
    }
    assert _stored_ids() == {r["id"] for r in good}
    assert rec.isolated == len(bad)
    if keyed:
        assert DecisionIdempotency.objects.count() == len(good)
    # The writer goes on as usual afterwards.
    later = make_row()
    assert rec.record(later) == "stored"


def test_a_full_queue_refuses_at_once(rec: DecisionRecorder) -> None:
    rec.queue_max = 3
    gate = WriterGate(rec)
    gate.close()
    waiting = [make_row() for _ in range(3)]
    results: dict[uuid.UUID, Any] = {}
    threads = [threading.Thread(target=_record_into, args=(rec, r, results, 5)) for r in waiting]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while rec._queue.qsize() < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(RecordingBusy):
        rec.record(make_row(), timeout_s=5)
    assert time.monotonic() - started < 0.5  # refused without waiting
    gate.release.set()
    for t in threads:
        t.join(10)
    gate.thread.join(10)
    assert all(results[r["id"]] == "stored" for r in waiting)
    assert rec.record(make_row()) == "stored"  # room again


def test_a_hung_writer_is_replaced_and_never_acknowledges(rec: DecisionRecorder) -> None:
    rec.hang_s = 0.5
    calls: list[float] = []

    def hook(conn: psycopg.Connection[Any], rows: list[DecisionRow]) -> dict[uuid.UUID, Any]:
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(2.5)  # the first writer hangs here
            return {}
        return {r["id"]: {"refused": "by the replacement writer"} for r in rows}

    rec.admission = FnAdmission(hook)
    hung = make_row(request_id="hung-1", reservations=[{"budget_id": 1, "amount_usd": 1.0}])
    started = time.monotonic()
    with pytest.raises(RecordingRefused) as refused:
        rec.record(hung, timeout_s=5)
    # The replacement answered long before the hung writer woke up.
    assert time.monotonic() - started < 2.4
    assert refused.value.detail == {"refused": "by the replacement writer"}
    assert rec.writers_replaced == 1
    time.sleep(2.5)  # the abandoned writer wakes: its connection was terminated
    assert len(calls) == 2
    assert not DecisionRecord.objects.filter(id=hung["id"]).exists()
    assert not DecisionIdempotency.objects.exists()
    assert rec.record(make_row()) == "stored"


def test_a_writer_hung_after_writing_is_replaced_and_rows_land_once(
    rec: DecisionRecorder,
) -> None:
    rec.hang_s = 0.5
    calls: list[int] = []

    def hook(conn: psycopg.Connection[Any], rows: list[DecisionRow]) -> dict[uuid.UUID, Any]:
        calls.append(len(rows))
        if len(calls) == 1:
            time.sleep(2.0)
        return {}

    rec.admission = FnAdmission(hook)
    rows = [
        make_row(request_id=f"h-{i}", reservations=[{"budget_id": 1, "amount_usd": 0.1}])
        for i in range(5)
    ]
    results = record_all(rec, rows)
    assert all(results[r["id"]] == "stored" for r in rows), results
    time.sleep(2.0)
    assert _stored_ids() == {r["id"] for r in rows}
    assert DecisionIdempotency.objects.count() == 5
    assert rec.writers_replaced >= 1


@pytest.fixture
def faults() -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(**_params(), autocommit=True)
    commit_faults.install(conn)
    try:
        yield conn
    finally:
        commit_faults.remove(conn)
        conn.close()


@pytest.mark.parametrize("mode", ["abort", "race"])
@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
@pytest.mark.parametrize("size", [20, 150])
def test_failed_commits_lose_and_duplicate_nothing(
    rec: DecisionRecorder, faults: psycopg.Connection[Any], mode: str, keyed: bool, size: int
) -> None:
    rec.close()  # the writer's connection opens after the trigger exists
    gate = WriterGate(rec)
    gate.close()
    commit_faults.arm(faults, 3, mode)  # three COMMITs in a row fail
    rows = [make_row(request_id=f"f-{i}" if keyed else "") for i in range(size)]
    results = gate.queue_then_open(rows, timeout_s=10)
    acknowledged = {i for i, result in results.items() if result == "stored"}
    assert acknowledged == {r["id"] for r in rows}, results
    with psycopg.connect(**_params()) as conn:
        stored = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM telemetry_decision WHERE id = ANY(%s)", [[r["id"] for r in rows]]
            ).fetchall()
        ]
        keys = conn.execute("SELECT count(*) FROM telemetry_decision_idempotency").fetchone()
    assert len(stored) == len(set(stored)) == size  # none lost, none twice
    assert keys is not None and keys[0] == (size if keyed else 0)
    # The faults did hit: the batch's COMMIT failed three times in a row.
    assert commit_faults.fired(faults) == 3
    assert commit_faults.largest_killed(faults) == size


def test_the_writer_connection_bounds_every_wait(rec: DecisionRecorder, settings: Any) -> None:
    assert rec.record(make_row()) == "stored"
    writer = rec._writer
    assert writer is not None and writer.conn is not None
    timeout = writer.conn.execute("SHOW statement_timeout").fetchone()
    idle = writer.conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
    expected = f"{settings.SWITCHYARD_RECORD_STATEMENT_TIMEOUT_MS}ms"
    assert timeout is not None and idle is not None
    assert _as_ms(timeout[0]) == _as_ms(expected) == _as_ms(idle[0])
    params = writer.conn.info.get_parameters()
    assert params["keepalives"] == "1" and int(params["keepalives_idle"]) > 0
    assert int(params["keepalives_count"]) > 0 and int(params["tcp_user_timeout"]) > 0
    assert int(params["connect_timeout"]) > 0


def _as_ms(value: str) -> int:
    units = {"ms": 1, "s": 1000, "min": 60_000}
    for unit in ("ms", "min", "s"):
        if value.endswith(unit):
            return int(value[: -len(unit)]) * units[unit]
    return int(value)


def _stored_columns(decision_id: uuid.UUID) -> dict[str, Any]:
    from telemetry.recorder import DECISION_COLUMNS

    with psycopg.connect(**_params()) as conn:
        row = conn.execute(
            f"SELECT {', '.join(DECISION_COLUMNS)} FROM telemetry_decision WHERE id = %s",
            (decision_id,),
        ).fetchone()
    assert row is not None
    return dict(zip(DECISION_COLUMNS, row, strict=True))


def test_the_one_document_insert_stores_what_the_parameter_insert_stores() -> None:
    """The writer's batch INSERT (one JSON document) and psycopg's adaptation of each value
    store the same thing, awkward values included; a value JSON cannot carry (a Decimal)
    falls back to the parameter insert."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from telemetry.recorder import _copy_values, _insert_sql, _rows_insert

    def awkward(**extra: Any) -> DecisionRow:
        fields: dict[str, Any] = dict(
            team="ops — team ＠ ü",
            pii_types=["email", "phone"],
            retrieval_document_ids=['doc "1"', "a,b", "{x}", "back\\slash", "NULL", ""],
            retrieval_query="printer\u200b queue ‘quoted’",
            metadata={"nested": {"list": [1, 2.5, None, True]}, "emoji": "🚀", "big": 2**53},
            path={"steps": [{"rule": "a"}], "score": 1e-7},
            prompt="line 1\nline 2\ttab",
            prompt_expires_at=datetime(2027, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
            latency_budget_ms=250,
            max_cost_usd=0.0125,
            confidence=0.123456789,
            budget_holds=[[7, "0.00012300"]],
        )
        return make_row(**(fields | extra))

    by_document, by_parameters = awkward(), awkward()
    with psycopg.connect(**_params(), autocommit=True) as conn, conn.cursor() as cursor:
        _rows_insert(cursor, [by_document])
        cursor.execute(_insert_sql(1), _copy_values(by_parameters))
        fallback = awkward(max_cost_usd=Decimal("0.5"))
        _rows_insert(cursor, [fallback])
    stored_document = _stored_columns(by_document["id"])
    stored_parameters = _stored_columns(by_parameters["id"])
    for column in ("id", "created_at", "response"):
        stored_document.pop(column), stored_parameters.pop(column)
    assert stored_document == stored_parameters
    assert stored_document["retrieval_document_ids"] == by_document["retrieval_document_ids"]
    assert stored_document["prompt_expires_at"] == by_document["prompt_expires_at"]
    assert stored_document["metadata"] == by_document["metadata"]
    assert _stored_columns(fallback["id"])["max_cost_usd"] == 0.5
    created = _stored_columns(by_document["id"])["created_at"]
    assert abs(created - by_document["created_at"]) < timedelta(microseconds=1)


def test_on_stored_hears_of_stored_rows_only_before_their_waiters_are_released(
    rec: DecisionRecorder,
) -> None:
    heard: list[tuple[uuid.UUID, float]] = []
    results_when_heard: list[int] = []
    results: dict[uuid.UUID, Any] = {}

    def hook(stored: list[tuple[DecisionRow, float]]) -> None:
        results_when_heard.append(len(results))
        heard.extend((row["id"], seconds) for row, seconds in stored)

    rec.on_stored = hook
    good = [make_row(decision_us=5_000) for _ in range(5)]
    bad = make_row(metadata={"note": "a\x00b"})  # rejected by the server: never heard of
    for row in [*good, bad]:
        _record_into(rec, row, results, 5)
    assert [results[r["id"]] for r in good] == ["stored"] * 5
    assert isinstance(results[bad["id"]], RecordingInvalid)
    assert [i for i, _ in heard] == [r["id"] for r in good]
    # From the decision's start (decision_us before it was handed over) to its COMMIT.
    assert all(0.005 < seconds < 5 for _, seconds in heard)
    # Each row was heard of before its own record() returned.
    assert results_when_heard == [0, 1, 2, 3, 4]


def test_a_failing_on_stored_hook_holds_no_waiter_back(rec: DecisionRecorder) -> None:
    def hook(stored: list[tuple[DecisionRow, float]]) -> None:
        raise RuntimeError("metrics are down")

    rec.on_stored = hook
    row = make_row()
    assert rec.record(row) == "stored"
    assert _stored_ids() == {row["id"]}
