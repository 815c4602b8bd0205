"""CDS Hooks 2.0.1 protocol: request validation, response and discovery models.

Spec anchors refer to https://cds-hooks.hl7.org/2.0/. Requests are validated by hand from the
decoded JSON (cheaper than a pydantic body for multi-megabyte prefetch); responses are
pydantic models serialised with `exclude_none`, so optional attributes are omitted, never null
(§Use of JSON).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import BadRequestError

HOOKS: tuple[str, ...] = (
    "patient-view",
    "encounter-start",
    "encounter-discharge",
    "order-select",
    "order-sign",
)
_USER_TYPES = {
    "patient-view": {"Practitioner", "PractitionerRole", "Patient", "RelatedPerson"},
    "encounter-start": {"Practitioner", "PractitionerRole"},
    "encounter-discharge": {"Practitioner", "PractitionerRole"},
    "order-select": {"Practitioner", "PractitionerRole"},
    "order-sign": {"Practitioner", "PractitionerRole"},
}
ENCOUNTER_HOOKS = frozenset({"encounter-start", "encounter-discharge"})
"""Hooks whose context names the encounter (required)."""
ORDER_HOOKS = frozenset({"order-select", "order-sign"})
"""Hooks whose context carries draft orders."""
PLAIN_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_USER_ID = re.compile(r"^([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")


@dataclass(frozen=True)
class FhirAuthorization:
    access_token: str
    token_type: str
    scope: str
    patient: str | None

    def __repr__(self) -> str:  # never print the token
        return f"FhirAuthorization(scope={self.scope!r}, patient={self.patient!r})"


@dataclass(frozen=True)
class HookRequest:
    """A validated hook call (§Calling a CDS Service, hook contexts of the Hooks Library)."""

    hook: str
    hook_instance: str
    user_id: str
    patient_id: str
    encounter_id: str | None
    fhir_server: str | None
    fhir_authorization: FhirAuthorization | None
    prefetch: dict[str, Any]
    draft_orders: dict[str, Any] | None
    selections: tuple[str, ...]


def _require(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if value is None:
        raise BadRequestError(f"`{where}{key}` is required", "required")
    if not isinstance(value, kind) or (kind is str and not value):
        raise BadRequestError(f"`{where}{key}` must be a non-empty {kind.__name__}")
    return value


def parse_hook_request(body: object, expected_hook: str) -> HookRequest:
    """Validate the decoded body for a service registered for `expected_hook`."""
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    hook = _require(body, "hook", str, "")
    if hook != expected_hook:
        raise BadRequestError(
            f"this service answers `{expected_hook}`, the request is for `{hook}`", "not-supported"
        )
    hook_instance = _require(body, "hookInstance", str, "")
    try:
        canonical = str(uuid.UUID(hook_instance)) == hook_instance.lower()
    except ValueError:
        canonical = False
    if not canonical:
        raise BadRequestError(
            "`hookInstance` must be a UUID in its usual form, e.g. "
            "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
        )
    context = _require(body, "context", dict, "")
    user_id = _require(context, "userId", str, "context.")
    match = _USER_ID.match(user_id)
    if not match or match.group(1) not in _USER_TYPES[hook]:
        allowed = ", ".join(sorted(_USER_TYPES[hook]))
        raise BadRequestError(f"`context.userId` must be Type/id with Type one of {allowed}")
    patient_id = _require(context, "patientId", str, "context.")
    if not PLAIN_ID.match(patient_id):
        raise BadRequestError(
            "`context.patientId` must be a plain id such as `123`, not `Patient/123`"
        )
    encounter_id = context.get("encounterId")
    if hook in ENCOUNTER_HOOKS or encounter_id is not None:
        encounter_id = _require(context, "encounterId", str, "context.")
        if not PLAIN_ID.match(encounter_id):
            raise BadRequestError("`context.encounterId` must be a plain id")
    draft_orders = None
    selections: tuple[str, ...] = ()
    if hook in ORDER_HOOKS:
        draft_orders = _require(context, "draftOrders", dict, "context.")
        if draft_orders.get("resourceType") != "Bundle":
            raise BadRequestError("`context.draftOrders` must be a FHIR Bundle")
    if hook == "order-select":
        raw = _require(context, "selections", list, "context.")
        if not all(isinstance(s, str) and "/" in s for s in raw):
            raise BadRequestError("`context.selections` must be a list of Type/id references")
        selections = tuple(raw)
    fhir_server = body.get("fhirServer")
    if fhir_server is not None and (not isinstance(fhir_server, str) or "://" not in fhir_server):
        raise BadRequestError("`fhirServer` must be an absolute URL")
    fhir_authorization = _parse_authorization(body.get("fhirAuthorization"), fhir_server)
    prefetch = body.get("prefetch")
    if prefetch is not None and not isinstance(prefetch, dict):
        raise BadRequestError("`prefetch` must be an object")
    return HookRequest(
        hook=hook,
        hook_instance=hook_instance,
        user_id=user_id,
        patient_id=patient_id,
        encounter_id=encounter_id,
        fhir_server=fhir_server.rstrip("/") if fhir_server else None,
        fhir_authorization=fhir_authorization,
        prefetch=prefetch or {},
        draft_orders=draft_orders,
        selections=selections,
    )


def _parse_authorization(value: object, fhir_server: object) -> FhirAuthorization | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequestError("`fhirAuthorization` must be an object")
    if fhir_server is None:
        raise BadRequestError("`fhirAuthorization` needs `fhirServer`")
    for key in ("access_token", "token_type", "scope", "subject"):
        if not isinstance(value.get(key), str) or not value[key]:
            raise BadRequestError(f"`fhirAuthorization.{key}` is required")
    if not isinstance(value.get("expires_in"), int):
        raise BadRequestError("`fhirAuthorization.expires_in` must be an integer")
    if not all("!" <= char <= "~" for char in value["access_token"]):
        # RFC 6750 b64token: it goes into an HTTP header, which carries ASCII only.
        raise BadRequestError("`fhirAuthorization.access_token` must be printable ASCII")
    patient = value.get("patient")
    return FhirAuthorization(
        access_token=value["access_token"],
        token_type=value["token_type"],
        scope=value["scope"],
        patient=patient if isinstance(patient, str) else None,
    )


# --------------------------------------------------------------------------- response models


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Coding(Model):
    """§Coding: `code` and `system` required; overrideReasons also need `display`."""

    system: str
    code: str
    display: str | None = None


class Source(Model):
    """§Source: who produced the card; `label` required, `url` about the source."""

    label: str
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Link(Model):
    """§Link: absolute links never carry appContext."""

    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None


class Action(Model):
    """§Action: create/update carry a whole FHIR resource."""

    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None


class Suggestion(Model):
    """§Suggestion: always with a uuid so the EHR can send `accepted` feedback."""

    label: str
    uuid: str
    isRecommended: bool | None = None
    actions: list[Action] = Field(min_length=1)


class Card(Model):
    """§Card Attributes: summary < 140 characters; indicator info|warning|critical."""

    uuid: str
    summary: str = Field(max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None
    extension: dict[str, Any] | None = None


class CdsResponse(Model):
    """§CDS Service Response: `{"cards": []}` when nothing applies."""

    cards: list[Card]


class ServiceDescription(Model):
    """§Discovery response entry."""

    hook: str
    id: str
    title: str
    description: str
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class Discovery(Model):
    services: list[ServiceDescription]


# --------------------------------------------------------------------------- feedback


@dataclass(frozen=True)
class FeedbackItem:
    card: str
    outcome: Literal["accepted", "overridden"]
    accepted_suggestions: tuple[str, ...]
    override_code: str | None
    override_system: str | None
    user_comment_present: bool
    outcome_timestamp: dt.datetime
    """In UTC."""


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


MAX_CARD_ID = 64
"""Longest card id kept (the service's own are 36-character UUIDs)."""
MAX_CODE = 255
"""Longest override reason code or system kept."""


def _text(value: str, name: str, longest: int) -> str:
    """A string that a database column can hold: at most `longest` characters, no NUL."""
    if len(value) > longest or "\x00" in value:
        raise BadRequestError(f"`{name}` must be at most {longest} characters, without NUL")
    return value


def _instant(timestamp: str) -> dt.datetime | None:
    """The moment a well-formed date-time names, in UTC; None for an impossible one (30
    February, hour 24, year 0, or beyond the years a date can hold once in UTC)."""
    try:
        return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None


def parse_feedback(body: object) -> list[FeedbackItem]:
    """§Feedback: tolerant of shapes seen in the wild (no display, no reason)."""
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list):
        raise BadRequestError('the body must be {"feedback": [...]}')
    items = []
    for i, entry in enumerate(body["feedback"]):
        where = f"feedback[{i}]."
        if not isinstance(entry, dict):
            raise BadRequestError(f"`feedback[{i}]` must be an object")
        card = _text(_require(entry, "card", str, where), f"{where}card", MAX_CARD_ID)
        outcome = _require(entry, "outcome", str, where)
        if outcome not in ("accepted", "overridden"):
            raise BadRequestError(f"`{where}outcome` must be accepted or overridden")
        timestamp = _require(entry, "outcomeTimestamp", str, where)
        at = _instant(timestamp) if _RFC3339.match(timestamp) else None
        if at is None:
            raise BadRequestError(f"`{where}outcomeTimestamp` must be an RFC 3339 date-time")
        accepted: list[str] = []
        if outcome == "accepted":
            raw = _require(entry, "acceptedSuggestions", list, where)
            if not raw or not all(
                isinstance(s, dict) and isinstance(s.get("id"), str) for s in raw
            ):
                raise BadRequestError(f'`{where}acceptedSuggestions` must list {{"id": …}}')
            accepted = [s["id"] for s in raw]
        reason = entry.get("overrideReason")
        code = system = None
        comment = False
        if isinstance(reason, dict):
            coding = reason.get("reason")
            if isinstance(coding, dict):
                named = f"{where}overrideReason.reason."
                if isinstance(coding.get("code"), str):
                    code = _text(coding["code"], f"{named}code", MAX_CODE)
                if isinstance(coding.get("system"), str):
                    system = _text(coding["system"], f"{named}system", MAX_CODE)
            comment = isinstance(reason.get("userComment"), str)
        items.append(FeedbackItem(card, outcome, tuple(accepted), code, system, comment, at))
    return items
