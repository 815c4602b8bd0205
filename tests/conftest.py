"""Shared fixtures: an app on a temporary SQLite database with the bundled library."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from msht_cds.app import create_app
from msht_cds.config import Settings

from .support import ROOT

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
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, base_url=PUBLIC_BASE) as test_client:
        yield test_client
