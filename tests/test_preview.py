"""The `/preview` page for safeguarding leads, in-process and in headless Chromium.

The browser test starts the real app under uvicorn on 127.0.0.1 and loads the page with the
Debian `chromium` package (`--dump-dom` and `--screenshot`). It is skipped when Chromium is
absent, except under CI (`CI=true`), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from msht_cds.app import create_app
from msht_cds.config import Settings
from msht_cds.preview import router

from .support import live_server, local_client
from .test_explain import SCENARIO

FIXTURE = Path(__file__).parent / "fixtures" / "lint"
SUMMARY = "Safeguarding: consider seeing the young person alone and referring today"


def make_app(tmp_path: Path, library: Path = FIXTURE / "pathways") -> FastAPI:
    settings = Settings(
        auth="off",
        database_url=f"sqlite:///{tmp_path / 'preview.db'}",
        public_base_url="http://testserver",
        library_dir=library,
        cards_dir=library.parent / "cards",
        reload_interval_seconds=0,
        log_format="json",
    )
    app = create_app(settings)
    if not any(getattr(route, "path", None) == "/preview" for route in app.routes):
        app.include_router(router)  # what app.py does when MSHT_CDS_PREVIEW=on
    return app


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with local_client(make_app(tmp_path), base_url="http://testserver") as test_client:
        yield test_client


def test_default_page_shows_a_scenario_card_and_why(client: TestClient) -> None:
    response = client.get("/preview")
    assert response.status_code == 200
    html = response.text
    assert f'<option value="{SCENARIO}" selected>' in html
    assert f'<div class="summary" id="summary">{SUMMARY}</div>' in html
    assert '<div class="card warning" id="card" data-indicator="warning">' in html
    assert "<strong>Possible indicators of exploitation</strong>" in html
    assert "counted under <code>STI_UNDER_13</code>" in html
    assert '<ul id="near"><li><code>ED_REPEAT_MULTI_SITE</code>' in html
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"


def test_case_nation_and_locality_are_chosen_by_the_form(client: TestClient) -> None:
    query = {"case": "chlamydia in an infant is suppressed", "nation": "england", "locality": ""}
    html = client.get("/preview?" + urlencode(query)).text
    assert '<p id="no-card">No card is shown: what fired does not reach a concern level' in html
    assert "perinatal transmission is the usual explanation" in html
    local = client.get("/preview?" + urlencode({"case": SCENARIO, "locality": "st-elsewhere"}))
    assert "St Elsewhere Children&#39;s Hospital NHS Foundation Trust (synthetic)" in local.text
    assert '<option value="st-elsewhere" selected>' in local.text


@pytest.mark.parametrize(
    ("query", "notice"),
    [
        ({"case": "no such case"}, "There is no test case named &#39;no such case&#39;."),
        ({"nation": "atlantis"}, "There is no pathway for nation &#39;atlantis&#39;."),
        ({"locality": "nowhere"}, "There is no local overlay &#39;nowhere&#39;."),
    ],
)
def test_unknown_choices_are_404_with_the_form(
    client: TestClient, query: dict[str, str], notice: str
) -> None:
    response = client.get("/preview?" + urlencode(query))
    assert response.status_code == 404
    assert f'<p class="notice" id="notice">{notice}</p>' in response.text
    assert "<form" in response.text


def test_library_text_cannot_inject_html(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE, tmp_path / "copy")
    library = tmp_path / "copy" / "pathways"
    overlay = library / "local" / "st-elsewhere.yaml"
    text = overlay.read_text(encoding="utf-8")
    evil = '"<img src=x onerror=alert(1)> Trust"'
    overlay.write_text(
        text.replace("St Elsewhere Children's Hospital NHS Foundation Trust (synthetic)", evil),
        encoding="utf-8",
    )
    with local_client(make_app(tmp_path, library), base_url="http://testserver") as client:
        html = client.get(
            "/preview?" + urlencode({"case": SCENARIO, "locality": "st-elsewhere"})
        ).text
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt; Trust" in html


def test_a_case_that_cannot_be_evaluated_is_a_notice(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE, tmp_path / "copy")
    library = tmp_path / "copy" / "pathways"
    (library / "scenarios" / "no-patient.test.yaml").write_text(
        "cases:\n  - {name: no patient, kind: scenario, today: 2026-06-01, resources: [],"
        " expect: {}}\n",
        encoding="utf-8",
    )
    with local_client(make_app(tmp_path, library), base_url="http://testserver") as client:
        response = client.get("/preview?case=no+patient")
    assert response.status_code == 422
    assert "This case cannot be evaluated: no Patient resource" in response.text
    assert "<form" in response.text


# --------------------------------------------------------------------------- Chromium


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is required under CI: apt-get install -y chromium")
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    return found


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.browser
def test_preview_in_headless_chromium(tmp_path: Path) -> None:
    binary = chromium()
    with live_server(make_app(tmp_path)) as base:
        url = f"{base}/preview?" + urlencode({"case": SCENARIO, "locality": "st-elsewhere"})
        dom = run_chromium(binary, tmp_path / "profile", "--dump-dom", url)
        shot = tmp_path / "preview.png"
        picture = run_chromium(
            binary, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1200,1600", url
        )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'<div class="summary" id="summary">{SUMMARY}</div>' in dom.stdout
    assert 'data-indicator="warning"' in dom.stdout
    assert "<strong>Possible indicators of exploitation</strong>" in dom.stdout
    assert 'href="http://testserver/pathways/england?locality=st-elsewhere"' in dom.stdout
    assert "counted under <code>STI_UNDER_13</code>" in dom.stdout
    assert picture.returncode == 0, picture.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000
