"""COMMIT faults on demand: a deferred constraint trigger that kills the committing backend.

``install`` adds, to a test database, a DEFERRABLE INITIALLY DEFERRED constraint trigger on
``telemetry_decision``: it runs at COMMIT time, after every statement of the transaction has
succeeded. While faults are armed, it terminates its own backend (``pg_terminate_backend``)
for each of the next N committing transactions, so their COMMIT fails with the connection
lost. Counters are sequences, which a rolled-back transaction does not undo, so ``fired``
tells how many COMMITs were really killed.

``min_rows`` limits the faults to transactions that wrote at least that many decisions (an
immediate row trigger counts them); ``largest_killed`` tells the most rows a killed COMMIT
carried.

Modes: ``abort`` sleeps after the signal, so the backend dies inside the trigger and the
transaction is rolled back; ``race`` does not, so the backend may die just before or just
after the commit is durable — the client cannot tell which (an uncertain COMMIT); ``slow``
kills nothing: the COMMIT waits 0.4 s, then succeeds (``fired`` counts it too).
"""

from __future__ import annotations

from typing import Any

INSTALL_SQL = """
CREATE SEQUENCE IF NOT EXISTS fault_commit_seen;
CREATE SEQUENCE IF NOT EXISTS fault_commit_fired;
CREATE SEQUENCE IF NOT EXISTS fault_commit_rows;
CREATE TABLE IF NOT EXISTS fault_control (
    id integer PRIMARY KEY, remaining integer NOT NULL, mode text NOT NULL,
    min_rows integer NOT NULL
);
INSERT INTO fault_control VALUES (1, 0, 'abort', 0) ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION fault_commit_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config(
        'fault.rows',
        (coalesce(nullif(current_setting('fault.rows', true), ''), '0')::int + 1)::text,
        true
    );
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION fault_commit_kill() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    armed integer;
    how text;
    least_rows integer;
    rows integer;
BEGIN
    -- Once per transaction: the first row's trigger decides for the whole COMMIT.
    IF current_setting('fault.seen', true) = txid_current()::text THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('fault.seen', txid_current()::text, true);
    SELECT remaining, mode, min_rows INTO armed, how, least_rows FROM fault_control WHERE id = 1;
    rows := coalesce(nullif(current_setting('fault.rows', true), ''), '0')::int;
    IF armed > 0 AND rows >= least_rows AND nextval('fault_commit_seen') <= armed THEN
        PERFORM nextval('fault_commit_fired');
        PERFORM setval('fault_commit_rows', greatest(rows, (
            SELECT CASE WHEN is_called THEN last_value ELSE 1 END FROM fault_commit_rows
        )));
        IF how = 'slow' THEN
            PERFORM pg_sleep(0.4);
            RETURN NULL;
        END IF;
        PERFORM pg_terminate_backend(pg_backend_pid());
        IF how = 'abort' THEN
            PERFORM pg_sleep(10);
        END IF;
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS fault_commit_rows ON telemetry_decision;
CREATE TRIGGER fault_commit_rows AFTER INSERT ON telemetry_decision
    FOR EACH ROW EXECUTE FUNCTION fault_commit_count();
DROP TRIGGER IF EXISTS fault_commit ON telemetry_decision;
CREATE CONSTRAINT TRIGGER fault_commit AFTER INSERT ON telemetry_decision
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fault_commit_kill();
"""

REMOVE_SQL = """
DROP TRIGGER IF EXISTS fault_commit ON telemetry_decision;
DROP TRIGGER IF EXISTS fault_commit_rows ON telemetry_decision;
DROP FUNCTION IF EXISTS fault_commit_kill();
DROP FUNCTION IF EXISTS fault_commit_count();
DROP SEQUENCE IF EXISTS fault_commit_rows;
DROP TABLE IF EXISTS fault_control;
DROP SEQUENCE IF EXISTS fault_commit_seen;
DROP SEQUENCE IF EXISTS fault_commit_fired;
"""


def install(conn: Any) -> None:
    """Install the trigger (disarmed) through an autocommit psycopg connection."""
    conn.execute(INSTALL_SQL)


def remove(conn: Any) -> None:
    conn.execute(REMOVE_SQL)


def arm(conn: Any, count: int, mode: str = "abort", min_rows: int = 0) -> None:
    """Kill the next ``count`` committing transactions that wrote at least ``min_rows``
    decisions."""
    conn.execute("SELECT setval('fault_commit_seen', 1, false)")
    conn.execute(
        "UPDATE fault_control SET remaining = %s, mode = %s, min_rows = %s WHERE id = 1",
        [count, mode, min_rows],
    )


def disarm(conn: Any) -> None:
    conn.execute("UPDATE fault_control SET remaining = 0 WHERE id = 1")


def fired(conn: Any) -> int:
    """How many COMMITs the trigger has killed since it was installed."""
    last_value, is_called = conn.execute(
        "SELECT last_value, is_called FROM fault_commit_fired"
    ).fetchone()
    return int(last_value) if is_called else 0


def largest_killed(conn: Any) -> int:
    """The most decision rows any killed COMMIT carried."""
    last_value, is_called = conn.execute(
        "SELECT last_value, is_called FROM fault_commit_rows"
    ).fetchone()
    return int(last_value) if is_called else 0
