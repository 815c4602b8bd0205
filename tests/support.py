"""Test helpers: paths, a loopback FHIR server and a loopback uvicorn server."""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import uvicorn
from fastapi import FastAPI

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
EXAMPLES = ROOT / "examples"
EXAMPLE_REQUEST = EXAMPLES / "encounter-start-possible-exploitation.json"


def load_json(path: Path) -> Any:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        return json.loads(handle.read())


def example_request() -> dict[str, Any]:
    """The bundled example (encounter-start, produces a card); a fresh copy each time."""
    data: dict[str, Any] = load_json(EXAMPLE_REQUEST)
    return data


LINT_FIXTURE = ROOT / "tests" / "fixtures" / "lint"
"""A small library (pathways/ beside cards/) for lint and CLI tests."""


def copy_lint_fixture(tmp: Path) -> Path:
    """A private, writable copy of the lint fixture; returns its `pathways/`."""
    shutil.copytree(LINT_FIXTURE, tmp / "copy")
    return tmp / "copy" / "pathways"


def edit(path: Path, old: str, new: str) -> None:
    """Replace the first `old` in a file; it must be there."""
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def assert_outcome(response: Any, status: int) -> dict[str, Any]:
    """A FHIR OperationOutcome error answer with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    assert body["issue"][0]["code"]
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def walk_no_empty(node: Any, path: str = "", allow: tuple[str, ...] = ("/cards",)) -> None:
    """CDS Hooks §Use of JSON: no null, "", [] or {} except where the spec allows them."""
    if node is None or (isinstance(node, (str, list, dict)) and len(node) == 0):
        assert path in allow, f"empty or null value at {path or '/'}"
    if isinstance(node, dict):
        for key, value in node.items():
            walk_no_empty(value, f"{path}/{key}", allow)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            walk_no_empty(value, f"{path}/{index}", allow)


class FhirServer:
    """A small FHIR R4 server on loopback: read and `?patient=` search over fixed resources.

    Records every request (path and Authorization header) so tests can assert outbound calls."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.resources = resources
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Authorization")))
                status, body = server.answer(self.path)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, raw_path: str) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(raw_path)
        segments = [s for s in parts.path.split("/") if s][1:]  # drop "fhir"
        if len(segments) == 2:
            for resource in self.resources:
                if [resource["resourceType"], resource.get("id")] == segments:
                    return 200, resource
            return 404, {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "not-found"}],
            }
        patient = parse_qs(parts.query).get("patient", [""])[0]
        found = [
            r for r in self.resources if r["resourceType"] == segments[0] and _about(r, patient)
        ]
        return 200, {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [{"resource": r} for r in found],
        }

    def __enter__(self) -> FhirServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _about(resource: dict[str, Any], patient: str) -> bool:
    for link in ("subject", "patient"):
        ref = resource.get(link)
        if isinstance(ref, dict) and ref.get("reference") == f"Patient/{patient}":
            return True
    return False


@contextlib.contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Run the app under a real uvicorn server on 127.0.0.1; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def local_client(app: FastAPI, **options: Any) -> Any:
    """An in-process client that calls from 127.0.0.1, as a developer's EHR simulator would
    (with MSHT_CDS_AUTH=off only loopback peers are served)."""
    from fastapi.testclient import TestClient

    return TestClient(app, client=("127.0.0.1", 50000), **options)
