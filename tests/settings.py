"""Test settings: the production settings, talking plain http to Django's test client."""

import os

os.environ.setdefault("DJANGO_HTTPS", "0")

from controlplane.settings import *  # noqa: F403
