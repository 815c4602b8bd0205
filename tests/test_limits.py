"""Limits and graceful degradation: bad input is a 4xx, a bad FHIR server is a 412, never a 5xx.

Runs the real app under uvicorn on 127.0.0.1 (authentication off, loopback only) with small
limits, and a misbehaving FHIR server on loopback. Timing assertions are only upper bounds
with a wide margin ("it returned"), never tight: the machine may be loaded.
"""

from __future__ import annotations

import concurrent.futures
import gc
import gzip
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from .servers import (
    SERVICE,
    FhirStub,
    LiveApp,
    Reply,
    example_request,
    full_request,
    record_resources,
    serve_app,
    serve_record,
    settings_for,
    templates_of,
)
from .support import assert_outcome

pytest_plugins = ["tests.servers"]

MAX_BODY = 256 * 1024
MAX_RESOURCES = 60
DEADLINE = 2.0
MARGIN = 5.0
"""A call that must give up at the deadline has to finish within DEADLINE + MARGIN."""
MAX_FHIR_BYTES = 128 * 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, fhir: FhirStub) -> Iterator[LiveApp]:
    tmp = tmp_path_factory.mktemp("limits")
    with serve_app(
        lambda url: settings_for(
            tmp,
            url,
            fhir_allowlist=fhir.url,
            max_body_bytes=MAX_BODY,
            max_resources=MAX_RESOURCES,
            hook_deadline_seconds=DEADLINE,
            fhir_read_timeout=30.0,
            fhir_connect_timeout=30.0,
            fhir_max_response_bytes=MAX_FHIR_BYTES,
        )
    ) as app:
        yield app


@pytest.fixture(autouse=True)
def _well_behaved(fhir: FhirStub) -> None:
    fhir.reset(serve_record(record_resources(example_request()), "/fhir"))


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


def body_for(live: LiveApp, **changes: Any) -> dict[str, Any]:
    return full_request(templates_of(live.runtime), **changes)


# --------------------------------------------------------------------------- request size


def test_the_complete_example_is_answered(live: LiveApp, http: httpx.Client) -> None:
    response = http.post(live.service_url(), json=body_for(live))
    assert response.status_code == 200, response.text
    assert response.json()["cards"]


def test_body_over_the_limit_with_content_length_is_413(live: LiveApp, http: httpx.Client) -> None:
    body = body_for(live)
    body["padding"] = "x" * (MAX_BODY + 1)
    payload = json.dumps(body).encode()
    response = http.post(
        live.service_url(), content=payload, headers={"Content-Type": "application/json"}
    )
    assert_outcome(response, 413)


def test_body_over_the_limit_chunked_is_413(live: LiveApp, http: httpx.Client) -> None:
    """No Content-Length (Transfer-Encoding: chunked): the cap applies while reading."""
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"hook": "encounter-start", "padding": "'
        for _ in range((MAX_BODY + 64 * 1024) // 8192):
            sent += 8192
            yield b"x" * 8192
        yield b'"}'

    try:
        response = http.post(
            live.service_url(), content=chunks(), headers={"Content-Type": "application/json"}
        )
    except httpx.WriteError:
        pytest.fail("the server should answer 413, not reset the connection")
    assert "content-length" not in response.request.headers
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_outcome(response, 413)


def test_a_body_that_stops_arriving_gets_408_and_frees_the_worker(
    live: LiveApp, http: httpx.Client
) -> None:
    """Calls take turns per worker, reading included: a stalled upload gives up at the hook
    deadline, and the next call is answered."""
    complete = json.dumps(body_for(live)).encode()

    def stalls() -> Iterator[bytes]:
        yield complete[:1000]
        time.sleep(DEADLINE + 1.5)
        yield complete[1000:]

    started = time.monotonic()
    try:
        response = http.post(
            live.service_url(), content=stalls(), headers={"Content-Type": "application/json"}
        )
    except (httpx.WriteError, httpx.RemoteProtocolError):
        pytest.fail("the server should answer 408, not drop the connection")
    elapsed = time.monotonic() - started
    body = assert_outcome(response, 408)
    assert body["issue"][0]["code"] == "timeout"
    assert elapsed < DEADLINE + MARGIN, f"took {elapsed:.1f}s with a {DEADLINE}s deadline"
    assert http.post(live.service_url(), content=complete).status_code == 200


def test_a_client_that_leaves_mid_upload_is_audited_not_a_500(
    live: LiveApp, http: httpx.Client
) -> None:
    complete = json.dumps(body_for(live)).encode()
    host, port = live.url.removeprefix("http://").split(":")
    head = (
        f"POST /cds-services/{SERVICE} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(complete)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + complete[:500])
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and '"status": 499' not in live.log.getvalue():
        time.sleep(0.1)
    logs = live.log.getvalue()
    assert '"status": 499' in logs
    assert "unexpected_error" not in logs
    assert http.post(live.service_url(), content=complete).status_code == 200


def test_concurrent_calls_take_turns_and_are_all_answered(live: LiveApp) -> None:
    bodies = [body_for(live) for _ in range(12)]
    with (
        httpx.Client(timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool,
    ):
        statuses = list(pool.map(lambda b: client.post(live.service_url(), json=b), bodies))
    assert [r.status_code for r in statuses] == [200] * len(bodies)
    assert all(r.json()["cards"] for r in statuses)


def test_a_failed_audit_write_is_a_500_and_the_turn_is_given_back(
    live: LiveApp, http: httpx.Client
) -> None:
    """The audit rows are committed before the answer; when that fails the call is a 500
    (the database is the server's fault, not the request's), and the next call still gets
    its turn: nothing is left holding the worker."""
    storage = live.runtime.storage
    record_call = storage.record_call

    def database_down(*args: object, **kwargs: object) -> None:
        raise OSError("disk I/O error")

    storage.record_call = database_down  # type: ignore[method-assign]
    try:
        # Its own connection: the server closes one whose call raised, and a pooled connection
        # being closed would make the next call a client-side race, not a server failure.
        with httpx.Client(timeout=60) as once:
            failed = once.post(live.service_url(), json=body_for(live))
    finally:
        storage.record_call = record_call  # type: ignore[method-assign]
    assert_outcome(failed, 500)
    assert http.post(live.service_url(), json=body_for(live)).status_code == 200
    _wait_for_the_turn(live)


def test_every_answered_call_gives_back_its_turn(live: LiveApp, http: httpx.Client) -> None:
    for _ in range(3):
        assert http.post(live.service_url(), json=body_for(live)).status_code == 200
        _wait_for_the_turn(live)


def _wait_for_the_turn(live: LiveApp) -> None:
    """A call gives back its turn once its record is freed, before its audit commit and its
    answer: by the time the client has the answer, the turn is free (allow for scheduling)."""
    deadline = time.monotonic() + MARGIN
    while live.runtime.evaluation_slot.locked():
        assert time.monotonic() < deadline, "the call kept its turn after answering"
        time.sleep(0.01)


def test_a_rejected_call_does_not_keep_its_record(live: LiveApp, http: httpx.Client) -> None:
    """A call answered 412 (its prefetch has no Patient) frees its decoded record at once, by
    reference counting, as an answered call does: a worker must not pile up the records of
    rejected calls until a full cyclic collection happens to run."""
    marker = f"leak-marker-{uuid.uuid4()}"
    body = body_for(live)
    body["prefetch"]["patient"] = None
    body["prefetch"]["conditions"]["entry"].append(
        {
            "resource": {
                "resourceType": "Condition",
                "id": marker,
                "subject": {"reference": "Patient/example-child-1"},
            }
        }
    )
    raw = json.dumps(body).encode()
    del body  # only the service may hold the marker now
    gc.disable()  # the server runs in this process: only reference counting may free it
    try:
        assert_outcome(http.post(live.service_url(), content=raw), 412)
        _wait_for_the_turn(live)
        alive = [o for o in gc.get_objects() if isinstance(o, dict) and o.get("id") == marker]
    finally:
        gc.enable()
    assert alive == [], "the rejected call's record is still in memory"


def test_feedback_body_over_the_limit_is_413(live: LiveApp, http: httpx.Client) -> None:
    payload = b'{"feedback": [' + b'{"card": "x"},' * 200_000 + b'{"card": "x"}]}'
    response = http.post(f"{live.service_url()}/feedback", content=payload)
    assert_outcome(response, 413)


def test_more_resources_than_allowed_is_413(live: LiveApp, http: httpx.Client) -> None:
    body = body_for(live)
    body["prefetch"]["conditions"]["entry"] = [
        {
            "resource": {
                "resourceType": "Condition",
                "id": f"filler-{i}",
                "subject": {"reference": "Patient/example-child-1"},
                "code": {"text": "synthetic filler"},
            }
        }
        for i in range(MAX_RESOURCES + 1)
    ]
    assert_outcome(http.post(live.service_url(), json=body), 413)


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("depth", [1_100, 10_000, 100_000])
def test_absurdly_deep_json_is_400_not_500(live: LiveApp, http: httpx.Client, depth: int) -> None:
    raw = json.dumps(body_for(live))[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    if len(raw) > MAX_BODY:
        pytest.skip("larger than the body cap")
    assert_outcome(http.post(live.service_url(), content=raw), 400)


def test_json_deeper_than_the_decoder_limit_is_400(live: LiveApp, http: httpx.Client) -> None:
    """The nesting cap is the JSON decoder's (orjson: 1024 levels); a full walk of every body
    to enforce a lower one would cost more than the whole evaluation of a large record."""
    depth = 1100
    raw = json.dumps(body_for(live))[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    assert_outcome(http.post(live.service_url(), content=raw), 400)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"invalid"}',
        b"\xff\xfe\x00{}",
        b'{"hook": "encounter-start", "hookInstance": NaN}',
        b"[]",
        b'"encounter-start"',
        b"null",
        b"1e999999",
        b'{"hook": "encounter-start"}',
        b'{"hook": "encounter-start", "hookInstance": "not-a-uuid", "context": {}}',
        b'{"hook": "encounter-start", "hookInstance": "0f9d9a4e-2c3b-4a55-9a3d-7a1c2b4e5f60",'
        b' "context": []}',
        b'{"hook": "encounter-start", "hookInstance": "0f9d9a4e-2c3b-4a55-9a3d-7a1c2b4e5f60",'
        b' "context": {"userId": "Practitioner/x", "patientId": "Patient/../../x",'
        b' "encounterId": "e"}}',
        b'{"hook": "encounter-start", "hookInstance": "0f9d9a4e-2c3b-4a55-9a3d-7a1c2b4e5f60",'
        b' "context": {"userId": "Practitioner/x", "patientId": "p", "encounterId": "e"},'
        b' "fhirAuthorization": {"access_token": "t"}}',
        b'{"hook": "encounter-start", "hookInstance": "0f9d9a4e-2c3b-4a55-9a3d-7a1c2b4e5f60",'
        b' "context": {"userId": "Practitioner/x", "patientId": "p", "encounterId": "e"},'
        b' "fhirServer": 42}',
        b'{"hook": "encounter-start", "hookInstance": "0f9d9a4e-2c3b-4a55-9a3d-7a1c2b4e5f60",'
        b' "context": {"userId": "Practitioner/x", "patientId": "p", "encounterId": "e"},'
        b' "prefetch": []}',
        b'{"hook": "\\ud800"}',
        # A UUID spelled otherwise than usual would not fit the audit column.
        b'{"hook": "encounter-start", "hookInstance": "urn:uuid:'
        + b"-" * 100
        + b'0f9d9a4e2c3b4a559a3d7a1c2b4e5f60", "context": {}}',
        b'{"hook": "encounter-start", "hookInstance": "{0f9d9a4e-2c3b-4a55-9a3d-7a1c2b4e5f60}",'
        b' "context": {}}',
        b'{"hook": "encounter-start", "hookInstance": "0f9d9a4e-2c3b-4a55-9a3d-7a1c2b4e5f60",'
        b' "context": {"userId": "Practitioner/x", "patientId": "p", "encounterId": "e"},'
        b' "fhirServer": "http://127.0.0.1:9/fhir", "fhirAuthorization": {"access_token":'
        b' "tok\\u00e9n", "token_type": "Bearer", "scope": "s", "subject": "x", "expires_in": 60}}',
    ],
)
def test_malformed_requests_are_400_operation_outcomes(
    live: LiveApp, http: httpx.Client, raw: bytes
) -> None:
    response = http.post(
        live.service_url(), content=raw, headers={"Content-Type": "application/json"}
    )
    assert_outcome(response, 400)


@pytest.mark.parametrize("value", [[], {}, ["Encounter"]], ids=["list", "object", "list-of-str"])
def test_a_resource_type_that_is_not_a_string_is_not_a_500(
    live: LiveApp, http: httpx.Client, value: Any
) -> None:
    body = body_for(live)
    body["prefetch"]["encounters"]["entry"][0]["resource"]["resourceType"] = value
    response = http.post(live.service_url(), json=body)
    assert response.status_code in {200, 400, 412}, response.text


@pytest.mark.parametrize(
    ("key", "path", "value"),
    [
        ("encounters", ("entry",), 5),
        ("encounters", ("link",), {"relation": "next"}),
        ("encounter", ("participant",), 5),
        ("encounter", ("participant", 0, "type", 0, "coding"), 5),
        ("encounters", ("entry", 2, "resource", "participant", 0, "type"), {"coding": []}),
        ("encounters", ("entry", 0, "resource", "period", "start"), ["2026-01-01"]),
    ],
)
def test_wrongly_shaped_prefetch_values_are_answered_not_a_500(
    live: LiveApp, http: httpx.Client, key: str, path: tuple[Any, ...], value: Any
) -> None:
    """A value of the wrong shape reads as absent; the rest of the record is assessed."""
    body = body_for(live)
    node = body["prefetch"][key]
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    response = http.post(live.service_url(), json=body)
    assert response.status_code == 200, response.text
    assert "cards" in response.json()


def test_wrong_hook_for_the_service_is_400(live: LiveApp, http: httpx.Client) -> None:
    body = body_for(live)
    response = http.post(live.service_url("msht-patient-view"), json=body)
    assert_outcome(response, 400)


def test_unknown_service_is_404(live: LiveApp, http: httpx.Client) -> None:
    assert_outcome(http.post(live.service_url("no-such-service"), json=body_for(live)), 404)
    assert_outcome(http.post(live.service_url("no-such-service") + "/feedback", json={}), 404)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_a_service_are_405(live: LiveApp, http: httpx.Client, method: str) -> None:
    response = http.request(method, live.service_url())
    assert_outcome(response, 405)


# --------------------------------------------------------------------------- FHIR server trouble


def needs_fetch(live: LiveApp, fhir: FhirStub) -> dict[str, Any]:
    body = body_for(live, fhirServer=fhir.url)
    body["prefetch"].pop("conditions")
    return body


def test_fetching_from_a_well_behaved_fhir_server_works(
    live: LiveApp, http: httpx.Client, fhir: FhirStub
) -> None:
    response = http.post(live.service_url(), json=needs_fetch(live, fhir))
    assert response.status_code == 200, response.text
    assert [s.resource_path for s in fhir.seen()] == ["/fhir/Condition"]


def _junk(size: int) -> bytes:
    entries = [
        {"resource": {"resourceType": "Basic", "id": f"b{i}", "text": {"div": "x" * 1000}}}
        for i in range(size // 1000 + 1)
    ]
    return json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": entries}).encode()


MISBEHAVIOURS: dict[str, Reply] = {
    "http-500": Reply(500, b"Internal Server Error", {"Content-Type": "text/plain"}),
    "http-502": Reply(502, b"<html>Bad gateway</html>", {"Content-Type": "text/html"}),
    "http-401": Reply(401, {"resourceType": "OperationOutcome", "issue": []}),
    "http-403": Reply(403, {"resourceType": "OperationOutcome", "issue": []}),
    "http-429": Reply(429, b"", {"Retry-After": "3600"}),
    "operation-outcome-200": Reply(
        200,
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]},
    ),
    "garbage": Reply(200, b"\x00\x01 this is not json \xff", {"Content-Type": "text/plain"}),
    "html": Reply(200, b"<html><body>Login</body></html>", {"Content-Type": "text/html"}),
    "json-not-fhir": Reply(200, b"[1, 2, 3]"),
    "json-without-resource-type": Reply(200, b'{"entry": []}'),
    "truncated-json": Reply(
        200,
        b'{"resourceType": "Bundle", "entry": [',
    ),
    "too-deep": Reply(200, b'{"resourceType": "Bundle", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    "huge": Reply(200, _junk(4 * MAX_FHIR_BYTES)),
    "huge-without-length": Reply(200, _junk(4 * MAX_FHIR_BYTES), content_length=False),
    "gzip-bomb": Reply(200, gzip.compress(b"{" * (32 * 1024 * 1024)), {"Content-Encoding": "gzip"}),
    "corrupt-gzip": Reply(200, b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}),
    "brotli": Reply(200, b"\x0b\x02\x80{}\x03", {"Content-Encoding": "br"}),
    "redirect-elsewhere": Reply(302, b"", {"Location": "http://127.0.0.1:9/fhir/Condition"}),
    "redirect-same-server": Reply(307, b"", {"Location": "/fhir/Condition?again=1"}),
    "lying-content-length": Reply(200, b'{"resourceType": "Bundle"}', {"Content-Length": "100000"}),
}


@pytest.mark.parametrize("name", sorted(MISBEHAVIOURS))
def test_a_misbehaving_fhir_server_gives_412_never_5xx(
    live: LiveApp, http: httpx.Client, fhir: FhirStub, name: str
) -> None:
    reply = MISBEHAVIOURS[name]
    fhir.reset(lambda seen: reply)
    started = time.monotonic()
    response = http.post(live.service_url(), json=needs_fetch(live, fhir))
    assert time.monotonic() - started < DEADLINE + MARGIN
    assert_outcome(response, 412)
    assert len(fhir.seen()) == 1, "no retries, no redirects followed"


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(200, {"resourceType": "Bundle"}, delay=60), id="silent"),
        pytest.param(
            Reply(
                200,
                b'{"resourceType": "Bundle", "type": "searchset"}' + b" " * 200,
                drip_seconds=0.2,
            ),
            id="slow-drip",
        ),
    ],
)
def test_a_slow_fhir_server_gives_412_at_the_deadline(
    live: LiveApp, http: httpx.Client, fhir: FhirStub, reply: Reply
) -> None:
    fhir.reset(lambda seen: reply)
    started = time.monotonic()
    response = http.post(live.service_url(), json=needs_fetch(live, fhir))
    elapsed = time.monotonic() - started
    assert_outcome(response, 412)
    assert elapsed < DEADLINE + MARGIN, f"took {elapsed:.1f}s with a {DEADLINE}s deadline"


def test_an_unreachable_fhir_server_gives_412(
    sec_live_app: Callable[..., LiveApp], sec_fhir: FhirStub, http: httpx.Client
) -> None:
    """Connection refused: the allowlisted FHIR server has gone away."""
    url = sec_fhir.url
    sec_fhir.close()
    app = sec_live_app(fhir_allowlist=url)
    body = full_request(templates_of(app.runtime), fhirServer=url)
    body["prefetch"].pop("conditions")
    started = time.monotonic()
    response = http.post(app.service_url(SERVICE), json=body)
    assert time.monotonic() - started < 4.0 + MARGIN
    assert_outcome(response, 412)


def test_the_service_is_still_healthy_after_all_that(live: LiveApp, http: httpx.Client) -> None:
    assert http.get(f"{live.url}/livez").status_code == 200
    ready = http.get(f"{live.url}/readyz")
    assert ready.status_code == 200
    metrics = http.get(f"{live.url}/metrics").text
    assert 'status="500"' not in metrics
    response = http.post(live.service_url(), json=body_for(live))
    assert response.status_code == 200, response.text
