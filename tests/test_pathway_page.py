"""The printable pathway page: rendered HTML, and the real service in a real headless browser.

The browser tests start `uvicorn msht_cds.app:app_from_environment --factory` in a subprocess
on 127.0.0.1 (auth off, a temporary SQLite database, the fixed test library with the real
nations/ and local/ files) and drive Debian's /usr/bin/chromium with --dump-dom,
--screenshot and --print-to-pdf. Without Chromium they are skipped locally and FAIL when
CI=true. The screenshot is kept under test-output/ for a person to look at.
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from msht_cds.library.loader import Located
from msht_cds.library.pathway_model import NationalPathway
from msht_cds.pages import render_pathway_page
from msht_cds.service import Knowledge, load_knowledge

from .support import ROOT, free_port
from .test_cards import build_library_dir

CHROMIUM = Path(os.environ.get("MSHT_CDS_TEST_CHROMIUM", "/usr/bin/chromium"))
OUTPUT = ROOT / "test-output"
NATIONS = ("england", "wales", "scotland", "northern_ireland")


@pytest.fixture(scope="module")
def library_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_library_dir(tmp_path_factory.mktemp("page") / "library")


@pytest.fixture(scope="module")
def knowledge(library_dir: Path) -> Knowledge:
    return load_knowledge(library_dir, ROOT / "cards")


def text_of(page: str) -> str:
    """Visible text, whitespace collapsed, entities decoded (good enough for assertions)."""
    body = re.sub(r"<style.*?</style>", " ", page, flags=re.DOTALL)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


# --------------------------------------------------------------------------- rendered HTML


@pytest.mark.parametrize("nation", NATIONS)
def test_page_lists_every_step_with_sources(knowledge: Knowledge, nation: str) -> None:
    page = render_pathway_page(knowledge, nation, None)
    assert page is not None
    pathway: NationalPathway = knowledge.library.nations[nation].model
    text = text_of(page)
    for step in pathway.steps:
        assert f'id="step-{step.id}"' in page
        assert step.title in text
        for key in step.sources:
            assert f'href="#ref-{key}"' in page
            assert f'id="ref-{key}"' in page
        if step.unverified:
            assert f"Check locally: {step.unverified}" in text
    for line in pathway.advice.general:
        assert line in text
    assert "@media print" in page
    assert "<script" not in page.lower()


def test_page_shows_when_each_step_applies(knowledge: Knowledge) -> None:
    text = text_of(render_pathway_page(knowledge, "england", None) or "")
    assert "Applies when: urgent: a disclosure or immediate danger" in text
    assert "Applies when: high concern; ICTG areas only" in text
    assert "Applies when: forced marriage possible" in text
    assert "Applies when: FGM identified or at risk" in text  # the indicator's title


def test_page_with_locality_shows_local_contacts(knowledge: Knowledge) -> None:
    page = render_pathway_page(knowledge, "england", "example-general-hospital") or ""
    text = text_of(page)
    assert "Safeguarding referral pathway: England, Example General Hospital" in text
    assert "Local Safeguarding Children Team, Example General Hospital: 01632 960001" in text
    assert "020 7946 0002" in text
    assert "not found" not in text


@pytest.mark.parametrize(
    ("nation", "locality"),
    [("england", "no-such-hospital"), ("england", "example-health-board")],
)
def test_unknown_or_foreign_locality_shows_national_steps(
    knowledge: Knowledge, nation: str, locality: str
) -> None:
    text = text_of(render_pathway_page(knowledge, nation, locality) or "")
    assert "Local contacts were not found for the requested locality" in text
    assert "Refer to children's social care" in text
    assert locality not in text  # the query string is never echoed


def test_unknown_nation_is_none(knowledge: Knowledge) -> None:
    assert render_pathway_page(knowledge, "atlantis", None) is None


def test_page_escapes_library_text(knowledge: Knowledge) -> None:
    library = knowledge.library
    located = library.overlays["example-general-hospital"]
    hostile = located.model.model_copy(update={"organisation": "<script>alert(1)</script>"})
    overlays = library.overlays | {"hostile": Located(located.doc, hostile)}
    changed = dataclasses.replace(
        knowledge, library=dataclasses.replace(library, overlays=overlays)
    )
    page = render_pathway_page(changed, "england", "hostile") or ""
    assert "<script>" not in page
    assert "&lt;script&gt;" in page


# --------------------------------------------------------------------------- real browser


def need_chromium() -> Path:
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"{CHROMIUM} is not installed (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests must run in CI: {message}")
    pytest.skip(message)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, library_dir: Path) -> Iterator[str]:
    """The real service under uvicorn in a subprocess on a free loopback port."""
    need_chromium()
    tmp = tmp_path_factory.mktemp("service")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "MSHT_CDS_AUTH": "off",
        "MSHT_CDS_DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite'}",
        "MSHT_CDS_LIBRARY_DIR": str(library_dir),
        "MSHT_CDS_CARDS_DIR": str(ROOT / "cards"),
        "MSHT_CDS_PUBLIC_BASE_URL": base,
        "MSHT_CDS_LOG_FORMAT": "console",
    }
    log = (tmp / "uvicorn.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "msht_cds.app:app_from_environment", "--factory",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"uvicorn exited: {(tmp / 'uvicorn.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("uvicorn did not start within 60 s")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(need_chromium()), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return int(width), int(height)


@pytest.mark.browser
@pytest.mark.parametrize(
    ("nation", "locality"), [("england", "example-general-hospital"), ("scotland", None)]
)
def test_browser_renders_the_checklist(
    service: str, tmp_path: Path, knowledge: Knowledge, nation: str, locality: str | None
) -> None:
    url = f"{service}/pathways/{nation}" + (f"?locality={locality}" if locality else "")
    dom = chromium(tmp_path / "profile", "--dump-dom", url).stdout
    pathway: NationalPathway = knowledge.library.nations[nation].model
    shown = [s for s in pathway.steps if f'id="step-{s.id}"' in dom]
    assert [s.id for s in shown] == [s.id for s in pathway.steps]
    text = text_of(dom)
    for step in pathway.steps:
        assert step.title in text
    assert "08000 121 700" in text
    if locality:
        assert "01632 960001" in text
        assert "Independent Child Trafficking Guardian" in text


@pytest.mark.browser
def test_browser_screenshot_and_print(service: str, tmp_path: Path) -> None:
    OUTPUT.mkdir(exist_ok=True)
    url = f"{service}/pathways/england?locality=example-general-hospital"
    screenshot = OUTPUT / "pathway-england-example-general-hospital.png"
    screenshot.unlink(missing_ok=True)
    chromium(
        tmp_path / "profile",
        f"--screenshot={screenshot}",
        "--window-size=1280,2000",
        "--hide-scrollbars",
        url,
    )
    assert screenshot.is_file()
    assert png_size(screenshot) == (1280, 2000)
    assert screenshot.stat().st_size > 50_000  # a blank page compresses to a few KB
    pdf = OUTPUT / "pathway-england-example-general-hospital.pdf"
    pdf.unlink(missing_ok=True)
    chromium(tmp_path / "profile-print", f"--print-to-pdf={pdf}", "--no-pdf-header-footer", url)
    assert pdf.read_bytes().startswith(b"%PDF")
    assert pdf.stat().st_size > 20_000


def test_chromium_is_not_silently_skipped_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        need_chromium()


def test_screenshot_output_is_ignored_by_git() -> None:
    assert "test-output/" in (ROOT / ".gitignore").read_text().splitlines()
    if shutil.which("git"):
        ignored = subprocess.run(["git", "check-ignore", "-q", "test-output/x.png"], cwd=ROOT)
        assert ignored.returncode == 0
