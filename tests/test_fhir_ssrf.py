"""SSRF and token-leak tests for the FHIR reader (checklist F 39-46, C 20-21).

The service runs under uvicorn on 127.0.0.1 with authentication ON. Two trusted clients:
client A may use the FHIR server `fhir`, client B may use `other`. Both FHIR servers are real
HTTP servers on loopback that record every request, headers included, so "zero requests" and
"the token went nowhere else" are observed on the wire. Address-class checks (link-local,
private, metadata, numeric IP forms) run against `FhirReader.check_base` with no traffic.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from msht_cds.errors import FhirServerError
from msht_cds.fhir import FhirLimits, FhirReader, IPAddress, address_problem

from .servers import (
    SERVICE,
    FhirStub,
    LiveApp,
    Reply,
    Seen,
    Signer,
    example_request,
    full_request,
    record_resources,
    serve_app,
    serve_record,
    settings_for,
    templates_of,
    write_clients,
)

pytest_plugins = ["tests.servers"]

ISSUER_A = "https://ehr-a.example.test"
ISSUER_B = "https://ehr-b.example.test"
TOKEN = "sec-fhir-token-" + uuid.uuid4().hex
PATIENT = "example-child-1"
MAX_PAGES = 3
MAX_BYTES = 256 * 1024
NOT_ALLOWED_HTTP = "http://fhir.example.test/fhir"
METADATA_BASE = "https://169.254.169.254/fhir"


@pytest.fixture(scope="module")
def other() -> Iterator[FhirStub]:
    stub = FhirStub("/other").start()
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {"A": Signer.generate(ISSUER_A, "ES384"), "B": Signer.generate(ISSUER_B, "RS384")}


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory,
    fhir: FhirStub,
    other: FhirStub,
    signers: dict[str, Signer],
) -> Iterator[LiveApp]:
    tmp = tmp_path_factory.mktemp("ssrf")
    clients = write_clients(
        tmp / "clients.yaml",
        [
            # An operator's mistakes included on purpose: plain http to a remote host, and the
            # cloud metadata address. Both must still be refused.
            signers["A"].client_entry([fhir.url, NOT_ALLOWED_HTTP, METADATA_BASE]),
            signers["B"].client_entry([other.url]),
        ],
    )
    with serve_app(
        lambda url: settings_for(
            tmp,
            url,
            auth="on",
            clients_file=clients,
            fhir_max_pages=MAX_PAGES,
            fhir_max_response_bytes=MAX_BYTES,
            hook_deadline_seconds=4.0,
        )
    ) as app:
        yield app


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> None:
    """Every test starts with well-behaved, empty-logged FHIR servers."""
    if "live" not in request.fixturenames:
        return
    fhir: FhirStub = request.getfixturevalue("fhir")
    other: FhirStub = request.getfixturevalue("other")
    resources = record_resources(example_request())
    fhir.reset(serve_record(resources, "/fhir"))
    other.reset(serve_record(resources, "/other"))


def authorization(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "msht-cds",
        "patient": PATIENT,
    }
    value.update(changes)
    return {k: v for k, v in value.items() if v is not None}


def needs_fetch(
    live: LiveApp,
    server: str | None,
    *,
    drop: tuple[str, ...] = ("conditions", "encounters"),
    auth: dict[str, Any] | None = None,
    with_auth: bool = True,
) -> dict[str, Any]:
    """The example with `drop` removed from prefetch, so the service must fetch them."""
    body = full_request(templates_of(live.runtime))
    for key in drop:
        body["prefetch"].pop(key, None)
    if server is not None:
        body["fhirServer"] = server
        if with_auth:
            body["fhirAuthorization"] = auth or authorization()
    return body


def post(live: LiveApp, signer: Signer, body: dict[str, Any]) -> httpx.Response:
    url = live.service_url(SERVICE)
    token = signer.mint(url)
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def assert_412(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 412, response.text
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert TOKEN not in response.text
    return body


def diagnostics(response: httpx.Response) -> str:
    return " ".join(i.get("diagnostics", "") for i in response.json()["issue"])


# --------------------------------------------------------------------------- happy paths


def test_missing_key_is_fetched_with_the_bearer_token_and_a_card_comes_back(
    live: LiveApp, fhir: FhirStub, other: FhirStub, signers: dict[str, Signer]
) -> None:
    response = post(live, signers["A"], needs_fetch(live, fhir.url))
    assert response.status_code == 200, response.text
    assert response.json()["cards"], "the example must still produce a card"
    seen = fhir.seen()
    paths = sorted(s.resource_path for s in seen)
    assert paths == ["/fhir/Condition", "/fhir/Encounter"]
    assert all(s.method == "GET" for s in seen)
    assert all(s.headers.get("authorization") == f"Bearer {TOKEN}" for s in seen)
    assert all(f"patient={PATIENT}" in s.path for s in seen)
    assert other.seen() == []


def test_no_authorization_header_when_fhir_authorization_is_absent(
    live: LiveApp, fhir: FhirStub, signers: dict[str, Signer]
) -> None:
    response = post(live, signers["A"], needs_fetch(live, fhir.url, with_auth=False))
    assert response.status_code == 200, response.text
    seen = fhir.seen()
    assert seen
    assert all("authorization" not in s.headers for s in seen)
    assert all("cookie" not in s.headers for s in seen)


def test_each_client_only_reaches_its_own_fhir_server(
    live: LiveApp, fhir: FhirStub, other: FhirStub, signers: dict[str, Signer]
) -> None:
    # B may use `other`: fetched, card returned.
    assert post(live, signers["B"], needs_fetch(live, other.url)).status_code == 200
    assert other.seen()
    other.reset()
    # A may not use B's server, B may not use A's: 412 and nobody is contacted.
    assert_412(post(live, signers["A"], needs_fetch(live, other.url)))
    assert_412(post(live, signers["B"], needs_fetch(live, fhir.url)))
    assert other.seen() == []
    assert fhir.seen() == []


# --------------------------------------------------------------------------- refused bases


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("{other}", id="another-clients-server"),
        pytest.param("http://127.0.0.1:{fhir_port}/fhir-admin", id="same-host-other-path"),
        pytest.param("http://127.0.0.1:{other_port}/fhir", id="same-path-other-port"),
        pytest.param("http://user:secret@127.0.0.1:{fhir_port}/fhir", id="userinfo"),
        pytest.param("http://127.0.0.1:{fhir_port}/fhir?x=1", id="query"),
        pytest.param("http://127.0.0.1:{fhir_port}@127.0.0.1:{other_port}/fhir", id="at-trick"),
        pytest.param("HTTP://127.0.0.1:{fhir_port}.evil.test/fhir", id="suffix-trick"),
        pytest.param("http://127.0.0.1:{fhir_port}/fhir/\x00", id="control-character"),
        pytest.param("http://127.0.0.1:{fhir_port}/fhir/ x", id="space"),
        pytest.param("http://127.0.0.1:{fhir_port}/fhir/\u00e9", id="non-ascii"),
        pytest.param("http://[127.0.0.1:{fhir_port}/fhir", id="broken-ipv6"),
        pytest.param("http://127.0.0.1:{fhir_port}/fhir/../admin", id="dot-segments"),
        pytest.param("http://127.0.0.1:{fhir_port}/fhir/%2e%2e/admin", id="encoded-dot-segments"),
    ],
)
def test_non_allowlisted_fhir_server_gets_412_and_zero_requests(
    live: LiveApp, fhir: FhirStub, other: FhirStub, signers: dict[str, Signer], server: str
) -> None:
    base = server.format(
        other=other.url,
        fhir_port=fhir.origin.rsplit(":", 1)[1],
        other_port=other.origin.rsplit(":", 1)[1],
    )
    assert_412(post(live, signers["A"], needs_fetch(live, base)))
    assert fhir.seen() == []
    assert other.seen() == []


def test_plain_http_to_a_remote_host_is_refused_before_connecting(
    live: LiveApp, signers: dict[str, Signer]
) -> None:
    # Allowlisted for client A by (deliberate) operator mistake; still never contacted. The
    # refusal happens before name resolution (the .test name does not even resolve).
    response = post(live, signers["A"], needs_fetch(live, NOT_ALLOWED_HTTP))
    assert_412(response)
    assert "https" in diagnostics(response)


def test_metadata_address_is_refused_even_when_allowlisted(
    live: LiveApp, signers: dict[str, Signer]
) -> None:
    response = post(live, signers["A"], needs_fetch(live, METADATA_BASE))
    assert_412(response)
    assert "metadata" in diagnostics(response)


def test_patient_in_fhir_authorization_must_match_context(
    live: LiveApp, fhir: FhirStub, signers: dict[str, Signer]
) -> None:
    body = needs_fetch(live, fhir.url, auth=authorization(patient="some-other-child"))
    assert_412(post(live, signers["A"], body))
    assert fhir.seen() == []


def test_a_token_that_is_not_bearer_is_never_sent(
    live: LiveApp, fhir: FhirStub, signers: dict[str, Signer]
) -> None:
    body = needs_fetch(live, fhir.url, auth=authorization(token_type="MAC"))
    assert_412(post(live, signers["A"], body))
    assert fhir.seen() == []


# --------------------------------------------------------------------------- misbehaving server


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to_another_origin_is_not_followed(
    live: LiveApp, fhir: FhirStub, other: FhirStub, signers: dict[str, Signer], status: int
) -> None:
    fhir.reset(lambda seen: Reply(status, b"", {"Location": f"{other.url}{seen.path}"}))
    assert_412(post(live, signers["A"], needs_fetch(live, fhir.url)))
    assert len(fhir.seen()) == 1, "stops at the first redirect"
    assert other.seen() == [], "the redirect target must receive nothing (nor the token)"


def _paging(next_url: str) -> Any:
    def behaviour(seen: Seen) -> Reply:
        return Reply(
            200,
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "link": [{"relation": "next", "url": next_url}],
            },
        )

    return behaviour


@pytest.mark.parametrize(
    "target", ["other-origin", "same-origin-outside-base", "downgrade", "dot-segments"]
)
def test_next_link_outside_the_base_is_not_followed(
    live: LiveApp, fhir: FhirStub, other: FhirStub, signers: dict[str, Signer], target: str
) -> None:
    next_url = {
        "other-origin": f"{other.url}/Condition?page=2",
        "same-origin-outside-base": f"{fhir.origin}/admin/Condition?page=2",
        "downgrade": f"{fhir.url.replace('http://', 'ftp://')}/Condition?page=2",
        "dot-segments": f"{fhir.url}/../admin/Condition?page=2",
    }[target]
    fhir.reset(_paging(next_url))
    assert_412(post(live, signers["A"], needs_fetch(live, fhir.url, drop=("conditions",))))
    assert [s.resource_path for s in fhir.seen()] == ["/fhir/Condition"]
    assert other.seen() == []


def test_next_link_in_the_ehr_prefetch_pointing_elsewhere_is_not_followed(
    live: LiveApp, fhir: FhirStub, other: FhirStub, signers: dict[str, Signer]
) -> None:
    body = needs_fetch(live, fhir.url, drop=())
    body["prefetch"]["conditions"]["link"] = [
        {"relation": "next", "url": f"{other.url}/Condition?page=2"}
    ]
    assert_412(post(live, signers["A"], body))
    assert other.seen() == []
    assert fhir.seen() == []


def test_pages_are_capped(live: LiveApp, fhir: FhirStub, signers: dict[str, Signer]) -> None:
    fhir.reset(_paging(f"{fhir.url}/Condition?patient={PATIENT}&page=again"))
    response = post(live, signers["A"], needs_fetch(live, fhir.url, drop=("conditions",)))
    assert_412(response)
    assert "pages" in diagnostics(response)
    assert len(fhir.seen()) == MAX_PAGES


def _big_bundle(size: int) -> bytes:
    filler = "x" * 1000
    entries = [
        {"resource": {"resourceType": "Basic", "id": f"b{i}", "text": {"div": filler}}}
        for i in range(size // 1000 + 1)
    ]
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    return json.dumps(bundle).encode()


@pytest.mark.parametrize("framing", ["content-length", "close-delimited", "gzip-bomb"])
def test_response_size_is_capped(
    live: LiveApp, fhir: FhirStub, signers: dict[str, Signer], framing: str
) -> None:
    if framing == "gzip-bomb":
        # ~60 KiB on the wire, 64 MiB once expanded: refused without expanding it all.
        body = gzip.compress(b" " * (64 * 1024 * 1024), compresslevel=9)
        assert len(body) < MAX_BYTES
        reply = Reply(200, body, {"Content-Encoding": "gzip"})
    elif framing == "content-length":
        reply = Reply(200, _big_bundle(4 * MAX_BYTES))
    else:  # no Content-Length: the body runs until the connection closes
        reply = Reply(200, _big_bundle(4 * MAX_BYTES), content_length=False)
    fhir.reset(lambda seen: reply)
    response = post(live, signers["A"], needs_fetch(live, fhir.url, drop=("conditions",)))
    assert_412(response)
    assert "too large" in diagnostics(response)


# --------------------------------------------------------------------------- check_base, no traffic


class FakeResolver:
    """Names → addresses, recording every lookup (to prove when none happens)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        if host not in self.table:
            raise FhirServerError("fhirServer host does not resolve")
        return [ipaddress.ip_address(a) for a in self.table[host]]


NAMES = {
    "fhir.example.org": ["93.184.216.34"],
    "metadata.example.org": ["169.254.169.254"],
    "intranet.example.org": ["10.20.30.40"],
    "cgnat.example.org": ["100.64.1.2"],
    "loop.example.org": ["127.0.0.1"],
    "ipv6-loop.example.org": ["::1"],
    "mixed.example.org": ["93.184.216.34", "10.0.0.1"],
    "mapped.example.org": ["::ffff:169.254.169.254"],
    "aws-v6-metadata.example.org": ["fd00:ec2::254"],
    "alibaba-metadata.example.org": ["100.100.100.200"],
}


def check(
    base: str,
    *,
    allowed: list[str] | None = None,
    allow_private: bool = False,
    resolver: FakeResolver | None = None,
) -> str | None:
    """Run check_base; the refusal message, or None if the base is accepted."""

    async def run() -> str | None:
        reader = FhirReader(
            FhirLimits(allow_private_networks=allow_private),
            resolver=resolver if resolver is not None else FakeResolver(NAMES),
        )
        try:
            await reader.check_base(base, allowed if allowed is not None else [base])
        except FhirServerError as exc:
            return exc.message
        finally:
            await reader.aclose()
        return None

    return asyncio.run(run())


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "169.254.0.1",
        "[fe80::1]",
        "[fe80::1%25eth0]",
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.1",
        "100.64.0.1",
        "[fd12:3456::1]",
        "0.0.0.0",
        "[::]",
        "224.0.0.1",
        "[ff02::1]",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.10",
        "198.18.0.1",
        "[::ffff:169.254.169.254]",
        "[::ffff:10.0.0.1]",
        "[::ffff:127.0.0.1]",
        "[64:ff9b::a9fe:a9fe]",
        "[2002:a9fe:a9fe::1]",
        "[fd00:ec2::254]",
        "100.100.100.200",
    ],
)
def test_literal_non_public_addresses_are_refused_even_if_allowlisted(host: str) -> None:
    assert check(f"https://{host}/fhir") is not None


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "[fe80::1]",
        "[fd00:ec2::254]",
        "100.100.100.200",
        "169.254.170.2",
        "[::ffff:169.254.169.254]",
        "0.0.0.0",
    ],
)
def test_allowing_private_networks_never_allows_link_local_or_metadata(host: str) -> None:
    assert check(f"https://{host}/fhir", allow_private=True) is not None


@pytest.mark.parametrize("host", ["10.0.0.5", "172.16.3.4", "192.168.1.1", "[fd12:3456::1]"])
def test_private_literals_need_the_operator_switch(host: str) -> None:
    assert check(f"https://{host}/fhir") is not None
    assert check(f"https://{host}/fhir", allow_private=True) is None


@pytest.mark.parametrize(
    "host",
    [
        "2852039166",  # 169.254.169.254 as one decimal number
        "0xa9fea9fe",  # ... in hex
        "0251.0376.0251.0376",  # ... in octal
        "169.254.43518",  # ... in a.b.c form
        "127.1",  # loopback, short form (not a literal loopback to ipaddress)
        "017700000001",  # 127.0.0.1 in octal
    ],
)
def test_numeric_ip_spellings_are_resolved_and_refused(host: str) -> None:
    # The real system resolver (no network needed for numeric hosts) parses these as
    # inet_aton does, exactly as a connection would.
    from msht_cds.fhir import system_resolver

    async def run() -> str | None:
        reader = FhirReader(FhirLimits(), resolver=system_resolver)
        try:
            await reader.check_base(f"https://{host}/fhir", [f"https://{host}/fhir"])
        except FhirServerError as exc:
            return exc.message
        finally:
            await reader.aclose()
        return None

    assert asyncio.run(run()) is not None


@pytest.mark.parametrize(
    ("name", "refused_by_default", "refused_with_private"),
    [
        ("fhir.example.org", False, False),
        ("metadata.example.org", True, True),
        ("intranet.example.org", True, False),
        ("cgnat.example.org", True, False),
        ("loop.example.org", True, True),
        ("ipv6-loop.example.org", True, True),
        ("mixed.example.org", True, False),
        ("mapped.example.org", True, True),
        ("aws-v6-metadata.example.org", True, True),
        ("alibaba-metadata.example.org", True, True),
        ("does-not-resolve.example.org", True, True),
    ],
)
def test_allowlisted_names_are_checked_by_what_they_resolve_to(
    name: str, refused_by_default: bool, refused_with_private: bool
) -> None:
    base = f"https://{name}/fhir"
    assert (check(base) is not None) is refused_by_default
    assert (check(base, allow_private=True) is not None) is refused_with_private


@pytest.mark.parametrize(
    ("base", "allowed"),
    [
        ("https://fhir.example.org.evil.test/r4", "https://fhir.example.org"),
        ("https://fhir.example.org@evil.test/r4", "https://fhir.example.org"),
        ("https://fhir.example.orgx/r4", "https://fhir.example.org"),
        ("https://fhir.example.org/r4x", "https://fhir.example.org/r4"),
        ("https://fhir.example.org:8443/r4", "https://fhir.example.org/r4"),
        ("http://fhir.example.org/r4", "https://fhir.example.org/r4"),
        ("https://fhir.example.org/other", "https://fhir.example.org/r4"),
        ("https://fhir.example.org/r4/../admin", "https://fhir.example.org/r4"),
        ("https://fhir.example.org/r4/tenant-a/../../admin", "https://fhir.example.org/r4"),
        ("https://fhir.example.org/r4/%2e%2e/admin", "https://fhir.example.org/r4"),
        ("https://fhir.example.org/r4/%2E%2E/admin", "https://fhir.example.org/r4"),
        ("https://fhir.example.org/r4/.%2e/admin", "https://fhir.example.org/r4"),
        ("https://fhir.example.org/r4/..\\admin", "https://fhir.example.org/r4"),
        ("https://fhir.example.org/r4/./../admin", "https://fhir.example.org/r4"),
    ],
)
def test_allowlist_is_an_exact_origin_and_path_prefix(base: str, allowed: str) -> None:
    resolver = FakeResolver(NAMES)
    assert check(base, allowed=[allowed], resolver=resolver) is not None
    assert resolver.calls == [], "refused before any name resolution"


def test_allowlist_accepts_the_base_and_paths_under_it() -> None:
    for base in (
        "https://fhir.example.org/r4",
        "https://FHIR.example.org/r4/",
        "https://fhir.example.org/r4/tenant-1",
    ):
        assert check(base, allowed=["https://fhir.example.org/r4"]) is None


def test_plain_http_is_refused_without_resolving_unless_the_host_is_literally_loopback() -> None:
    resolver = FakeResolver(NAMES)
    assert check("http://fhir.example.org/r4", resolver=resolver) is not None
    assert resolver.calls == []
    for loopback in (
        "http://127.0.0.1:8080/fhir",
        "http://[::1]:8080/fhir",
        "http://localhost:8080/fhir",
    ):
        assert check(loopback) is None
    # A name that merely resolves to loopback is not loopback.
    assert check("http://loop.example.org/fhir") is not None


@pytest.mark.parametrize(
    "base",
    [
        "https://user:pw@fhir.example.org/r4",
        "https://fhir.example.org/r4?_format=json",
        "https://fhir.example.org/r4#x",
        "https:///r4",
    ],
)
def test_odd_bases_are_refused(base: str) -> None:
    assert check(base) is not None


def test_address_problem_is_none_only_for_public_addresses() -> None:
    assert address_problem(ipaddress.ip_address("93.184.216.34"), False) is None
    assert address_problem(ipaddress.ip_address("2606:2800:220:1::1"), False) is None
    assert address_problem(ipaddress.ip_address("64:ff9b::5db8:d822"), False) is None  # NAT64
    assert address_problem(ipaddress.ip_address("10.0.0.1"), False) is not None


# --------------------------------------------------------------------------- DNS rebinding


class ConnectionCounter:
    """A bare TCP listener on loopback that counts connections (and answers nothing)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class RebindingResolver(FakeResolver):
    """Public address for the check, loopback for the connection: a DNS rebinding attack."""

    def __init__(self) -> None:
        super().__init__({})

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        first = len(self.calls) == 1
        return [ipaddress.ip_address("93.184.216.34" if first else "127.0.0.1")]


def test_dns_rebinding_between_check_and_connect_is_refused_at_connect_time() -> None:
    listener = ConnectionCounter()
    resolver = RebindingResolver()
    base = f"https://rebind.example.org:{listener.port}/fhir"
    request_body = example_request()
    request_body.update(fhirServer=base)

    async def run() -> str:
        from msht_cds.cdshooks import parse_hook_request
        from msht_cds.prefetch import PrefetchState

        reader = FhirReader(FhirLimits(connect_timeout=2, read_timeout=2), resolver=resolver)
        request = parse_hook_request(request_body, "encounter-start")
        state = PrefetchState(missing=["conditions"])
        templates = {"conditions": "Condition?patient={{context.patientId}}"}
        try:
            await reader.fetch_missing(request, templates, state, [base])
        except FhirServerError as exc:
            return exc.message
        finally:
            await reader.aclose()
        raise AssertionError("the rebinding fetch was not refused")

    try:
        message = asyncio.run(run())
    finally:
        listener.close()
    assert len(resolver.calls) == 2, "checked once before, once at connect time"
    assert "resolves to" in message
    assert listener.accepted == 0, "no TCP connection to the rebound (loopback) address"


def test_cookies_set_by_a_fhir_server_are_never_sent_back(
    live: LiveApp, fhir: FhirStub, signers: dict[str, Signer]
) -> None:
    record = serve_record(record_resources(example_request()), "/fhir")

    def with_cookie(seen: Seen) -> Reply:
        reply = record(seen)
        reply.headers["Set-Cookie"] = "session=planted; Path=/"
        return reply

    fhir.reset(with_cookie)
    assert post(live, signers["A"], needs_fetch(live, fhir.url)).status_code == 200
    assert post(live, signers["A"], needs_fetch(live, fhir.url)).status_code == 200
    assert len(fhir.seen()) == 4
    assert all("cookie" not in s.headers for s in fhir.seen())


def test_the_fhir_stub_records_what_it_receives(
    sec_fhir: FhirStub, sec_other_fhir: FhirStub
) -> None:
    """Guards the helper itself: the "zero requests" assertions above rely on it."""
    assert httpx.get(f"{sec_fhir.url}/Patient/x", timeout=10).status_code == 404
    assert [s.resource_path for s in sec_fhir.seen()] == ["/fhir/Patient/x"]
    assert sec_other_fhir.seen() == []
