"""Choose the referral pathway for this nation and locality, and the steps that apply.

A hospital's overlay adds its own contacts; whatever it lacks falls back to the national
steps, so a card never loses its 'what to do now'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .library.evaluate import Assessment
from .library.loader import Library
from .library.model import FORMS, Form
from .library.pathway_model import Contact, Link, LocalOverlay, NationalPathway, Step
from .record import PatientRecord


@dataclass(frozen=True)
class PlannedStep:
    step: Step
    contacts: list[Contact]


@dataclass(frozen=True)
class ReferralPlan:
    pathway: NationalPathway
    overlay: LocalOverlay | None
    steps: list[PlannedStep]
    advice: list[str]
    form_advice: dict[str, list[str]] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)

    @property
    def contacts(self) -> list[Contact]:
        """Whom to call: every contact of the chosen steps once, in step order."""
        seen: set[tuple[str, str | None]] = set()
        found = []
        for planned in self.steps:
            for contact in planned.contacts:
                key = (contact.name, contact.phone)
                if key not in seen:
                    seen.add(key)
                    found.append(contact)
        return found

    @property
    def team(self) -> str:
        """Who receives the referral suggestion: the local team's name, else the national one."""
        local = self.overlay.contacts.get("safeguarding_team") if self.overlay else None
        return local.name if local is not None else self.pathway.internal_team


def select_overlay(
    library: Library, locality: str | None, record: PatientRecord | None
) -> LocalOverlay | None:
    """The configured locality wins; otherwise the encounter's service provider picks it."""
    if locality and locality in library.overlays:
        chosen: LocalOverlay = library.overlays[locality].model
        return chosen
    encounter = record.encounter if record is not None else None
    if encounter is not None:
        provider = encounter.get("serviceProvider") or {}
        keys = set()
        if isinstance(provider, dict):
            if isinstance(provider.get("reference"), str):
                keys.add(provider["reference"].rsplit("/", 1)[-1])
            identifier = provider.get("identifier")
            if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
                keys.add(identifier["value"])
        for located in library.overlays.values():
            if keys & set(located.model.identifiers):
                found: LocalOverlay = located.model
                return found
    return None


def specific_forms(assessment: Assessment) -> list[Form]:
    """Forms named by form-specific indicators only: when nothing is specific the assessment
    lists all six, and form steps (the Forced Marriage Unit) would then appear on every card."""
    forms = assessment.forms
    return [] if len(forms) == len(FORMS) else forms


def _applies(step: Step, assessment: Assessment | None, overlay: LocalOverlay | None) -> bool:
    when = step.when
    if when.local_flag is not None:
        if overlay is not None:
            return when.local_flag in overlay.flags and _applies_to(step, assessment)
        # Without an overlay nobody knows the local arrangement: only the full page shows it.
        return assessment is None
    return _applies_to(step, assessment)


def _applies_to(step: Step, assessment: Assessment | None) -> bool:
    if assessment is None:  # the full page lists every step
        return True
    when = step.when
    if when.concern is not None and assessment.concern not in when.concern:
        return False
    if when.forms is not None and not set(when.forms) & set(specific_forms(assessment)):
        return False
    counted = {r.indicator.id for r in assessment.counted}
    if when.indicators is not None and not set(when.indicators) & counted:
        return False
    return when.critical is None or when.critical == (assessment.card_indicator == "critical")


def plan_referral(
    library: Library,
    nation: str,
    overlay: LocalOverlay | None,
    assessment: Assessment | None,
) -> ReferralPlan:
    """The steps for this assessment (or all of them for the page, `assessment=None`).

    An overlay's nation wins over the configured one: its contacts only make sense there."""
    chosen_nation = overlay.nation if overlay is not None else nation
    located = library.nations.get(chosen_nation)
    if located is None:
        located = next(iter(library.nations.values()))
    pathway: NationalPathway = located.model
    steps = []
    for step in pathway.steps:
        if not _applies(step, assessment, overlay):
            continue
        local = overlay.contacts if overlay is not None else {}
        contacts = [local[k] for k in step.local_contact_keys if k in local]
        steps.append(PlannedStep(step, contacts + list(step.contacts)))
    forms: list[Form] = (
        specific_forms(assessment) if assessment is not None else list(pathway.advice.forms)
    )
    return ReferralPlan(
        pathway=pathway,
        overlay=overlay,
        steps=steps,
        advice=list(pathway.advice.general),
        form_advice={f: pathway.advice.forms[f] for f in forms if f in pathway.advice.forms},
        links=[
            link
            for link in pathway.links
            if assessment is None or link.forms is None or set(link.forms) & set(forms)
        ],
    )
