"""``manage.py run_fleet``: the replay fleet, answering the generated workload.

``--data DIR`` (default: the ``SWITCHYARD_ROUTELLM_DIR`` setting, empty unless set) also
replays a directory of RouteLLM-format recordings (``DIR/gsm8k_responses.csv``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from evaluation.fleet.__main__ import main as fleet_main


class Command(BaseCommand):
    help = "Run the replay fleet (OpenAI-compatible test server) until SIGTERM/SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8100)
        parser.add_argument("--latency-scale", type=float, default=1.0)
        parser.add_argument("--config", help="JSON list of models replacing the default fleet")
        parser.add_argument(
            "--data",
            metavar="DIR",
            default=None,
            help="RouteLLM-format recordings to replay as well (default: SWITCHYARD_ROUTELLM_DIR)",
        )
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
        data = options["data"] if options["data"] is not None else settings.SWITCHYARD_ROUTELLM_DIR
        if data:
            argv += ["--data", str(data)]
        status = fleet_main(argv)
        if status:
            raise CommandError(f"the fleet exited with status {status}")
