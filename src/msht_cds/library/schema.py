"""JSON Schemas for every YAML file kind, generated from the pydantic models.

Leads edit the library in an editor, not in Python: Red Hat's YAML extension reads the modeline
on line 1 (`# yaml-language-server: $schema=../../schemas/indicator.schema.json`) and then
completes field names, flags typos as you type and shows each field's `description` on hover.
The models stay the single source of truth; this module only adds what JSON Schema can say
and pydantic cannot: hover text for fields the models leave undocumented, and one line per
allowed value (`oneOf: [{const, description}]`) so `strength: moderate` explains itself.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel

from .model import CaseFile, Indicator, LibraryManifest, ValueSet
from .pathway_model import LocalOverlay, NationalPathway
from .yamlfile import MODELINE_PREFIX

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "library": LibraryManifest,
    "valueset": ValueSet,
    "indicator": Indicator,
    "cases": CaseFile,
    "nation": NationalPathway,
    "local": LocalOverlay,
}
TITLES = {
    "library": "msht-cds library manifest (pathways/library.yaml)",
    "valueset": "msht-cds value set (pathways/valuesets/<id>.yaml)",
    "indicator": "msht-cds indicator (pathways/indicators/<name>.yaml)",
    "cases": "msht-cds test cases (<name>.test.yaml)",
    "nation": "msht-cds national referral pathway (pathways/nations/<nation>.yaml)",
    "local": "msht-cds local overlay (pathways/local/<organisation>.yaml)",
}

# Hover text for fields whose model leaves `description` empty ("Model.field"). A description
# written in the model always wins, so these can move into model.py at any time.
FIELD_HELP: dict[str, str] = {
    "AgeRange.under": "Younger than this many completed years (`under: 16` = 15 or younger).",
    "AgeRange.at_least": "This many completed years or older.",
    "Advice.forms": "Extra advice lines shown only when the card names that form.",
    "Case.name": "Unique, readable case name; printed by `msht-cds test` as `name: PASS`.",
    "Case.kind": "What the case shows: a rule firing, a look-alike staying quiet, or both.",
    "Case.hook": "The CDS Hooks hook the case is evaluated for.",
    "Case.expect": "What must happen; anything not listed is not checked.",
    "Case.draft_orders": "Orders being selected or signed (order-select/order-sign hooks).",
    "Case.todo": "true: known gap; reported as TODO and not counted.",
    "CaseExpect.concern": "Expected concern level, or `none` for no card.",
    "CaseExpect.card_indicator": "Expected card indicator, or `none` for no card.",
    "CaseFile.cases": "The cases; every indicator needs at least one `fires` and one `quiet`.",
    "Contact.name": "Team or service name as the clinician would say it.",
    "Contact.phone": "Phone number exactly as dialled, e.g. '0300 123 4567'.",
    "Contact.email": "Secure (nhs.net or equivalent) email address.",
    "Contact.url": "Web page of the service (https).",
    "Contact.note": "One short extra line, e.g. 'ask for the duty social worker'.",
    "ContextRule.when": "The legitimate context, as a test.",
    "ContextRule.effect": "suppress: do not count; downgrade: count at a lower strength.",
    "Count.strength": "Only indicators of this strength count.",
    "Count.keep_info": "Count suppressed indicators that keep an information card.",
    "Count.at_least": "How many indicators are needed (default 1).",
    "Count.distinct_groups": "How many different catalogue groups (A–K) are needed.",
    "Escalation.to": "The stronger strength.",
    "Escalation.when": "The further test that raises the strength.",
    "FieldTest.equals": "The value must equal this.",
    "Indicator.title": "Short neutral title shown on the card (max 80 characters).",
    "Indicator.forms": "Forms of exploitation this indicator may point to.",
    "Indicator.strength": "Weight of the indicator before escalation and context rules.",
    "Indicator.sources": "Where the indicator comes from (at least one citation).",
    "Indicator.benign_explanations": "Innocent explanations a clinician should consider.",
    "Indicator.status": "Only `active` indicators are evaluated.",
    "Indicator.version": "Raise by 1 whenever the meaning changes.",
    "Indicator.fires_when": "The test that makes the indicator fire.",
    "Indicator.escalate": "Tests that raise the strength (first the weakest).",
    "Indicator.context": "Legitimate contexts that suppress or downgrade (first match wins).",
    "LevelRule.concern": "The concern level this rule gives.",
    "LevelRule.any": "At least one count holds.",
    "LevelRule.all": "Every count holds.",
    "LibraryManifest.id": "Stable id of the library, shown on every card.",
    "LibraryManifest.title": "Human title of the library.",
    "LibraryManifest.version": 'Release version (quoted), e.g. "2026.11.0"; shown on cards.',
    "LibraryManifest.publisher": "Who maintains the library.",
    "LibraryManifest.combination": "How indicators that fired become a concern level.",
    "Link.label": "Link text shown on the card.",
    "Link.url": "https:// address; EHRs may drop links not registered with them.",
    "LocalOverlay.id": "Stable id used as `MSHT_CDS_LOCALITY` and in page links.",
    "LocalOverlay.nation": "The national pathway this hospital follows.",
    "NationalPathway.id": "The nation; selects this pathway.",
    "NationalPathway.title": "Name shown on cards and the pathway page.",
    "NationalPathway.version": "Version of the pathway content (quoted).",
    "NationalPathway.steps": "Referral steps in order; each shown when its `when` holds.",
    "NationalPathway.advice": "How to talk with the young person.",
    "NationalPathway.links": "National guidance linked from every card.",
    "NationalPathway.sources": "Citation keys for the whole pathway.",
    "Reference.title": "Title of the cited document.",
    "Reference.url": "Where the document can be read.",
    "Source.url": "Where the document can be read.",
    "Step.id": "Stable id, used as the page anchor `#step-<id>`.",
    "Step.title": "Short imperative title, e.g. 'Refer to children's social care'.",
    "Step.when": "When the step applies; leave out to always show it.",
    "Step.contacts": "National contacts shown with the step.",
    "ValueSet.title": "Human title of the value set.",
    "ValueSet.description": "What the codes mean together and how they were checked.",
    "ValueSet.codes": "The codes; a rule matches when the record has any of them.",
}
_GROUPS = (
    "Presentation, accompaniment and communication",
    "Health-service-use patterns",
    "Social and situational",
    "Sexual and reproductive health",
    "Injury and physical presentations",
    "Mental health and substance use",
    "Criminal exploitation / County Lines",
    "Forced marriage",
    "Financial exploitation",
    "Directly recorded or coded indicators",
    "Contextual vulnerability factors (never alert on these alone)",
)
_CARD = {
    "info": "Blue information card in the sidebar.",
    "warning": "Amber warning card.",
    "critical": "Red card; Oracle Health shows it as a pop-up, so use sparingly.",
}
_CONCERN = {
    "high": "Refer today: strong indicator, or moderate ones from two groups.",
    "medium": "Ask and consider referring: moderate with contextual indicators.",
    "low": "Information only (e.g. a suppressed indicator that keeps a card).",
}
ENUM_HELP: list[dict[str, str]] = [
    {
        "labour": "Labour exploitation: forced or unpaid work.",
        "criminal": "Criminal exploitation, e.g. County Lines drug running.",
        "sexual": "Child sexual exploitation.",
        "domestic_servitude": "Domestic servitude: kept for household work.",
        "financial": "Financial exploitation: benefits, debts or earnings taken.",
        "forced_marriage": "Forced marriage.",
    },
    {
        "strong": "Alone enough for a high concern.",
        "moderate": "High concern with a moderate one from another group.",
        "contextual": "Vulnerability only; raises concern with others, never alone.",
    },
    _CONCERN,
    _CONCERN | {"none": "No concern: no card is shown."},
    _CARD,
    _CARD | {"none": "No card."},
    {
        "verified": "✔ seen in a cited source.",
        "third_party": "≈ seen only on a code-lookup site.",
        "unverified": "✘ not found in any source; never rely on it alone.",
    },
    {
        "draft": "Being written; not evaluated.",
        "active": "Evaluated for every hook call.",
        "retired": "No longer evaluated; keep the file for history.",
    },
    {chr(ord("A") + i): f"Group {chr(ord('A') + i)}: {t}." for i, t in enumerate(_GROUPS)},
    {
        "suppress": "Do not count the indicator (it may keep an information card).",
        "downgrade": "Count it at the lower strength given in `to`.",
    },
    {
        "fires": "The indicator must fire (a positive case).",
        "quiet": "A look-alike that must not fire (a negative case).",
        "scenario": "A whole-patient story checking concern and card.",
    },
    {
        "patient-view": "The record is opened.",
        "encounter-start": "A visit starts (default).",
        "encounter-discharge": "The child is about to be discharged.",
        "order-select": "An order is selected.",
        "order-sign": "Orders are signed.",
    },
    {
        "england": "England (Working Together to Safeguard Children).",
        "wales": "Wales (Wales Safeguarding Procedures).",
        "scotland": "Scotland (National Guidance for Child Protection).",
        "northern_ireland": "Northern Ireland (SBNI procedures).",
    },
    {
        "safeguarding_team": "The hospital safeguarding children team.",
        "named_doctor": "The named doctor for safeguarding children.",
        "named_nurse": "The named nurse for safeguarding children.",
        "mash": "Children's social care front door (MASH or local equivalent).",
        "out_of_hours": "Out-of-hours social care or on-call safeguarding contact.",
    },
]
CONST_HELP = {
    "none": "None expected: no card is shown.",
    "ictg_area": "An Independent Child Trafficking Guardian service covers this hospital.",
}


def build_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one file kind, documented for editor hover and completion."""
    model = SCHEMA_MODELS[kind]
    raw = model.model_json_schema(by_alias=True)
    defs: dict[str, Any] = raw.get("$defs", {})
    for name, node in [(model.__name__, raw), *defs.items()]:
        for field, prop in node.get("properties", {}).items():
            help_text = FIELD_HELP.get(f"{name}.{field}")
            if "description" not in prop and help_text:
                prop["description"] = help_text
    _document_enums(raw)
    raw.pop("title", None)
    return {"$schema": DRAFT, "title": TITLES[kind], **raw}


def _document_enums(node: Any) -> None:
    """Replace `enum` lists that have help text with `oneOf: [{const, description}]`."""
    if isinstance(node, list):
        for item in node:
            _document_enums(item)
        return
    if not isinstance(node, dict):
        return
    values = node.get("enum")
    if isinstance(values, list):
        docs = next((d for d in ENUM_HELP if set(d) == set(values)), None)
        if docs is not None:
            del node["enum"]
            node["oneOf"] = [{"const": v, "description": docs[v]} for v in values]
    if node.get("const") in CONST_HELP and "description" not in node:
        node["description"] = CONST_HELP[node["const"]]
    for value in node.values():
        _document_enums(value)


def render_schema(kind: str) -> str:
    return json.dumps(build_schema(kind), indent=2, ensure_ascii=False) + "\n"


def write_schemas(out_dir: Path) -> list[Path]:
    """Write every `<kind>.schema.json`; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in SCHEMA_MODELS:
        path = out_dir / schema_file(kind)
        path.write_text(render_schema(kind), encoding="utf-8")
        written.append(path)
    return written


def stale_schemas(out_dir: Path) -> list[Path]:
    """Schema files that are missing or differ from what the models generate now."""
    stale = []
    for kind in SCHEMA_MODELS:
        path = out_dir / schema_file(kind)
        if not path.is_file() or path.read_text(encoding="utf-8") != render_schema(kind):
            stale.append(path)
    return stale


def schema_file(kind: str) -> str:
    return f"{kind}.schema.json"


def kind_of(relative: PurePosixPath) -> str | None:
    """Which kind of file the loader reads at this path inside the library, if any."""
    parts = relative.parts
    if relative.suffix != ".yaml":
        return None
    if relative.name.endswith(".test.yaml"):
        return "cases"
    if parts == ("library.yaml",):
        return "library"
    if parts[0] == "indicators":
        return "indicator"
    folders = {"valuesets": "valueset", "nations": "nation", "local": "local"}
    if len(parts) == 2 and parts[0] in folders:
        return folders[parts[0]]
    return None


def expected_modeline(library_root: Path, path: Path, kind: str) -> str:
    """Line 1 for `path`: the schema path relative to the file (schemas/ beside pathways/)."""
    schema = library_root.resolve().parent / "schemas" / schema_file(kind)
    relative = os.path.relpath(schema, path.resolve().parent)
    return MODELINE_PREFIX + PurePosixPath(*Path(relative).parts).as_posix()


@cache
def schema_branches(kind: str, parts: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    """The schema node(s) at a pydantic `loc` path, `$ref`s resolved and `anyOf` spread."""
    schema = build_schema(kind)
    defs: dict[str, Any] = schema.get("$defs", {})

    def resolve(node: Any) -> dict[str, Any]:
        ref = node.get("$ref") if isinstance(node, dict) else None
        return defs.get(ref.rsplit("/", 1)[-1], {}) if ref else (node or {})

    def branches(node: Any) -> tuple[dict[str, Any], ...]:
        node = resolve(node)
        return (node, *(resolve(b) for b in node.get("anyOf", [])))

    node: Any = schema
    for part in parts:
        step = None
        for branch in branches(node):
            if part.isdigit() and "items" in branch:
                step = branch["items"]
            elif part in branch.get("properties", {}):
                step = branch["properties"][part]
            elif isinstance(branch.get("additionalProperties"), dict):
                step = branch["additionalProperties"]
            if step is not None:
                break
        if step is None:
            return ()
        node = step
    return branches(node)


def fields_at(kind: str, parts: tuple[str, ...]) -> frozenset[str]:
    """Field names the schema allows under `parts`, for "did you mean" hints."""
    return frozenset(p for b in schema_branches(kind, parts) for p in b.get("properties", {}))


def value_help(kind: str, parts: tuple[str, ...]) -> str | None:
    """What may be written at `parts`: the allowed values and their meaning, else the
    field's description."""
    nodes = schema_branches(kind, parts)
    choices = [o for b in nodes for o in b.get("oneOf", []) if "const" in o]
    if choices:
        return (
            "Allowed: "
            + "; ".join(f"`{o['const']}` ({o.get('description', '').rstrip('.')})" for o in choices)
            + "."
        )
    return next((str(b["description"]) for b in nodes if b.get("description")), None)
