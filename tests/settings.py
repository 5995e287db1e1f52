"""Test settings: the production settings, talking plain http to Django's test client."""

import os

os.environ.setdefault("DJANGO_HTTPS", "0")

from controlplane.settings import *  # noqa: F403

# Tests change the registry and expect the decision API to see it at once.
SWITCHYARD_SNAPSHOT_CHECK_S = 0.0
SWITCHYARD_BUDGET_REFRESH_S = 0.0
SWITCHYARD_RECORD_TIMEOUT_S = 3.0
