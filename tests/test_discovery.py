"""Checklist §B (discovery) and §E (prefetch templates derived from the library)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from fastapi.testclient import TestClient

from msht_cds.app import create_app
from msht_cds.config import Settings
from msht_cds.service import SERVICE_IDS

from .support import ROOT, local_client, walk_no_empty

ALLOWED_TOKENS = {
    "patient-view": {"context.userId", "context.patientId", "context.encounterId"},
    "encounter-start": {"context.userId", "context.patientId", "context.encounterId"},
    "encounter-discharge": {"context.userId", "context.patientId", "context.encounterId"},
    "order-select": {"context.userId", "context.patientId", "context.encounterId"},
    "order-sign": {"context.userId", "context.patientId", "context.encounterId"},
}
USER_TOKENS = {
    "userPractitionerId",
    "userPractitionerRoleId",
    "userPatientId",
    "userRelatedPersonId",
}
ALLOWED_PARAMS = {
    "patient",
    "subject",
    "encounter",
    "_count",
    "_sort",
    "code",
    "date",
    "status",
    "category",
    "_id",
}


def test_discovery_lists_one_service_per_hook(client: TestClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    services = response.json()["services"]
    assert {s["hook"] for s in services} == set(SERVICE_IDS)
    ids = [s["id"] for s in services]
    assert len(ids) == len(set(ids))
    for service in services:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", service["id"])
        for key in ("hook", "id", "title", "description", "usageRequirements"):
            assert isinstance(service[key], str)
            assert service[key]
    walk_no_empty(response.json(), allow=())


def test_prefetch_templates_use_only_allowed_tokens_and_query_subset(client: TestClient) -> None:
    for service in client.get("/cds-services").json()["services"]:
        for key, template in service["prefetch"].items():
            assert re.fullmatch(r"[A-Za-z0-9_-]+", key)
            for token in re.findall(r"{{(.*?)}}", template):
                assert token in ALLOWED_TOKENS[service["hook"]] | USER_TOKENS, token
            assert "today" not in template
            parts = urlsplit(template.replace("{{", "").replace("}}", ""))
            resource_type = parts.path.split("/")[0]
            assert re.fullmatch(r"[A-Z][A-Za-z]+", resource_type)
            for name, _ in parse_qsl(parts.query):
                assert name.split(":")[0] in ALLOWED_PARAMS, name


def test_every_service_is_reachable(client: TestClient) -> None:
    for service in client.get("/cds-services").json()["services"]:
        response = client.post(f"/cds-services/{service['id']}", content=b"{}")
        assert response.status_code == 400  # reachable: validation, not 404


def test_prefetch_follows_the_library(tmp_path: Path) -> None:
    """Adding an indicator that reads Flag adds a `flags` template, with no discovery edit.
    Starts from the small lint fixture library, which reads no Flag."""
    library = tmp_path / "pathways"
    shutil.copytree(ROOT / "tests" / "fixtures" / "lint" / "pathways", library)
    base = Settings(
        auth="off",
        database_url=f"sqlite:///{tmp_path / 'a.db'}",
        library_dir=library,
        cards_dir=ROOT / "tests" / "fixtures" / "lint" / "cards",
    )
    with local_client(create_app(base)) as before:
        keys = before.get("/cds-services").json()["services"][0]["prefetch"]
    assert "flags" not in keys
    (library / "indicators" / "z-flag-probe.yaml").write_text(
        (ROOT / "tests" / "fixtures" / "flag-probe.yaml").read_text()
    )
    (library / "indicators" / "z-flag-probe.test.yaml").write_text(
        (ROOT / "tests" / "fixtures" / "flag-probe.test.yaml").read_text()
    )
    with local_client(
        create_app(base.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'b.db'}"}))
    ) as after:
        prefetch = after.get("/cds-services").json()["services"][0]["prefetch"]
    assert prefetch["flags"] == "Flag?patient={{context.patientId}}"


def test_shipped_example_answers_every_template(client: TestClient) -> None:
    """The README's example must stay complete as the library grows."""
    from .support import example_request

    templates = client.get("/cds-services").json()["services"][1]["prefetch"]
    assert set(templates) <= set(example_request()["prefetch"])
