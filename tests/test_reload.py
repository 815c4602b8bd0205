"""Safe library reloads: a broken library is rejected and the last good one keeps serving.

The app runs under uvicorn on a private copy of `pathways/` and `cards/`. A file is broken,
`Runtime.reload()` is called (what SIGHUP / `msht-cds reload` will trigger), and the service must
go on answering with the same card, report the failure on /readyz and /metrics, and pick up the
fixed library on the next reload (new X-Library-Version).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from msht_cds.config import Settings

from .servers import (
    SERVICE,
    LiveApp,
    ServeProcess,
    clean_env,
    console_script,
    free_port,
    full_request,
    library_root,
    serve_app,
    settings_for,
    templates_of,
)


def on_copy(tmp_path: Path, library: Path, **overrides: Any) -> Callable[[str], Settings]:
    """Settings for an app serving the library copy in `library`."""
    return lambda url: settings_for(
        tmp_path,
        url,
        library_dir=library / "pathways",
        cards_dir=library / "cards",
        **overrides,
    )


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """A private, writable copy of the library (pathways/ and cards/)."""
    root = tmp_path / "library"
    for name in ("pathways", "cards"):
        shutil.copytree(library_root() / name, root / name)
    return root


@pytest.fixture
def live(tmp_path: Path, library: Path) -> Iterator[LiveApp]:
    # The file watcher is off here: these tests decide when reloads happen.
    with serve_app(on_copy(tmp_path, library, reload_interval_seconds=0)) as app:
        yield app


def indicator_file(library: Path) -> Path:
    files = [
        p
        for p in sorted((library / "pathways" / "indicators").glob("*.yaml"))
        if not p.name.endswith(".test.yaml")
    ]
    assert files
    return files[0]


def post(live: LiveApp) -> httpx.Response:
    response = httpx.post(
        live.service_url(SERVICE), json=full_request(templates_of(live.runtime)), timeout=60
    )
    assert response.status_code == 200, response.text
    return response


def card_content(response: httpx.Response) -> list[tuple[str, str, str]]:
    """What a clinician sees (card uuids differ per call by design)."""
    return [(c["summary"], c["indicator"], c["detail"]) for c in response.json()["cards"]]


def metric(live: LiveApp, name: str) -> float:
    text = httpx.get(f"{live.url}/metrics", timeout=30).text
    match = re.search(rf"^{re.escape(name)} ([0-9.eE+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def _syntax(library: Path) -> Path:
    path = indicator_file(library)
    path.write_text(path.read_text(encoding="utf-8") + "\nbroken: [unclosed\n", encoding="utf-8")
    return path


def _unknown_field(library: Path) -> Path:
    path = indicator_file(library)
    path.write_text(path.read_text(encoding="utf-8") + "\nfires_whenn: {}\n", encoding="utf-8")
    return path


def _not_a_mapping(library: Path) -> Path:
    path = indicator_file(library)
    path.write_text("- just\n- a list\n", encoding="utf-8")
    return path


def _manifest_deleted(library: Path) -> Path:
    path = library / "pathways" / "library.yaml"
    path.unlink()
    return path


def _template_syntax(library: Path) -> Path:
    path = library / "cards" / "assessment.summary.j2"
    path.write_text("{% if %}", encoding="utf-8")
    return path


def _template_unknown_variable(library: Path) -> Path:
    path = library / "cards" / "assessment.summary.j2"
    path.write_text("{{ patient_name_that_does_not_exist }}", encoding="utf-8")
    return path


def _template_not_utf8(library: Path) -> Path:
    path = library / "cards" / "assessment.summary.j2"
    path.write_bytes(b"{{ concern }} caf\xe9")
    return path


def _question_not_in_questionnaire(library: Path) -> Path:
    """Schema-valid, so the loader accepts it: only lint's meaning checks reject it."""
    path = library / "pathways" / "indicators" / "a-adult-speaks-for-child.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("link_id: adult-speaks-for-child", "link_id: adult-speaks"))
    return path


def _summary_too_long(library: Path) -> Path:
    path = library / "cards" / "assessment.summary.j2"
    path.write_text(path.read_text(encoding="utf-8").strip() + " " + "please " * 20)
    return path


def _case_failing(library: Path) -> Path:
    path = library / "pathways" / "indicators" / "j-disclosed-exploitation.test.yaml"
    text = path.read_text(encoding="utf-8")  # the first case's child becomes an adult
    path.write_text(text.replace("birthDate: 2011-09-01}", "birthDate: 1990-09-01}", 1))
    return path


BREAKAGES: dict[str, Callable[[Path], Path]] = {
    "yaml-syntax": _syntax,
    "unknown-field": _unknown_field,
    "not-a-mapping": _not_a_mapping,
    "manifest-deleted": _manifest_deleted,
    "template-syntax": _template_syntax,
    "template-unknown-variable": _template_unknown_variable,
    "template-not-utf8": _template_not_utf8,
    "question-not-in-questionnaire": _question_not_in_questionnaire,
    "summary-too-long": _summary_too_long,
    "case-failing": _case_failing,
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_library_is_rejected_and_the_last_good_one_keeps_serving(
    live: LiveApp, library: Path, breakage: str
) -> None:
    before = post(live)
    version = before.headers["X-Library-Version"]
    originals = {p: p.read_bytes() for p in library.rglob("*") if p.is_file()}

    broken = BREAKAGES[breakage](library)
    status = live.runtime.reload()

    assert status.ok is False
    assert status.issues
    after = post(live)
    assert after.headers["X-Library-Version"] == version
    assert card_content(after) == card_content(before)
    ready = httpx.get(f"{live.url}/readyz", timeout=30)
    assert ready.status_code == 200, "still ready: the last good library serves"
    last = ready.json()["last_reload"]
    assert last["ok"] is False
    assert last["errors"]
    assert any(broken.name in error for error in last["errors"]), last["errors"]
    assert metric(live, "msht_cds_library_reload_failures_total") == 1
    assert metric(live, "msht_cds_library_last_reload_ok") == 0

    # Repair it (with a visible change) and reload: accepted, new version served.
    for path, data in originals.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    touched = indicator_file(library)
    touched.write_text(
        touched.read_text(encoding="utf-8") + "\n# reviewed again\n", encoding="utf-8"
    )
    status = live.runtime.reload()
    assert status.ok is True, [str(i) for i in status.issues]
    fixed = post(live)
    assert fixed.headers["X-Library-Version"] != version
    assert card_content(fixed) == card_content(before)
    last = httpx.get(f"{live.url}/readyz", timeout=30).json()["last_reload"]
    assert last == {"ok": True, "at": last["at"], "errors": []}
    assert metric(live, "msht_cds_library_reload_failures_total") == 1
    assert metric(live, "msht_cds_library_last_reload_ok") == 1


def test_a_library_deployed_without_its_cases_reloads(live: LiveApp, library: Path) -> None:
    """A deployment may ship the rules without their tests: missing cases stop `msht-cds lint`
    but not a reload (cases that are shipped must pass)."""
    for case_file in (library / "pathways").rglob("*.test.yaml"):
        case_file.unlink()
    status = live.runtime.reload()
    assert status.ok is True, [str(i) for i in status.issues]
    assert post(live).status_code == 200


def test_a_template_edited_on_disk_is_not_served_before_a_reload(
    live: LiveApp, library: Path
) -> None:
    before = post(live)
    _template_unknown_variable(library)
    after = post(live)
    assert card_content(after) == card_content(before)


def test_the_file_watcher_rejects_a_broken_edit_and_picks_up_the_fix(
    tmp_path: Path, library: Path
) -> None:
    with serve_app(on_copy(tmp_path, library, reload_interval_seconds=0.2)) as live:
        before = post(live)
        version = before.headers["X-Library-Version"]
        path = indicator_file(library)
        good = path.read_text(encoding="utf-8")
        path.write_text(good + "\nbroken: [\n", encoding="utf-8")
        wait_for(live, ok=False)
        assert post(live).headers["X-Library-Version"] == version
        path.write_text(good + "\n# fixed\n", encoding="utf-8")
        wait_for(live, ok=True)
        assert post(live).headers["X-Library-Version"] != version


def wait_for(live: LiveApp, *, ok: bool, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = httpx.get(f"{live.url}/readyz", timeout=30).json()["last_reload"]
        if last["ok"] is ok and (ok or last["errors"]):
            return
        time.sleep(0.1)
    raise AssertionError(f"the watcher did not report ok={ok} within {timeout}s")


def test_requests_keep_being_answered_while_reloading(live: LiveApp, library: Path) -> None:
    statuses: list[int] = []
    stop = threading.Event()
    body = full_request(templates_of(live.runtime))

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                statuses.append(http.post(live.service_url(SERVICE), json=body).status_code)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    path = indicator_file(library)
    good = path.read_text(encoding="utf-8")
    try:
        for round_ in range(6):
            if round_ % 2:
                path.write_text(good + "\nbroken: [\n", encoding="utf-8")
                assert live.runtime.reload().ok is False
            else:
                path.write_text(good + f"\n# round {round_}\n", encoding="utf-8")
                assert live.runtime.reload().ok is True
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert statuses
    assert set(statuses) == {200}


@pytest.mark.slow
def test_sighup_reloads_without_stopping(tmp_path: Path, library: Path) -> None:
    with ServeProcess(
        tmp_path,
        {
            "MSHT_CDS_AUTH": "off",
            "MSHT_CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
            "MSHT_CDS_LIBRARY_DIR": str(library / "pathways"),
            "MSHT_CDS_CARDS_DIR": str(library / "cards"),
            "MSHT_CDS_RELOAD_INTERVAL_SECONDS": "0",
        },
    ) as server:
        assert server.process is not None
        first = httpx.get(f"{server.url}/readyz", timeout=30).json()["last_reload"]["at"]
        path = indicator_file(library)
        path.write_text(path.read_text(encoding="utf-8") + "\n# via SIGHUP\n", encoding="utf-8")
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        last = first
        while time.monotonic() < deadline and server.process.poll() is None:
            try:
                last = httpx.get(f"{server.url}/readyz", timeout=5).json()["last_reload"]["at"]
            except httpx.HTTPError:
                break
            if last != first:
                break
            time.sleep(0.2)
        assert server.process.poll() is None, "SIGHUP must not stop the server"
        assert last != first, "SIGHUP must reload the library"


def test_serve_refuses_a_library_with_errors_before_touching_the_database(
    tmp_path: Path, library: Path
) -> None:
    """`msht-cds serve` checks the library (and upgrades the schema) in a process of its own
    before any worker starts: a broken edit stops it with the file and line, and no database
    is created."""
    broken = indicator_file(library)
    broken.write_text(
        broken.read_text(encoding="utf-8").replace("strength: moderate", "strength: massive", 1),
        encoding="utf-8",
    )
    database = tmp_path / "serve.db"
    env = clean_env(
        MSHT_CDS_AUTH="off",
        MSHT_CDS_DATABASE_URL=f"sqlite:///{database}",
        MSHT_CDS_LIBRARY_DIR=str(library / "pathways"),
        MSHT_CDS_CARDS_DIR=str(library / "cards"),
    )
    result = subprocess.run(
        [*console_script(), "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    message = result.stderr.decode()
    assert result.returncode == 1, message
    assert "refusing to start: the library has errors" in message
    assert f"{broken.name}:" in message
    assert "massive" in message or "strength" in message
    assert not database.exists()
