"""Authentication over real HTTP (checklist K 75-85): the app under uvicorn on 127.0.0.1 with
MSHT_CDS_AUTH=on, a trusted-clients file written here, and keys generated here (EC P-384 for
ES384, RSA for RS384). PUBLIC_BASE_URL is the server's own URL, so `aud` is exact.

Also: authentication cannot be switched off on a non-loopback address.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from .servers import (
    SERVICE,
    LiveApp,
    Signer,
    clean_env,
    console_script,
    free_port,
    full_request,
    library_env,
    serve_app,
    settings_for,
    templates_of,
    write_clients,
)

ES_ISSUER = "https://ehr-es.example.test"
RS_ISSUER = "https://ehr-rs.example.test"


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {
        "ES384": Signer.generate(ES_ISSUER, "ES384"),
        "RS384": Signer.generate(RS_ISSUER, "RS384"),
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, signers: dict[str, Signer]) -> Iterator[LiveApp]:
    tmp = tmp_path_factory.mktemp("auth-http")
    clients = write_clients(tmp / "clients.yaml", [s.client_entry() for s in signers.values()])
    with serve_app(lambda url: settings_for(tmp, url, auth="on", clients_file=clients)) as app:
        yield app


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


def call(
    http: httpx.Client,
    live: LiveApp,
    token: str | None,
    *,
    path: str = "",
    authorization: str | None = None,
) -> httpx.Response:
    url = live.service_url(SERVICE) + path
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if authorization is not None:
        headers["Authorization"] = authorization
    if path == "/feedback":
        body: dict[str, Any] = {
            "feedback": [
                {
                    "card": str(uuid.uuid4()),
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-11-29T10:00:00Z",
                }
            ]
        }
    else:
        body = full_request(templates_of(live.runtime))
    return http.post(url, json=body, headers=headers)


def assert_generic_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers.get("www-authenticate", "").startswith("Bearer")
    assert response.json() == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "login", "diagnostics": "Authentication failed."}],
    }


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_valid_tokens_are_accepted(
    live: LiveApp, http: httpx.Client, signers: dict[str, Signer], alg: str
) -> None:
    token = signers[alg].mint(live.service_url(SERVICE))
    response = call(http, live, token)
    assert response.status_code == 200, response.text
    assert response.json()["cards"]


def test_aud_as_an_array_containing_the_service_url_is_accepted(
    live: LiveApp, http: httpx.Client, signers: dict[str, Signer]
) -> None:
    aud = ["https://someone-else.example.test", live.service_url(SERVICE)]
    assert call(http, live, signers["ES384"].mint(aud)).status_code == 200


def test_feedback_with_its_own_aud_is_accepted(
    live: LiveApp, http: httpx.Client, signers: dict[str, Signer]
) -> None:
    token = signers["RS384"].mint(live.service_url(SERVICE) + "/feedback")
    response = call(http, live, token, path="/feedback")
    assert response.status_code == 200, response.text
    assert response.json() == {}


def test_discovery_is_anonymous(live: LiveApp, http: httpx.Client) -> None:
    response = http.get(f"{live.url}/cds-services")
    assert response.status_code == 200
    assert {s["id"] for s in response.json()["services"]} >= {SERVICE}


def test_discovery_with_a_valid_token_for_discovery_is_accepted(
    live: LiveApp, http: httpx.Client, signers: dict[str, Signer]
) -> None:
    token = signers["ES384"].mint(f"{live.url}/cds-services")
    response = http.get(f"{live.url}/cds-services", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


# --------------------------------------------------------------------------- refused


def _hs384_with_public_key(signer: Signer, aud: str) -> str:
    """Algorithm confusion: HMAC "signed" with the client's public key bytes."""
    public = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "HS384", "typ": "JWT", "kid": signer.kid}).encode())
    payload = b64(
        json.dumps(
            {
                "iss": signer.issuer,
                "aud": aud,
                "iat": now,
                "exp": now + 300,
                "jti": str(uuid.uuid4()),
            }
        ).encode()
    )
    signature = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha384).digest()
    return f"{header}.{payload}.{b64(signature)}"


def _alg_none(signer: Signer, aud: str) -> str:
    now = int(time.time())
    return jwt.encode(
        {"iss": signer.issuer, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())},
        "",
        algorithm="none",
        headers={"kid": signer.kid, "typ": "JWT"},
    )


def _tampered(signer: Signer, aud: str) -> str:
    header, payload, signature = signer.mint(aud).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


BAD_TOKENS: dict[str, Callable[[Signer, LiveApp], str]] = {
    "aud-is-discovery-url": lambda s, live: s.mint(f"{live.url}/cds-services"),
    "aud-is-another-service": lambda s, live: s.mint(live.service_url("msht-patient-view")),
    "aud-has-trailing-slash": lambda s, live: s.mint(live.service_url(SERVICE) + "/"),
    "aud-is-feedback-url": lambda s, live: s.mint(live.service_url(SERVICE) + "/feedback"),
    "aud-uses-another-host": lambda s, live: s.mint(
        live.service_url(SERVICE).replace("127.0.0.1", "localhost")
    ),
    "expired": lambda s, live: s.mint(live.service_url(SERVICE), lifetime=-3600),
    "issued-in-the-future": lambda s, live: s.mint(
        live.service_url(SERVICE), iat=int(time.time()) + 3600, lifetime=7200
    ),
    "unknown-issuer": lambda s, live: Signer("https://evil.example.test", s.alg, s.key, s.kid).mint(
        live.service_url(SERVICE)
    ),
    "unknown-kid": lambda s, live: s.mint(live.service_url(SERVICE), headers={"kid": "nope"}),
    "jku-not-allowlisted": lambda s, live: s.mint(
        live.service_url(SERVICE), headers={"jku": "http://127.0.0.1:9/jwks.json"}
    ),
    "typ-not-jwt": lambda s, live: s.mint(live.service_url(SERVICE), headers={"typ": "at+jwt"}),
    "wrong-key": lambda s, live: Signer(
        s.issuer, s.alg, Signer.generate(s.issuer, s.alg).key, s.kid
    ).mint(live.service_url(SERVICE)),
    "alg-none": lambda s, live: _alg_none(s, live.service_url(SERVICE)),
    "hs384-with-public-key": lambda s, live: _hs384_with_public_key(s, live.service_url(SERVICE)),
    "tampered-payload": lambda s, live: _tampered(s, live.service_url(SERVICE)),
    "exp-beyond-any-time": lambda s, live: s.mint(live.service_url(SERVICE), exp=10**400),
    "iat-before-any-time": lambda s, live: s.mint(live.service_url(SERVICE), iat=-(10**400)),
    "nbf-beyond-any-time": lambda s, live: s.mint(live.service_url(SERVICE), nbf=10**400),
    "garbage": lambda s, live: "not.a.jwt",
    "huge": lambda s, live: "a" * 20_000,
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_tokens_get_one_generic_401(
    live: LiveApp, http: httpx.Client, signers: dict[str, Signer], case: str
) -> None:
    token = BAD_TOKENS[case](signers["ES384"], live)
    assert_generic_401(call(http, live, token))


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "bearer", "Token abc", ""],
)
def test_missing_or_malformed_authorization_is_401(
    live: LiveApp, http: httpx.Client, authorization: str | None
) -> None:
    assert_generic_401(call(http, live, None, authorization=authorization))
    assert_generic_401(call(http, live, None, authorization=authorization, path="/feedback"))


def test_service_token_on_feedback_is_401(
    live: LiveApp, http: httpx.Client, signers: dict[str, Signer]
) -> None:
    token = signers["ES384"].mint(live.service_url(SERVICE))
    assert_generic_401(call(http, live, token, path="/feedback"))


def test_replayed_jti_is_401(live: LiveApp, http: httpx.Client, signers: dict[str, Signer]) -> None:
    token = signers["RS384"].mint(live.service_url(SERVICE))
    assert call(http, live, token).status_code == 200
    assert_generic_401(call(http, live, token))
    # Same jti in a freshly signed token is a replay too.
    jti = str(uuid.uuid4())
    first = signers["ES384"].mint(live.service_url(SERVICE), jti=jti)
    assert call(http, live, first).status_code == 200
    assert_generic_401(call(http, live, signers["ES384"].mint(live.service_url(SERVICE), jti=jti)))


def test_a_token_is_single_use_even_across_endpoints(
    live: LiveApp, http: httpx.Client, signers: dict[str, Signer]
) -> None:
    aud = [live.service_url(SERVICE), live.service_url(SERVICE) + "/feedback"]
    token = signers["ES384"].mint(aud)
    assert call(http, live, token, path="/feedback").status_code == 200
    assert_generic_401(call(http, live, token))


def test_discovery_with_a_bad_token_is_401(
    live: LiveApp, http: httpx.Client, signers: dict[str, Signer]
) -> None:
    for token in ("garbage", signers["ES384"].mint(live.service_url(SERVICE))):
        response = http.get(
            f"{live.url}/cds-services", headers={"Authorization": f"Bearer {token}"}
        )
        assert_generic_401(response)


def test_all_401_bodies_and_headers_are_identical(
    live: LiveApp, http: httpx.Client, signers: dict[str, Signer]
) -> None:
    responses = [call(http, live, None)]
    responses += [call(http, live, BAD_TOKENS[c](signers["RS384"], live)) for c in BAD_TOKENS]
    responses.append(http.get(f"{live.url}/cds-services", headers={"Authorization": "Bearer x"}))
    assert {r.status_code for r in responses} == {401}
    assert len({r.content for r in responses}) == 1
    assert len({r.headers["www-authenticate"] for r in responses}) == 1
    assert len({r.headers["content-type"] for r in responses}) == 1


def test_rejections_are_counted_by_reason_without_the_token(
    live: LiveApp, http: httpx.Client, signers: dict[str, Signer]
) -> None:
    token = signers["ES384"].mint(live.service_url(SERVICE), lifetime=-3600)
    call(http, live, token)
    metrics = http.get(f"{live.url}/metrics").text
    assert 'msht_cds_auth_failures_total{reason="expired"}' in metrics
    assert token not in metrics


def test_no_request_reached_the_database_as_a_card_when_refused(
    live: LiveApp, http: httpx.Client
) -> None:
    """A refused call is audited (status 401) but computes nothing."""
    call(http, live, "garbage")
    import sqlalchemy as sa

    from msht_cds.storage import calls

    with live.runtime.storage.transaction() as connection:
        rows = connection.execute(
            sa.select(calls.c.status_code, calls.c.card_uuids, calls.c.patient_key).where(
                calls.c.status_code == 401
            )
        ).all()
    assert rows
    assert all(r.card_uuids == [] and r.patient_key is None for r in rows)


# --------------------------------------------------------------------------- auth off


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_auth_off_is_refused_on_a_non_loopback_host(tmp_path: Path, host: str) -> None:
    env = clean_env(
        MSHT_CDS_AUTH="off",
        MSHT_CDS_DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}",
        **library_env(),
    )
    result = subprocess.run(
        [*console_script(), "serve", "--host", host, "--port", str(free_port())],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    message = result.stderr.decode()
    assert "refusing to start" in message
    assert "MSHT_CDS_AUTH=off" in message
    assert "loopback" in message


def test_auth_off_without_clients_on_loopback_still_warns(tmp_path: Path) -> None:
    """Starting with auth off on loopback is allowed but says so loudly (stderr)."""
    from .servers import ServeProcess

    with ServeProcess(
        tmp_path,
        {
            "MSHT_CDS_AUTH": "off",
            "MSHT_CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        },
    ) as server:
        assert httpx.get(f"{server.url}/livez", timeout=30).status_code == 200
    logs = server.logs()
    assert "authentication is OFF" in logs
    assert "AUTHENTICATION_DISABLED" in logs


def test_auth_off_refuses_non_loopback_peers(tmp_path: Path) -> None:
    from msht_cds.app import create_app

    app = create_app(settings_for(tmp_path, "http://testserver"))
    body = full_request(templates_of(app.state.runtime))

    async def run() -> list[int]:
        statuses = []
        async with app.router.lifespan_context(app):
            for peer in ("127.0.0.1", "192.0.2.10"):
                transport = httpx.ASGITransport(app=app, client=(peer, 50000))
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://testserver"
                ) as client:
                    response = await client.post(f"/cds-services/{SERVICE}", json=body)
                    statuses.append(response.status_code)
        return statuses

    assert asyncio.run(run()) == [200, 401]
