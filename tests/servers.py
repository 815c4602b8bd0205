"""Loopback servers for the security tests ("trust nobody by default").

* `serve_app`: the real app (`create_app(Settings(...))`) under `uvicorn.Server` in a thread,
  on a socket bound to 127.0.0.1 before the settings are made (so PUBLIC_BASE_URL is exact).
* `FhirStub`: a deliberately misbehaving FHIR server in a thread that records every request it
  receives, with headers, so "zero requests" and "no token sent" are observed, not mocked.
* `ServeProcess`: `msht-cds serve` in a subprocess, stderr captured to a file.
* `Signer`: real EC P-384 / RSA keys and JWT minting for the trusted-clients file.

Fixtures are prefixed `sec_`; test modules load them with `pytest_plugins = ["tests.servers"]`
(assertion rewriting is off here, PYTEST_DONT_REWRITE, because test modules also import the
helpers directly). All data is synthetic.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from msht_cds.app import create_app
from msht_cds.config import Settings
from msht_cds.runtime import Runtime

from .support import ROOT, example_request, free_port

SERVICE = "msht-encounter-start"
STARTUP_SECONDS = 60.0
"""Generous: a loaded 2-core machine compiles the library slowly."""

_LIBRARY: Path | None = None


def library_root() -> Path:
    """A private copy of `pathways/` and `cards/`, taken once per test process.

    Others edit the library while tests run; a copy keeps one session consistent. Set
    SEC_TEST_LIBRARY_ROOT to a folder holding `pathways/` and `cards/` to test another one.
    """
    global _LIBRARY
    if _LIBRARY is None:
        source = Path(os.environ.get("SEC_TEST_LIBRARY_ROOT", str(ROOT)))
        target = Path(tempfile.mkdtemp(prefix="msht-cds-library-"))
        for name in ("pathways", "cards"):
            shutil.copytree(source / name, target / name)
        atexit.register(shutil.rmtree, target, True)
        _LIBRARY = target
    return _LIBRARY


def library_env() -> dict[str, str]:
    """MSHT_CDS_LIBRARY_DIR / MSHT_CDS_CARDS_DIR for a subprocess, on the same copy."""
    root = library_root()
    return {
        "MSHT_CDS_LIBRARY_DIR": str(root / "pathways"),
        "MSHT_CDS_CARDS_DIR": str(root / "cards"),
    }


# --------------------------------------------------------------------------- requests


def empty_bundle() -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": 0}


def complete(body: dict[str, Any], templates: dict[str, str]) -> dict[str, Any]:
    """Add an empty searchset for every template key the request lacks.

    The library grows while others work on it (new indicators add prefetch keys), so tests
    take the keys from the running service instead of hard-coding them."""
    prefetch = body.setdefault("prefetch", {})
    for key, template in templates.items():
        if key not in prefetch and "?" in template:
            prefetch[key] = empty_bundle()
    return body


def templates_of(runtime: Runtime, hook: str = "encounter-start") -> dict[str, str]:
    return runtime.knowledge.plan.templates(hook)


def discovery_templates(base_url: str, hook: str = "encounter-start") -> dict[str, str]:
    """Prefetch templates of `hook` as published by a running service (anonymous GET)."""
    response = httpx.get(f"{base_url}/cds-services", timeout=30)
    response.raise_for_status()
    for service in response.json()["services"]:
        if service["hook"] == hook:
            templates: dict[str, str] = service.get("prefetch", {})
            return templates
    raise AssertionError(f"no service for {hook}")


def full_request(templates: dict[str, str], **changes: Any) -> dict[str, Any]:
    """The example with a fresh hookInstance and every prefetch key present."""
    body = complete(example_request(), templates)
    body["hookInstance"] = str(uuid.uuid4())
    body.update(changes)
    return body


def record_resources(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every resource in a request's prefetch (bundles flattened), de-duplicated by type/id."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for value in (body.get("prefetch") or {}).values():
        if not isinstance(value, dict):
            continue
        items = [e.get("resource") for e in value.get("entry") or ()]
        if value.get("resourceType") != "Bundle":
            items = [value]
        for item in items:
            if isinstance(item, dict) and "resourceType" in item:
                found.setdefault((item["resourceType"], str(item.get("id"))), item)
    return list(found.values())


def rename_patient(body: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The same request about a child with another (synthetic) id."""
    text = (
        json.dumps(body)
        .replace(f'"{old}"', f'"{new}"')
        .replace(f'"Patient/{old}"', f'"Patient/{new}"')
    )
    renamed: dict[str, Any] = json.loads(text)
    return renamed


# --------------------------------------------------------------------------- FHIR stub


@dataclass(frozen=True)
class Seen:
    """One request the stub received."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    at: float

    @property
    def resource_path(self) -> str:
        return urlsplit(self.path).path


@dataclass
class Reply:
    status: int = 200
    body: bytes | dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering (interruptible when the stub stops)."""
    drip_seconds: float = 0.0
    """If set, send the body one byte at a time with this pause between bytes."""
    content_length: bool = True
    """False: no Content-Length, the body ends when the connection closes."""


Behaviour = Callable[[Seen], Reply]


class FhirStub:
    """A FHIR server on 127.0.0.1 whose behaviour each test sets; records every request."""

    def __init__(self, base_path: str = "/fhir") -> None:
        self.base_path = base_path
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.behaviour: Behaviour = lambda seen: Reply(404, {"resourceType": "OperationOutcome"})
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                seen = Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    time.monotonic(),
                )
                with stub._lock:
                    stub.requests.append(seen)
                reply = stub.behaviour(seen)
                if reply.delay and stub._stopping.wait(reply.delay):
                    return
                body = reply.body
                payload = json.dumps(body).encode() if isinstance(body, dict) else body or b""
                self.send_response(reply.status)
                headers = {"Content-Type": "application/fhir+json", **reply.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                if not reply.content_length:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                elif "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    if reply.drip_seconds:
                        for index in range(len(payload)):
                            self.wfile.write(payload[index : index + 1])
                            self.wfile.flush()
                            if stub._stopping.wait(reply.drip_seconds):
                                return
                    else:
                        self.wfile.write(payload)
                except OSError:
                    return

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        """The FHIR base to put in `fhirServer` and in allowlists."""
        return self.origin + self.base_path

    def start(self) -> FhirStub:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def reset(self, behaviour: Behaviour | None = None) -> None:
        with self._lock:
            self.requests.clear()
        if behaviour is not None:
            self.behaviour = behaviour

    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self.requests)


def serve_record(resources: list[dict[str, Any]], base_path: str = "/fhir") -> Behaviour:
    """Behaviour of a well-behaved FHIR server: `Type/id` reads and `Type?patient=` searches."""

    def behaviour(seen: Seen) -> Reply:
        parts = urlsplit(seen.path)
        path = parts.path.removeprefix(base_path).strip("/")
        query = parse_qs(parts.query)
        if "/" in path:
            kind, ident = path.split("/", 1)
            for resource in resources:
                if resource["resourceType"] == kind and resource.get("id") == ident:
                    return Reply(200, resource)
            return Reply(404, {"resourceType": "OperationOutcome", "issue": []})
        patient = (query.get("patient") or [""])[0]
        entries = [
            {"resource": r}
            for r in resources
            if r["resourceType"] == path and patient and r["resourceType"] != "Patient"
        ]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
        }
        if entries:
            bundle["entry"] = entries
        return Reply(200, bundle)

    return behaviour


# --------------------------------------------------------------------------- the app


@dataclass
class LiveApp:
    url: str
    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread
    log: io.StringIO = field(default_factory=io.StringIO)
    """What the service logged (the JSON lines of logs.configure_logging's handler)."""

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    def service_url(self, service: str = SERVICE) -> str:
        return f"{self.url}/cds-services/{service}"


def settings_for(tmp: Path, url: str, **overrides: Any) -> Settings:
    """Test settings: auth off unless overridden, SQLite in `tmp`, the bundled library."""
    values: dict[str, Any] = {
        "auth": "off",
        "database_url": f"sqlite:///{tmp / 'msht-cds.db'}",
        "public_base_url": url,
        "library_dir": library_root() / "pathways",
        "cards_dir": library_root() / "cards",
        "log_format": "json",
        "docs_url": None,
        "patient_hash_key": "test-only-secret-key-0123456789abcdef",
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def serve_app(make_settings: Callable[[str], Settings]) -> Iterator[LiveApp]:
    """Run `create_app(make_settings(url))` under uvicorn on 127.0.0.1 until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(make_settings(url))
    log = io.StringIO()
    # The service's log handler would otherwise write to whatever sys.stderr pytest had
    # captured when the app was made, and complain when that stream is closed later.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(log)
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield LiveApp(url, app, server, thread, log)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


# --------------------------------------------------------------------------- JWT


@dataclass
class Signer:
    """A CDS client's signing key (generated per test session; never leaves the test)."""

    issuer: str
    alg: str
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def generate(cls, issuer: str, alg: str = "ES384") -> Signer:
        if alg.startswith("ES"):
            return cls(issuer, alg, ec.generate_private_key(ec.SECP384R1()))
        return cls(issuer, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        public = self.key.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def mint(
        self,
        aud: str | list[str],
        *,
        jti: str | None = None,
        lifetime: int = 300,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": aud,
            "iat": now,
            "exp": now + lifetime,
            "jti": jti or str(uuid.uuid4()),
            **claims,
        }
        return jwt.encode(
            payload,
            self.key,
            algorithm=self.alg,
            headers={"typ": "JWT", "kid": self.kid, **(headers or {})},
        )

    def client_entry(self, fhir_servers: list[str] | None = None) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks": {"keys": [self.jwk()]},
            "jku_allowlist": [],
            "fhir_servers": fhir_servers or [],
            "algorithms": [self.alg],
        }


def write_clients(path: Path, entries: list[dict[str, Any]]) -> Path:
    """The trusted-clients file (JSON is YAML)."""
    path.write_text(json.dumps({"clients": entries}, indent=2), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- subprocess


def console_script() -> list[str]:
    """The installed `msht-cds` console script of this venv."""
    script = Path(sys.executable).parent / "msht-cds"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from msht_cds.cli import app; app()"]


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any MSHT_CDS_* (so a developer's shell cannot leak
    into a test), plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSHT_CDS_")}
    env.update(variables)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class ServeProcess:
    """`msht-cds serve` in its own process; stderr (the JSON logs) goes to `log_path`."""

    def __init__(
        self, tmp: Path, env: dict[str, str], *, workers: int = 1, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"serve-{self.port}.stderr"
        self.env = clean_env(MSHT_CDS_PUBLIC_BASE_URL=self.url, **{**library_env(), **env})
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        command = [
            *console_script(),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = STARTUP_SECONDS) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"msht-cds serve exited early:\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/livez", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"msht-cds serve did not answer within {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Signal the process we started (by pid) and wait; SIGKILL if it does not exit."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def sec_fhir() -> Iterator[FhirStub]:
    """A recording FHIR server on loopback (the allowlisted one)."""
    stub = FhirStub().start()
    yield stub
    stub.close()


@pytest.fixture
def sec_other_fhir() -> Iterator[FhirStub]:
    """Another origin (other port) that must never be contacted."""
    stub = FhirStub(base_path="/other").start()
    yield stub
    stub.close()


@pytest.fixture
def sec_live_app(tmp_path: Path) -> Iterator[Callable[..., LiveApp]]:
    """Factory: `sec_live_app(**settings)` starts the app under uvicorn on 127.0.0.1."""
    stack = contextlib.ExitStack()
    counter = iter(range(1_000_000))

    def start(**overrides: Any) -> LiveApp:
        folder = tmp_path / f"app-{next(counter)}"
        folder.mkdir()
        return stack.enter_context(serve_app(lambda url: settings_for(folder, url, **overrides)))

    with stack:
        yield start
