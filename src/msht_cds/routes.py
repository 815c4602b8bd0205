"""HTTP endpoints: discovery, hook services, feedback, health, metrics, pathway pages.

Status codes: 200 success; 400 malformed JSON or fields (OperationOutcome); 401 bad or missing
JWT (one generic body); 404 unknown service; 405 wrong method; 412 data could not be obtained
(OperationOutcome); 408 the body did not arrive within the hook deadline; 413 body or record too
large. Never a 5xx for bad input.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import anyio
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect

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
from .storage import FeedbackEntry

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


def error_response(error: RequestError) -> Response:
    """The answer to a rejected request; every 401 looks the same."""
    if isinstance(error, AuthError):
        headers = {"WWW-Authenticate": "Bearer"}
        return Response(UNAUTHORIZED_BODY, 401, headers=headers, media_type=JSON_MEDIA)
    return outcome(error.status_code, error.issue_code, error.message)


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
    answered: Answered | None = None
    try:
        call.client = await authenticate(request, runtime, f"/cds-services/{service_id}")
        async with runtime.evaluation_slot:
            # Read in the turn too: a waiting call's body stays in the socket, not in memory,
            # so a worker's memory is bounded whatever the number of callers. The price: a
            # slow upload holds the turn, up to the hook deadline (then 408).
            raw = await read_body(
                request, runtime.settings.max_body_bytes, runtime.settings.hook_deadline_seconds
            )
            result = await anyio.to_thread.run_sync(call.start, raw)
        if isinstance(result, Answered):
            answered = result
        else:  # prefetch was incomplete: fetch without holding the evaluation slot
            hook_request, state = result
            allowed = runtime.allowed_fhir_bases(
                call.client.client.fhir_servers if call.client else None
            )
            try:
                async with asyncio.timeout(runtime.settings.hook_deadline_seconds):
                    await complete_prefetch(
                        call.knowledge, hook_request, state, runtime.reader, allowed
                    )
            except TimeoutError as exc:
                raise FhirServerError("the FHIR server did not answer within the deadline") from exc
            async with runtime.evaluation_slot:
                answered = await anyio.to_thread.run_sync(call.finish, hook_request, state)
            del hook_request, state, result
        status = 200
        response: Response = Response(answered.body, media_type=JSON_MEDIA)
        audit = answered.audit
        latency = answered.latency
    except RequestError as exc:
        _forget_frames(exc)
        status = exc.status_code
        response = error_response(exc)
        if status != 401:
            log.info("hook_rejected", request_id=request_id, reason=exc.issue_code)
        latency = time.perf_counter() - started
        audit = call.audit_rows(status, latency)
    except RecursionError as exc:
        _forget_frames(exc)
        status = 400
        response = outcome(400, "structure", "the JSON is nested too deeply")
        latency = time.perf_counter() - started
        audit = call.audit_rows(status, latency)
    response.headers["X-Library-Version"] = call.knowledge.version
    response.headers["X-Request-Id"] = request_id
    await anyio.to_thread.run_sync(runtime.storage.record_call, *audit)
    metrics = runtime.metrics
    metrics.requests.labels(service_id, str(status)).inc()
    metrics.latency.labels(service_id).observe(latency)
    if answered is not None:
        call_row = audit[0]  # indicator ids and concern are set only when cards were issued
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
    return response


def _forget_frames(error: BaseException) -> None:
    """A rejected call's exceptions must not keep its frames, and so its decoded record,
    alive: the traceback and the thread pool's future form a cycle that only a full cyclic
    collection would free, and a worker would pile up records of rejected calls until then."""
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        found.__traceback__ = None
        found = found.__cause__ or found.__context__


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
            outcome_timestamp=item.outcome_timestamp,
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
