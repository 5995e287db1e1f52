"""Django settings for Switchyard. Everything environment-specific comes from controlplane.env."""

from __future__ import annotations

import django_stubs_ext

from controlplane.env import (
    BASE_DIR,
    EMBEDDED_BROKER_URL,
    EMBEDDED_DATABASE_URL,
    VAR_DIR,
    database_config,
    env_bool,
    env_int,
    env_list,
    env_str,
    secret_key,
)

django_stubs_ext.monkeypatch()  # lets admin/serializer classes be subscripted for mypy

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = secret_key()
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "django_celery_beat",
    "controlplane",
    "routing",
    "telemetry",
    "evaluation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "controlplane.middleware.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "controlplane.middleware.AuditActorMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "controlplane.context_processors.roles",
            ],
        },
    },
]

DATABASES = {"default": database_config(env_str("DATABASE_URL", EMBEDDED_DATABASE_URL))}
# Who holds a connection shows in pg_stat_activity (the recorder names its own).
_DB_OPTIONS = DATABASES["default"]["OPTIONS"]
assert isinstance(_DB_OPTIONS, dict)
_DB_OPTIONS.setdefault("application_name", "switchyard")
# Connections of the servers (gunicorn_conf.py turns this on): with DATABASE_POOL_SIZE > 0
# each process borrows from a bounded psycopg pool and a request gives its connection back
# when it ends, so a server holds at most workers × (pool + recorder) connections however
# many threads serve requests (one persistent connection per thread would let WEB_THREADS
# exhaust PostgreSQL's max_connections). Commands, workers and tests keep one persistent
# connection per thread.
DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 0)
if DATABASE_POOL_SIZE > 0:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # pooled: Django returns it after each request
    _DB_OPTIONS["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_SIZE,
        "timeout": float(env_str("DATABASE_POOL_TIMEOUT_S", "10")),
    }  # CONN_HEALTH_CHECKS: a connection PostgreSQL dropped is replaced, not handed out
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", True)

# --- Security: safe by default; a local http demo turns the https-only parts off explicitly.
_HTTPS = env_bool("DJANGO_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = _HTTPS
SESSION_COOKIE_SECURE = _HTTPS
CSRF_COOKIE_SECURE = _HTTPS
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000 if _HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _HTTPS
SECURE_HSTS_PRELOAD = _HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "controlplane.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "controlplane.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Switchyard API",
    "DESCRIPTION": "Routing control plane for hybrid small/large language-model stacks.",
    "VERSION": "1.0.0",
    "OAS_VERSION": "3.1.0",  # JSON Schema: the request bodies are msgspec's (routing.schemas)
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],  # the schema is public
    "SERVE_AUTHENTICATION": [],
    "ENUM_NAME_OVERRIDES": {
        "AttemptStatusEnum": "routing.enums.AttemptStatus",
    },
}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", EMBEDDED_BROKER_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Product settings
# Rotation: how long the old secret of a rotated API key keeps working.
SWITCHYARD_KEY_ROTATION_GRACE_HOURS = env_int("SWITCHYARD_KEY_ROTATION_GRACE_HOURS", 24)
# Model base URLs must use one of these schemes and hosts (SSRF guard).
SWITCHYARD_MODEL_URL_SCHEMES = env_list("SWITCHYARD_MODEL_URL_SCHEMES", ["http", "https"])
SWITCHYARD_MODEL_URL_HOSTS = env_list(
    "SWITCHYARD_MODEL_URL_HOSTS",
    ["127.0.0.1", "localhost", "api.openai.com", "api.anthropic.com", "api.mistral.ai"],
)
# Decisions and outcomes are kept this many days; older daily partitions are dropped whole.
SWITCHYARD_DECISION_RETENTION_DAYS = env_int("SWITCHYARD_DECISION_RETENTION_DAYS", 90)
SWITCHYARD_PARTITIONS_AHEAD_DAYS = env_int("SWITCHYARD_PARTITIONS_AHEAD_DAYS", 14)
# The decision API re-checks the registry generation this often (seconds), and re-reads
# budget spends and observed model statistics this often.
SWITCHYARD_SNAPSHOT_CHECK_S = float(env_str("SWITCHYARD_SNAPSHOT_CHECK_S", "0.5"))
SWITCHYARD_BUDGET_REFRESH_S = float(env_str("SWITCHYARD_BUDGET_REFRESH_S", "1.0"))
# A cached API key is re-read from the database at least this often (seconds), even if no
# registry change cleared the cache (routing/snapshot.py, "API keys").
SWITCHYARD_KEY_CACHE_MAX_S = float(env_str("SWITCHYARD_KEY_CACHE_MAX_S", "60"))
# Decision request limits (413 above them) and how long a request waits to be recorded.
SWITCHYARD_MAX_PROMPT_CHARS = env_int("SWITCHYARD_MAX_PROMPT_CHARS", 200_000)
SWITCHYARD_MAX_METADATA_BYTES = env_int("SWITCHYARD_MAX_METADATA_BYTES", 4096)
SWITCHYARD_MAX_BODY_BYTES = env_int("SWITCHYARD_MAX_BODY_BYTES", 1_000_000)
SWITCHYARD_RECORD_TIMEOUT_S = float(env_str("SWITCHYARD_RECORD_TIMEOUT_S", "5.0"))
# The decision recorder (telemetry/recorder.py): rows per group commit, rows waiting at most
# (503 recording_unavailable beyond), per-statement timeout, connect timeout, and how long one
# write may take before its writer is replaced.
SWITCHYARD_RECORD_MAX_BATCH = env_int("SWITCHYARD_RECORD_MAX_BATCH", 500)
SWITCHYARD_RECORD_QUEUE_MAX = env_int("SWITCHYARD_RECORD_QUEUE_MAX", 5000)
SWITCHYARD_RECORD_STATEMENT_TIMEOUT_MS = env_int("SWITCHYARD_RECORD_STATEMENT_TIMEOUT_MS", 3000)
SWITCHYARD_RECORD_CONNECT_TIMEOUT_S = env_int("SWITCHYARD_RECORD_CONNECT_TIMEOUT_S", 2)
SWITCHYARD_RECORD_HANG_S = float(env_str("SWITCHYARD_RECORD_HANG_S", "4.0"))
# A request_id answers with its stored decision for this many hours; after that the key is
# purged (hourly maintenance) and reusing it makes a new decision. Never past retention.
SWITCHYARD_IDEMPOTENCY_WINDOW_HOURS = min(
    env_int("SWITCHYARD_IDEMPOTENCY_WINDOW_HOURS", 24), SWITCHYARD_DECISION_RETENTION_DAYS * 24
)

# --- The OpenAI-compatible gateway (routing/gateway.py, served by controlplane/asgi.py)
# Task class of a request that pins a model without naming a class ("" = 400 instead).
SWITCHYARD_GATEWAY_DEFAULT_TASK_CLASS = env_str("SWITCHYARD_GATEWAY_DEFAULT_TASK_CLASS", "")
# Per worker: upstream connections kept (one pooled client), threads deciding/recording,
# and how long a model URL's allowlist check (with DNS resolution) is reused.
SWITCHYARD_GATEWAY_HTTP_POOL = env_int("SWITCHYARD_GATEWAY_HTTP_POOL", 1024)
SWITCHYARD_GATEWAY_THREADS = env_int("SWITCHYARD_GATEWAY_THREADS", 32)
SWITCHYARD_GATEWAY_URL_CHECK_S = float(env_str("SWITCHYARD_GATEWAY_URL_CHECK_S", "30"))
# The decision's COMMIT runs while the model is called and has returned before anything is
# sent; its outcome (attempts, cost, the holds settled) is group-committed right after the
# answer was sent. 1: before it instead (one more commit on every answer's latency).
SWITCHYARD_GATEWAY_RECORD_BEFORE_ANSWER = env_bool("SWITCHYARD_GATEWAY_RECORD_BEFORE_ANSWER", False)

# Per-model circuit breakers (routing/circuits.py): consecutive failed upstream calls that
# open a model's circuit, how long it stays open, and how long a half-open probe may take.
SWITCHYARD_CIRCUIT_FAILURES = env_int("SWITCHYARD_CIRCUIT_FAILURES", 5)
SWITCHYARD_CIRCUIT_COOLDOWN_S = float(env_str("SWITCHYARD_CIRCUIT_COOLDOWN_S", "30"))
SWITCHYARD_CIRCUIT_PROBE_TIMEOUT_S = float(env_str("SWITCHYARD_CIRCUIT_PROBE_TIMEOUT_S", "60"))
# The gateway's answer cache (routing/answer_cache.py): Redis, the broker's server unless set.
SWITCHYARD_ANSWER_CACHE_URL = env_str("SWITCHYARD_ANSWER_CACHE_URL", CELERY_BROKER_URL)

# --- Evaluation (sweeps, proposals, model calls)

# Optional: a directory of RouteLLM-format recordings (gsm8k_responses.csv) that the replay
# fleet replays besides the generated workload. Empty (the default): none.
SWITCHYARD_ROUTELLM_DIR = env_str("SWITCHYARD_ROUTELLM_DIR", "")
# Model-call timeouts in seconds: per tier, overridden per model slug ("slug=secs,…").
SWITCHYARD_TIER_TIMEOUTS = {1: 15.0, 2: 30.0, 3: 60.0}
SWITCHYARD_MODEL_TIMEOUTS = {
    k.strip(): float(v)
    for k, _, v in (i.partition("=") for i in env_list("SWITCHYARD_MODEL_TIMEOUTS", []))
}
SWITCHYARD_EVAL_RETRIES = env_int("SWITCHYARD_EVAL_RETRIES", 2)
SWITCHYARD_EVAL_BACKOFF_S = 0.2
SWITCHYARD_EVAL_MAX_BACKOFF_S = 10.0
SWITCHYARD_EVAL_HTTP_POOL = env_int("SWITCHYARD_EVAL_HTTP_POOL", 64)
SWITCHYARD_SWEEP_CONCURRENCY = env_int("SWITCHYARD_SWEEP_CONCURRENCY", 32)
SWITCHYARD_SWEEP_SAMPLE_SIZE = env_int("SWITCHYARD_SWEEP_SAMPLE_SIZE", 200)
SWITCHYARD_SWEEP_WINDOW_DAYS = env_int("SWITCHYARD_SWEEP_WINDOW_DAYS", 14)
# A running sweep whose heartbeat is older than this is marked failed (and can be resumed).
SWITCHYARD_SWEEP_STALE_SECONDS = env_int("SWITCHYARD_SWEEP_STALE_SECONDS", 120)
# Escalation-rate monitor: above UPGRADE → propose a stronger tier; below DOWNGRADE over at
# least MIN_REQUESTS → schedule a downgrade trial.
SWITCHYARD_ESCALATION_UPGRADE_RATE = float(env_str("SWITCHYARD_ESCALATION_UPGRADE_RATE", "0.15"))
SWITCHYARD_ESCALATION_DOWNGRADE_RATE = float(
    env_str("SWITCHYARD_ESCALATION_DOWNGRADE_RATE", "0.02")
)
SWITCHYARD_ESCALATION_MIN_REQUESTS = env_int("SWITCHYARD_ESCALATION_MIN_REQUESTS", 200)
SWITCHYARD_ESCALATION_WINDOW_DAYS = env_int("SWITCHYARD_ESCALATION_WINDOW_DAYS", 7)
# Tests and parallel stacks sharing one Redis use their own queue.
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "celery")
# plotly.min.js is served from the installed plotly package (no CDN, no copy in the repo).
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "evaluation.staticfiles.PlotlyFinder",
]

# --- Dashboards (telemetry)
# Savings compare actual cost with the same tokens on this frontier model (its dated price).
SWITCHYARD_BASELINE_MODEL = env_str("SWITCHYARD_BASELINE_MODEL", "gpt-4o")
# Rollups of recent hours are recomputed this often (seconds) by Celery beat.
SWITCHYARD_ROLLUP_REFRESH_S = env_int("SWITCHYARD_ROLLUP_REFRESH_S", 60)
# Budgets: a decision holds its worst-case cost against every budget that applies until its
# outcome settles it; a hold whose outcome has not arrived after this many seconds is
# released (checked every SWITCHYARD_RESERVATION_EXPIRE_EVERY_S by Celery beat).
SWITCHYARD_RESERVATION_TTL_S = env_int("SWITCHYARD_RESERVATION_TTL_S", 900)
SWITCHYARD_RESERVATION_EXPIRE_EVERY_S = env_int("SWITCHYARD_RESERVATION_EXPIRE_EVERY_S", 60)
# Holds are carved out of leases each process takes from a budget's headroom: a lease admits
# decisions for at most this many seconds, then gives back what it did not use; no lease
# takes more than this share of what is left under the limit (telemetry/budgets.py).
SWITCHYARD_BUDGET_LEASE_S = float(env_str("SWITCHYARD_BUDGET_LEASE_S", "2.0"))
SWITCHYARD_BUDGET_LEASE_SHARE = float(env_str("SWITCHYARD_BUDGET_LEASE_SHARE", "0.125"))
# Confidence (routing/confidence.py): graded success counts of this many recent days,
# recomputed this often (seconds) by Celery beat.
SWITCHYARD_CONFIDENCE_WINDOW_DAYS = env_int("SWITCHYARD_CONFIDENCE_WINDOW_DAYS", 14)
SWITCHYARD_CONFIDENCE_REFRESH_S = env_int("SWITCHYARD_CONFIDENCE_REFRESH_S", 300)
# Learned routers: trained on this many recent days of graded decisions, this often.
SWITCHYARD_LEARNED_WINDOW_DAYS = env_int("SWITCHYARD_LEARNED_WINDOW_DAYS", 30)
SWITCHYARD_LEARNED_TRAIN_EVERY_S = env_int("SWITCHYARD_LEARNED_TRAIN_EVERY_S", 86400)
# Semantic routes' embedding backend (routing/semantic.py): "hashed" (character n-gram
# TF-IDF, nothing to download) or "sentence-transformers:/local/model/dir" (that package must
# be installed separately; it is not a dependency).
SWITCHYARD_SEMANTIC_BACKEND = env_str("SWITCHYARD_SEMANTIC_BACKEND", "hashed")
# Learned-router thresholds re-calibrated to their targets this often (seconds).
SWITCHYARD_THRESHOLD_CALIBRATE_EVERY_S = env_int("SWITCHYARD_THRESHOLD_CALIBRATE_EVERY_S", 21600)
CELERY_BEAT_SCHEDULE = {
    **globals().get("CELERY_BEAT_SCHEDULE", {}),
    "evaluation-learned-thresholds-calibrate": {
        "task": "evaluation.tasks.learned_thresholds_calibrate_task",
        "schedule": float(SWITCHYARD_THRESHOLD_CALIBRATE_EVERY_S),
    },
    "evaluation-learned-routers-train": {
        "task": "evaluation.tasks.learned_routers_train_task",
        "schedule": float(SWITCHYARD_LEARNED_TRAIN_EVERY_S),
    },
    "evaluation-graded-counts-refresh": {
        "task": "evaluation.tasks.graded_counts_refresh_task",
        "schedule": float(SWITCHYARD_CONFIDENCE_REFRESH_S),
    },
    "telemetry-rollups-refresh": {
        "task": "telemetry.tasks.rollups_refresh_task",
        "schedule": float(SWITCHYARD_ROLLUP_REFRESH_S),
    },
    "budget-leases-expire": {
        "task": "telemetry.tasks.budget_leases_expire_task",
        "schedule": float(SWITCHYARD_RESERVATION_EXPIRE_EVERY_S),
    },
}
# httpx logs every model call at INFO; sweeps make thousands.
LOGGING["loggers"]["httpx"] = {"level": "WARNING"}  # type: ignore[index]

# --- Reviewers' desk (evaluation): human handoffs and their webhooks
# A handoff without its own SLA is due this many minutes after it was submitted.
SWITCHYARD_HANDOFF_SLA_MINUTES = env_int("SWITCHYARD_HANDOFF_SLA_MINUTES", 60)
# A reviewer's claim on an item lapses after this many seconds unless renewed.
SWITCHYARD_HANDOFF_CLAIM_S = env_int("SWITCHYARD_HANDOFF_CLAIM_S", 600)
# Webhook deliveries: attempts in all, exponential backoff (with jitter) from/up to, timeout.
SWITCHYARD_WEBHOOK_MAX_ATTEMPTS = env_int("SWITCHYARD_WEBHOOK_MAX_ATTEMPTS", 8)
SWITCHYARD_WEBHOOK_BACKOFF_S = float(env_str("SWITCHYARD_WEBHOOK_BACKOFF_S", "2.0"))
SWITCHYARD_WEBHOOK_MAX_BACKOFF_S = float(env_str("SWITCHYARD_WEBHOOK_MAX_BACKOFF_S", "600"))
SWITCHYARD_WEBHOOK_TIMEOUT_S = float(env_str("SWITCHYARD_WEBHOOK_TIMEOUT_S", "5.0"))
CELERY_BEAT_SCHEDULE["webhook-deliveries-due"] = {
    "task": "evaluation.tasks.webhook_deliveries_due",
    "schedule": 60.0,
}
