"""``manage.py run_fleet``: the replay fleet, with the RouteLLM GSM8K answers when present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from evaluation.fleet.__main__ import main as fleet_main


def gsm8k_path() -> Path | None:
    """The recorded GSM8K responses, read in place from SWITCHYARD_ROUTELLM_DIR."""
    path = Path(settings.SWITCHYARD_ROUTELLM_DIR) / "gsm8k_responses.csv"
    return path if path.exists() else None


class Command(BaseCommand):
    help = "Run the replay fleet (OpenAI-compatible test server) until SIGTERM/SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8100)
        parser.add_argument("--latency-scale", type=float, default=1.0)
        parser.add_argument("--config", help="JSON list of models replacing the default fleet")
        parser.add_argument("--no-gsm8k", action="store_true", help="do not replay GSM8K")
        parser.add_argument("--access-log", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        argv = [
            "--host",
            options["host"],
            "--port",
            str(options["port"]),
            "--latency-scale",
            str(options["latency_scale"]),
        ]
        if options["config"]:
            argv += ["--config", options["config"]]
        if options["access_log"]:
            argv.append("--access-log")
        path = None if options["no_gsm8k"] else gsm8k_path()
        if path is not None:
            argv += ["--gsm8k", str(path)]
        elif not options["no_gsm8k"]:
            self.stderr.write("GSM8K responses not found; serving generic answers only.")
        status = fleet_main(argv)
        if status:
            raise CommandError(f"the fleet exited with status {status}")
