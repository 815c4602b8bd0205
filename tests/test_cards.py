"""Cards end to end (record → assessment → referral plan → Card JSON) on a fixed test library.

The production indicator library changes every week, so the snapshots run on
tests/fixtures/snapshot-library (the production combination rules, two copied indicators and
one single-form fixture indicator per form) together with the REAL nation and local pathway
files and the REAL card templates: a change to a step, a phone number or the card wording
shows up as a snapshot diff. Update with `pytest tests/test_cards.py --snapshot-update` and
review the diff of tests/__snapshots__/test_cards.ambr.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

from msht_cds.cards import (
    NEUTRAL_SUMMARY,
    OVERRIDE_SYSTEM,
    SECURITY_LABELS,
    CardTemplates,
    referral_suggestion_uuid,
    safe_summary,
)
from msht_cds.cdshooks import parse_hook_request
from msht_cds.errors import LibraryLoadError
from msht_cds.fhir import validate_r4
from msht_cds.prefetch import PrefetchState
from msht_cds.service import (
    CallSettings,
    History,
    HistoryLookup,
    Knowledge,
    decide,
    load_knowledge,
)

from .support import ROOT

FIXTURE_LIBRARY = Path(__file__).parent / "fixtures" / "snapshot-library"
TODAY = dt.date(2026, 11, 29)
BASE = "https://cds.example.org"
PATIENT = "child-1"
ENCOUNTER = "visit-1"
BIRTH_DATE = "2014-02-01"  # 12 at every fact below
OBSERVATIONS = "https://fhir.msht-cds.org/Questionnaire/consultation-observations"
NATIONS = ("england", "wales", "scotland", "northern_ireland")
FORM_ANSWERS = {
    "labour": "work-signs",
    "criminal": "cannabis-farm-context",
    "domestic_servitude": "restricted-movement-chores",
    "financial": "financial-control",
    "forced_marriage": "marriage-planned",
}
FORMS = ("labour", "criminal", "sexual", "domestic_servitude", "financial", "forced_marriage")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# --------------------------------------------------------------------------- fixtures


def build_library_dir(target: Path) -> Path:
    """The fixed test library plus the real nations/ and local/ pathway files."""
    shutil.copytree(FIXTURE_LIBRARY, target)
    for name in ("nations", "local"):
        shutil.copytree(ROOT / "pathways" / name, target / name)
    return target


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory: pytest.TempPathFactory) -> Knowledge:
    library_dir = build_library_dir(tmp_path_factory.mktemp("snapshot") / "library")
    return load_knowledge(library_dir, ROOT / "cards")


def patient() -> dict[str, Any]:
    return {"resourceType": "Patient", "id": PATIENT, "birthDate": BIRTH_DATE}


def encounter(provider: dict[str, Any] | None = None, eid: str = ENCOUNTER) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": eid,
        "status": "in-progress",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "EMER",
            "display": "emergency",
        },
        "subject": {"reference": f"Patient/{PATIENT}"},
        "period": {"start": "2026-11-29T02:10:00Z"},
    }
    if provider is not None:
        resource["serviceProvider"] = provider
    return resource


def observations(*link_ids: str) -> dict[str, Any]:
    """The clinician's consultation checklist with `yes` for each link id."""
    return {
        "resourceType": "QuestionnaireResponse",
        "id": "observations-1",
        "questionnaire": OBSERVATIONS,
        "status": "completed",
        "subject": {"reference": f"Patient/{PATIENT}"},
        "authored": "2026-11-29T02:30:00Z",
        "item": [{"linkId": link, "answer": [{"valueBoolean": True}]} for link in link_ids],
    }


def sti(onset: str = "2026-10-20") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": "condition-sti-1",
        "subject": {"reference": f"Patient/{PATIENT}"},
        "code": {
            "coding": [
                {
                    "system": "http://snomed.info/sct",
                    "code": "428015005",
                    "display": "Chlamydia trachomatis infection of genital structure",
                }
            ]
        },
        "onsetDateTime": onset,
    }


def fgm_flag() -> dict[str, Any]:
    return {
        "resourceType": "Flag",
        "id": "flag-1",
        "status": "active",
        "subject": {"reference": f"Patient/{PATIENT}"},
        "code": {
            "coding": [
                {"system": "https://fhir.msht-cds.org/CodeSystem/test-fixture", "code": "fgm"}
            ]
        },
        "period": {"start": "2026-11-29"},
    }


def record_for_form(form: str) -> list[dict[str, Any]]:
    """A small synthetic record that makes the fixture library name exactly `form`."""
    evidence = sti() if form == "sexual" else observations(FORM_ANSWERS[form])
    return [patient(), encounter(), evidence]


def call(
    knowledge: Knowledge,
    resources: list[dict[str, Any]],
    *,
    nation: str = "england",
    locality: str | None = None,
    hook: str = "encounter-start",
    draft_orders: list[dict[str, Any]] | None = None,
    history: HistoryLookup = History,
) -> list[dict[str, Any]]:
    """The service's own decision path (`decide`), minus HTTP; returns the cards as JSON."""
    context: dict[str, Any] = {"userId": "Practitioner/clinician-1", "patientId": PATIENT}
    if hook != "patient-view":
        context["encounterId"] = ENCOUNTER
    if hook in ("order-select", "order-sign"):
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in draft_orders or []],
        }
    if hook == "order-select":
        context["selections"] = [f"{r['resourceType']}/{r['id']}" for r in draft_orders or []]
    body = {
        "hookInstance": "00000000-0000-4000-8000-000000000001",
        "hook": hook,
        "context": context,
    }
    request = parse_hook_request(body, hook)
    state = PrefetchState(resources=list(resources))
    decision = decide(
        knowledge, request, state, CallSettings(nation, locality, BASE), TODAY, history
    )
    return [json.loads(c.model_dump_json(exclude_none=True)) for c in decision.response.cards]


def one_card(*args: Any, **kwargs: Any) -> dict[str, Any]:
    cards = call(*args, **kwargs)
    assert len(cards) == 1
    return cards[0]


def normalised(card: dict[str, Any]) -> dict[str, Any]:
    """Cards and suggestions carry fresh UUIDs; everything else must be reproducible."""
    text = UUID.sub("<uuid>", json.dumps(card, ensure_ascii=False))
    return dict(json.loads(text))


def test_the_history_is_read_only_when_a_card_is_built(knowledge: Knowledge) -> None:
    """Most calls build no card; they skip the database read of earlier feedback."""
    reads: list[str] = []

    def lookup() -> History:
        reads.append("read")
        return History()

    assert call(knowledge, [patient(), encounter()], history=lookup) == []
    assert reads == []
    assert len(call(knowledge, record_for_form("sexual"), history=lookup)) == 1
    assert reads == ["read"]


# --------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("nation", NATIONS)
def test_card_for_each_form_and_nation(
    knowledge: Knowledge, snapshot: Any, nation: str, form: str
) -> None:
    card = one_card(knowledge, record_for_form(form), nation=nation)
    assert card["extension"]["msht-cds"]["forms"] == [form]
    assert normalised(card) == snapshot


SCENARIOS: dict[str, dict[str, Any]] = {
    # A hospital with an overlay, chosen by the encounter's service provider (reference id).
    "england-overlay-by-service-provider": {
        "resources": [
            patient(),
            encounter({"reference": "Organization/example-hospital-a"}),
            observations("cannabis-farm-context"),
        ],
    },
    # The same record from a hospital without an overlay: national steps only, no ICTG step.
    "england-no-overlay": {
        "resources": [
            patient(),
            encounter({"reference": "Organization/elsewhere-1"}),
            observations("cannabis-farm-context"),
        ],
    },
    # Scotland overlay chosen by configuration (MSHT_CDS_LOCALITY); it has no named doctor.
    "scotland-overlay-by-locality": {
        "resources": [patient(), encounter(), observations("marriage-planned")],
        "nation": "scotland",
        "locality": "example-health-board",
    },
    # Nothing form-specific: no Forced Marriage Unit step and no form advice.
    "england-no-specific-form": {
        "resources": [patient(), encounter(), observations("adult-speaks-for-child")],
    },
    # Medium concern (moderate + contextual): an info card with the short list of steps.
    "england-medium-concern": {
        "resources": [
            patient(),
            encounter(),
            encounter(eid="visit-0"),
            encounter(eid="visit-00") | {"period": {"start": "2026-06-01"}},
            observations("withdrawn-fearful"),
        ],
    },
    "england-critical": {
        "resources": [patient(), encounter(), observations("immediate-danger")],
    },
    "england-fgm": {"resources": [patient(), encounter(), fgm_flag()]},
    "scotland-fgm": {"resources": [patient(), encounter(), fgm_flag()], "nation": "scotland"},
    "northern-ireland-critical-criminal": {
        "resources": [
            patient(),
            encounter(),
            observations("immediate-danger", "cannabis-farm-context"),
        ],
        "nation": "northern_ireland",
    },
    "wales-discharge": {
        "resources": [patient(), encounter(), observations("work-signs")],
        "nation": "wales",
        "hook": "encounter-discharge",
    },
    "england-order-select-sexual": {
        "resources": [patient(), encounter()],
        "hook": "order-select",
        "draft_orders": [
            {
                "resourceType": "ServiceRequest",
                "id": "draft-sti-test",
                "status": "draft",
                "intent": "order",
                "subject": {"reference": f"Patient/{PATIENT}"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "92684-0"}]},
                "authoredOn": "2026-11-29",
            }
        ],
    },
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_card_scenarios(knowledge: Knowledge, snapshot: Any, name: str) -> None:
    scenario = dict(SCENARIOS[name])
    card = one_card(knowledge, scenario.pop("resources"), **scenario)
    assert normalised(card) == snapshot


def test_overlay_changes_contacts_not_the_national_steps(knowledge: Knowledge) -> None:
    local = one_card(knowledge, SCENARIOS["england-overlay-by-service-provider"]["resources"])
    national = one_card(knowledge, SCENARIOS["england-no-overlay"]["resources"])
    assert "Example General Hospital" in local["detail"]
    assert "01632 960001" in local["detail"]
    assert "Independent Child Trafficking Guardian" in local["detail"]  # ictg_area flag
    assert "Example General Hospital" not in national["detail"]
    assert "Independent Child Trafficking Guardian" not in national["detail"]
    for card in (local, national):
        assert "Refer to children's social care" in card["detail"]
        assert "National Referral Mechanism" in card["detail"]
    assert local["links"][0]["url"] == f"{BASE}/pathways/england?locality=example-general-hospital"
    assert national["links"][0]["url"] == f"{BASE}/pathways/england"


# --------------------------------------------------------------------------- card contract


def all_cards(knowledge: Knowledge) -> list[dict[str, Any]]:
    cards = [one_card(knowledge, record_for_form(f), nation=n) for n in NATIONS for f in FORMS]
    for scenario in SCENARIOS.values():
        scenario = dict(scenario)
        cards.append(one_card(knowledge, scenario.pop("resources"), **scenario))
    return cards


@pytest.fixture(scope="module")
def cards(knowledge: Knowledge) -> list[dict[str, Any]]:
    return all_cards(knowledge)


def test_card_contract(cards: list[dict[str, Any]]) -> None:
    for card in cards:
        assert card["indicator"] in ("critical", "warning", "info")
        ext = card["extension"]["msht-cds"]
        assert set(ext) == {"concern", "forms", "indicators", "library"}
        assert set(ext["library"]) == {"id", "version"}
        for ind in ext["indicators"]:
            assert set(ind) == {"id", "title", "strength", "forms", "evidence"}
            assert all(set(e) == {"reference", "description"} for e in ind["evidence"])


def test_summary_is_short_plain_and_calm(cards: list[dict[str, Any]]) -> None:
    for card in cards:
        summary = card["summary"]
        assert 0 < len(summary) < 140
        assert "\n" not in summary
        assert not re.search(r"traffick|exploit|slave", summary, re.IGNORECASE), summary
        assert not re.search(r"[*_`#\[\]<>]", summary), summary


def test_detail_is_markdown_without_html(cards: list[dict[str, Any]]) -> None:
    md = MarkdownIt("commonmark").enable("table")  # html allowed here so that we can see it
    for card in cards:
        tokens = md.parse(card["detail"])
        kinds = {t.type for t in tokens} | {c.type for t in tokens for c in t.children or []}
        assert not kinds & {"html_block", "html_inline", "image"}, card["detail"]
        assert "What to do now" in card["detail"]


def test_detail_never_suggests_confronting_anyone(cards: list[dict[str, Any]]) -> None:
    for card in cards:
        for match in re.finditer(r"confront", card["detail"], re.IGNORECASE):
            before = card["detail"][max(0, match.start() - 12) : match.start()].lower()
            assert "not " in before or "never " in before, card["detail"]


def test_no_patient_data_in_what_is_shown(cards: list[dict[str, Any]]) -> None:
    """Ids appear only where the contract needs them (suggested resources, evidence refs)."""
    for card in cards:
        shown = {k: v for k, v in card.items() if k not in ("suggestions", "extension")}
        text = json.dumps(shown)
        for secret in (PATIENT, ENCOUNTER, BIRTH_DATE):
            assert secret not in text


def test_links_are_absolute_and_carry_no_patient_data(cards: list[dict[str, Any]]) -> None:
    for card in cards:
        assert card["links"], "every card links the full pathway"
        assert card["links"][0]["label"].startswith("Full referral pathway")
        for link in card["links"]:
            assert link["type"] == "absolute"
            assert "appContext" not in link
            assert re.match(r"^https://[^/\s]+/\S*$", link["url"]), link["url"]
            for secret in (PATIENT, ENCOUNTER, BIRTH_DATE, "Patient", "Encounter"):
                assert secret not in link["url"]
        page = card["links"][0]["url"]
        assert re.fullmatch(
            rf"{re.escape(BASE)}/pathways/(england|wales|scotland|northern_ireland)"
            r"(\?locality=[a-z0-9-]+)?",
            page,
        ), page


def test_forced_marriage_guidance_link_only_for_forced_marriage(knowledge: Knowledge) -> None:
    for form in FORMS:
        card = one_card(knowledge, record_for_form(form))
        labels = [link["label"] for link in card["links"]]
        assert ("HM Government: Forced marriage statutory guidance" in labels) == (
            form == "forced_marriage"
        )


def test_override_reasons_are_coded(cards: list[dict[str, Any]]) -> None:
    for card in cards:
        codes = {r["code"] for r in card["overrideReasons"]}
        assert {"already-referred", "assessed-not-exploitation", "unsafe-to-act-now"} <= codes
        for reason in card["overrideReasons"]:
            assert reason["system"] == OVERRIDE_SYSTEM
            assert reason["code"]
            assert reason["display"]


def test_suggestions_validate_as_fhir_r4(cards: list[dict[str, Any]]) -> None:
    for card in cards:
        assert card["selectionBehavior"] == "any"
        suggestions = card["suggestions"]
        assert [s.get("isRecommended", False) for s in suggestions] == [True, False]
        assert suggestions[0]["uuid"] == referral_suggestion_uuid(card["uuid"])
        resources = [a["resource"] for s in suggestions for a in s["actions"]]
        assert [r["resourceType"] for r in resources] == ["ServiceRequest", "Condition"]
        for suggestion in suggestions:
            assert suggestion["uuid"]
            assert suggestion["actions"]
            for action in suggestion["actions"]:
                assert action["type"] == "create"
                assert action["description"]
                validate_r4(action["resource"])
        for resource in resources:
            assert resource["meta"]["security"] == SECURITY_LABELS
            assert resource["subject"] == {"reference": f"Patient/{PATIENT}"}
            assert resource["encounter"] == {"reference": f"Encounter/{ENCOUNTER}"}
        referral, concern = resources
        assert (referral["status"], referral["intent"]) == ("draft", "proposal")
        assert referral["reasonCode"][0]["coding"][0]["code"] == "836881000000105"
        assert concern["code"]["coding"][0]["code"] == "836881000000105"
        assert concern["verificationStatus"]["coding"][0]["code"] == "provisional"


def test_security_labels_are_very_restricted_and_sdv() -> None:
    assert {(label["system"], label["code"]) for label in SECURITY_LABELS} == {
        ("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "V"),
        ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "SDV"),
    }


def test_validation_rejects_a_broken_suggestion(cards: list[dict[str, Any]]) -> None:
    """The R4 check can fail: a Condition without its required subject is refused."""
    condition = dict(cards[0]["suggestions"][1]["actions"][0]["resource"])
    del condition["subject"]
    with pytest.raises(ValueError, match="subject"):
        validate_r4(condition)


def test_scottish_referral_goes_to_the_local_team(knowledge: Knowledge) -> None:
    card = one_card(
        knowledge, record_for_form("labour"), nation="scotland", locality="example-health-board"
    )
    referral = card["suggestions"][0]["actions"][0]["resource"]
    assert card["suggestions"][0]["label"] == "Refer to the NHS board child protection team"
    assert referral["performerType"] == {"text": "Child Protection Team, Example Health Board"}


# --------------------------------------------------------------------------- templates


def test_templates_reject_alarming_summary_words(tmp_path: Path) -> None:
    cards_dir = tmp_path / "cards"
    shutil.copytree(ROOT / "cards", cards_dir)
    (cards_dir / "order.summary.j2").write_text("Possible trafficking: see the child alone\n")
    with pytest.raises(LibraryLoadError) as caught:
        CardTemplates.load(cards_dir)
    assert [i.code for i in caught.value.issues] == ["unsafe-summary-wording"]
    assert caught.value.issues[0].path.endswith("order.summary.j2")


def test_templates_check_partials_for_unknown_variables(tmp_path: Path) -> None:
    cards_dir = tmp_path / "cards"
    shutil.copytree(ROOT / "cards", cards_dir)
    partial = cards_dir / "_pathway.md.j2"
    partial.write_text(partial.read_text() + "{{ patient_name }}\n")
    with pytest.raises(LibraryLoadError) as caught:
        CardTemplates.load(cards_dir)
    assert [(i.code, Path(i.path).name) for i in caught.value.issues] == [
        ("template-variable", "_pathway.md.j2")
    ]


def test_templates_are_served_from_memory_until_reloaded(tmp_path: Path) -> None:
    """An edit on disk must pass the load checks (a reload) before it is ever rendered."""
    cards_dir = tmp_path / "cards"
    shutil.copytree(ROOT / "cards", cards_dir)
    templates = CardTemplates.load(cards_dir)
    variables = {"concern": "high", "card_indicator": "warning"}
    before = templates.render("assessment", "summary.j2", variables)
    (cards_dir / "assessment.summary.j2").write_text("{{ patient_name }}")
    (cards_dir / "_pathway.md.j2").write_text("{% if %}")
    assert templates.render("assessment", "summary.j2", variables) == before
    with pytest.raises(LibraryLoadError):
        CardTemplates.load(cards_dir)


def test_a_summary_naming_exploitation_is_replaced_by_a_neutral_one() -> None:
    """Defence in depth behind lint: whatever the templates render, no summary shown before the
    card is opened names exploitation."""
    assert safe_summary("Safeguarding: possible criminal exploitation") == NEUTRAL_SUMMARY
    assert safe_summary("Signs of TRAFFICKING") == NEUTRAL_SUMMARY
    calm = "Safeguarding: consider seeing the young person alone and asking"
    assert safe_summary(calm) == calm
