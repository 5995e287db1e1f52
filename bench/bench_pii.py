"""Throughput and accuracy benchmark for :mod:`routing.pii`.

Run from the repository root::

    .venv/bin/python bench/bench_pii.py

It builds ~10 MB of realistic, mostly clean support-ticket / CRM / log text with occasional PII,
times :func:`routing.pii.pii_types` over it document by document (single core, best of 3) - and
over a copy in which a few characters per document are disguised (no-break spaces, zero-width
spaces, full-width digits: the normalisation path) - scores precision / recall on
``tests/routing/data/pii_labelled.jsonl`` and, separately, on the disguised-personal-data corpus
``tests/routing/data/pii_disguised.jsonl`` (through :func:`routing.pii.request_scan`, so
retrieval- and metadata-only rows count), and writes ``bench/results/pii.json``.  No Django is
imported.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from routing.pii import pii_types, request_scan  # noqa: E402
from tests.routing.pii_corpus import DISGUISED, disguised_rows, request_input  # noqa: E402

LABELLED = REPO_ROOT / "tests" / "routing" / "data" / "pii_labelled.jsonl"
RESULTS = REPO_ROOT / "bench" / "results" / "pii.json"
TARGET_MB_PER_S = 5.0
CORPUS_BYTES = 10 * 1024 * 1024
SEED = 1729

_FIRST = ["Alice", "Bruno", "Chen", "Dana", "Elif", "Farah", "Giorgio", "Hana", "Ivan", "Jonas"]
_LAST = ["Smith", "Rossi", "Novak", "Okafor", "Larsen", "Dubois", "Tanaka", "Garcia", "Kowalski"]
_PRODUCTS = [
    "router", "gateway", "billing portal", "SSO connector", "analytics dashboard",
    "mobile app", "API key manager", "webhook relay", "model registry", "audit log",
]  # fmt: skip
_MODELS = ["gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-70b", "mistral-large", "gemini-1.5-pro"]
_SENTENCES = [
    "Customer {name} reports that the {product} times out after {n} seconds.",
    "Order {order} shipped on {date} and the invoice INV-{year}-{n4} is attached.",
    "We upgraded the {product} to v{ver} on {date} at {time} UTC.",
    "Latency p95 was {ms} ms for {model} with {n} requests per minute.",
    "The customer was charged {amount} EUR twice for subscription {order}.",
    "Please escalate ticket #{n5} to tier two; the {product} is returning HTTP 502.",
    "Routing rule {n} sends prompts over {n4} tokens to {model}.",
    "Build {year}{n4}.{n} failed on agent-{n} with exit code 137.",
    "Reminder: the quarterly review with {name} is scheduled for {date} at {time}.",
    "Error rate dropped from {pct}% to {pct}% after the deploy of release {ver}.",
    "Request id {uuid} failed with a timeout after {ms} ms.",
    "Commit {sha} changed the retry policy of the {product}.",
    "Our SLA credit for March equals {pct}% of the monthly fee of {amount} USD.",
    "{name} asked whether the {product} supports SAML and SCIM provisioning.",
    "The nightly export wrote {n5} rows in {n} minutes and {n} seconds.",
    "Tracking number 1Z{n4}AA{n5}{n4} shows the parcel is in transit.",
    "Ping @{handle} about the {product} incident postmortem.",
    "Cost per 1K tokens for {model} is {price} USD, down from {price} USD.",
    "[{date} {time}] INFO worker-{n} processed {n5} messages in {ms} ms",
    "Cache hit ratio is {pct}% on shard {n}; eviction policy is LRU.",
]
_PII = [
    "Please call me back on +44 7700 900{n3}.",
    "My email is {handle}@example.com if that helps.",
    "The card used was 4111 1111 1111 1111.",
    "Refund to IBAN GB82 WEST 1234 5698 7654 32 please.",
    "Login attempts came from 203.0.113.{octet}.",
    "Her direct line is (415) 555-0{n3}.",
    "SSN on the form: 536-22-1418.",
    "DNI del titular: 12345678Z.",
    "NI number AB 12 34 56 C is on the payslip.",
    "Upstream 2001:db8::{n3} refused the connection.",
]


def _fill(template: str, rng: random.Random) -> str:
    name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    values = {
        "name": name,
        "handle": name.lower().replace(" ", "."),
        "product": rng.choice(_PRODUCTS),
        "model": rng.choice(_MODELS),
        "n": str(rng.randint(1, 99)),
        "n3": f"{rng.randint(0, 999):03d}",
        "n4": f"{rng.randint(0, 9999):04d}",
        "n5": str(rng.randint(10000, 99999)),
        "order": f"ORD-{rng.randint(100000, 999999)}",
        "year": str(rng.randint(2021, 2025)),
        "date": f"{rng.randint(2021, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        "ver": f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 30)}",
        "ms": str(rng.randint(5, 5000)),
        "amount": f"{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}",
        "pct": f"{rng.randint(0, 99)}.{rng.randint(0, 9)}",
        "price": f"0.{rng.randint(1, 999):03d}",
        "uuid": f"{rng.getrandbits(128):032x}",
        "sha": f"{rng.getrandbits(160):040x}",
        "octet": str(rng.randint(1, 254)),
    }
    return template.format(**values)


def build_corpus(total_bytes: int = CORPUS_BYTES, seed: int = SEED) -> list[str]:
    """Ticket-sized documents (~0.3-3 KB), about 1 in 12 containing one PII sentence."""
    rng = random.Random(seed)
    docs: list[str] = []
    size = 0
    while size < total_bytes:
        sentences = [_fill(rng.choice(_SENTENCES), rng) for _ in range(rng.randint(3, 30))]
        if rng.random() < 1 / 12:
            sentences.insert(rng.randrange(len(sentences) + 1), _fill(rng.choice(_PII), rng))
        doc = " ".join(sentences)
        docs.append(doc)
        size += len(doc.encode("utf-8"))
    return docs


def measure_throughput(docs: list[str], repeats: int = 3) -> float:
    """Best-of-`repeats` MB/s of pii_types over all documents (1 MB = 10**6 bytes)."""
    total = sum(len(doc.encode("utf-8")) for doc in docs)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for doc in docs:
            pii_types(doc)
        best = min(best, time.perf_counter() - started)
    return total / 1e6 / best


def disguise_corpus(docs: list[str], seed: int = SEED) -> list[str]:
    """The same documents with ~1 % of their spaces / digits disguised (not ASCII any more)."""
    rng = random.Random(seed)
    disguised = []
    for doc in docs:
        chars = list(doc)
        for _ in range(max(1, len(chars) // 100)):
            index = rng.randrange(len(chars))
            char = chars[index]
            if char == " ":
                chars[index] = rng.choice(("\u00a0", "\u202f", "\u3000"))
            elif char.isdigit():
                chars[index] = chr(ord(char) + 0xFEE0)
            else:
                chars[index] = char + "\u200b"
        disguised.append("".join(chars))
    return disguised


def score_disguised() -> tuple[float, float, int, dict[str, list[int]]]:
    """Per-row, per-kind precision and recall on the disguised corpus, and per category."""
    tp = fp = fn = 0
    per_category: dict[str, list[int]] = {}
    rows = disguised_rows()
    for row in rows:
        expected = set(row["pii"])
        found = set(request_scan(request_input(row)).types)
        counts = per_category.setdefault(row["category"], [0, 0, 0])
        for slot, value in enumerate(
            (len(found & expected), len(found - expected), len(expected - found))
        ):
            counts[slot] += value
        tp += len(found & expected)
        fp += len(found - expected)
        fn += len(expected - found)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall, len(rows), per_category


def score_labelled(path: Path = LABELLED) -> tuple[float, float, int]:
    """Per-string, per-kind precision and recall on the labelled set."""
    tp = fp = fn = 0
    strings = 0
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            strings += 1
            expected = set(row["pii"])
            found = set(pii_types(row["text"]))
            tp += len(found & expected)
            fp += len(found - expected)
            fn += len(expected - found)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall, strings


def main() -> int:
    docs = build_corpus()
    mb_per_s = measure_throughput(docs)
    disguised_mb_per_s = measure_throughput(disguise_corpus(docs))
    precision, recall, strings = score_labelled()
    d_precision, d_recall, d_rows, per_category = score_disguised()
    # The disguised-text figure is reported, not gated: it is the slow (non-ASCII) path.
    ok = mb_per_s >= TARGET_MB_PER_S and min(precision, recall, d_precision) >= 0.95
    ok = ok and d_recall == 1.0
    result = {
        "mb_per_s": round(mb_per_s, 2),
        "disguised_text_mb_per_s": round(disguised_mb_per_s, 2),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "strings": strings,
        "disguised_corpus": {
            "file": str(DISGUISED.relative_to(REPO_ROOT)),
            "rows": d_rows,
            "precision": round(d_precision, 4),
            "recall": round(d_recall, 4),
            "per_category_tp_fp_fn": per_category,
        },
        "target_mb_per_s": TARGET_MB_PER_S,
        "ok": ok,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    corpus_mb = sum(len(doc.encode("utf-8")) for doc in docs) / 1e6
    print(
        f"pii: {mb_per_s:.1f} MB/s over {corpus_mb:.1f} MB in {len(docs)} docs "
        f"(target {TARGET_MB_PER_S}), precision {precision:.3f}, recall {recall:.3f} "
        f"on {strings} strings; disguised text {disguised_mb_per_s:.1f} MB/s; disguised corpus "
        f"precision {d_precision:.3f}, recall {d_recall:.3f} on {d_rows} rows "
        f"-> {'OK' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
