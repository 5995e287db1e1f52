from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from controlplane import services
from controlplane.models import Application, Team
from tests import factories


@pytest.fixture
def registry(db: Any) -> dict[str, Any]:
    """A small registry: a local, a mid and a frontier model, two task classes, an active table."""
    local = factories.model_create(slug="small-local", tier=1, locality="local")
    mid = factories.model_create(slug="mid-cloud", tier=2, locality="cloud", context_window=32000)
    big = factories.model_create(
        slug="big-cloud",
        tier=3,
        locality="cloud",
        context_window=128000,
        input_usd_per_mtok="2.50",
        output_usd_per_mtok="10.00",
    )
    triage = factories.task_class_create(slug="triage", default_output_cap=64)
    redact = factories.task_class_create(slug="redact", data_policy="local_only")
    version = factories.routing_table_create(
        {triage: (local, ["mid-cloud", "big-cloud"]), redact: (local, [])}
    )
    team = Team.objects.create(slug="team-a", name="Team A")
    app = Application.objects.create(slug="app-a", name="App A", team=team)
    return {
        "local": local,
        "mid": mid,
        "big": big,
        "triage": triage,
        "redact": redact,
        "version": version,
        "team": team,
        "app": app,
    }


@pytest.fixture
def api_key(registry: dict[str, Any]) -> str:
    _, secret = services.api_key_create(
        application=registry["app"], scopes=["decide", "report", "read"]
    )
    return secret


def client_for(role: str | None) -> Client:
    client = Client()
    if role is not None:
        client.force_login(factories.user_create(role))
    return client


@pytest.fixture
def role_client() -> Any:
    return client_for


@pytest.fixture(scope="session", autouse=True)
def _close_recorder_connection(django_db_setup: Any, django_db_blocker: Any) -> Any:
    yield
    from django.db import connection

    from routing.gateway import outcome_writer
    from telemetry.recorder import recorder

    recorder.close()
    outcome_writer.close()
    # Threads of this process that keep a connection by design (the registry refresher)
    # and servers a test started would hold the test database open: end their sessions so
    # pytest-django can drop it ("being accessed by other users" otherwise).
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _fresh_registry_caches() -> None:
    """Per-process caches follow the registry generation, which only moves after a commit;
    tests inside a rolled-back transaction never commit, so start each test afresh."""
    import telemetry.services
    from routing.snapshot import registry_cache
    from telemetry.budgets import BudgetLeases
    from telemetry.recorder import recorder

    if isinstance(recorder.admission, BudgetLeases):
        recorder.admission.reset()  # leases of a database flushed since

    telemetry.services._pricebook = None
    registry_cache.invalidate()


@pytest.fixture(autouse=True)
def _recorder_writes_need_a_transactional_test(request: pytest.FixtureRequest) -> Any:
    """The decision recorder commits on its own connection, so decisions a test records
    outlive a rolled-back test and leak into later ones: such a test must be transactional
    (flushed afterwards)."""
    from telemetry.recorder import recorder

    before = recorder.rows
    yield
    marker = request.node.get_closest_marker("django_db")
    transactional = bool(marker and marker.kwargs.get("transaction")) or bool(
        {"transactional_db", "live_server"} & set(request.fixturenames)
    )
    if recorder.rows > before and not transactional:
        pytest.fail(
            "this test recorded decisions (the recorder commits on its own connection) but "
            "is not transactional: mark it pytest.mark.django_db(transaction=True)"
        )
