#!/usr/bin/env python3
"""Bounded load test on loopback: `msht-cds serve --workers N` under a steady mix of hooks.

Starts the service itself (authentication off, loopback only, SQLite in a temporary folder),
sends patient-view, encounter-start, encounter-discharge, order-select and order-sign calls
built from examples/encounter-start-possible-exploitation.json at a fixed rate (open loop: a
slow server does not slow the arrivals) for --seconds, then prints requests, errors and
latency percentiles. Exits 1 on any error (non-200 answer or transport failure), 2 if the
service does not start. Synthetic data only; nothing leaves 127.0.0.1.

    python scripts/loadtest.py --seconds 60 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "encounter-start-possible-exploitation.json"
SERVICES = {
    "patient-view": "msht-patient-view",
    "encounter-start": "msht-encounter-start",
    "encounter-discharge": "msht-encounter-discharge",
    "order-select": "msht-order-select",
    "order-sign": "msht-order-sign",
}
DRAFT_ORDER = {
    "resourceType": "ServiceRequest",
    "id": "draft-sti-screen",
    "status": "draft",
    "intent": "order",
    "subject": {"reference": "Patient/example-child-1"},
    "code": {
        "coding": [
            {
                "system": "http://snomed.info/sct",
                "code": "442487003",
                "display": "Screening for sexually transmitted disease",
            }
        ]
    },
}


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    per_hook: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def console_script() -> list[str]:
    script = Path(sys.executable).parent / "msht-cds"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from msht_cds.cli import app; app()"]


def start_server(port: int, workers: int, folder: Path) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSHT_CDS_")}
    env.update(
        {
            "MSHT_CDS_AUTH": "off",
            "MSHT_CDS_DATABASE_URL": f"sqlite:///{folder / 'loadtest.db'}",
            "MSHT_CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "MSHT_CDS_LIBRARY_DIR": str(ROOT / "pathways"),
            "MSHT_CDS_CARDS_DIR": str(ROOT / "cards"),
            "MSHT_CDS_PATIENT_HASH_KEY": "loadtest-" + uuid.uuid4().hex,
        }
    )
    log_path = folder / "server.stderr"
    command = [
        *console_script(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own console script, fixed arguments
            command, env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT
        )
    return process, log_path


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process we started (uvicorn's supervisor stops its workers), then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def request_bodies(base: str) -> dict[str, dict[str, Any]]:
    """One body per hook from the example, with every prefetch key the service asks for."""
    example: dict[str, Any] = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    discovery = httpx.get(f"{base}/cds-services", timeout=30).json()
    templates = {s["hook"]: s.get("prefetch", {}) for s in discovery["services"]}
    bodies = {}
    for hook in SERVICES:
        body = copy.deepcopy(example)
        body["hook"] = hook
        context = body["context"]
        if hook == "patient-view":
            context.pop("encounterId")
        if hook in ("order-select", "order-sign"):
            context["draftOrders"] = {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": DRAFT_ORDER}],
            }
        if hook == "order-select":
            context["selections"] = [f"ServiceRequest/{DRAFT_ORDER['id']}"]
        wanted = templates[hook]
        prefetch = {k: v for k, v in body["prefetch"].items() if k in wanted}
        for key, template in wanted.items():
            if key not in prefetch and "?" in template:
                prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
        body["prefetch"] = prefetch
        bodies[hook] = body
    return bodies


async def one_call(
    client: httpx.AsyncClient,
    base: str,
    hook: str,
    body: dict[str, Any],
    results: Results,
    gate: asyncio.Semaphore,
) -> None:
    payload = dict(body, hookInstance=str(uuid.uuid4()))
    async with gate:
        started = time.perf_counter()
        try:
            response = await client.post(f"{base}/cds-services/{SERVICES[hook]}", json=payload)
        except httpx.HTTPError as exc:
            results.errors[type(exc).__name__] += 1
            results.statuses["transport-error"] += 1
            return
        finally:
            results.latencies.append(time.perf_counter() - started)
    results.statuses[str(response.status_code)] += 1
    results.per_hook[hook] += 1
    if response.status_code != 200:
        results.errors[f"HTTP {response.status_code} on {hook}"] += 1


async def drive(
    base: str, bodies: dict[str, dict[str, Any]], seconds: float, rate: float, concurrency: int
) -> Results:
    results = Results()
    hooks = list(bodies)
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        tasks: list[asyncio.Task[None]] = []
        started = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due:
                hook = hooks[sent % len(hooks)]
                tasks.append(
                    asyncio.create_task(one_call(client, base, hook, bodies[hook], results, gate))
                )
                sent += 1
            await asyncio.sleep(max(0.0, sent / rate - (time.monotonic() - started)))
        await asyncio.gather(*tasks)
    return results


def percentile(values: list[float], fraction: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[int(fraction * 1000) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="duration (default 60)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--concurrency", type=int, default=32, help="max requests in flight")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="msht-cds-loadtest-"))
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    process, log_path = start_server(port, args.workers, folder)
    try:
        if not wait_ready(base, process, args.startup_timeout):
            sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
            print("the service did not start", file=sys.stderr)
            return 2
        bodies = request_bodies(base)
        for hook, body in bodies.items():  # warm-up, and each body must be accepted
            answer = httpx.post(
                f"{base}/cds-services/{SERVICES[hook]}",
                json=dict(body, hookInstance=str(uuid.uuid4())),
                timeout=60,
            )
            if answer.status_code != 200:
                print(f"{hook}: HTTP {answer.status_code} {answer.text[:300]}", file=sys.stderr)
                return 1
        wall = time.monotonic()
        results = asyncio.run(drive(base, bodies, args.seconds, args.rate, args.concurrency))
        wall = time.monotonic() - wall
    finally:
        stop_server(process)

    total = sum(results.statuses.values())
    errors = sum(results.errors.values())
    latencies = sorted(results.latencies)
    print(
        f"workers={args.workers} seconds={args.seconds:g} rate={args.rate:g}/s "
        f"concurrency={args.concurrency}"
    )
    print(f"requests={total} errors={errors} throughput={total / wall:.1f}/s")
    print(
        f"latency_ms p50={percentile(latencies, 0.50) * 1000:.1f} "
        f"p95={percentile(latencies, 0.95) * 1000:.1f} "
        f"p99={percentile(latencies, 0.99) * 1000:.1f} "
        f"max={(latencies[-1] if latencies else float('nan')) * 1000:.1f}"
    )
    print("per hook: " + ", ".join(f"{h}={n}" for h, n in sorted(results.per_hook.items())))
    print("statuses: " + ", ".join(f"{s}={n}" for s, n in sorted(results.statuses.items())))
    if errors:
        print("errors: " + ", ".join(f"{e}={n}" for e, n in results.errors.most_common()))
    shutil.rmtree(folder, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
