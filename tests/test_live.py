"""The same service over real HTTP on loopback (uvicorn started by the test)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from .support import example_request, live_server


def test_discovery_call_and_feedback_over_loopback(app: FastAPI) -> None:
    with live_server(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        assert http.get("/livez").json() == {"status": "ok"}
        ready = http.get("/readyz").json()
        assert ready["status"] == "ok"
        assert ready["library"]["indicators"] > 0
        services = http.get("/cds-services").json()["services"]
        assert len(services) == 5
        response = http.post("/cds-services/msht-encounter-start", json=example_request())
        assert response.status_code == 200
        card = response.json()["cards"][0]
        feedback = {
            "feedback": [
                {
                    "card": card["uuid"],
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-11-29T12:00:00Z",
                }
            ]
        }
        assert http.post("/cds-services/msht-encounter-start/feedback", json=feedback).json() == {}
        metrics = http.get("/metrics").text
        assert (
            'msht_cds_hook_requests_total{service="msht-encounter-start",status="200"} 1.0'
            in metrics
        )
        assert http.get("/openapi.json").json()["info"]["title"] == "msht-cds"
        assert http.get("/docs").status_code == 200
