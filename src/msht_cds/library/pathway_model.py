"""Models of the referral pathway files: `nations/<nation>.yaml` and `local/<org>.yaml`.

Contact keys and local flags are closed lists on purpose: a misspelt key in a hospital's
overlay would otherwise silently drop its phone number from every card.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .model import Concern, Form, Strict

Nation = Literal["england", "wales", "scotland", "northern_ireland"]
ContactKey = Literal["safeguarding_team", "named_doctor", "named_nurse", "mash", "out_of_hours"]
LocalFlag = Literal["ictg_area"]


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
    forms: list[Form] | None = Field(
        default=None,
        description="Only when a form-specific indicator names one of these forms.",
    )
    indicators: list[str] | None = Field(default=None, description="Only when one of these fired.")
    critical: bool | None = Field(default=None, description="Only for critical cards.")
    local_flag: LocalFlag | None = Field(
        default=None, description="Only where the local overlay sets this flag (e.g. ictg_area)."
    )

    @property
    def always(self) -> bool:
        return self == StepCondition()


class Step(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str = Field(max_length=100)
    action: str = Field(description="What to do, in calm imperative words.")
    when: StepCondition = Field(default_factory=StepCondition)
    contacts: list[Contact] = Field(default_factory=list)
    local_contact: ContactKey | list[ContactKey] | None = Field(
        default=None,
        description="Key(s) of local overlay contacts shown first with this step; the national "
        "contacts follow, so a hospital without an overlay still sees them.",
    )
    sources: list[str] = Field(min_length=1, description="Citation keys (see `references`).")
    unverified: str | None = Field(
        default=None,
        description="What in this step was not confirmed by a retrieved source; shown on the "
        "full pathway page so readers check it locally.",
    )

    @property
    def local_contact_keys(self) -> list[ContactKey]:
        if self.local_contact is None:
            return []
        return [self.local_contact] if isinstance(self.local_contact, str) else self.local_contact


class Advice(Strict):
    general: list[str] = Field(min_length=1, description="Trauma-informed advice for every card.")
    forms: dict[Form, list[str]] = Field(default_factory=dict)
    sources: list[str] = Field(default_factory=list, description="Citation keys for the advice.")


class Link(Strict):
    label: str
    url: str = Field(pattern=r"^https://")
    forms: list[Form] | None = Field(
        default=None, description="Shown on cards only when one of these forms is indicated."
    )


class Reference(Strict):
    """A citation key of the domain brief, with the document and where it can be read."""

    title: str
    url: str = Field(pattern=r"^https?://")


class NationalPathway(Strict):
    id: Nation
    title: str
    version: str
    internal_team: str = Field(
        default="hospital safeguarding children team",
        description="What the in-hospital safeguarding team is called in this nation; used in "
        "the referral suggestion.",
    )
    steps: list[Step] = Field(min_length=1)
    advice: Advice
    links: list[Link] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    references: dict[str, Reference] = Field(
        default_factory=dict,
        description="Citation key → document. When given, every key cited in this file must "
        "be here, so the page can link each source.",
    )

    @model_validator(mode="after")
    def _checks(self) -> NationalPathway:
        if not any(step.when.always for step in self.steps):
            raise ValueError(
                "at least one step must apply always (no `when`), so a card is "
                "never left without a 'what to do now'"
            )
        ids = [step.id for step in self.steps]
        if len(ids) != len(set(ids)):
            raise ValueError("step ids must be unique")
        if self.references:
            cited = set(self.sources) | set(self.advice.sources)
            cited |= {key for step in self.steps for key in step.sources}
            missing = sorted(cited - set(self.references))
            if missing:
                raise ValueError(f"cited but not in `references`: {', '.join(missing)}")
        return self


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
    contacts: dict[ContactKey, Contact] = Field(
        default_factory=dict,
        description="Keyed contacts: safeguarding_team, named_doctor, named_nurse, mash (or the "
        "local equivalent front door), out_of_hours.",
    )
    flags: list[LocalFlag] = Field(default_factory=list, description="e.g. ictg_area")
    notes: str | None = Field(default=None, description="For maintainers; not shown on cards.")
