"""Hook behaviours through the HTTP API: discharge, orders and alert fatigue."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .support import example_request

OVERRIDE_SYSTEM = "https://fhir.msht-cds.org/CodeSystem/override-reason"


def call(client: TestClient, hook: str, body: dict[str, Any]) -> dict[str, Any]:
    body = dict(body, hook=hook, hookInstance=str(uuid.uuid4()))
    response = client.post(f"/cds-services/msht-{hook}", content=json.dumps(body))
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def send_feedback(client: TestClient, hook: str, entry: dict[str, Any]) -> None:
    body = {"feedback": [dict(entry, outcomeTimestamp="2026-11-29T10:00:00Z")]}
    response = client.post(f"/cds-services/msht-{hook}/feedback", content=json.dumps(body))
    assert response.status_code == 200


def test_discharge_warns_when_high_concern_has_no_referral(client: TestClient) -> None:
    cards = call(client, "encounter-discharge", example_request())["cards"]
    assert len(cards) == 1
    assert cards[0]["indicator"] == "warning"
    assert "referral" in cards[0]["summary"].lower()


def test_discharge_is_quiet_after_the_referral_was_accepted(client: TestClient) -> None:
    card = call(client, "encounter-start", example_request())["cards"][0]
    referral = card["suggestions"][0]
    send_feedback(
        client,
        "encounter-start",
        {
            "card": card["uuid"],
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": referral["uuid"]}],
        },
    )
    assert call(client, "encounter-discharge", example_request())["cards"] == []


def test_accepting_only_the_coded_concern_is_not_a_referral(client: TestClient) -> None:
    card = call(client, "encounter-start", example_request())["cards"][0]
    coded = card["suggestions"][1]
    send_feedback(
        client,
        "encounter-start",
        {
            "card": card["uuid"],
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": coded["uuid"]}],
        },
    )
    assert len(call(client, "encounter-discharge", example_request())["cards"]) == 1


def test_already_referred_override_downgrades_later_cards(client: TestClient) -> None:
    first = call(client, "encounter-start", example_request())["cards"][0]
    assert first["indicator"] == "warning"
    send_feedback(
        client,
        "encounter-start",
        {
            "card": first["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": {"code": "already-referred", "system": OVERRIDE_SYSTEM}},
        },
    )
    later = call(client, "patient-view", example_request())["cards"][0]
    assert later["indicator"] == "info"
    assert "already referred" in later["detail"]
    assert later["extension"]["msht-cds"]["concern"] == "high"


def test_other_override_reasons_do_not_downgrade(client: TestClient) -> None:
    first = call(client, "encounter-start", example_request())["cards"][0]
    send_feedback(
        client,
        "encounter-start",
        {
            "card": first["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": {"code": "unsafe-to-act-now", "system": OVERRIDE_SYSTEM}},
        },
    )
    assert call(client, "patient-view", example_request())["cards"][0]["indicator"] == "warning"


def draft_order(resource_type: str, ident: str, **coded: Any) -> dict[str, Any]:
    """An order being selected or signed for the example child."""
    return {
        "resourceType": resource_type,
        "id": ident,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/example-child-1"},
        **coded,
    }


def order_request(birth_date: str) -> dict[str, Any]:
    body = example_request()
    body["context"].pop("encounterId")
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    body["prefetch"] = {key: empty for key in body["prefetch"] if key != "encounter"}
    body["prefetch"]["patient"] = {
        "resourceType": "Patient",
        "id": "example-child-1",
        "birthDate": birth_date,
    }
    order = draft_order(
        "ServiceRequest",
        "draft-sti-test",
        code={"coding": [{"system": "http://loinc.org", "code": "92684-0"}]},
    )
    body["context"]["draftOrders"] = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": order}],
    }
    body["context"]["selections"] = ["ServiceRequest/draft-sti-test"]
    return body


def test_sti_test_for_a_child_under_13_gets_an_order_card(client: TestClient) -> None:
    for hook in ("order-select", "order-sign"):
        cards = call(client, hook, order_request("2015-01-01"))["cards"]
        assert len(cards) == 1, hook
        evidence = cards[0]["extension"]["msht-cds"]["indicators"][0]["evidence"]
        assert {"reference": "ServiceRequest/draft-sti-test"}.items() <= evidence[0].items()


def test_sti_test_for_a_17_year_old_is_quiet(client: TestClient) -> None:
    assert call(client, "order-select", order_request("2009-01-01"))["cards"] == []


def test_order_select_speaks_only_of_the_selected_order(client: TestClient) -> None:
    """The card says the order being selected may be an indicator: another draft order in the
    same basket does not make it so."""
    body = order_request("2015-01-01")
    paracetamol = draft_order(
        "MedicationRequest",
        "draft-paracetamol",
        medicationCodeableConcept={"text": "Paracetamol 250 mg/5 ml oral suspension"},
    )
    body["context"]["draftOrders"]["entry"].append({"resource": paracetamol})
    body["context"]["selections"] = ["MedicationRequest/draft-paracetamol"]
    assert call(client, "order-select", body)["cards"] == []
    assert len(call(client, "order-sign", body)["cards"]) == 1  # signing is of every order


@pytest.mark.parametrize("user", ["Patient/example-child-1", "RelatedPerson/adult-1"])
def test_a_patient_or_proxy_user_never_gets_a_card(client: TestClient, user: str) -> None:
    """patient-view may come from a portal used by the child, a parent, or the adult who
    exploits the child: nothing may tell them that the child is being assessed."""
    assert len(call(client, "patient-view", example_request())["cards"]) == 1
    body = example_request()
    body["context"]["userId"] = user
    assert call(client, "patient-view", body) == {"cards": []}
