"""Checklist §J: feedback, stored durably and idempotently, joined to its card."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from msht_cds.config import Settings

from .support import SHARED, example_request, load_json

SERVICE = "/cds-services/msht-encounter-start"


def issue_card(client: TestClient) -> dict[str, Any]:
    response = client.post(SERVICE, content=json.dumps(example_request()))
    card: dict[str, Any] = response.json()["cards"][0]
    return card


def feedback_rows(settings: Settings) -> list[Any]:
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as connection:
        rows = list(
            connection.execute(sa.text("SELECT card_uuid, outcome, patient_key FROM feedback"))
        )
    engine.dispose()
    return rows


def test_spec_feedback_examples_are_accepted_and_stored(
    client: TestClient, settings: Settings
) -> None:
    card = issue_card(client)
    suggestion = card["suggestions"][0]["uuid"]
    for name in ("feedback-accepted", "feedback-overridden", "feedback-overridden-with-reason"):
        body = load_json(SHARED / f"cds-hooks/spec-2.0.1/{name}.json")
        for entry in body["feedback"]:
            entry["card"] = card["uuid"]
            if entry.get("acceptedSuggestions"):
                entry["acceptedSuggestions"] = [{"id": suggestion}]
        response = client.post(f"{SERVICE}/feedback", content=json.dumps(body))
        assert response.status_code == 200, response.text
        assert response.json() == {}
    rows = feedback_rows(settings)
    assert len(rows) == 3
    assert all(row.card_uuid == card["uuid"] and row.patient_key for row in rows)
    assert all("example-child-1" not in str(row.patient_key) for row in rows)


def test_repeated_feedback_is_idempotent(client: TestClient, settings: Settings) -> None:
    card = issue_card(client)
    body = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-29T10:00:00Z",
            }
        ]
    }
    for _ in range(2):
        assert client.post(f"{SERVICE}/feedback", content=json.dumps(body)).status_code == 200
    assert len(feedback_rows(settings)) == 1


def test_sandbox_shapes_are_tolerated(client: TestClient) -> None:
    card = issue_card(client)
    body = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {
                        "code": "already-referred",
                        "system": "https://fhir.msht-cds.org/CodeSystem/override-reason",
                    }
                },
                "outcomeTimestamp": "2026-11-29T10:00:00.52Z",
            }
        ]
    }
    assert client.post(f"{SERVICE}/feedback", content=json.dumps(body)).status_code == 200


def test_unknown_card_is_accepted_without_leaking(client: TestClient, settings: Settings) -> None:
    body = {
        "feedback": [
            {
                "card": "00000000-0000-4000-8000-000000000000",
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-29T10:00:00Z",
            }
        ]
    }
    response = client.post(f"{SERVICE}/feedback", content=json.dumps(body))
    assert response.status_code == 200
    assert response.json() == {}
    assert feedback_rows(settings)[0].patient_key is None


NOW = "2026-11-29T10:00:00Z"


def test_invalid_feedback_is_400(client: TestClient) -> None:
    bad_bodies: list[Any] = [
        b"not json",
        {"feedback": {"card": "x"}},
        {
            "feedback": [
                {"card": "x", "outcome": "ignored", "outcomeTimestamp": "2026-11-29T10:00:00Z"}
            ]
        },
        {
            "feedback": [
                {"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-11-29T10:00:00Z"}
            ]
        },
        {"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]},
        {"feedback": [{"card": "x", "outcome": "overridden"}]},
        # Well formed but impossible: 30 February, hour 24, year 0, past year 9999 in UTC.
        *(
            {"feedback": [{"card": "x", "outcome": "overridden", "outcomeTimestamp": when}]}
            for when in (
                "2024-02-30T10:00:00Z",
                "2024-01-01T24:00:00Z",
                "0000-01-01T00:00:00Z",
                "9999-12-31T23:59:59-01:00",
            )
        ),
        # What a database column cannot hold: too long, or a NUL.
        *(
            {
                "feedback": [
                    {"card": card, "outcome": "overridden", "outcomeTimestamp": NOW}
                    | ({"overrideReason": {"reason": reason}} if reason else {})
                ]
            }
            for card, reason in (
                ("c" * 65, None),
                ("card\u0000", None),
                ("x", {"code": "r" * 256, "system": "https://example.org"}),
                ("x", {"code": "already-referred", "system": "s\u0000"}),
            )
        ),
    ]
    for body in bad_bodies:
        content = body if isinstance(body, bytes) else json.dumps(body)
        response = client.post(f"{SERVICE}/feedback", content=content)
        assert response.status_code == 400, body
        assert response.json()["resourceType"] == "OperationOutcome"


def test_feedback_for_unknown_service_is_404(client: TestClient) -> None:
    response = client.post("/cds-services/nope/feedback", content=b'{"feedback": []}')
    assert response.status_code == 404
