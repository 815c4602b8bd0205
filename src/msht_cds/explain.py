"""Why a card looks the way it does: what fired, what was set aside, and the card itself.

A lead who changes a threshold needs to see its effect before a clinician does. `explain`
evaluates a test case (or a saved hook request) through the same `decide()` the service uses,
with the near-miss tests switched on, and lists every indicator that fired with its evidence,
those suppressed by a context rule and why, those de-duplicated and by which indicator, and
those that nearly fired. `msht-cds explain`, `msht-cds render` and the `/preview` page all use
these functions, so the three never disagree with each other or with production.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup

from .cdshooks import ORDER_HOOKS, Card, HookRequest
from .errors import BadRequestError, LintIssue
from .library.evaluate import Assessment, IndicatorResult
from .library.loader import Library, parse_model
from .library.model import Case, CaseFile
from .library.yamlfile import YamlDocument, read_yaml
from .pages import WEB_TEMPLATES
from .prefetch import PrefetchState
from .service import CallSettings, Decision, Knowledge, decide, decide_offline

PREVIEW_USER = "Practitioner/msht-cds-preview"
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")


@dataclass(frozen=True)
class Explanation:
    name: str
    origin: str
    today: dt.date
    where: CallSettings
    library: Library
    decision: Decision

    @property
    def assessment(self) -> Assessment:
        assert self.decision.assessment is not None
        return self.decision.assessment

    @property
    def card(self) -> Card | None:
        cards = self.decision.response.cards
        return cards[0] if cards else None


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class CaseRef:
    """One case of a `.test.yaml`, and where it is written."""

    doc: YamlDocument
    index: int
    case: Case

    @property
    def file(self) -> str:
        return self.doc.display_path

    @property
    def origin(self) -> str:
        """`file:line` of the case's name, as `msht-cds test` prints it."""
        line, _ = self.doc.position(("cases", self.index, "name"))
        return f"{self.file}:{line}"


def read_cases(library_dir: Path) -> tuple[list[CaseRef], list[LintIssue]]:
    """Every case of every `.test.yaml` under the library, in file order, and the problems
    of files that could not be read. The service loads its library without the cases (they
    are for lint and test), so previews read them from the folder."""
    cases: list[CaseRef] = []
    issues: list[LintIssue] = []
    for path in sorted(library_dir.glob("**/*.test.yaml")):
        doc, problems = read_yaml(path, str(path.relative_to(library_dir.parent)))
        parsed = parse_model(doc, CaseFile) if doc is not None else (None, [])
        issues += problems + parsed[1]
        if doc is not None and parsed[0] is not None:
            cases += [CaseRef(doc, i, case) for i, case in enumerate(parsed[0].cases)]
    return cases, issues


def find_case(cases: list[CaseRef], name: str) -> CaseRef:
    """The case called `name` (exact, else the one case whose name contains it)."""
    exact = [c for c in cases if c.case.name == name]
    partial = [c for c in cases if name.lower() in c.case.name.lower()]
    if exact or len(partial) == 1:
        return (exact or partial)[0]
    hint = "; ".join(c.case.name for c in partial[:5]) or "run `msht-cds test` to list the names"
    raise LookupError(f"no single case named {name!r} ({len(partial)} match): {hint}")


def explain_case(knowledge: Knowledge, origin: str, case: Case, where: CallSettings) -> Explanation:
    """Evaluate a test case exactly as `msht-cds test` builds its record, then build the card
    as the service would for the case's hook."""
    patient = next((r for r in case.resources if r.get("resourceType") == "Patient"), {})
    drafts = None
    if case.draft_orders:
        entries = [{"resource": r} for r in case.draft_orders]
        drafts = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    request = HookRequest(
        hook=case.hook,
        hook_instance=str(uuid.uuid4()),
        user_id=PREVIEW_USER,
        patient_id=str(patient.get("id", "unknown")),
        encounter_id=case.encounter,
        fhir_server=None,
        fhir_authorization=None,
        prefetch={},
        draft_orders=drafts,
        selections=tuple(f"{r.get('resourceType')}/{r.get('id')}" for r in case.draft_orders),
    )
    state = PrefetchState(resources=list(case.resources))
    decision = decide(knowledge, request, state, where, case.today, explain=True)
    return Explanation(case.name, origin, case.today, where, knowledge.library, decision)


def explain_request(
    knowledge: Knowledge, body: Any, origin: str, where: CallSettings, today: dt.date
) -> Explanation:
    """Evaluate a saved CDS Hooks request offline; raises RequestError (412) when its
    prefetch lacks data, since nothing is fetched here."""
    decision = decide_offline(knowledge, body, where, today, tool="explain", explain=True)
    if decision.assessment is None:
        raise BadRequestError(
            f"the request's user is {decision.request.user_id}: cards are never shown to a "
            "patient or a proxy, so nothing is assessed; explain a clinician's request"
        )
    return Explanation(Path(origin).name, origin, today, where, knowledge.library, decision)


# --------------------------------------------------------------------------- reporting


def explanation_dict(expl: Explanation) -> dict[str, Any]:
    """The explanation as JSON-ready data (`--format json`, and the preview page)."""
    assessment, card = expl.assessment, expl.card
    return {
        "scenario": {
            "name": expl.name,
            "origin": expl.origin,
            "hook": expl.decision.request.hook,
            "today": expl.today.isoformat(),
        },
        "library": {
            "id": expl.library.id,
            "version": expl.library.version,
            "revision": expl.library.revision,
        },
        "nation": expl.where.nation,
        "locality": expl.where.locality,
        "fired": [_fired(r) for r in assessment.counted],
        "suppressed": [
            {
                "id": r.indicator.id,
                "title": r.indicator.title,
                "reason": r.context_rule.reason if r.context_rule else "",
                "keep_info": bool(r.context_rule and r.context_rule.keep_info),
            }
            for r in assessment.suppressed
        ],
        "deduplicated": [
            {"id": r.indicator.id, "title": r.indicator.title, "by": r.deduplicated_by}
            for r in assessment.deduplicated
        ],
        "near": [{"id": r.indicator.id, "title": r.indicator.title} for r in assessment.near],
        "concern": assessment.concern,
        "card_indicator": card.indicator if card else None,
        "card": card.model_dump(exclude_none=True) if card else None,
        "no_card_because": None if card else _no_card_reason(expl),
    }


def _fired(result: IndicatorResult) -> dict[str, Any]:
    rule = result.context_rule
    return {
        "id": result.indicator.id,
        "title": result.indicator.title,
        "strength": result.strength,
        "written_strength": result.indicator.strength,
        "escalated_because": list(result.escalated_because),
        "downgraded_because": rule.reason if rule and rule.effect == "downgrade" else None,
        "evidence": [
            {"description": f.description, "reference": f.reference} for f in result.evidence
        ],
    }


def _no_card_reason(expl: Explanation) -> str:
    hook = expl.decision.request.hook
    if expl.assessment.concern is None:
        return "what fired does not reach a concern level in library.yaml `combination`"
    if hook == "encounter-discharge":
        return "discharge cards are shown only for a high concern without a recorded referral"
    if hook in ORDER_HOOKS:
        return "order cards are shown only when an order being placed is itself evidence"
    return "the service returned no card"


def explanation_text(expl: Explanation) -> str:
    """The explanation as plain text for the terminal."""
    data = explanation_dict(expl)
    s, lib = data["scenario"], data["library"]
    out = [
        f"Scenario  {s['name']}",
        f"From      {s['origin']} · hook {s['hook']} · visit {s['today']}",
        f"Library   {lib['id']} {lib['version']} · nation {data['nation']}"
        f" · locality {data['locality'] or '(none)'}",
        "",
        "Fired and counted:",
    ]
    for item in data["fired"]:
        out.append(f"  {item['id']}  [{item['strength']}]  {item['title']}")
        out += [f"    escalated: {reason}" for reason in item["escalated_because"]]
        if item["downgraded_because"]:
            out.append(f"    downgraded: {item['downgraded_because']}")
        out += [f"    - {f['description']}  ({f['reference']})" for f in item["evidence"]]
    sections: list[tuple[str, list[dict[str, Any]], Callable[[dict[str, Any]], str]]] = [
        ("Suppressed by a context rule:", data["suppressed"], lambda i: f"- {i['reason']}"),
        (
            "De-duplicated (same evidence already counted):",
            data["deduplicated"],
            lambda i: f"counted under {i['by']}",
        ),
        ("Near misses (near_when holds, did not fire):", data["near"], lambda i: ""),
    ]
    for title, items, why in sections:
        out += ["", title] + [f"  {i['id']}  {i['title']}  {why(i)}".rstrip() for i in items]
        if not items:
            out.append("  (none)")
    if not data["fired"]:
        out.insert(out.index("Fired and counted:") + 1, "  (none)")
    out += ["", f"Concern   {data['concern'] or 'none'} · card {data['card_indicator'] or 'none'}"]
    card = expl.card
    out.append(f'Card      "{card.summary}"' if card else f"No card: {data['no_card_because']}")
    return "\n".join(out)


def card_markdown(card: Card) -> str:
    """The card as markdown: what an EHR shows, in reading order."""
    out = [f"## {card.summary}", "", f"*Indicator: {card.indicator} · {card.source.label}*", ""]
    if card.detail:
        out += [card.detail, ""]
    if card.suggestions:
        out += ["### Suggestions", ""]
        for s in card.suggestions:
            out.append(
                f"- **{s.label}**{' (recommended)' if s.isRecommended else ''}: "
                + "; ".join(a.description for a in s.actions)
            )
        out.append("")
    if card.links:
        out += ["### Links", "", *(f"- [{link.label}]({link.url})" for link in card.links), ""]
    return "\n".join(out)


def render_markdown(text: str) -> Markup:
    """CommonMark + tables, raw HTML escaped (html=False), unsafe link schemes dropped."""
    return Markup(_MARKDOWN.render(text))  # noqa: S704 - markdown-it escapes all input HTML


def preview_page(
    expl: Explanation | None, form: dict[str, Any] | None = None, notice: str | None = None
) -> str:
    """The HTML preview: the card as an EHR would show it, then the explanation. `form`
    carries the scenario, nation and locality choices for the /preview page."""
    card = expl.card if expl else None
    return WEB_TEMPLATES.get_template("preview.html.j2").render(
        data=explanation_dict(expl) if expl else None,
        card=card,
        detail=render_markdown(card.detail) if card and card.detail else None,
        form=form,
        notice=notice,
    )
