"""Shared fixtures: an app on a temporary SQLite database with the bundled library."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from msht_cds.app import create_app
from msht_cds.config import Settings
from msht_cds.service import Knowledge, load_knowledge

from .servers import FhirStub
from .support import ROOT, local_client

PUBLIC_BASE = "http://testserver"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        auth="off",
        database_url=f"sqlite:///{tmp_path / 'msht-cds.db'}",
        public_base_url=PUBLIC_BASE,
        library_dir=ROOT / "pathways",
        cards_dir=ROOT / "cards",
        fhir_allowlist="http://127.0.0.1",
        log_format="json",
        reload_interval_seconds=0,
    )


@pytest.fixture(scope="module")
def fhir() -> Iterator[FhirStub]:
    """A recording FHIR server on loopback, shared by the tests of one module."""
    stub = FhirStub("/fhir").start()
    yield stub
    stub.close()


@pytest.fixture(scope="session")
def knowledge() -> Knowledge:
    """The bundled library, loaded once for the session (apps never modify it)."""
    return load_knowledge(ROOT / "pathways", ROOT / "cards")


@pytest.fixture
def app(settings: Settings, knowledge: Knowledge) -> FastAPI:
    return create_app(settings, knowledge)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with local_client(app, base_url=PUBLIC_BASE) as test_client:
        yield test_client
