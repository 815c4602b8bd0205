"""Pydantic models of every YAML file kind in `pathways/`.

They are the single source of the JSON Schemas under `schemas/` (see `msht-cds schema`), so
every field carries a description that editors show as hover text.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

Form = Literal["labour", "criminal", "sexual", "domestic_servitude", "financial", "forced_marriage"]
FORMS: tuple[Form, ...] = get_args(Form)
Strength = Literal["strong", "moderate", "contextual"]
STRENGTH_RANK: dict[str, int] = {"contextual": 1, "moderate": 2, "strong": 3}
Concern = Literal["high", "medium", "low"]
Verification = Literal["verified", "third_party", "unverified"]
Status = Literal["draft", "active", "retired"]
Group = Literal["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K"]


class Strict(BaseModel):
    """Unknown fields are errors: a typo must never silently switch a rule off."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- value sets


class Code(Strict):
    system: str = Field(description="Code system URI, e.g. http://snomed.info/sct")
    code: str = Field(description="The code as written in the code system.")
    display: str = Field(description="Human-readable meaning of the code.")
    verification: Verification = Field(
        description=(
            "verified: seen in a cited source (✔); third_party: seen only on a code-lookup "
            "site (≈); unverified: not found in any source (✘) - never rely on it alone."
        )
    )
    source: str | None = Field(default=None, description="Citation key of the source, e.g. S22a.")
    match: Literal["exact", "prefix"] = Field(
        default="exact",
        description="prefix: every code that starts with `code` (an ICD-10 category or range, "
        "e.g. X85 for X85.0-X85.9); exact: this code only.",
    )


class ValueSet(Strict):
    """A named list of codes that indicators refer to by `id`."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Referenced from indicators.")
    title: str
    description: str | None = None
    codes: list[Code] = Field(min_length=1)


# --------------------------------------------------------------------------- evidence


class FieldTest(Strict):
    """A test on a simple dotted path of the resource JSON (lists are flattened)."""

    path: str | list[str] = Field(
        description="Dotted path such as `status` or `class.code`, or a list of paths whose "
        "values are tested together (e.g. a medication's text and its codings' display)."
    )
    equals: str | int | bool | None = None
    is_in: list[str] | None = Field(default=None, alias="in", description="Allowed values.")
    not_in: list[str] | None = Field(default=None, description="Values that exclude.")
    exists: bool | None = Field(default=None, description="true: has a value; false: empty.")
    matches: str | None = Field(
        default=None,
        description="A regular expression found in a value, ignoring case "
        "(e.g. `ulipristal[^0-9]*30 ?mg`).",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_test(self) -> FieldTest:
        tests = (self.equals, self.is_in, self.not_in, self.exists, self.matches)
        if sum(v is not None for v in tests) != 1:
            raise ValueError("give exactly one of equals, in, not_in, exists, matches")
        if self.matches is not None:
            try:
                re.compile(self.matches)
            except re.error as exc:
                raise ValueError(f"`matches` is not a valid regular expression: {exc}") from exc
        return self


class AgeRange(Strict):
    """Age in completed years. `under: 16` means 15 or younger."""

    under: int | None = Field(default=None, ge=0, le=25)
    at_least: int | None = Field(default=None, ge=0, le=25)


class QuestionTest(Strict):
    """An answer in a QuestionnaireResponse of the named Questionnaire."""

    questionnaire: str = Field(description="Canonical URL of the Questionnaire.")
    link_id: str = Field(description="The item's linkId.")
    answer: bool | str = Field(
        default=True,
        description="true for a yes, false for a recorded no, or a coded or text answer.",
    )


class ScoreTest(Strict):
    """A scored screening Questionnaire: count of `yes` answers at or above a threshold."""

    questionnaire: str = Field(description="Canonical URL of the screening Questionnaire.")
    at_least: int = Field(ge=1, description="Published positive threshold, e.g. SSCST 2.")


SelectorResource = Literal[
    "Patient",
    "Encounter",
    "Condition",
    "Observation",
    "Procedure",
    "MedicationRequest",
    "MedicationStatement",
    "MedicationDispense",
    "ServiceRequest",
    "Appointment",
    "Flag",
    "RelatedPerson",
    "QuestionnaireResponse",
    "DocumentReference",
    "EpisodeOfCare",
    "CareTeam",
    "Immunization",
]


class Evidence(Strict):
    """Selects the resources that are evidence for an indicator: what was seen, and when."""

    resource: SelectorResource = Field(description="FHIR resource type to look at.")
    describe: str = Field(
        description="Neutral words for one matching fact, shown on the card, e.g. "
        "'Emergency attendance'. Never accusatory."
    )
    codes: str | None = Field(default=None, description="Value set id the main code must match.")
    code_path: str | None = Field(
        default=None, description="Dotted path of the coded element, if not the usual one."
    )
    where: list[FieldTest] = Field(default_factory=list, description="All must hold.")
    within_days: int | None = Field(
        default=None, ge=1, description="Only facts dated within this many days before the visit."
    )
    age_at_event: AgeRange | None = Field(
        default=None, description="The child's age on the date of the fact."
    )
    escort: bool = Field(
        default=False,
        description="RelatedPerson only: keep only people recorded as accompanying the child "
        "at this encounter (Encounter.participant type ESC).",
    )
    question: QuestionTest | None = Field(
        default=None, description="QuestionnaireResponse only: the answer to look for."
    )
    score: ScoreTest | None = Field(
        default=None, description="QuestionnaireResponse only: a positive screening score."
    )
    fhirpath: str | None = Field(
        default=None,
        description="Extra FHIRPath filter, evaluated on each candidate; use only when the "
        "declarative fields cannot say it. `%visitDate` holds the visit date (use .toDate()).",
    )
    include_draft_orders: bool = Field(
        default=False, description="Also match orders being selected or signed (order hooks)."
    )
    current_encounter: bool = Field(
        default=False, description="Encounter only: keep only the encounter of this visit."
    )

    @model_validator(mode="after")
    def _fits_resource(self) -> Evidence:
        if self.escort and self.resource != "RelatedPerson":
            raise ValueError("escort: true applies only to resource: RelatedPerson")
        if (self.question or self.score) and self.resource != "QuestionnaireResponse":
            raise ValueError("question and score apply only to resource: QuestionnaireResponse")
        if self.current_encounter and self.resource != "Encounter":
            raise ValueError("current_encounter applies only to resource: Encounter")
        return self


# --------------------------------------------------------------------------- conditions


class Condition(Strict):
    """One test, or a combination of tests. Give exactly one kind of test per entry."""

    all: list[Condition] | None = Field(default=None, description="Every test holds.")
    any: list[Condition] | None = Field(default=None, description="At least one test holds.")
    not_: Condition | None = Field(default=None, alias="not", description="The test fails.")
    evidence: str | None = Field(default=None, description="Name of an evidence selector.")
    at_least: int | None = Field(
        default=None, ge=1, description="With evidence: how many facts are needed (default 1)."
    )
    fewer_than: int | None = Field(
        default=None, ge=1, description="With evidence: fewer facts than this (near misses)."
    )
    distinct: str | None = Field(
        default=None,
        description="With evidence: count distinct values of this dotted path "
        "(e.g. serviceProvider) instead of facts; a Reference counts as what it names "
        "(Type/id, or identifier system|value).",
    )
    age: AgeRange | None = Field(default=None, description="Age at the visit date.")
    age_unknown: bool | None = Field(
        default=None, description="true: the birth date is missing, so treat as a child."
    )
    indicator: str | None = Field(default=None, description="Another indicator has fired.")
    fhirpath: str | None = Field(
        default=None, description="A FHIRPath expression on the Patient that must be true."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_kind(self) -> Condition:
        kinds = [
            k
            for k in (
                "all",
                "any",
                "not_",
                "evidence",
                "age",
                "age_unknown",
                "indicator",
                "fhirpath",
            )
            if getattr(self, k) is not None
        ]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of all, any, not, evidence, age, age_unknown, indicator, fhirpath"
            )
        if self.evidence is None and (
            self.at_least is not None or self.distinct is not None or self.fewer_than is not None
        ):
            raise ValueError("at_least, fewer_than and distinct go with evidence")
        return self


class Escalation(Strict):
    """Raise the strength when a further test holds (e.g. an STI under 13 is strong)."""

    to: Strength
    when: Condition
    reason: str = Field(description="Why, in one neutral sentence, shown in explanations.")


class ContextRule(Strict):
    """A legitimate context that suppresses or downgrades this indicator (brief §1.4)."""

    when: Condition
    effect: Literal["suppress", "downgrade"]
    to: Strength | None = Field(default=None, description="With downgrade: the new strength.")
    keep_info: bool = Field(
        default=False, description="Still show an information card (e.g. separated children)."
    )
    reason: str = Field(
        description="Shown in explanations and the card, e.g. 'A professional "
        "interpreter was present'."
    )

    @model_validator(mode="after")
    def _downgrade_has_target(self) -> ContextRule:
        if self.effect == "downgrade" and self.to is None:
            raise ValueError("effect: downgrade needs `to:` (moderate or contextual)")
        return self


class Source(Strict):
    key: str = Field(pattern=r"^S\d+[a-z]?$", description="Citation key from the domain brief.")
    document: str = Field(description="The document the key stands for.")
    url: str | None = None


class Indicator(Strict):
    """One recognised indicator of possible exploitation, with the tests that find it."""

    id: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$", description="Stable id; never reuse.")
    title: str = Field(max_length=80)
    group: Group = Field(description="Catalogue group A–K of the domain brief.")
    description: str = Field(description="Plain English, 'When … / Then …'.")
    forms: list[Form] = Field(min_length=1)
    strength: Strength
    critical: bool = Field(
        default=False,
        description="An explicit disclosure, a recorded exploitation code or immediate danger: "
        "the card becomes `critical`.",
    )
    sources: list[Source] = Field(min_length=1)
    benign_explanations: list[str] = Field(min_length=1)
    status: Status = "active"
    version: int = Field(ge=1)
    evidence: dict[str, Evidence] = Field(
        default_factory=dict, description="Named evidence selectors used by the tests below."
    )
    fires_when: Condition
    escalate: list[Escalation] = Field(default_factory=list)
    context: list[ContextRule] = Field(default_factory=list)
    near_when: Condition | None = Field(
        default=None, description="Reported by `explain` as a near miss (e.g. 2 of 3 visits)."
    )
    notes: str | None = Field(default=None, description="Code caveats and design choices.")


# --------------------------------------------------------------------------- library


class Count(Strict):
    strength: Strength | None = None
    keep_info: bool | None = None
    at_least: int | None = Field(default=None, ge=1)
    distinct_groups: int | None = Field(default=None, ge=1)


class LevelRule(Strict):
    concern: Concern
    any: list[Count] | None = None
    all: list[Count] | None = None


class Combination(Strict):
    """How the indicators that remain after context rules become a concern level."""

    levels: list[LevelRule] = Field(min_length=1, description="First matching level wins.")
    card_indicator: dict[Concern, Literal["info", "warning", "critical"]] = Field(
        description="Card indicator for each concern; `critical` indicators override."
    )

    @model_validator(mode="after")
    def _every_level_has_a_card_indicator(self) -> Combination:
        missing = sorted({level.concern for level in self.levels} - set(self.card_indicator))
        if missing:
            raise ValueError(
                f"card_indicator has no entry for concern {', '.join(missing)}; give each "
                "concern in `levels` one of info, warning, critical"
            )
        if any(level.any is None and level.all is None for level in self.levels):
            raise ValueError(
                "each level needs `any:` or `all:` (a level with neither matches every record)"
            )
        return self


class LibraryManifest(Strict):
    """`pathways/library.yaml`: identity of the library and its combination rules."""

    id: str
    title: str
    version: str
    publisher: str
    combination: Combination
    evidence: dict[str, Evidence] = Field(
        default_factory=dict, description="Evidence selectors used by `assess_when`."
    )
    assess_when: Condition | None = Field(
        default=None,
        description="Whose records are assessed at all: a paediatric service assesses children "
        "(and anyone whose age is unknown or disputed, who is treated as a child).",
    )
    sources: dict[str, str] = Field(
        default_factory=dict, description="Citation key → document title and URL."
    )


# --------------------------------------------------------------------------- tests


class CaseExpect(Strict):
    fires: list[str] = Field(default_factory=list, description="Indicators that must fire.")
    quiet: list[str] = Field(default_factory=list, description="Indicators that must not fire.")
    concern: Concern | Literal["none"] | None = None
    card_indicator: Literal["info", "warning", "critical", "none"] | None = None


class Case(Strict):
    name: str
    kind: Literal["fires", "quiet", "scenario"]
    today: dt.date = Field(description="The visit date the case is evaluated at.")
    hook: Literal[
        "patient-view", "encounter-start", "encounter-discharge", "order-select", "order-sign"
    ] = "encounter-start"
    encounter: str | None = Field(default=None, description="Id of the current Encounter.")
    resources: list[dict[str, Any]] = Field(description="FHIR R4 resources of the record.")
    draft_orders: list[dict[str, Any]] = Field(default_factory=list)
    expect: CaseExpect
    todo: bool = False


class CaseFile(Strict):
    """`<name>.test.yaml`: cases beside an indicator (or whole-patient scenarios)."""

    indicator: str | None = Field(default=None, description="The indicator these cases test.")
    cases: list[Case] = Field(min_length=1)


Condition.model_rebuild()
