"""CLI entry point: ``python -m evaluation.fleet``.

Serves until SIGTERM or SIGINT, then shuts down cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .answers import DEFAULT_FLEET, FleetModel, fleet_model_from_dict, routellm_gsm8k_path
from .server import fleet_start


def load_config(path: str) -> list[FleetModel]:
    """Read a fleet config: a JSON list of model objects, or ``{"models": [...]}``."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if isinstance(data, dict):
        data = data.get("models")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of models or {{'models': [...]}}")
    models: list[FleetModel] = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: model #{index} must be a JSON object")
        models.append(fleet_model_from_dict(item))
    return models


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.fleet",
        description="Run the Switchyard replay fleet (an OpenAI-compatible test server).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8100, help="port, 0 = any free (default 8100)")
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="a RouteLLM-format recordings directory; its gsm8k_responses.csv is replayed",
    )
    parser.add_argument("--gsm8k", metavar="PATH", help="RouteLLM GSM8K responses CSV to replay")
    parser.add_argument(
        "--latency-scale",
        type=float,
        default=1.0,
        help="multiplier for simulated latencies; 0 disables sleeping (default 1.0)",
    )
    parser.add_argument(
        "--config", metavar="JSON_FILE", help="JSON list of models replacing the default fleet"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.latency_scale < 0:
        print("error: --latency-scale must be >= 0", file=sys.stderr)
        return 2
    try:
        models = load_config(args.config) if args.config else list(DEFAULT_FLEET)
        gsm8k = args.gsm8k or (routellm_gsm8k_path(args.data) if args.data else None)
        fleet = fleet_start(
            host=args.host,
            port=args.port,
            models=models,
            gsm8k_path=gsm8k,
            latency_scale=args.latency_scale,
            access_log=args.access_log,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    print(f"fleet listening on {fleet.url}", flush=True)
    recorded = f", {len(fleet.server.engine.gsm8k)} recorded GSM8K prompts" if gsm8k else ""
    print(
        f"answering {len(fleet.server.engine.workload)} generated workload items{recorded}",
        file=sys.stderr,
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        fleet.stop()
    print("fleet stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
