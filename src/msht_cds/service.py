"""One hook call, start to finish: request → record → assessment → cards.

Used by the HTTP routes and by `msht-cds evaluate`, so both give the same answer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cards import CardTemplates, build_card
from .cdshooks import HOOKS, ORDER_HOOKS, Card, CdsResponse, HookRequest, parse_hook_request
from .config import Settings
from .errors import PrefetchError
from .fhir import FhirReader
from .library.assess import assess, card_is_due
from .library.evaluate import Assessment
from .library.loader import Library, load_library
from .prefetch import PrefetchPlan, PrefetchState, read_prefetch
from .record import PatientRecord, resources_from_value
from .referral import plan_referral, select_overlay

SERVICE_IDS: dict[str, str] = {hook: f"msht-{hook}" for hook in HOOKS}
HOOK_BY_SERVICE = {service: hook for hook, service in SERVICE_IDS.items()}


@dataclass(frozen=True)
class Knowledge:
    """Everything loaded from `pathways/` and `cards/`; replaced whole on reload."""

    library: Library
    templates: CardTemplates
    plan: PrefetchPlan
    loaded_at: dt.datetime

    @property
    def version(self) -> str:
        return f"{self.library.version}+{self.library.revision}"


def load_knowledge(library_dir: Path, cards_dir: Path) -> Knowledge:
    """Load and check everything, or raise LibraryLoadError with every problem found."""
    library = load_library(library_dir, include_cases=False)
    templates = CardTemplates.load(cards_dir)
    return Knowledge(library, templates, PrefetchPlan.for_library(library), dt.datetime.now(dt.UTC))


@dataclass
class Decision:
    """What was decided, for the response, the audit row and `explain`."""

    request: HookRequest
    response: CdsResponse
    assessment: Assessment | None


@dataclass(frozen=True)
class CallSettings:
    """The settings a card depends on besides the record."""

    nation: str
    locality: str | None = None
    public_base_url: str = "http://127.0.0.1:8000"

    @classmethod
    def from_settings(cls, settings: Settings) -> CallSettings:
        return cls(settings.nation, settings.locality, settings.public_base_url)


@dataclass(frozen=True)
class History:
    """What earlier calls and feedback tell us about this patient (from the database)."""

    earlier_referral_override: dt.datetime | None = None
    referral_recorded_for_encounter: bool = False


CLINICIAN_USERS = frozenset({"Practitioner", "PractitionerRole"})
"""The only users a card is for; patient-view also admits Patient and RelatedPerson users."""

HistoryLookup = Callable[[], History]
"""Reads the history when a card is about to be built: most calls build none, and skip it.
`History` itself is the lookup of a patient with none."""


def prepare(knowledge: Knowledge, body: object, hook: str) -> tuple[HookRequest, PrefetchState]:
    request = parse_hook_request(body, hook)
    return request, read_prefetch(request, knowledge.plan.templates(hook))


def prefetch_complete(state: PrefetchState) -> bool:
    """Every template's data is here: nothing to fetch, nothing reported as failed."""
    return not (state.failed or state.missing or state.next_pages)


async def complete_prefetch(
    knowledge: Knowledge,
    request: HookRequest,
    state: PrefetchState,
    reader: FhirReader,
    allowed_fhir_bases: list[str],
) -> None:
    """Fetch what an incomplete prefetch lacked, or raise 412 (PrefetchError) saying what is
    missing."""
    if state.failed:
        raise PrefetchError(
            "the EHR reported errors for prefetch " + ", ".join(sorted(state.failed))
        )
    await reader.fetch_missing(
        request, knowledge.plan.templates(request.hook), state, allowed_fhir_bases
    )


def decide(
    knowledge: Knowledge,
    request: HookRequest,
    state: PrefetchState,
    settings: CallSettings,
    today: dt.date,
    history: HistoryLookup = History,
    explain: bool = False,
) -> Decision:
    """Pure function of the inputs: the same context gives the same guidance."""
    if request.user_id.split("/", 1)[0] not in CLINICIAN_USERS:
        # patient-view may come from a patient portal or a proxy (a parent, or the adult
        # exploiting the child): nothing may tell them that the child is being assessed.
        return Decision(request, CdsResponse(cards=[]), None)
    drafts: list[dict[str, object]] = []
    if request.draft_orders is not None:
        drafts, _, _ = resources_from_value(request.draft_orders)
    record = PatientRecord.build(
        request.patient_id,
        state.resources,
        encounter_id=request.encounter_id,
        draft_orders=drafts,
        full_urls=state.full_urls,
    )
    if record.patient is None:
        raise PrefetchError("no Patient resource with id context.patientId was provided")
    assessment = assess(knowledge.library, record, today, explain=explain)
    card = _card_for_hook(knowledge, request, record, assessment, settings, history)
    return Decision(request, CdsResponse(cards=[card] if card else []), assessment)


def decide_offline(
    knowledge: Knowledge,
    body: object,
    settings: CallSettings,
    today: dt.date,
    *,
    tool: str,
    explain: bool = False,
) -> Decision:
    """A saved hook request decided by a tool (`evaluate`, `explain`), which fetches
    nothing: RequestError 412 when its prefetch lacks data."""
    hook = str(body.get("hook")) if isinstance(body, dict) else ""
    request, state = prepare(knowledge, body, hook)
    if state.failed or state.missing:
        missing = ", ".join(sorted(state.failed + state.missing))
        raise PrefetchError(f"prefetch lacks {missing} ({tool} does not fetch)")
    return decide(knowledge, request, state, settings, today, explain=explain)


def _card_for_hook(
    knowledge: Knowledge,
    request: HookRequest,
    record: PatientRecord,
    assessment: Assessment,
    settings: CallSettings,
    read_history: HistoryLookup,
) -> Card | None:
    if assessment.concern is None:
        return None  # before the history is read: most calls end here
    history = read_history()
    if not card_is_due(
        request.hook,
        assessment,
        record,
        selected=request.selections if request.hook == "order-select" else None,
        referral_recorded=history.referral_recorded_for_encounter,
    ):
        return None
    library = knowledge.library
    overlay = select_overlay(library, settings.locality, record)
    plan = plan_referral(library, settings.nation, overlay, assessment)
    page = f"{settings.public_base_url}/pathways/{plan.pathway.id}"
    if overlay is not None:
        page += f"?locality={overlay.id}"
    indicator = assessment.card_indicator or "info"
    kind = "assessment"
    earlier: str | None = None
    if request.hook == "encounter-discharge":
        kind = "discharge"
    elif request.hook in ORDER_HOOKS:
        kind = "order"
    elif history.earlier_referral_override is not None and indicator != "critical":
        indicator = "info"
        earlier = (
            "A clinician recorded 'already referred' on "
            f"{history.earlier_referral_override.date().isoformat()}."
        )
    return build_card(
        kind=kind,
        templates=knowledge.templates,
        library=library,
        assessment=assessment,
        plan=plan,
        indicator=indicator,
        patient_id=request.patient_id,
        encounter_id=request.encounter_id,
        page_url=page,
        earlier_decision=earlier,
    )


__all__ = [
    "HOOK_BY_SERVICE",
    "SERVICE_IDS",
    "CallSettings",
    "Decision",
    "History",
    "HistoryLookup",
    "Knowledge",
    "complete_prefetch",
    "decide",
    "load_knowledge",
    "prefetch_complete",
    "prepare",
]
