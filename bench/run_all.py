"""Run every benchmark in sequence; each writes its JSON into bench/results/.

Started by ``make bench`` with the embedded PostgreSQL/Redis up (or DATABASE_URL set).
Installs wrk (Debian package) if it is missing: the decision API benchmark drives the
saturation phase with it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = [
    "bench_engine.py",
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


def main() -> int:
    ensure_wrk()
    failed = []
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
