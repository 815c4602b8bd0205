"""Models of the referral pathway files: `nations/<nation>.yaml` and `local/<org>.yaml`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .model import Concern, Form, Strict

Nation = Literal["england", "wales", "scotland", "northern_ireland"]


class Contact(Strict):
    name: str
    phone: str | None = None
    email: str | None = None
    url: str | None = None
    hours: str | None = Field(default=None, description="e.g. '24/7' or 'Mon–Fri 9–5'.")
    note: str | None = None


class StepCondition(Strict):
    """When a step applies. Empty means always."""

    concern: list[Concern] | None = Field(default=None, description="Concern levels it applies to.")
    forms: list[Form] | None = Field(default=None, description="Only for these forms.")
    indicators: list[str] | None = Field(default=None, description="Only when one of these fired.")
    critical: bool | None = Field(default=None, description="Only for critical cards.")
    local_flag: str | None = Field(
        default=None, description="Only where the local overlay sets this flag (e.g. ictg_area)."
    )


class Step(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str = Field(max_length=100)
    action: str = Field(description="What to do, in calm imperative words.")
    when: StepCondition = Field(default_factory=StepCondition)
    contacts: list[Contact] = Field(default_factory=list)
    local_contact: str | None = Field(
        default=None, description="Key of a local overlay contact to show with this step."
    )
    sources: list[str] = Field(default_factory=list, description="Citation keys.")


class Advice(Strict):
    general: list[str] = Field(min_length=1, description="Trauma-informed advice for every card.")
    forms: dict[Form, list[str]] = Field(default_factory=dict)


class Link(Strict):
    label: str
    url: str = Field(pattern=r"^https://")


class NationalPathway(Strict):
    id: Nation
    title: str
    version: str
    steps: list[Step] = Field(min_length=1)
    advice: Advice
    links: list[Link] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)


class LocalOverlay(Strict):
    """A hospital's own contacts; everything optional falls back to the national steps."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    organisation: str = Field(description="Name shown on the card and page.")
    nation: Nation
    identifiers: list[str] = Field(
        default_factory=list,
        description="Organization identifiers (e.g. ODS codes) or Organization ids that select "
        "this overlay from Encounter.serviceProvider.",
    )
    contacts: dict[str, Contact] = Field(
        default_factory=dict,
        description="Keyed contacts: safeguarding_team, named_doctor, mash, out_of_hours, …",
    )
    flags: list[str] = Field(default_factory=list, description="e.g. ictg_area")
