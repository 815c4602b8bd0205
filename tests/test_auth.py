"""JWT trust tests: conformance checklist K (items 75-85), T17 negatives and T18 positives.

Keys are generated here (EC P-384, RSA 3072). Remote key sets come from a real HTTP server on
127.0.0.1 that counts hits, so "no fetch" and "exactly one refresh" are observed, not mocked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from msht_cds.auth import (
    InMemoryReplayCache,
    JwtVerifier,
    TrustedClient,
    TrustedClients,
    VerifiedClient,
    bearer_token,
    load_trusted_clients,
)
from msht_cds.errors import AuthError, LibraryError

ISSUER = "https://ehr.example.org"
BASE = "https://cds.example.org"
DISCOVERY_URL = f"{BASE}/cds-services"
SERVICE_URL = f"{BASE}/cds-services/msht-child"
FEEDBACK_URL = f"{SERVICE_URL}/feedback"
START = float(int(time.time()))
DROP = object()

EC_KEY = ec.generate_private_key(ec.SECP384R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=3072)

# CDS Hooks 2.0.1 §Trusting CDS Clients example (shared/cds-hooks/spec-2.0.1): ES384, exp 2015.
SPEC_TOKEN = (
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImV4YW1wbGUta2lkIiwiamt1IjoiaHR0cHM6Ly9maGlyLWVo"
    "ci5leGFtcGxlLmNvbS9qd2tfdXJpIn0.eyJpc3MiOiJodHRwczovL2ZoaXItZWhyLmV4YW1wbGUuY29tLyIsImF1ZCI6"
    "Imh0dHBzOi8vY2RzLmV4YW1wbGUub3JnL2Nkcy1zZXJ2aWNlcy9zb21lLXNlcnZpY2UiLCJleHAiOjE0MjI1Njg4NjAs"
    "ImlhdCI6MTMxMTI4MDk3MCwianRpIjoiZWUyMmIwMjEtZTFiNy00NjExLWJhNWItOGVlYzZhMzNhYzFlIiwidGVuYW50"
    "IjoiMmRkZDZjM2EtOGU5YS00NGM2LWEzMDUtNTIxMTFhZDMwMmEyIn0.d1WfLjGRKlcWB94l9do4cM8REXeYJLL6SGUB"
    "O8VHZhfM8mwKYP70EMxJ67War4TQblEpaQrp11wx5p7oPFm2ETYgCicS84vXWEIYTdjooZdooCSDf2L8-i4awdoUwiEb"
)
SPEC_JWKS = {
    "keys": [
        {
            "kty": "EC",
            "use": "sig",
            "crv": "P-384",
            "kid": "example-kid",
            "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
            "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
            "alg": "ES384",
        }
    ]
}
# shared/cds-hooks/sandbox/sandbox-jwks.json: the public CDS Hooks Sandbox key set.
SANDBOX_JWKS = {
    "keys": [
        {
            "kty": "EC",
            "use": "sig",
            "crv": "P-384",
            "kid": "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f",
            "x": "dw_JGR8nB2I6XveNxUOl2qk699ZPLM2nYI5STSdiEl9avAkrm3CkfYMbrrjr8laB",
            "y": "Sm3mLE-n1zYNla_aiE3cb3nZsL51RbC7ysw3q8aJLxGm-hx79RPMYpITDjp7kgzy",
            "alg": "ES384",
        }
    ]
}


def public_jwk(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        data = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "ES384"
    else:
        data = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "RS384"
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


EC_JWKS = {"keys": [public_jwk(EC_KEY, "ec-1"), public_jwk(RSA_KEY, "rsa-1")]}


def claims(now: float = START, **over: Any) -> dict[str, Any]:
    """Valid spec claims; pass name=DROP to remove one."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": SERVICE_URL,
        "exp": int(now) + 300,
        "iat": int(now),
        "jti": str(uuid.uuid4()),
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not DROP}


def mint(
    payload: dict[str, Any] | None = None,
    *,
    key: Any = EC_KEY,
    alg: str = "ES384",
    kid: str | None = "ec-1",
    **headers: Any,
) -> str:
    hdr: dict[str, Any] = dict(headers)
    if kid is not None:
        hdr["kid"] = kid
    return jwt.encode(payload or claims(), key, algorithm=alg, headers=hdr)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """Build a token PyJWT refuses to make (HS256 with a PEM key, alg none)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class JwksServer(ThreadingHTTPServer):
    daemon_threads = True
    jwks: dict[str, Any]
    hits: Counter[str]
    fail = False

    def url(self, path: str = "/jwks") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())


class JwksHandler(BaseHTTPRequestHandler):
    server: JwksServer

    def do_GET(self) -> None:
        self.server.hits[self.path] += 1
        if self.path == "/slow":  # a trickle that never trips a per-read timeout
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b" " * 10)
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            return
        status, body, extra = 200, json.dumps(self.server.jwks).encode(), {}
        if self.path == "/500" or self.server.fail:
            status, body = 500, b"{}"
        elif self.path == "/redirect":
            status, body, extra = 302, b"", {"Location": "/jwks"}
        elif self.path == "/big":
            body = json.dumps({**self.server.jwks, "pad": "x" * 300_000}).encode()
        elif self.path == "/not-json":
            body = b"<html>login</html>"
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **extra}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[JwksServer]:
    srv = JwksServer(("127.0.0.1", 0), JwksHandler)
    srv.jwks, srv.hits = EC_JWKS, Counter()
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_verifier(clock: Clock) -> Iterator[Callable[..., JwtVerifier]]:
    made: list[JwtVerifier] = []

    def make(*clients: TrustedClient, **kwargs: Any) -> JwtVerifier:
        listed = clients or (TrustedClient(issuer=ISSUER, jwks=EC_JWKS),)
        verifier = JwtVerifier(
            TrustedClients(clients=list(listed)),
            InMemoryReplayCache(clock=clock),
            clock=clock,
            **kwargs,
        )
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        verifier.close()


def reason(verifier: JwtVerifier, token: str, audience: str = SERVICE_URL) -> str:
    with pytest.raises(AuthError) as info:
        verifier.verify(token, audience)
    assert info.value.status_code == 401
    assert not token or token not in str(info.value)
    return info.value.message


# --- T17: negatives -------------------------------------------------------------------------


def test_alg_none_is_rejected(make_verifier: Callable[..., JwtVerifier]) -> None:
    token = hand_made({"alg": "none", "typ": "JWT", "kid": "ec-1"}, claims(), lambda _: b"")
    assert reason(make_verifier(), token) == "alg_not_allowed"


def test_hs256_with_random_secret_is_rejected(make_verifier: Callable[..., JwtVerifier]) -> None:
    secret = secrets.token_bytes(32)
    header = {"alg": "HS256", "typ": "JWT", "kid": "ec-1"}
    token = hand_made(header, claims(), lambda m: hmac.new(secret, m, hashlib.sha256).digest())
    assert reason(make_verifier(), token) == "alg_not_allowed"


@pytest.mark.parametrize("alg", ["HS256", "HS384"])
def test_algorithm_confusion_hmac_with_public_key_pem_is_rejected(
    make_verifier: Callable[..., JwtVerifier], alg: str
) -> None:
    pem = EC_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.sha256 if alg == "HS256" else hashlib.sha384
    header = {"alg": alg, "typ": "JWT", "kid": "ec-1"}
    token = hand_made(header, claims(), lambda m: hmac.new(pem, m, digest).digest())
    assert reason(make_verifier(), token) == "alg_not_allowed"


def test_missing_kid_is_rejected(make_verifier: Callable[..., JwtVerifier]) -> None:
    assert reason(make_verifier(), mint(kid=None)) == "missing_kid"


@pytest.mark.parametrize("typ", [None, "JOSE", "at+jwt", ""])
def test_missing_or_wrong_typ_is_rejected(
    make_verifier: Callable[..., JwtVerifier], typ: str | None
) -> None:
    assert reason(make_verifier(), mint(typ=typ)) == "bad_typ"


def test_lowercase_typ_is_accepted(make_verifier: Callable[..., JwtVerifier]) -> None:
    assert make_verifier().verify(mint(typ="jwt"), SERVICE_URL).issuer == ISSUER


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "iat", "jti"])
def test_missing_required_claim_is_rejected(
    make_verifier: Callable[..., JwtVerifier], claim: str
) -> None:
    assert reason(make_verifier(), mint(claims(**{claim: DROP}))) == f"missing_{claim}"


@pytest.mark.parametrize(
    ("aud", "expected_audience"),
    [
        ("https://other.example.org/cds-services/msht-child", SERVICE_URL),
        (DISCOVERY_URL, SERVICE_URL),  # discovery aud replayed against a service
        (SERVICE_URL, FEEDBACK_URL),  # service aud replayed against /feedback
        (SERVICE_URL + "/", SERVICE_URL),  # exact match unless configured as an alias
        ([DISCOVERY_URL, FEEDBACK_URL], SERVICE_URL),
        ([], SERVICE_URL),
    ],
)
def test_wrong_audience_is_rejected(
    make_verifier: Callable[..., JwtVerifier], aud: Any, expected_audience: str
) -> None:
    assert reason(make_verifier(), mint(claims(aud=aud)), expected_audience) == "wrong_audience"


@pytest.mark.parametrize("aud", [42, [SERVICE_URL, 7], {"url": SERVICE_URL}])
def test_malformed_audience_is_rejected(
    make_verifier: Callable[..., JwtVerifier], aud: Any
) -> None:
    assert reason(make_verifier(), mint(claims(aud=aud))) == "invalid_claims"


def test_audience_array_containing_the_endpoint_is_accepted(
    make_verifier: Callable[..., JwtVerifier],
) -> None:
    token = mint(claims(aud=["https://other.example.org", FEEDBACK_URL]))
    assert make_verifier().verify(token, FEEDBACK_URL).issuer == ISSUER


def test_audience_alias_is_accepted(make_verifier: Callable[..., JwtVerifier]) -> None:
    client = TrustedClient(issuer=ISSUER, jwks=EC_JWKS, audience_aliases=["msht-child"])
    assert make_verifier(client).verify(mint(claims(aud="msht-child")), SERVICE_URL)


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"exp": int(START) - 61, "iat": int(START) - 361}, "expired"),
        ({"nbf": int(START) + 61}, "not_yet_valid"),
        ({"iat": int(START) + 120, "exp": int(START) + 420}, "iat_in_future"),
        ({"exp": int(START) + 3601}, "bad_lifetime"),
        ({"exp": int(START)}, "bad_lifetime"),
        ({"exp": "tomorrow"}, "invalid_claims"),
        ({"iat": True}, "invalid_claims"),
        ({"jti": ""}, "invalid_claims"),
        ({"jti": "x" * 257}, "invalid_claims"),
        ({"sub": 12}, "invalid_claims"),
    ],
)
def test_bad_time_and_claim_values_are_rejected(
    make_verifier: Callable[..., JwtVerifier], over: dict[str, Any], expected: str
) -> None:
    assert reason(make_verifier(), mint(claims(**over))) == expected


@pytest.mark.parametrize(
    "over",
    [
        {"exp": int(START) - 59, "iat": int(START) - 359},  # expired but within leeway
        {"nbf": int(START) + 59},
        {"iat": int(START) + 59, "exp": int(START) + 359},
    ],
)
def test_clock_skew_within_leeway_is_accepted(
    make_verifier: Callable[..., JwtVerifier], over: dict[str, Any]
) -> None:
    assert make_verifier().verify(mint(claims(**over)), SERVICE_URL).issuer == ISSUER


def test_spec_example_token_is_rejected_as_expired(
    make_verifier: Callable[..., JwtVerifier],
) -> None:
    client = TrustedClient(
        issuer="https://fhir-ehr.example.com/",
        jwks=SPEC_JWKS,
        jku_allowlist=["https://fhir-ehr.example.com/jwk_uri"],
    )
    audience = "https://cds.example.org/cds-services/some-service"
    assert reason(make_verifier(client), SPEC_TOKEN, audience) == "expired"


def test_spec_example_signature_really_verifies(
    make_verifier: Callable[..., JwtVerifier], clock: Clock
) -> None:
    """Proves the 'expired' above comes after a good signature, not from a key mix-up."""
    client = TrustedClient(
        issuer="https://fhir-ehr.example.com/",
        jwks=SPEC_JWKS,
        jku_allowlist=["https://fhir-ehr.example.com/jwk_uri"],
    )
    clock.now = 1311280970 + 10  # the token's iat
    verifier = make_verifier(client, max_lifetime_seconds=10**9)
    result = verifier.verify(SPEC_TOKEN, "https://cds.example.org/cds-services/some-service")
    assert result.tenant == "2ddd6c3a-8e9a-44c6-a305-52111ad302a2"
    assert result.jti == "ee22b021-e1b7-4611-ba5b-8eec6a33ac1e"


def test_replayed_jti_is_rejected(make_verifier: Callable[..., JwtVerifier]) -> None:
    verifier, token = make_verifier(), mint()
    assert verifier.verify(token, SERVICE_URL).issuer == ISSUER
    assert reason(verifier, token) == "replayed_jti"
    # A fresh token with the same jti is a replay too, even if re-signed.
    again = mint(claims(jti=jwt.decode(token, options={"verify_signature": False})["jti"]))
    assert reason(verifier, again) == "replayed_jti"


def test_failed_checks_do_not_burn_the_jti(make_verifier: Callable[..., JwtVerifier]) -> None:
    verifier, jti = make_verifier(), "jti-1"
    assert reason(verifier, mint(claims(jti=jti, aud=DISCOVERY_URL))) == "wrong_audience"
    assert verifier.verify(mint(claims(jti=jti)), SERVICE_URL).jti == jti


def test_unknown_issuer_is_rejected(make_verifier: Callable[..., JwtVerifier]) -> None:
    token = mint(claims(iss="https://evil.example.org"))
    assert reason(make_verifier(), token) == "unknown_issuer"


@pytest.mark.parametrize(
    ("tenant", "expected"),
    [("other-tenant", "unknown_tenant"), (DROP, "unknown_tenant"), (5, "invalid_claims")],
)
def test_unknown_tenant_is_rejected_when_allowlisted(
    make_verifier: Callable[..., JwtVerifier], tenant: Any, expected: str
) -> None:
    client = TrustedClient(issuer=ISSUER, jwks=EC_JWKS, tenant_allowlist=["tenant-a"])
    verifier = make_verifier(client)
    assert reason(verifier, mint(claims(tenant=tenant))) == expected
    assert verifier.verify(mint(claims(tenant="tenant-a")), SERVICE_URL).tenant == "tenant-a"


def test_client_algorithm_allowlist_applies(make_verifier: Callable[..., JwtVerifier]) -> None:
    client = TrustedClient(issuer=ISSUER, jwks=EC_JWKS, algorithms=["ES384"])
    assert reason(make_verifier(client), mint(key=RSA_KEY, alg="RS384", kid="rsa-1")) == (
        "alg_not_allowed"
    )


def test_key_of_another_type_under_the_kid_is_rejected(
    make_verifier: Callable[..., JwtVerifier],
) -> None:
    token = mint(key=RSA_KEY, alg="RS384", kid="ec-1")
    assert reason(make_verifier(), token) == "key_alg_mismatch"


def test_tampered_payload_is_rejected(make_verifier: Callable[..., JwtVerifier]) -> None:
    header, _, signature = mint().split(".")
    forged = b64(json.dumps(claims(sub="admin")).encode())
    assert reason(make_verifier(), f"{header}.{forged}.{signature}") == "bad_signature"


@pytest.mark.parametrize("kid", ["ec-1", "rsa-1"])
def test_signature_by_another_key_with_known_kid_is_rejected(
    make_verifier: Callable[..., JwtVerifier], kid: str
) -> None:
    if kid == "ec-1":
        token = mint(key=OTHER_EC_KEY, kid=kid)
    else:
        token = mint(key=rsa.generate_private_key(65537, 2048), alg="RS384", kid=kid)
    assert reason(make_verifier(), token) == "bad_signature"


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c", "x" * 20_000, mint().replace(".", "..", 1)]
)
def test_malformed_token_is_rejected(make_verifier: Callable[..., JwtVerifier], token: str) -> None:
    assert reason(make_verifier(), token) == "malformed_token"


def test_unknown_kid_with_inline_keys_only_is_rejected(
    make_verifier: Callable[..., JwtVerifier],
) -> None:
    assert reason(make_verifier(), mint(kid="nope")) == "unknown_kid"


# --- jku and remote key sets (real loopback server) -----------------------------------------


@pytest.mark.parametrize("jku_path", ["/evil", "https://attacker.example/jwks.json"])
def test_jku_not_allowlisted_is_rejected_without_any_fetch(
    make_verifier: Callable[..., JwtVerifier], server: JwksServer, jku_path: str
) -> None:
    client = TrustedClient(issuer=ISSUER, jku_allowlist=[server.url("/jwks")])
    jku = server.url(jku_path) if jku_path.startswith("/") else jku_path
    assert reason(make_verifier(client), mint(jku=jku)) == "jku_not_allowed"
    assert server.total_hits == 0


def test_jku_with_inline_keys_but_no_allowlist_is_rejected(
    make_verifier: Callable[..., JwtVerifier], server: JwksServer
) -> None:
    assert reason(make_verifier(), mint(jku=server.url())) == "jku_not_allowed"
    assert server.total_hits == 0


def test_allowlisted_jku_is_fetched_once_and_cached(
    make_verifier: Callable[..., JwtVerifier], server: JwksServer
) -> None:
    client = TrustedClient(issuer=ISSUER, jku_allowlist=[server.url()])
    verifier = make_verifier(client)
    for _ in range(3):
        assert verifier.verify(mint(jku=server.url()), SERVICE_URL).issuer == ISSUER
    assert server.hits == Counter({"/jwks": 1})


def test_unknown_kid_triggers_exactly_one_refresh_then_rejects(
    make_verifier: Callable[..., JwtVerifier], server: JwksServer, clock: Clock
) -> None:
    verifier = make_verifier(TrustedClient(issuer=ISSUER, jwks_url=server.url()))
    assert verifier.verify(mint(), SERVICE_URL).issuer == ISSUER
    assert server.total_hits == 1
    clock.now += 31
    assert reason(verifier, mint(claims(clock.now), kid="forged-kid")) == "unknown_kid"
    assert server.total_hits == 2
    # Forged kids cannot make us hammer the EHR: refreshes are rate-limited per source.
    for _ in range(5):
        assert reason(verifier, mint(claims(clock.now), kid="forged-kid")) == "unknown_kid"
    assert server.total_hits == 2


def test_unknown_kid_on_cold_cache_fetches_once(
    make_verifier: Callable[..., JwtVerifier], server: JwksServer
) -> None:
    verifier = make_verifier(TrustedClient(issuer=ISSUER, jwks_url=server.url()))
    assert reason(verifier, mint(kid="forged-kid")) == "unknown_kid"
    assert server.total_hits == 1


def test_key_rotation_is_picked_up_with_one_refresh(
    make_verifier: Callable[..., JwtVerifier], server: JwksServer, clock: Clock
) -> None:
    verifier = make_verifier(TrustedClient(issuer=ISSUER, jwks_url=server.url()))
    assert verifier.verify(mint(), SERVICE_URL).issuer == ISSUER
    server.jwks = {"keys": [public_jwk(OTHER_EC_KEY, "ec-2")]}
    clock.now += 31
    token = mint(claims(clock.now), key=OTHER_EC_KEY, kid="ec-2")
    assert verifier.verify(token, SERVICE_URL).issuer == ISSUER
    assert server.total_hits == 2
    assert reason(verifier, mint(claims(clock.now))) == "unknown_kid"  # old key retired
    assert server.total_hits == 2


def test_cached_keys_expire_and_are_refetched(
    make_verifier: Callable[..., JwtVerifier], server: JwksServer, clock: Clock
) -> None:
    verifier = make_verifier(TrustedClient(issuer=ISSUER, jwks_url=server.url()))
    assert verifier.verify(mint(), SERVICE_URL)
    clock.now += 3601
    server.jwks = {"keys": [public_jwk(OTHER_EC_KEY, "ec-1")]}  # same kid, new key
    assert reason(verifier, mint(claims(clock.now))) == "bad_signature"
    assert server.total_hits == 2


def test_stale_keys_survive_a_key_endpoint_outage(
    make_verifier: Callable[..., JwtVerifier], server: JwksServer, clock: Clock
) -> None:
    verifier = make_verifier(TrustedClient(issuer=ISSUER, jwks_url=server.url()))
    assert verifier.verify(mint(), SERVICE_URL)
    server.fail = True
    clock.now += 3601  # cache expired, refetch fails: keep serving with the last good keys
    assert verifier.verify(mint(claims(clock.now)), SERVICE_URL).issuer == ISSUER
    assert server.total_hits == 2
    assert verifier.verify(mint(claims(clock.now)), SERVICE_URL)  # no retry storm either
    assert server.total_hits == 2


@pytest.mark.parametrize("path", ["/500", "/redirect", "/big", "/not-json", "/slow"])
def test_unusable_key_set_responses_are_rejected(
    make_verifier: Callable[..., JwtVerifier], server: JwksServer, path: str
) -> None:
    verifier = make_verifier(TrustedClient(issuer=ISSUER, jwks_url=server.url(path)))
    assert reason(verifier, mint()) == "unknown_kid"
    assert server.hits == Counter({path: 1})  # no redirect followed, no retry storm


def test_unreachable_key_set_is_rejected_quickly(make_verifier: Callable[..., JwtVerifier]) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), JwksHandler) as closed:
        port = closed.server_address[1]
    verifier = make_verifier(TrustedClient(issuer=ISSUER, jwks_url=f"http://127.0.0.1:{port}/jwks"))
    started = time.monotonic()
    assert reason(verifier, mint()) == "unknown_kid"
    assert time.monotonic() - started < 3


def test_token_never_appears_in_logs_or_errors(
    make_verifier: Callable[..., JwtVerifier],
    server: JwksServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    verifier = make_verifier(TrustedClient(issuer=ISSUER, jwks_url=server.url("/500")))
    tokens = [mint(), mint(claims(iss="https://evil.example.org")), mint(typ="JOSE")]
    reasons = {reason(verifier, t) for t in tokens}
    assert reasons == {"unknown_kid", "unknown_issuer", "bad_typ"}
    assert "key set fetch" in caplog.text  # the outage is logged ...
    for token in tokens:
        assert token not in caplog.text  # ... but never a token
        assert token.split(".")[2] not in caplog.text


# --- T18: positives --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg", "kid"), [(EC_KEY, "ES384", "ec-1"), (RSA_KEY, "RS384", "rsa-1")]
)
def test_es384_and_rs384_are_accepted(
    make_verifier: Callable[..., JwtVerifier], key: Any, alg: str, kid: str
) -> None:
    result = make_verifier().verify(mint(key=key, alg=alg, kid=kid), SERVICE_URL)
    assert isinstance(result, VerifiedClient)
    assert (result.issuer, result.subject, result.tenant) == (ISSUER, None, None)


def test_epic_style_token_is_accepted(make_verifier: Callable[..., JwtVerifier]) -> None:
    iss = "https://fhir.hospital.example/api/FHIR/R4"
    client = TrustedClient(issuer=iss, jwks={"keys": [public_jwk(RSA_KEY, "epic-530013")]})
    iat = int(START)
    payload = claims(iss=iss, sub="d45049c3-3441-40ef-ab4d-b9cd86a17225", nbf=iat - 300)
    payload["exp"] = iat + 900
    result = make_verifier(client).verify(
        mint(payload, key=RSA_KEY, alg="RS384", kid="epic-530013"), SERVICE_URL
    )
    assert result.subject == "d45049c3-3441-40ef-ab4d-b9cd86a17225"
    assert result.client.issuer == iss


def test_sandbox_style_token_is_accepted(
    make_verifier: Callable[..., JwtVerifier], server: JwksServer
) -> None:
    kid = str(uuid.uuid4())
    server.jwks = {"keys": [public_jwk(EC_KEY, kid)]}
    iss = "https://sandbox.cds-hooks.org"
    client = TrustedClient(issuer=iss, jku_allowlist=[server.url("/sandbox/jwks")])
    token = mint(
        claims(iss=iss, aud=DISCOVERY_URL, exp=int(START) + 300),
        kid=kid,
        jku=server.url("/sandbox/jwks"),
    )
    assert make_verifier(client).verify(token, DISCOVERY_URL).issuer == iss
    assert server.hits == Counter({"/sandbox/jwks": 1})


def test_inferno_style_token_is_accepted(make_verifier: Callable[..., JwtVerifier]) -> None:
    jti = secrets.token_hex(32)
    token = mint(claims(jti=jti, exp=int(START) + 300), key=RSA_KEY, alg="RS384", kid="rsa-1")
    result = make_verifier().verify(token, SERVICE_URL)
    assert len(jti) == 64
    assert result.jti == jti


# --- bearer_token -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer  abc.def.ghi ", "abc.def.ghi")],
)
def test_bearer_token_parses(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected


@pytest.mark.parametrize(
    "header", ["Basic dXNlcjpwYXNz", "", "Bearer", "Bearer   ", "Token abc", "Bearer a b", "abc"]
)
def test_bearer_token_rejects_other_schemes(header: str) -> None:
    with pytest.raises(AuthError) as info:
        bearer_token(header)
    assert info.value.message == "malformed_authorization"
    assert info.value.status_code == 401


# --- replay cache -----------------------------------------------------------------------------


def test_replay_cache_forgets_after_expiry(clock: Clock) -> None:
    cache = InMemoryReplayCache(clock=clock, prune_every=10)
    assert cache.claim(ISSUER, "j1", START + 60)
    assert not cache.claim(ISSUER, "j1", START + 60)
    assert cache.claim("https://other.example.org", "j1", START + 60)  # scoped per issuer
    clock.now += 61
    assert cache.claim(ISSUER, "j1", clock.now + 60)
    cache.claim(ISSUER, "j2", clock.now + 1)
    clock.now += 120
    cache.claim(ISSUER, "j3", clock.now + 60)
    assert len(cache) == 1  # expired entries pruned


def test_replay_cache_is_atomic_under_threads() -> None:
    cache, results = InMemoryReplayCache(), []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        results.append(cache.claim(ISSUER, "same", time.time() + 60))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 15 + [True]


# --- trusted clients file ---------------------------------------------------------------------


def test_load_trusted_clients_reads_the_documented_shape(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text(
        "clients:\n"
        "  - issuer: https://ehr.example.org\n"
        f"    jwks: {json.dumps(SANDBOX_JWKS)}\n"
        "    # jwks_url: https://ehr.example.org/.well-known/jwks.json\n"
        "    jku_allowlist: []\n"
        "    fhir_servers: [https://ehr.example.org/fhir]\n"
        "  - issuer: https://fhir.hospital.example/api/FHIR/R4\n"
        "    jwks_url: https://fhir.hospital.example/api/epic/2019/Security/Open/PublicKeys/1\n"
        "    algorithms: [RS384]\n"
        "    audience_aliases: [msht-child]\n"
        "    tenant_allowlist: [hospital-a]\n",
        encoding="utf-8",
    )
    loaded = load_trusted_clients(path)
    first, second = loaded.clients
    assert first.issuer == ISSUER
    assert first.jwks == SANDBOX_JWKS
    assert first.fhir_servers == ["https://ehr.example.org/fhir"]
    assert first.algorithms == ["ES384", "RS384"]
    assert first.jwks_url is None
    assert second.algorithms == ["RS384"]
    assert second.tenant_allowlist == ["hospital-a"]
    assert second.audience_aliases == ["msht-child"]


def one_client(body: str) -> str:
    return f"clients:\n  - issuer: {ISSUER}\n" + body


BAD_FILES = {
    "yaml": ("clients: [\n", "not valid YAML"),
    "list": ("- issuer: x\n", "expected a mapping"),
    "empty": ("", "expected a mapping"),
    "extra": ("clients: []\nextra: 1\n", "extra"),
    "field": (one_client("    jwks_uri: https://x/j\n"), "jwks_uri"),
    "hs256": (one_client("    jwks_url: https://x/j\n    algorithms: [HS256]\n"), "HS256"),
    "none": (one_client("    jwks_url: https://x/j\n    algorithms: [none]\n"), "none"),
    "no_algs": (one_client("    jwks_url: https://x/j\n    algorithms: []\n"), "algorithms"),
    "no_keys": (one_client("    fhir_servers: []\n"), "key source"),
    "http": (one_client("    jwks_url: http://ehr.example.org/j\n"), "https"),
    "jku_http": (one_client("    jku_allowlist: [http://a.example/j]\n"), "https"),
    "dupe": (
        f"clients:\n  - {{issuer: {ISSUER}, jwks_url: https://x/j}}\n"
        f"  - {{issuer: {ISSUER}, jwks_url: https://y/j}}\n",
        "more than once",
    ),
    "private": (one_client("    jwks: {keys: [{kty: EC, kid: k, d: secret}]}\n"), "private"),
    "jwks_shape": (one_client("    jwks: {kid: k}\n"), "keys"),
    "no_kid": (one_client("    jwks: {keys: [{kty: EC, crv: P-384}]}\n"), "kid"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_load_trusted_clients_reports_file_and_problem(tmp_path: Path, name: str) -> None:
    text, hint = BAD_FILES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LibraryError) as info:
        load_trusted_clients(path)
    assert str(path) in str(info.value)
    assert hint in str(info.value)
    assert "secret" not in str(info.value)


def test_load_trusted_clients_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(LibraryError, match="cannot read") as info:
        load_trusted_clients(path)
    assert str(path) in str(info.value)
