"""Trust in CDS clients: verify the JWT each hook call carries (checklist K, items 75-85).

Every failure raises `AuthError(reason)` with a short machine reason (`unknown_issuer`,
`bad_signature`, `replayed_jti`, ...). The HTTP layer turns all of them into one generic 401, so
callers learn nothing; the reason goes to metrics only. The raw token is never logged or echoed.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

import httpx
import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from msht_cds.config import is_loopback_host
from msht_cds.errors import AuthError, LibraryError

ASYMMETRIC_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
"""The spec forbids `none` and HMAC (SHALL NOT), so nothing else is ever accepted."""
MAX_TOKEN_CHARS = 16_384
MAX_JWKS_BYTES = 256 * 1024
FETCH_TIMEOUT_SECONDS = 2.0
MAX_JTI_CHARS = 256
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

log = logging.getLogger(__name__)


def _check_fetch_url(url: str) -> str:
    """Key sets travel over https only; plain http is allowed to loopback (tests, sidecars)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if (parts.scheme == "https" and host) or (parts.scheme == "http" and is_loopback_host(host)):
        return url
    raise ValueError(f"key set URL must be https (http only to loopback): {url}")


def _index_jwks(data: Any) -> dict[str, dict[str, Any]]:
    """Map kid -> JWK. Keys without a kid are unusable (kid is REQUIRED); first kid wins."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("a JWK Set must be an object with a 'keys' list")
    index: dict[str, dict[str, Any]] = {}
    for key in data["keys"]:
        if isinstance(key, dict) and isinstance(key.get("kid"), str) and key.get("kty") != "oct":
            index.setdefault(key["kid"], key)
    return index


class TrustedClient(BaseModel):
    """One CDS client (EHR) we accept calls from, configured out of band by the operator."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(min_length=1)
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    jku_allowlist: list[str] = []
    fhir_servers: list[str] = []
    algorithms: list[str] = ["ES384", "RS384"]
    audience_aliases: list[str] = []
    """Extra accepted `aud` values: Epic's aud is typed in by hand at each health system."""
    tenant_allowlist: list[str] = []

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = sorted(set(value) - ASYMMETRIC_ALGORITHMS)
        if bad or not value:
            allowed = ", ".join(sorted(ASYMMETRIC_ALGORITHMS))
            raise ValueError(f"algorithms {bad or '[]'} not allowed; use some of: {allowed}")
        return value

    @field_validator("jwks_url", "jku_allowlist")
    @classmethod
    def _https_or_loopback(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            return [_check_fetch_url(u) for u in value]
        return None if value is None else _check_fetch_url(value)

    @field_validator("jwks")
    @classmethod
    def _public_jwks(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        if not _index_jwks(value):
            raise ValueError("jwks has no usable public key with a 'kid'")
        for key in value["keys"]:
            if isinstance(key, dict) and _PRIVATE_JWK_MEMBERS & key.keys():
                raise ValueError("jwks contains private or symmetric key material; remove it")
        return value

    @model_validator(mode="after")
    def _has_key_source(self) -> Self:
        if self.jwks is None and self.jwks_url is None and not self.jku_allowlist:
            raise ValueError("give at least one key source: jwks, jwks_url or jku_allowlist")
        return self


class TrustedClients(BaseModel):
    """The `clients` file: every issuer we trust, each listed once."""

    model_config = ConfigDict(extra="forbid")

    clients: list[TrustedClient]

    @model_validator(mode="after")
    def _unique_issuers(self) -> Self:
        issuers = [c.issuer for c in self.clients]
        dupes = sorted({i for i in issuers if issuers.count(i) > 1})
        if dupes:
            raise ValueError(f"issuer listed more than once: {', '.join(dupes)}")
        return self


def load_trusted_clients(path: Path) -> TrustedClients:
    """Read the trusted-clients YAML; errors name the file and what is wrong in it."""
    try:
        data = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LibraryError(f"{path}: cannot read trusted clients file: {exc}") from exc
    except YAMLError as exc:
        raise LibraryError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise LibraryError(f"{path}: expected a mapping with a 'clients' list")
    try:
        return TrustedClients.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise LibraryError(f"{path}: invalid trusted clients: {problems}") from exc


class ReplayCache(Protocol):
    """Seen-`jti` store (BP §JWT step 6). Must be shared across workers in production."""

    def claim(self, issuer: str, jti: str, expires_at: float) -> bool:
        """Atomically record (issuer, jti); False if already recorded and not yet expired."""
        ...


class InMemoryReplayCache:
    """Single-process replay store for tests and one-worker deployments; prunes as it goes."""

    def __init__(self, clock: Callable[[], float] = time.time, prune_every: float = 60.0) -> None:
        self._clock = clock
        self._prune_every = prune_every
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def claim(self, issuer: str, jti: str, expires_at: float) -> bool:
        now = self._clock()
        with self._lock:
            if now >= self._next_prune:
                self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
                self._next_prune = now + self._prune_every
            previous = self._seen.get((issuer, jti))
            if previous is not None and previous > now:
                return False
            self._seen[(issuer, jti)] = expires_at
            return True

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True)
class VerifiedClient:
    """Who called, after every check passed. Safe to log (never holds the token)."""

    issuer: str
    client: TrustedClient
    jti: str
    subject: str | None
    tenant: str | None


@dataclass
class _KeySet:
    lock: threading.Lock = field(default_factory=threading.Lock)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched_at: float = -math.inf
    attempted_at: float = -math.inf


MAX_TIME_CLAIM = 2**53
"""Larger `exp`, `iat` or `nbf` values are not times (and overflow a float)."""


def _numeric(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError("invalid_claims")
    if isinstance(value, int) and not -MAX_TIME_CLAIM < value < MAX_TIME_CLAIM:
        raise AuthError("invalid_claims")
    if not math.isfinite(value):
        raise AuthError("invalid_claims")
    return float(value)


class JwtVerifier:
    """Verifies CDS client JWTs against the trusted-clients configuration.

    Remote key sets (jwks_url or an allowlisted jku) are cached per URL for `cache_seconds`.
    An unknown kid triggers one refresh (key rotation), at most once per `min_refresh_seconds`
    per URL, so forged kids cannot turn us into a request amplifier.
    """

    def __init__(
        self,
        clients: TrustedClients,
        replay_cache: ReplayCache,
        leeway_seconds: int = 60,
        http_client: httpx.Client | None = None,
        max_lifetime_seconds: int = 3600,
        *,
        clock: Callable[[], float] = time.time,
        min_refresh_seconds: float = 30.0,
        cache_seconds: float = 3600.0,
    ) -> None:
        self._clients = {c.issuer: c for c in clients.clients}
        self._inline = {c.issuer: _index_jwks(c.jwks) for c in clients.clients if c.jwks}
        self._replay = replay_cache
        self._leeway = leeway_seconds
        self._max_lifetime = max_lifetime_seconds
        self._clock = clock
        self._min_refresh = min_refresh_seconds
        self._cache_seconds = cache_seconds
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=FETCH_TIMEOUT_SECONDS)
        self._remote: dict[str, _KeySet] = {}
        self._lock = threading.Lock()
        self._jws = jwt.PyJWS(algorithms=sorted(ASYMMETRIC_ALGORITHMS))

    def close(self) -> None:
        """Close the HTTP client if we created it (call at application shutdown)."""
        if self._owns_http:
            self._http.close()

    def verify(self, token: str, expected_audience: str) -> VerifiedClient:
        """Check header, issuer, key, signature and claims, then claim the jti; else AuthError."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise AuthError("malformed_token")
        try:
            parts = self._jws.decode_complete(token, options={"verify_signature": False})
            claims = json.loads(parts["payload"])
        except (jwt.PyJWTError, ValueError, RecursionError):
            raise AuthError("malformed_token") from None
        header: dict[str, Any] = parts["header"]
        if not isinstance(claims, dict):
            raise AuthError("malformed_token")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
            raise AuthError("alg_not_allowed")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.upper() != "JWT":
            raise AuthError("bad_typ")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("missing_kid")
        if "crit" in header or "b64" in header:
            raise AuthError("unsupported_header")
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise AuthError("missing_iss")
        client = self._clients.get(issuer)
        if client is None:
            raise AuthError("unknown_issuer")
        if alg not in client.algorithms:
            raise AuthError("alg_not_allowed")
        jku = header.get("jku")
        if jku is not None and (not isinstance(jku, str) or jku not in client.jku_allowlist):
            raise AuthError("jku_not_allowed")  # checked before any fetch: no SSRF via jku
        key = self._key_for(client, kid, jku, alg)
        try:
            self._jws.decode_complete(
                token, key, algorithms=[alg], options={"enforce_minimum_key_length": True}
            )
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature") from None
        except jwt.PyJWTError:
            raise AuthError("bad_key") from None
        return self._check_claims(client, claims, expected_audience)

    def _key_for(self, client: TrustedClient, kid: str, jku: str | None, alg: str) -> jwt.PyJWK:
        """Inline keys first, then the token's (allowlisted) jku, else the configured jwks_url."""
        jwk_data = self._inline.get(client.issuer, {}).get(kid)
        url = jku or client.jwks_url
        if jwk_data is None and url is not None:
            jwk_data = self._remote_key(url, kid)
        if jwk_data is None:
            raise AuthError("unknown_kid")
        if jwk_data.get("alg", alg) != alg or jwk_data.get("use", "sig") != "sig":
            raise AuthError("key_alg_mismatch")
        try:
            return jwt.PyJWK(jwk_data, algorithm=alg)
        except (jwt.PyJWTError, KeyError, TypeError, ValueError):
            raise AuthError("key_alg_mismatch") from None

    def _remote_key(self, url: str, kid: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._remote.setdefault(url, _KeySet())
        with entry.lock:  # per URL: one slow EHR key endpoint does not stall the others
            now = self._clock()
            fresh = now - entry.fetched_at < self._cache_seconds
            wanted = not fresh or kid not in entry.keys
            if wanted and now - entry.attempted_at >= self._min_refresh:
                entry.attempted_at = now
                try:
                    entry.keys = self._download(url)
                    entry.fetched_at = now
                except (httpx.HTTPError, ValueError, RecursionError) as exc:
                    # Keep any stale keys: an EHR's key endpoint blip must not stop all calls.
                    log.warning("key set fetch from %s failed: %s", url, type(exc).__name__)
            return entry.keys.get(kid)

    def _download(self, url: str) -> dict[str, dict[str, Any]]:
        """GET a JWK Set: https (or loopback), no redirects, at most 256 KiB and ~2 s in all."""
        _check_fetch_url(url)
        deadline = time.monotonic() + FETCH_TIMEOUT_SECONDS
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        with self._http.stream(
            "GET", url, headers=headers, timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False
        ) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES or time.monotonic() > deadline:
                    raise ValueError("key set too large or too slow")
        return _index_jwks(json.loads(body))

    def _check_claims(
        self, client: TrustedClient, claims: dict[str, Any], expected_audience: str
    ) -> VerifiedClient:
        for name in ("aud", "exp", "iat", "jti"):
            if name not in claims:
                raise AuthError(f"missing_{name}")
        now, leeway = self._clock(), self._leeway
        exp, iat = _numeric(claims, "exp"), _numeric(claims, "iat")
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise AuthError("invalid_claims")
        if not {expected_audience, *client.audience_aliases}.intersection(audiences):
            raise AuthError("wrong_audience")
        if now > exp + leeway:
            raise AuthError("expired")
        if "nbf" in claims and _numeric(claims, "nbf") > now + leeway:
            raise AuthError("not_yet_valid")
        if iat > now + leeway:
            raise AuthError("iat_in_future")
        if exp <= iat or exp - iat > self._max_lifetime:
            raise AuthError("bad_lifetime")
        jti, subject, tenant = claims["jti"], claims.get("sub"), claims.get("tenant")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise AuthError("invalid_claims")
        if not isinstance(subject, str | None) or not isinstance(tenant, str | None):
            raise AuthError("invalid_claims")
        if client.tenant_allowlist and tenant not in client.tenant_allowlist:
            raise AuthError("unknown_tenant")
        if not self._replay.claim(client.issuer, jti, exp + leeway):
            raise AuthError("replayed_jti")
        return VerifiedClient(client.issuer, client, jti, subject, tenant)


def bearer_token(authorization_header: str | None) -> str | None:
    """The token from `Authorization: Bearer <token>`; None if absent, AuthError if malformed."""
    if authorization_header is None:
        return None
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthError("malformed_authorization")
    return token
