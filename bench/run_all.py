"""Run every benchmark in sequence; each writes its JSON into bench/results/.

Started by ``make bench`` with the embedded PostgreSQL/Redis up (or DATABASE_URL set).
Installs wrk (Debian package) if it is missing: the decision API benchmark drives the
saturation phase with it.

Routing quality (``manage.py routerbench``) runs only when ``ROUTERBENCH_DATA`` names a
RouteLLM-format directory (``ROUTERBENCH_DATA=/path/to/routellm``, see README), read
in place; it writes bench/results/routing_quality.json. Without it, it says it skipped and
writes nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = [
    "bench_engine.py",
    "bench_strategies.py",
    "bench_training.py",
    "bench_pii.py",
    "bench_decision_api.py",
    "bench_dashboards.py",
    "bench_sweep.py",
    "bench_gateway.py",
]


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("installing wrk (apt-get install wrk)…", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)


def routerbench() -> bool:
    """Routing quality on ROUTERBENCH_DATA, if set. False if it failed."""
    data = os.environ.get("ROUTERBENCH_DATA", "").strip()
    print("== routerbench", flush=True)
    if not data:
        print("routerbench skipped: set ROUTERBENCH_DATA to a RouteLLM-format directory")
        return True
    out = ROOT / "bench" / "results" / "routing_quality.json"
    command = [sys.executable, "manage.py", "routerbench", data, "--out", str(out)]
    return subprocess.call(command, cwd=ROOT) == 0


def main() -> int:
    ensure_wrk()
    failed = []
    if not routerbench():
        failed.append("routerbench")
    for name in BENCHES:
        path = ROOT / "bench" / name
        if not path.exists():
            continue
        print(f"== {name}", flush=True)
        if subprocess.call([sys.executable, str(path)], cwd=ROOT) != 0:
            failed.append(name)
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
