"""Train learned routers from the decision log: ``manage.py train_routers [--task-class SLUG]
[--threshold P] [--rule success|gain] [--window-days N] [--propose]``. Prints one line per
class: held-out metrics per model and where the router would send requests."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from controlplane.audit import audit_actor
from controlplane.models import TaskClass
from evaluation.models import LearnedRouterRule
from evaluation.services.learned import learned_router_propose, learned_router_train


class Command(BaseCommand):
    help = "Train learned routers (candidates) from graded decisions; optionally propose them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--task-class", action="append", default=[])
        parser.add_argument("--threshold", type=float, default=None)
        parser.add_argument("--window-days", type=int, default=None)
        parser.add_argument("--rule", choices=LearnedRouterRule.values, default="success")
        parser.add_argument("--propose", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        classes = TaskClass.objects.filter(is_active=True).order_by("slug")
        if options["task_class"]:
            classes = classes.filter(slug__in=options["task_class"])
            missing = set(options["task_class"]) - set(classes.values_list("slug", flat=True))
            if missing:
                raise CommandError(f"unknown task class(es): {', '.join(sorted(missing))}")
        threshold = options["threshold"]
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise CommandError("--threshold is a probability (0–1)")
        with audit_actor(label="train_routers"):
            for task_class in classes:
                router = learned_router_train(
                    task_class,
                    threshold=threshold,
                    window_days=options["window_days"],
                    rule=options["rule"],
                )
                if router is None:
                    self.stdout.write(f"{task_class.slug}: not enough graded data")
                    continue
                summary = {
                    slug: {k: m.get(k) for k in ("n", "brier", "brier_base", "auc", "ece")}
                    for slug, m in router.metrics.items()
                    if slug in router.coefficients
                }
                line = (
                    f"{task_class.slug}: learned v{router.version} threshold "
                    f"{router.threshold:.2f} heldout {json.dumps(summary)} "
                    f"routing {json.dumps(router.metrics.get('routing', {}).get('share'))}"
                )
                if options["propose"]:
                    proposal = learned_router_propose(router)
                    line += " proposed" if proposal else " (a proposal is already open)"
                self.stdout.write(line)
