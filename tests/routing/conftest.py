"""Fixtures of the gateway's tests (routing/gateway.py): the replay fleet as upstream (one per
module), the gateway served by uvicorn in a thread (one per module), and a registry of
fleet models (``fleet_registry``; tests/conftest.py's ``registry`` is another one)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from evaluation.fleet import RunningFleet, fleet_start
from routing.gateway import application
from tests.live_server import free_port
from tests.routing.gateway_support import registry_create


@pytest.fixture(scope="module")
def fleet() -> Iterator[RunningFleet]:
    with fleet_start(latency_scale=0.0) as running:
        yield running


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        application, host="127.0.0.1", port=port, lifespan="on", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def fleet_registry(fleet: RunningFleet) -> dict[str, Any]:
    fleet.state.reset()
    return registry_create(f"{fleet.url}/v1")
