from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from controlplane.demo import CREDENTIALS_PATH, demo_load


class Command(BaseCommand):
    help = "Load the demo registry, users and API keys (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        credentials = demo_load()
        self.stdout.write(
            f"demo registry ready: {len(credentials['users'])} users, "
            f"{len(credentials['keys'])} API keys (secrets in {CREDENTIALS_PATH})"
        )
