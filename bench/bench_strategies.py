"""In-process latency of one decision by strategy: rule, learned, semantic (no Django).

Run from the repository root::

    .venv/bin/python bench/bench_strategies.py [--calls 5000]

Prompts are the project's generated workload (``evaluation.workload``, ten task classes,
about 100–2,000 characters). The learned route has a stored-format router with three models
over the default 4,096 hashed features (weights drawn at random: the cost does not depend
on their values). The semantic route has ten semantic routes, one per workload class, each
defined by 20 of its prompts; the decisions are other prompts of those classes, so the
share routed to their own class is reported too (an easy case: each class's prompts share
an instruction). A loop of decisions keeps the CPU caches warm: inside the decision API,
between requests' other work, the same learned decision cost up to about twice its figure
here (bench/decision_cpu.py measures the API's CPU per request by strategy).
Writes ``bench/results/strategies.json``. Target (issue 10): a learned
decision ≤ 1 ms p99; exits non-zero when it is missed.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluation.workload import TASK_CLASSES, workload_items  # noqa: E402
from routing.engine import (  # noqa: E402
    DecisionRequest,
    ModelInfo,
    RouteInfo,
    Snapshot,
    TaskClassInfo,
    decide,
    snapshot_build,
)
from routing.learned import HashingSpec, learned_router_from_data  # noqa: E402
from routing.semantic import HashedTfidf, SemanticRoute, semantic_router_build  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "strategies.json"
LEARNED_P99_TARGET_MS = 1.0
EXAMPLES = 20


def _model(slug: str, tier: int, locality: str, price: float) -> ModelInfo:
    return ModelInfo(
        slug=slug,
        provider="p",
        base_url="http://127.0.0.1:1/v1",
        provider_model=slug,
        version="1",
        tier=tier,
        locality=locality,
        context_window=128_000,
        max_output_tokens=1024,
        status="active",
        input_usd_per_mtok=price,
        output_usd_per_mtok=price,
    )


def build(seed: int = 3) -> tuple[Snapshot, dict[str, str]]:
    rng = random.Random(seed)
    models = [_model("local", 1, "local", 0.1), _model("mid", 2, "cloud", 1.0)]
    models.append(_model("big", 3, "cloud", 10.0))
    spec = HashingSpec()
    coefficients = {
        m.slug: {"intercept": 1.0, "weights": [rng.gauss(0, 0.3) for _ in range(spec.width)]}
        for m in models
    }
    learned = learned_router_from_data(
        task_class="learned", version=1, hashing=spec.as_dict(), threshold=0.8,
        coefficients=coefficients,
    )  # fmt: skip
    slugs = [m.slug for m in models]
    routes = [
        SemanticRoute(
            name=tc,
            model=slugs[i % 3],
            threshold=0.3,
            utterances=tuple(item.prompt for item in workload_items(tc, size=EXAMPLES)),
        )
        for i, tc in enumerate(TASK_CLASSES)
    ]
    semantic = semantic_router_build("semantic", routes, HashedTfidf())
    snapshot = snapshot_build(
        version=1,
        models=models,
        task_classes=[
            TaskClassInfo(slug=s, default_output_cap=256) for s in ("rule", "learned", "semantic")
        ],
        routes=[
            RouteInfo(task_class=s, primary="big", fallbacks=("mid", "local"), strategy=s)
            for s in ("rule", "learned", "semantic")
        ],
        learned={"learned": learned},
        semantic={"semantic": semantic},
    )
    return snapshot, {r.name: r.model for r in routes}


def measure(snapshot: Snapshot, strategy: str, prompts: list[str], calls: int) -> dict[str, float]:
    timings = []
    for i in range(calls):
        request = DecisionRequest(
            task_class=strategy, input_tokens=300, prompt=prompts[i % len(prompts)]
        )
        started = time.perf_counter_ns()
        decide(request, snapshot)
        timings.append(time.perf_counter_ns() - started)
    timings.sort()

    def q(p: float) -> float:
        return round(timings[min(len(timings) - 1, int(p * len(timings)))] / 1e6, 4)

    return {"calls": calls, "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    snapshot, _ = build()
    queries = [
        (tc, item.prompt)
        for tc in TASK_CLASSES
        for item in workload_items(tc, size=EXAMPLES + 200)[EXAMPLES:]
    ]
    random.Random(5).shuffle(queries)
    prompts = [p for _, p in queries]
    result: dict[str, object] = {"benchmark": "decision latency by strategy, in process"}
    for strategy in ("rule", "learned", "semantic"):
        measure(snapshot, strategy, prompts, 200)  # warm-up
        result[strategy] = measure(snapshot, strategy, prompts, args.calls)
    router = snapshot.semantic["semantic"]
    right = 0
    for tc, prompt in queries:
        match = router.match(prompt)
        right += match is not None and match.matched and match.route.name == tc
    result["semantic_own_class_share"] = round(right / len(queries), 4)
    result["semantic_queries"] = len(queries)
    result["prompt_chars_mean"] = round(sum(map(len, prompts)) / len(prompts))
    result["learned_p99_target_ms"] = LEARNED_P99_TARGET_MS
    learned = result["learned"]
    assert isinstance(learned, dict)
    result["ok"] = learned["p99_ms"] <= LEARNED_P99_TARGET_MS
    result["python"] = platform.python_version()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
