"""HTTP endpoints: discovery, hook services, feedback, health, metrics, pathway pages.

Status codes: 200 success; 400 malformed JSON or fields (OperationOutcome); 401 bad or missing
JWT (one generic body); 404 unknown service; 405 wrong method; 412 data could not be obtained
(OperationOutcome); 408 the body did not arrive within the hook deadline; 413 body or record too
large. Never a 5xx for bad input.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from .auth import VerifiedClient, bearer_token
from .cards import referral_suggestion_uuid
from .cdshooks import Discovery, ServiceDescription, parse_feedback
from .config import is_loopback_host
from .errors import (
    AuthError,
    ClientClosedError,
    FhirServerError,
    PayloadTooLargeError,
    RequestError,
    RequestTimeoutError,
    operation_outcome,
)
from .hookcall import Answered, HookCall, decode_json
from .logs import get_logger
from .pages import render_pathway_page
from .runtime import Runtime
from .service import HOOK_BY_SERVICE, SERVICE_IDS, complete_prefetch
from .storage import CallRecord, FeedbackEntry

router = APIRouter()
log = get_logger("msht_cds.http")
JSON_MEDIA = "application/json; charset=utf-8"
_TITLES = {
    "patient-view": "Child exploitation indicators (patient view)",
    "encounter-start": "Child exploitation indicators at the start of a visit",
    "encounter-discharge": "Safeguarding check before discharge",
    "order-select": "Orders that may be exploitation indicators (selection)",
    "order-sign": "Orders that may be exploitation indicators (signing)",
}
_DESCRIPTIONS = {
    "patient-view": "Checks the child's record against the RCPCH-based indicator library of "
    "modern slavery and trafficking and returns calm guidance with the referral pathway.",
    "encounter-start": "As patient-view, at the start of an encounter, including who is "
    "accompanying the child.",
    "encounter-discharge": "Warns when a high safeguarding concern was identified and no "
    "referral has been recorded for this encounter.",
    "order-select": "Reacts when the selected order is itself an indicator (e.g. an STI test "
    "or emergency contraception for a child under 13).",
    "order-sign": "As order-select, when the orders are signed.",
}
USAGE = (
    "Send a JWT signed by a registered client (ES384/RS384). The prefetch templates are "
    "required: keys that are absent are fetched from fhirServer with fhirAuthorization when the "
    "server is registered for the client; otherwise the service answers 412. Cards carry "
    "extension 'msht-cds'. Feedback is used to quieten cards after 'already-referred'."
)


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def outcome_body(code: str, message: str) -> bytes:
    return orjson.dumps(operation_outcome(code, message))


def outcome(status: int, code: str, message: str) -> Response:
    return Response(outcome_body(code, message), status_code=status, media_type=JSON_MEDIA)


UNAUTHORIZED_BODY = outcome_body("login", "Authentication failed.")


def error_parts(error: RequestError) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers answering a rejected request; every 401 looks the same."""
    if isinstance(error, AuthError):
        return 401, UNAUTHORIZED_BODY, {"WWW-Authenticate": "Bearer"}
    return error.status_code, outcome_body(error.issue_code, error.message), {}


def error_response(error: RequestError) -> Response:
    status, body, headers = error_parts(error)
    return Response(body, status_code=status, headers=headers, media_type=JSON_MEDIA)


async def read_body(request: Request, limit: int, deadline: float | None = None) -> bytearray:
    """The body in one growing buffer (half the peak of joining chunks: prefetch is large).
    A body still arriving after `deadline` seconds gets 408: its answer would come too late."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the body is larger than {limit} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(deadline):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise PayloadTooLargeError(f"the body is larger than {limit} bytes")
                body += chunk
    except TimeoutError:
        raise RequestTimeoutError(f"the body did not arrive within {deadline} s") from None
    except ClientDisconnect:
        raise ClientClosedError() from None
    return body


async def authenticate(request: Request, runtime: Runtime, path: str) -> VerifiedClient | None:
    settings = runtime.settings
    if not settings.auth_enabled:
        # Development mode trusts callers on this machine only, however the app was started.
        if request.client is None or not is_loopback_host(request.client.host):
            raise AuthError("auth_off_remote_peer")
        return None
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise AuthError("missing_token")
    audience = settings.public_base_url + path
    try:
        return await anyio.to_thread.run_sync(runtime.verifier.verify, token, audience)
    except AuthError as exc:
        runtime.metrics.auth_failures.labels(exc.message).inc()
        raise


# --------------------------------------------------------------------------- discovery


@router.get("/cds-services", response_model=Discovery, response_model_exclude_none=True)
async def discovery(request: Request) -> Any:
    """CDS Hooks discovery: one service per hook; prefetch derived from the loaded library."""
    runtime = runtime_of(request)
    if request.headers.get("authorization"):
        try:
            await authenticate(request, runtime, "/cds-services")
        except AuthError as exc:
            return error_response(exc)
    plan = runtime.knowledge.plan
    services = [
        ServiceDescription(
            hook=hook,
            id=service_id,
            title=_TITLES[hook],
            description=_DESCRIPTIONS[hook],
            prefetch=plan.templates(hook),
            usageRequirements=USAGE,
        )
        for hook, service_id in SERVICE_IDS.items()
    ]
    return JSONResponse(
        Discovery(services=services).model_dump(exclude_none=True), media_type=JSON_MEDIA
    )


# --------------------------------------------------------------------------- hook calls


class CallTurn:
    """A hook call's turn in its worker (`Runtime.evaluation_slot`): taken before the body is
    read, given back once the call's record is freed, after the answer is sent."""

    def __init__(self, slot: asyncio.Lock) -> None:
        self._slot = slot
        self._held = False

    async def take(self) -> None:
        await self._slot.acquire()
        self._held = True

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._slot.release()


class HookCallResponse(Response):
    """A hook call's answer; `after()` runs once it is sent, or once sending failed, so the
    EHR does not wait for what it does not need (freeing the record, the log line)."""

    media_type = JSON_MEDIA

    def __init__(
        self,
        body: bytes,
        after: Callable[[], Awaitable[None]],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(body, status_code, headers)
        self.after = after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.after()


@router.post("/cds-services/{service_id}")
async def call_service(service_id: str, request: Request) -> Response:
    """Invoke a hook service. Body: a CDS Hooks request (read raw, validated by hand)."""
    runtime = runtime_of(request)
    started = time.perf_counter()
    hook = HOOK_BY_SERVICE.get(service_id)
    if hook is None:
        return outcome(404, "not-found", f"no service `{service_id}`; see /cds-services")
    request_id = str(uuid.uuid4())
    call = HookCall(runtime, runtime.knowledge, service_id, hook, started)
    turn = CallTurn(runtime.evaluation_slot)
    try:
        try:
            answered = await answer(call, turn, request)
            status, body, headers = 200, answered.body, dict[str, str]()
            call_row = answered.audit[0]
            latency = answered.latency
        except RequestError as exc:
            status, body, headers = error_parts(exc)
            if status != 401:
                log.info("hook_rejected", request_id=request_id, reason=exc.issue_code)
            answered, call_row = None, await _audit_failure(call, status)
            latency = call_row.latency_ms / 1000
        except RecursionError:
            status, headers = 400, {}
            body = outcome_body("structure", "the JSON is nested too deeply")
            answered, call_row = None, await _audit_failure(call, status)
            latency = call_row.latency_ms / 1000
    except BaseException:  # unexpected: the app answers 500; the turn must not stay taken
        await _end_turn(call, turn)
        raise

    async def after() -> None:
        await _end_turn(call, turn)
        metrics = runtime.metrics
        metrics.requests.labels(service_id, str(status)).inc()
        metrics.latency.labels(service_id).observe(latency)
        if answered is not None:  # indicator ids and concern are set only when cards were issued
            for card_indicator in answered.card_indicators:
                metrics.cards.labels(service_id, card_indicator, call_row.concern or "").inc()
            for ident in call_row.indicator_ids:
                metrics.indicators.labels(ident).inc()
        log.info(
            "hook_call",
            request_id=request_id,
            hook=hook,
            service=service_id,
            status=status,
            library_version=call.knowledge.version,
            latency_ms=round(latency * 1000, 2),
            cards=len(answered.card_indicators) if answered else 0,
        )

    headers["X-Library-Version"] = call.knowledge.version
    headers["X-Request-Id"] = request_id
    return HookCallResponse(body, after, status, headers)


async def answer(call: HookCall, turn: CallTurn, request: Request) -> Answered:
    """Authenticate, then read, evaluate and audit in the call's turn; data missing from the
    prefetch is fetched from the FHIR server outside the turn."""
    runtime = call.runtime
    call.client = await authenticate(request, runtime, f"/cds-services/{call.service_id}")
    await turn.take()
    # Read in the turn too: a waiting call's body stays in the socket, not in memory, so a
    # worker's memory is bounded whatever the number of callers. The price: a slow upload
    # holds the turn, up to the hook deadline (then 408).
    settings = runtime.settings
    raw = await read_body(request, settings.max_body_bytes, settings.hook_deadline_seconds)
    answered = await anyio.to_thread.run_sync(call.start, raw)
    if answered is not None:
        return answered
    turn.give_back()
    hook_request, state = call.pending
    allowed = runtime.allowed_fhir_bases(call.client.client.fhir_servers if call.client else None)
    try:
        async with asyncio.timeout(settings.hook_deadline_seconds):
            await complete_prefetch(call.knowledge, hook_request, state, runtime.reader, allowed)
    except TimeoutError as exc:
        raise FhirServerError("the FHIR server did not answer within the deadline") from exc
    finally:
        del hook_request, state
    await turn.take()
    return await anyio.to_thread.run_sync(call.finish)


async def _audit_failure(call: HookCall, status: int) -> CallRecord:
    latency = time.perf_counter() - call.started
    audit = call.audit_rows(status, latency)
    await anyio.to_thread.run_sync(call.runtime.storage.record_call, *audit)
    return audit[0]


async def _end_turn(call: HookCall, turn: CallTurn) -> None:
    """Free the call's record (if it holds one), then give back its turn, whatever happens."""
    with anyio.CancelScope(shield=True):
        try:
            if call.holds_record:
                await anyio.to_thread.run_sync(call.release)
        finally:
            turn.give_back()


@router.get("/cds-services/{service_id}", include_in_schema=False)
async def service_get(service_id: str) -> Response:
    return outcome(405, "not-supported", "use POST to call a CDS service")


# --------------------------------------------------------------------------- feedback


@router.post("/cds-services/{service_id}/feedback")
async def feedback(service_id: str, request: Request) -> Response:
    """Store feedback durably (committed before 200) and idempotently; `{}` on success."""
    runtime = runtime_of(request)
    if service_id not in HOOK_BY_SERVICE:
        return outcome(404, "not-found", f"no service `{service_id}`")
    try:
        await authenticate(request, runtime, f"/cds-services/{service_id}/feedback")
        raw = await read_body(request, 1024 * 1024)
        items = parse_feedback(decode_json(raw))
    except RequestError as exc:
        return error_response(exc)
    entries = [
        FeedbackEntry(
            card_uuid=item.card,
            outcome=item.outcome,
            accepted_suggestions=list(item.accepted_suggestions),
            override_code=item.override_code,
            override_system=item.override_system,
            outcome_timestamp=dt.datetime.fromisoformat(
                item.outcome_timestamp.replace("Z", "+00:00")
            ),
            user_comment_present=item.user_comment_present,
        )
        for item in items
    ]
    referrals = {referral_suggestion_uuid(item.card) for item in items}
    result = await anyio.to_thread.run_sync(
        lambda: runtime.storage.record_feedback(service_id, entries, referrals.__contains__)
    )
    for item in items:
        runtime.metrics.feedback.labels(item.outcome).inc()
    log.info(
        "feedback",
        service=service_id,
        stored=result.stored,
        duplicates=result.duplicates,
        unknown_cards=result.unknown_cards,
    )
    return JSONResponse({}, media_type=JSON_MEDIA)


# --------------------------------------------------------------------------- operations


@router.get("/livez", include_in_schema=True)
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when a valid library is loaded and the database answers."""
    runtime = runtime_of(request)
    knowledge = runtime.knowledge
    database = await anyio.to_thread.run_sync(runtime.storage.ping)
    reload = runtime.last_reload
    body = {
        "status": "ok" if database else "unavailable",
        "library": {
            "id": knowledge.library.id,
            "version": knowledge.library.version,
            "revision": knowledge.library.revision,
            "indicators": len(knowledge.library.compiled),
            "loaded_at": knowledge.loaded_at.isoformat(),
        },
        "database": "ok" if database else "unavailable",
        "last_reload": {
            "ok": reload.ok,
            "at": reload.at.isoformat() if reload.at else None,
            "errors": [str(i) for i in reload.issues[:50]],
        },
    }
    return JSONResponse(body, status_code=200 if database else 503)


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    registry = runtime_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/pathways/{nation}", response_class=HTMLResponse)
async def pathway_page(nation: str, request: Request, locality: str | None = None) -> Response:
    """The full, printable referral checklist for a nation and locality (no patient data)."""
    runtime = runtime_of(request)
    html = render_pathway_page(runtime.knowledge, nation, locality)
    if html is None:
        return outcome(404, "not-found", f"no pathway for `{nation}`")
    return HTMLResponse(html)
