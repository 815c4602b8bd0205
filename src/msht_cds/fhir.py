"""The EHR's FHIR server: a thin, guarded reader, and the R4 model check of what we create.

Only base URLs allowed for the calling client are ever contacted (no server-side request
forgery): no redirects, no other hosts, https outside loopback, no link-local, metadata or
private addresses unless the operator allowed private ones, timeouts, and caps on bytes
(after decompression) and pages. Addresses are checked twice: before any request, and again
when each connection is opened, so a name that re-resolves to another address (DNS rebinding)
is refused. The access token goes only to that server; cookies are never kept. This is the
only module that imports fhir.resources.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import httpcore
import httpx
import orjson

from .cdshooks import HookRequest
from .config import is_loopback_host
from .errors import FhirServerError
from .prefetch import PrefetchState, fill

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
"""`(host, port) -> addresses`; the default asks the operating system (getaddrinfo)."""

CLOUD_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, Azure, GCP, OpenStack, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IPv6
    )
)
"""Refused even when private networks are allowed: instance credentials live there."""
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)


def _normalise(url: str) -> str:
    return url.rstrip("/").lower()


def is_allowed_base(base: str, allowed: Sequence[str]) -> bool:
    """Exact base match or a path-prefix match on a `/` boundary. A path with a dot segment
    never matches: the HTTP client resolves `..` after this check, which would leave the
    prefix (and take the bearer token with it)."""
    if _has_dot_segment(base):
        return False
    wanted = _normalise(base)
    for entry in allowed:
        prefix = _normalise(entry)
        if wanted == prefix or wanted.startswith(prefix + "/"):
            return True
    return False


def _has_dot_segment(url: str) -> bool:
    """`.` or `..` as a path segment, also percent-encoded or after a backslash."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return True
    segments = unquote(path).replace("\\", "/").split("/")
    return any(segment in (".", "..") for segment in segments)


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_problem(address: IPAddress, allow_private: bool) -> str | None:
    """Why a FHIR server at `address` must not be contacted, or None if it may be.

    Loopback is refused here: only a base whose host is literally loopback (or `localhost`)
    may reach this machine, never a name that happens to resolve to it.
    """
    address = _embedded_ipv4(address) or address
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(address.compressed.split("%")[0])
    if address in CLOUD_METADATA:
        return "a cloud metadata address"
    if (
        address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_loopback
        or address.is_reserved
    ):
        return "a link-local, loopback, multicast or reserved address"
    if address.is_global:
        return None
    if allow_private and (address.is_private or address in _SHARED):
        return None
    return "a private or non-public address"


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Resolve with the operating system, as the connection itself would."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise FhirServerError("fhirServer host does not resolve") from exc
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    if not found:
        raise FhirServerError("fhirServer host does not resolve")
    return found


@dataclass(frozen=True)
class FhirLimits:
    connect_timeout: float = 2.0
    read_timeout: float = 3.0
    max_pages: int = 10
    max_response_bytes: int = 16 * 1024 * 1024
    allow_private_networks: bool = False


class _NoCookies(DefaultCookiePolicy):
    """A FHIR server must not be able to plant state that later calls (other patients,
    other clients) would carry."""

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False


class _AddressGuard:
    """Decides which addresses a host may be reached at; shared by the pre-check and the
    connection-time check."""

    def __init__(self, limits: FhirLimits, resolver: Resolver) -> None:
        self._limits = limits
        self._resolver = resolver

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses we may connect to for `host`, or FhirServerError (sends nothing)."""
        host = host.strip("[]")
        literal = _literal_ip(host)
        if host.lower() == "localhost":
            return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
        if literal is not None and literal.is_loopback:
            return [literal]
        addresses = [literal] if literal is not None else await self._resolver(host, port)
        for address in addresses:
            problem = address_problem(address, self._limits.allow_private_networks)
            if problem is not None:
                raise FhirServerError(f"fhirServer resolves to {problem}")
        return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the guard vetted at connection time (no DNS
    rebinding between the check and the connect). TLS still verifies the host name."""

    def __init__(self, guard: _AddressGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await self._guard.addresses(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("resolving the FHIR server took too long") from exc
        error: Exception = httpcore.ConnectError("no address to connect to")
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for FHIR servers")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on the guarded network backend.

    Honours SSL_CERT_FILE / SSL_CERT_DIR (a hospital CA); ignores proxy variables, so the
    address checks always apply to the FHIR server itself.
    """

    def __init__(self, guard: _AddressGuard) -> None:
        super().__init__(trust_env=True)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=True),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(guard),
        )


def _decompressor(encoding: str) -> Any:
    """A bounded decoder for the response's Content-Encoding, None for identity."""
    value = encoding.strip().lower()
    if value in ("", "identity"):
        return None
    if value in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if value == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib or gzip wrapper
    raise FhirServerError("the FHIR server used an unsupported Content-Encoding")


class FhirReader:
    """Fetches the template queries a request's prefetch did not satisfy."""

    def __init__(
        self,
        limits: FhirLimits,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        resolver: Resolver | None = None,
    ) -> None:
        self.limits = limits
        self._guard = _AddressGuard(limits, resolver or system_resolver)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(limits.read_timeout, connect=limits.connect_timeout),
            follow_redirects=False,
            transport=transport if transport is not None else _GuardedTransport(self._guard),
            headers={"Accept": "application/fhir+json", "Accept-Encoding": "gzip"},
            cookies=CookieJar(policy=_NoCookies()),
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def check_base(self, base: str, allowed: Sequence[str]) -> None:
        """Refuse any base that is not allowed, not https (outside loopback) or resolves to an
        address class the operator has not allowed. Raises before any request is sent."""
        if not is_allowed_base(base, allowed):
            raise FhirServerError("fhirServer is not an allowed FHIR base for this client")
        if not all("!" <= char <= "~" for char in base):
            raise FhirServerError("fhirServer has spaces, control or non-ASCII characters")
        try:
            parts = urlsplit(base)
        except ValueError as exc:
            raise FhirServerError("fhirServer is not a valid URL") from exc
        if parts.username is not None or parts.password is not None:
            raise FhirServerError("fhirServer must not carry credentials")
        if parts.query or parts.fragment:
            raise FhirServerError("fhirServer must not have a query or fragment")
        host = parts.hostname or ""
        if not host:
            raise FhirServerError("fhirServer has no host")
        if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback_host(host)):
            raise FhirServerError("fhirServer must use https")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise FhirServerError("fhirServer has an invalid port") from exc
        await self._guard.addresses(host, port)

    async def fetch_missing(
        self,
        request: HookRequest,
        templates: dict[str, str],
        state: PrefetchState,
        allowed: Sequence[str],
    ) -> None:
        """Fill `state` with what prefetch lacked; raise FhirServerError (→ 412) otherwise."""
        if not (state.missing or state.next_pages):
            return
        if request.fhir_server is None:
            raise FhirServerError(
                "prefetch lacks "
                + ", ".join(sorted(state.missing or state.next_pages))
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
            if not _same_base(next_url, base):
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
                raw = await self._read_body(response)
        except httpx.TimeoutException as exc:
            raise FhirServerError("the FHIR server did not answer in time") from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise FhirServerError("the FHIR server could not be reached") from exc
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise FhirServerError("the FHIR server sent something that is not JSON") from exc
        if not isinstance(body, dict) or "resourceType" not in body:
            raise FhirServerError("the FHIR server sent something that is not a FHIR resource")
        return body

    async def _read_body(self, response: httpx.Response) -> bytes:
        """At most `max_response_bytes`, counted on the wire and again after decompression
        (so a small gzip bomb cannot expand in memory)."""
        cap = self.limits.max_response_bytes
        too_large = FhirServerError("the FHIR server's answer is too large")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise too_large
        decoder = _decompressor(response.headers.get("content-encoding", ""))
        body = bytearray()
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > cap:
                raise too_large
            if decoder is None:
                body += chunk
                continue
            data = chunk
            while data:
                try:
                    body += decoder.decompress(data, cap + 1 - len(body))
                except zlib.error as exc:
                    raise FhirServerError("the FHIR server sent a corrupt compressed body") from exc
                if len(body) > cap:
                    raise too_large
                data = decoder.unconsumed_tail
        if decoder is not None:
            try:
                body += decoder.flush()
            except zlib.error as exc:
                raise FhirServerError("the FHIR server sent a corrupt compressed body") from exc
        if len(body) > cap:
            raise too_large
        return bytes(body)


def _same_base(url: str, base: str) -> bool:
    """A paging link must stay under the request's fhirServer: same scheme, host, port and
    path prefix, and carry no credentials."""
    if not is_allowed_base(url, [base]):
        return False
    try:
        parts, root = urlsplit(url), urlsplit(base)
        return (
            parts.username is None
            and parts.password is None
            and parts.scheme == root.scheme
            and parts.hostname == root.hostname
            and parts.port == root.port
        )
    except ValueError:
        return False


def validate_r4(resource: dict[str, Any]) -> None:
    """Check a resource we are about to suggest against the R4(B) models (raises on error)."""
    from fhir.resources.R4B import get_fhir_model_class

    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
