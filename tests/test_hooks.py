"""Checklist §C, §D, §F, §G and the hook behaviours, through the HTTP API."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from msht_cds.app import create_app
from msht_cds.config import Settings
from msht_cds.service import Knowledge

from .support import (
    SHARED,
    FhirServer,
    assert_outcome,
    example_request,
    load_json,
    local_client,
    walk_no_empty,
)

SERVICE = "/cds-services/msht-encounter-start"


def post(client: TestClient, body: Any, service: str = SERVICE) -> Any:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(service, content=content, headers={"Content-Type": "application/json"})


def allowing(settings: Settings, knowledge: Knowledge, fhir_base: str) -> TestClient:
    """A client of an app that may fetch from `fhir_base` (a loopback FHIR server)."""
    return local_client(
        create_app(settings.model_copy(update={"fhir_allowlist": fhir_base}), knowledge)
    )


# --------------------------------------------------------------------------- §C requests


def test_example_request_returns_a_safeguarding_card(client: TestClient) -> None:
    response = post(client, example_request())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    cards = response.json()["cards"]
    assert len(cards) == 1
    card = cards[0]
    assert card["indicator"] == "warning"
    ext = card["extension"]["msht-cds"]
    assert ext["concern"] == "high"
    ids = {i["id"] for i in ext["indicators"]}
    assert {"ED_REPEAT_MULTI_SITE", "STI_IN_MINOR"} <= ids
    assert response.headers["x-library-version"].startswith(ext["library"]["version"])


def test_malformed_json_is_400(client: TestClient) -> None:
    assert_outcome(post(client, b'{"invalid"'), 400)


@pytest.mark.parametrize("field", ["hook", "hookInstance", "context"])
def test_missing_required_top_level_field_is_400(client: TestClient, field: str) -> None:
    body = example_request()
    del body[field]
    assert_outcome(post(client, body), 400)


@pytest.mark.parametrize("field", ["userId", "patientId", "encounterId"])
def test_missing_required_context_field_is_400(client: TestClient, field: str) -> None:
    body = example_request()
    del body["context"][field]
    assert_outcome(post(client, body), 400)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("userId", "example-clinician"),
        ("userId", "Patient/child"),  # encounter-start users are practitioners
        ("patientId", "Patient/example-child-1"),
        ("encounterId", "Encounter/x"),
    ],
)
def test_context_field_formats(client: TestClient, field: str, value: str) -> None:
    body = example_request()
    body["context"][field] = value
    assert_outcome(post(client, body), 400)


def test_non_uuid_hook_instance_is_400(client: TestClient) -> None:
    body = example_request()
    body["hookInstance"] = "not-a-uuid"
    assert_outcome(post(client, body), 400)


def test_wrong_hook_for_service_is_400(client: TestClient) -> None:
    body = example_request()
    body["hook"] = "patient-view"
    assert_outcome(post(client, body), 400)


def test_unknown_service_is_404_and_get_is_405(client: TestClient) -> None:
    assert_outcome(post(client, example_request(), "/cds-services/nope"), 404)
    assert_outcome(client.get(SERVICE), 405)


def test_fhir_authorization_without_fhir_server_is_400(client: TestClient) -> None:
    body = example_request()
    body["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "x",
    }
    assert_outcome(post(client, body), 400)


def test_spec_extension_example_is_ignored(client: TestClient) -> None:
    """The spec's extension request is a fragment without patientId: 400 as sent; its
    `extension` object merged into a complete request changes nothing."""
    spec = load_json(SHARED / "cds-hooks/spec-2.0.1/request-with-extension.json")
    assert_outcome(post(client, spec, "/cds-services/msht-patient-view"), 400)
    plain = post(client, example_request()).json()
    body = example_request()
    body["extension"] = spec["extension"]
    assert strip_uuids(post(client, body).json()) == strip_uuids(plain)


def test_unknown_fields_and_extensions_are_ignored(client: TestClient) -> None:
    plain = post(client, example_request()).json()
    body = example_request()
    body["extension"] = {"org.example.anything": {"a": 1}}
    body["context"]["somethingNew"] = True
    body["prefetch"]["notOurs"] = {"resourceType": "Patient", "id": "someone-else"}
    body["unexpected"] = [1, 2]
    changed = post(client, body).json()
    assert strip_uuids(changed) == strip_uuids(plain)


def strip_uuids(response: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(response)
    for card in data["cards"]:
        card.pop("uuid")
        for suggestion in card.get("suggestions", []):
            suggestion.pop("uuid")
    return data


def test_same_context_gives_the_same_guidance(client: TestClient) -> None:
    """encounter-start may fire several times: same content, fresh uuids, one card."""
    first = post(client, example_request()).json()
    body = example_request()
    body["hookInstance"] = str(uuid.uuid4())
    second = post(client, body).json()
    assert strip_uuids(first) == strip_uuids(second)
    assert first["cards"][0]["uuid"] != second["cards"][0]["uuid"]


# --------------------------------------------------------------------------- §F prefetch


def test_no_prefetch_and_no_fhir_server_is_412(client: TestClient) -> None:
    body = example_request()
    del body["prefetch"]
    assert_outcome(post(client, body), 412)


def test_prefetch_for_another_patient_is_never_used(client: TestClient) -> None:
    body = example_request()
    body["prefetch"]["patient"]["id"] = "someone-else"
    assert_outcome(post(client, body), 412)


def test_operation_outcome_in_prefetch_is_412_without_refetch(
    settings: Settings, knowledge: Knowledge
) -> None:
    body = example_request()
    with FhirServer([]) as fhir:
        body["fhirServer"] = fhir.base
        body["prefetch"]["conditions"] = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "timeout"}],
        }
        with allowing(settings, knowledge, fhir.base) as c:
            assert_outcome(post(c, body), 412)
        assert fhir.requests == []


@pytest.mark.parametrize(
    "value", [None, {"resourceType": "Bundle", "type": "searchset", "total": 0}]
)
def test_null_and_empty_bundle_mean_no_data_and_no_fetch(
    settings: Settings, knowledge: Knowledge, value: Any
) -> None:
    body = example_request()
    with FhirServer([]) as fhir:
        body["fhirServer"] = fhir.base
        body["prefetch"]["serviceRequests"] = value
        with allowing(settings, knowledge, fhir.base) as c:
            assert post(c, body).status_code == 200
        assert fhir.requests == []


def test_absent_key_is_fetched_with_the_bearer_token(
    settings: Settings, knowledge: Knowledge
) -> None:
    body = example_request()
    conditions = body["prefetch"].pop("conditions")
    token = "opaque-" + uuid.uuid4().hex
    with FhirServer([e["resource"] for e in conditions["entry"]]) as fhir:
        body["fhirServer"] = fhir.base
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "ehr",
            "patient": "example-child-1",
        }
        with allowing(settings, knowledge, fhir.base) as c:
            response = post(c, body)
        assert response.status_code == 200
        ids = {i["id"] for i in response.json()["cards"][0]["extension"]["msht-cds"]["indicators"]}
        assert "STI_IN_MINOR" in ids
        assert fhir.requests == [("/fhir/Condition?patient=example-child-1", f"Bearer {token}")]


def test_next_page_is_followed(settings: Settings, knowledge: Knowledge) -> None:
    body = example_request()
    conditions = body["prefetch"]["conditions"]["entry"]
    body["prefetch"]["conditions"] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    with FhirServer([e["resource"] for e in conditions]) as fhir:
        body["prefetch"]["conditions"]["link"] = [
            {"relation": "next", "url": f"{fhir.base}/Condition?patient=example-child-1"}
        ]
        body["fhirServer"] = fhir.base
        with allowing(settings, knowledge, fhir.base) as c:
            response = post(c, body)
        assert response.status_code == 200
        assert len(fhir.requests) == 1
        ids = {i["id"] for i in response.json()["cards"][0]["extension"]["msht-cds"]["indicators"]}
        assert "STI_IN_MINOR" in ids


def test_fhir_server_not_allowlisted_is_412_without_any_call(client: TestClient) -> None:
    body = example_request()
    del body["prefetch"]["conditions"]
    with FhirServer([]) as fhir:
        body["fhirServer"] = fhir.base
        assert_outcome(post(client, body), 412)
        assert fhir.requests == []


# --------------------------------------------------------------------------- official examples


def _official_requests() -> list[tuple[str, dict[str, Any]]]:
    found = [
        (
            "spec request-patient-view",
            load_json(SHARED / "cds-hooks/spec-2.0.1/request-patient-view.json"),
        )
    ]
    for hook in ("encounter_start", "encounter_discharge", "order_select", "order_sign"):
        found.append(
            (
                f"inferno {hook}",
                load_json(SHARED / f"cds-hooks/inferno-crd-fixtures/{hook}_hook_request.json"),
            )
        )
    for name in (
        "patient-view.context-1",
        "patient-view.context-2",
        "encounter-start.context",
        "encounter-discharge.context",
        "order-select.context.r4",
        "order-sign.context.r4",
    ):
        context = load_json(SHARED / f"cds-hooks/hook-contexts/{name}.json")["context"]
        hook = name.split(".")[0]
        found.append(
            (
                f"library {name}",
                {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context},
            )
        )
    return found


@pytest.mark.parametrize(
    ("name", "body"), _official_requests(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_official_examples_return_200_with_a_valid_response(
    settings: Settings, knowledge: Knowledge, name: str, body: dict[str, Any]
) -> None:
    """Each official example, with its fhirServer pointed at a loopback FHIR server holding a
    synthetic child with that patient id; without such a server the answer is 412."""
    body = copy.deepcopy(body)
    patient_id = body["context"]["patientId"]
    resources = [{"resourceType": "Patient", "id": patient_id, "birthDate": "2014-02-03"}]
    if body["context"].get("encounterId"):
        resources.append(
            {
                "resourceType": "Encounter",
                "id": body["context"]["encounterId"],
                "status": "in-progress",
                "subject": {"reference": f"Patient/{patient_id}"},
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
            }
        )
    service = "/cds-services/msht-" + body["hook"]
    with local_client(create_app(settings, knowledge)) as plain:
        unreachable = post(plain, body, service)
    assert unreachable.status_code in (200, 412), unreachable.text
    with FhirServer(resources) as fhir:
        body["fhirServer"] = fhir.base
        body.pop("prefetch", None) if body["hook"] != "patient-view" else None
        configured = settings.model_copy(update={"fhir_allowlist": fhir.base})
        with local_client(create_app(configured, knowledge)) as c:
            response = post(c, body, service)
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["cards"], list)
    walk_no_empty(response.json())


# --------------------------------------------------------------------------- §G cards


def test_card_obeys_the_card_rules(client: TestClient) -> None:
    data = post(client, example_request()).json()
    walk_no_empty(data)
    assert data["cards"]
    for card in data["cards"]:
        assert len(card["summary"]) < 140
        assert "\n" not in card["summary"]
        assert card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"]
        assert uuid.UUID(card["uuid"]).version == 4
        assert card["selectionBehavior"] in ("at-most-one", "any")
        assert sum(1 for s in card["suggestions"] if s.get("isRecommended")) <= 1
        for suggestion in card["suggestions"]:
            assert suggestion["label"]
            assert suggestion["uuid"]
            assert suggestion["actions"]
            for action in suggestion["actions"]:
                assert action["type"] == "create"
                assert action["description"]
                labels = {(s["system"], s["code"]) for s in action["resource"]["meta"]["security"]}
                assert ("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "V") in labels
        for reason in card["overrideReasons"]:
            assert reason["code"]
            assert reason["system"]
            assert reason["display"]
        for link in card["links"]:
            assert link["type"] == "absolute"
            assert "appContext" not in link
            assert link["url"].startswith(("http://", "https://"))
            assert "example-child-1" not in link["url"]


def test_quiet_record_gives_no_cards(client: TestClient) -> None:
    body = example_request()
    body["prefetch"]["encounters"]["entry"] = body["prefetch"]["encounters"]["entry"][-1:]
    body["prefetch"]["conditions"]["entry"] = []
    body["prefetch"]["relatedPersons"]["entry"] = []
    body["prefetch"]["encounter"].pop("participant")
    body["prefetch"]["encounters"]["entry"][0]["resource"].pop("participant")
    response = post(client, body)
    assert response.status_code == 200
    assert response.json() == {"cards": []}
