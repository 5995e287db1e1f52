"""The disguised-personal-data corpus (``data/pii_disguised.jsonl``), shared by the tests and
``bench/bench_pii.py``.

Each row has a ``category`` (fullwidth, invisible, separators, lookalikes, retrieval,
metadata), its expected ``pii`` kinds (empty: a negative that looks like personal data) and
the request fields that carry it: ``text`` (free text: posted as the prompt, as the retrieval
query and as a metadata value in turn), or one of ``retrieval_query``, ``metadata``,
``prompt_template``, ``document_ids`` (posted only there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from routing.schemas import DecisionInput, PromptTemplate, Retrieval

DISGUISED = Path(__file__).parent / "data" / "pii_disguised.jsonl"
CATEGORIES = ("fullwidth", "invisible", "separators", "lookalikes", "retrieval", "metadata")
FIELDS = ("text", "retrieval_query", "metadata", "prompt_template", "document_ids")


def disguised_rows() -> list[dict[str, Any]]:
    with DISGUISED.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def request_bodies(row: dict[str, Any], task_class: str) -> list[dict[str, Any]]:
    """Decision API bodies carrying the row's data in each place it belongs."""
    if "text" in row:
        text = row["text"]
        return [
            {"task_class": task_class, "prompt": text},
            {"task_class": task_class, "prompt": "Summarise.", "retrieval": {"query": text}},
            {"task_class": task_class, "prompt": "Summarise.", "metadata": {"note": text}},
        ]
    body: dict[str, Any] = {"task_class": task_class, "prompt": "Summarise."}
    if "retrieval_query" in row:
        body["retrieval"] = {"query": row["retrieval_query"]}
    if "document_ids" in row:
        body["retrieval"] = {"query": "", "document_ids": row["document_ids"]}
    if "metadata" in row:
        body["metadata"] = row["metadata"]
    if "prompt_template" in row:
        body["prompt_template"] = row["prompt_template"]
    return [body]


def request_input(row: dict[str, Any]) -> DecisionInput:
    """The row as one decoded request (the text as the prompt), for scoring the detector."""
    template = row.get("prompt_template")
    return DecisionInput(
        task_class="scoring",
        prompt=row.get("text"),
        retrieval=Retrieval(
            query=row.get("retrieval_query", ""), document_ids=row.get("document_ids", [])
        ),
        prompt_template=msgspec.convert(template, PromptTemplate) if template else None,
        metadata=row.get("metadata"),
    )
