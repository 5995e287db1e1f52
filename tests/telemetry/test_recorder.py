"""The decision recorder against the real test database: admission hook, isolation, bounds."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from telemetry.ids import uuid7, uuid7_time
from telemetry.models import DecisionIdempotency, DecisionRecord
from telemetry.recorder import (
    DecisionRecorder,
    DecisionRow,
    RecordingFailed,
    RecordingRefused,
    Reservation,
)

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


def record_all(recorder: DecisionRecorder, rows: list[DecisionRow]) -> dict[uuid.UUID, Any]:
    """Record rows from concurrent threads (so they share batches); returns id → result."""
    results: dict[uuid.UUID, Any] = {}
    start = threading.Barrier(len(rows))

    def one(row: DecisionRow) -> None:
        start.wait()
        try:
            results[row["id"]] = recorder.record(row, timeout_s=5)
        except (RecordingFailed, RecordingRefused) as exc:
            results[row["id"]] = exc

    threads = [threading.Thread(target=one, args=(r,)) for r in rows]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


class LimitHook:
    """A test admission hook: refuses rows whose reservation exceeds ``limit`` and notes the
    transaction it ran in and what it could see."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self, cursor: psycopg.Cursor[Any], rows: list[DecisionRow]
    ) -> dict[uuid.UUID, dict[str, Any]]:
        cursor.execute("SELECT txid_current()")
        xid = cursor.fetchone()[0]  # type: ignore[index]
        cursor.execute(
            "SELECT count(*) FROM telemetry_decision WHERE id = ANY(%s)", [[r["id"] for r in rows]]
        )
        visible = cursor.fetchone()[0]  # type: ignore[index]
        self.calls.append({"ids": [r["id"] for r in rows], "xid": xid, "visible": visible})
        return {
            r["id"]: {"budget_id": res["budget_id"], "amount_usd": res["amount_usd"]}
            for r in rows
            for res in r["reservations"]
            if res["amount_usd"] > self.limit
        }


def test_admission_hook_refuses_rows_inside_the_writing_transaction(
    rec: DecisionRecorder,
) -> None:
    hook = LimitHook(limit=1.0)
    rec.admit = hook
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

    # The hook ran before the rows were written, in the transaction that wrote them.
    assert hook.calls and all(call["visible"] == 0 for call in hook.calls)
    seen = {i for call in hook.calls for i in call["ids"]}
    assert {r["id"] for r in ok} | {too_much["id"], too_much_keyed["id"]} <= seen
    with psycopg.connect(**_params()) as conn:
        xmins = dict(
            conn.execute(
                "SELECT id, xmin::text::bigint FROM telemetry_decision WHERE id = ANY(%s)",
                [[r["id"] for r in ok]],
            ).fetchall()
        )
    for row in ok:
        call = next(c for c in hook.calls if row["id"] in c["ids"])
        assert xmins[row["id"]] == call["xid"]


def test_admission_hook_is_not_called_without_reservations(rec: DecisionRecorder) -> None:
    hook = LimitHook(limit=0.0)
    rec.admit = hook
    rows = [make_row() for _ in range(3)] + [make_row(request_id="no-res")]
    results = record_all(rec, rows)
    assert all(results[r["id"]] == "stored" for r in rows)
    assert hook.calls == []


def test_admission_hook_database_error_fails_its_batch_only(rec: DecisionRecorder) -> None:
    def broken(cursor: psycopg.Cursor[Any], rows: list[DecisionRow]) -> dict[uuid.UUID, Any]:
        cursor.execute("SELECT 1 / 0")
        return {}

    rec.admit = broken
    bad = make_row(reservations=[{"budget_id": 1, "amount_usd": 0.1}])
    with pytest.raises(RecordingFailed):
        rec.record(bad, timeout_s=2)
    rec.admit = None
    good = make_row()
    assert rec.record(good, timeout_s=5) == "stored"
    assert set(DecisionRecord.objects.values_list("id", flat=True)) == {good["id"]}


def _params() -> dict[str, Any]:
    from telemetry.recorder import connection_params

    params = connection_params()
    params.pop("application_name", None)
    return params
