from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from controlplane import services
from controlplane.audit import audit_actor

DEMO_TEAM = "demo"


class Command(BaseCommand):
    help = (
        "Create an API key for an application (created in the demo team if missing). "
        "The secret is printed once, alone on the last line."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("application", help="application slug")
        parser.add_argument(
            "--scopes",
            default="decide,report,read",
            help="comma-separated: decide, report, read, admin",
        )
        parser.add_argument("--name", default="")
        parser.add_argument("--expires-days", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        expires = None
        if options["expires_days"] is not None:
            expires = timezone.now() + timedelta(days=options["expires_days"])
        try:
            with audit_actor(label="manage.py create_api_key"):
                team = services.team_get_or_create(slug=DEMO_TEAM, name="Demo")
                app = services.application_get_or_create(slug=options["application"], team=team)
                key, secret = services.api_key_create(
                    application=app,
                    scopes=options["scopes"].split(","),
                    name=options["name"],
                    expires_at=expires,
                )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(
            f"API key {key.prefix} for application {app.slug} (team {app.team.slug}), "
            f"scopes {','.join(key.scopes)}. Store the secret now; it is not shown again:"
        )
        self.stdout.write(secret)
