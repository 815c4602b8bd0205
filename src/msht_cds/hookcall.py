"""The work of one hook call off the event loop: decode the body, read the prefetch, evaluate,
read the patient's history when a card is to be built, render the response and prepare the
audit rows, in one job.

A call's decoded record is freed before the job returns, with the cyclic collector paused
throughout (see `runtime.collector_paused`), so a worker that takes calls in turn holds one
record at a time (besides those of calls waiting on a FHIR server for missing prefetch).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import orjson

from .auth import VerifiedClient
from .cards import ALREADY_REFERRED
from .cdshooks import HookRequest
from .errors import BadRequestError, PayloadTooLargeError
from .prefetch import PrefetchState
from .runtime import Runtime, collector_paused
from .service import Decision, History, Knowledge, decide, prefetch_complete, prepare
from .storage import CallRecord, IssuedCard


def decode_json(raw: bytes | bytearray) -> Any:
    with collector_paused():
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequestError(f"the body is not valid JSON ({exc.msg})", "structure") from exc


AuditRows = tuple[CallRecord, list[IssuedCard]]


@dataclass(frozen=True)
class Answered:
    """What an evaluated call leaves once its record is freed: the response body, the audit
    rows and what metrics count."""

    body: bytes
    audit: AuditRows
    latency: float
    card_indicators: list[str]


@dataclass
class HookCall:
    """One hook call's work off the event loop: decode, read prefetch, evaluate, render."""

    runtime: Runtime
    knowledge: Knowledge
    service_id: str
    hook: str
    started: float
    client: VerifiedClient | None = None

    def start(self, raw: bytearray) -> Answered | tuple[HookRequest, PrefetchState]:
        """The whole call when prefetch is complete (the usual case): the decoded request is
        freed before returning. Otherwise what is needed to fetch the rest."""
        with collector_paused():
            decoded = decode_json(raw)
            raw.clear()  # the tree replaces the bytes: hold one of them, not both
            hook_request, state = prepare(self.knowledge, decoded, self.hook)
            del decoded
            if not prefetch_complete(state):
                return hook_request, state
            try:
                return self.finish(hook_request, state)
            finally:
                del hook_request, state

    def finish(self, hook_request: HookRequest, state: PrefetchState) -> Answered:
        with collector_paused():
            settings = self.runtime.settings
            if len(state.resources) > settings.max_resources:
                raise PayloadTooLargeError(
                    "the record has more resources than this service accepts"
                )
            today = dt.datetime.now(dt.UTC).date()
            decision = decide(
                self.knowledge,
                hook_request,
                state,
                self.runtime.call_settings,
                today,
                lambda: self.history(hook_request),
            )
            body = decision.response.model_dump_json(exclude_none=True).encode()
            latency = time.perf_counter() - self.started
            cards = decision.response.cards
            return Answered(
                body,
                self.audit_rows(200, latency, decision),
                latency,
                [card.indicator for card in cards],
            )

    def history(self, request: HookRequest) -> History:
        storage = self.runtime.storage
        patient_key = storage.patient_key(request.patient_id)
        memory = self.runtime.settings.override_memory_days
        since = dt.datetime.now(dt.UTC) - dt.timedelta(days=memory)
        earlier = storage.latest_override(patient_key, {ALREADY_REFERRED}, since)
        referral = False
        if request.hook == "encounter-discharge":
            encounter_key = (
                storage.encounter_key(request.encounter_id) if request.encounter_id else None
            )
            referral = storage.has_referral(patient_key, encounter_key)
        return History(earlier.at if earlier else None, referral)

    def audit_rows(
        self, status: int, latency: float, decision: Decision | None = None
    ) -> AuditRows:
        """Audit row and issued cards; no clinical text, no tokens, patient only as a keyed
        hash."""
        storage = self.runtime.storage
        now = dt.datetime.now(dt.UTC)
        cards = decision.response.cards if decision else []
        patient_key = encounter_key = None
        indicator_ids: list[str] = []
        concern = None
        if decision is not None:
            patient_key = storage.patient_key(decision.request.patient_id)
            if decision.request.encounter_id:
                encounter_key = storage.encounter_key(decision.request.encounter_id)
            if decision.assessment is not None and cards:
                indicator_ids = [r.indicator.id for r in decision.assessment.counted]
                concern = decision.assessment.concern
        hook_instance = decision.request.hook_instance if decision else ""
        call = CallRecord(
            at=now,
            client=self.client.issuer if self.client else None,
            hook=self.hook,
            service_id=self.service_id,
            hook_instance=hook_instance,
            library_version=self.knowledge.version,
            patient_key=patient_key,
            encounter_key=encounter_key,
            card_uuids=[c.uuid for c in cards],
            indicator_ids=indicator_ids,
            concern=concern,
            status_code=status,
            latency_ms=latency * 1000,
        )
        issued = [
            IssuedCard(
                uuid=card.uuid,
                service_id=self.service_id,
                hook_instance=hook_instance,
                patient_key=patient_key,
                indicator_ids=indicator_ids,
                concern=concern,
                suggestion_uuids=[s.uuid for s in card.suggestions or []],
                issued_at=now,
                encounter_key=encounter_key,
            )
            for card in cards
        ]
        return call, issued
