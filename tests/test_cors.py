"""Checklist §L: CORS for browser-based CDS clients, with an origin allowlist."""

from __future__ import annotations

from msht_cds.app import create_app
from msht_cds.config import Settings

from .support import local_client

ORIGIN = "https://sandbox.example.org"


def test_preflight_needs_no_credentials_and_names_allowed_headers(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"cors_origins": ORIGIN}))
    with local_client(app) as client:
        response = client.options(
            "/cds-services/msht-patient-view",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in response.headers["access-control-allow-methods"]
        allowed = response.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed
        assert "content-type" in allowed
        other = client.get("/cds-services", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers
        same = client.get("/cds-services", headers={"Origin": ORIGIN})
        assert same.headers["access-control-allow-origin"] == ORIGIN
