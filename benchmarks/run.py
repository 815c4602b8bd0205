"""Benchmark msht-cds against the floor, side by side, in one run.

    python benchmarks/run.py [--tiny] [--seconds N] [--out FILE]

Starts the real service (`msht-cds serve`, full library, MSHT_CDS_AUTH=off,
MSHT_CDS_PREVIEW=off, SQLite in a temporary folder) and the floor app (benchmarks/floor_app.py)
on loopback ports with the same uvicorn settings, then sends `patient-view` calls whose prefetch
is a small, a medium and a large real Synthea record (dates shifted so the last encounter is
today). Phases: 1 client against 1 worker each, then 4 concurrent clients against 2 workers
each. The two servers are measured in alternating slices (never at the same time) so slow
drift of a shared machine hits both alike.

Prints p50/p99 latency and requests/s for both, the service/floor ratios, the library load
time and each worker's idle and peak resident memory (VmRSS, VmHWM) as markdown; `--out` also
writes JSON. Exit status is 0 when every call answered 200, whatever the timings: targets are
reported, never enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from records import (  # noqa: E402
    SIZE_TARGETS,
    RequestBody,
    choose,
    load_record,
    patient_view_body,
    survey,
    synthea_dir,
)

REPO = HERE.parent
SERVICE_PATH = "/cds-services/msht-patient-view"
SIZES = tuple(SIZE_TARGETS)


# --------------------------------------------------------------------------- HTTP client


class Connection:
    """A minimal blocking HTTP/1.1 keep-alive client. The body goes out with one scatter-gather
    `sendmsg`, so a fresh hookInstance costs no copy of a multi-megabyte body, and the client
    spends as little CPU as possible on a 2-core machine shared with the servers."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def request(self, method: str, path: str, parts: Sequence[bytes] = ()) -> tuple[int, bytes]:
        length = sum(len(p) for p in parts)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        ).encode()
        self._send([head, *parts])
        return self._response()

    def _send(self, parts: list[bytes]) -> None:
        views = [memoryview(p) for p in parts if p]
        while views:
            sent = self.sock.sendmsg(views[:512])
            while sent:
                if sent >= len(views[0]):
                    sent -= len(views.pop(0))
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    def _recv(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def _response(self) -> tuple[int, bytes]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._recv()
        head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            return status, self._chunked()
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buffer) < length:
            self._recv()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, body

    def _chunked(self) -> bytes:
        body = b""
        while True:
            while (end := self.buffer.find(b"\r\n")) < 0:
                self._recv()
            size = int(self.buffer[:end].split(b";")[0], 16)
            self.buffer = self.buffer[end + 2 :]
            while len(self.buffer) < size + 2:
                self._recv()
            body += self.buffer[:size]
            self.buffer = self.buffer[size + 2 :]
            if size == 0:
                return body


def get_json(port: int, path: str) -> tuple[int, Any]:
    conn = Connection(port, timeout=10)
    try:
        status, body = conn.request("GET", path)
    finally:
        conn.close()
    return status, orjson.loads(body) if body else None


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def msht_cds_command() -> list[str]:
    script = Path(sys.executable).parent / "msht-cds"
    if script.exists():
        return [str(script)]
    found = shutil.which("msht-cds")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from msht_cds.cli import app; sys.exit(app())"]


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    ready_path: str
    process: subprocess.Popen[bytes] | None = None
    log_offset: int = 0

    def hook_latencies(self) -> list[float]:
        """`latency_ms` of the `hook_call` log lines written since the last call."""
        with self.log_path.open("rb") as handle:
            handle.seek(self.log_offset)
            text = handle.read()
        end = text.rfind(b"\n") + 1
        self.log_offset += end
        found = []
        for line in text[:end].splitlines():
            if b'"hook_call"' in line:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    found.append(float(orjson.loads(line)["latency_ms"]))
        return found

    def start(self) -> None:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.log_path.parent,
        )
        log.close()

    def wait_ready(self, timeout: float = 90.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n" + self.log_tail()
                )
            with contextlib.suppress(OSError, ValueError):
                status, _ = get_json(self.port, self.ready_path)
                if status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n" + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: uvicorn's spawned workers, or the main process
        itself when it runs a single worker in-process."""
        assert self.process is not None
        main = self.process.pid
        workers = [pid for pid in children(main) if b"spawn_main" in cmdline(pid)]
        return workers or [main]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        pids = [self.process.pid, *children(self.process.pid)]
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def rss_mb(pid: int, field: str = "VmHWM") -> float | None:
    """VmHWM: the peak resident set size of the process so far; VmRSS: the current one."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- measurement


@dataclass
class Cell:
    """One server, one record size, one concurrency: every latency of every slice."""

    latencies: list[float] = field(default_factory=list)
    busy_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    handler_ms: list[float] = field(default_factory=list)
    """The service's own `latency_ms` from its log: handler start to before the audit write."""

    def summary(self) -> dict[str, Any]:
        n = len(self.latencies)
        return {
            "requests": n,
            "p50_ms": percentile(self.latencies, 0.50) * 1000 if n else None,
            "p99_ms": percentile(self.latencies, 0.99) * 1000 if n else None,
            "handler_p50_ms": percentile(self.handler_ms, 0.50) if self.handler_ms else None,
            "rps": n / self.busy_seconds if self.busy_seconds else None,
            "errors": len(self.errors),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def run_slice(
    port: int, body: RequestBody, clients: int, seconds: float, max_requests: int | None, cell: Cell
) -> None:
    """`clients` threads, each on its own keep-alive connection, send back-to-back requests
    until `seconds` pass or `max_requests` were sent in all."""
    connections = [Connection(port) for _ in range(clients)]
    ticket = iter(range(max_requests)) if max_requests is not None else None
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    deadline = [0.0]

    def worker(index: int) -> None:
        conn, mine = connections[index], latencies[index]
        barrier.wait()
        while time.perf_counter() < deadline[0]:
            if ticket is not None:
                with lock:
                    if next(ticket, None) is None:
                        break
            instance = str(uuid.uuid4()).encode()
            started = time.perf_counter()
            try:
                status, payload = conn.request(
                    "POST", SERVICE_PATH, (body.head, instance, body.tail)
                )
            except (OSError, ConnectionError) as exc:
                with lock:
                    cell.errors.append(f"{type(exc).__name__}: {exc}")
                return
            elapsed = time.perf_counter() - started
            with lock:
                cell.statuses[status] = cell.statuses.get(status, 0) + 1
                if status != 200:
                    cell.errors.append(f"HTTP {status}: {payload[:300]!r}")
            mine.append(elapsed)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    deadline[0] = started + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    cell.busy_seconds += time.perf_counter() - started
    for conn in connections:
        conn.close()
    for found in latencies:
        cell.latencies.extend(found)


def first_response(port: int, body: RequestBody) -> dict[str, Any]:
    conn = Connection(port)
    try:
        status, payload = conn.request(
            "POST", SERVICE_PATH, (body.head, str(uuid.uuid4()).encode(), body.tail)
        )
    finally:
        conn.close()
    info: dict[str, Any] = {"status": status}
    try:
        decoded = orjson.loads(payload)
        info["cards"] = len(decoded.get("cards", [])) if isinstance(decoded, dict) else None
        if status != 200:
            info["body"] = decoded
    except orjson.JSONDecodeError:
        info["body"] = payload[:300].decode(errors="replace")
    return info


# --------------------------------------------------------------------------- library load


LOAD_SCRIPT = r"""
import json, statistics, sys, time
from pathlib import Path
t0 = time.perf_counter()
from msht_cds.service import load_knowledge
imported = time.perf_counter() - t0
runs = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    knowledge = load_knowledge(Path(sys.argv[1]), Path(sys.argv[2]))
    runs.append(time.perf_counter() - t)
print(json.dumps({"import_s": imported, "runs_s": runs, "version": knowledge.version,
                  "indicators": len(knowledge.library.compiled)}))
"""


def measure_library_load(library: Path, cards: Path, repeats: int) -> dict[str, Any]:
    """In a fresh process: the first (cold) load_knowledge, and the median of all runs."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(library), str(cards), str(repeats)],
        capture_output=True,
        check=False,
        timeout=300,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise RuntimeError("load_knowledge failed:\n" + done.stderr.decode(errors="replace"))
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    runs = result["runs_s"]
    result["cold_s"] = runs[0]
    result["median_s"] = statistics.median(runs)
    return result


# --------------------------------------------------------------------------- orchestration


@dataclass
class Phase:
    clients: int
    workers: int


def parse_phases(text: str) -> list[Phase]:
    phases = []
    for part in text.split(","):
        clients, _, workers = part.partition(":")
        phases.append(Phase(int(clients), int(workers or 1)))
    return phases


@contextlib.contextmanager
def servers(phase: Phase, tmp: Path, library: Path, cards: Path) -> Iterator[tuple[Server, Server]]:
    folder = tmp / f"c{phase.clients}-w{phase.workers}"
    folder.mkdir()
    service_port, floor_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSHT_CDS_")}
    service_env = {
        **env,
        "MSHT_CDS_AUTH": "off",
        "MSHT_CDS_DATABASE_URL": f"sqlite:///{folder / 'msht-cds.db'}",
        "MSHT_CDS_LIBRARY_DIR": str(library),
        "MSHT_CDS_CARDS_DIR": str(cards),
        "MSHT_CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{service_port}",
        "MSHT_CDS_LOG_FORMAT": "json",
        # As in production: the leads' preview pages are off (auth off alone turns them on).
        "MSHT_CDS_PREVIEW": "off",
    }
    service = Server(
        "service",
        [
            *msht_cds_command(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(service_port),
            "--workers",
            str(phase.workers),
        ],
        service_env,
        service_port,
        folder / "service.log",
        "/readyz",
    )
    floor = Server(
        "floor",
        [
            sys.executable,
            str(HERE / "floor_app.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(floor_port),
            "--workers",
            str(phase.workers),
        ],
        env,
        floor_port,
        folder / "floor.log",
        "/livez",
    )
    try:
        service.start()
        floor.start()
        service.wait_ready()
        floor.wait_ready()
        yield service, floor
    finally:
        service.stop()
        floor.stop()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="smoke mode: a few requests per size, 1 client (for CI)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=8.0,
        help="measuring time per server, size and phase (default 8)",
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternating slices per cell (default 4)"
    )
    parser.add_argument(
        "--phases", default="1:1,4:2", help="clients:workers pairs (default 1:1,4:2)"
    )
    parser.add_argument("--sizes", default=",".join(SIZES), help="small,medium,large")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up calls per connection")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--library", type=Path, default=REPO / "pathways")
    parser.add_argument("--cards", type=Path, default=REPO / "cards")
    parser.add_argument(
        "--synthea",
        type=Path,
        default=None,
        help="Synthea folder (default: $MSHT_CDS_SYNTHEA_DIR or ../shared/...)",
    )
    args = parser.parse_args(argv)

    requests_per_slice: int | None = None
    load_repeats = 5
    if args.tiny:
        args.phases, args.rounds, args.warmup = "1:1", 1, 1
        requests_per_slice, load_repeats = 3, 1
        args.seconds = 60.0  # bounded by the request count
    phases = parse_phases(args.phases)
    sizes = [s for s in args.sizes.split(",") if s]
    slice_seconds = args.seconds / args.rounds

    synthea = args.synthea or synthea_dir()
    if not synthea.is_dir():
        log(f"no Synthea records at {synthea} (set MSHT_CDS_SYNTHEA_DIR)")
        return 2
    today = dt.datetime.now(dt.UTC).date()
    chosen = choose(survey(synthea))
    records = {size: load_record(chosen[size].path, today) for size in sizes}
    if not args.tiny:
        cells = len(phases) * len(sizes) * 2
        log(
            f"measuring {cells} cells x {args.seconds:g} s = {cells * args.seconds:.0f} s, "
            "plus start-up and warm-up"
        )

    log("timing load_knowledge in a fresh process ...")
    library_load = measure_library_load(args.library, args.cards, load_repeats)

    results: dict[str, Any] = {
        "machine": machine_facts(),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": {
            "tiny": args.tiny,
            "seconds_per_cell": args.seconds,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "requests_per_slice": requests_per_slice,
            "library": str(args.library),
        },
        "library_load": library_load,
        "records": {},
        "rows": [],
        "memory": [],
    }
    bodies: dict[str, RequestBody] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="msht-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for phase in phases:
            log(f"phase: {phase.clients} client(s), {phase.workers} worker(s) each")
            with servers(phase, tmp, args.library, args.cards) as (
                service,
                floor,
            ):
                idle = {
                    server.name: [rss_mb(pid, "VmRSS") for pid in server.worker_pids()]
                    for server in (service, floor)
                }
                if not bodies:
                    status, discovery = get_json(service.port, "/cds-services")
                    if status != 200:
                        raise RuntimeError(f"discovery answered {status}")
                    templates = next(
                        s["prefetch"] for s in discovery["services"] if s["hook"] == "patient-view"
                    )
                    _, ready = get_json(service.port, "/readyz")
                    results["library"] = ready.get("library")
                    results["templates"] = templates
                    for size in sizes:
                        body, prefetch = patient_view_body(records[size], templates)
                        bodies[size] = body
                        record = records[size]
                        results["records"][size] = {
                            "file": str(record.source.relative_to(synthea)),
                            "record_resources": record.resource_count,
                            "record_bytes": record.original_bytes,
                            "resources_sent": body.resources,
                            "body_bytes": body.size,
                            "dropped_types": prefetch.dropped,
                            "shift_days": record.shift_days,
                            "birth_date_rewritten": record.birth_date_rewritten,
                        }
                for size in sizes:
                    body = bodies[size]
                    answer = first_response(service.port, body)
                    results["records"][size]["service_answer"] = answer
                    if answer["status"] != 200:
                        log(f"service answered {answer}")
                        failed = True
                    cells = {"floor": Cell(), "service": Cell()}
                    servers_by_name = {"floor": floor, "service": service}
                    for name in cells:  # warm-up, not measured
                        run_slice(
                            servers_by_name[name].port,
                            body,
                            phase.clients,
                            60.0,
                            args.warmup * phase.clients,
                            Cell(),
                        )
                    service.hook_latencies()  # skip the warm-up's
                    for round_no in range(args.rounds):
                        order = ("floor", "service") if round_no % 2 == 0 else ("service", "floor")
                        for name in order:
                            run_slice(
                                servers_by_name[name].port,
                                body,
                                phase.clients,
                                slice_seconds,
                                requests_per_slice,
                                cells[name],
                            )
                            if name == "service":
                                cells[name].handler_ms += service.hook_latencies()
                    row = make_row(phase, size, body, cells["floor"], cells["service"])
                    results["rows"].append(row)
                    failed |= bool(row["floor"]["errors"] or row["service"]["errors"])
                    for name, cell in cells.items():
                        for error in cell.errors[:3]:
                            log(f"{name} {size}: {error}")
                    log("  " + format_row(row))
                for server in (service, floor):
                    pids = server.worker_pids()
                    results["memory"].append(
                        {
                            "server": server.name,
                            "clients": phase.clients,
                            "workers": phase.workers,
                            "idle_rss_mb": idle[server.name],
                            "peak_rss_mb": [rss_mb(pid) for pid in pids],
                        }
                    )
    report = render(results)
    print(report)
    if args.out:
        args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 1 if failed else 0


def machine_facts() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
    }


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


# --------------------------------------------------------------------------- report


def make_row(
    phase: Phase, size: str, body: RequestBody, floor: Cell, service: Cell
) -> dict[str, Any]:
    f, s = floor.summary(), service.summary()
    p50_ratio = s["p50_ms"] / f["p50_ms"] if f["p50_ms"] and s["p50_ms"] else None
    rps_ratio = s["rps"] / f["rps"] if f["rps"] and s["rps"] else None
    if phase.clients == 1 and size == "small":
        target = "p50 <= floor + 5 ms"
        met = s["p50_ms"] is not None and f["p50_ms"] is not None and s["p50_ms"] <= f["p50_ms"] + 5
    elif phase.clients == 1:
        target = "p50 <= 1.5 x floor"
        met = p50_ratio is not None and p50_ratio <= 1.5
    else:
        target = "req/s >= 60 % of floor"
        met = rps_ratio is not None and rps_ratio >= 0.6
    return {
        "clients": phase.clients,
        "workers": phase.workers,
        "size": size,
        "resources": body.resources,
        "body_bytes": body.size,
        "floor": f,
        "service": s,
        "p50_ratio": p50_ratio,
        "rps_ratio": rps_ratio,
        "target": target,
        "met": met,
    }


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


ROW_HEADER = (
    "| clients | workers | size | resources | body MB | floor p50 ms | floor p99 ms | floor req/s "
    "| service p50 ms | service p99 ms | in handler p50 ms | service req/s | p50 ratio "
    "| req/s ratio | target | met |"
)


def format_row(row: dict[str, Any]) -> str:
    f, s = row["floor"], row["service"]
    return (
        f"| {row['clients']} | {row['workers']} | {row['size']} | {row['resources']} "
        f"| {row['body_bytes'] / 1e6:.2f} | {_num(f['p50_ms'])} | {_num(f['p99_ms'])} "
        f"| {_num(f['rps'])} | {_num(s['p50_ms'])} | {_num(s['p99_ms'])} "
        f"| {_num(s.get('handler_p50_ms'))} | {_num(s['rps'])} "
        f"| {_num(row['p50_ratio'], 2)} | {_num(row['rps_ratio'], 2)} | {row['target']} "
        f"| {'yes' if row['met'] else 'NO'} |"
    )


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"## msht-cds vs floor ({results['started']})",
        "",
        f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), Python {machine['python']}, "
        f"{machine['platform']}.",
    ]
    library = results.get("library") or {}
    lines.append(
        f"Library: {library.get('id')} {library.get('version')}+"
        f"{library.get('revision')}, {library.get('indicators')} indicators; prefetch "
        f"keys: {', '.join(results.get('templates', {}))}."
    )
    settings = results["settings"]
    if settings["tiny"]:
        lines.append(
            f"TINY run: {settings['requests_per_slice']} requests per cell (smoke "
            "test only; the figures mean nothing)."
        )
    else:
        lines.append(
            f"{settings['seconds_per_cell']:g} s per cell in {settings['rounds']} "
            "alternating slices; latency is per request, client-side, keep-alive."
        )
    lines.append(
        "Both servers run uvicorn with msht_cds.nodelay:NoDelayH11Protocol (TCP_NODELAY on "
        "every connection, also with workers > 1)."
    )
    lines += ["", ROW_HEADER, "|" + "---|" * (ROW_HEADER.count("|") - 1)]
    lines += [format_row(row) for row in results["rows"]]
    lines += [
        "",
        "| size | record | resources in record | sent | body MB | dropped types "
        "| date shift days | birthDate rewritten | service answer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size, rec in results["records"].items():
        dropped = ", ".join(f"{k} {v}" for k, v in rec["dropped_types"].items()) or "-"
        answer = rec.get("service_answer", {})
        lines.append(
            f"| {size} | {rec['file']} | {rec['record_resources']} | {rec['resources_sent']} "
            f"| {rec['body_bytes'] / 1e6:.2f} | {dropped} | {rec['shift_days']} "
            f"| {'yes' if rec['birth_date_rewritten'] else 'no'} "
            f"| {answer.get('status')}, {answer.get('cards')} card(s) |"
        )
    load = results["library_load"]
    lines += [
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
        f"| library load, load_knowledge median of {len(load['runs_s'])} (fresh process) "
        f"| {load['median_s'] * 1000:.0f} ms | <= 1 s "
        f"| {'yes' if load['median_s'] <= 1 else 'NO'} |",
        f"| library load, first call in the process | {load['cold_s'] * 1000:.0f} ms | <= 1 s "
        f"| {'yes' if load['cold_s'] <= 1 else 'NO'} |",
        f"| import msht_cds.service | {load['import_s'] * 1000:.0f} ms | - | - |",
    ]
    for mem in results["memory"]:
        peaks = [p for p in mem["peak_rss_mb"] if p is not None]
        worst = max(peaks) if peaks else None
        target = "<= 150 MB" if mem["server"] == "service" else "-"
        met = (
            "-"
            if mem["server"] != "service"
            else ("yes" if worst is not None and worst <= 150 else "NO")
        )
        idle = [p for p in mem.get("idle_rss_mb", []) if p is not None]
        lines.append(
            f"| {mem['server']} idle RSS per worker (VmRSS, ready, before any call), "
            f"{mem['workers']} worker(s) | {', '.join(f'{p:.0f}' for p in idle)} MB | - | - |"
        )
        lines.append(
            f"| {mem['server']} peak RSS per worker (VmHWM), {mem['clients']} client(s), "
            f"{mem['workers']} worker(s) | {', '.join(f'{p:.0f}' for p in peaks)} MB "
            f"| {target} | {met} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
