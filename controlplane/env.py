"""Typed helpers that read settings from the environment.

The same code runs in development, tests and production; only the environment differs.
When DATABASE_URL / CELERY_BROKER_URL are unset, the embedded servers started by
``controlplane.stack`` are used (see EMBEDDED_* below), so ``manage.py`` works next to
``make run`` without extra variables.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("SWITCHYARD_VAR_DIR", BASE_DIR / "var"))

EMBEDDED_PG_PORT = int(os.environ.get("EMBEDDED_PG_PORT", "54329"))
EMBEDDED_REDIS_PORT = int(os.environ.get("EMBEDDED_REDIS_PORT", "63799"))
EMBEDDED_DATABASE_URL = f"postgresql://postgres@127.0.0.1:{EMBEDDED_PG_PORT}/switchyard"
EMBEDDED_BROKER_URL = f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def database_config(url: str) -> dict[str, object]:
    """Turn a postgres:// URL into a Django DATABASES entry (psycopg 3)."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got scheme {parts.scheme!r}")
    options: dict[str, object] = dict(parse_qsl(parts.query))
    host = unquote(parts.hostname or "")
    if "host" in options:  # ?host=/path/to/socket-dir
        host = str(options.pop("host"))
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(parts.port or ""),
        "OPTIONS": options,
    }


def secret_key() -> str:
    """DJANGO_SECRET_KEY, or a key generated once and kept in var/ for local runs."""
    key = os.environ.get("DJANGO_SECRET_KEY")
    if key:
        return key
    path = VAR_DIR / "secret_key"
    if path.exists():
        return path.read_text().strip()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    path.write_text(key)
    path.chmod(0o600)
    return key
