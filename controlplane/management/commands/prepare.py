from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Everything `make run` does before starting processes, in one Python process: "
        "migrate, decision-table maintenance, collectstatic and (unless --no-demo) demo data."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-demo", action="store_true")
        parser.add_argument(
            "--demo-registry-only",
            action="store_true",
            help="load only the demo registry, users and keys (the traffic loads later)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        call_command("decisions_maintain")
        call_command("collectstatic", interactive=False, verbosity=0)
        if not options["no_demo"]:
            call_command("demo_load", registry_only=options["demo_registry_only"])
