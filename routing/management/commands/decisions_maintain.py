from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from telemetry.retention import decisions_maintain


class Command(BaseCommand):
    help = (
        "Purge expired idempotency keys, create decision partitions ahead, drop those past "
        "retention, purge expired prompts."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        result = decisions_maintain()
        self.stdout.write(
            f"partitions created {len(result['created'])}, dropped {len(result['dropped'])}; "
            f"idempotency keys purged {result['idempotency_keys_purged']}; "
            f"prompts purged {result['prompts_purged']}"
        )
