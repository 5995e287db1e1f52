"""Replay fleet: a small OpenAI-compatible HTTP server simulating the demo model registry.

Used by the demo, evaluation sweeps, tests and benchmarks so that model calls are real HTTP.
Plain Python (standard library only, no Django)::

    from evaluation.fleet import fleet_start

    with fleet_start(latency_scale=0.0) as fleet:
        httpx.post(f"{fleet.url}/v1/chat/completions", json={...})

It answers the project's generated workload (:mod:`evaluation.workload`) with per-model skill
profiles (:mod:`evaluation.fleet.skills`) and, optionally, replays RouteLLM recordings.

CLI: ``python -m evaluation.fleet --host 127.0.0.1 --port 8100 [--data ROUTELLM_DIR]``.
"""

from .answers import (
    DEFAULT_FLEET,
    Answer,
    AnswerEngine,
    FleetModel,
    Gsm8kRow,
    estimate_tokens,
    fleet_model_from_dict,
    gsm8k_load,
    normalise_prompt,
    routellm_gsm8k_path,
    sample_latency_ms,
)
from .server import FleetServer, FleetState, RunningFleet, fleet_start
from .skills import SKILLS, ModelSkill, skill_for, verdict

__all__ = [
    "DEFAULT_FLEET",
    "SKILLS",
    "Answer",
    "AnswerEngine",
    "FleetModel",
    "FleetServer",
    "FleetState",
    "Gsm8kRow",
    "ModelSkill",
    "RunningFleet",
    "estimate_tokens",
    "fleet_model_from_dict",
    "fleet_start",
    "gsm8k_load",
    "normalise_prompt",
    "routellm_gsm8k_path",
    "sample_latency_ms",
    "skill_for",
    "verdict",
]
