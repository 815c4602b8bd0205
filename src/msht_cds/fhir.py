"""The EHR's FHIR server: a thin, guarded reader, and the R4 model check of what we create.

Only base URLs allowed for the calling client are ever contacted (no server-side request
forgery): no redirects, no other hosts, https outside loopback, no link-local or private
addresses unless the operator allowed them, timeouts, and caps on bytes and pages. The access
token goes only to that server. This is the only module that imports fhir.resources.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from .cdshooks import HookRequest
from .errors import FhirServerError
from .prefetch import PrefetchState, fill


def _normalise(url: str) -> str:
    return url.rstrip("/").lower()


def is_allowed_base(base: str, allowed: Sequence[str]) -> bool:
    """Exact base match or a path-prefix match on a `/` boundary."""
    wanted = _normalise(base)
    for entry in allowed:
        prefix = _normalise(entry)
        if wanted == prefix or wanted.startswith(prefix + "/"):
            return True
    return False


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True)
class FhirLimits:
    connect_timeout: float = 2.0
    read_timeout: float = 3.0
    max_pages: int = 10
    max_response_bytes: int = 16 * 1024 * 1024
    allow_private_networks: bool = False


class FhirReader:
    """Fetches the template queries a request's prefetch did not satisfy."""

    def __init__(self, limits: FhirLimits, transport: httpx.AsyncBaseTransport | None = None):
        self.limits = limits
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(limits.read_timeout, connect=limits.connect_timeout),
            follow_redirects=False,
            transport=transport,
            headers={"Accept": "application/fhir+json"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def check_base(self, base: str, allowed: Sequence[str]) -> None:
        """Refuse any base that is not allowed, not https (outside loopback) or resolves to an
        address class the operator has not allowed. Raises before any request is sent."""
        if not is_allowed_base(base, allowed):
            raise FhirServerError("fhirServer is not an allowed FHIR base for this client")
        parts = urlsplit(base)
        host = parts.hostname or ""
        literal = _literal_ip(host)
        loopback = host == "localhost" or (literal is not None and literal.is_loopback)
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise FhirServerError("fhirServer must use https")
        if loopback:
            return
        addresses = [literal] if literal else await self._resolve(host, parts.port)
        for address in addresses:
            if address.is_link_local or address.is_multicast or address.is_unspecified or (
                address.is_loopback
            ):
                raise FhirServerError("fhirServer resolves to a forbidden address")
            if address.is_private and not (self.limits.allow_private_networks or literal):
                raise FhirServerError("fhirServer resolves to a private address")

    @staticmethod
    async def _resolve(
        host: str, port: int | None
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port or 443)
        except (socket.gaierror, UnicodeError) as exc:
            raise FhirServerError("fhirServer host does not resolve") from exc
        return [ipaddress.ip_address(info[4][0]) for info in infos]

    async def fetch_missing(
        self,
        request: HookRequest,
        templates: dict[str, str],
        state: PrefetchState,
        allowed: Sequence[str],
    ) -> None:
        """Fill `state` with what prefetch lacked; raise FhirServerError (→ 412) otherwise."""
        keys = [k for k in state.missing] + list(state.next_pages)
        if not keys:
            return
        if request.fhir_server is None:
            raise FhirServerError(
                "prefetch lacks " + ", ".join(sorted(state.missing or state.next_pages))
                + " and no fhirServer was given"
            )
        auth = request.fhir_authorization
        if auth is not None:
            if auth.token_type.lower() != "bearer":
                raise FhirServerError("fhirAuthorization.token_type must be Bearer")
            if auth.patient is not None and auth.patient != request.patient_id:
                raise FhirServerError("fhirAuthorization.patient does not match context.patientId")
        await self.check_base(request.fhir_server, allowed)
        headers = {"Authorization": f"Bearer {auth.access_token}"} if auth else {}
        base = request.fhir_server
        for key in state.missing:
            url = f"{base}/{fill(templates[key], request)}"
            await self._read_all(url, base, headers, state)
        for url in state.next_pages.values():
            await self._read_all(url, base, headers, state)

    async def _read_all(
        self, url: str, base: str, headers: dict[str, str], state: PrefetchState
    ) -> None:
        pages = 0
        next_url: str | None = url
        while next_url is not None:
            if pages >= self.limits.max_pages:
                raise FhirServerError("the FHIR server returned more pages than allowed")
            if not is_allowed_base(next_url, [base]):
                raise FhirServerError("a paging link points outside the FHIR base")
            body = await self._get(next_url, headers)
            pages += 1
            if body is None:
                return
            outcomes = state.add(body)
            if body.get("resourceType") == "OperationOutcome" or (
                outcomes and body.get("resourceType") != "Bundle"
            ):
                raise FhirServerError("the FHIR server answered with an OperationOutcome")
            next_url = None
            for link in body.get("link") or ():
                if isinstance(link, dict) and link.get("relation") == "next":
                    next_url = link.get("url") if isinstance(link.get("url"), str) else None

    async def _get(self, url: str, headers: dict[str, str]) -> dict[str, Any] | None:
        try:
            async with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    raise FhirServerError(f"the FHIR server answered HTTP {response.status_code}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.limits.max_response_bytes:
                        raise FhirServerError("the FHIR server's answer is too large")
                    chunks.append(chunk)
        except httpx.TimeoutException as exc:
            raise FhirServerError("the FHIR server did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise FhirServerError("the FHIR server could not be reached") from exc
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise FhirServerError("the FHIR server sent something that is not JSON") from exc
        if not isinstance(body, dict) or "resourceType" not in body:
            raise FhirServerError("the FHIR server sent something that is not a FHIR resource")
        return body


def validate_r4(resource: dict[str, Any]) -> None:
    """Check a resource we are about to suggest against the R4(B) models (raises on error)."""
    from fhir.resources.R4B import get_fhir_model_class

    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
