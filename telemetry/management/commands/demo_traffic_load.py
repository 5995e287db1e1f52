from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from telemetry.demo_traffic import DEFAULT_DAYS, DEFAULT_DECISIONS, demo_traffic_load


class Command(BaseCommand):
    help = "Load 30 days of demo decisions and outcomes, then rebuild rollups (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--decisions", type=int, default=DEFAULT_DECISIONS)
        parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
        parser.add_argument("--force", action="store_true", help="load even if present")

    def handle(self, *args: Any, **options: Any) -> None:
        result = demo_traffic_load(
            decisions=options["decisions"], days=options["days"], force=options["force"]
        )
        if result["skipped"]:
            self.stdout.write("demo traffic already present; skipped")
            return
        self.stdout.write(
            f"demo traffic: {result['decisions']} decisions, {result['outcomes']} outcomes, "
            f"{result['rollup_rows']} rollup rows in {result['total_s']} s"
        )
