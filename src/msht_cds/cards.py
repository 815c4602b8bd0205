"""Build CDS Hooks cards: pydantic models for structure, sandboxed Jinja only for the prose.

Templates in `cards/` are edited by safeguarding leads. They render `summary` (plain text,
< 140 characters) and `detail` (GitHub-flavoured markdown) and nothing else; StrictUndefined
turns a misspelt variable into a load-time error instead of an empty sentence.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import BaseLoader, DictLoader, FileSystemLoader, StrictUndefined, TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .cdshooks import Action, Card, Coding, Link, Source, Suggestion
from .errors import LibraryLoadError, LintIssue
from .library.evaluate import Assessment, IndicatorResult
from .library.loader import Library
from .referral import ReferralPlan

CARD_KINDS = ("assessment", "discharge", "order")
TEMPLATE_VARIABLES: dict[str, frozenset[str]] = {
    kind: frozenset(
        {
            "concern",
            "card_indicator",
            "forms",
            "form_labels",
            "indicators",
            "suppressed",
            "steps",
            "advice",
            "form_advice",
            "organisation",
            "pathway_title",
            "earlier_decision",
            "library",
            "page_url",
            "contacts",
        }
    )
    for kind in CARD_KINDS
}
FORM_LABELS = {
    "labour": "labour exploitation",
    "criminal": "criminal exploitation",
    "sexual": "sexual exploitation",
    "domestic_servitude": "domestic servitude",
    "financial": "financial exploitation",
    "forced_marriage": "forced marriage",
}
UNSAFE_SUMMARY_WORDS = re.compile(r"traffick|exploit|slave", re.IGNORECASE)
"""Words an adult glancing at the screen must not see in a summary (domain brief §4.5.4)."""
EXTENSION_KEY = "msht-cds"
OVERRIDE_SYSTEM = "https://fhir.msht-cds.org/CodeSystem/override-reason"
OVERRIDE_REASONS = (
    ("already-referred", "Already referred to the safeguarding team"),
    ("assessed-not-exploitation", "Assessed: not exploitation"),
    ("unsafe-to-act-now", "Unsafe to act now - adult present; will act later"),
    ("known-to-social-care", "Known to children's social care; allocated worker informed"),
    ("information-incorrect", "Information on the card is incorrect"),
)
ALREADY_REFERRED = "already-referred"
SECURITY_LABELS = [
    {
        "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
        "code": "V",
        "display": "very restricted",
    },
    {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "SDV",
        "display": "sexual assault, abuse, or domestic violence information sensitivity",
    },
]
SAFEGUARDING_CONCERN = {
    "system": "http://snomed.info/sct",
    "code": "836881000000105",
    "display": "Child is cause for safeguarding concern",
}


def _sandbox(loader: BaseLoader) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        loader=loader,
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def template_environment(cards_dir: Path) -> ImmutableSandboxedEnvironment:
    """Templates read from disk on use: for lint and previews, never for serving."""
    return _sandbox(FileSystemLoader(str(cards_dir)))


@dataclass
class CardTemplates:
    """The loaded `cards/` folder: `<kind>.summary.j2` and `<kind>.detail.md.j2` per kind, plus
    shared partials `_<name>.md.j2` that detail templates `{% include %}`.

    The text is read once and served from memory, so an edit on disk takes effect only when a
    reload has checked it; a broken edit never replaces the templates being served."""

    env: ImmutableSandboxedEnvironment

    @classmethod
    def load(cls, cards_dir: Path) -> CardTemplates:
        sources: dict[str, str] = {}
        issues = []
        for path in sorted(cards_dir.glob("*.j2")):
            try:
                sources[path.name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeError) as exc:
                reason = "is not UTF-8 text" if isinstance(exc, UnicodeError) else "cannot be read"
                message = f"{path.name} {reason}; save it as UTF-8 ({type(exc).__name__})"
                issues.append(LintIssue(str(path), 1, 1, "template-syntax", message))
        env = _sandbox(DictLoader(sources))
        for kind in CARD_KINDS:
            for part in ("summary.j2", "detail.md.j2"):
                name = f"{kind}.{part}"
                path = cards_dir / name
                if name not in sources:
                    issues.append(
                        LintIssue(
                            str(path),
                            1,
                            1,
                            "unknown-template",
                            f"template {name} is missing from {cards_dir}",
                        )
                    )
                    continue
                issues.extend(check_template(env, path, sources[name], TEMPLATE_VARIABLES[kind]))
                if part == "summary.j2":
                    issues.extend(check_summary_wording(path, sources[name]))
        # Partials (`_name.md.j2`) are included by several kinds: only shared variables.
        shared = frozenset.intersection(*TEMPLATE_VARIABLES.values())
        for name in (n for n in sources if n.startswith("_")):
            issues.extend(check_template(env, cards_dir / name, sources[name], shared))
        if issues:
            raise LibraryLoadError(issues)
        for name in sources:  # compiled here, at load, not on the first hook call
            env.get_template(name)
        return cls(env)

    def render(self, kind: str, part: str, variables: dict[str, Any]) -> str:
        return self.env.get_template(f"{kind}.{part}").render(**variables).strip()


def check_template(
    env: ImmutableSandboxedEnvironment, path: Path, source: str, provided: frozenset[str]
) -> list[LintIssue]:
    try:
        # Finding the variables compiles the template: an unknown filter is found here too.
        unknown = sorted(meta.find_undeclared_variables(env.parse(source)) - provided)
    except TemplateError as exc:
        line = getattr(exc, "lineno", 1) or 1
        message = exc.message or type(exc).__name__
        return [LintIssue(str(path), line, 1, "template-syntax", message)]
    return [
        LintIssue(
            str(path),
            _line_of(source, var),
            1,
            "template-variable",
            f"`{var}` is not provided to card templates; available: {', '.join(sorted(provided))}",
        )
        for var in unknown
    ]


NEUTRAL_SUMMARY = "Safeguarding information for this visit"


def safe_summary(text: str) -> str:
    """Lint renders the summaries of every situation it can foresee; should a combination it
    did not foresee still name exploitation, the card shows a neutral summary instead."""
    return NEUTRAL_SUMMARY if UNSAFE_SUMMARY_WORDS.search(text) else text


def check_summary_wording(path: Path, source: str) -> list[LintIssue]:
    """The summary is visible before the card is opened, so it must stay calm and neutral."""
    return [
        LintIssue(
            str(path),
            number,
            match.start() + 1,
            "unsafe-summary-wording",
            f"`{match.group(0)}…` must not appear in a summary: an accompanying adult may "
            "see the screen. Keep it neutral (e.g. 'Safeguarding: consider seeing the "
            "young person alone') and put detail in detail.md.j2.",
        )
        for number, line in enumerate(source.splitlines(), 1)
        for match in UNSAFE_SUMMARY_WORDS.finditer(line)
    ]


def _line_of(source: str, var: str) -> int:
    for number, line in enumerate(source.splitlines(), 1):
        if var in line:
            return number
    return 1


# --------------------------------------------------------------------------- building


def _indicator_payload(result: IndicatorResult) -> dict[str, Any]:
    ind = result.indicator
    return {
        "id": ind.id,
        "title": ind.title,
        "strength": result.strength,
        "forms": list(ind.forms),
        "evidence": [
            {"reference": f.reference, "description": f.description} for f in result.evidence
        ],
    }


def template_variables(
    assessment: Assessment,
    plan: ReferralPlan,
    library: Library,
    page_url: str,
    earlier_decision: str | None = None,
) -> dict[str, Any]:
    """Everything a card template may use; TEMPLATE_VARIABLES lists the same names."""
    return {
        "concern": assessment.concern,
        "card_indicator": assessment.card_indicator,
        "forms": assessment.forms,
        "form_labels": [FORM_LABELS[f] for f in assessment.forms],
        "indicators": [
            _indicator_payload(r) | {"escalated_because": r.escalated_because}
            for r in assessment.counted
        ],
        # Every fired indicator a context rule matched (suppress or downgrade), with its reason.
        "suppressed": [
            {"title": r.indicator.title, "reason": r.context_rule.reason}
            for r in assessment.results
            if r.fired and r.context_rule is not None
        ],
        "steps": [
            {
                "id": s.step.id,
                "title": s.step.title,
                "action": s.step.action,
                "contacts": [c.model_dump() for c in s.contacts],
            }
            for s in plan.steps
        ],
        "contacts": [c.model_dump() for c in plan.contacts],
        "advice": plan.advice,
        "form_advice": {FORM_LABELS[f]: lines for f, lines in plan.form_advice.items()},
        "organisation": plan.overlay.organisation if plan.overlay else None,
        "pathway_title": plan.pathway.title,
        "earlier_decision": earlier_decision,
        "library": {"id": library.id, "version": library.version},
        "page_url": page_url,
    }


def _labelled(resource: dict[str, Any]) -> dict[str, Any]:
    resource["meta"] = {"security": [dict(label) for label in SECURITY_LABELS]}
    return resource


REFERRAL_NAMESPACE = uuid.UUID("6f1d3c1e-8d0a-4c53-9a51-3c1f0e0b7a21")


def referral_suggestion_uuid(card_uuid: str) -> str:
    """Derived from the card, so feedback that accepts it can be recognised as a referral."""
    return str(uuid.uuid5(REFERRAL_NAMESPACE, card_uuid))


def suggestions_for(
    card_uuid: str, patient_id: str, encounter_id: str | None, plan: ReferralPlan
) -> list[Suggestion]:
    """A referral to the in-hospital safeguarding team and a coded concern, both labelled so
    that patient and proxy portals do not show them (v3-Confidentiality V + SDV, brief §4.5.3).

    The referral goes to the hospital's own team, never to social care or the police directly:
    those referrals need a conversation, not a button."""
    subject = {"reference": f"Patient/{patient_id}"}
    encounter = {"encounter": {"reference": f"Encounter/{encounter_id}"}} if encounter_id else {}
    team = plan.pathway.internal_team
    referral = _labelled(
        {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://snomed.info/sct",
                            "code": "3457005",
                            "display": "Patient referral",
                        }
                    ]
                }
            ],
            "code": {"text": f"Referral to the {team}"},
            "subject": subject,
            **encounter,
            "performerType": {"text": plan.team},
            "reasonCode": [{"coding": [dict(SAFEGUARDING_CONCERN)]}],
        }
    )
    concern = _labelled(
        {
            "resourceType": "Condition",
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active",
                    }
                ]
            },
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": "provisional",
                    }
                ]
            },
            "code": {"coding": [dict(SAFEGUARDING_CONCERN)]},
            "subject": subject,
            **encounter,
        }
    )
    return [
        Suggestion(
            label=f"Refer to the {team}",
            uuid=referral_suggestion_uuid(card_uuid),
            isRecommended=True,
            actions=[
                Action(
                    type="create",
                    description=f"Draft a confidential referral to the {team}",
                    resource=referral,
                )
            ],
        ),
        Suggestion(
            label="Record 'Child is cause for safeguarding concern' (confidential)",
            uuid=str(uuid.uuid4()),
            actions=[
                Action(
                    type="create",
                    description="Add a confidential coded safeguarding "
                    "concern (SNOMED CT 836881000000105)",
                    resource=concern,
                )
            ],
        ),
    ]


def override_reasons() -> list[Coding]:
    """Coded reasons (code, system and display: spec §Reasons for rejecting a card), so that
    'already referred' can quieten later cards for the same child."""
    return [Coding(system=OVERRIDE_SYSTEM, code=c, display=d) for c, d in OVERRIDE_REASONS]


def build_card(
    *,
    kind: str,
    templates: CardTemplates,
    library: Library,
    assessment: Assessment,
    plan: ReferralPlan,
    indicator: str,
    patient_id: str,
    encounter_id: str | None,
    page_url: str,
    earlier_decision: str | None = None,
) -> Card:
    """One card: prose from the templates, structure (links, actions, extension) from code."""
    variables = template_variables(assessment, plan, library, page_url, earlier_decision)
    links = [
        Link(label=f"Full referral pathway: {plan.pathway.title}", url=page_url, type="absolute")
    ]
    links += [Link(label=link.label, url=link.url, type="absolute") for link in plan.links]
    card_uuid = str(uuid.uuid4())
    suggestions = suggestions_for(card_uuid, patient_id, encounter_id, plan)
    return Card(
        uuid=card_uuid,
        summary=safe_summary(templates.render(kind, "summary.j2", variables).replace("\n", " ")),
        detail=templates.render(kind, "detail.md.j2", variables),
        indicator=indicator,
        source=Source(
            label=f"msht-cds safeguarding library {library.version}",
            topic=Coding(
                system="https://fhir.msht-cds.org/CodeSystem/card-topic",
                code="child-safeguarding",
                display="Child safeguarding",
            ),
        ),
        suggestions=suggestions,
        selectionBehavior="any" if suggestions else None,
        overrideReasons=override_reasons(),
        links=links,
        extension={
            EXTENSION_KEY: {
                "concern": assessment.concern,
                "forms": list(assessment.forms),
                "indicators": [_indicator_payload(r) for r in assessment.counted],
                "library": {"id": library.id, "version": library.version},
            }
        },
    )
