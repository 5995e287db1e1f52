"""``manage.py routerbench DIR [--train DIR] [--json] [--out FILE] [--plot FILE]``: routing
quality (APGR, CPT) of the random, length, learned, semantic and cascade routers on
RouteLLM-format recorded outcomes (``evaluation.routerbench``), the learned router and the
cascade run through the product in a scratch database that is dropped afterwards
(``evaluation.services.routerbench``). DIR is read in place."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from evaluation import routerbench
from evaluation.services.routerbench import routerbench_run


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (a timeout, ``kill``) unwinds the stack like Ctrl-C, so the scratch
    database is dropped on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received: list[int] = []

    def _exit(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
    if received:
        # The exception was raised where Python ignores it (a finaliser the garbage
        # collector was running): the run went on to its end and cleaned up; exit now.
        raise SystemExit(128 + received[0])


class Command(BaseCommand):
    help = "Measure the routers on RouteLLM-format recorded outcomes (mmlu/*.csv, gsm8k)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("data", nargs="?", type=Path)
        parser.add_argument("--data", dest="data_opt", type=Path, help="same as DATA")
        parser.add_argument("--train", type=Path, help="train on this directory instead")
        parser.add_argument("--folds", type=int, default=5)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--weak", default=routerbench.WEAK)
        parser.add_argument("--strong", default=routerbench.STRONG)
        parser.add_argument("--json", action="store_true", help="print one JSON object last")
        parser.add_argument("--out", type=Path, help="also write the JSON here")
        parser.add_argument("--plot", type=Path, help="write the curves as Plotly HTML")

    def handle(self, *args: Any, **options: Any) -> None:
        data: Path | None = options["data"] or options["data_opt"]
        if data is None:
            raise CommandError("give the data directory (DATA or --data)")
        for path in (data, options["train"]):
            if path is not None and not path.is_dir():
                raise CommandError(f"{path} is not a directory")
        if options["folds"] < 2:
            raise CommandError("--folds must be at least 2")
        try:
            with _sigterm_unwinds():
                results, scored = routerbench_run(
                    data,
                    train=options["train"],
                    folds=options["folds"],
                    seed=options["seed"],
                    weak=options["weak"],
                    strong=options["strong"],
                )
        except RuntimeError as exc:  # e.g. too few graded decisions to train a router
            raise CommandError(str(exc)) from exc
        if not results:
            raise CommandError(
                f"no RouteLLM-format data in {data} (mmlu/*.csv, gsm8k_responses.csv)"
            )
        for line in routerbench.table(results):
            self.stdout.write(line)
        payload = json.dumps(results, sort_keys=True)
        if options["out"]:
            options["out"].parent.mkdir(parents=True, exist_ok=True)
            options["out"].write_text(payload + "\n")
        if options["plot"]:
            options["plot"].write_text(routerbench.plot_html(scored, options["seed"]))
        if options["json"]:
            self.stdout.write(payload)
        if not routerbench.finite(results):
            raise CommandError("a router's APGR is not finite")
