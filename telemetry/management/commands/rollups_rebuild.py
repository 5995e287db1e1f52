from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils.dateparse import parse_datetime

from telemetry.rollups import rollups_rebuild


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = parse_datetime(value)
    if parsed is None:
        raise ValueError(f"not a date-time: {value!r}")
    return parsed


class Command(BaseCommand):
    help = "Rebuild the hourly dashboard rollups from the raw decision and outcome rows."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--start", help="ISO date-time (default: the oldest decision)")
        parser.add_argument("--end", help="ISO date-time (default: now + 1 h)")

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        rows = rollups_rebuild(start=_when(options["start"]), end=_when(options["end"]))
        self.stdout.write(f"rollups rebuilt: {rows} rows in {time.monotonic() - started:.1f} s")
