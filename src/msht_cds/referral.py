"""Choose the referral pathway for this nation and locality, and the steps that apply.

A hospital's overlay adds its own contacts; whatever it lacks falls back to the national
steps, so a card never loses its 'what to do now'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .library.evaluate import Assessment
from .library.loader import Library
from .library.pathway_model import Contact, LocalOverlay, NationalPathway, Step
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


def select_overlay(
    library: Library, locality: str | None, record: PatientRecord | None
) -> LocalOverlay | None:
    """The configured locality wins; otherwise the encounter's service provider picks it."""
    overlays = [loc.model for loc in library.overlays.values()]
    if locality:
        for overlay in overlays:
            if overlay.id == locality:
                return overlay
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
        for overlay in overlays:
            if keys & set(overlay.identifiers):
                return overlay
    return None


def _applies(step: Step, assessment: Assessment | None, overlay: LocalOverlay | None) -> bool:
    when = step.when
    if when.local_flag is not None and (overlay is None or when.local_flag not in overlay.flags):
        return False
    if assessment is None:  # the full page lists every step
        return True
    if when.concern is not None and assessment.concern not in when.concern:
        return False
    if when.forms is not None and not set(when.forms) & set(assessment.forms):
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
    chosen_nation = overlay.nation if overlay is not None else nation
    located = library.nations.get(chosen_nation)
    if located is None:
        located = next(iter(library.nations.values()))
    pathway: NationalPathway = located.model
    steps = []
    for step in pathway.steps:
        if not _applies(step, assessment, overlay):
            continue
        contacts = list(step.contacts)
        if overlay is not None and step.local_contact in overlay.contacts:
            contacts.insert(0, overlay.contacts[step.local_contact])
        steps.append(PlannedStep(step, contacts))
    forms = assessment.forms if assessment is not None else list(pathway.advice.forms)
    return ReferralPlan(
        pathway=pathway,
        overlay=overlay,
        steps=steps,
        advice=list(pathway.advice.general),
        form_advice={f: pathway.advice.forms[f] for f in forms if f in pathway.advice.forms},
    )
