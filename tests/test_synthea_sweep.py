"""Every real Synthea record through patient-view: never a 5xx, and quiet on ordinary
children (no `warning` or `critical` card)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from msht_cds.app import create_app
from msht_cds.config import Settings

from .support import local_client
from .synthea import child_today, synthea_files

FILES = synthea_files()


def patient_view(client: TestClient, patient_id: str, resources: list[dict[str, Any]]) -> Any:
    templates = client.get("/cds-services").json()["services"][0]["prefetch"]
    prefetch: dict[str, Any] = {
        key: {"resourceType": "Bundle", "type": "searchset", "entry": []}
        for key in templates
        if key != "patient"
    }
    for resource in resources:
        kind = resource["resourceType"]
        if kind == "Patient":
            prefetch["patient"] = resource
            continue
        key = kind[0].lower() + kind[1:] + "s"
        if key in prefetch:
            prefetch[key]["entry"].append({"resource": resource})
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
        "prefetch": prefetch,
    }
    return client.post("/cds-services/msht-patient-view", content=json.dumps(body))


@pytest.fixture(scope="module")
def sweep_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One app for the whole sweep: each record is an independent call."""
    folder = tmp_path_factory.mktemp("sweep")
    settings = Settings(
        auth="off", database_url=f"sqlite:///{folder / 'db.sqlite'}", reload_interval_seconds=0
    )
    with local_client(create_app(settings)) as client:
        yield client


def test_there_are_synthea_records() -> None:
    assert len(FILES) >= 30


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name.split("_")[0])
def test_synthea_record_as_a_child_today(sweep_client: TestClient, path: Path) -> None:
    patient_id, resources = child_today(path, dt.date.today())
    response = patient_view(sweep_client, patient_id, resources)
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    for card in cards:
        # No ordinary Synthea child may get a warning or critical card.
        assert card["indicator"] == "info", card["extension"]["msht-cds"]
