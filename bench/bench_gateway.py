"""Gateway benchmark, side by side (issue 12): Switchyard's gateway and LiteLLM's proxy in
front of the same fast OpenAI-compatible stub, in one run.

1. The stub (``bench/stub_upstream.py``: raw asyncio protocol on uvloop, 2 processes sharing
   the port) answers every chat completion at once, or after 1 s when the request carries the
   marker ``#slow``. Measured alone first: its saturation (wrk) and its latency at 100
   requests/s offered (the baseline the gateways' *added* latency is measured against).
2. Switchyard: a fresh database ``switchyard_bench`` (migrated, demo registry with every
   model pointed at the stub, budgets wide open, one API key), the gateway as ``make run``
   serves it (gunicorn, 2 uvicorn workers, production settings). LiteLLM: installed by this
   benchmark into its own virtualenv (``var/bench-litellm-venv``, ``pip install
   'litellm[proxy]'``), 2 workers, no database, a non-default master key,
   ``LITELLM_LOCAL_MODEL_COST_MAP=True``, one model (the stub) named like the task class
   Switchyard is asked for.
3. Each side in turn, the same request (``model: ticket-triage``, one user message):
   saturation (wrk: the best of 16, 64 and 256 connections), latency at 100 requests/s
   offered (open loop, ``bench/loadgen.py``, latency from the scheduled send time), then
   500 requests at once against the 1-second answer (plain, then streamed; each on its own
   connection).
4. Switchyard must record every call durably: every acknowledged answer's decision id (the
   ``x-switchyard-decision-id`` header, collected by wrk's script and the load generators)
   must have its decision row in PostgreSQL (``lost`` counts those missing; outcomes are
   counted too). LiteLLM has no database here, so it records nothing to lose (``lost``:
   null).

Run: ``python -m controlplane.stack exec .venv/bin/python bench/bench_gateway.py``
(``--skip-litellm`` for the Switchyard side alone). Writes bench/results/gateway.json:
``switchyard`` and ``litellm`` (``saturation_rps``, ``p50_ms``/``p99_ms`` at 100 requests/s
offered, ``added_p50_ms``/``added_p99_ms`` over the stub, ``errors``, ``lost``, the phases),
``stub`` and ``saturation_ratio`` (Switchyard / LiteLLM). If LiteLLM cannot be installed or
started, its object says so (``error``) and the ratio is null.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_decision_api import prepare_database  # noqa: E402
from bench.loadgen import percentile, steady_run  # noqa: E402

GATEWAY_PORT = int(os.environ.get("BENCH_GATEWAY_PORT", "8301"))
STUB_PORT = int(os.environ.get("BENCH_STUB_PORT", "8302"))
LITELLM_PORT = int(os.environ.get("BENCH_LITELLM_PORT", "8303"))
RESULTS = ROOT / "bench" / "results" / "gateway.json"
LITELLM_VENV = ROOT / "var" / "bench-litellm-venv"
LITELLM_KEY = "sk-switchyard-bench-7f3a9c"  # a non-default master key
MODEL = "ticket-triage"
PROMPT = "The printer on floor 3 is on fire. Which queue?"
DECISION_HEADER = "x-switchyard-decision-id"


def chat_body(stream: bool = False, slow: bool = False) -> bytes:
    content = PROMPT + (" #slow" if slow else "")
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


# --- the load --------------------------------------------------------------------------------


async def _one(port: int, request: bytes) -> tuple[int, bytes, bytes]:
    """One request on its own connection (``Connection: close``): status, head, body.

    A plain asyncio client: httpx's connection pool, driven with 500 connections at once,
    managed only about 65 requests/s against the bare stub on this machine and would have
    measured itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.read()  # until the server closes (content-length or chunked)
    finally:
        writer.close()
    return int(head.split(b" ", 2)[1]), head, body


async def _burst(port: int, secret: str, count: int, stream: bool) -> dict[str, Any]:
    body = chat_body(stream=stream, slow=True)
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: Bearer " + secret.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    ids: list[str] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        began = time.perf_counter()
        try:
            status, head, answer = await asyncio.wait_for(_one(port, request), 60)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            errors += 1
            return
        latencies.append((time.perf_counter() - began) * 1000)
        complete = b"[DONE]" in answer if stream else b'"choices"' in answer
        key = str(status) if complete or status != 200 else "200-incomplete"
        statuses[key] = statuses.get(key, 0) + 1
        if status != 200 or not complete:
            errors += 1
        for line in head.split(b"\r\n"):
            if line.lower().startswith(DECISION_HEADER.encode() + b":") and status == 200:
                ids.append(line.split(b":", 1)[1].strip().decode())

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    wall = time.perf_counter() - began
    return {
        "requests": count,
        "stream": stream,
        "wall_s": round(wall, 3),
        "statuses": statuses,
        "errors": errors,
        "p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "ids": ids,
    }


# --- wrk (saturation) and the open-loop generator (100 requests/s) ---------------------------


def _wrk_script(path: Path, secret: str, ids_dir: Path | None) -> None:
    """POST the chat request; with ``ids_dir`` every thread appends the decision id of each
    200 to its own file there (the durability check reads them)."""
    body = chat_body().decode()
    script = (
        "wrk.method = 'POST'\n"
        f"wrk.headers['Authorization'] = 'Bearer {secret}'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
        f"wrk.body = [==[{body}]==]\n"
        "wrk.path = '/v1/chat/completions'\n"
    )
    if ids_dir is not None:
        script += (
            "local counter = 0\n"
            "function setup(thread)\n"
            "  counter = counter + 1\n"
            "  thread:set('tid', counter)\n"
            "end\n"
            "function init(args)\n"
            f"  out = io.open('{ids_dir}/ids-' .. tid .. '.txt', 'w')\n"
            "end\n"
            "function response(status, headers, body)\n"
            f"  local id = headers['{DECISION_HEADER}']\n"
            "  if status == 200 and id then out:write(id, '\\n') end\n"
            "end\n"
        )
    path.write_text(script)


def _wrk(url: str, seconds: int, connections: int, script: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total_match = re.search(r"(\d+) requests in", out)
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = int(total_match.group(1)) if total_match else 0
    failed = int(non2xx.group(1)) if non2xx else 0
    socket_errors = sum(int(x) for x in socket.groups()) if socket else 0
    rps = float(rps_match.group(1)) if rps_match else 0.0
    return {
        "requests": total,
        "non_2xx": failed,
        "socket_errors": socket_errors,
        "rps": rps,
        # Throughput of good answers only.
        "ok_rps": round(rps * (total - failed) / total, 1) if total else 0.0,
        "seconds": seconds,
        "connections": connections,
    }


def _warm_up(url: str, script: Path) -> None:
    """Until throughput stops climbing (at most ~30 s): imports, snapshots, key caches and
    pools in every worker — LiteLLM's second worker can still be importing for half a
    minute after the proxy first answers on a loaded machine."""
    previous = 0.0
    for _ in range(10):
        rps = _wrk(url, 3, 16, script)["ok_rps"]
        if previous and rps <= previous * 1.15:
            return
        previous = rps


def _ids_written(ids_dir: Path) -> list[str]:
    ids: list[str] = []
    for path in ids_dir.glob("ids-*.txt"):
        ids += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return ids


def _steady(port: int, secret: str, seconds: float, rate: float = 100.0) -> dict[str, Any]:
    result = steady_run(
        "127.0.0.1",
        port,
        "/v1/chat/completions",
        {"Authorization": f"Bearer {secret}"},
        [chat_body()],
        rate=rate,
        seconds=seconds,
        connections=32,
        capture_header=DECISION_HEADER,
    )
    answered = len(result.latencies_ms)
    ok = sum(n for status, n in result.statuses.items() if status == 200)
    return {
        "offered_rps": rate,
        "sent": result.sent,
        "achieved_rps": round(answered / result.seconds, 1) if result.seconds else 0.0,
        "p50_ms": round(percentile(result.latencies_ms, 50), 2) if answered else None,
        "p99_ms": round(percentile(result.latencies_ms, 99), 2) if answered else None,
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "errors": result.errors + (result.sent - ok),
        "ids": result.captured,
    }


# --- the sides ---------------------------------------------------------------------------------


def _stored(db_url: str, ids: list[str]) -> dict[str, int]:
    """How many of the acknowledged ids have their decision row and their outcome."""
    unique = sorted(set(ids))
    with psycopg.connect(db_url) as conn:
        decisions = conn.execute(
            "SELECT count(*) FROM telemetry_decision WHERE id = ANY(%s::uuid[])", [unique]
        ).fetchone()
        outcomes = conn.execute(
            "SELECT count(DISTINCT decision_id) FROM telemetry_outcome "
            "WHERE decision_id = ANY(%s::uuid[])",
            [unique],
        ).fetchone()
    stored = int(decisions[0]) if decisions else 0
    with_outcome = int(outcomes[0]) if outcomes else 0
    return {
        "acknowledged": len(ids),
        "distinct_ids": len(unique),
        "decisions_stored": stored,
        "outcomes_stored": with_outcome,
        "lost": len(unique) - stored,
        "outcomes_missing": len(unique) - with_outcome,
    }


def _wait(url: str, seconds: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server behind {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _measure(
    port: int, secret: str, args: argparse.Namespace, work: Path, name: str, record: bool
) -> tuple[dict[str, Any], list[str]]:
    """Saturation, 100 requests/s offered, 500 in flight: the side's figures and every
    acknowledged decision id (when the side reports them)."""
    ids_dir = work / f"ids-{name}"
    ids_dir.mkdir()
    script = work / f"{name}.lua"
    _wrk_script(script, secret, ids_dir if record else None)
    warm = work / f"{name}-warm.lua"
    _wrk_script(warm, secret, None)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    _warm_up(url, warm)
    # Saturation: the best of 16, 64 and 256 connections (the same for both sides). A
    # gateway that overlaps its group commits with other requests needs more than 64 in
    # flight to fill two cores (measured: ~10 % idle at 64); LiteLLM peaks at 16.
    runs = [_wrk(url, args.seconds, connections, script) for connections in (16, 64, 256)]
    saturation = max(runs, key=lambda r: r["ok_rps"])
    saturation["runs"] = [
        {"connections": r["connections"], "ok_rps": r["ok_rps"], "non_2xx": r["non_2xx"]}
        for r in runs
    ]
    saturation["non_2xx"] = sum(r["non_2xx"] for r in runs)
    saturation["socket_errors"] = sum(r["socket_errors"] for r in runs)
    ids = _ids_written(ids_dir)
    time.sleep(1)
    steady = _steady(port, secret, args.steady_seconds)
    ids += steady.pop("ids")
    bursts: dict[str, Any] = {}
    for stream in (False, True):
        burst = asyncio.run(_burst(port, secret, args.in_flight, stream))
        ids += burst.pop("ids")
        bursts["streamed" if stream else "plain"] = burst
    errors = (
        saturation["non_2xx"]
        + saturation["socket_errors"]
        + steady["errors"]
        + sum(b["errors"] for b in bursts.values())
    )
    side = {
        "saturation_rps": saturation["ok_rps"],
        "p50_ms": steady["p50_ms"],
        "p99_ms": steady["p99_ms"],
        "errors": errors,
        "lost": None,
        "saturation": saturation,
        "at_100_rps": steady,
        "in_flight": bursts,
    }
    print(f"{name}: {json.dumps(side)}", flush=True)
    return side, ids


def switchyard_prepare(work: Path, stub_port: int) -> tuple[dict[str, str], str, str]:
    """A fresh bench database (migrated, demo registry, budgets wide open, one API key) and
    the gateway's environment with every model pointed at the stub: (env, db url, key)."""
    db_url = prepare_database(os.environ["DATABASE_URL"])
    prom_dir = work / "prometheus"
    prom_dir.mkdir()
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": db_url,
            "DJANGO_DEBUG": "0",
            "DJANGO_HTTPS": "0",
            "SWITCHYARD_VAR_DIR": str(work),
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
            "LOG_LEVEL": "WARNING",
            "FLEET_URL": f"http://127.0.0.1:{stub_port}/v1",
        }
    )
    py = sys.executable
    subprocess.run([py, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    subprocess.run(
        [py, "manage.py", "demo_load", "--registry-only"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE controlplane_budget SET limit_usd = 1000000000")
    secret = (
        subprocess.run(
            [py, "manage.py", "create_api_key", "bench-client"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return env, db_url, secret


def switchyard_gateway(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    """The gateway as ``make run`` starts it (uvicorn workers under gunicorn)."""
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "controlplane.asgi:application",
            "-c",
            str(ROOT / "controlplane" / "gunicorn_gateway_conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )


def _switchyard(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env, db_url, secret = switchyard_prepare(work, STUB_PORT)
    gateway = switchyard_gateway(env, GATEWAY_PORT, workers=2)
    try:
        _wait(f"http://127.0.0.1:{GATEWAY_PORT}/healthz", 60, gateway)
        side, ids = _measure(GATEWAY_PORT, secret, args, work, "switchyard", record=True)
    finally:
        _stop(gateway)
    durability = _stored(db_url, ids)
    side["lost"] = durability["lost"]
    side["durability"] = durability
    return side


def _litellm_install() -> Path:
    """The virtualenv with LiteLLM's proxy (created and installed on first use)."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    python = LITELLM_VENV / "bin" / "python"
    if (
        litellm.exists()
        and subprocess.run([str(python), "-c", "import litellm.proxy"]).returncode == 0
    ):
        return litellm
    print("installing litellm[proxy] into", LITELLM_VENV, flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(LITELLM_VENV)], check=True, capture_output=True)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "litellm[proxy]"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not litellm.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError("pip install 'litellm[proxy]' failed: " + " | ".join(tail))
    return litellm


def _litellm(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    try:
        litellm = _litellm_install()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        return {"error": f"LiteLLM could not be installed: {exc}"}
    version = subprocess.run(
        [
            str(LITELLM_VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        "      model: openai/stub\n"
        f"      api_base: http://127.0.0.1:{STUB_PORT}/v1\n"
        "      api_key: stub-key\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
        and not k.startswith("VIRTUAL_ENV")
    }
    env.update(
        {
            "LITELLM_MASTER_KEY": LITELLM_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{LITELLM_VENV / 'bin'}:{env.get('PATH', '')}",
        }
    )
    log = (work / "litellm.log").open("wb")
    proxy = subprocess.Popen(
        [
            str(litellm),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(LITELLM_PORT),
            "--num_workers",
            "2",
        ],
        cwd=work,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait(f"http://127.0.0.1:{LITELLM_PORT}/health/liveliness", 300, proxy)
        side, _ = _measure(LITELLM_PORT, LITELLM_KEY, args, work, "litellm", record=False)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        tail = (work / "litellm.log").read_text(errors="replace").strip().splitlines()[-5:]
        return {"error": f"LiteLLM proxy failed: {exc}", "log_tail": tail, "version": version}
    finally:
        _stop(proxy)
        log.close()
    side["version"] = version
    side["lost_note"] = "no database: LiteLLM records nothing durably in this setup"
    return side


def _stub_alone(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    script = work / "stub.lua"
    _wrk_script(script, "stub", None)
    url = f"http://127.0.0.1:{STUB_PORT}/v1/chat/completions"
    saturation = _wrk(url, 5, 64, script)
    steady = _steady(STUB_PORT, "stub", args.steady_seconds)
    steady.pop("ids")
    return {
        "saturation_rps": saturation["ok_rps"],
        "p50_ms": steady["p50_ms"],
        "p99_ms": steady["p99_ms"],
        "processes": 2,
        "saturation": saturation,
        "at_100_rps": steady,
    }


def _added(side: dict[str, Any], stub: dict[str, Any]) -> None:
    for q in ("p50_ms", "p99_ms"):
        if side.get(q) is not None and stub.get(q) is not None:
            side[f"added_{q}"] = round(side[q] - stub[q], 2)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10, help="each saturation run")
    parser.add_argument("--steady-seconds", type=float, default=15.0)
    parser.add_argument("--in-flight", type=int, default=500)
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--skip-switchyard", action="store_true", help="(trying LiteLLM out)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is missing: `make bench` installs it (apt-get install wrk)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="sy-bench-gateway-"))
    stub = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "stub_upstream.py"), "--port", str(STUB_PORT)],
        cwd=ROOT,
        start_new_session=True,
    )
    report: dict[str, Any] = {}
    try:
        time.sleep(1)
        report["stub"] = _stub_alone(args, work)
        print(f"stub: {json.dumps(report['stub'])}", flush=True)
        if args.skip_switchyard:
            report["switchyard"] = {"error": "skipped (--skip-switchyard)", "saturation_rps": 0}
        else:
            report["switchyard"] = _switchyard(args, work)
        if args.skip_litellm:
            report["litellm"] = {"error": "skipped (--skip-litellm)"}
        else:
            report["litellm"] = _litellm(args, work)
    finally:
        _stop(stub)
        shutil.rmtree(work, ignore_errors=True)
    for name in ("switchyard", "litellm"):
        _added(report[name], report["stub"])
    sy, ll = report["switchyard"], report["litellm"]
    ratio = None
    if ll.get("saturation_rps"):
        ratio = round(sy["saturation_rps"] / ll["saturation_rps"], 1)
    report["saturation_ratio"] = ratio
    report["targets"] = {
        "stub_saturation_rps": 20000,
        "saturation_ratio": 10,
        "added_p50_ms": 2,
        "added_p99_ms": 10,
        "in_flight_errors": 0,
        "lost": 0,
    }
    report["machine"] = {
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "note": "2 shared cores: the stub, the gateway under test, PostgreSQL and the load "
        "generators all run on them, beside other work; figures are noisy",
    }
    report["upstream_delay_s_in_flight"] = 1.0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"gateway: switchyard {sy.get('saturation_rps')}/s, litellm "
        f"{ll.get('saturation_rps', ll.get('error'))}, ratio {ratio}; switchyard added p50 "
        f"{sy.get('added_p50_ms')} ms p99 {sy.get('added_p99_ms')} ms, lost {sy.get('lost')}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
