"""Demo registry: models across three tiers, ten task classes, routing tables, teams, keys.

Loading is idempotent: a second run changes nothing and reuses the saved demo secrets.
Prices are examples for illustration (marked ``is_example``), not quoted list prices.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Group, User
from django.db import transaction
from django.utils import timezone

from controlplane import services
from controlplane.audit import audit_actor
from controlplane.env import VAR_DIR
from controlplane.models import (
    ApiKey,
    Application,
    Budget,
    ModelEndpoint,
    RoutingTableVersion,
    TaskClass,
)
from evaluation.workload import INVOICE_SCHEMA
from routing.enums import RouteStrategy

CREDENTIALS_PATH = VAR_DIR / "demo-credentials.json"


def fleet_url() -> str:
    return os.environ.get("FLEET_URL", "http://127.0.0.1:8100/v1")


# slug, provider, provider model, tier, locality, context, max out, $in/1M, $out/1M
MODELS: list[tuple[str, str, str, int, str, int, int, str, str]] = [
    (
        "llama-3.1-8b-local",
        "on-prem vLLM",
        "meta-llama/Llama-3.1-8B-Instruct",
        1,
        "local",
        32768,
        4096,
        "0.03",
        "0.06",
    ),
    (
        "qwen2.5-7b-local",
        "on-prem vLLM",
        "Qwen/Qwen2.5-7B-Instruct",
        1,
        "local",
        32768,
        4096,
        "0.03",
        "0.06",
    ),
    (
        "mistral-small-hosted",
        "Mistral",
        "mistral-small-latest",
        2,
        "cloud",
        32768,
        8192,
        "0.20",
        "0.60",
    ),
    ("gpt-4o-mini", "OpenAI", "gpt-4o-mini", 2, "cloud", 128000, 16384, "0.15", "0.60"),
    ("gpt-4o", "OpenAI", "gpt-4o", 3, "cloud", 128000, 16384, "2.50", "10.00"),
    ("claude-sonnet", "Anthropic", "claude-sonnet", 3, "cloud", 200000, 8192, "3.00", "15.00"),
]

# slug, name, risk, data policy, output cap, latency class, quality target, schema?, description
TASK_CLASSES: list[tuple[str, str, str, str, int, str, str, bool, str]] = [
    (
        "ticket-triage",
        "Ticket triage",
        "normal",
        "any",
        64,
        "interactive",
        "0.950",
        False,
        "Assign a support ticket to a queue and a priority.",
    ),
    (
        "field-extraction",
        "Field extraction",
        "normal",
        "any",
        512,
        "batch",
        "0.950",
        True,
        "Extract invoice or contract fields as JSON.",
    ),
    (
        "intent-detection",
        "Intent detection",
        "normal",
        "any",
        32,
        "interactive",
        "0.950",
        False,
        "Classify what a customer message asks for.",
    ),
    (
        "short-summary",
        "Short summary",
        "normal",
        "any",
        256,
        "interactive",
        "0.900",
        False,
        "Summarise a short note or thread in three sentences.",
    ),
    (
        "policy-check",
        "Policy check",
        "normal",
        "any",
        128,
        "interactive",
        "0.950",
        False,
        "Check a draft against the communication policy.",
    ),
    (
        "pii-redaction",
        "PII redaction",
        "normal",
        "local_only",
        2048,
        "batch",
        "0.980",
        False,
        "Redact personal data from documents; data must stay on local models.",
    ),
    (
        "sql-generation",
        "SQL generation",
        "normal",
        "any",
        1024,
        "interactive",
        "0.900",
        False,
        "Turn an analyst's question into SQL against the warehouse.",
    ),
    (
        "long-report-synthesis",
        "Long report synthesis",
        "normal",
        "any",
        4096,
        "batch",
        "0.850",
        False,
        "Synthesise a long report from many retrieved documents.",
    ),
    (
        "multi-step-reasoning",
        "Multi-step reasoning",
        "normal",
        "any",
        2048,
        "batch",
        "0.850",
        False,
        "Word problems and multi-step analysis.",
    ),
    (
        "customer-reply-draft",
        "Customer reply draft",
        "high",
        "any",
        1024,
        "interactive",
        "0.950",
        False,
        "Draft a reply to a customer; a person approves it before it is sent.",
    ),
]

# The table in force at the start of the demo period: cautious, frontier-heavy.
ROUTES_V1: dict[str, tuple[str, list[str]]] = {
    "ticket-triage": ("gpt-4o-mini", ["gpt-4o"]),
    "field-extraction": ("gpt-4o", ["claude-sonnet"]),
    "intent-detection": ("gpt-4o-mini", ["gpt-4o"]),
    "short-summary": ("gpt-4o-mini", ["gpt-4o"]),
    "policy-check": ("gpt-4o", ["claude-sonnet"]),
    "pii-redaction": ("llama-3.1-8b-local", ["qwen2.5-7b-local"]),
    "sql-generation": ("gpt-4o", ["claude-sonnet"]),
    "long-report-synthesis": ("claude-sonnet", ["gpt-4o"]),
    "multi-step-reasoning": ("gpt-4o", ["claude-sonnet"]),
    "customer-reply-draft": ("claude-sonnet", ["gpt-4o"]),
}
# The current table: routine classes moved to the small local models.
ROUTES_V2: dict[str, tuple[str, list[str]]] = {
    "ticket-triage": ("llama-3.1-8b-local", ["gpt-4o-mini", "gpt-4o"]),
    "field-extraction": ("qwen2.5-7b-local", ["gpt-4o-mini", "gpt-4o"]),
    "intent-detection": ("llama-3.1-8b-local", ["gpt-4o-mini"]),
    "short-summary": ("llama-3.1-8b-local", ["mistral-small-hosted", "gpt-4o"]),
    "policy-check": ("qwen2.5-7b-local", ["gpt-4o-mini", "gpt-4o"]),
    "pii-redaction": ("llama-3.1-8b-local", ["qwen2.5-7b-local"]),
    "sql-generation": ("gpt-4o-mini", ["gpt-4o"]),
    "long-report-synthesis": ("claude-sonnet", ["gpt-4o"]),
    "multi-step-reasoning": ("gpt-4o", ["claude-sonnet"]),
    "customer-reply-draft": ("claude-sonnet", ["gpt-4o"]),
}

# v2 routes intent detection semantically: upset customers (costly to misread) go to the
# mid model; everything else stays on the route's rule (the local 8B). The prompts share a
# long instruction, so similarities are low overall: on the generated workload complaints
# score 0.27–0.41 against these examples, every other intent at most 0.24.
SEMANTIC_CLASS = "intent-detection"
SEMANTIC_ROUTES: list[tuple[str, str, float, list[str]]] = [
    (
        "upset-customer",
        "gpt-4o-mini",
        0.26,
        [
            "This is the third time the product broke, your support is useless.",
            "Your courier was rude and my parcel was left outside in the rain.",
            "I am really annoyed, nobody answers my emails.",
            "Terrible service, the replacement broke again after a week.",
        ],
    ),
]

TEAMS = [
    ("support", "Customer Support", "support-desk", "2500"),
    ("analytics", "Analytics", "bi-assistant", "900"),
    ("platform", "Platform", "internal-tools", "1800"),
]

USERS = [
    ("Viewer", "viewer", "switchyard-viewer"),
    ("Reviewer", "reviewer", "switchyard-reviewer"),
    ("Operator", "operator", "switchyard-operator"),
    ("Admin", "admin", "switchyard-admin"),
]

# The generated workload's invoices are extracted against this schema.
FIELD_SCHEMA: dict[str, Any] = INVOICE_SCHEMA


def _routes_apply(
    version: RoutingTableVersion,
    table: dict[str, tuple[str, list[str]]],
    strategies: dict[str, str] | None = None,
) -> None:
    models = {m.slug: m for m in ModelEndpoint.objects.all()}
    for task_class in TaskClass.objects.all():
        primary, fallbacks = table[task_class.slug]
        services.route_set(
            version=version,
            task_class=task_class,
            primary=models[primary],
            fallbacks=fallbacks,
            escalate_confidence_below=Decimal("0.60") if models[primary].tier == 1 else None,
            strategy=(strategies or {}).get(task_class.slug, RouteStrategy.RULE),
        )


def _semantic_routes_load() -> None:
    from routing.models import SemanticRoute

    task_class = TaskClass.objects.get(slug=SEMANTIC_CLASS)
    for name, model, threshold, utterances in SEMANTIC_ROUTES:
        SemanticRoute.objects.get_or_create(
            task_class=task_class,
            name=name,
            defaults={
                "model": ModelEndpoint.objects.get(slug=model),
                "threshold": threshold,
                "utterances": utterances,
            },
        )


def demo_registry_load() -> None:
    """Models, prices, task classes, routing tables v1 → v2, teams, apps, budgets."""
    now = timezone.now()
    period_start = now - timedelta(days=31)
    with transaction.atomic(), audit_actor(label="demo loader"):
        for slug, provider, pmodel, tier, loc, ctx, out, pin, pout in MODELS:
            if ModelEndpoint.objects.filter(slug=slug).exists():
                continue
            services.model_endpoint_create(
                slug=slug,
                provider=provider,
                base_url=fleet_url(),
                provider_model=pmodel,
                version="2026-10",
                tier=tier,
                locality=loc,
                context_window=ctx,
                max_output_tokens=out,
                input_usd_per_mtok=pin,
                output_usd_per_mtok=pout,
                price_effective_from=period_start - timedelta(days=60),
                price_is_example=True,
            )
        for slug, name, risk, policy, cap, latency, target, schema, desc in TASK_CLASSES:
            TaskClass.objects.get_or_create(
                slug=slug,
                defaults={
                    "name": name,
                    "risk": risk,
                    "data_policy": policy,
                    "default_output_cap": cap,
                    "latency_class": latency,
                    "quality_target": Decimal(target),
                    "description": desc,
                    "output_schema": FIELD_SCHEMA if schema else None,
                    "prompt_retention_days": 0 if policy == "local_only" else 30,
                    # Repeated questions of a routine class: answered from the gateway's
                    # answer cache for an hour.
                    "answer_cache_ttl_s": 3600 if slug == "intent-detection" else 0,
                },
            )
        if not RoutingTableVersion.objects.exists():
            v1 = services.routing_version_draft_create(note="Initial table: frontier-heavy.")
            _routes_apply(v1, ROUTES_V1)
            services.routing_version_activate(version=v1, comment="initial table")
            RoutingTableVersion.objects.filter(pk=v1.pk).update(
                created_at=period_start, activated_at=period_start
            )
            v2 = services.routing_version_draft_create(
                based_on=v1, note="Routine classes move to the local 8B/7B models."
            )
            _routes_apply(v2, ROUTES_V2, {SEMANTIC_CLASS: RouteStrategy.SEMANTIC})
            services.routing_version_activate(version=v2, comment="tier-1 rollout")
            when = now - timedelta(days=16)
            RoutingTableVersion.objects.filter(pk=v2.pk).update(created_at=when, activated_at=when)
        _semantic_routes_load()
        for slug, name, app_slug, limit in TEAMS:
            team = services.team_get_or_create(slug=slug, name=name)
            services.application_get_or_create(slug=app_slug, team=team, name=app_slug)
            if not Budget.objects.filter(name=f"{slug}-monthly").exists():
                services.budget_create(
                    name=f"{slug}-monthly",
                    scope="team",
                    team=team,
                    period="month",
                    limit_usd=Decimal(limit),
                    soft_limit_pct=Decimal("80"),
                    hard_action="local_only" if slug == "analytics" else "block",
                )
        if not Budget.objects.filter(name="global-daily").exists():
            services.budget_create(
                name="global-daily",
                scope="global",
                period="day",
                limit_usd=Decimal("400"),
                soft_limit_pct=Decimal("90"),
                hard_action="block",
            )


def demo_users_load() -> list[dict[str, str]]:
    users = []
    for role, username, password in USERS:
        user, created = User.objects.get_or_create(
            username=username, defaults={"email": f"{username}@example.com"}
        )
        if created:
            user.set_password(password)
            user.is_staff = role in {"Operator", "Admin"}
            user.save()
        user.groups.add(Group.objects.get(name=role))
        users.append({"role": role, "username": username, "password": password})
    return users


def demo_keys_load() -> dict[str, dict[str, Any]]:
    """One key per demo application; secrets live only in var/demo-credentials.json."""
    saved: dict[str, dict[str, Any]] = {}
    if CREDENTIALS_PATH.exists():
        saved = json.loads(CREDENTIALS_PATH.read_text()).get("keys", {})
    keys: dict[str, dict[str, Any]] = {}
    for app in Application.objects.order_by("slug"):
        entry = saved.get(app.slug)
        if (
            entry
            and ApiKey.objects.filter(
                secret_hash=ApiKey.hash_secret(entry["secret"]), revoked_at=None
            ).exists()
        ):
            keys[app.slug] = entry
            continue
        scopes = ["decide", "report", "read"]
        with audit_actor(label="demo loader"):
            _, secret = services.api_key_create(application=app, scopes=scopes, name="demo")
        keys[app.slug] = {"application": app.slug, "scopes": scopes, "secret": secret}
    return keys


def demo_load() -> dict[str, Any]:
    demo_registry_load()
    users = demo_users_load()
    keys = demo_keys_load()
    credentials = {"users": users, "keys": keys, "api_key": keys["support-desk"]}
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    CREDENTIALS_PATH.write_text(json.dumps(credentials, indent=2))
    CREDENTIALS_PATH.chmod(0o600)
    return credentials
