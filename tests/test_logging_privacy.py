"""No tokens, JWTs or patient identifiers in the logs or the database (checklist C 22, K 85).

`msht-cds serve` runs in a subprocess with authentication on; everything it writes to stderr
(the structlog JSON of every logger) is captured. Requests carry unique synthetic markers: the
FHIR access token, the JWT, the patient id, the encounter id and a feedback comment. The
markers travel through the success path (FHIR fetch with the token, card, feedback) and the
failure paths (FHIR error, bad JWT, replayed JWT, malformed body). None may appear in the logs
or in the SQLite files; the patient appears in the database only as its keyed hash.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from msht_cds.logs import RedactExceptions, configure_logging
from msht_cds.storage import Storage

from .servers import (
    SERVICE,
    FhirStub,
    Reply,
    ServeProcess,
    Signer,
    complete,
    discovery_templates,
    example_request,
    full_request,
    record_resources,
    rename_patient,
    serve_app,
    serve_record,
    settings_for,
    templates_of,
    write_clients,
)

EXAMPLE_PATIENT = "example-child-1"
EXAMPLE_ENCOUNTER = "example-visit-today"
HASH_KEY = "sec-test-hash-key-" + uuid.uuid4().hex


def marker(kind: str) -> str:
    return f"sec-{kind}-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def markers() -> dict[str, str]:
    return {
        "patient": marker("pt"),
        "encounter": marker("enc"),
        "access_token": marker("at"),
        "comment": marker("comment"),
    }


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, fhir: FhirStub, markers: dict[str, str]
) -> dict[str, Any]:
    """Start the server, send every kind of request with the markers, stop it; the results."""
    tmp = tmp_path_factory.mktemp("privacy")
    signer = Signer.generate("https://ehr.example.test", "ES384")
    clients = write_clients(tmp / "clients.yaml", [signer.client_entry([fhir.url])])
    database = tmp / "msht-cds.db"
    base = rename_patient(example_request(), EXAMPLE_PATIENT, markers["patient"])
    base = rename_patient(base, EXAMPLE_ENCOUNTER, markers["encounter"])
    fhir.reset(serve_record(record_resources(base), "/fhir"))
    jwts: list[str] = []
    statuses: dict[str, int] = {}
    server = ServeProcess(
        tmp,
        {
            "MSHT_CDS_AUTH": "on",
            "MSHT_CDS_CLIENTS_FILE": str(clients),
            "MSHT_CDS_DATABASE_URL": f"sqlite:///{database}",
            "MSHT_CDS_PATIENT_HASH_KEY": HASH_KEY,
            "MSHT_CDS_LOG_FORMAT": "json",
        },
    )
    with server, httpx.Client(timeout=60) as http:
        url = f"{server.url}/cds-services/{SERVICE}"

        def send(name: str, body: Any, token: str | None = None, path: str = "") -> httpx.Response:
            token = token or signer.mint(url + path)
            jwts.append(token)
            response = http.post(
                url + path, json=body, headers={"Authorization": f"Bearer {token}"}
            )
            statuses[name] = response.status_code
            return response

        templates = discovery_templates(server.url)
        body = complete(base, templates)
        body["hookInstance"] = str(uuid.uuid4())
        body["prefetch"].pop("conditions")
        body["fhirServer"] = fhir.url
        body["fhirAuthorization"] = {
            "access_token": markers["access_token"],
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "msht-cds",
            "patient": markers["patient"],
        }
        first = send("card", body)
        card = first.json()["cards"][0] if first.status_code == 200 else None
        if card is not None:
            send(
                "feedback",
                {
                    "feedback": [
                        {
                            "card": card["uuid"],
                            "outcome": "overridden",
                            "outcomeTimestamp": "2026-11-29T10:00:00Z",
                            "overrideReason": {
                                "reason": {
                                    "code": "already-referred",
                                    "system": "https://example.test",
                                },
                                "userComment": markers["comment"],
                            },
                        }
                    ]
                },
                path="/feedback",
            )
        replay = jwts[0]
        send("replayed-jwt", body, token=replay)
        head, payload, _signature = signer.mint(url).split(".")
        forged = base64.urlsafe_b64encode(b"x" * 96).rstrip(b"=").decode()
        send("bad-signature", body, token=f"{head}.{payload}.{forged}")
        jwts.append(f"{head}.{payload}.{forged}")
        send("expired-jwt", body, token=signer.mint(url, lifetime=-3600))
        fhir.reset(lambda seen: Reply(500, b"boom"))
        send("fhir-500", {**body, "hookInstance": str(uuid.uuid4())})
        bad = {
            **body,
            "hookInstance": str(uuid.uuid4()),
            "context": {**body["context"], "patientId": f"Patient/{markers['patient']}"},
        }
        send("malformed", bad)
        seen = fhir.seen()
    return {
        "logs": server.logs(),
        "database": database,
        "jwts": jwts,
        "statuses": statuses,
        "fhir_seen": seen,
        "card": card,
    }


def test_the_requests_took_the_intended_paths(run: dict[str, Any], markers: dict[str, str]) -> None:
    assert run["statuses"] == {
        "card": 200,
        "feedback": 200,
        "replayed-jwt": 401,
        "bad-signature": 401,
        "expired-jwt": 401,
        "fhir-500": 412,
        "malformed": 400,
    }
    assert run["card"] is not None
    # The token really went to the FHIR server (so it was in the service's hands).
    assert any(
        s.headers.get("authorization") == f"Bearer {markers['access_token']}"
        for s in run["fhir_seen"]
    )


def test_logs_were_captured(run: dict[str, Any]) -> None:
    logs: str = run["logs"]
    assert '"event": "hook_call"' in logs
    assert '"event": "feedback"' in logs


@pytest.mark.parametrize("what", ["patient", "encounter", "access_token", "comment"])
def test_no_marker_in_the_logs(run: dict[str, Any], markers: dict[str, str], what: str) -> None:
    assert markers[what] not in run["logs"]


def test_no_jwt_or_jwt_part_in_the_logs(run: dict[str, Any]) -> None:
    logs: str = run["logs"]
    for token in run["jwts"]:
        _, payload, signature = token.split(".")
        assert token not in logs
        assert payload not in logs
        assert signature not in logs


def _database_bytes(database: Path) -> bytes:
    data = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = database.with_name(database.name + suffix)
        if path.exists():
            data += path.read_bytes()
    assert data, "the database was written"
    return data


@pytest.mark.parametrize("what", ["patient", "encounter", "access_token", "comment"])
def test_no_marker_in_the_database_files(
    run: dict[str, Any], markers: dict[str, str], what: str
) -> None:
    data = _database_bytes(run["database"])
    assert markers[what].encode() not in data


def test_no_jwt_in_the_database_files(run: dict[str, Any]) -> None:
    data = _database_bytes(run["database"])
    for token in run["jwts"]:
        for part in token.split("."):
            assert part.encode() not in data


def test_the_patient_is_stored_only_as_its_keyed_hash(
    run: dict[str, Any], markers: dict[str, str]
) -> None:
    storage = Storage(f"sqlite:///{run['database']}", HASH_KEY)
    try:
        key = storage.patient_key(markers["patient"])
        assert key.encode() in _database_bytes(run["database"])
        # Without the operator's key the hash does not match.
        assert Storage("sqlite://", "another-key").patient_key(markers["patient"]) != key
    finally:
        storage.close()


# --------------------------------------------------------------------------- unexpected errors


def test_an_unexpected_error_logs_only_the_exception_type(tmp_path: Path) -> None:
    patient = marker("pt")
    with serve_app(lambda url: settings_for(tmp_path, url)) as live:

        def fail(*args: object, **kwargs: object) -> None:
            raise KeyError(f"Patient/{patient}")  # as a lookup deep in the code might

        live.runtime.storage.record_call = fail  # type: ignore[method-assign]
        body = full_request(templates_of(live.runtime))
        response = httpx.post(live.service_url(), json=body, timeout=60)
    # The server has stopped: everything it logged about the error is in live.log.
    logs = live.log.getvalue()
    assert response.status_code == 500
    assert patient not in response.text
    assert "KeyError" in logs
    assert patient not in logs, logs


def test_uvicorns_own_log_handlers_are_replaced_by_the_redacting_one() -> None:
    """Started as `uvicorn ... --factory`, uvicorn configures its loggers with handlers of its
    own before the app configures logging; those would print tracebacks past the redaction."""
    import logging.config

    from uvicorn.config import LOGGING_CONFIG

    logging.config.dictConfig(LOGGING_CONFIG)
    assert logging.getLogger("uvicorn").handlers  # what uvicorn does on its own
    configure_logging("json")
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        assert logger.handlers == [], name
        assert logger.propagate, name
    root_handlers = logging.getLogger().handlers
    assert any(isinstance(f, RedactExceptions) for h in root_handlers for f in h.filters)
