from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from controlplane.demo import CREDENTIALS_PATH, demo_load


class Command(BaseCommand):
    help = (
        "Load the demo: registry, users and API keys, 30 days of traffic through the "
        "ingestion code, a learned router approved through the proposal flow, a few live "
        "decisions, evaluation schedules and a first sweep (idempotent)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--base-url",
            default="",
            help="where the web server answers; announces 'Proposal ready: URL' for new proposals",
        )
        parser.add_argument(
            "--registry-only",
            action="store_true",
            help="registry, users and keys only; no traffic, no sweeps",
        )

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()  # the launcher echoes it from the log as soon as it is written

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        credentials = demo_load()
        self.stdout.write(
            f"demo registry ready: {len(credentials['users'])} users, "
            f"{len(credentials['keys'])} API keys (secrets in {CREDENTIALS_PATH})"
        )
        if options["registry_only"]:
            return
        from evaluation.demo import (
            demo_desk_load,
            demo_evaluation_load,
            demo_learned_load,
            demo_live_load,
            proposals_announce,
        )
        from telemetry.demo_traffic import demo_traffic_load

        traffic = demo_traffic_load()
        if traffic["skipped"]:
            self.stdout.write("demo traffic already present")
        else:
            self.stdout.write(
                f"demo traffic: {traffic['decisions']} decisions, {traffic['outcomes']} "
                f"outcomes, {traffic['rollup_rows']} rollup rows in {traffic['total_s']} s"
            )
        # The desk needs only the traffic: before the sweep, which takes the longest.
        desk = demo_desk_load()
        self.stdout.write(
            f"reviewers' desk: {desk['handoffs']} pending handoffs, "
            f"{desk['checks']} failed output check"
        )
        # A class routed by a learned router, proposed and approved through the normal
        # flow; then a few live decisions (learned, semantic) and a cascade check.
        step = time.monotonic()
        learned = demo_learned_load()
        self.stdout.write(
            f"learned router: {learned['status']}"
            + (
                f" (v{learned['router']}, table v{learned['version']}, trained in "
                f"{learned['train_s']} s)"
                if learned["status"] == "applied"
                else ""
            )
        )
        if learned["status"] == "applied":  # the first load only: a re-run adds nothing
            live = demo_live_load(credentials["api_key"]["secret"])
            self.stdout.write(
                f"live decisions by strategy: {live['strategies']}; cascade check: "
                f"{live['cascade'] or 'skipped (fleet not answering)'} "
                f"({time.monotonic() - step:.1f} s)"
            )
        with proposals_announce(options["base_url"], self._say):
            evaluation = demo_evaluation_load()
        self.stdout.write(
            f"evaluation: {evaluation['schedules']} schedules, {evaluation['graders']} graders, "
            f"demo sweep #{evaluation['demo_sweep']} {evaluation['demo_sweep_status']}"
        )
        self.stdout.write(f"demo ready in {time.monotonic() - started:.1f} s")
